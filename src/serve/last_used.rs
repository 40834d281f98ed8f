//! Keeping the last-used figures (docs/last-used.md): loaded from the sidecar at start,
//! written to it at most once per interval when something changed and once more at shutdown,
//! always off the check path. Never the token file.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch as signal_watch;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::seen::{self, SeenById, SeenError, SeenFile};
use crate::when::{self, Timestamp};

use super::ServeOptions;
use super::state::{Shared, Snapshot};

/// A token still in use this close to its expiry is warned about.
const WARN_BEFORE: time::Duration = time::Duration::days(7);

/// Where the figures are kept, and how often.
#[derive(Debug, Clone)]
pub(super) struct Sidecar {
    path: PathBuf,
    /// `--seen PATH` named it: only a file that is already a sidecar may be replaced there
    /// (the default `<file>.seen` is ours by its name).
    explicit: bool,
    /// The token file as `serve` was given it, made absolute: what the header names (it stays
    /// the same across a Kubernetes `..data` swap, where the real file's path changes).
    named: PathBuf,
    /// The real token file, behind any symlinks.
    target: PathBuf,
    interval: Duration,
    /// Since when the figures have been gathered (the sidecar's, or this start's).
    since: Arc<Mutex<Option<Timestamp>>>,
    /// When each record was last warned about (by ID): once a day at most.
    warned: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl Sidecar {
    /// Where `serve` keeps its figures. A `--seen PATH` where something other than a sidecar
    /// is — the token file, its lock or audit log, any other file, a directory — is refused:
    /// writing the sidecar there would destroy it.
    pub(super) fn of(options: &ServeOptions) -> Result<Sidecar> {
        let target = std::fs::canonicalize(&options.file).unwrap_or_else(|_| options.file.clone());
        let named = std::path::absolute(&options.file).unwrap_or_else(|_| options.file.clone());
        let sidecar = Sidecar {
            path: options
                .seen
                .clone()
                .unwrap_or_else(|| seen::sidecar_of(&target)),
            explicit: options.seen.is_some(),
            named,
            target,
            interval: options.seen_interval.max(Duration::from_millis(10)),
            since: Arc::default(),
            warned: Arc::default(),
        };
        if sidecar.explicit {
            let same_as_file = match (
                std::fs::metadata(&sidecar.path),
                std::fs::metadata(&sidecar.target),
            ) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            };
            let replaceable = seen::replaceable(&sidecar.path).unwrap_or(false);
            if same_as_file || !replaceable {
                return Err(Error::usage(format!(
                    "--seen {}: something other than a last-used sidecar is there (serve \
                     would replace it); name a new file, e.g. /var/lib/tokenfile/tokens.seen",
                    sidecar.path.display()
                )));
            }
        }
        Ok(sidecar)
    }

    /// The sidecar's figures, if it has usable ones. It belongs to the file if its header
    /// names it, or if it has a row for one of `records`, the IDs of the state in use (the
    /// file and its sidecar were moved together). One that cannot be used — corrupt, another file's, planted by
    /// another user, not a regular file — is a warning, and is moved aside to
    /// `<sidecar>.ignored` so that the next write does not destroy what it held.
    fn read(&self, records: &HashSet<String>) -> Option<SeenFile> {
        let is_record = |id: &str| records.contains(id);
        let why = match seen::read(
            &self.path,
            &self.target,
            seen::Belongs::SharesARecord(&is_record),
        ) {
            Ok(figures) => return figures,
            Err(why) => why,
        };
        if matches!(why, SeenError::Io(_)) || !self.may_replace() {
            warn!(sidecar = %self.path.display(), "cannot use the last-used sidecar: it {why}");
            return None;
        }
        match seen::set_aside(&self.path) {
            Ok(aside) => warn!(
                sidecar = %self.path.display(),
                "last-used sidecar ignored: it {why}; kept as {}",
                aside.display()
            ),
            Err(e) => warn!(
                sidecar = %self.path.display(),
                "last-used sidecar ignored: it {why} (and it cannot be moved aside: {e})"
            ),
        }
        None
    }

    /// Whether what is at the sidecar's path may be replaced (or moved aside): always at the
    /// default `<file>.seen`; at a `--seen PATH` only a sidecar, or nothing.
    fn may_replace(&self) -> bool {
        !self.explicit || seen::replaceable(&self.path).unwrap_or(false)
    }

    /// Starts the figures of the state in use from the sidecar (`serve` restarted).
    pub(super) fn load_into(&self, shared: &Shared) {
        if let Some(figures) = self.read(&record_ids(&shared.snapshot())) {
            *self.since.lock().unwrap_or_else(PoisonError::into_inner) = figures.since;
            shared.load_figures(figures.rows);
        }
    }

    /// Writes the sidecar every interval in which something was used, until `stopping`.
    pub(super) async fn keep(
        self,
        shared: Arc<Shared>,
        mut stopping: signal_watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = super::stopped(&mut stopping) => return,
            }
            let (sidecar, shared) = (self.clone(), shared.clone());
            let _ = tokio::task::spawn_blocking(move || sidecar.write(&shared, false)).await;
        }
    }

    /// Warns, once a day per record, about each token that expires within 7 days and was used
    /// in the last 7 days: whoever uses it is about to be locked out. Never the token.
    fn warn_expiring(&self, snapshot: &Snapshot) {
        let now = when::now();
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        for (position, (digest, grant)) in snapshot.index.iter().enumerate() {
            let Some(expires) = grant
                .expires
                .filter(|&at| at > now && at <= now + WARN_BEFORE)
            else {
                continue;
            };
            if snapshot.index.is_replaced(digest) {
                continue; // kept by `rotate --grace`: it is meant to expire
            }
            let used = snapshot.usage.last_used(position);
            if used.is_none_or(|used| used < now - WARN_BEFORE) {
                continue;
            }
            let id = digest.id().to_string();
            if warned
                .get(&id)
                .is_some_and(|&at| now - at < time::Duration::days(1))
            {
                continue;
            }
            warn!(
                %id,
                name = %crate::token::redact(grant.name),
                expires = %when::format_timestamp(expires),
                "a token that expires within 7 days is still in use; rotate it (`tokenfile rotate {id} --grace 24h --expires 90d`)"
            );
            warned.insert(id, now);
        }
    }

    /// Writes the figures of the state in use, if anything was used since the last write.
    /// Another `serve` of the same file may write the same sidecar: its newer figures for
    /// records of this state are kept (the later use wins), so neither erases the other's.
    /// While the file is missing or refused nothing is written — it has no records, and
    /// writing would erase the rows of every record it will have again — except at
    /// `shutdown`, when the figures of the records that left are added to the sidecar's rows
    /// rather than lost with the process.
    pub(super) fn write(&self, shared: &Shared, shutdown: bool) {
        let snapshot = shared.snapshot();
        self.warn_expiring(&snapshot);
        let departed = if snapshot.status.is_loaded() {
            if !snapshot.usage.take_changed() {
                return;
            }
            None
        } else {
            if !shutdown {
                return;
            }
            let departed = shared.departed_figures();
            if departed.is_empty() {
                return;
            }
            Some(departed)
        };
        if !self.may_replace() {
            snapshot.usage.mark_changed();
            warn!(sidecar = %self.path.display(), "not writing the last-used sidecar: something other than a sidecar is at its path now");
            return;
        }
        // Another serve of the same file writes the same sidecar: one read-merge-replace at
        // a time, or each could drop the other's newest rows.
        let lock = match seen::lock(&self.path) {
            Ok(Some(lock)) => {
                let removed = seen::remove_stale_temps(&self.path);
                if removed > 0 {
                    debug!(
                        removed,
                        "removed temporary sidecar copies left by a killed writer"
                    );
                }
                Some(lock)
            }
            Ok(None) => {
                warn!(sidecar = %self.path.display(), "the last-used sidecar's lock is held by another writer for long: writing anyway");
                None
            }
            Err(e) => {
                debug!(sidecar = %self.path.display(), "cannot lock the last-used sidecar ({e}): writing without");
                None
            }
        };
        let now = when::now();
        let records = record_ids(&snapshot);
        let theirs = self.read(&records);
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        // The figures cover whatever the earliest writer of this sidecar saw.
        let began = [*since, theirs.as_ref().and_then(|t| t.since)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        let figures = match departed {
            Some(departed) => {
                // Every row kept: which records are revoked cannot be told without the file.
                let mut rows = theirs.map(|t| t.rows).unwrap_or_default();
                seen::merge(&mut rows, departed);
                rows
            }
            None => {
                let mut figures = snapshot.usage.by_id(&snapshot.index);
                if let Some(theirs) = theirs {
                    let ours: SeenById = theirs
                        .rows
                        .into_iter()
                        .filter(|(id, _)| records.contains(id))
                        .collect();
                    seen::merge(&mut figures, ours);
                }
                figures
            }
        };
        let mut rows: Vec<_> = figures.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let rows = rows.into_iter().map(|(id, seen)| (id.as_str(), seen));
        match seen::write(&self.path, &self.target, &self.named, began, now, rows) {
            Ok(()) => {
                *since = Some(began);
                debug!(sidecar = %self.path.display(), records = figures.len(), "last used written");
            }
            Err(e) => {
                snapshot.usage.mark_changed();
                warn!(sidecar = %self.path.display(), "cannot write the last-used sidecar: {e}");
            }
        }
        drop(since);
        drop(lock);
    }
}

/// The IDs of the records of `snapshot`, to tell a sidecar's rows that belong to it.
fn record_ids(snapshot: &Snapshot) -> HashSet<String> {
    snapshot
        .index
        .iter()
        .map(|(digest, _)| digest.id().to_string())
        .collect()
}
