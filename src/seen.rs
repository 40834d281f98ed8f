//! Last used (docs/last-used.md): the sidecar `<file>.seen` in which `serve` keeps, per record
//! ID, when a token was last granted or refused for a missing scope, how often, and from where
//! — and which `list`, `list --unused` and `prune --unused` read. The token file itself is
//! never rewritten for it.
//!
//! The sidecar is JSON lines: a header naming the token file it belongs to, then one line per
//! record ID:
//!
//! ```text
//! {"tokenfile_seen":1,"file":"/etc/tokenfile/tokens","written":"2026-12-02T10:00:00Z"}
//! {"id":"3f2a9c01b4e7","last_used":"2026-12-02T09:59:12Z","uses":1234,"last_client":"10.0.0.7"}
//! ```
//!
//! It is replaced whole (a temporary file beside it, synced, renamed, the directory synced), so
//! a reader sees an old version or a new one, never a torn one — also across `kill -9`. A
//! sidecar that does not parse, or that names another token file, is ignored by its reader
//! with a warning, never fatal: last-used figures are advice, never access.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::when::{Timestamp, format_timestamp, parse_timestamp};

/// The version of the sidecar's layout, in its header.
const VERSION: u64 = 1;

/// The longest sidecar a reader accepts: above two million records' worth (about 100 bytes
/// a line), low enough that a wrong `--seen` path cannot exhaust memory.
const MAX_SIDECAR_BYTES: u64 = 256 << 20;

/// What is known of one record's use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When its token was last granted or refused for a missing scope.
    pub last_used: Timestamp,
    /// How many such checks `serve` answered (since its figures began: a counter per host).
    pub uses: u64,
    /// Who asked last: `uid 1000` for the Unix socket, an address for HTTP.
    pub last_client: Option<String>,
}

/// The figures of a sidecar, by record ID (12 hex digits).
pub type SeenById = HashMap<String, Seen>;

/// Why a sidecar was not used.
#[derive(Debug)]
pub enum SeenError {
    /// It could not be read (other than missing).
    Io(io::Error),
    /// A line is not what a sidecar holds (1-based).
    Corrupt {
        /// The line that does not parse.
        line: usize,
    },
    /// Its header names another token file.
    OtherFile {
        /// The token file its header names.
        names: String,
    },
    /// It is larger than any sidecar this tool writes.
    TooLarge,
    /// It is not a regular file of a trusted owner, or others may write it: whoever planted
    /// it could make tokens look used (or unused) at will.
    Unsafe(String),
}

impl fmt::Display for SeenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeenError::Io(e) => write!(f, "cannot be read: {e}"),
            SeenError::Corrupt { line } => {
                write!(
                    f,
                    "has a line {line} that is not a last-used record (corrupt sidecar)"
                )
            }
            SeenError::OtherFile { names } => write!(
                f,
                "belongs to another token file ({names}) and has no row for a record of this one"
            ),
            SeenError::TooLarge => f.write_str("is too large to be a last-used sidecar"),
            SeenError::Unsafe(why) => write!(f, "cannot be trusted: {why}"),
        }
    }
}

impl std::error::Error for SeenError {}

#[derive(Serialize, Deserialize)]
struct Header {
    tokenfile_seen: u64,
    file: String,
    written: String,
    /// Since when the figures have been gathered: a record never seen is unused only since
    /// then (absent in sidecars written before it existed: then only the record's creation
    /// counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

/// A sidecar as read: its rows, and since when they were gathered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenFile {
    /// The figures, by record ID.
    pub rows: SeenById,
    /// When the figures began (the first `serve` that wrote this sidecar): before that,
    /// nothing is known of any use. `None` if the header does not say.
    pub since: Option<Timestamp>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    last_used: String,
    uses: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_client: Option<String>,
}

/// The sidecar of the token file at `target` (the real file, behind any symlinks).
pub fn sidecar_of(target: &Path) -> PathBuf {
    crate::store::sibling(target, ".seen")
}

/// Whether a header's `file` is the token file at `target`: the same path, or the same file.
fn same_token_file(named: &str, target: &Path) -> bool {
    let named = Path::new(named);
    if named == target {
        return true;
    }
    match (fs::metadata(named), fs::metadata(target)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => named.file_name() == target.file_name() && named.parent() == target.parent(),
    }
}

/// Which sidecars belong to the token file being read.
#[derive(Clone, Copy)]
pub enum Belongs<'a> {
    /// Only one whose header names that file (the file's own `<file>.seen`).
    SameFile,
    /// Also one that names another path (copied from another host, where the file lives
    /// elsewhere) if it has a row for at least one record of this file, as `is_record` says:
    /// a sidecar that shares no record with the file is some other file's, and taking it as
    /// evidence would make every record look unused.
    SharesARecord(&'a dyn Fn(&str) -> bool),
}

/// The figures of the sidecar at `path`, for the token file at `target`; `Ok(None)` when there
/// is no sidecar (no figures yet). A sidecar that does not [belong](Belongs) to the file is
/// refused ([`SeenError::OtherFile`]).
///
/// The sidecar is opened without blocking (a FIFO planted there must not hang `list` or
/// `serve`), and must be a regular file owned by root, the reader or the token file's owner,
/// that others cannot write (as the lock file and the audit log: `trust::sidecar_refusal`);
/// the file's own sidecar must not be a symlink either. A row whose use lies more than a day
/// in the future (a host with a wrong clock, or a forgery that would pin a token as "used"
/// forever) is left out.
pub fn read(path: &Path, target: &Path, belongs: Belongs) -> Result<Option<SeenFile>, SeenError> {
    let file = match open_sidecar(path, matches!(belongs, Belongs::SameFile)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(SeenError::Unsafe(format!(
                "{} is a symlink; the sidecar is a file of its own",
                path.display()
            )));
        }
        Err(e) => return Err(SeenError::Io(e)),
        Ok(file) => file,
    };
    let meta = file.metadata().map_err(SeenError::Io)?;
    let owner = fs::metadata(target).ok().map(|m| m.uid());
    if let Some(why) = crate::trust::sidecar_refusal(path, &file, &meta, owner) {
        return Err(SeenError::Unsafe(why));
    }
    if meta.len() > MAX_SIDECAR_BYTES {
        return Err(SeenError::TooLarge);
    }
    let text = io::read_to_string(io::Read::take(&file, MAX_SIDECAR_BYTES)).map_err(|e| match e
        .kind()
    {
        io::ErrorKind::InvalidData => SeenError::Corrupt { line: 1 },
        _ => SeenError::Io(e),
    })?;
    parse(&text, target, belongs).map(Some)
}

/// Opens a sidecar for reading: never blocking, and without following a last symlink when
/// `no_symlink`.
fn open_sidecar(path: &Path, no_symlink: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC;
    if no_symlink {
        flags |= nix::libc::O_NOFOLLOW;
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

/// How far in the future a use may lie and still be believed (clocks of several hosts).
const FUTURE_SLACK: time::Duration = time::Duration::days(1);

fn parse(text: &str, target: &Path, belongs: Belongs) -> Result<SeenFile, SeenError> {
    let mut lines = text.lines().enumerate();
    let header: Header = lines
        .next()
        .and_then(|(_, line)| serde_json::from_str(line).ok())
        .filter(|h: &Header| h.tokenfile_seen == VERSION)
        .ok_or(SeenError::Corrupt { line: 1 })?;
    let same_file = same_token_file(&header.file, target);
    if !same_file && matches!(belongs, Belongs::SameFile) {
        return Err(SeenError::OtherFile { names: header.file });
    }
    let mut seen = SeenById::new();
    let latest_believed = crate::when::now() + FUTURE_SLACK;
    for (index, line) in lines {
        let corrupt = SeenError::Corrupt { line: index + 1 };
        let Ok(entry) = serde_json::from_str::<Line>(line) else {
            return Err(corrupt);
        };
        let is_id = entry.id.len() == crate::token::ID_LEN
            && entry
                .id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let Some(last_used) = parse_timestamp(entry.last_used.as_bytes()).filter(|_| is_id) else {
            return Err(corrupt);
        };
        if last_used > latest_believed {
            continue;
        }
        merge_one(
            &mut seen,
            entry.id,
            Seen {
                last_used,
                uses: entry.uses,
                last_client: entry.last_client,
            },
        );
    }
    if let (false, Belongs::SharesARecord(is_record)) = (same_file, belongs)
        && !seen.keys().any(|id| is_record(id))
    {
        return Err(SeenError::OtherFile { names: header.file });
    }
    let since = header
        .since
        .as_deref()
        .and_then(|at| parse_timestamp(at.as_bytes()));
    Ok(SeenFile { rows: seen, since })
}

/// Whether the file at `path` may be replaced by a sidecar: there is none, or it is a
/// regular file whose first line is a sidecar's header (corrupt rows or another file's
/// name included). Anything else — a token file, an audit log, a lock file, a file of some
/// other program that `--seen` was pointed at by mistake — must never be overwritten.
pub fn replaceable(path: &Path) -> io::Result<bool> {
    let file = match open_sidecar(path, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        other => other?,
    };
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    let mut first = Vec::new();
    io::BufRead::read_until(
        &mut io::BufReader::new(io::Read::take(&file, 64 * 1024)),
        b'\n',
        &mut first,
    )?;
    Ok(serde_json::from_slice::<Header>(first.trim_ascii_end()).is_ok())
}

/// Adds `other`'s figures to `into`: per ID, the later use wins, with its count and client
/// (sidecars of several hosts are several views, not parts to add up).
pub fn merge(into: &mut SeenById, other: SeenById) {
    for (id, seen) in other {
        merge_one(into, id, seen);
    }
}

fn merge_one(into: &mut SeenById, id: String, seen: Seen) {
    match into.get(&id) {
        Some(known) if known.last_used >= seen.last_used => {}
        _ => {
            into.insert(id, seen);
        }
    }
}

/// Replaces the sidecar at `path` of the token file at `target` (named `named` in the header:
/// the path as `serve` was given it, which stays the same across a Kubernetes `..data` swap)
/// with `entries`, gathered since `since`, atomically and durably. Its mode is 0600, or 0640
/// when the token file is group-readable (so the group that may read the file may read when
/// its tokens were used); never readable by others.
pub fn write<'a>(
    path: &Path,
    target: &Path,
    named: &Path,
    since: Timestamp,
    now: Timestamp,
    entries: impl IntoIterator<Item = (&'a str, &'a Seen)>,
) -> io::Result<()> {
    let dir = directory_of(path);
    let target_meta = fs::metadata(target).ok();
    let group_readable = target_meta.as_ref().is_some_and(|m| m.mode() & 0o040 != 0);
    let mode = if group_readable { 0o640 } else { 0o600 };
    // Created 0600 (never wider, whatever the umask); then made exactly `mode`, and the
    // token file's group, before a byte is written: the group that may read the file may
    // read when its tokens were used. A group it cannot give (serve not in it) stays 0600.
    let mut temp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    if mode != 0o600
        && let Some(target_meta) = &target_meta
    {
        let group = nix::unistd::Gid::from_raw(target_meta.gid());
        if nix::unistd::fchown(temp.as_file(), None, Some(group)).is_ok() {
            temp.as_file()
                .set_permissions(fs::Permissions::from_mode(mode))?;
        }
    }
    {
        let mut out = io::BufWriter::new(temp.as_file_mut());
        let header = Header {
            tokenfile_seen: VERSION,
            file: named.display().to_string(),
            written: format_timestamp(now),
            since: Some(format_timestamp(since)),
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        for (id, seen) in entries {
            let line = Line {
                id: id.to_owned(),
                last_used: format_timestamp(seen.last_used),
                uses: seen.uses,
                last_client: seen.last_client.clone(),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

const TEMP_SUFFIX: &str = ".tmp";

/// The directory a sidecar is in (`.` for a bare file name): where its temporary copies go.
fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The name a temporary copy of the sidecar at `path` starts with (beside it).
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    format!(".{}.", name.as_deref().unwrap_or("seen"))
}

/// How long a writer waits for another writer of the same sidecar (another `serve` of the
/// same file) before writing anyway: figures are advice, and a stuck holder must not stop
/// them being kept.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the lock `<sidecar>.lock` that serializes the read-merge-replace of writers of one
/// sidecar, so that two `serve`s of one file never drop each other's rows. `None` when it
/// could not be had within [`LOCK_WAIT`] (the caller writes anyway). Held until dropped;
/// opened, created and judged as the token file's lock is, and like it never deleted.
pub fn lock(path: &Path) -> crate::error::Result<Option<File>> {
    let (lock_path, lock) = crate::store::open_lock(path, true)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(Some(lock)),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                return Err(crate::error::Error::io("lock", &lock_path, e));
            }
        }
    }
}

/// Removes the temporary copies of the sidecar at `path` that a writer killed mid-write left
/// behind (`.tokens.seen.XXXXXX.tmp`). Only while holding [`lock`]: no other writer has one
/// in progress then. Returns how many went.
pub fn remove_stale_temps(path: &Path) -> usize {
    let dir = directory_of(path);
    let prefix = temp_prefix(path);
    let euid = nix::unistd::geteuid().as_raw();
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix)
                && name.ends_with(TEMP_SUFFIX)
                && name.len() == prefix.len() + 6 + TEMP_SUFFIX.len()
                && entry
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.uid() == euid)
        })
        .filter(|entry| fs::remove_file(entry.path()).is_ok())
        .count()
}

/// Moves a sidecar that cannot be used out of the way, to `<sidecar>.ignored` (replacing an
/// earlier one), so that the next write does not destroy what it held: an admin may still
/// want it. Returns where it went.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let aside = crate::store::sibling(path, ".ignored");
    fs::rename(path, &aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        parse_timestamp(text.as_bytes()).unwrap()
    }

    fn seen(when: &str, uses: u64, client: &str) -> Seen {
        Seen {
            last_used: at(when),
            uses,
            last_client: Some(client.to_string()),
        }
    }

    #[test]
    fn written_then_read_back_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("tokens");
        fs::write(&target, b"").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let path = sidecar_of(&target);
        let a = seen("2026-12-01T00:00:00Z", 3, "uid 1000");
        let b = Seen {
            last_client: None,
            ..seen("2026-12-02T00:00:00Z", 1, "")
        };
        let now = at("2026-12-02T01:00:00Z");
        let since = at("2026-11-01T00:00:00Z");
        write(
            &path,
            &target,
            &target,
            since,
            now,
            [("0123456789ab", &a), ("ba9876543210", &b)],
        )
        .unwrap();
        let back = read(&path, &target, Belongs::SameFile).unwrap().unwrap();
        assert_eq!(back.since, Some(since));
        let back = back.rows;
        assert_eq!(back.len(), 2);
        assert_eq!(back["0123456789ab"], a);
        assert_eq!(back["ba9876543210"], b);
        assert!(replaceable(&path).unwrap());
        assert!(!replaceable(&target).unwrap(), "a token file is no sidecar");
        assert!(replaceable(&dir.path().join("absent")).unwrap());
        assert!(!replaceable(dir.path()).unwrap(), "nor is a directory");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\"tokenfile_seen\":1,\"file\":"),
            "{text}"
        );
        // Nothing is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn missing_corrupt_and_foreign_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("tokens");
        let path = sidecar_of(&target);
        assert!(read(&path, &target, Belongs::SameFile).unwrap().is_none());
        for (text, line) in [
            ("", 1),
            ("not json\n", 1),
            (
                "{\"tokenfile_seen\":2,\"file\":\"x\",\"written\":\"\"}\n",
                1,
            ),
            (
                &format!(
                    "{{\"tokenfile_seen\":1,\"file\":{:?},\"written\":\"\"}}\n{{\"id\":\"XYZ\",\"last_used\":\"2026-01-01T00:00:00Z\",\"uses\":1}}\n",
                    target.display().to_string()
                ),
                2,
            ),
        ] {
            fs::write(&path, text).unwrap();
            match read(&path, &target, Belongs::SameFile) {
                Err(SeenError::Corrupt { line: got }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        fs::write(
            &path,
            "{\"tokenfile_seen\":1,\"file\":\"/elsewhere/tokens\",\"written\":\"\"}\n",
        )
        .unwrap();
        assert!(matches!(
            read(&path, &target, Belongs::SameFile),
            Err(SeenError::OtherFile { .. })
        ));
        // Another path: taken from another host only if it shares a record with this file.
        let ours = |id: &str| id == "0123456789ab";
        let is_ours = Belongs::SharesARecord(&ours);
        assert!(matches!(
            read(&path, &target, is_ours),
            Err(SeenError::OtherFile { .. })
        ));
        let row = |id: &str| {
            format!("{{\"id\":\"{id}\",\"last_used\":\"2026-01-01T00:00:00Z\",\"uses\":1}}\n")
        };
        let header = "{\"tokenfile_seen\":1,\"file\":\"/elsewhere/tokens\",\"written\":\"\"}\n";
        fs::write(&path, format!("{header}{}", row("ba9876543210"))).unwrap();
        assert!(matches!(
            read(&path, &target, is_ours),
            Err(SeenError::OtherFile { .. })
        ));
        let shared = format!("{header}{}{}", row("ba9876543210"), row("0123456789ab"));
        fs::write(&path, shared).unwrap();
        assert_eq!(
            read(&path, &target, is_ours).unwrap().unwrap().rows.len(),
            2
        );
    }

    #[test]
    fn the_later_use_wins() {
        let mut into = SeenById::new();
        into.insert("a".into(), seen("2026-12-01T00:00:00Z", 5, "x"));
        into.insert("b".into(), seen("2026-12-03T00:00:00Z", 1, "x"));
        let mut other = SeenById::new();
        other.insert("a".into(), seen("2026-12-02T00:00:00Z", 2, "y"));
        other.insert("b".into(), seen("2026-12-02T00:00:00Z", 9, "y"));
        other.insert("c".into(), seen("2026-12-02T00:00:00Z", 1, "y"));
        merge(&mut into, other);
        assert_eq!(into["a"], seen("2026-12-02T00:00:00Z", 2, "y"));
        assert_eq!(into["b"], seen("2026-12-03T00:00:00Z", 1, "x"));
        assert_eq!(into["c"].uses, 1);
    }
}
