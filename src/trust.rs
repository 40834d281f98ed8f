//! docs/trust.md: whether a token file may be believed, decided once for every
//! reader (`check`, `list`, `lint`, the writers' locked read, `serve`).
//!
//! A token file grants access, so whoever can change it — or replace it, or any directory on
//! the way to it — holds every token. As OpenSSH's StrictModes (`safe_path`), every
//! component of the path as given is inspected up to `/`, and so is every component of each
//! symlink followed on the way: a relative path starts at the current directory, whose own
//! ancestors count too. The walk is done here, component by component with `lstat`, rather
//! than on `realpath`'s answer, because a symlink sitting in a world-writable directory can be
//! swapped by anyone even when the file it points to is safe.
//!
//! The file is then opened without following a last symlink and without blocking (a FIFO
//! would block an `open` for reading until a writer comes), and the descriptor — not the
//! path — is checked: it must be the regular file the walk found. Callers read from that
//! descriptor, so a swap after the check changes nothing they read.
//!
//! One part of the rule depends on the content: a file readable by others (`o+r`) must not
//! hold a plaintext credential. [`ensure_not_exposed`] and [`Trusted::ensure_content_safe`]
//! apply it once the caller knows (or scans for) what the file holds.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek};
use std::ops::ControlFlow;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, Document, HASH_PREFIX};

/// As the kernel's limit on symlinks followed in one lookup (ELOOP).
const MAX_SYMLINKS: usize = 40;
/// A walk that finds the file changed under it (a rename or a symlink swap between the walk
/// and the open) is done again this many times before giving up.
const ATTEMPTS: usize = 3;

const OTHERS_WRITE: u32 = 0o002;
const OTHERS_READ: u32 = 0o004;
const GROUP_WRITE: u32 = 0o020;
const STICKY: u32 = 0o1000;

/// The token file, opened and found trustworthy (as far as its path and mode go).
#[derive(Debug)]
pub(crate) struct Trusted {
    /// Opened read-only; read from this, never from the path again.
    pub file: File,
    /// `fstat` of [`Trusted::file`].
    pub meta: Metadata,
    /// Where the file was found: absolute, every symlink resolved.
    pub real: PathBuf,
    /// Group-writable components (`lint` warnings: an admin's choice, not a refusal).
    pub warnings: Vec<String>,
}

/// Why the file cannot be used.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The file, or a directory on the way to it, does not exist (or a symlink dangles).
    Missing,
    /// The file kept changing between the walk and the open: try again shortly.
    Changed,
    /// A component or the file could not be inspected or opened (permission denied,
    /// too many symlinks, EMFILE, ...).
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Unsafe to trust.
    Unsafe(Unsafe),
}

/// Every reason a file is unsafe, each naming the component and the fix — never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsafe {
    pub reasons: Vec<String>,
    /// Group-writable components found on the way, for `lint`.
    pub warnings: Vec<String>,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reasons.join("; and "))
    }
}

impl Refusal {
    /// The crate error for a reader of `given` (the path as the user gave it).
    pub(crate) fn into_error(self, given: &Path) -> Error {
        match self {
            Refusal::Missing => crate::store::missing_file(given),
            Refusal::Changed => Error::ChangedWhileOpened(given.to_path_buf()),
            Refusal::Io {
                action,
                path,
                source,
            } => Error::io(action, &path, source),
            Refusal::Unsafe(why) => unsafe_error(&why.to_string()),
        }
    }
}

/// The error (exit 5) for a file that is unsafe for `reason`.
pub(crate) fn unsafe_error(reason: &str) -> Error {
    Error::Unsafe(format!("refusing to use the token file: {reason}"))
}

/// Opens the file at `path` if it may be trusted: every directory on the way (of the path
/// and of every symlink followed) is writable only by root or the file's owner, a sticky
/// world-writable one only holds our entry owned by root or the file's owner, and the file
/// itself is a regular file that others cannot write. The content rule (plaintext that
/// others can read) is the caller's next step: [`Trusted::ensure_content_safe`] or
/// [`ensure_not_exposed`].
pub(crate) fn open(path: &Path) -> Result<Trusted, Refusal> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match open_once(path) {
            // A Kubernetes volume swaps `..data` and then removes the old version: a walk
            // caught in between sees a name vanish. Done again, it sees the new version.
            Err(Refusal::Changed | Refusal::Missing) if attempt < ATTEMPTS => continue,
            done => return done,
        }
    }
}

/// [`open`] for a reader that needs the file: a missing one is an error that says how to
/// create it.
pub(crate) fn open_existing(path: &Path) -> Result<Trusted> {
    open(path).map_err(|refusal| refusal.into_error(path))
}

/// One step of the walk: looking `entry` up in the directory `dir`.
struct Step {
    dir: PathBuf,
    dir_meta: Metadata,
    entry: PathBuf,
    entry_meta: Metadata,
}

/// Where a walk ended: the final entry (not a symlink) and every lookup on the way.
struct Walk {
    real: PathBuf,
    meta: Metadata,
    steps: Vec<Step>,
}

fn io_refusal(action: &'static str, path: &Path, source: io::Error) -> Refusal {
    match source.kind() {
        io::ErrorKind::NotFound => Refusal::Missing,
        _ => Refusal::Io {
            action,
            path: path.to_path_buf(),
            source,
        },
    }
}

fn lstat(path: &Path) -> Result<Metadata, Refusal> {
    fs::symlink_metadata(path).map_err(|e| io_refusal("inspect", path, e))
}

/// Puts the components of `path` before the ones still to walk.
fn push_front(pending: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// Resolves `path` the way the kernel does, one component at a time, recording each lookup.
fn walk(path: &Path) -> Result<Walk, Refusal> {
    if path.as_os_str().is_empty() {
        return Err(Refusal::Missing);
    }
    // A stack: the next component last.
    let mut pending: Vec<OsString> = Vec::new();
    push_front(&mut pending, path);
    if path.is_relative() {
        let cwd = std::env::current_dir()
            .map_err(|e| io_refusal("find the current directory for", path, e))?;
        push_front(&mut pending, &cwd);
    }
    let root = lstat(Path::new("/"))?;
    // The directory reached so far and each of its ancestors' metadata, root first.
    let mut current = PathBuf::from("/");
    let mut dirs = vec![root];
    let mut steps = Vec::new();
    let mut symlinks = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => {
                current = PathBuf::from("/");
                dirs.truncate(1);
            }
            // (Unix paths have no prefixes.)
            Some(Component::CurDir | Component::Prefix(_)) | None => {}
            Some(Component::ParentDir) => {
                if dirs.len() > 1 {
                    current.pop();
                    dirs.pop();
                }
            }
            Some(Component::Normal(name)) => {
                let entry = current.join(name);
                let meta = lstat(&entry)?;
                let dir_meta = dirs.last().cloned().unwrap_or_else(|| meta.clone());
                steps.push(Step {
                    dir: current.clone(),
                    dir_meta,
                    entry: entry.clone(),
                    entry_meta: meta.clone(),
                });
                if meta.file_type().is_symlink() {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(Refusal::Io {
                            action: "follow the symlinks to",
                            path: path.to_path_buf(),
                            source: io::Error::from_raw_os_error(nix::libc::ELOOP),
                        });
                    }
                    let target = fs::read_link(&entry)
                        .map_err(|e| io_refusal("read the link", &entry, e))?;
                    // As the kernel: an empty link leads nowhere.
                    if target.as_os_str().is_empty() {
                        return Err(Refusal::Missing);
                    }
                    push_front(&mut pending, &target);
                } else if meta.is_dir() {
                    current = entry;
                    dirs.push(meta);
                } else if pending.is_empty() {
                    return Ok(Walk {
                        real: entry,
                        meta,
                        steps,
                    });
                } else {
                    return Err(Refusal::Io {
                        action: "open",
                        path: path.to_path_buf(),
                        source: io::Error::from_raw_os_error(nix::libc::ENOTDIR),
                    });
                }
            }
        }
    }
    // The path names a directory.
    let meta = match dirs.pop() {
        Some(meta) => meta,
        None => lstat(&current)?,
    };
    Ok(Walk {
        real: current,
        meta,
        steps,
    })
}

/// What a non-regular file is, for the message.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a file"
    }
}

fn not_regular(path: &Path, meta: &Metadata) -> Unsafe {
    let hint = if meta.is_dir() {
        "--file must name a file, not a directory"
    } else {
        "--file / $TOKENFILE must name the token file itself"
    };
    Unsafe {
        reasons: vec![format!(
            "{} is not a regular file ({}): {hint}",
            path.display(),
            kind_of(meta)
        )],
        warnings: Vec::new(),
    }
}

/// `uid 65534 (nobody)`.
fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// The path-and-mode half of the rule, on a finished walk whose final entry is `meta` (its
/// owner is "the file's owner").
fn judge(walk: &Walk, meta: &Metadata) -> Unsafe {
    let owner = meta.uid();
    let trusted_uid = |uid: u32| uid == 0 || uid == owner;
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    for step in &walk.steps {
        let mode = step.dir_meta.mode();
        let dir = step.dir.display();
        let first_visit = seen.insert((step.dir_meta.dev(), step.dir_meta.ino()));
        if mode & OTHERS_WRITE != 0 {
            if mode & STICKY == 0 {
                if !first_visit {
                    continue;
                }
                reasons.push(format!(
                    "the directory {dir} is world-writable (mode {:o}): anyone can replace {} \
                     in it; fix with `chmod o-w {dir}` or move the file",
                    mode & 0o7777,
                    step.entry.display()
                ));
            } else if !trusted_uid(step.entry_meta.uid()) {
                // In a sticky directory only an entry's owner may rename or remove it.
                let chown = if step.entry_meta.file_type().is_symlink() {
                    "chown -h root"
                } else {
                    "chown root"
                };
                reasons.push(format!(
                    "{} is owned by {}, who may replace it: it sits in the world-writable \
                     directory {dir}; fix with `{chown} {}` or move the file out of {dir}",
                    step.entry.display(),
                    user(step.entry_meta.uid()),
                    step.entry.display()
                ));
            }
        }
        if !first_visit {
            continue;
        }
        if !trusted_uid(step.dir_meta.uid()) {
            reasons.push(format!(
                "the directory {dir} is owned by {}, who may replace anything in it; \
                 fix with `chown root {dir}` or move the file",
                user(step.dir_meta.uid())
            ));
        }
        if mode & GROUP_WRITE != 0 && mode & (OTHERS_WRITE | STICKY) == 0 {
            warnings.push(format!(
                "the directory {dir} is group-writable (mode {:o}): every member of group {} \
                 can replace the file",
                mode & 0o7777,
                step.dir_meta.gid()
            ));
        }
    }
    let mode = meta.mode();
    let file = walk.real.display();
    if mode & OTHERS_WRITE != 0 {
        reasons.push(format!(
            "{file} is world-writable (mode {:o}): anyone on this host can add a token; \
             fix with `chmod o-w {file}`",
            mode & 0o7777
        ));
    } else if mode & GROUP_WRITE != 0 {
        warnings.push(format!(
            "{file} is group-writable (mode {:o}): every member of group {} can add a token",
            mode & 0o7777,
            meta.gid()
        ));
    }
    Unsafe { reasons, warnings }
}

fn open_once(path: &Path) -> Result<Trusted, Refusal> {
    let walk = walk(path)?;
    // Refused before any open: opening a FIFO for reading waits for a writer.
    if !walk.meta.is_file() {
        return Err(Refusal::Unsafe(not_regular(&walk.real, &walk.meta)));
    }
    let verdict = judge(&walk, &walk.meta);
    if !verdict.reasons.is_empty() {
        return Err(Refusal::Unsafe(verdict));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(
            nix::libc::O_NONBLOCK
                | nix::libc::O_NOCTTY
                | nix::libc::O_NOFOLLOW
                | nix::libc::O_CLOEXEC,
        )
        .open(&walk.real)
        .map_err(|e| match e.raw_os_error() {
            // The last component became a symlink after the walk.
            Some(nix::libc::ELOOP) => Refusal::Changed,
            _ => io_refusal("open", &walk.real, e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| io_refusal("inspect", &walk.real, e))?;
    if (meta.dev(), meta.ino()) != (walk.meta.dev(), walk.meta.ino()) {
        return Err(Refusal::Changed);
    }
    if !meta.is_file() {
        return Err(Refusal::Unsafe(not_regular(&walk.real, &meta)));
    }
    // The mode, judged again on what was opened: a chmod since the walk counts; and the
    // ACLs, which the walk does not read.
    let mut verdict = judge(&walk, &meta);
    let acls = judge_acls(&walk, &file, meta.uid());
    verdict.reasons.extend(acls.reasons);
    verdict.warnings.extend(acls.warnings);
    if !verdict.reasons.is_empty() {
        return Err(Refusal::Unsafe(verdict));
    }
    Ok(Trusted {
        file,
        meta,
        real: walk.real,
        warnings: verdict.warnings,
    })
}

/// Whether others may read the file (the mode's `o+r` bit; a group-readable 0640 is how
/// `serve` runs as its own group, and is fine).
pub(crate) fn readable_by_others(meta: &Metadata) -> bool {
    meta.mode() & OTHERS_READ != 0
}

/// The content half of the rule: why the file at `path` (with `meta`) is unsafe, if others
/// can read it (`o+r`, or a named user of its ACL) and `holds_plaintext` says it holds a plaintext credential — asked only then,
/// so that the common case (not readable by others) costs no look at the content.
pub(crate) fn exposed_reason(
    path: &Path,
    meta: &Metadata,
    holds_plaintext: impl FnOnce() -> bool,
) -> Option<String> {
    let (who, fix) = outside_readers(path, meta)?;
    if !holds_plaintext() {
        return None;
    }
    Some(format!(
        "{} holds plaintext tokens and is readable by {who}: they can read them; fix with \
         `{fix}`, or store only digests with `tokenfile hash`",
        path.display()
    ))
}

/// [`exposed_reason`] as an error (exit 5).
pub(crate) fn ensure_not_exposed(
    path: &Path,
    meta: &Metadata,
    holds_plaintext: impl FnOnce() -> bool,
) -> Result<()> {
    match exposed_reason(path, meta, holds_plaintext) {
        Some(reason) => Err(unsafe_error(&reason)),
        None => Ok(()),
    }
}

/// Whether a line may hold a plaintext credential: a record line (not a comment, not blank)
/// whose first field, less the spaces around it, is a run of non-whitespace bytes (what a
/// credential is) and not a well-formed `sha256:` digest. An invalid line grants nothing, but
/// its first field may well be a token (a typo in its scopes, a space pasted after it, does
/// not make it less of one), so it counts too; a first field of several words is no token.
pub(crate) fn line_holds_plaintext(content: &[u8]) -> bool {
    let Some(first) = format::credential_field(content) else {
        return false;
    };
    let first = first.trim_ascii();
    !first.is_empty()
        && !first.iter().any(u8::is_ascii_whitespace)
        && first
            .strip_prefix(HASH_PREFIX)
            .and_then(crate::token::Digest::from_hex)
            .is_none()
}

/// Whether a parsed file holds a plaintext credential ([`line_holds_plaintext`]).
pub(crate) fn document_holds_plaintext(doc: &Document) -> bool {
    doc.lines()
        .iter()
        .any(|line| line_holds_plaintext(&line.content))
}

/// [`document_holds_plaintext`] of everything `reader` yields, read line by line.
pub(crate) fn plaintext_in(reader: impl Read) -> io::Result<bool> {
    crate::lines::read(reader, true, |content, _| {
        match line_holds_plaintext(content) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })
}

impl Trusted {
    /// Refuses the file if others can read it and it holds a plaintext credential, looking
    /// through the whole descriptor only in that case (a one-shot `check` may otherwise stop
    /// at the first match); the descriptor is left at the start.
    pub(crate) fn ensure_content_safe(&mut self) -> Result<()> {
        if outside_readers(&self.real, &self.meta).is_none() {
            return Ok(());
        }
        let read_error = |e| Error::io("read", &self.real, e);
        let plaintext = plaintext_in(&self.file).map_err(read_error)?;
        (&self.file).rewind().map_err(read_error)?;
        ensure_not_exposed(&self.real, &self.meta, || plaintext)
    }

    /// The whole content, read from the descriptor.
    pub(crate) fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(self.meta.len() as usize);
        self.file
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &self.real, e))?;
        Ok(bytes)
    }
}

/// POSIX ACLs (`system.posix_acl_access`): an entry for a named user or group grants what
/// the mode bits do not show (they show the ACL's mask in the group bits), so the rule of
/// docs/trust.md is applied to them too. Read here for the walk and, by `store`, to copy a
/// file's ACL to its replacement.
pub(crate) mod acl {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use nix::libc;

    const NAME: &[u8] = b"system.posix_acl_access\0";
    const VERSION: u32 = 2;
    const USER: u16 = 0x02;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    pub(crate) const READ: u16 = 4;
    pub(crate) const WRITE: u16 = 2;

    /// Whose ACL: a path, not followed if it is a symlink (`lgetxattr`), or an open file.
    #[derive(Clone, Copy)]
    pub(crate) enum Of<'a> {
        Path(&'a Path),
        File(&'a File),
    }

    /// The raw value, or `None` when there is none (or the file system has no xattrs).
    pub(crate) fn raw(of: Of) -> io::Result<Option<Vec<u8>>> {
        let path = match of {
            Of::Path(path) => Some(
                CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            ),
            Of::File(_) => None,
        };
        let name = NAME.as_ptr().cast();
        let get = |buf: *mut libc::c_void, size: usize| -> isize {
            match (&path, of) {
                // SAFETY: NUL-terminated strings; `buf` is valid for `size` bytes (or null
                // with size 0, which asks the size).
                (Some(path), _) => unsafe { libc::lgetxattr(path.as_ptr(), name, buf, size) },
                // SAFETY: as above; the descriptor is open for as long as `file` lives.
                (None, Of::File(file)) => unsafe {
                    libc::fgetxattr(file.as_raw_fd(), name, buf, size)
                },
                (None, Of::Path(_)) => -1,
            }
        };
        loop {
            let size = get(std::ptr::null_mut(), 0);
            if size < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
                    _ => Err(e),
                };
            }
            let mut value = vec![0u8; size as usize];
            let got = get(value.as_mut_ptr().cast(), value.len());
            if got >= 0 {
                value.truncate(got as usize);
                return Ok(Some(value));
            }
            let e = io::Error::last_os_error();
            // ERANGE: the ACL grew between the two calls; ask again.
            if e.raw_os_error() != Some(libc::ERANGE) {
                return Err(e);
            }
        }
    }

    /// The named users and named groups whose *effective* permission (masked by the ACL's
    /// mask entry) includes `perm`: `(users, groups)`.
    pub(crate) fn named_with(raw: &[u8], perm: u16) -> (Vec<u32>, Vec<u32>) {
        let mut entries = Vec::new();
        if raw.len() >= 4 && u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) == VERSION {
            for e in raw[4..].chunks_exact(8) {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                let granted = u16::from_le_bytes([e[2], e[3]]);
                let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                entries.push((tag, granted, id));
            }
        }
        let mask = entries
            .iter()
            .find(|(tag, ..)| *tag == MASK)
            .map_or(0o7, |&(_, granted, _)| granted);
        let with = |wanted: u16| {
            entries
                .iter()
                .filter(|&&(tag, granted, _)| tag == wanted && granted & mask & perm != 0)
                .map(|&(_, _, id)| id)
                .collect::<Vec<_>>()
        };
        (with(USER), with(GROUP))
    }

    /// [`named_with`] of what `of` has, with no ACL (or none readable) granting nothing.
    pub(crate) fn named(of: Of, perm: u16) -> (Vec<u32>, Vec<u32>) {
        match raw(of) {
            Ok(Some(raw)) => named_with(&raw, perm),
            _ => (Vec::new(), Vec::new()),
        }
    }
}

/// The ACL half of the path rule, on a finished walk and the opened file: a named user other
/// than root and the file's owner who may write the file or a directory on the way is as
/// "others may write" (a sticky directory as for `o+w`); a named group, as group-writable.
fn judge_acls(walk: &Walk, file: &File, owner: u32) -> Unsafe {
    let trusted_uid = |uid: u32| uid == 0 || uid == owner;
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    // `entry_owner`: for a sticky directory, the owner of our entry in it.
    // `allowed`: who besides root may hold a named write entry. For the file, its owner;
    // for a directory, the directory's owner — not the file's: whoever can write a
    // directory on the way can put a file of their own there and so become "the file's
    // owner" (an adversarial run did exactly that with `setfacl -m u:nobody:rwx dir`).
    let mut judge_one =
        |of: acl::Of, path: &Path, is_dir: bool, allowed: u32, entry_owner: Option<u32>| {
            let (users, groups) = acl::named(of, acl::WRITE);
            let shown = path.display();
            let (subject, can) = match is_dir {
                true => (format!("the directory {shown}"), "replace the file"),
                false => (shown.to_string(), "add a token"),
            };
            // In a sticky directory only an entry's owner may rename or remove it.
            if !entry_owner.is_some_and(trusted_uid) {
                for uid in users.into_iter().filter(|&uid| uid != 0 && uid != allowed) {
                    reasons.push(format!(
                        "{subject} may be written by {} through its ACL, who can {can}; fix with \
                     `setfacl -x u:{uid} {shown}`",
                        user(uid)
                    ));
                }
            }
            for gid in groups {
                warnings.push(format!(
                    "{subject} may be written by group {gid} through its ACL: every member of \
                 that group can {can}"
                ));
            }
        };
    for step in &walk.steps {
        if !seen.insert((step.dir_meta.dev(), step.dir_meta.ino())) {
            continue;
        }
        let sticky_entry = (step.dir_meta.mode() & STICKY != 0).then(|| step.entry_meta.uid());
        let dir_owner = step.dir_meta.uid();
        judge_one(
            acl::Of::Path(&step.dir),
            &step.dir,
            true,
            dir_owner,
            sticky_entry,
        );
    }
    judge_one(acl::Of::File(file), &walk.real, false, owner, None);
    Unsafe { reasons, warnings }
}

/// Why an opened sidecar of the token file (its lock file, its audit log: docs/writing.md)
/// must not be used, if it must not: it is not a regular file of its own (a hard link could
/// be a file of root's anywhere), is owned by someone other than root, the effective user or
/// the token file's owner (`file_owner`), or others may write it (mode or ACL). In a sticky
/// directory another user can plant any of these; `path` had no symlink at its end (it was
/// opened with `O_NOFOLLOW`).
pub(crate) fn sidecar_refusal(
    path: &Path,
    file: &File,
    meta: &Metadata,
    file_owner: Option<u32>,
) -> Option<String> {
    let uid = meta.uid();
    let euid = nix::unistd::geteuid().as_raw();
    let trusted_uid = |id: u32| id == 0 || id == euid || Some(id) == file_owner;
    let shown = path.display();
    let why = if !meta.is_file() {
        format!("it is {}", kind_of(meta))
    } else if !trusted_uid(uid) {
        format!("it is owned by {}, who may change or hold it", user(uid))
    } else if meta.mode() & OTHERS_WRITE != 0 {
        format!(
            "it is world-writable (mode {:o}); or fix with `chmod o-w {shown}`",
            meta.mode() & 0o7777
        )
    } else if meta.nlink() != 1 {
        format!(
            "it has {} hard links: it may be another file too",
            meta.nlink()
        )
    } else if let Some(&other) = acl::named(acl::Of::File(file), acl::WRITE)
        .0
        .iter()
        .find(|&&id| !trusted_uid(id))
    {
        format!(
            "{} may write it through its ACL; or fix with `setfacl -x u:{other} {shown}`",
            user(other)
        )
    } else {
        return None;
    };
    Some(format!(
        "{shown} is not safe to use ({why}); remove it: `rm -- {shown}` (tokenfile creates \
         a new one, mode 0600)"
    ))
}

/// Who, besides the owner, root and the file's group, may read the file at `path`: every
/// user (`o+r`), or named users of its ACL; with the fix.
fn outside_readers(path: &Path, meta: &Metadata) -> Option<(String, String)> {
    let file = path.display();
    if readable_by_others(meta) {
        return Some((
            format!("every user (mode {:o})", meta.mode() & 0o7777),
            format!("chmod o-r {file}"),
        ));
    }
    let owner = meta.uid();
    let uid = acl::named(acl::Of::Path(path), acl::READ)
        .0
        .into_iter()
        .find(|&uid| uid != 0 && uid != owner)?;
    Some((
        format!("{} through its ACL", user(uid)),
        format!("setfacl -x u:{uid} {file}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, chown, lchown, symlink};

    const NOBODY: u32 = 65534;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A temp dir (canonical) with `a/b/tokens`, every directory 0755 and the file 0600.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("a/b")).unwrap();
        chmod(&base.join("a"), 0o755);
        chmod(&base.join("a/b"), 0o755);
        fs::write(base.join("a/b/tokens"), b"tok\n").unwrap();
        chmod(&base.join("a/b/tokens"), 0o600);
        (dir, base)
    }

    fn reasons(path: &Path) -> Vec<String> {
        match open(path) {
            Ok(_) => Vec::new(),
            Err(Refusal::Unsafe(why)) => why.reasons,
            Err(other) => panic!("not a verdict: {other:?}"),
        }
    }

    #[test]
    fn every_directory_up_to_the_root_counts() {
        let (_dir, base) = tree();
        let file = base.join("a/b/tokens");
        let trusted = open(&file).unwrap();
        assert_eq!(trusted.real, file);
        assert!(trusted.meta.is_file());
        chmod(&base.join("a"), 0o777);
        let found = reasons(&file);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(&format!("chmod o-w {}", base.join("a").display())));
        chmod(&base.join("a"), 0o1777);
        assert!(reasons(&file).is_empty(), "root owns `b`, the entry in it");
        chmod(&base.join("a"), 0o775);
        assert!(reasons(&file).is_empty());
        assert_eq!(open(&file).unwrap().warnings.len(), 1);
        chmod(&file, 0o666);
        assert!(reasons(&file)[0].contains("world-writable"));
    }

    #[test]
    fn owners_other_than_root_and_the_file_owner_are_unsafe() {
        if !is_root() {
            return;
        }
        let (_dir, base) = tree();
        let file = base.join("a/b/tokens");
        chown(base.join("a"), Some(NOBODY), None).unwrap();
        assert!(reasons(&file)[0].contains(&format!("chown root {}", base.join("a").display())));
        // Owned by the file's owner: that user could change the file anyway.
        chown(&file, Some(NOBODY), None).unwrap();
        assert!(reasons(&file).is_empty());
    }

    #[test]
    fn symlinks_are_walked_with_their_own_directories() {
        let (_dir, base) = tree();
        fs::create_dir(base.join("open")).unwrap();
        chmod(&base.join("open"), 0o777);
        // A link in an unsafe directory to a safe file.
        symlink(base.join("a/b/tokens"), base.join("open/link")).unwrap();
        assert!(reasons(&base.join("open/link"))[0].contains("open is world-writable"));
        // A relative link in a safe directory that leads through the unsafe one.
        fs::create_dir_all(base.join("open/x")).unwrap();
        chmod(&base.join("open/x"), 0o755);
        fs::write(base.join("open/x/tokens"), b"").unwrap();
        chmod(&base.join("open/x/tokens"), 0o600);
        symlink("../../open/x/tokens", base.join("a/b/via")).unwrap();
        assert!(!reasons(&base.join("a/b/via")).is_empty());
        // `..` after a symlink goes up from where the link led.
        symlink(base.join("a/b"), base.join("a/dirlink")).unwrap();
        let trusted = open(&base.join("a/dirlink/../b/tokens")).unwrap();
        assert_eq!(trusted.real, base.join("a/b/tokens"));
    }

    #[test]
    fn a_sticky_directory_trusts_only_entries_of_root_or_the_owner() {
        if !is_root() {
            return;
        }
        let (_dir, base) = tree();
        fs::create_dir(base.join("tmp")).unwrap();
        chmod(&base.join("tmp"), 0o1777);
        let link = base.join("tmp/link");
        symlink(base.join("a/b/tokens"), &link).unwrap();
        assert!(reasons(&link).is_empty());
        lchown(&link, Some(NOBODY), None).unwrap();
        let found = reasons(&link);
        assert!(found[0].contains("chown -h root"), "{found:?}");
    }

    #[test]
    fn loops_missing_files_and_other_kinds() {
        let (_dir, base) = tree();
        symlink("l2", base.join("l1")).unwrap();
        symlink("l1", base.join("l2")).unwrap();
        assert!(matches!(
            open(&base.join("l1")),
            Err(Refusal::Io { source, .. }) if source.raw_os_error() == Some(nix::libc::ELOOP)
        ));
        assert!(matches!(open(&base.join("nope")), Err(Refusal::Missing)));
        assert!(matches!(
            open(&base.join("nope/tokens")),
            Err(Refusal::Missing)
        ));
        symlink("nowhere", base.join("dangling")).unwrap();
        assert!(matches!(
            open(&base.join("dangling")),
            Err(Refusal::Missing)
        ));
        assert!(matches!(
            open(&base.join("a/b/tokens/x")),
            Err(Refusal::Io { .. })
        ));
        nix::unistd::mkfifo(
            &base.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(reasons(&base.join("fifo"))[0].contains("not a regular file (a FIFO)"));
        assert!(reasons(&base.join("a"))[0].contains("(a directory)"));
        assert!(reasons(Path::new("/"))[0].contains("(a directory)"));
    }

    #[test]
    fn plaintext_is_found_wherever_it_is() {
        let hashed = format!("sha256:{}\t*\n", "a".repeat(64));
        assert!(!plaintext_in(hashed.as_bytes()).unwrap());
        assert!(!plaintext_in(&b"# tok\n\n  \t\n\t*\n"[..]).unwrap());
        // An invalid line grants nothing, but its first field may be a token all the same.
        assert!(plaintext_in(&b"tok\t\n"[..]).unwrap());
        assert!(plaintext_in(&b"sha256:abc\t*\n"[..]).unwrap());
        assert!(plaintext_in(&b" tok \tbad scope!\n"[..]).unwrap());
        assert!(!plaintext_in(&b"broken line\twith bad scope!\n"[..]).unwrap());
        assert!(plaintext_in(format!("{hashed}tok").as_bytes()).unwrap());
        assert!(plaintext_in(&b"\xEF\xBB\xBFtok\tread\r\n"[..]).unwrap());
        let bytes = format!("{hashed}tok\n");
        let doc = Document::parse(bytes.as_bytes());
        assert!(document_holds_plaintext(&doc));
    }

    #[test]
    fn acl_entries_count_as_the_mask_lets_them() {
        let entry = |tag: u16, perm: u16, id: u32| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend(perm.to_le_bytes());
            e.extend(id.to_le_bytes());
            e
        };
        let mut raw = 2u32.to_le_bytes().to_vec();
        raw.extend(entry(0x01, 6, u32::MAX));
        raw.extend(entry(0x02, 6, 7));
        raw.extend(entry(0x02, 4, 8));
        raw.extend(entry(0x04, 4, u32::MAX));
        raw.extend(entry(0x08, 2, 9));
        raw.extend(entry(0x20, 0, u32::MAX));
        assert_eq!(acl::named_with(&raw, acl::WRITE), (vec![7], vec![9]));
        assert_eq!(acl::named_with(&raw, acl::READ), (vec![7, 8], vec![]));
        raw.extend(entry(0x10, 4, u32::MAX));
        assert_eq!(acl::named_with(&raw, acl::WRITE), (vec![], vec![]));
        assert_eq!(acl::named_with(&[1, 0, 0, 0], acl::WRITE), (vec![], vec![]));
    }

    #[test]
    fn only_plaintext_readable_by_others_is_exposed() {
        let (_dir, base) = tree();
        let file = base.join("a/b/tokens");
        for (mode, plaintext, exposed) in [
            (0o644, true, true),
            (0o604, true, true),
            (0o644, false, false),
            (0o640, true, false),
        ] {
            chmod(&file, mode);
            let mut trusted = open(&file).unwrap();
            assert_eq!(
                exposed_reason(&file, &trusted.meta, || plaintext).is_some(),
                exposed,
                "{mode:o} {plaintext}"
            );
            // The file holds `tok`, a plaintext record.
            assert_eq!(trusted.ensure_content_safe().is_err(), mode & 0o004 != 0);
            assert_eq!(trusted.read_all().unwrap(), b"tok\n", "left at the start");
        }
    }
}
