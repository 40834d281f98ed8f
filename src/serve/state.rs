//! The state `serve` answers from: one immutable [`Snapshot`] of the token file, replaced
//! whole through an [`ArcSwap`] so that a check sees either the old file or the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::decision::{Decision, Unauthorized};
use crate::index::{LoadProblem, TokenIndex};
use crate::scope::RequiredScopes;
use crate::seen::SeenById;
use crate::token::{Digest, MAX_TOKEN_LEN, Secret};
use crate::when::{self, Timestamp};

use super::metrics::{Gauges, Metrics, Outcome};
use super::usage::{Client, Departed, Usage};

/// What `/metrics` counts as expiring soon (`tokenfile_records_expiring_7d`).
pub(super) const EXPIRING_SOON: time::Duration = time::Duration::days(7);

/// Where the state in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FileStatus {
    /// Read and parsed; invalid lines were skipped.
    Loaded,
    /// The file does not exist: no token is accepted (fail closed).
    Missing,
    /// The file exists but cannot be used — unreadable or unsafe. No token is accepted.
    /// The reason names the path and the problem, never the file's content.
    Refused(String),
}

impl FileStatus {
    pub(super) fn is_loaded(&self) -> bool {
        matches!(self, FileStatus::Loaded)
    }

    /// Short machine-readable word for `/healthz`.
    pub(super) fn word(&self) -> &'static str {
        match self {
            FileStatus::Loaded => "ok",
            FileStatus::Missing => "missing",
            FileStatus::Refused(_) => "refused",
        }
    }
}

#[derive(Debug)]
pub(super) struct Snapshot {
    pub index: TokenIndex,
    pub status: FileStatus,
    pub invalid_lines: usize,
    /// When this state was installed.
    pub installed: SystemTime,
    /// SHA-256 of the bytes the index was built from: an unchanged file is not rebuilt.
    pub content: Option<Digest>,
    /// When each record was last used (docs/last-used.md), beside the index.
    pub usage: Usage,
}

impl Snapshot {
    /// Builds the state of a file's bytes, returning the problems for the caller to log.
    #[cfg(test)]
    pub(super) fn from_bytes(bytes: &[u8]) -> (Snapshot, Vec<LoadProblem>) {
        let (index, problems) = TokenIndex::load(bytes);
        (
            Snapshot::loaded(index, &problems, Digest::of(bytes)),
            problems,
        )
    }

    /// The state of a file whose records are `index` and whose bytes hash to `content`.
    pub(super) fn loaded(index: TokenIndex, problems: &[LoadProblem], content: Digest) -> Snapshot {
        let invalid_lines = problems
            .iter()
            .filter(|p| matches!(p, LoadProblem::Invalid { .. }))
            .count();
        Snapshot {
            usage: Usage::new(index.len()),
            index,
            status: FileStatus::Loaded,
            invalid_lines,
            installed: SystemTime::now(),
            content: Some(content),
        }
    }

    /// A state that grants nothing.
    pub(super) fn empty(status: FileStatus) -> Snapshot {
        Snapshot {
            index: TokenIndex::default(),
            status,
            invalid_lines: 0,
            installed: SystemTime::now(),
            content: None,
            usage: Usage::new(0),
        }
    }

    /// Whether replacing `current` by `self` takes anything away: a token, or a change of
    /// a token's scopes or expiry (conservatively, any change counts). Such a state might
    /// be a file caught halfway through an in-place rewrite, so the reloader confirms it
    /// before installing it; a state that only adds is installed at once.
    pub(super) fn withdraws_from(&self, current: &Snapshot) -> bool {
        !self.index.grants_all_of(&current.index)
    }

    pub(super) fn installed_unix(&self) -> f64 {
        self.installed
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// What `/metrics` reports of this state (the expiries as of now: one pass over the
    /// records, per scrape, off the check path).
    pub(super) fn gauges(&self) -> Gauges {
        let now = when::now();
        let (soonest, expiring) = self.index.expiring(now, now + EXPIRING_SOON);
        Gauges {
            records: self.index.records,
            invalid_lines: self.invalid_lines,
            file_present: self.status.is_loaded(),
            installed_unix: self.installed_unix(),
            soonest_expiry_unix: soonest.map(|at| at.unix_timestamp()),
            expiring_soon: expiring,
        }
    }
}

/// Everything the listeners and the reloader share.
#[derive(Debug)]
pub(super) struct Shared {
    file: PathBuf,
    current: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// Figures of records that left the file, for their return (off the check path).
    departed: Mutex<Departed>,
}

impl Shared {
    pub(super) fn new(file: PathBuf, initial: Snapshot) -> Self {
        Shared {
            file,
            current: ArcSwap::from_pointee(initial),
            metrics: Metrics::default(),
            departed: Mutex::default(),
        }
    }

    /// The figures of the records that left the file and have not come back.
    pub(super) fn departed_figures(&self) -> SeenById {
        self.departed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .figures()
    }

    /// Starts the state in use from a sidecar's figures (`serve` restarted); those of records
    /// the file does not have now are kept for their return.
    pub(super) fn load_figures(&self, figures: SeenById) {
        let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        departed.add(figures, when::now());
        let current = self.current.load();
        departed.restore(&current.usage, &current.index, when::now());
        // Only what was read: nothing new to write yet.
        current.usage.take_changed();
    }

    pub(super) fn file(&self) -> &Path {
        &self.file
    }

    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `snapshot` in use, stamped with the time it is (what `/metrics` reports as the
    /// last reload). Returns the state it replaces, for the caller to drop where freeing a
    /// large index costs no check anything.
    pub(super) fn install(&self, mut snapshot: Snapshot) -> Arc<Snapshot> {
        snapshot.installed = SystemTime::now();
        let current = self.current.load();
        // Checks still answered by the old state after this copy are not carried over: a
        // use or two at the instant of a reload, against a lock on every check.
        snapshot
            .usage
            .carry_over(&snapshot.index, &current.usage, &current.index);
        let now = when::now();
        let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        departed.add(current.usage.departed(&current.index, &snapshot.index), now);
        departed.restore(&snapshot.usage, &snapshot.index, now);
        drop(departed);
        self.current.swap(Arc::new(snapshot))
    }

    /// The one decision both listeners use, counted by outcome and handed to `answer`
    /// (it borrows the record's name from the state in use, which stays alive meanwhile).
    /// `answer` also gets the record's expiry, for `X-Token-Expires`. A grant or a refusal
    /// for a missing scope counts as a use of the record by `client` (docs/last-used.md).
    pub(super) fn check<R>(
        &self,
        token: &Secret,
        required: &RequiredScopes,
        client: Client,
        answer: impl FnOnce(Decision<'_>, Option<Timestamp>) -> R,
    ) -> R {
        let snapshot = self.current.load();
        let now = when::now();
        let (decision, position, expires) = if token.expose().len() > MAX_TOKEN_LEN {
            // Same limit as `tokenfile check` on stdin, so both answer alike.
            (Decision::Unauthorized(Unauthorized::Unknown), None, None)
        } else {
            snapshot.index.check_at(token, required, now)
        };
        if let (Decision::Granted { .. } | Decision::Forbidden { .. }, Some(position)) =
            (&decision, position)
        {
            snapshot.usage.record(position, now, client);
        }
        self.metrics.count_check(Outcome::of(&decision));
        if !matches!(decision, Decision::Granted { .. }) && tracing::enabled!(tracing::Level::DEBUG)
        {
            log_denial(&snapshot.index, token, required, now);
        }
        answer(decision, expires)
    }

    /// A request that could not be decided (no or malformed scope).
    pub(super) fn count_invalid(&self) {
        self.metrics.count_check(Outcome::Invalid);
    }
}

/// One debug line per decision: the record's ID and the outcome. Never the token — nor the
/// required scopes, in case a client put the token in their place.
pub(super) fn log_decision(via: &str, decision: &Decision) {
    match decision {
        Decision::Granted { id, .. } => tracing::debug!(via, %id, "granted"),
        Decision::Forbidden { id, .. } => tracing::debug!(via, %id, "forbidden"),
        Decision::Unauthorized(why) => tracing::debug!(via, reason = why.reason(), "unauthorized"),
    }
}

/// Why a check was denied, at debug level: the explanation `check --explain` gives (the
/// matched line and record, each required scope and what covered it, the expiry, a hint),
/// never the token, a path or a header. The required scopes are named by their position
/// (`#1`, `#2`), not their text: a client may have put a token where a scope goes, and a
/// short shapeless one is beyond redaction (the rest is redacted all the same).
fn log_denial(index: &TokenIndex, token: &Secret, required: &RequiredScopes, now: Timestamp) {
    let matched: Vec<_> = index
        .get(token)
        .map(|grant| grant.to_grant())
        .into_iter()
        .collect();
    let mut explanation = crate::decision::explain(token.expose(), &matched, required, now);
    for (position, cover) in explanation.scopes.iter_mut().enumerate() {
        cover.required = format!("#{}", position + 1);
    }
    if let Ok(json) = serde_json::to_string(&explanation) {
        tracing::debug!(explain = %crate::token::redact(&json), "denied");
    }
}

/// Logs what was skipped in a freshly loaded file: line numbers and reasons, never content.
pub(super) fn log_problems(file: &Path, problems: &[LoadProblem]) {
    const SHOWN: usize = 50;
    for problem in problems.iter().take(SHOWN) {
        tracing::warn!(file = %file.display(), "{problem}");
    }
    if problems.len() > SHOWN {
        tracing::warn!(
            file = %file.display(),
            "{} more problems not shown; run `tokenfile lint` for all",
            problems.len() - SHOWN
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_token_is_unknown_and_counted() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let (snapshot, _) = Snapshot::from_bytes(format!("{long}\n").as_bytes());
        let shared = Shared::new(PathBuf::from("t"), snapshot);
        let required = RequiredScopes::parse(&["read"]).unwrap();
        shared.check(
            &Secret::new(long.into_bytes()),
            &required,
            Client::Unknown,
            |decision, _| {
                assert_eq!(decision, Decision::Unauthorized(Unauthorized::Unknown));
            },
        );
        let text = shared.metrics.render(&shared.snapshot().gauges(), None);
        assert!(text.contains("tokenfile_checks_total{outcome=\"unauthorized\"} 1"));
    }

    #[test]
    fn what_withdraws() {
        let snap = |text: &str| Snapshot::from_bytes(text.as_bytes()).0;
        let old = snap("a\tread\nb\tread\n");
        assert!(!snap("a\tread\nb\tread\nc\tx\n").withdraws_from(&old));
        assert!(!snap("# moved\nb\tread\n\na\tread\tnew name\n").withdraws_from(&old));
        assert!(!snap("a\tread\nc\tx\nb\tread\n").withdraws_from(&old));
        assert!(snap("a\tread\nc\tx\nb\twrite\n").withdraws_from(&old));
        assert!(snap("a\tread\n").withdraws_from(&old));
        assert!(snap("a\tread\nb\tre\n").withdraws_from(&old));
        assert!(snap("a\tread\nb\tread,write\n").withdraws_from(&old));
        assert!(snap("").withdraws_from(&old));
        assert!(!old.withdraws_from(&Snapshot::empty(FileStatus::Missing)));
    }

    #[test]
    fn empty_state_grants_nothing() {
        let shared = Shared::new(PathBuf::from("t"), Snapshot::empty(FileStatus::Missing));
        let required = RequiredScopes::parse(&["read"]).unwrap();
        shared.check(
            &Secret::new(b"tok".to_vec()),
            &required,
            Client::Unknown,
            |decision, _| {
                assert_eq!(decision, Decision::Unauthorized(Unauthorized::Unknown));
            },
        );
    }
}
