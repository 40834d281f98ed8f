//! The reloader: one thread that notices every way the token file changes and installs the
//! new state whole.
//!
//! How a change is noticed:
//! - inotify (through `notify`) on the directory of every name leading to the file (see
//!   [`load::names`]): a rename over it (this tool, `sed -i`, vim), an in-place write (`>>`,
//!   `cp`, an editor that overwrites), a delete, a re-create, a Kubernetes `..data` swap;
//! - a stat of the path every [`TICK`] as a safety net (network file systems, a lost
//!   inotify event, a directory that did not exist yet when we tried to watch it);
//! - SIGHUP, which forces a reload.
//!
//! A token valid before and after a change must never be refused during it. A file replaced
//! by rename or swapped through a symlink is read either old or new, so that is easy. An
//! in-place rewrite (truncate, then write) really leaves a short or empty file for a while,
//! and the kernel does not always say so: Linux sets the new size of a truncate before its
//! times and emits its inotify event only at the end, and ext4 can spend a disk I/O in
//! between. So a new state is installed only when
//! - the file was quiet for [`QUIET`] (or, while a writer has it open — written but not
//!   closed — for [`WRITER_HOLD`]);
//! - it did not change while being read ([`load::read`]), no write to it showed up within
//!   [`SETTLE`] after, and it still has the same fingerprint;
//! - it is not the same file with the same times as last seen but another size (a truncate
//!   caught halfway; trusted after [`MAX_STALE`], since coarse file system clocks can show
//!   the same for a finished write — and at once when it was read under a read lease,
//!   which no truncate can overlap);
//! - if it takes anything away (a token, a scope, an expiry; see
//!   [`Snapshot::withdraws_from`]) or the file vanished: the same file is seen again,
//!   unchanged, [`CONFIRM`] after the first read. A state that only adds goes in at once.
//!
//! What remains: an in-place writer that leaves the file truncated, without a sign, for
//! longer than [`CONFIRM`]. Writers that replace the file by rename (this tool, `sed -i`,
//! vim, Kubernetes) are never seen halfway.

use std::collections::HashSet;
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
use super::state::{FileStatus, Shared, Snapshot, log_problems};
use crate::check::LoadProblem;

/// Quiet time after the last change before reading.
const QUIET: Duration = Duration::from_millis(50);
/// Quiet time required while an in-place writer has the file open (written, not closed).
const WRITER_HOLD: Duration = Duration::from_millis(500);
/// Pause after a read to let a write that started during it show up.
const SETTLE: Duration = Duration::from_millis(20);
/// Pause before retrying a read that raced with a writer.
const RETRY: Duration = Duration::from_millis(30);
/// How long a state that takes something away (or a vanished file) must stay the same
/// before it is installed.
const CONFIRM: Duration = Duration::from_millis(300);
/// A file changed continuously is read anyway after this long (still only a stable read,
/// never while a writer holds it).
const MAX_STALE: Duration = Duration::from_secs(2);
/// A file held open for writing longer than this is read anyway. Long, because a truncate
/// can wait for disk I/O (ext4 flushes a file rewritten in place when it is closed, and the
/// next truncate waits for that), and seconds were seen on a busy virtual disk.
const WRITER_LIMIT: Duration = Duration::from_secs(30);
/// Safety-net stat of the path.
const TICK: Duration = Duration::from_secs(1);
/// Events queued between the watcher thread and the reloader; beyond it they are dropped
/// and a full re-check is forced instead.
const QUEUE: usize = 4096;

enum Msg {
    Fs(notify::Result<notify::Event>),
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
pub struct Trigger {
    tx: SyncSender<Msg>,
    flags: Arc<Flags>,
}

impl Trigger {
    pub fn reload(&self) {
        self.flags.forced.store(true, Ordering::SeqCst);
        // If the queue is full the reloader is busy draining it and sees the flag anyway.
        let _ = self.tx.try_send(Msg::Wake);
    }
}

pub struct Reloader {
    trigger: Trigger,
    thread: Option<JoinHandle<()>>,
}

impl Reloader {
    /// Starts watching `shared.file()`, whose state in use was read with `fingerprint`.
    pub fn start(shared: Arc<Shared>, fingerprint: Option<Fingerprint>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let flags = Arc::new(Flags::default());
        let watcher = {
            let tx = tx.clone();
            let flags = flags.clone();
            // Runs on notify's thread: never block it.
            let handler = move |event: notify::Result<notify::Event>| {
                if tx.try_send(Msg::Fs(event)).is_err() {
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
        let mut state = Reload {
            path: shared.file().to_path_buf(),
            shared,
            rx,
            flags: flags.clone(),
            watcher,
            watched: HashSet::new(),
            warned_watch: HashSet::new(),
            names: Vec::new(),
            seen: fingerprint,
            observed: fingerprint,
            dirty_since: None,
            last_change: now,
            last_write_to_file: None,
            writer_open: false,
            forced: false,
            retry_at: None,
            suspect_since: None,
            busy_since: None,
            confirming: None,
            next_tick: now + TICK,
            stopping: false,
        };
        state.sync_watches();
        let thread = thread::Builder::new()
            .name("tokenfile-reload".into())
            .spawn(move || state.run())?;
        Ok(Reloader {
            trigger: Trigger { tx, flags },
            thread: Some(thread),
        })
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    pub fn stop(mut self) {
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

/// What a state that takes something away waits for: the same file, unchanged, later.
#[derive(Debug, Clone, Copy)]
struct Confirming {
    /// `None`: the file was missing.
    fingerprint: Option<Fingerprint>,
    since: Instant,
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
    /// Every name that leads to the file (see `load::names`).
    names: Vec<PathBuf>,
    /// The fingerprint of the file the state in use came from (also for a refused file, so
    /// that it is retried only once it changes).
    seen: Option<Fingerprint>,
    /// The first fingerprint observed with the file's current identity and times: a later
    /// one with the same times but another size is a truncate caught halfway.
    observed: Option<Fingerprint>,
    /// Since when a change waits to be looked at.
    dirty_since: Option<Instant>,
    last_change: Instant,
    /// Last time a write to the file itself was seen: a read that overlaps it is discarded.
    last_write_to_file: Option<Instant>,
    /// An in-place writer wrote to the file and was not seen closing it yet.
    writer_open: bool,
    forced: bool,
    retry_at: Option<Instant>,
    suspect_since: Option<Instant>,
    /// Since when another process keeps the file open for writing.
    busy_since: Option<Instant>,
    confirming: Option<Confirming>,
    next_tick: Instant,
    /// Stop was received while draining events.
    stopping: bool,
}

impl Reload {
    fn run(mut self) {
        while !self.stopping {
            let now = Instant::now();
            let deadline = self
                .due_at()
                .map_or(self.next_tick, |d| d.min(self.next_tick));
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(now))
            {
                Ok(Msg::Fs(event)) => self.on_event(event),
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
            self.take_flags();
            let now = Instant::now();
            if now >= self.next_tick {
                self.tick(now);
            }
            if self.due_at().is_some_and(|at| at <= Instant::now()) {
                self.attempt();
            }
        }
    }

    fn take_flags(&mut self) {
        if self.flags.forced.swap(false, Ordering::SeqCst) {
            info!(file = %self.path.display(), "reload requested (SIGHUP)");
            self.forced = true;
            self.retry_at = None;
            self.mark_dirty();
        }
        if self.flags.overflow.swap(false, Ordering::SeqCst) {
            warn!("file events were dropped; re-checking the file");
            self.mark_dirty();
        }
    }

    /// When the pending change (if any) should be looked at.
    fn due_at(&self) -> Option<Instant> {
        let since = self.dirty_since?;
        let mut at = if self.forced {
            since
        } else if self.writer_open {
            self.last_change + WRITER_HOLD
        } else {
            (self.last_change + QUIET).min(since + MAX_STALE)
        };
        if let Some(retry) = self.retry_at {
            at = at.max(retry);
        }
        Some(at)
    }

    fn mark_dirty(&mut self) {
        let now = Instant::now();
        self.last_change = now;
        self.dirty_since.get_or_insert(now);
    }

    fn is_ours(&self, path: &Path) -> bool {
        self.names.iter().any(|n| n == path)
    }

    fn on_event(&mut self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                debug!("file watch error: {e}");
                self.mark_dirty();
                return;
            }
        };
        if event.need_rescan() {
            self.mark_dirty();
            return;
        }
        let ours = event.paths.iter().any(|p| self.is_ours(p));
        let on_watched_dir = event.paths.iter().any(|p| self.watched.contains(p));
        trace!(kind = ?event.kind, ours, "file event");
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) if ours => {
                self.writer_open = false;
                // The state right after a complete write, before the next writer truncates.
                if let Some(fingerprint) = load::fingerprint(&self.path) {
                    self.observe(fingerprint);
                }
                self.mark_dirty();
            }
            // Opening and reading (ours included) change nothing.
            EventKind::Access(_) => {}
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) if ours => {
                self.writer_open = true;
                self.last_write_to_file = Some(Instant::now());
                self.mark_dirty();
            }
            // Writes to other files of the directory (the audit log, a temp file) do not
            // matter until they are renamed, which is a name event.
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {}
            // chmod/chown of the file, or of its directory: safety may have changed.
            EventKind::Modify(ModifyKind::Metadata(_)) if ours || on_watched_dir => {
                self.mark_dirty()
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => {}
            // Created, removed, renamed: the file itself.
            _ if ours => {
                self.writer_open = false;
                self.mark_dirty();
            }
            // Another name in a directory on the way: it matters only if the path now leads
            // to another file (a `..data` swap, a directory replaced). Other files coming and
            // going beside it (an editor's swap file, a proxy's logs) must not cost a re-read
            // of what may be a million records.
            _ if self.leads_elsewhere() => self.mark_dirty(),
            _ => trace!("a name beside the file changed; the path leads to the same file"),
        }
    }

    /// Whether the path resolves through other names, or to a file other than (or changed
    /// since) the one the state in use came from. The fingerprint holds the file's device
    /// and inode, so another file behind the same names shows too.
    fn leads_elsewhere(&self) -> bool {
        load::names(&self.path) != self.names || load::fingerprint(&self.path) != self.seen
    }

    fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        self.sync_watches();
        let fingerprint = load::fingerprint(&self.path);
        if let Some(fingerprint) = fingerprint {
            self.observe(fingerprint);
        }
        if self.dirty_since.is_none() && fingerprint != self.seen {
            debug!("periodic check: the file changed");
            self.mark_dirty();
        }
    }

    /// Records a fingerprint; false if it is a truncate caught halfway (see `observed`).
    fn observe(&mut self, fingerprint: Fingerprint) -> bool {
        match self.observed {
            Some(first) if fingerprint.resized_without_times(&first) => false,
            _ => {
                self.observed = Some(fingerprint);
                true
            }
        }
    }

    /// Watches the directory of every name leading to the file; drops watches no longer
    /// on the way (an old Kubernetes `..<timestamp>` directory).
    fn sync_watches(&mut self) {
        self.names = load::names(&self.path);
        let wanted: HashSet<PathBuf> = self
            .names
            .iter()
            .filter_map(|n| n.parent().map(Path::to_path_buf))
            .collect();
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for dir in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            // Fails if the directory is gone, which removed the watch already.
            let _ = watcher.unwatch(&dir);
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
    }

    /// The pending change is dealt with.
    fn done(&mut self, seen: Option<Fingerprint>) {
        self.seen = seen;
        self.dirty_since = None;
        self.forced = false;
        self.retry_at = None;
        self.suspect_since = None;
        self.busy_since = None;
        self.confirming = None;
    }

    fn retry(&mut self, why: &str) {
        debug!("{why}; retrying");
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// Looks at the file and installs its state if it changed.
    fn attempt(&mut self) {
        let started = Instant::now();
        match load::read(&self.path, !self.writer_too_long()) {
            Reading::Unstable => self.retry("the file changed while being read"),
            Reading::Busy => {
                self.busy_since.get_or_insert(started);
                self.retry("another process has the file open for writing");
            }
            Reading::Missing => {
                // Bridges the gap of a writer that removes the file, then writes a new one.
                let grants = !self.shared.snapshot().index.is_empty();
                if !grants || self.confirmed(None, started) {
                    self.install_missing();
                }
            }
            Reading::Unreadable(e) => {
                let reason = format!("cannot read {}: {e}", self.path.display());
                self.refuse(reason);
            }
            Reading::Unsafe(reason) => self.refuse(reason),
            Reading::Read {
                snapshot,
                problems,
                fingerprint,
                leased,
            } => {
                if leased {
                    // Its size and times, whatever they are, are those of a finished write.
                    self.observed = Some(fingerprint);
                    self.suspect_since = None;
                }
                if !leased && self.mid_truncate(fingerprint) {
                    self.retry("the file's size changed but not its times: a truncate in progress");
                } else if !self.settled(started, fingerprint) {
                    self.retry("the file was written again while being read");
                } else {
                    self.consider(*snapshot, &problems, fingerprint, started);
                }
            }
        }
        self.sync_watches();
    }

    /// A file held open for writing this long is read anyway (a shell's `exec 3>>file`
    /// would otherwise stop every reload).
    fn writer_too_long(&self) -> bool {
        let too_long = self
            .busy_since
            .is_some_and(|since| since.elapsed() >= WRITER_LIMIT);
        if too_long {
            warn!(
                file = %self.path.display(),
                "the token file has been open for writing for {}s; reading it anyway",
                WRITER_LIMIT.as_secs()
            );
        }
        too_long
    }

    /// See `observed`; the suspicion lasts at most [`MAX_STALE`].
    fn mid_truncate(&mut self, fingerprint: Fingerprint) -> bool {
        if self.observe(fingerprint) {
            return false;
        }
        let now = Instant::now();
        if now < *self.suspect_since.get_or_insert(now) + MAX_STALE {
            return true;
        }
        self.observed = Some(fingerprint);
        false
    }

    /// Whether a read that started at `started` is still the file's content: no write to
    /// the file was seen since, and the path still leads to the same unchanged file.
    fn settled(&mut self, started: Instant, fingerprint: Fingerprint) -> bool {
        thread::sleep(SETTLE);
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Fs(event)) => self.on_event(event),
                Ok(Msg::Wake) => {}
                Ok(Msg::Stop) => {
                    self.stopping = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.take_flags();
        let written = self.last_write_to_file.is_some_and(|t| t >= started);
        !written && load::fingerprint(&self.path) == Some(fingerprint)
    }

    /// Whether a state that takes something away may be installed: the file (or its
    /// absence, `None`) was seen the same [`CONFIRM`] ago, with no write to it since.
    fn confirmed(&mut self, fingerprint: Option<Fingerprint>, read_at: Instant) -> bool {
        let written_since = |since: Instant| self.last_write_to_file.is_some_and(|t| t >= since);
        match self.confirming {
            Some(c) if c.fingerprint == fingerprint && !written_since(c.since) => {
                if read_at >= c.since + CONFIRM {
                    return true;
                }
                self.retry_at = Some(c.since + CONFIRM);
            }
            _ => {
                self.confirming = Some(Confirming {
                    fingerprint,
                    since: read_at,
                });
                self.retry_at = Some(read_at + CONFIRM);
            }
        }
        false
    }

    fn consider(
        &mut self,
        snapshot: Snapshot,
        problems: &[LoadProblem],
        fingerprint: Fingerprint,
        read_at: Instant,
    ) {
        let current = self.shared.snapshot();
        if !self.forced && current.status.is_loaded() && current.content == snapshot.content {
            debug!("the file's content is unchanged");
            self.done(Some(fingerprint));
            return;
        }
        if snapshot.withdraws_from(&current) && !self.confirmed(Some(fingerprint), read_at) {
            debug!("the new state takes tokens or scopes away; confirming it");
            return;
        }
        let was_loaded = current.status.is_loaded();
        // Our reference must not outlive the swap: the old state is freed in `install`.
        drop(current);
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
        self.done(Some(fingerprint));
    }

    fn install_missing(&mut self) {
        if self.shared.snapshot().status != FileStatus::Missing {
            error!(
                file = %self.path.display(),
                "the token file is gone: every token is refused until it is back"
            );
            self.install(Snapshot::empty(FileStatus::Missing));
            self.shared.metrics.count_reload_failure();
        }
        self.done(None);
    }

    fn refuse(&mut self, reason: String) {
        let seen = load::fingerprint(&self.path);
        if self.shared.snapshot().status != FileStatus::Refused(reason.clone()) {
            error!(file = %self.path.display(), "every token is refused: {reason}");
            self.install(Snapshot::empty(FileStatus::Refused(reason)));
            self.shared.metrics.count_reload_failure();
        }
        self.done(seen);
    }

    /// Puts `snapshot` in use and frees the state it replaces here, off the request path.
    fn install(&self, snapshot: Snapshot) {
        drop(self.shared.install(snapshot));
        load::release_freed_memory();
    }
}
