//! When to read the token file and whether to put what was read in use: a pure state
//! machine, without I/O or a clock of its own. [`watch`](super::watch) feeds it what it
//! sees ([`Input`], each with the instant it happened) and does what it says ([`Action`]),
//! so that every timeline can be tested on a fake clock (see the tests below).
//!
//! The promise it keeps (docs/protocols.md): a change is in use within 1 s of the write that made it,
//! however often the file keeps changing, and a token valid before and after a change is
//! not refused during it. So:
//! - a file replaced by rename (a new inode, no write to it in place since the state in use
//!   was read) is complete by construction: installed as soon as a stable read of it is
//!   done, even when it takes tokens away;
//! - a state read under a read lease is a finished version of the file (no writer had it
//!   open, no truncate was under way), whatever its times say;
//! - what an in-place writer left may be waited for — a writer that still has the file open
//!   ([`ReadResult::Busy`]), a truncate caught halfway, a state that takes something away
//!   within [`CONFIRM`] of the last write (the gap of `: > f; cat new >> f`), a vanished file
//!   (the gap of a delete and re-create) — but every wait ends [`MAX_HOLD`] after the first
//!   change not yet in use, however many writes follow it: then the newest stable read is
//!   installed (without a lease, `load` leaves out a last line still being appended) —
//!   except a state that takes something away, read without a lease while in-place writes
//!   were still coming: that may be a rewrite caught between its truncate and its write, or
//!   halfway through writing a large file, so it is believed only when a second read
//!   [`RETRY`] later finds the very same content — and, if that content is empty or ends
//!   within a line (the states a rewrite passes through at every turn), only once the data
//!   has not been written for [`CONFIRM`];
//! - a read that fails for a passing reason (out of descriptors or memory) keeps the state
//!   in use and is retried every [`PASSING_RETRY`] until it succeeds.

use std::time::{Duration, Instant};

use super::load::Fingerprint;
use crate::token::Digest;

/// Quiet time after the last change before reading (a burst of writes is read once).
pub(super) const QUIET: Duration = Duration::from_millis(50);
/// Pause before reading again a file that was busy, unstable or just written again.
pub(super) const RETRY: Duration = Duration::from_millis(30);
/// How long after the last in-place write a state that takes something away, or a
/// vanished file, is waited for (a rewrite that truncated first may not be done yet).
pub(super) const CONFIRM: Duration = Duration::from_millis(300);
/// Every wait ends this long after the first change not yet in use, leaving time for the
/// read itself within the promised second.
pub(super) const MAX_HOLD: Duration = Duration::from_millis(700);
/// A read without a lease that looks like a truncate caught halfway (see
/// [`Fingerprint::resized_without_times`]) is believed only this long after the last write
/// (a file system clock coarse enough can make a finished rewrite look like that). No longer
/// than [`MAX_HOLD`]: the promise is 1 s after the last write, and a writer that keeps a
/// truncated file without a sign for longer is not one serve can tell from a finished one.
pub(super) const SUSPECT_LIMIT: Duration = MAX_HOLD;
/// How often a read that failed for a passing reason is tried again.
pub(super) const PASSING_RETRY: Duration = Duration::from_millis(250);
/// The periodic stat (network file systems, lost events).
pub(super) const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Input {
    /// The file's data was written in place (inotify `IN_MODIFY` on a name of it).
    Written { at: Instant },
    /// A writer closed the file; its fingerprint right after, if it could be taken.
    Closed {
        at: Instant,
        fingerprint: Option<Fingerprint>,
    },
    /// Any other change on the way to the file: renamed over, created, deleted, a mode or
    /// owner changed, a symlink on the way swapped.
    Renamed { at: Instant },
    /// The file may have been written in place where no watch could see it (a directory
    /// on the way was just swapped in and is watched only from now on; events were lost).
    Unseen { at: Instant },
    /// The periodic stat of the path.
    Tick {
        at: Instant,
        fingerprint: Option<Fingerprint>,
    },
    /// SIGHUP: read again even if nothing seems to have changed.
    Hangup { at: Instant },
    /// A time the machine asked to be woken at has come.
    Due { at: Instant },
    /// What the read asked for by [`Action::Read`] found (a change stepped in while it was
    /// going on makes it stale).
    Read { at: Instant, result: ReadResult },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadResult {
    Loaded {
        fingerprint: Fingerprint,
        /// Read under a read lease: a finished version of the file.
        leased: bool,
        /// The same content as the state in use.
        unchanged: bool,
        /// The digest of what was read.
        content: Option<Digest>,
        /// It takes a token, a scope or an expiry away from the state in use.
        withdraws: bool,
        /// A last line without a line ending was left out (no lease, changed within the
        /// last second); it counts after this long.
        tail_held: Option<Duration>,
    },
    Missing,
    /// Another process has the file open for writing (the lease was refused).
    Busy,
    /// The file changed while being read.
    Unstable,
    /// Out of descriptors or memory, interrupted: try again.
    Passing,
    /// Unsafe, or unreadable for a lasting reason: fail closed until the file changes.
    Refused {
        fingerprint: Option<Fingerprint>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Read the file now; with `wait_for_writers`, a file open for writing is `Busy`; with
    /// `hold_tail`, a last line without a line ending that changed within the last second
    /// is left out (the change may be an in-place append; a file renamed in is complete).
    Read {
        wait_for_writers: bool,
        hold_tail: bool,
    },
    /// Put the state just read in use.
    Install,
    /// The state just read is the one in use: nothing to swap.
    Keep,
    /// Put a state that grants nothing in use (the file is missing, unsafe, unreadable).
    FailClosed,
    /// Nothing to do until `until` (if any), a new input, or the next tick.
    Wait { until: Option<Instant> },
    /// The read failed for a passing reason; the state in use stays; try again at `at`.
    Retry { at: Instant },
}

#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// The file the state in use came from (or the refused one); a tick that sees
    /// another one is a change.
    seen: Option<Fingerprint>,
    /// The first fingerprint seen with the file's current identity and times: a later one
    /// with the same times but another size is a truncate caught halfway.
    observed: Option<Fingerprint>,
    /// The file right after the last writer closed it: a finished write, whatever its
    /// times say (a truncate and a write within one tick of a coarse clock).
    closed: Option<Fingerprint>,
    /// Since when a change waits to be in use (the first one not yet in use).
    pending: Option<Instant>,
    /// The last change of any kind, for the quiet time.
    last_change: Option<Instant>,
    /// The last in-place write to the file.
    last_write: Option<Instant>,
    /// The pending change includes an in-place write.
    in_place: bool,
    /// The pending change includes a rename (or another file behind the path).
    renamed: bool,
    /// A writer wrote in place and was not seen closing the file.
    writer_open: bool,
    forced: bool,
    /// The pending change is not read before this (a retry, a confirmation); never later
    /// than the end of the hold.
    not_before: Option<Instant>,
    /// Read again at this time even without a change (a held-back last line then counts).
    recheck: Option<Instant>,
    /// A read was asked for (at this instant) and its result is awaited.
    reading: Option<Instant>,
    /// The first change that came while reading.
    during: Option<Instant>,
    /// Since when the file has been seen missing, while a change is pending.
    missing_since: Option<Instant>,
    /// The last read failed for a passing reason.
    failing: bool,
    /// A state that takes something away, read while in-place writes were coming and
    /// awaiting a second read that agrees (see the module's doc); whether it was settled
    /// (complete lines, not empty, or the data unwritten for [`CONFIRM`]).
    unconfirmed: Option<(Digest, bool)>,
    /// The last sign of the file's data written in place (not a close alone: `touch`
    /// opens the file for writing and closes it, and a truncated file it closes may still
    /// be open in the writer that truncated it).
    last_data_write: Option<Instant>,
}

impl Policy {
    /// The state in use came from a file with `fingerprint` (`None`: none); `recheck`: read
    /// it again then (its last line was held back).
    pub(super) fn new(fingerprint: Option<Fingerprint>, recheck: Option<Instant>) -> Self {
        Policy {
            seen: fingerprint,
            observed: fingerprint,
            closed: None,
            pending: None,
            last_change: None,
            last_write: None,
            in_place: false,
            renamed: false,
            writer_open: false,
            forced: false,
            not_before: None,
            recheck,
            reading: None,
            during: None,
            missing_since: None,
            failing: false,
            unconfirmed: None,
            last_data_write: None,
        }
    }

    /// Whether the last read failed for a passing reason.
    pub(super) fn failing(&self) -> bool {
        self.failing
    }

    /// After [`Action::Install`], [`Action::Keep`] or [`Action::FailClosed`], the driver
    /// does it and steps [`Input::Due`] for what comes next.
    pub(super) fn step(&mut self, input: Input) -> Action {
        let now = match input {
            Input::Written { at } => {
                self.writer_open = true;
                self.last_data_write = Some(at);
                self.last_write = Some(at);
                self.in_place = true;
                self.changed(at);
                at
            }
            Input::Closed { at, fingerprint } => {
                self.writer_open = false;
                self.last_write = Some(at);
                self.in_place = true;
                self.closed = fingerprint;
                if let Some(fingerprint) = fingerprint {
                    self.observe(fingerprint);
                }
                self.changed(at);
                at
            }
            Input::Renamed { at } => {
                self.writer_open = false;
                self.renamed = true;
                self.changed(at);
                at
            }
            Input::Unseen { at } => {
                self.last_data_write = Some(at);
                self.last_write = Some(at);
                self.in_place = true;
                self.changed(at);
                at
            }
            Input::Tick { at, fingerprint } => {
                if let Some(fingerprint) = fingerprint {
                    self.observe(fingerprint);
                }
                if self.pending.is_none() && fingerprint != self.seen {
                    // Seen only by the stat: the same file changed means in place.
                    if let (Some(now), Some(seen)) = (fingerprint, self.seen)
                        && now.same_file(&seen)
                    {
                        self.in_place = true;
                        self.last_write = Some(at);
                        self.last_data_write = Some(at);
                    } else {
                        self.renamed = true;
                    }
                    self.changed(at);
                }
                at
            }
            Input::Hangup { at } => {
                self.forced = true;
                self.not_before = None;
                self.changed(at);
                at
            }
            Input::Due { at } => at,
            Input::Read { at, result } => {
                self.reading = None;
                return self.judge(at, result);
            }
        };
        self.next(now)
    }

    fn changed(&mut self, at: Instant) {
        self.last_change = Some(at);
        // An event stamped before the read began (queued meanwhile) is in what is read.
        if self.reading.is_some_and(|asked| at >= asked) {
            self.during.get_or_insert(at);
        }
        self.pending.get_or_insert(at);
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

    fn past_hold(&self, now: Instant) -> bool {
        self.pending.is_some_and(|since| now >= since + MAX_HOLD)
    }

    /// Where a wait for an in-place writer counts from: its last write (a writer that
    /// cannot be leased past is waited for up to [`MAX_HOLD`] after it), or the change.
    fn writer_since(&self) -> Option<Instant> {
        match (self.pending, self.last_write) {
            (Some(p), Some(w)) => Some(p.max(w)),
            (p, _) => p,
        }
    }

    fn writer_hold_ends(&self) -> Option<Instant> {
        self.writer_since().map(|since| since + MAX_HOLD)
    }

    /// What to do at `now` when no read result is in hand.
    fn next(&mut self, now: Instant) -> Action {
        if self.reading.is_some() {
            return Action::Wait { until: None };
        }
        if self.recheck.is_some_and(|at| now >= at) {
            self.recheck = None;
            self.pending.get_or_insert(now);
        }
        let Some(since) = self.pending else {
            return Action::Wait {
                until: self.recheck,
            };
        };
        let mut due = if self.forced {
            since
        } else {
            let quiet = self.last_change.map_or(since, |c| c + QUIET);
            quiet.min(since + MAX_HOLD)
        };
        if let Some(not_before) = self.not_before {
            due = due.max(not_before);
        }
        if now < due {
            return if self.failing {
                Action::Retry { at: due }
            } else {
                let until = self.recheck.map_or(due, |r| r.min(due));
                Action::Wait { until: Some(until) }
            };
        }
        self.reading = Some(now);
        self.during = None;
        Action::Read {
            wait_for_writers: self.writer_hold_ends().is_some_and(|end| now < end),
            // Only a change that is nothing but a rename is known to be complete.
            hold_tail: self.in_place || !self.renamed,
        }
    }

    /// Look again at `at`, or at the end of the hold if that is sooner.
    fn again(&mut self, now: Instant, at: Instant) -> Action {
        let end = self.pending.map(|since| since + MAX_HOLD);
        self.again_until(now, at, end)
    }

    /// Look again at `at`, or at `end` if that is sooner.
    fn again_until(&mut self, now: Instant, at: Instant, end: Option<Instant>) -> Action {
        self.not_before = Some(end.map_or(at, |end| at.min(end)));
        self.next(now)
    }

    /// The pending change is dealt with; `seen` is the file now in use. A change that came
    /// during the read stays pending.
    fn done(&mut self, seen: Option<Fingerprint>) {
        self.seen = seen;
        self.pending = self.during.take();
        self.in_place = self.pending.is_some() && self.in_place;
        self.renamed = self.pending.is_some() && self.renamed;
        self.forced = false;
        self.not_before = None;
        self.missing_since = None;
        self.failing = false;
        self.unconfirmed = None;
    }

    fn judge(&mut self, at: Instant, result: ReadResult) -> Action {
        let past_hold = self.past_hold(at);
        // A change came while reading: what was read may be older than the file.
        if self.during.is_some() && !past_hold && result != ReadResult::Passing {
            self.during = None;
            return self.again(at, at + RETRY);
        }
        self.failing = result == ReadResult::Passing;
        match result {
            ReadResult::Passing => {
                self.pending.get_or_insert(at);
                self.during = None;
                self.not_before = Some(at + PASSING_RETRY);
                Action::Retry {
                    at: at + PASSING_RETRY,
                }
            }
            ReadResult::Unstable => self.again(at, at + RETRY),
            ReadResult::Busy => self.again_until(at, at + RETRY, self.writer_hold_ends()),
            ReadResult::Missing => {
                // Bridges a delete and re-create: a vanished file is believed CONFIRM
                // after it was first seen gone (or at the end of the hold).
                let confirmed = *self.missing_since.get_or_insert(at) + CONFIRM;
                if self.forced || at >= confirmed || past_hold {
                    self.done(None);
                    self.observed = None;
                    return Action::FailClosed;
                }
                self.again(at, confirmed)
            }
            ReadResult::Refused { fingerprint } => {
                self.done(fingerprint);
                Action::FailClosed
            }
            ReadResult::Loaded {
                fingerprint,
                leased,
                unchanged,
                content,
                withdraws,
                tail_held,
            } => {
                self.missing_since = None;
                if leased || self.closed == Some(fingerprint) {
                    // Its size and times, whatever they are, are those of a finished write.
                    self.observed = Some(fingerprint);
                } else if !self.observe(fingerprint) {
                    let end = self.writer_since().map(|since| since + SUSPECT_LIMIT);
                    if end.is_some_and(|end| at < end) {
                        return self.again_until(at, at + RETRY, end);
                    }
                }
                let writer_hold = self.writer_hold_ends();
                if !leased && self.writer_open && writer_hold.is_some_and(|end| at < end) {
                    return self.again_until(at, at + RETRY, writer_hold);
                }
                let forced = self.forced;
                let new = forced || !unchanged;
                // The file the state in use came from is written in place, whatever the
                // events said so far (the truncate's own event comes only at its end).
                let in_place =
                    self.in_place || self.seen.is_some_and(|seen| seen.same_file(&fingerprint));
                if new && withdraws && in_place {
                    let confirmed = self.last_write.map_or(at, |w| w + CONFIRM);
                    if at < confirmed && !past_hold {
                        return self.again(at, confirmed);
                    }
                    // Past the hold, writes still coming: believed only when read twice; an
                    // empty state, or one that ends within a line, only once the data has
                    // not been written for CONFIRM (a rewrite passes through those states
                    // at every turn, and its writer may stall in them).
                    if at < confirmed && !leased {
                        let settled = (tail_held.is_none() && fingerprint.size() > 0)
                            || self.last_data_write.is_none_or(|w| at >= w + CONFIRM);
                        let agrees = self.unconfirmed.is_some_and(|(c, _)| Some(c) == content);
                        if !(agrees && settled) {
                            // A rewrite's passing state does not displace a settled one:
                            // the file is back to it as soon as the rewrite is done.
                            if !self.unconfirmed.is_some_and(|(_, s)| s && !settled) {
                                self.unconfirmed = content.map(|c| (c, settled));
                            }
                            return self.again_until(at, at + RETRY, None);
                        }
                    }
                }
                self.done(Some(fingerprint));
                // Read again when the held-back last line counts.
                self.recheck = tail_held.map(|held| at + held);
                if unchanged && !forced {
                    Action::Keep
                } else {
                    Action::Install
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Timelines on a fake clock, one millisecond a step: the file's states over time, the
    //! events a watcher would see, and what the policy installs.

    use super::*;

    /// Every complete version of the timelines grants this token; a half-written one
    /// (truncated, not yet written again) does not.
    const STABLE: u32 = 1;
    /// What a half-appended one-field line would grant: everything.
    const EVERYTHING: u32 = u32::MAX;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct File {
        version: u32,
        tokens: u32,
        ino: u64,
        size: u64,
        /// On the fake file system's clock, in ticks of 10 ms.
        mtime: i64,
        writer_open: bool,
        /// Granted by a last line without a line ending (modified at `mtime`).
        tail: u32,
    }

    impl File {
        fn complete(version: u32, tokens: u32, ino: u64, at_ms: u64) -> File {
            File {
                version,
                tokens: tokens | STABLE,
                ino,
                size: 100 + u64::from(version),
                mtime: (at_ms / 10) as i64,
                writer_open: false,
                tail: 0,
            }
        }

        fn half(self) -> File {
            File {
                tokens: 0,
                size: 0,
                writer_open: true,
                ..self
            }
        }

        fn open(self) -> File {
            File {
                writer_open: true,
                ..self
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Written,
        Closed,
        Renamed,
        Hangup,
    }

    struct Sim {
        base: Instant,
        leases: bool,
        policy: Policy,
        /// The file over time: from each instant on (ms), its state (`None`: missing).
        files: Vec<(u64, Option<File>)>,
        /// When reads fail for a passing reason (until this instant, in ms).
        passing_until: u64,
        /// The state in use: (version, tokens); `None` after failing closed.
        in_use: Option<(u32, u32)>,
        installs: Vec<(u64, Option<(u32, u32)>)>,
        wake: Option<Instant>,
        reads: Vec<u64>,
    }

    impl Sim {
        fn new(leases: bool, first: File) -> Sim {
            let fp = Some(Self::fingerprint(&first));
            Sim {
                base: Instant::now(),
                leases,
                policy: Policy::new(fp, None),
                files: vec![(0, Some(first))],
                passing_until: 0,
                in_use: Some((first.version, first.tokens)),
                installs: Vec::new(),
                wake: None,
                reads: Vec::new(),
            }
        }

        fn fingerprint(f: &File) -> Fingerprint {
            Fingerprint::fake(f.ino, f.size, f.mtime)
        }

        fn at(&self, ms: u64) -> Instant {
            self.base + Duration::from_millis(ms)
        }

        fn file(&self, ms: u64) -> Option<File> {
            self.files
                .iter()
                .rev()
                .find(|(from, _)| *from <= ms)
                .and_then(|(_, f)| *f)
        }

        fn read(
            &mut self,
            ms: u64,
            wait_for_writers: bool,
            hold_tail: bool,
        ) -> (ReadResult, Option<(u32, u32)>) {
            self.reads.push(ms);
            if ms < self.passing_until {
                return (ReadResult::Passing, None);
            }
            let Some(f) = self.file(ms) else {
                return (ReadResult::Missing, None);
            };
            if self.leases && f.writer_open && wait_for_writers {
                return (ReadResult::Busy, None);
            }
            let leased = self.leases && !f.writer_open;
            let age = ms.saturating_sub(f.mtime as u64 * 10);
            let tail_held = (f.tail != 0 && !leased && hold_tail && age < 1000)
                .then(|| Duration::from_millis(1000 - age));
            let tokens = f.tokens | if tail_held.is_some() { 0 } else { f.tail };
            let current = self.in_use.map_or(0, |(_, t)| t);
            let result = ReadResult::Loaded {
                fingerprint: Self::fingerprint(&f),
                leased,
                unchanged: self
                    .in_use
                    .is_some_and(|(v, t)| v == f.version && t == tokens),
                content: Some(Digest::of(
                    format!("{} {tokens} {}", f.version, f.size).as_bytes(),
                )),
                withdraws: current & !tokens != 0,
                tail_held,
            };
            (result, Some((f.version, tokens)))
        }

        fn act(&mut self, ms: u64, mut action: Action) {
            let mut read = None;
            for _ in 0..100 {
                let now = self.at(ms);
                action = match action {
                    Action::Read {
                        wait_for_writers,
                        hold_tail,
                    } => {
                        let (result, state) = self.read(ms, wait_for_writers, hold_tail);
                        read = state;
                        self.policy.step(Input::Read { at: now, result })
                    }
                    Action::Install => {
                        self.in_use = read;
                        self.installs.push((ms, read));
                        self.policy.step(Input::Due { at: now })
                    }
                    Action::Keep => self.policy.step(Input::Due { at: now }),
                    Action::FailClosed => {
                        self.in_use = None;
                        self.installs.push((ms, None));
                        self.policy.step(Input::Due { at: now })
                    }
                    Action::Wait { until } => {
                        self.wake = until;
                        return;
                    }
                    Action::Retry { at } => {
                        self.wake = Some(at);
                        return;
                    }
                };
            }
            panic!("the policy loops at {ms} ms");
        }

        /// Runs to `end` ms; `events` are (ms, event), sorted.
        fn run(&mut self, events: &[(u64, Ev)], end: u64) {
            let mut events = events.iter().peekable();
            for ms in 0..=end {
                let now = self.at(ms);
                while let Some(&&(at, ev)) = events.peek() {
                    if at != ms {
                        break;
                    }
                    events.next();
                    let input = match ev {
                        Ev::Written => Input::Written { at: now },
                        Ev::Closed => Input::Closed {
                            at: now,
                            fingerprint: self.file(ms).map(|f| Self::fingerprint(&f)),
                        },
                        Ev::Renamed => Input::Renamed { at: now },
                        Ev::Hangup => Input::Hangup { at: now },
                    };
                    let action = self.policy.step(input);
                    self.act(ms, action);
                }
                if ms % 1000 == 999 {
                    let fingerprint = self.file(ms).map(|f| Self::fingerprint(&f));
                    let action = self.policy.step(Input::Tick {
                        at: now,
                        fingerprint,
                    });
                    self.act(ms, action);
                }
                if self.wake.is_some_and(|w| w <= now) {
                    self.wake = None;
                    let action = self.policy.step(Input::Due { at: now });
                    self.act(ms, action);
                }
            }
        }

        /// The promise: for every change at `w` (up to `end` - 1 s), the version in use at
        /// `w` + 1 s is at least that of the file at `w`, and no half-written state (one
        /// without [`STABLE`]) was ever installed.
        fn assert_bound(&self, changes: &[u64], end: u64) {
            for &w in changes.iter().filter(|&&w| w + 1000 <= end) {
                let want = self.file(w).map(|f| f.version);
                let got = self
                    .installs
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= w + 1000)
                    .map_or(Some(0), |(_, s)| s.map(|(v, _)| v));
                match want {
                    Some(want) => assert!(
                        got.is_some_and(|got| got >= want),
                        "change at {w} ms (version {want}) not in use at {} ms: {:?}",
                        w + 1000,
                        self.installs
                    ),
                    // Gone for good: fails closed within the second.
                    None if self.file(w + 1000).is_none() => {
                        assert_eq!(got, None, "a missing file not in use within 1 s");
                    }
                    None => {}
                }
            }
            self.assert_never_half();
        }

        fn assert_never_half(&self) {
            for (at, state) in &self.installs {
                if let Some((v, tokens)) = state {
                    assert!(
                        tokens & STABLE != 0,
                        "half-written version {v} installed at {at} ms"
                    );
                }
            }
        }
    }

    #[test]
    fn truncate_then_write_within_one_tick() {
        for leases in [true, false] {
            let mut sim = Sim::new(leases, File::complete(1, 0, 7, 0));
            // `: > f; cat new >> f`, both within one tick of the file system's clock: the
            // finished file has the times of the empty one and another size.
            let empty = File {
                tokens: 0,
                size: 0,
                mtime: 10,
                ..File::complete(2, 0, 7, 0)
            };
            let full = File {
                mtime: 10,
                ..File::complete(2, 2, 7, 0)
            };
            sim.files.push((100, Some(empty)));
            sim.files.push((101, Some(full)));
            let events = [
                (100, Ev::Written),
                (100, Ev::Closed),
                (101, Ev::Written),
                (101, Ev::Closed),
            ];
            sim.run(&events, 2500);
            sim.assert_bound(&[100, 101], 2500);
            assert_eq!(sim.in_use, Some((2, 2 | STABLE)), "leases {leases}");
            if leases {
                // Believed at once under a lease.
                assert!(sim.installs[0].0 < 200, "{:?}", sim.installs);
            }
        }
    }

    #[test]
    fn a_truncate_caught_halfway_is_not_installed() {
        for leases in [true, false] {
            let mut sim = Sim::new(leases, File::complete(1, 0, 7, 0));
            // The truncate has set the new size but not yet the times (a disk I/O in
            // between), and sends its event only at the end.
            let before = File::complete(1, 0, 7, 0);
            sim.files.push((60, Some(before.half())));
            sim.files
                .push((90, Some(File::complete(2, 4, 7, 90).open())));
            sim.files.push((95, Some(File::complete(2, 4, 7, 95))));
            // A change just before makes the policy read during the truncate.
            let events = [(0, Ev::Renamed), (90, Ev::Written), (95, Ev::Closed)];
            sim.run(&events, 2000);
            sim.assert_bound(&[90, 95], 2000);
            assert_eq!(sim.in_use, Some((2, 4 | STABLE)));
        }
    }

    #[test]
    fn truncate_pause_then_append_does_not_refuse_the_stable_token() {
        let mut sim = Sim::new(true, File::complete(1, 2, 7, 0));
        // The writer closes the empty file and appends 150 ms later: a lease is possible
        // on the empty file, which takes everything away — confirmed before believed.
        let empty = File {
            tokens: 0,
            size: 0,
            ..File::complete(2, 0, 7, 100)
        };
        sim.files.push((100, Some(empty)));
        sim.files
            .push((250, Some(File::complete(2, 2 | 8, 7, 250))));
        let events = [
            (100, Ev::Written),
            (100, Ev::Closed),
            (250, Ev::Written),
            (250, Ev::Closed),
        ];
        sim.run(&events, 2000);
        sim.assert_bound(&[250], 2000);
        assert_eq!(sim.in_use, Some((2, 2 | 8 | STABLE)));
    }

    #[test]
    fn delete_and_recreate() {
        let mut sim = Sim::new(true, File::complete(1, 2, 7, 0));
        sim.files.push((100, None));
        sim.files
            .push((150, Some(File::complete(2, 4, 8, 150).open())));
        sim.files.push((152, Some(File::complete(2, 4, 8, 152))));
        let events = [
            (100, Ev::Renamed),
            (150, Ev::Renamed),
            (151, Ev::Written),
            (152, Ev::Closed),
        ];
        sim.run(&events, 2000);
        sim.assert_bound(&[100, 150, 152], 2000);
        assert!(
            sim.installs.iter().all(|(_, s)| s.is_some()),
            "{:?}",
            sim.installs
        );
        // Deleted for good: fails closed within the second.
        let mut sim2 = Sim::new(true, File::complete(1, 2, 7, 0));
        sim2.files.push((100, None));
        sim2.run(&[(100, Ev::Renamed)], 1500);
        sim2.assert_bound(&[100], 1500);
        assert_eq!(sim2.in_use, None);
    }

    #[test]
    fn sighup_while_a_writer_holds_the_file_half_appended() {
        for leases in [true, false] {
            let mut sim = Sim::new(leases, File::complete(1, 2, 7, 0));
            // `exec 3>>F; printf 'sha' >&3` and the descriptor stays open.
            let cut = File {
                tail: EVERYTHING,
                ..File::complete(1, 2, 7, 100).open()
            };
            sim.files.push((100, Some(cut)));
            sim.run(&[(100, Ev::Written), (300, Ev::Hangup)], 3000);
            // The half line grants nothing for its first second.
            for (at, state) in &sim.installs {
                if *at < 1100 {
                    assert_ne!(state.map(|s| s.1), Some(EVERYTHING), "leases {leases}");
                }
            }
            // The SIGHUP led to a read within a second, writer or not.
            assert!(sim.reads.iter().any(|&r| (300..1300).contains(&r)));
            assert!(!sim.installs.is_empty(), "leases {leases}");
        }
    }

    /// `tokenfile mint` every 0.2 s, and a revoke among them: each a new inode.
    #[test]
    fn a_stream_of_renames() {
        let mut sim = Sim::new(true, File::complete(1, 2, 7, 0));
        let mut events = Vec::new();
        let mut changes = Vec::new();
        for i in 1..25u32 {
            let at = u64::from(i) * 200;
            // Every third takes token 2 away, the others add one.
            let tokens = if i % 3 == 0 {
                1 << (i % 20 + 4)
            } else {
                2 | 1 << (i % 20 + 4)
            };
            sim.files.push((
                at,
                Some(File::complete(i + 1, tokens, 100 + u64::from(i), at)),
            ));
            events.push((at, Ev::Renamed));
            changes.push(at);
        }
        sim.run(&events, 6000);
        sim.assert_bound(&changes, 6000);
        // A rename is installed at once: no confirmation wait.
        assert!(
            sim.installs.iter().all(|(at, _)| at % 200 < 100),
            "{:?}",
            sim.installs
        );
    }

    /// An in-place writer rewriting the file every 0.2 s (truncate, write, close), some
    /// rewrites taking tokens away.
    #[test]
    fn a_stream_of_in_place_writes() {
        for leases in [true, false] {
            let mut sim = Sim::new(leases, File::complete(1, 2, 7, 0));
            let mut events = Vec::new();
            let mut changes = Vec::new();
            for i in 1..25u32 {
                let at = u64::from(i) * 200;
                let tokens = if i % 2 == 0 { 2 } else { 2 | 1 << (i % 20 + 4) };
                let done = File::complete(i + 1, tokens, 7, at + 5);
                sim.files.push((at, Some(done.half())));
                sim.files.push((at + 5, Some(done)));
                events.extend([
                    (at, Ev::Written),
                    (at + 5, Ev::Written),
                    (at + 5, Ev::Closed),
                ]);
                changes.extend([at, at + 5]);
            }
            sim.run(&events, 6000);
            sim.assert_bound(&changes, 6000);
        }
    }

    /// A script rewriting a large file in place in a loop (`c=$(cat f); printf … > f`: for
    /// 5 ms empty, for 5 ms cut in the middle of a line, then complete), and `touch f` every
    /// 10 ms so that it is never quiet; no leases. At 3 s a rewrite takes token 2 away and the
    /// loop goes on with that content.
    #[test]
    fn a_large_file_rewritten_in_place_in_a_loop_while_touched() {
        let mut sim = Sim::new(false, File::complete(1, 2, 7, 0));
        let content = |ms: u64| {
            if ms < 3000 {
                File::complete(1, 2, 7, 0)
            } else {
                File::complete(2, 4, 7, 0)
            }
        };
        let mut events = Vec::new();
        let mut last = None;
        let (mut start, mut mtime) = (0, 0);
        for ms in 1..6000u64 {
            // A new rewrite every 37 ms (out of step with the touches and the retries).
            if ms % 37 == 0 {
                start = ms;
                events.extend([(ms, Ev::Written), (ms + 5, Ev::Written)]);
                events.extend([(ms + 10, Ev::Written), (ms + 10, Ev::Closed)]);
            }
            if ms % 10 == 3 {
                events.extend([(ms, Ev::Closed), (ms, Ev::Renamed)]);
            }
            if ms % 10 == 3 || ms % 37 == 0 || (ms - start) % 5 == 0 && ms - start <= 10 {
                mtime = (ms / 10) as i64;
            }
            let done = content(start);
            let state = match ms - start {
                0..5 if start > 0 => done.half(),
                5..10 if start > 0 => File {
                    size: 50,
                    tail: 8,
                    ..done.half()
                },
                _ => done,
            };
            let state = File { mtime, ..state };
            if last != Some(state) {
                sim.files.push((ms, Some(state)));
                last = Some(state);
            }
        }
        events.sort_by_key(|&(ms, _)| ms);
        sim.run(&events, 6000);
        sim.assert_never_half();
        let first = 3000u64.div_ceil(37) * 37 + 10;
        sim.assert_bound(&[first], 6000);
        assert_eq!(sim.in_use, Some((2, 4 | STABLE)));
    }

    /// A file renamed in whose last line has no line ending is complete by construction:
    /// that line counts at once. The same line appended in place waits its second.
    #[test]
    fn a_renamed_in_last_line_counts_at_once_an_appended_one_waits() {
        let mut sim = Sim::new(false, File::complete(1, 2, 7, 0));
        let renamed = File {
            tail: 8,
            ..File::complete(2, 2, 8, 100)
        };
        sim.files.push((100, Some(renamed)));
        sim.run(&[(100, Ev::Renamed)], 400);
        assert_eq!(sim.in_use, Some((2, 2 | 8 | STABLE)), "{:?}", sim.installs);

        let mut sim = Sim::new(false, File::complete(1, 2, 7, 0));
        let appended = File {
            tail: 8,
            ..File::complete(2, 2, 7, 100)
        };
        sim.files.push((100, Some(appended)));
        sim.run(&[(100, Ev::Written), (100, Ev::Closed)], 2500);
        for (at, state) in &sim.installs {
            if *at < 1100 {
                assert_ne!(state.map(|s| s.1 & 8), Some(8), "{:?}", sim.installs);
            }
        }
        assert_eq!(sim.in_use, Some((2, 2 | 8 | STABLE)), "{:?}", sim.installs);
    }

    #[test]
    fn a_passing_failure_is_retried_until_it_succeeds() {
        let mut sim = Sim::new(true, File::complete(1, 2, 7, 0));
        sim.files.push((100, Some(File::complete(2, 4, 8, 100))));
        sim.passing_until = 3000;
        sim.run(&[(100, Ev::Renamed)], 4500);
        // The state in use stays meanwhile, and reads go on at least once a second.
        assert!(
            sim.installs.iter().all(|(at, _)| *at >= 3000),
            "{:?}",
            sim.installs
        );
        assert!(
            sim.reads.windows(2).all(|w| w[1] - w[0] <= 1000),
            "{:?}",
            sim.reads
        );
        assert_eq!(sim.in_use, Some((2, 4 | STABLE)));
        assert!(sim.installs[0].0 < 3000 + 1000);
    }
}
