//! The audit log (docs/writing.md): one JSON line per change. It names records by ID, name and
//! scopes — never a token, never a digest.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::Record;
use crate::store::{self, Landing};
use crate::when::{self, format_timestamp};

/// A record as the audit log shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct AuditRecord {
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

/// What a change did: its `event` field and the details of that kind of change, never a
/// secret.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum Change {
    Init,
    Mint {
        /// `hashed` or `plaintext`.
        stored: &'static str,
    },
    Revoke,
    Rotate {
        /// The ID of the record the new one replaces.
        replaces: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_valid_until: Option<String>,
    },
    Hash,
    /// `prune`: the IDs it removed, by why (every one is also in the line's records).
    Prune {
        expired: Vec<String>,
        unused: Vec<String>,
    },
    Edit {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
}

/// One change to the token file and the records it concerns.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub change: Change,
    pub records: Vec<AuditRecord>,
}

impl Event {
    pub(crate) fn new(change: Change, records: Vec<AuditRecord>) -> Self {
        Event { change, records }
    }
}

/// The acting user: uid, user name and, under sudo, who ran sudo.
#[derive(Serialize)]
struct Actor {
    uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sudo_user: Option<String>,
}

impl Actor {
    fn now() -> Self {
        let uid = nix::unistd::getuid();
        Actor {
            uid: uid.as_raw(),
            user: nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|user| user.name),
            sudo_user: std::env::var("SUDO_USER").ok(),
        }
    }
}

/// One audit line as written. Its fields come out in the order of their names (serde_json's
/// map sorts them), the order of every line written so far.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    change: &'a Change,
    file: String,
    ids: Vec<&'a str>,
    records: &'a [AuditRecord],
    #[serde(flatten)]
    actor: Actor,
}

/// One audit line; with `failed`, the line of a change that failed after its own line was
/// written: the same records and details, the change's kind as `change`, the event `failed`.
/// Every string in it is redacted (`crate::token::redact`): names, scopes, the file's path
/// and error messages come from the file or the command line, and a token pasted into any of
/// them must not reach the log.
pub(crate) fn render(event: &Event, file: &Path, failed: Option<&str>) -> String {
    let line = Line {
        time: format_timestamp(when::now()),
        change: &event.change,
        file: file.display().to_string(),
        ids: event.records.iter().map(|r| r.id.as_str()).collect(),
        records: &event.records,
        actor: Actor::now(),
    };
    let Ok(Value::Object(mut line)) = serde_json::to_value(line) else {
        unreachable!("an audit line is a struct with string keys: it serializes to an object");
    };
    if let Some(error) = failed {
        let change = line
            .insert("event".into(), "failed".into())
            .expect("every change is tagged with its event");
        line.insert("change".into(), change);
        line.insert("error".into(), error.into());
    }
    crate::cli::output::redact_json(&Value::Object(line).to_string(), None)
}

#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub(crate) fn new(path: PathBuf) -> Self {
        AuditLog { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it.
    pub(crate) fn append(
        &self,
        event: &Event,
        file: &Path,
        failed: Option<&str>,
    ) -> std::io::Result<()> {
        let mut line = render(event, file, failed);
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
    pub(crate) fn record(&self, event: &Event, file: &Path, failed: Option<&str>) -> bool {
        match self.append(event, file, failed) {
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
pub(crate) struct Commit<'a> {
    log: &'a AuditLog,
    event: Event,
    reveal: Option<Box<dyn FnOnce() -> Result<()> + 'a>>,
    logged: bool,
}

impl<'a> Commit<'a> {
    pub(crate) fn new(log: &'a AuditLog, event: Event) -> Self {
        Commit {
            log,
            event,
            reveal: None,
            logged: false,
        }
    }

    /// `reveal` prints the secret; when it fails, nothing is changed.
    pub(crate) fn revealing(mut self, reveal: impl FnOnce() -> Result<()> + 'a) -> Self {
        self.reveal = Some(Box::new(reveal));
        self
    }
}

impl Landing for Commit<'_> {
    fn before_rename(&mut self, target: &Path) -> Result<()> {
        self.logged = self.log.record(&self.event, target, None);
        match self.reveal.take() {
            Some(reveal) => reveal(),
            None => Ok(()),
        }
    }

    fn failed(&mut self, target: &Path, error: &Error) {
        if !self.logged {
            return;
        }
        self.log
            .record(&self.event, target, Some(&error.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a line, up to `time` (what follows is the acting user), in the order
    /// every line written so far has them.
    fn up_to_time(event: &Event, failed: Option<&str>) -> String {
        let line = render(event, Path::new("/t"), failed);
        line[..line.find(",\"time\":").expect("a line has its time")].to_string()
    }

    #[test]
    fn lines_keep_their_field_names_and_order() {
        let record = AuditRecord {
            id: "0123456789ab".into(),
            name: "ci".into(),
            scopes: "read".into(),
            expires: Some("2027-01-01T00:00:00Z".into()),
        };
        let rotate = Event::new(
            Change::Rotate {
                replaces: "ba9876543210".into(),
                old_valid_until: Some("2026-06-01T00:00:00Z".into()),
            },
            vec![record.clone()],
        );
        let records = r#""records":[{"expires":"2027-01-01T00:00:00Z","id":"0123456789ab","name":"ci","scopes":"read"}]"#;
        assert_eq!(
            up_to_time(&rotate, None),
            format!(
                r#"{{"event":"rotate","file":"/t","ids":["0123456789ab"],"old_valid_until":"2026-06-01T00:00:00Z",{records},"replaces":"ba9876543210""#
            )
        );
        assert_eq!(
            up_to_time(&rotate, Some("disk full")),
            format!(
                r#"{{"change":"rotate","error":"disk full","event":"failed","file":"/t","ids":["0123456789ab"],"old_valid_until":"2026-06-01T00:00:00Z",{records},"replaces":"ba9876543210""#
            )
        );
        let edit = Event::new(
            Change::Edit {
                added: vec!["0123456789ab".into()],
                removed: Vec::new(),
                changed: Vec::new(),
            },
            vec![record],
        );
        assert_eq!(
            up_to_time(&edit, None),
            format!(
                r#"{{"added":["0123456789ab"],"changed":[],"event":"edit","file":"/t","ids":["0123456789ab"],{records},"removed":[]"#
            )
        );
        assert_eq!(
            up_to_time(&Event::new(Change::Init, Vec::new()), None),
            r#"{"event":"init","file":"/t","ids":[],"records":[]"#
        );
    }
}
