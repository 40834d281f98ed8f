//! `serve --routes FILE`: the rules in use, and the thread that follows the file
//! (docs/routes.md "Reloading").
//!
//! The rules file is small and written by hand, so it is polled rather than watched: a
//! `stat` every [`TICK`] notices any change — in place, by rename, through a symlink swap,
//! deleted and re-created — well within the second that a change of the token file is
//! promised in. A file replaced by rename (a new inode) is complete and is read at once; one
//! changed in place is read once it has been left alone for a tick, so that a rules file
//! caught half-written (`cat > routes` truncates first) is not installed, and one whose last
//! line has no line ending is believed only once it was left alone for [`HOLD`] (a
//! writer may be in the middle of that line). What was read is installed only if the file did
//! not change while it was read.
//!
//! A rules file that cannot be used — unparsable, missing, unsafe — keeps the last good
//! rules in use: it is logged, counted (`tokenfile_routes_reload_failures_total`) and shown
//! by `/healthz`, and read again on its next change. Swapping in no rules, or none, would
//! turn every route away (or open it); an admin's typo must do neither.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::routes::{self, Rules};

/// How often the rules file is looked at.
const TICK: Duration = Duration::from_millis(200);
/// The longest a change is waited for: a last line without its line ending is believed only
/// once left alone this long, and a file written in place non-stop is read this long after
/// its first change at the latest (the token file's hold, docs/protocols.md "Reloads").
const HOLD: Duration = Duration::from_millis(700);
/// How often an unchanged rules file's path is judged again (or, when the rules in use are
/// stale, the file read again).
const VERIFY: Duration = Duration::from_secs(1);

/// Whether the file was modified less than `within` ago, or less than `within` ahead of our
/// clock (a time far in the future does not hold a file back for ever).
fn written_within(meta: &Metadata, within: Duration) -> bool {
    meta.modified()
        .ok()
        .is_some_and(|at| match SystemTime::now().duration_since(at) {
            Ok(age) => age < within,
            Err(ahead) => ahead.duration() < within,
        })
}

/// What identifies one version of the file: a change of any of these is a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path)
            .ok()
            .map(|meta| Fingerprint::of(&meta))
    }
}

/// The rules in use, and how the file behind them is doing.
#[derive(Debug)]
pub(super) struct Routes {
    path: PathBuf,
    current: ArcSwap<Rules>,
    /// Why the file on disk is not what is in use (`None`: it is).
    problem: Mutex<Option<String>>,
    installed_unix: AtomicU64,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// Requests no rule covered (answered 403).
    misses: AtomicU64,
}

/// What `/healthz` and `/metrics` report of the rules.
#[derive(Debug, Clone)]
pub(super) struct RoutesStatus {
    pub rules: usize,
    pub problem: Option<String>,
    pub installed_unix: u64,
    pub reloads: u64,
    pub failures: u64,
    pub misses: u64,
}

impl Routes {
    /// Reads the rules file for the first time: any problem stops `serve` from starting (there
    /// are no earlier rules to fall back on).
    pub(super) fn load(path: &Path) -> Result<(Arc<Routes>, Watch)> {
        let routes::RulesFile { rules, meta, .. } = routes::read_file(path)?;
        info!(rules = rules.len(), "routes loaded");
        warn_if_empty(&rules);
        let routes = Arc::new(Routes {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(rules),
            problem: Mutex::new(None),
            installed_unix: AtomicU64::new(unix_now()),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        let watch = Watch {
            routes: routes.clone(),
            seen: Some(Fingerprint::of(&meta)),
            pending: None,
            recheck: false,
            verified: Instant::now(),
        };
        Ok((routes, watch))
    }

    /// The rules in use.
    pub(super) fn rules(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.current.load()
    }

    pub(super) fn count_miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    pub(super) fn status(&self) -> RoutesStatus {
        RoutesStatus {
            rules: self.current.load().len(),
            problem: self.problem().clone(),
            installed_unix: self.installed_unix.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            failures: self.failures.load(Relaxed),
            misses: self.misses.load(Relaxed),
        }
    }

    fn problem(&self) -> MutexGuard<'_, Option<String>> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn install(&self, rules: Rules) {
        info!(rules = rules.len(), "routes reloaded");
        warn_if_empty(&rules);
        self.current.store(Arc::new(rules));
        self.installed_unix.store(unix_now(), Relaxed);
        self.reloads.fetch_add(1, Relaxed);
        *self.problem() = None;
    }

    fn keep_last_good(&self, problem: &Error) {
        // Logged, and shown by `/healthz` to anyone who can reach serve: redacted, in case a
        // message quotes a secret pasted into the file.
        let problem = crate::token::redact(&problem.to_string()).into_owned();
        let mut current = self.problem();
        if current.as_deref() == Some(problem.as_str()) {
            return; // found again by the periodic look: said already
        }
        error!("keeping the last good routes: {problem}; fix it and save again");
        self.failures.fetch_add(1, Relaxed);
        *current = Some(problem);
    }

    fn has_problem(&self) -> bool {
        self.problem().is_some()
    }
}

fn warn_if_empty(rules: &Rules) {
    if rules.is_empty() {
        warn!("the rules file has no rule: every request matched against it is refused");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The follower of the rules file, before its thread is started.
pub(super) struct Watch {
    routes: Arc<Routes>,
    /// The version in use (or last found unusable): no need to read it again.
    seen: Option<Fingerprint>,
    /// A change in place not read yet: the file as last seen, and when the first such change
    /// was seen (it is read once left alone for a tick, but never later than [`HOLD`]).
    pending: Option<(Option<Fingerprint>, Instant)>,
    /// Read again next tick even if nothing changed: the last read was held back (a last line
    /// without its line ending, just written) or the file changed in place while it was read.
    recheck: bool,
    /// When the path was last judged while nothing changed (see [`VERIFY`]).
    verified: Instant,
}

/// The running follower; stopped when dropped.
pub(super) struct Follower {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    forced: Arc<AtomicBool>,
}

enum Msg {
    Reload,
    Stop,
}

impl Watch {
    pub(super) fn start(self) -> std::io::Result<Follower> {
        let (tx, rx) = channel();
        let forced = Arc::new(AtomicBool::new(false));
        let flag = forced.clone();
        let mut watch = self;
        let thread = thread::Builder::new()
            .name("tokenfile-routes".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(TICK) {
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(Msg::Reload) | Err(RecvTimeoutError::Timeout) => {}
                    }
                    let force = flag.swap(false, Relaxed);
                    watch.tick(force);
                }
            })?;
        Ok(Follower {
            tx,
            thread: Some(thread),
            forced,
        })
    }

    /// One look at the file.
    fn tick(&mut self, force: bool) {
        let now = Fingerprint::at(&self.routes.path);
        if !force && !self.recheck && now == self.seen {
            self.pending = None;
            if self.verified.elapsed() >= VERIFY {
                self.verified = Instant::now();
                self.verify();
            }
            return;
        }
        let replaced = match (now, self.seen) {
            (Some(now), Some(seen)) => now.ino != seen.ino || now.dev != seen.dev,
            _ => true,
        };
        if !force && !self.recheck && !replaced {
            // Changed in place: give the writer a tick to finish — but a writer that never
            // stops does not hold a change back longer than HOLD (what is read then is at
            // worst the first lines of the new file: fewer rules, never a wider one).
            let since = self.pending.map_or_else(Instant::now, |(_, since)| since);
            let quiet = self.pending.is_some_and(|(last, _)| last == now);
            if !quiet && since.elapsed() < HOLD {
                self.pending = Some((now, since));
                return;
            }
        }
        self.pending = None;
        self.recheck = false;
        self.read(now);
    }

    /// Reads the file and installs it, keeps the last good rules, or looks again next tick.
    fn read(&mut self, now: Option<Fingerprint>) {
        match routes::read_file(&self.routes.path) {
            Ok(file) => {
                let read = Fingerprint::of(&file.meta);
                let after = Fingerprint::at(&self.routes.path);
                if after != Some(read) && after.is_some_and(|after| after.ino == read.ino) {
                    // Written in place while it was read: read again next tick. (Replaced
                    // by a rename instead, what was read is a whole file: it is installed,
                    // and the next tick reads the newer one.)
                    self.recheck = true;
                    return;
                }
                if !file.ended && written_within(&file.meta, HOLD) {
                    // A last line without its line ending, just written, may be half a
                    // line (`app:read` of `app:read-all`): the last good rules stay until
                    // it ends or is left alone.
                    self.recheck = true;
                    return;
                }
                self.seen = Some(read);
                self.routes.install(file.rules);
            }
            Err(problem) => {
                self.seen = now;
                self.routes.keep_last_good(&problem);
            }
        }
    }

    /// Nothing changed: if the rules in use are stale, try the file again (its directory may
    /// have been fixed); otherwise judge its path, which a `chmod` of a directory changes
    /// without touching the file.
    fn verify(&mut self) {
        if self.routes.has_problem() {
            self.read(self.seen);
        } else if let Err(problem) = routes::judge_file(&self.routes.path) {
            self.routes.keep_last_good(&problem);
        }
    }
}

impl Follower {
    /// SIGHUP: read the rules file again, changed or not.
    pub(super) fn reload(&self) {
        self.forced.store(true, Relaxed);
        let _ = self.tx.send(Msg::Reload);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
