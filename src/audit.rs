//! The audit log (docs/writing.md): one JSON line per change. It names records by ID, name and
//! scopes — never a token, never a digest.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::Record;
use crate::store::{self, Landing};
use crate::when::{self, format_timestamp};

/// A record as the audit log shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub name: String,
    pub scopes: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl From<&Record> for AuditRecord {
    fn from(record: &Record) -> Self {
        AuditRecord {
            id: record.id().to_string(),
            name: record.name_lossy(),
            scopes: record.scopes.to_field(),
            expires: record.expires.map(format_timestamp),
        }
    }
}

/// One change to the token file.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: &'static str,
    pub records: Vec<AuditRecord>,
    /// Event-specific details (e.g. `replaces` for rotate); never secrets.
    pub details: Map<String, Value>,
}

impl Event {
    pub fn new(event: &'static str, records: Vec<AuditRecord>) -> Self {
        Event {
            event,
            records,
            details: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// The acting user: uid, user name and, under sudo, who ran sudo.
fn actor() -> Map<String, Value> {
    let uid = nix::unistd::getuid();
    let mut actor = Map::new();
    actor.insert("uid".into(), uid.as_raw().into());
    if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
        actor.insert("user".into(), user.name.into());
    }
    if let Ok(sudo_user) = std::env::var("SUDO_USER") {
        actor.insert("sudo_user".into(), sudo_user.into());
    }
    actor
}

/// One audit line. Every string in it is redacted (`crate::token::redact`): names, scopes,
/// the file's path and error messages come from the file or the command line, and a token
/// pasted into any of them must not reach the log.
pub fn render(event: &Event, file: &Path) -> String {
    let mut line = Map::new();
    line.insert("time".into(), format_timestamp(when::now()).into());
    line.insert("event".into(), event.event.into());
    line.insert("file".into(), file.display().to_string().into());
    line.insert(
        "ids".into(),
        event
            .records
            .iter()
            .map(|r| Value::from(r.id.clone()))
            .collect(),
    );
    line.insert(
        "records".into(),
        serde_json::to_value(&event.records).unwrap_or(Value::Null),
    );
    line.extend(event.details.clone());
    line.extend(actor());
    crate::cli::output::redact_json(&Value::Object(line).to_string(), None)
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        AuditLog { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it.
    pub fn append(&self, event: &Event, file: &Path) -> std::io::Result<()> {
        let mut line = render(event, file);
        line.push('\n');
        // Judged as the lock is: never blocking (a FIFO at the path would hang the change
        // after its lock was taken), never through a symlink or into another user's file.
        let mut log = store::open_sidecar(
            &self.path,
            OpenOptions::new().append(true),
            true,
            store::owner_of(file),
        )
        .map_err(|e| match e {
            store::SidecarError::Io(e) => e,
            store::SidecarError::Untrusted(why) => std::io::Error::other(why),
        })?;
        let meta = log.metadata()?;
        // An audit line appended to the token file itself (or its lock) would be read back
        // as a one-field record: a predictable token with every scope.
        let same = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        };
        if same(file) || same(&store::sibling(file, ".lock")) {
            return Err(std::io::Error::other(
                "it is the token file (or its lock): give --audit-log a file of its own",
            ));
        }
        // One write with O_APPEND: concurrent appenders never interleave within a line.
        log.write_all(line.as_bytes())?;
        log.sync_data()
    }

    /// Appends, turning a failure into a warning on stderr: a change never fails for want
    /// of its audit line. Says whether the line was written.
    pub fn record(&self, event: &Event, file: &Path) -> bool {
        match self.append(event, file) {
            Ok(()) => true,
            Err(e) => {
                crate::cli::output::note(&format!(
                    "warning: could not write the audit log {}: {e} (the change \
                     goes ahead without its audit line)",
                    self.path.display()
                ));
                false
            }
        }
    }
}

/// The landing of a change (see [`Landing`]): its audit line is written and synced before
/// the rename, then `reveal` shows the secret it hands out; a change that fails after its
/// line was written gets a second line, event `failed`, with the same records.
pub struct Commit<'a> {
    log: &'a AuditLog,
    event: Event,
    reveal: Option<Box<dyn FnOnce() -> Result<()> + 'a>>,
    logged: bool,
}

impl<'a> Commit<'a> {
    pub fn new(log: &'a AuditLog, event: Event) -> Self {
        Commit {
            log,
            event,
            reveal: None,
            logged: false,
        }
    }

    /// `reveal` prints the secret; when it fails, nothing is changed.
    pub fn revealing(mut self, reveal: impl FnOnce() -> Result<()> + 'a) -> Self {
        self.reveal = Some(Box::new(reveal));
        self
    }
}

impl Landing for Commit<'_> {
    fn before_rename(&mut self, target: &Path) -> Result<()> {
        self.logged = self.log.record(&self.event, target);
        match self.reveal.take() {
            Some(reveal) => reveal(),
            None => Ok(()),
        }
    }

    fn failed(&mut self, target: &Path, error: &Error) {
        if !self.logged {
            return;
        }
        let mut failed = Event::new("failed", self.event.records.clone());
        failed.details = self.event.details.clone();
        let failed = failed
            .with("change", self.event.event)
            .with("error", error.to_string());
        self.log.record(&failed, target);
    }
}
