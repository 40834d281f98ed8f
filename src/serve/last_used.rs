//! Keeping the last-used figures (docs/last-used.md): loaded from the sidecar at start,
//! written to it at most once per interval when something changed and once more at shutdown,
//! always off the check path. Never the token file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch as signal_watch;
use tracing::{debug, warn};

use crate::seen::{self, SeenById, SeenError};
use crate::when::{self, Timestamp};

use super::ServeOptions;
use super::state::{Shared, Snapshot};

/// A token still in use this close to its expiry is warned about.
const WARN_BEFORE: time::Duration = time::Duration::days(7);

/// Where the figures are kept, and how often.
#[derive(Debug, Clone)]
pub(super) struct Sidecar {
    path: PathBuf,
    /// The token file the sidecar's header names (the real file, as `list` resolves it).
    target: PathBuf,
    interval: Duration,
    /// When each record was last warned about (by ID): once a day at most.
    warned: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl Sidecar {
    pub(super) fn of(options: &ServeOptions) -> Sidecar {
        let target = std::fs::canonicalize(&options.file).unwrap_or_else(|_| options.file.clone());
        Sidecar {
            path: options
                .seen
                .clone()
                .unwrap_or_else(|| seen::sidecar_of(&target)),
            target,
            interval: options.seen_interval.max(Duration::from_millis(10)),
            warned: Arc::default(),
        }
    }

    /// The sidecar's figures, if it has usable ones. It belongs to the file if its header
    /// names it, or if it has a row for one of `snapshot`'s records (the file and its sidecar
    /// were moved together). One that cannot be used — corrupt, another file's, planted by
    /// another user, not a regular file — is a warning, and is moved aside to
    /// `<sidecar>.ignored` so that the next write does not destroy what it held.
    fn read(&self, snapshot: &Snapshot) -> Option<SeenById> {
        let records: std::collections::HashSet<String> = snapshot
            .index
            .iter()
            .map(|(digest, _)| digest.id().to_string())
            .collect();
        let is_record = |id: &str| records.contains(id);
        let why = match seen::read(
            &self.path,
            &self.target,
            seen::Belongs::SharesARecord(&is_record),
        ) {
            Ok(figures) => return figures,
            Err(why) => why,
        };
        if matches!(why, SeenError::Io(_)) {
            warn!(sidecar = %self.path.display(), "cannot read the last-used sidecar: it {why}");
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

    /// Starts the figures of the state in use from the sidecar (`serve` restarted).
    pub(super) fn load_into(&self, shared: &Shared) {
        if let Some(figures) = self.read(&shared.snapshot()) {
            shared.load_figures(figures);
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
            let _ = tokio::task::spawn_blocking(move || sidecar.write(&shared)).await;
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
                "a token that expires within 7 days is still in use; rotate it (`tokenfile rotate {id}`)"
            );
            warned.insert(id, now);
        }
    }

    /// Writes the figures of the state in use, if anything was used since the last write.
    /// Another `serve` of the same file may write the same sidecar: its newer figures for
    /// records of this state are kept (the later use wins), so neither erases the other's.
    pub(super) fn write(&self, shared: &Shared) {
        let snapshot = shared.snapshot();
        self.warn_expiring(&snapshot);
        // A missing or refused file grants nothing and has no records: writing would erase
        // the figures of every record it will have again.
        if !snapshot.status.is_loaded() || !snapshot.usage.take_changed() {
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
        let mut figures = snapshot.usage.by_id(&snapshot.index);
        if let Some(theirs) = self.read(&snapshot) {
            let records: std::collections::HashSet<String> = snapshot
                .index
                .iter()
                .map(|(digest, _)| digest.id().to_string())
                .collect();
            let ours: SeenById = theirs
                .into_iter()
                .filter(|(id, _)| records.contains(id))
                .collect();
            seen::merge(&mut figures, ours);
        }
        let mut rows: Vec<_> = figures.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let rows = rows.into_iter().map(|(id, seen)| (id.as_str(), seen));
        match seen::write(&self.path, &self.target, when::now(), rows) {
            Ok(()) => {
                debug!(sidecar = %self.path.display(), records = figures.len(), "last used written");
            }
            Err(e) => {
                snapshot.usage.mark_changed();
                warn!(sidecar = %self.path.display(), "cannot write the last-used sidecar: {e}");
            }
        }
        drop(lock);
    }
}
