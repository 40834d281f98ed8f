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

pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
const NEW_FILE_MODE: u32 = 0o600;

#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    lock_timeout: Duration,
}

/// Appends `suffix` to the full file name: `tokens` → `tokens.lock`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

impl Store {
    pub fn new(path: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        Store {
            path: path.into(),
            lock_timeout,
        }
    }

    /// The path as the user gave it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The real file behind the path. For a path that does not exist yet, its directory is
    /// resolved instead.
    pub fn target(&self) -> Result<PathBuf> {
        match fs::canonicalize(&self.path) {
            Ok(real) => Ok(real),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&self.path).is_ok() {
                    return Err(Error::File(format!(
                        "{} is a symlink to a file that does not exist: fix the link, or \
                         point --file / $TOKENFILE at the token file itself",
                        self.path.display()
                    )));
                }
                let name = self.path.file_name().ok_or_else(|| {
                    Error::usage(format!("{} is not a file name", self.path.display()))
                })?;
                let parent = match self.path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let dir = fs::canonicalize(parent).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => Error::File(format!(
                        "the directory {} (for {}) does not exist: create it with \
                         `mkdir -p {}`, or point --file / $TOKENFILE elsewhere",
                        parent.display(),
                        self.path.display(),
                        parent.display()
                    )),
                    _ => Error::io("open the directory of", &self.path, e),
                })?;
                Ok(dir.join(name))
            }
            Err(e) => Err(Error::io("resolve", &self.path, e)),
        }
    }

    pub fn lock_path(&self) -> Result<PathBuf> {
        Ok(sibling(&self.target()?, ".lock"))
    }

    /// Reads the whole file if it may be trusted (SPEC §1, path, mode and content); a
    /// missing file is an error that says how to create one.
    pub fn read(&self) -> Result<Vec<u8>> {
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
    pub fn open(&self) -> Result<Trusted> {
        trust::open_existing(&self.path)
    }

    /// Takes the exclusive lock, waiting up to the lock timeout.
    pub fn lock(&self) -> Result<Locked> {
        let target = self.target()?;
        let lock_path = sibling(&target, ".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(NEW_FILE_MODE)
            .open(&lock_path)
            .map_err(|e| Error::io("open the lock file", &lock_path, e))?;
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

    /// Locked read-modify-write of an existing file. `change` edits the document and says
    /// what it did; the file is rewritten only if its bytes changed.
    pub fn update<T>(&self, change: impl FnOnce(&mut Document) -> Result<T>) -> Result<T> {
        self.update_then(Exposed::Refuse, change, |_, install| install())
            .map(|(outcome, ())| outcome)
    }

    /// [`Store::update`] of a file that others can read and that holds plaintext, which
    /// every other reader refuses (SPEC §1): for `hash` alone, because storing only digests
    /// is exactly what makes such a file safe. Every problem of the path still refuses, and
    /// so does a change that would leave plaintext readable by others.
    pub fn update_fixing_exposure<T>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T>,
    ) -> Result<T> {
        self.update_then(Exposed::MayFix, change, |_, install| install())
            .map(|(outcome, ())| outcome)
    }

    /// [`Store::update`], and `alongside` run on the changed document by a second thread
    /// while it is written and synced — for a report on the whole file (its invalid lines)
    /// that would otherwise keep the lock longer: on a 100k-record file such a pass takes
    /// about as long as the fsync it now overlaps.
    pub fn update_and<T, U: Send>(
        &self,
        change: impl FnOnce(&mut Document) -> Result<T>,
        alongside: impl FnOnce(&Document) -> U + Send,
    ) -> Result<(T, U)> {
        self.update_then(Exposed::Refuse, change, |doc, install| {
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
    fn update_then<T, U>(
        &self,
        exposed: Exposed,
        change: impl FnOnce(&mut Document) -> Result<T>,
        finish: impl FnOnce(&Document, &dyn Fn() -> Result<()>) -> Result<U>,
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
        // Written straight from the lines: no second copy of a large file in memory.
        let install = || match doc.is(&before) {
            true => Ok(()),
            false => locked.install(|out| doc.write_to(out), Some(&meta), false),
        };
        let report = finish(&doc, &install)?;
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

pub fn missing_file(path: &Path) -> Error {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let create = match parent {
        // `init` makes no directories: say so before it fails.
        Some(dir) if !dir.is_dir() => format!(
            "mkdir -p {} && tokenfile --file {} init",
            dir.display(),
            path.display()
        ),
        _ => format!("tokenfile --file {} init", path.display()),
    };
    Error::File(format!(
        "{} does not exist: create it with `{create}`, or point --file / $TOKENFILE at \
         your token file",
        path.display(),
    ))
}

/// Proof of holding the lock; released when dropped (the lock file itself stays).
#[derive(Debug)]
pub struct Locked {
    target: PathBuf,
    /// The path as the user gave it: what is walked to judge the file (SPEC §1), since a
    /// symlink on the way counts as much as the target.
    given: PathBuf,
    _lock: File,
}

impl Locked {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The current bytes and metadata, or `None` if the file does not exist. Its path and
    /// mode are judged (SPEC §1); whether its content may be read by others is the
    /// caller's to judge once parsed ([`trust::ensure_not_exposed`]).
    pub fn read(&self) -> Result<Option<(Vec<u8>, Metadata)>> {
        let mut trusted = match trust::open(&self.given) {
            Ok(trusted) => trusted,
            Err(Refusal::Missing) => return Ok(None),
            Err(refusal) => return Err(refusal.into_error(&self.given)),
        };
        // Another file than the one whose lock we hold (a symlink swapped meanwhile) would
        // be replaced without its writers' lock.
        if trusted.real != self.target {
            return Err(Error::File(format!(
                "{} now leads to {} instead of {}, the file that was locked; try again",
                self.given.display(),
                trusted.real.display(),
                self.target.display()
            )));
        }
        let bytes = trusted.read_all()?;
        Ok(Some((bytes, trusted.meta)))
    }

    /// Atomically replaces the file with `bytes`, keeping owner, group and mode of `like` —
    /// unless that would leave plaintext readable by others (SPEC §1).
    pub fn replace(&self, bytes: &[u8], like: Option<&Metadata>) -> Result<()> {
        if let Some(meta) = like {
            trust::ensure_not_exposed(&self.target, meta, || {
                trust::plaintext_in(bytes).unwrap_or(true)
            })?;
        }
        self.install(|out| out.write_all(bytes), like, false)
    }

    /// Atomically creates the file; fails if it exists (even if created behind our back by
    /// something that does not take the lock).
    pub fn create_new(&self, bytes: &[u8]) -> Result<()> {
        self.install(|out| out.write_all(bytes), None, true)
    }

    /// Lands what `write` writes as the new file: temp file, fsync, rename, directory fsync.
    fn install(
        &self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
        like: Option<&Metadata>,
        no_clobber: bool,
    ) -> Result<()> {
        let target = &self.target;
        let dir = target.parent().unwrap_or(Path::new("/"));
        // tempfile creates the file with O_EXCL and mode 0600: never readable by others,
        // not even for the first byte.
        let mut temp = tempfile::Builder::new()
            .prefix(&temp_prefix(target))
            .tempfile_in(dir)
            .map_err(|e| {
                Error::File(format!(
                    "cannot create a temporary copy of {} in {}: {e}",
                    target.display(),
                    dir.display()
                ))
            })?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, temp.as_file_mut());
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("write a temporary copy of", target, e))?;
        drop(out);
        if let Some(meta) = like {
            keep_owner_and_mode(temp.as_file(), meta, target)?;
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| Error::io("sync a temporary copy of", target, e))?;
        if no_clobber {
            temp.persist_noclobber(target).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    Error::File(format!(
                        "{} already exists; not overwriting it (`tokenfile list` shows \
                         what is in it; give another --file for a new one)",
                        target.display()
                    ))
                } else {
                    Error::io("create", target, e.error)
                }
            })?;
        } else {
            temp.persist(target)
                .map_err(|e| Error::io("replace", target, e.error))?;
        }
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync the directory", dir, e))
    }

    /// A writer killed mid-write leaves its temp file behind. Holding the lock means no
    /// writer is active, so every temp file of ours is such a leftover.
    fn remove_stale_temp_files(&self) {
        let Some(dir) = self.target.parent() else {
            return;
        };
        let prefix = temp_prefix(&self.target);
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn keep_owner_and_mode(temp: &File, like: &Metadata, target: &Path) -> Result<()> {
    let mine = temp
        .metadata()
        .map_err(|e| Error::io("stat a temporary copy of", target, e))?;
    if mine.uid() != like.uid() || mine.gid() != like.gid() {
        std::os::unix::fs::fchown(temp, Some(like.uid()), Some(like.gid())).map_err(|e| {
            Error::File(format!(
                "cannot give the new {} its old owner {}:{} ({e}); run as that user or root",
                target.display(),
                like.uid(),
                like.gid()
            ))
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
        s.lock().unwrap().create_new(b"a\n").unwrap();
        let path = dir.path().join("tokens");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(dir.path().join(".tokens.tmp-crashed"), b"half").unwrap();
        s.update(|doc| {
            doc.push_line(b"b".to_vec());
            Ok(())
        })
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

    #[test]
    fn create_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("tokens"), b"keep").unwrap();
        let err = store(dir.path())
            .lock()
            .unwrap()
            .create_new(b"x")
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
        // A plaintext record: not for others to read (SPEC §1).
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        Store::new(&link, DEFAULT_LOCK_TIMEOUT)
            .update(|doc| {
                doc.push_line(b"b".to_vec());
                Ok(())
            })
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
