//! The reloader: one thread that notices every way the token file changes and installs the
//! new state whole. It is the I/O driver of [`policy`](super::policy), which decides when
//! to read and whether to install what was read; here the events are gathered, the file is
//! read, and the policy's actions are carried out.
//!
//! How a change is noticed:
//! - inotify (through `notify`) on the directory of every name leading to the file (see
//!   [`names`]): a rename over it (this tool, `sed -i`, vim), an in-place write (`>>`,
//!   `cp`, an editor that overwrites), a delete, a re-create, a Kubernetes `..data` swap;
//! - a stat of the path every [`TICK`] as a safety net (network file systems, a lost
//!   inotify event, a directory that did not exist yet when we tried to watch it);
//! - SIGHUP, which forces a reload.
//!
//! A read is believed only if no change showed up during it or within [`SETTLE`] after, and
//! the path still leads to the file read. A few descriptors are kept in reserve, so that
//! clients holding every other one cannot stop a reload: a read that fails for want of a
//! descriptor releases them and tries again at once.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, error, info, trace, warn};

use super::load::{self, Fingerprint, Reading};
use super::policy::{Action, Input, Policy, ReadResult, TICK};
use super::state::{FileStatus, Shared, Snapshot, log_problems};
use crate::index::LoadProblem;
use crate::trust::{self, Refusal};

/// Pause after a read to let a change that happened during it show up.
const SETTLE: Duration = Duration::from_millis(20);
/// Events queued between the watcher thread and the reloader; beyond it they are dropped
/// and a full re-check is forced instead.
const QUEUE: usize = 4096;
/// Descriptors held in reserve for reading the file (opening it, and the checks of its
/// path) when every other one is taken.
const RESERVE: usize = 4;

enum Msg {
    Fs(Instant, notify::Result<notify::Event>),
    Wake,
    Stop,
}

/// Flags set from other threads; a message wakes the reloader to look at them.
#[derive(Default)]
struct Flags {
    forced: AtomicBool,
    overflow: AtomicBool,
}

/// Handle to ask the reloader for a forced reload (SIGHUP).
#[derive(Clone)]
pub(super) struct Trigger {
    tx: SyncSender<Msg>,
    flags: Arc<Flags>,
}

impl Trigger {
    pub(super) fn reload(&self) {
        self.flags.forced.store(true, Ordering::SeqCst);
        // If the queue is full the reloader is busy draining it and sees the flag anyway.
        let _ = self.tx.try_send(Msg::Wake);
    }
}

pub(super) struct Reloader {
    trigger: Trigger,
    thread: Option<JoinHandle<()>>,
}

impl Reloader {
    /// Starts watching `shared.file()`, whose state in use was read with `fingerprint`;
    /// `recheck`: read it again after this long (its last line was held back).
    pub(super) fn start(
        shared: Arc<Shared>,
        fingerprint: Option<Fingerprint>,
        recheck: Option<Duration>,
    ) -> io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let flags = Arc::new(Flags::default());
        let watcher = {
            let tx = tx.clone();
            let flags = flags.clone();
            // Runs on notify's thread: never block it.
            let handler = move |event: notify::Result<notify::Event>| {
                if tx.try_send(Msg::Fs(Instant::now(), event)).is_err() {
                    flags.overflow.store(true, Ordering::SeqCst);
                    let _ = tx.try_send(Msg::Wake);
                }
            };
            match RecommendedWatcher::new(handler, notify::Config::default()) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(
                        "cannot watch for file changes ({e}); checking the file every {}s instead",
                        TICK.as_secs()
                    );
                    None
                }
            }
        };
        let now = Instant::now();
        // The first load judged the path: a refused one may be unsafe (if it was refused for
        // its content instead, the first tick costs one needless reload).
        let path_unsafe = match shared.snapshot().status {
            FileStatus::Loaded => Some(false),
            FileStatus::Refused(_) => Some(true),
            FileStatus::Missing => None,
        };
        let mut state = Reload {
            path: shared.file().to_path_buf(),
            shared,
            rx,
            flags: flags.clone(),
            watcher,
            watched: HashSet::new(),
            warned_watch: HashSet::new(),
            names: Vec::new(),
            policy: Policy::new(fingerprint, recheck.map(|r| now + r)),
            seen: fingerprint,
            deadline: recheck.map(|r| now + r),
            next_tick: now + TICK,
            stopping: false,
            read: None,
            reserve: Vec::new(),
            path_unsafe,
        };
        state.refill_reserve();
        state.sync_watches();
        let thread = thread::Builder::new()
            .name("tokenfile-reload".into())
            .spawn(move || state.run())?;
        Ok(Reloader {
            trigger: Trigger { tx, flags },
            thread: Some(thread),
        })
    }

    pub(super) fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    pub(super) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Blocking send: the queue drains quickly, and Stop must not be lost.
        let _ = self.trigger.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the last read found, kept until the policy says what to do with it.
enum Found {
    Loaded(Box<Snapshot>, Vec<LoadProblem>, Fingerprint),
    Failed(FileStatus),
    /// A passing failure, and why.
    Passing(String),
}

struct Reload {
    path: PathBuf,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    flags: Arc<Flags>,
    watcher: Option<RecommendedWatcher>,
    /// Directories being watched, and those we already warned we cannot watch.
    watched: HashSet<PathBuf>,
    warned_watch: HashSet<PathBuf>,
    /// Every name that leads to the file (see [`names`]).
    names: Vec<PathBuf>,
    policy: Policy,
    /// The fingerprint of the file the state in use came from.
    seen: Option<Fingerprint>,
    /// When the policy wants to be woken.
    deadline: Option<Instant>,
    next_tick: Instant,
    /// Stop was received while draining events.
    stopping: bool,
    read: Option<Found>,
    reserve: Vec<File>,
    /// Whether the path was unsafe at the last tick (`None` before the first).
    path_unsafe: Option<bool>,
}

impl Reload {
    fn run(mut self) {
        while !self.stopping {
            let wake = self
                .deadline
                .map_or(self.next_tick, |d| d.min(self.next_tick));
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Msg::Fs(at, event)) => {
                    if let Some(input) = self.classify(at, event) {
                        self.step(input);
                    }
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
            self.take_flags(true);
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick = now + TICK;
                let fingerprint = load::fingerprint(&self.path);
                if self.sync_watches() {
                    self.step(Input::Unseen { at: now });
                }
                self.step(Input::Tick {
                    at: now,
                    fingerprint,
                });
                // A chmod or chown of a directory on the way is no event on the file's
                // names: the path is judged again every tick, and a verdict that changed
                // (unsafe now, or fixed) forces a reload, as SIGHUP does.
                let unsafe_now = matches!(trust::open(&self.path), Err(Refusal::Unsafe(_)));
                if self.path_unsafe.replace(unsafe_now) == Some(!unsafe_now) {
                    info!(file = %self.path.display(), "the path's safety changed; reloading");
                    self.step(Input::Hangup { at: now });
                }
            }
            if self.deadline.is_some_and(|d| d <= Instant::now()) {
                self.deadline = None;
                self.step(Input::Due { at: Instant::now() });
            }
        }
    }

    /// Hands SIGHUP and lost events to the policy; `act`: carry out what it says (not
    /// while a read waits for its result).
    fn take_flags(&mut self, act: bool) {
        let mut inputs = Vec::new();
        if self.flags.forced.swap(false, Ordering::SeqCst) {
            info!(file = %self.path.display(), "reload requested (SIGHUP)");
            inputs.push(Input::Hangup { at: Instant::now() });
        }
        if self.flags.overflow.swap(false, Ordering::SeqCst) {
            warn!("file events were dropped; re-checking the file");
            // What was dropped may have been in-place writes.
            inputs.push(Input::Unseen { at: Instant::now() });
        }
        for input in inputs {
            if act {
                self.step(input);
            } else {
                self.policy.step(input);
            }
        }
    }

    /// Feeds `input` to the policy and carries out its actions until it waits.
    fn step(&mut self, input: Input) {
        trace!(?input, "reload policy input");
        let mut action = self.policy.step(input);
        loop {
            trace!(?action, "reload policy action");
            let now = Instant::now();
            action = match action {
                Action::Read {
                    wait_for_writers,
                    hold_tail,
                } => {
                    let result = self.read(wait_for_writers, hold_tail);
                    self.settle();
                    trace!(?result, "read");
                    self.policy.step(Input::Read {
                        at: Instant::now(),
                        result,
                    })
                }
                Action::Install => {
                    if let Some(Found::Loaded(snapshot, problems, fingerprint)) = self.read.take() {
                        self.seen = Some(fingerprint);
                        self.install_loaded(*snapshot, &problems);
                    }
                    self.policy.step(Input::Due { at: now })
                }
                Action::Keep => {
                    debug!("the file's content is unchanged");
                    if let Some(Found::Loaded(_, _, fingerprint)) = self.read.take() {
                        self.seen = Some(fingerprint);
                    }
                    self.policy.step(Input::Due { at: now })
                }
                Action::FailClosed => {
                    if let Some(Found::Failed(status)) = self.read.take() {
                        self.fail_closed(status);
                    }
                    self.policy.step(Input::Due { at: now })
                }
                Action::Wait { until } => {
                    self.deadline = until;
                    break;
                }
                Action::Retry { at } => {
                    if let Some(Found::Passing(why)) = self.read.take() {
                        warn!(file = %self.path.display(), "cannot read the file now ({why}); retrying");
                        self.shared.metrics.count_reload_failure();
                    }
                    self.deadline = Some(at);
                    break;
                }
            };
        }
        if self.sync_watches() {
            self.step(Input::Unseen { at: Instant::now() });
        }
    }

    /// Lets changes made during a read show up, and hands them to the policy (which then
    /// knows the read may be stale).
    fn settle(&mut self) {
        thread::sleep(SETTLE);
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Fs(at, event)) => {
                    if let Some(input) = self.classify(at, event) {
                        // A read is in hand: the policy only takes note.
                        trace!(?input, "reload policy input while reading");
                        self.policy.step(input);
                    }
                }
                Ok(Msg::Wake) => {}
                Ok(Msg::Stop) => {
                    self.stopping = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.take_flags(false);
    }

    /// What an event means for the file, if anything.
    fn classify(&self, at: Instant, event: notify::Result<notify::Event>) -> Option<Input> {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                debug!("file watch error: {e}");
                return Some(Input::Unseen { at });
            }
        };
        if event.need_rescan() {
            return Some(Input::Unseen { at });
        }
        let ours = event.paths.iter().any(|p| self.names.contains(p));
        let on_watched_dir = event.paths.iter().any(|p| self.watched.contains(p));
        // Only events on the file's own names are traced: a log written beside the file
        // (`serve 2>>/srv/x/serve.log`) would otherwise trace its own writes forever.
        if ours || on_watched_dir {
            trace!(kind = ?event.kind, ours, "file event");
        }
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) if ours => {
                // The state right after a complete write, before the next writer truncates.
                Some(Input::Closed {
                    at,
                    fingerprint: load::fingerprint(&self.path),
                })
            }
            // Opening and reading (ours included) change nothing.
            EventKind::Access(_) => None,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) if ours => {
                Some(Input::Written { at })
            }
            // Writes to other files of the directory (the audit log, a temp file) do not
            // matter until they are renamed, which is a name event.
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => None,
            // chmod/chown of the file, or of its directory: safety may have changed.
            EventKind::Modify(ModifyKind::Metadata(_)) if ours || on_watched_dir => {
                Some(Input::Renamed { at })
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => None,
            // Created, removed, renamed: the file itself.
            _ if ours => Some(Input::Renamed { at }),
            // Another name in a directory on the way: it matters only if the path now leads
            // to another file (a `..data` swap, a directory replaced). Other files coming and
            // going beside it (an editor's swap file, a proxy's logs) must not cost a re-read
            // of what may be a million records.
            _ if self.leads_elsewhere() => Some(Input::Renamed { at }),
            _ => {
                trace!("a name beside the file changed; the path leads to the same file");
                None
            }
        }
    }

    /// Whether the path resolves through other names, or to a file other than (or changed
    /// since) the one the state in use came from. The fingerprint holds the file's device
    /// and inode, so another file behind the same names shows too.
    fn leads_elsewhere(&self) -> bool {
        names(&self.path) != self.names || load::fingerprint(&self.path) != self.seen
    }

    /// Reads the file once (twice if it was short of descriptors) and says what was found;
    /// the state itself waits in `self.read`.
    fn read(&mut self, wait_for_writers: bool, hold_tail: bool) -> ReadResult {
        let mut reading = load::read(&self.path, wait_for_writers, hold_tail);
        if matches!(&reading, Reading::Unreadable(e) if out_of_descriptors(e))
            && !self.reserve.is_empty()
        {
            self.reserve.clear();
            reading = load::read(&self.path, wait_for_writers, hold_tail);
        }
        self.refill_reserve();
        let (result, found) = match reading {
            Reading::Read {
                snapshot,
                problems,
                fingerprint,
                leased,
                tail_held,
            } => {
                let current = self.shared.snapshot();
                let unchanged = current.status.is_loaded() && current.content == snapshot.content;
                let withdraws = snapshot.withdraws_from(&current);
                drop(current);
                // The path must still lead to the file read (a rename may not have shown).
                if load::fingerprint(&self.path) != Some(fingerprint) {
                    (ReadResult::Unstable, None)
                } else {
                    if tail_held.is_some() {
                        debug!("the last line has no line ending yet; it counts in a second");
                    }
                    let result = ReadResult::Loaded {
                        fingerprint,
                        leased,
                        unchanged,
                        content: snapshot.content,
                        withdraws,
                        tail_held,
                    };
                    (result, Some(Found::Loaded(snapshot, problems, fingerprint)))
                }
            }
            Reading::Missing => (
                ReadResult::Missing,
                Some(Found::Failed(FileStatus::Missing)),
            ),
            Reading::Unstable => {
                debug!("the file changed while being read");
                (ReadResult::Unstable, None)
            }
            Reading::Busy => {
                debug!("another process has the file open for writing");
                (ReadResult::Busy, None)
            }
            Reading::Unreadable(e) if passing(&e) => {
                (ReadResult::Passing, Some(Found::Passing(e.to_string())))
            }
            Reading::Unreadable(e) => {
                let reason = format!("cannot read {}: {e}", self.path.display());
                self.refused(reason)
            }
            Reading::Unsafe(reason) => self.refused(reason),
        };
        // A passing failure is reported once per streak, not at every retry.
        self.read = match found {
            Some(Found::Passing(_)) if self.policy.failing() => None,
            found => found,
        };
        result
    }

    fn refused(&self, reason: String) -> (ReadResult, Option<Found>) {
        let fingerprint = load::fingerprint(&self.path);
        (
            ReadResult::Refused { fingerprint },
            Some(Found::Failed(FileStatus::Refused(reason))),
        )
    }

    fn refill_reserve(&mut self) {
        while self.reserve.len() < RESERVE {
            match File::open("/dev/null") {
                Ok(file) => self.reserve.push(file),
                Err(_) => break,
            }
        }
    }

    /// Watches the directory of every name leading to the file; drops watches no longer
    /// on the way (an old Kubernetes `..<timestamp>` directory). True if a directory is
    /// watched from now on that was on the way before (writes there were not seen).
    fn sync_watches(&mut self) -> bool {
        let had_names = !self.names.is_empty();
        let mut added = false;
        self.names = names(&self.path);
        let wanted: HashSet<PathBuf> = self
            .names
            .iter()
            .filter_map(|n| n.parent().map(Path::to_path_buf))
            .collect();
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        for dir in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            // A directory that is gone took its watch with it (notify drops it itself).
            if dir.exists() {
                let _ = watcher.unwatch(&dir);
            }
            self.watched.remove(&dir);
        }
        for dir in wanted {
            if self.watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "watching");
                    self.watched.insert(dir);
                    added = had_names;
                }
                Err(e) => {
                    if self.warned_watch.insert(dir.clone()) {
                        warn!(
                            dir = %dir.display(),
                            "cannot watch ({e}); changes there are noticed within {}s",
                            TICK.as_secs()
                        );
                    }
                }
            }
        }
        added
    }

    fn install_loaded(&mut self, snapshot: Snapshot, problems: &[LoadProblem]) {
        let was_loaded = self.shared.snapshot().status.is_loaded();
        log_problems(&self.path, problems);
        info!(
            file = %self.path.display(),
            records = snapshot.index.records,
            tokens = snapshot.index.len(),
            invalid_lines = snapshot.invalid_lines,
            "loaded the token file"
        );
        if !was_loaded {
            info!(file = %self.path.display(), "the token file is usable again");
        }
        self.install(snapshot);
        self.shared.metrics.count_reload();
    }

    fn fail_closed(&mut self, status: FileStatus) {
        self.seen = load::fingerprint(&self.path);
        if self.shared.snapshot().status == status {
            return;
        }
        match &status {
            FileStatus::Missing => error!(
                file = %self.path.display(),
                "the token file is gone: every token is refused until it is back"
            ),
            FileStatus::Refused(reason) => {
                error!(file = %self.path.display(), "every token is refused: {reason}");
            }
            FileStatus::Loaded => {}
        }
        self.install(Snapshot::empty(status));
        self.shared.metrics.count_reload_failure();
    }

    /// Puts `snapshot` in use and frees the state it replaces here, off the request path.
    fn install(&self, snapshot: Snapshot) {
        drop(self.shared.install(snapshot));
        super::release_freed_memory();
    }
}

/// A reason to fail that passes by itself: retried, never taken for the file's state.
fn passing(e: &io::Error) -> bool {
    use nix::libc;
    out_of_descriptors(e)
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOMEM | libc::EINTR | libc::EAGAIN)
        )
        || matches!(
            e.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::OutOfMemory
        )
}

fn out_of_descriptors(e: &io::Error) -> bool {
    use nix::libc;
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Every name that leads to the file: `path` itself and each symlink target on the way,
/// as (canonical directory)/(name). Events on these names concern the file; their
/// directories are what the reloader watches. A Kubernetes `tokens -> ..data/tokens` with
/// `..data -> ..2026_05_01...` gives `<dir>/tokens` and `<dir>/..2026_05_01.../tokens`, so
/// the swap of `..data` (in `<dir>`) and a change of the real file are both seen.
fn names(path: &Path) -> Vec<PathBuf> {
    const MAX_HOPS: usize = 40; // as the kernel's ELOOP limit
    let mut names = Vec::new();
    let mut current = path.to_path_buf();
    for _ in 0..MAX_HOPS {
        let Some(name) = current.file_name().map(ToOwned::to_owned) else {
            break;
        };
        let parent = match current.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let Ok(dir) = fs::canonicalize(parent) else {
            break;
        };
        let full = dir.join(name);
        if names.contains(&full) {
            break; // a symlink loop
        }
        names.push(full.clone());
        match fs::read_link(&full) {
            Ok(target) if target.is_absolute() => current = target,
            Ok(target) => current = dir.join(target),
            Err(_) => break,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_a_kubernetes_layout() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(base.join("..2026_01")).unwrap();
        fs::write(base.join("..2026_01/tokens"), b"").unwrap();
        symlink("..2026_01", base.join("..data")).unwrap();
        symlink("..data/tokens", base.join("tokens")).unwrap();
        assert_eq!(
            names(&base.join("tokens")),
            vec![base.join("tokens"), base.join("..2026_01/tokens")]
        );
    }

    #[test]
    fn names_stop_at_a_loop() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        symlink("b", base.join("a")).unwrap();
        symlink("a", base.join("b")).unwrap();
        assert_eq!(names(&base.join("a")), vec![base.join("a"), base.join("b")]);
    }
}
