//! `serve --routes FILE`: the rules in use, and the thread that follows the file
//! (docs/routes.md "Reloading").
//!
//! The rules file is small and written by hand, so it is polled rather than watched: a
//! `stat` every [`TICK`] notices any change — in place, by rename, through a symlink swap,
//! deleted and re-created — well within the second that a change of the token file is
//! promised in. A file replaced by rename (a new inode) is complete and is read at once; one
//! changed in place is read once it has been left alone for a tick, so that a rules file
//! caught half-written (`cat > routes` truncates first) is not installed, and one whose last
//! line has no line ending is believed only once it was left alone for [`UNENDED_HOLD`] (a
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
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::routes::{self, Rules};

/// How often the rules file is looked at.
const TICK: Duration = Duration::from_millis(200);
/// How long a last line without its line ending must be left alone before it is believed
/// (the token file's hold, docs/protocols.md "Reloads").
const UNENDED_HOLD: Duration = Duration::from_millis(700);

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
        if rules.is_empty() {
            warn!(
                "the rules file has no rule: every request that serve matches against it is refused"
            );
        }
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
            recheck: false,
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
            problem: self
                .problem
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            installed_unix: self.installed_unix.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            failures: self.failures.load(Relaxed),
            misses: self.misses.load(Relaxed),
        }
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = problem;
    }

    fn install(&self, rules: Rules) {
        info!(rules = rules.len(), "routes reloaded");
        if rules.is_empty() {
            warn!("the rules file has no rule: every request matched against it is refused");
        }
        self.current.store(Arc::new(rules));
        self.installed_unix.store(unix_now(), Relaxed);
        self.reloads.fetch_add(1, Relaxed);
        self.set_problem(None);
    }

    fn keep_last_good(&self, problem: &Error) {
        // Logged, and shown by `/healthz` to anyone who can reach serve: redacted, in case a
        // message quotes a secret pasted into the file.
        let problem = crate::token::redact(&problem.to_string()).into_owned();
        error!("keeping the last good routes: {problem}; fix it and save again");
        self.failures.fetch_add(1, Relaxed);
        self.set_problem(Some(problem));
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
    /// The last read was held back (a last line without its line ending, just written):
    /// read again next tick even if nothing changed.
    recheck: bool,
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
                // A change in place is read once it was left alone for a tick.
                let mut pending: Option<Fingerprint> = None;
                loop {
                    match rx.recv_timeout(TICK) {
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(Msg::Reload) | Err(RecvTimeoutError::Timeout) => {}
                    }
                    let force = flag.swap(false, Relaxed);
                    pending = watch.tick(pending, force);
                }
            })?;
        Ok(Follower {
            tx,
            thread: Some(thread),
            forced,
        })
    }

    /// One look at the file; returns the in-place change waiting to be read next tick.
    fn tick(&mut self, pending: Option<Fingerprint>, force: bool) -> Option<Fingerprint> {
        let now = Fingerprint::at(&self.routes.path);
        if !force && !self.recheck && now == self.seen {
            return None;
        }
        let replaced = match (now, self.seen) {
            (Some(now), Some(seen)) => now.ino != seen.ino || now.dev != seen.dev,
            _ => true,
        };
        if !force && !self.recheck && !replaced && pending != now {
            // Changed in place: give the writer a tick to finish.
            return now;
        }
        self.recheck = false;
        match routes::read_file(&self.routes.path) {
            Ok(file) => {
                let read = Fingerprint::of(&file.meta);
                if Fingerprint::at(&self.routes.path) != Some(read) {
                    // Changed while being read: look again next tick.
                    return None;
                }
                if !file.ended && written_within(&file.meta, UNENDED_HOLD) {
                    // A last line without its line ending, just written, may be half a
                    // line (`app:read` of `app:read-all`): the last good rules stay until
                    // it ends or is left alone. (Leaving it out instead would be safe too —
                    // dropping the last rule only makes more requests match none — but a
                    // rule file read half is not one the admin wrote.)
                    self.recheck = true;
                    return None;
                }
                self.seen = Some(read);
                self.routes.install(file.rules);
            }
            Err(problem) => {
                self.seen = now;
                self.routes.keep_last_good(&problem);
            }
        }
        None
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
