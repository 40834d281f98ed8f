//! Reading the token file for `serve`: the state of one consistent read of it, or why not.
//!
//! The file may be written in place while we read it (an editor, `>>`, `cp`). A read is
//! accepted only if the file's identity, size and times are the same before and after it and
//! the byte count matches the size; otherwise it is [`Reading::Unstable`] and retried later.
//! (The reloader adds the rest of the guarantee: whether to wait for writers to finish is
//! `policy.rs`'s decision, carried out by `watch.rs`.)

use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::index::{Indexed, LoadProblem, TokenIndex};
use crate::store::missing_file;
use crate::trust::{self, Refusal, Trusted};

use super::state::{FileStatus, Snapshot, log_problems};

/// What identifies one version of the file without reading it. Any write changes the
/// times; a rename or a symlink swap changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Fingerprint {
    pub(super) fn of(meta: &Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

impl Fingerprint {
    /// The same file with another size but the very same times: caught in the middle of an
    /// in-place truncate. (Linux sets the new size before the new times, and a truncate can
    /// wait for disk I/O in between; its inotify event comes only at the end.)
    pub(super) fn resized_without_times(&self, before: &Fingerprint) -> bool {
        self.dev == before.dev
            && self.ino == before.ino
            && self.size != before.size
            && self.mtime == before.mtime
            && self.ctime == before.ctime
    }

    /// The file's size in bytes.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// The same file (device and inode), whatever its content.
    pub(super) fn same_file(&self, other: &Fingerprint) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// A made-up fingerprint for the reload policy's timelines.
    #[cfg(test)]
    pub(super) fn fake(ino: u64, size: u64, mtime: i64) -> Self {
        Fingerprint {
            dev: 1,
            ino,
            size,
            mtime: (mtime, 0),
            ctime: (mtime, 0),
            mode: 0o100600,
            uid: 0,
            gid: 0,
        }
    }
}

/// The fingerprint of the file behind `path` (symlinks followed), `None` if it cannot be
/// stat'ed — a missing file, or a directory on the way that went away.
pub(super) fn fingerprint(path: &Path) -> Option<Fingerprint> {
    fs::metadata(path).ok().map(|m| Fingerprint::of(&m))
}

#[derive(Debug)]
pub(super) enum Reading {
    /// The file's state, built while reading it (the bytes are not kept), and what was
    /// wrong in it.
    Read {
        snapshot: Box<Snapshot>,
        problems: Vec<LoadProblem>,
        fingerprint: Fingerprint,
        /// The read held a read lease from before the first stat to after the last: no
        /// process had the file open for writing or was truncating it meanwhile (both
        /// conflict with the lease), so this is a finished version of the file, whatever
        /// its times say.
        leased: bool,
        /// Read without a lease, the last line had no line ending and the file changed
        /// within [`TAIL_HOLD`]: that line was left out (it may be one still being
        /// appended, and `sha` is not a token); it counts after this long.
        tail_held: Option<Duration>,
    },
    Missing,
    /// The file changed while it was read; try again shortly.
    Unstable,
    /// Another process has the file open for writing: it may be halfway through.
    Busy,
    /// Exists but cannot be read.
    Unreadable(io::Error),
    /// Unsafe to trust (docs/trust.md: writable or replaceable by others, plaintext readable by
    /// others, not a regular file); the reason says how to fix it.
    Unsafe(String),
}

/// Reads the whole file behind `path` once and builds its state. With `wait_for_writers`, a
/// file that another process has open for writing is [`Reading::Busy`] (when the kernel lets
/// us know; see [`ReadLease`]). With `hold_tail`, a last line without a line ending read
/// without a lease waits (see [`unfinished_tail`]); without, the file is known to be
/// complete (renamed in).
///
/// The file is indexed as it is read, in chunks (a large one as two halves at once, see
/// [`TokenIndex::read_file`]), and hashed on the way for [`Snapshot::content`]: holding a copy of a 100 MB file next to the index it
/// becomes, while the previous index is still in use, is what made a reload's peak memory
/// three times the file. The price is a longer lease (a writer opening the file meanwhile
/// waits for the index to be built, a fraction of a second for a million records).
pub(super) fn read(path: &Path, wait_for_writers: bool, hold_tail: bool) -> Reading {
    // Judged (docs/trust.md) and opened without blocking: a FIFO at the path is refused, not
    // waited on.
    let Trusted { file, real, .. } = match trust::open(path) {
        Ok(trusted) => trusted,
        Err(Refusal::Missing) => return Reading::Missing,
        Err(Refusal::Changed) => return Reading::Unstable,
        Err(Refusal::Io { source, .. }) => return Reading::Unreadable(source),
        Err(Refusal::Unsafe(why)) => return Reading::Unsafe(why.to_string()),
    };
    // Held until the end of the read: a writer that opens the file meanwhile waits for it.
    let lease = match ReadLease::take(&file) {
        Err(Busy) if wait_for_writers => return Reading::Busy,
        Err(Busy) => None,
        Ok(lease) => lease,
    };
    let before = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return Reading::Unreadable(e),
    };
    if !before.is_file() {
        return Reading::Unreadable(io::Error::other("not a regular file"));
    }
    let (limit, tail_held) = match lease {
        Some(_) => (before.len(), None),
        None if !hold_tail => (before.len(), None),
        None => match unfinished_tail(&file, &before) {
            Ok(Some((limit, held))) => (limit, Some(held)),
            Ok(None) => (before.len(), None),
            // Shorter than it was a moment ago: truncated meanwhile, not unreadable.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Reading::Unstable,
            Err(e) => return Reading::Unreadable(e),
        },
    };
    let Indexed {
        index,
        problems,
        content,
        len,
    } = match TokenIndex::read_file(&file, limit) {
        Ok(indexed) => indexed,
        Err(e) => return Reading::Unreadable(e),
    };
    let after = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return Reading::Unreadable(e),
    };
    let fingerprint = Fingerprint::of(&after);
    if Fingerprint::of(&before) != fingerprint || len != limit {
        return Reading::Unstable;
    }
    match trust::exposed_reason(&real, &after, || index.plaintext > 0) {
        None => Reading::Read {
            snapshot: Box::new(Snapshot::loaded(index, &problems, content)),
            problems,
            fingerprint,
            leased: lease.is_some(),
            tail_held,
        },
        Some(reason) => Reading::Unsafe(reason),
    }
}

/// How long a last line without a line ending, read without a lease, grants nothing after
/// the file last changed (docs/protocols.md).
pub(super) const TAIL_HOLD: Duration = Duration::from_secs(1);

/// How much of the end of the file is read at a time to find its last line end.
const TAIL_WINDOW: usize = 64 * 1024;

/// Where the file's complete lines end and how long until its last line counts, if it has
/// no line ending and the file changed within [`TAIL_HOLD`]; `None` if every line counts.
fn unfinished_tail(file: &File, meta: &Metadata) -> io::Result<Option<(u64, Duration)>> {
    let size = meta.len();
    // A time in the future counts as just now.
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    if size == 0 || age >= TAIL_HOLD {
        return Ok(None);
    }
    let held = TAIL_HOLD - age;
    let mut buf = vec![0u8; TAIL_WINDOW];
    let mut end = size;
    while end > 0 {
        let start = end.saturating_sub(TAIL_WINDOW as u64);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(TAIL_WINDOW)];
        file.read_exact_at(chunk, start)?;
        if end == size && chunk.last() == Some(&b'\n') {
            return Ok(None);
        }
        if let Some(at) = memchr::memrchr(b'\n', chunk) {
            return Ok(Some((start + at as u64 + 1, held)));
        }
        end = start;
    }
    Ok(Some((0, held)))
}

/// Another process has the file open for writing.
struct Busy;

/// A Linux read lease (`fcntl(F_SETLEASE, F_RDLCK)`), the one way to ask the kernel whether
/// anyone has a file open for writing: it is refused with `EAGAIN` if so. That is what
/// tells an in-place rewrite that is still going on (truncated, not fully written again)
/// from a finished one — even while the truncate itself waits for disk I/O and has not
/// yet changed the file's times or sent its inotify event.
///
/// Only the file's owner (or `CAP_LEASE`) may take one, on a local file system; otherwise
/// the reloader relies on its other signs. While we hold it, a writer's `open` waits (a
/// few microseconds: we read and let go), and the kernel sends us SIGIO, which `serve`
/// ignores.
struct ReadLease<'a>(&'a File);

impl<'a> ReadLease<'a> {
    fn take(file: &'a File) -> Result<Option<ReadLease<'a>>, Busy> {
        use nix::libc;
        // SAFETY: fcntl(2) on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if rc == 0 {
            return Ok(Some(ReadLease(file)));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Err(Busy),
            // Not the owner, no lease support: no answer either way.
            _ => Ok(None),
        }
    }
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        use nix::libc;
        // SAFETY: as in `take`. Closing the descriptor would release it as well.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// How often the first read retries a file that keeps changing.
const FIRST_READ_TRIES: usize = 100;
const FIRST_READ_PAUSE: Duration = Duration::from_millis(20);

/// The state to start with. A missing or unreadable file is an error at start — far more
/// often a wrong `--file` than an intent; once running, a vanished file means no tokens.
/// An unsafe file starts in the refused state (no token accepted) so that fixing its mode
/// is enough.
/// The last element: read the file again after this long (its last line was held back).
pub(super) fn initial(path: &Path) -> Result<(Snapshot, Option<Fingerprint>, Option<Duration>)> {
    for attempt in 1..=FIRST_READ_TRIES {
        // In the end, a file held open for writing all along is read anyway.
        match read(path, attempt < FIRST_READ_TRIES, true) {
            Reading::Read {
                snapshot,
                problems,
                fingerprint,
                tail_held,
                ..
            } => {
                log_problems(path, &problems);
                tracing::info!(
                    file = %path.display(),
                    records = snapshot.index.records,
                    tokens = snapshot.index.len(),
                    invalid_lines = snapshot.invalid_lines,
                    "loaded the token file"
                );
                return Ok((*snapshot, Some(fingerprint), tail_held));
            }
            Reading::Missing => return Err(missing_file(path)),
            Reading::Unreadable(e) => return Err(Error::io("read", path, e)),
            Reading::Unsafe(reason) => {
                tracing::error!(
                    file = %path.display(),
                    "refusing every token until the file is safe: {reason}"
                );
                return Ok((
                    Snapshot::empty(FileStatus::Refused(reason)),
                    fingerprint(path),
                    None,
                ));
            }
            Reading::Unstable | Reading::Busy => thread::sleep(FIRST_READ_PAUSE),
        }
    }
    Err(Error::ChangedWhileRead(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        assert!(matches!(read(&path, true, true), Reading::Missing));
        fs::write(&path, b"tok\tread\n").unwrap();
        // A plaintext record: not for others to read (docs/trust.md).
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let Reading::Read {
            snapshot,
            fingerprint,
            ..
        } = read(&path, true, true)
        else {
            panic!("not read");
        };
        let (expected, _) = Snapshot::from_bytes(b"tok\tread\n");
        assert_eq!(snapshot.content, expected.content);
        assert_eq!(snapshot.index.len(), 1);
        assert_eq!(Some(fingerprint), super::fingerprint(&path));
        fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            read(&dir.path().join("d"), true, true),
            Reading::Unsafe(_)
        ));
    }

    #[test]
    fn a_file_open_for_writing_is_busy_when_we_may_ask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, b"tok\n").unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // Leases need the owner (we are) and a file system that has them.
        let leases = matches!(ReadLease::take(&File::open(&path).unwrap()), Ok(Some(_)));
        let writer = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let reading = read(&path, true, true);
        if leases {
            assert!(matches!(reading, Reading::Busy), "{reading:?}");
        }
        assert!(matches!(read(&path, false, true), Reading::Read { .. }));
        drop(writer);
        assert!(matches!(read(&path, true, true), Reading::Read { .. }));
    }

    /// A file truncated between its stat and the look at its last line is shorter than
    /// the stat says: that must be an end of file that `read` takes for a change under
    /// way, not a lasting failure (before, it failed closed: every token refused).
    #[test]
    fn a_tail_truncated_meanwhile_is_an_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, b"tok\tread\nsha").unwrap();
        let file = File::open(&path).unwrap();
        let before = file.metadata().unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let e = unfinished_tail(&file, &before).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn world_writable_is_unsafe() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, b"tok\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(read(&path, true, true), Reading::Unsafe(_)));
    }
}
