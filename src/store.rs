//! Writing the file (docs/writing.md): an exclusive `flock(2)` on the sidecar `<file>.lock`, then a
//! read-modify-write that lands atomically by rename.
//!
//! Paths: the *target* is the real file behind any symlinks, so a symlinked path replaces
//! the file it points to and keeps the link; the lock and the audit log sit beside the
//! target, so every writer — whichever link it came through — shares one lock.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::Document;
use crate::trust::{self, Refusal, Trusted};

const NEW_FILE_MODE: u32 = 0o600;

#[derive(Debug, Clone)]
pub(crate) struct Store {
    path: PathBuf,
    lock_timeout: Duration,
}

/// Appends `suffix` to the full file name: `tokens` → `tokens.lock`.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What a change does around the moment it lands (docs/writing.md): the audit line and a
/// secret go out before the rename, so that nothing lands unlogged or unseen.
pub(crate) trait Landing {
    /// Runs once the new file is written and synced, right before the rename that makes it
    /// the file. An error cancels the change: the temp file is removed, the file unchanged.
    fn before_rename(&mut self, target: &Path) -> Result<()>;
    /// Runs when the change fails after `before_rename` started; the file is unchanged.
    fn failed(&mut self, target: &Path, error: &Error);
}

impl<L: Landing + ?Sized> Landing for &mut L {
    fn before_rename(&mut self, target: &Path) -> Result<()> {
        (**self).before_rename(target)
    }
    fn failed(&mut self, target: &Path, error: &Error) {
        (**self).failed(target, error);
    }
}

/// A change with nothing to log or show.
impl Landing for () {
    fn before_rename(&mut self, _: &Path) -> Result<()> {
        Ok(())
    }
    fn failed(&mut self, _: &Path, _: &Error) {}
}

/// The name prefix of the hidden files this tool keeps beside `target` for a while:
/// `.tokens.<kind>-…` (`tmp` a copy being written, `old` the backup of a replace, `edit`
/// an editing copy).
fn sidecar_prefix(target: &Path, kind: &str) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.{kind}-")
}

fn temp_prefix(target: &Path) -> String {
    sidecar_prefix(target, "tmp")
}

impl Store {
    pub(crate) fn new(path: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        Store {
            path: path.into(),
            lock_timeout,
        }
    }

    /// The path as the user gave it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The real file behind the path. For a path that does not exist yet, its directory is
    /// resolved instead.
    pub(crate) fn target(&self) -> Result<PathBuf> {
        match fs::canonicalize(&self.path) {
            Ok(real) => Ok(real),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&self.path).is_ok() {
                    return Err(Error::DanglingSymlink(self.path.clone()));
                }
                let name = self.path.file_name().ok_or_else(|| {
                    Error::usage(format!("{} is not a file name", self.path.display()))
                })?;
                let parent = match self.path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let dir = fs::canonicalize(parent).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => Error::MissingDir {
                        dir: parent.to_path_buf(),
                        file: self.path.clone(),
                    },
                    _ => Error::io("open the directory of", &self.path, e),
                })?;
                Ok(dir.join(name))
            }
            Err(e) => Err(Error::io("resolve", &self.path, e)),
        }
    }

    /// Reads the whole file if it may be trusted (docs/trust.md, path, mode and content); a
    /// missing file is an error that says how to create one.
    pub(crate) fn read(&self) -> Result<Vec<u8>> {
        let mut trusted = self.open()?;
        let bytes = trusted.read_all()?;
        trust::ensure_not_exposed(&trusted.real, &trusted.meta, || {
            trust::plaintext_in(&bytes[..]).unwrap_or(true)
        })?;
        Ok(bytes)
    }

    /// Opens the file for reading if its path and mode may be trusted, with the errors of
    /// [`Store::read`]. What it holds is the caller's to judge:
    /// [`Trusted::ensure_content_safe`] before reading, or [`trust::ensure_not_exposed`]
    /// once parsed.
    pub(crate) fn open(&self) -> Result<Trusted> {
        trust::open_existing(&self.path)
    }

    /// Takes the exclusive lock, waiting up to the lock timeout.
    pub(crate) fn lock(&self) -> Result<Locked> {
        let target = self.target()?;
        let (lock_path, lock) = open_lock(&target, true)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let waited = started.elapsed();
                    if waited >= self.lock_timeout {
                        return Err(Error::LockTimeout {
                            lock: lock_path,
                            waited,
                        });
                    }
                    thread::sleep(pause.min(self.lock_timeout - waited));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::io("lock", &lock_path, e));
                }
            }
        }
        let locked = Locked {
            target,
            given: self.path.clone(),
            _lock: lock,
        };
        locked.remove_stale_temp_files();
        Ok(locked)
    }

    /// Waits, at most `limit`, for a change in progress to land: a writer holds the lock
    /// from before it reads until after its rename, and `mint`/`rotate` print the new token
    /// before that rename — so `tokenfile mint | tokenfile check` must wait to see it. A
    /// shared `flock`, so readers never wait for each other; the lock file is never created
    /// here (no writer ever ran), opened and judged as a writer does (a FIFO, a symlink or
    /// another user's file planted there is not waited on), and any failure just means
    /// reading the file as it is: it is always whole, old or new.
    pub(crate) fn wait_for_writer(&self, limit: Duration) {
        let Ok((_, lock)) = self.target().and_then(|target| open_lock(&target, false)) else {
            return;
        };
        let deadline = Instant::now() + limit;
        while let Err(fs::TryLockError::WouldBlock) = lock.try_lock_shared() {
            if Instant::now() >= deadline {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Locked read-modify-write of an existing file. `change` edits the document and says
    /// what it did; the file is rewritten only if its bytes changed, and then `landing`
    /// (made from what `change` said) runs around the rename.
    pub(crate) fn update<T, L: Landing>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T>,
        landing: impl FnOnce(&T) -> L,
    ) -> Result<T> {
        self.update_then(Exposed::Refuse, change, landing, |_, install| install())
            .map(|(outcome, ())| outcome)
    }

    /// [`Store::update`] of a file that others can read and that holds plaintext, which
    /// every other reader refuses (docs/trust.md): for `hash` alone, because storing only
    /// digests is exactly what makes such a file safe. Every problem of the path still
    /// refuses, and so does a change that would leave plaintext readable by others.
    pub(crate) fn update_fixing_exposure<T, L: Landing>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T>,
        landing: impl FnOnce(&T) -> L,
    ) -> Result<T> {
        self.update_then(Exposed::MayFix, change, landing, |_, install| install())
            .map(|(outcome, ())| outcome)
    }

    /// [`Store::update`], and `alongside` run on the changed document by a second thread
    /// while it is written and synced — for a report on the whole file (its invalid lines)
    /// that would otherwise keep the lock longer: on a 100k-record file such a pass takes
    /// about as long as the fsync it now overlaps.
    pub(crate) fn update_and<T, U: Send, L: Landing>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T>,
        landing: impl FnOnce(&T) -> L,
        alongside: impl FnOnce(&Document) -> U + Send,
    ) -> Result<(T, U)> {
        self.update_then(Exposed::Refuse, change, landing, |doc, install| {
            let (installed, report) = std::thread::scope(|scope| {
                let report = scope.spawn(move || alongside(doc));
                (install(), report.join())
            });
            installed?;
            match report {
                Ok(report) => Ok(report),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Locks, reads, applies `change`, then hands the changed document and the step that
    /// installs it (a no-op when nothing changed) to `finish`.
    fn update_then<T, U, L: Landing>(
        &self,
        exposed: Exposed,
        change: impl FnOnce(&mut Document) -> Result<T>,
        landing: impl FnOnce(&T) -> L,
        finish: impl FnOnce(&Document, &mut dyn FnMut() -> Result<()>) -> Result<U>,
    ) -> Result<(T, U)> {
        // Checked before locking too, so that a mistyped path or an unsafe file leaves no
        // lock file behind.
        drop(self.open()?);
        let locked = self.lock()?;
        let (before, meta) = locked.read()?.ok_or_else(|| missing_file(&self.path))?;
        let mut doc = Document::parse(&before);
        let ensure_not_exposed = |doc: &Document| {
            trust::ensure_not_exposed(&locked.target, &meta, || {
                trust::document_holds_plaintext(doc)
            })
        };
        if exposed == Exposed::Refuse {
            ensure_not_exposed(&doc)?;
        }
        let outcome = change(&mut doc)?;
        // The new file keeps the mode: a plaintext record added to a world-readable file
        // would hand its token to every user.
        ensure_not_exposed(&doc)?;
        let mut landing = Some(landing(&outcome));
        // Written straight from the lines: no second copy of a large file in memory.
        let mut install = || match (doc.is(&before), landing.take()) {
            (false, Some(mut landing)) => {
                locked.install(|out| doc.write_to(out), Some(&meta), false, &mut landing)
            }
            _ => Ok(()),
        };
        let report = finish(&doc, &mut install)?;
        Ok((outcome, report))
    }
}

/// Whether a locked change may read a file that exposes plaintext (see
/// [`Store::update_fixing_exposure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exposed {
    Refuse,
    MayFix,
}

pub(crate) fn missing_file(path: &Path) -> Error {
    // `init` makes no directories: the message says so before it fails.
    let make_dir = path
        .parent()
        .is_some_and(|dir| !dir.as_os_str().is_empty() && !dir.is_dir());
    Error::Missing {
        path: path.to_path_buf(),
        make_dir,
    }
}

/// Proof of holding the lock; released when dropped (the lock file itself stays).
#[derive(Debug)]
pub(crate) struct Locked {
    target: PathBuf,
    /// The path as the user gave it: what is walked to judge the file (docs/trust.md), since a
    /// symlink on the way counts as much as the target.
    given: PathBuf,
    _lock: File,
}

impl Locked {
    /// The current bytes and metadata, or `None` if the file does not exist. Its path and
    /// mode are judged (docs/trust.md); whether its content may be read by others is the
    /// caller's to judge once parsed ([`trust::ensure_not_exposed`]).
    pub(crate) fn read(&self) -> Result<Option<(Vec<u8>, Metadata)>> {
        let mut trusted = match trust::open(&self.given) {
            Ok(trusted) => trusted,
            Err(Refusal::Missing) => return Ok(None),
            Err(refusal) => return Err(refusal.into_error(&self.given)),
        };
        // Another file than the one whose lock we hold (a symlink swapped meanwhile) would
        // be replaced without its writers' lock.
        if trusted.real != self.target {
            return Err(Error::Swapped {
                given: self.given.clone(),
                now: trusted.real,
                locked: self.target.clone(),
            });
        }
        let bytes = trusted.read_all()?;
        Ok(Some((bytes, trusted.meta)))
    }

    /// Atomically replaces the file with `bytes`, keeping owner, group, mode and ACL of
    /// `like` — unless that would leave plaintext readable by others (docs/trust.md).
    pub(crate) fn replace(
        &self,
        bytes: &[u8],
        like: Option<&Metadata>,
        landing: &mut dyn Landing,
    ) -> Result<()> {
        if let Some(meta) = like {
            trust::ensure_not_exposed(&self.target, meta, || {
                trust::plaintext_in(bytes).unwrap_or(true)
            })?;
        }
        self.install(|out| out.write_all(bytes), like, false, landing)
    }

    /// Atomically creates the file; fails if it exists (even if created behind our back by
    /// something that does not take the lock).
    pub(crate) fn create_new(&self, bytes: &[u8], landing: &mut dyn Landing) -> Result<()> {
        // Checked first too, so that the usual refusal logs no change that then fails.
        if fs::symlink_metadata(&self.target).is_ok() {
            return Err(already_exists(&self.target));
        }
        self.install(|out| out.write_all(bytes), None, true, landing)
    }

    /// Lands what `write` writes as the new file: temp file, fsync, `landing`, rename,
    /// directory fsync. Every failure before the rename leaves the file as it was and
    /// removes the temp file (dropping it does).
    fn install(
        &self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
        like: Option<&Metadata>,
        no_clobber: bool,
        landing: &mut dyn Landing,
    ) -> Result<()> {
        let target = &self.target;
        let dir = target.parent().unwrap_or(Path::new("/"));
        // tempfile creates the file with O_EXCL and mode 0600 less the umask; the fchmod
        // makes it exactly 0600 before its first byte, whatever the umask.
        let mut temp = tempfile::Builder::new()
            .prefix(&temp_prefix(target))
            .tempfile_in(dir)
            .map_err(|source| Error::TempCopy {
                target: target.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        set_mode(temp.as_file(), NEW_FILE_MODE)
            .map_err(|e| Error::io("set the mode of a temporary copy of", target, e))?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, temp.as_file_mut());
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("write a temporary copy of", target, e))?;
        drop(out);
        if let Some(meta) = like {
            keep_owner_and_mode(temp.as_file(), meta, target)?;
            acl::copy(target, temp.as_file())?;
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| Error::io("sync a temporary copy of", target, e))?;
        // A second name for the old file, so that a failed directory sync can put it back.
        let backup = match (like, no_clobber) {
            (Some(_), false) => link_backup(target),
            _ => None,
        };
        let renamed = landing.before_rename(target).and_then(|()| {
            if no_clobber {
                temp.persist_noclobber(target).map(drop).map_err(|e| {
                    if e.error.kind() == io::ErrorKind::AlreadyExists {
                        already_exists(target)
                    } else {
                        Error::io("create", target, e.error)
                    }
                })
            } else {
                temp.persist(target)
                    .map(drop)
                    .map_err(|e| Error::io("replace", target, e.error))
            }
        });
        if let Err(e) = renamed {
            remove_backup(backup.as_deref());
            landing.failed(target, &e);
            return Err(e);
        }
        // The rename is durable only once the directory entry is.
        let Err(e) = File::open(dir).and_then(|d| d.sync_all()) else {
            remove_backup(backup.as_deref());
            return Ok(());
        };
        // Never retried (a failed fsync may have dropped what it was to write): the old
        // file goes back, so that the failure the command reports is the whole truth.
        let undone = match &backup {
            Some(backup) => fs::rename(backup, target),
            None if no_clobber => fs::remove_file(target),
            None => Err(io::ErrorKind::Unsupported.into()),
        };
        if undone.is_ok() {
            let error = Error::DirSync {
                dir: dir.to_path_buf(),
                target: target.clone(),
                source: e,
                undone: true,
            };
            landing.failed(target, &error);
            return Err(error);
        }
        remove_backup(backup.as_deref());
        Err(Error::DirSync {
            dir: dir.to_path_buf(),
            target: target.clone(),
            source: e,
            undone: false,
        })
    }

    /// A writer killed mid-write leaves its temp file behind. Holding the lock means no
    /// writer is active, so every temp file of ours is such a leftover.
    fn remove_stale_temp_files(&self) {
        let Some(dir) = self.target.parent() else {
            return;
        };
        let prefixes = [temp_prefix(&self.target), backup_prefix(&self.target)];
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        for copy in stale_edit_copies(&self.target) {
            if fs::remove_file(&copy).is_ok() {
                crate::cli::output::note(&format!(
                    "removed {}, a copy of the token file left by an `edit` that \
                     was killed (it held every credential)",
                    copy.display()
                ));
            }
        }
    }
}

fn backup_prefix(target: &Path) -> String {
    sidecar_prefix(target, "old")
}

/// Links the file about to be replaced as `.tokens.old-<pid>`. `None` where that cannot be
/// done (a file system without hard links): the change goes ahead, without the undo.
fn link_backup(target: &Path) -> Option<PathBuf> {
    let backup = target.with_file_name(format!("{}{}", backup_prefix(target), std::process::id()));
    let _ = fs::remove_file(&backup);
    fs::hard_link(target, &backup).ok().map(|()| backup)
}

fn remove_backup(backup: Option<&Path>) {
    if let Some(backup) = backup {
        let _ = fs::remove_file(backup);
    }
}

/// The name prefix of `edit`'s private copies: `.tokens.edit-<pid>-<random>`.
pub(crate) fn edit_copy_prefix(target: &Path) -> String {
    sidecar_prefix(target, "edit")
}

/// Editing copies whose `edit` process is gone (killed by `kill -9`, or by a signal it
/// could not catch): each is a full copy of the file, credentials and all. A copy whose
/// process still runs is being edited and is not listed; neither are copies an `edit`
/// kept on purpose after a failed install (`.edit-saved-…`, named in its message).
pub(crate) fn stale_edit_copies(target: &Path) -> Vec<PathBuf> {
    edit_copies(target, |rest| {
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            return false;
        };
        // ESRCH: no such process. EPERM means it exists (another user's): not stale.
        pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
    })
}

/// The copies an `edit` kept on purpose (`.…edit-saved-…`) when it could not install them:
/// each holds every credential until its admin re-applies it and deletes it.
pub(crate) fn saved_edit_copies(target: &Path) -> Vec<PathBuf> {
    edit_copies(target, |rest| rest.starts_with("saved-"))
}

/// The entries beside `target` named [`edit_copy_prefix`] + a rest that `keep` accepts.
fn edit_copies(target: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let prefix = edit_copy_prefix(target);
    let Some(dir) = target.parent() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix).is_some_and(&keep)
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

/// Sets a descriptor's mode exactly: the umask applies at open(2), not to fchmod(2).
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// Why a sidecar could not be opened: an error, or a file planted where it is looked for
/// that must not be used (see [`trust::sidecar_refusal`]).
#[derive(Debug)]
pub(crate) enum SidecarError {
    Io(io::Error),
    Untrusted(String),
}

impl std::fmt::Display for SidecarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SidecarError::Io(e) => e.fmt(f),
            SidecarError::Untrusted(why) => f.write_str(why),
        }
    }
}

/// Opens a sidecar of the token file (its lock file, its audit log) with `options`, creating
/// it when missing and `create` says so, and judges what was opened: in a sticky directory
/// another user may have planted a symlink (to a file of root's, or dangling), a FIFO, a
/// hard link or a file of their own there (docs/writing.md). The last component is never
/// followed, nothing blocks, and a file this call creates is made with `O_EXCL` and
/// fchmod'ed to exactly 0600 before anything is written to it, so the umask (0277 would
/// leave it 0400, unwritable) never decides its mode; an existing file keeps its mode.
/// `file_owner` is the token file's owner, if it exists.
pub(crate) fn open_sidecar(
    path: &Path,
    options: &OpenOptions,
    create: bool,
    file_owner: Option<u32>,
) -> std::result::Result<File, SidecarError> {
    let mut options = options.clone();
    options.custom_flags(
        nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC,
    );
    let file = open_private(path, &options, create).map_err(|e| match e.raw_os_error() {
        Some(nix::libc::ELOOP) => SidecarError::Untrusted(format!(
            "{} is a symlink, which is never followed for a file tokenfile writes or locks; \
             remove it: `rm -- {}` (tokenfile creates a new one, mode 0600)",
            path.display(),
            path.display()
        )),
        _ => SidecarError::Io(e),
    })?;
    let meta = file.metadata().map_err(SidecarError::Io)?;
    match trust::sidecar_refusal(path, &file, &meta, file_owner) {
        Some(why) => Err(SidecarError::Untrusted(why)),
        None => Ok(file),
    }
}

/// [`open_sidecar`]'s open: `options` as given, creating the file 0600 when missing.
fn open_private(path: &Path, options: &OpenOptions, create: bool) -> io::Result<File> {
    // Twice at most: a file that vanishes again after being created by someone else is
    // not worth a loop.
    for _ in 0..2 {
        match options.open(path) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        match options
            .clone()
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(path)
        {
            Ok(file) => {
                set_mode(&file, NEW_FILE_MODE)?;
                return Ok(file);
            }
            // Created by someone else meanwhile (or a dangling symlink, which `O_EXCL`
            // does not follow): open what is there, and judge it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    options.open(path)
}

/// The owner of the token file `target` (its real path), if it exists.
pub(crate) fn owner_of(target: &Path) -> Option<u32> {
    fs::metadata(target).ok().map(|meta| meta.uid())
}

/// Opens the lock file `<target>.lock` (creating it, exactly 0600, when `create`), judged as
/// a sidecar: for [`Store::lock`] and [`Store::wait_for_writer`], and for the writers of the
/// last-used sidecar (`seen::lock`).
pub(crate) fn open_lock(target: &Path, create: bool) -> Result<(PathBuf, File)> {
    let lock_path = sibling(target, ".lock");
    let mut options = OpenOptions::new();
    options.read(true).write(create);
    match open_sidecar(&lock_path, &options, create, owner_of(target)) {
        Ok(lock) => Ok((lock_path, lock)),
        Err(SidecarError::Io(e)) => Err(Error::io("open the lock file", &lock_path, e)),
        Err(SidecarError::Untrusted(why)) => Err(Error::Unsafe(format!(
            "refusing to use the lock file: {why}"
        ))),
    }
}

/// The POSIX ACL of the file being replaced, carried over to its replacement (docs/writing.md).
mod acl {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use nix::libc;

    use crate::error::{Error, Result};
    use crate::trust::acl::{self as reader, Of};

    fn set(file: &File, value: &[u8]) -> io::Result<()> {
        // SAFETY: the name is NUL-terminated and the value valid for its length.
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                c"system.posix_acl_access".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Gives `temp` the ACL of `target`. Set after the mode: a chmod rewrites an ACL's
    /// mask entry, while this sets the mode bits the ACL carries.
    pub(super) fn copy(target: &Path, temp: &File) -> Result<()> {
        // `target` is the real file, never a symlink.
        let acl =
            reader::raw(Of::Path(target)).map_err(|e| Error::io("read the ACL of", target, e))?;
        match acl {
            None => Ok(()),
            Some(acl) => set(temp, &acl).map_err(|source| Error::Acl {
                target: target.to_path_buf(),
                source,
            }),
        }
    }
}

fn already_exists(target: &Path) -> Error {
    Error::AlreadyExists(target.to_path_buf())
}

fn keep_owner_and_mode(temp: &File, like: &Metadata, target: &Path) -> Result<()> {
    let mine = temp
        .metadata()
        .map_err(|e| Error::io("stat a temporary copy of", target, e))?;
    if mine.uid() != like.uid() || mine.gid() != like.gid() {
        std::os::unix::fs::fchown(temp, Some(like.uid()), Some(like.gid())).map_err(|source| {
            Error::Owner {
                target: target.to_path_buf(),
                uid: like.uid(),
                gid: like.gid(),
                source,
            }
        })?;
    }
    let mode = like.mode() & 0o7777;
    if mode != NEW_FILE_MODE {
        temp.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set the mode of a temporary copy of", target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::new(dir.join("tokens"), Duration::from_millis(200))
    }

    #[test]
    fn create_then_update_keeps_mode_and_cleans_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.lock().unwrap().create_new(b"a\n", &mut ()).unwrap();
        let path = dir.path().join("tokens");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(dir.path().join(".tokens.tmp-crashed"), b"half").unwrap();
        s.update(
            |doc| {
                doc.push_line(b"b".to_vec());
                Ok(())
            },
            |_| (),
        )
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"a\nb\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
        assert!(names.contains(&"tokens.lock".to_string()));
    }

    /// Records what a change saw of the file at each step of its landing.
    struct Probe {
        path: PathBuf,
        fail: bool,
        seen: Vec<String>,
    }

    impl Landing for Probe {
        fn before_rename(&mut self, _: &Path) -> Result<()> {
            let now = fs::read(&self.path).unwrap();
            self.seen
                .push(format!("before:{}", String::from_utf8_lossy(&now)));
            match self.fail {
                true => Err(Error::usage("refused")),
                false => Ok(()),
            }
        }
        fn failed(&mut self, _: &Path, error: &Error) {
            self.seen.push(format!("failed:{error}"));
        }
    }

    #[test]
    fn landing_runs_before_the_rename_and_its_failure_cancels_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, b"a\n").unwrap();
        // A plaintext record readable by others would be refused (docs/trust.md).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let push_b = |doc: &mut Document| {
            doc.push_line(b"b".to_vec());
            Ok(())
        };
        for fail in [true, false] {
            let mut probe = Probe {
                path: path.clone(),
                fail,
                seen: Vec::new(),
            };
            let result = store(dir.path()).update(push_b, |_| &mut probe);
            assert_eq!(result.is_err(), fail);
            let expected: &[&str] = match fail {
                true => &["before:a\n", "failed:refused"],
                false => &["before:a\n"],
            };
            assert_eq!(probe.seen, expected);
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
                .collect();
            assert!(names.is_empty(), "{names:?}");
        }
        assert_eq!(fs::read(&path).unwrap(), b"a\nb\n");
    }

    #[test]
    fn create_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("tokens"), b"keep").unwrap();
        let err = store(dir.path())
            .lock()
            .unwrap()
            .create_new(b"x", &mut ())
            .unwrap_err();
        assert!(err.to_string().contains("already exists"));
        assert_eq!(fs::read(dir.path().join("tokens")).unwrap(), b"keep");
    }

    #[test]
    fn lock_times_out_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let _held = s.lock().unwrap();
        let err = s.lock().unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    }

    #[test]
    fn symlink_is_kept_and_target_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"a\n").unwrap();
        // A plaintext record: not for others to read (docs/trust.md).
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        Store::new(&link, Duration::from_secs(10))
            .update(
                |doc| {
                    doc.push_line(b"b".to_vec());
                    Ok(())
                },
                |_| (),
            )
            .unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"a\nb\n");
        assert!(dir.path().join("real.lock").exists());
    }
}
