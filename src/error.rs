//! The one error type of the crate and its single mapping to the exit codes (docs/exit-codes.md).
//!
//! Every failure a user or the file system can cause ends up here, and [`Error::exit`] is the
//! only place that maps a failure to its exit code. The outcomes that are not failures — a
//! check's decision, `lint`'s problems, `id`'s "no record" — are returned by their commands
//! as an [`Exit`]; clap's own rejections exit 2 (in `cli::main`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scope::ScopeArgError;
use crate::token::TokenError;
use crate::when::WhenError;

/// Exit codes of docs/exit-codes.md. `check` outcomes that are not errors (granted, forbidden,
/// unauthorized) are expressed as an `Exit` directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked; for `check`: granted.
    Success = 0,
    /// `check`: the token is valid but lacks a required scope (HTTP 403).
    Forbidden = 1,
    /// A bad flag or argument, or one out of range.
    Usage = 2,
    /// `check`: no token, an unknown token or an expired one (HTTP 401).
    Unauthorized = 3,
    /// No record has that ID, or the prefix is ambiguous; `id`: no record has the token.
    NoSuchId = 4,
    /// `lint`/`edit` found problems in the file, or the file is unsafe to use.
    Problems = 5,
    /// Reading or writing failed, the lock timed out, `init` found the file there, or a new
    /// token could not be shown.
    Io = 10,
}

impl Exit {
    /// The process exit status for this outcome.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Every way a command can fail. [`Error::exit`] is its exit code, `Display` the message
/// `main` prints after `error:`.
#[derive(Debug)]
pub enum Error {
    /// An argument clap accepted that the command refuses (a `--name` with a TAB, an
    /// `--expires` in the past, no token on stdin); the message is complete.
    Usage(String),
    /// Malformed, empty or dead scopes given as arguments.
    Scope(ScopeArgError),
    /// A bad duration, time or lock timeout.
    When(WhenError),
    /// A bad ID, a token where a name or scope goes, or no randomness to mint with.
    Token(TokenError),
    /// No record in `file` has that ID.
    NoSuchId {
        /// The ID or prefix as the user gave it.
        id: String,
        /// The token file as given (`--file`), so that a wrong one shows.
        file: PathBuf,
    },
    /// The ID prefix matches more than one record of `file`.
    AmbiguousId {
        /// The prefix as the user gave it.
        prefix: String,
        /// Each matching record for the user to choose from: its ID, and its name in
        /// parentheses when it has one.
        candidates: Vec<String>,
        /// The token file as given (`--file`).
        file: PathBuf,
    },
    /// The file has problems (lint, edit) — the message says which.
    Problems(String),
    /// A rules file (`--routes`) has lines that do not parse.
    Rules {
        /// The rules file as given.
        path: PathBuf,
        /// Every bad line.
        errors: Vec<crate::routes::RuleError>,
    },
    /// The file is unsafe to use (e.g. world-writable).
    Unsafe(String),
    /// An I/O operation on a named path failed.
    Io {
        /// What was being done, worded to read before the path: `read`, `set the mode of`.
        action: &'static str,
        /// The path acted on; `standard output` when output failed, and then no hint follows.
        path: PathBuf,
        /// The system's error; its kind picks the hint on what to do next.
        source: io::Error,
    },
    /// The advisory lock could not be taken in time.
    LockTimeout {
        /// The lock file beside the token file, for `fuser` to find its holder.
        lock: PathBuf,
        /// How long this command waited, at least `--lock-timeout`.
        waited: Duration,
    },
    /// The token file does not exist.
    Missing {
        /// The token file as given.
        path: PathBuf,
        /// Its directory does not exist either, and `init` makes none: the message adds a
        /// `mkdir -p` to the way out.
        make_dir: bool,
    },
    /// The directory of the token file does not exist.
    MissingDir {
        /// That directory, as given.
        dir: PathBuf,
        /// The token file as given.
        file: PathBuf,
    },
    /// `init` found the file already there.
    AlreadyExists(PathBuf),
    /// The path is a symlink to nothing.
    DanglingSymlink(PathBuf),
    /// The path kept changing while it was being opened.
    ChangedWhileOpened(PathBuf),
    /// `serve`'s first read never found the file at rest.
    ChangedWhileRead(PathBuf),
    /// After locking, the path leads to another file than the one locked (a symlink was
    /// swapped meanwhile), so writing would bypass the other writers' lock.
    Swapped {
        /// The token file as given.
        given: PathBuf,
        /// The real file it leads to now.
        now: PathBuf,
        /// The real file whose lock this command holds.
        locked: PathBuf,
    },
    /// The temporary copy that would replace the file could not be created.
    TempCopy {
        /// The real file the copy was to replace.
        target: PathBuf,
        /// The target's directory: the copy must be made there for the rename to be atomic.
        dir: PathBuf,
        /// Why creating it failed.
        source: io::Error,
    },
    /// The new file could not be given the old one's ACL; nothing was changed.
    Acl {
        /// The real file whose ACL the new copy was to carry.
        target: PathBuf,
        /// Why setting the ACL failed.
        source: io::Error,
    },
    /// The new file could not be given the old one's owner; nothing was changed.
    Owner {
        /// The real file being replaced.
        target: PathBuf,
        /// The old file's owner (user ID), which the new copy was to get.
        uid: u32,
        /// The old file's group ID.
        gid: u32,
        /// Why `fchown` failed: typically neither root nor that user.
        source: io::Error,
    },
    /// The directory sync after the rename failed, so the change might not survive a crash.
    DirSync {
        /// The directory that could not be synced.
        dir: PathBuf,
        /// The real file that was replaced.
        target: PathBuf,
        /// Why the sync failed.
        source: io::Error,
        /// The old file was put back, so nothing was changed; otherwise the change stands
        /// but a crash may still undo it.
        undone: bool,
    },
    /// The token that `mint`/`rotate` made could not be shown, so nothing was changed.
    TokenNotShown(io::Error),
    /// A JSON document could not be encoded.
    Json(serde_json::Error),
    /// The man page could not be rendered.
    ManPage(io::Error),
    /// `$VISUAL`/`$EDITOR` could not be started.
    EditorStart {
        /// The editor command (`$VISUAL`, else `$EDITOR`, else `vi`), run through `sh -c`.
        editor: String,
        /// Why `sh` could not be started.
        source: io::Error,
    },
    /// The editor exited with a failure; nothing was installed.
    EditorFailed {
        /// The editor command, as run through `sh -c`.
        editor: String,
        /// Its exit code or the signal that ended it.
        status: std::process::ExitStatus,
    },
    /// An edit failed to install; the admin's copy is kept for another try.
    EditKept {
        /// The failure, as a full message: the lock timed out, someone else changed the
        /// file meanwhile, replacing it failed.
        why: String,
        /// Where the edited copy now is, beside the token file.
        copy: PathBuf,
    },
    /// An edit failed to install and its copy could not be kept either: the edit is lost.
    EditLost {
        /// The failure to install, as a full message.
        why: String,
        /// Why the copy could not be kept.
        source: io::Error,
    },
    /// `serve` could not start a thread or its runtime.
    Start {
        /// What could not be started (`the reloader thread`, `the async runtime`).
        what: &'static str,
        /// Why it could not.
        source: io::Error,
    },
    /// `serve` could not set up its signal handling.
    Signals {
        /// The step that failed, worded to follow "cannot" (`handle SIGHUP`).
        what: String,
        /// The error of tokio or of the system call.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `serve` could not listen on an address.
    Listen {
        /// The HTTP address, or a placeholder when even that could not be read back.
        addr: String,
        /// Why listening failed.
        source: io::Error,
    },
    /// The socket path is taken by something that is not a socket.
    NotASocket(PathBuf),
    /// Another server listens on the socket path.
    SocketInUse(PathBuf),
    /// A bug: something that holds by construction did not.
    Internal(&'static str),
}

/// The crate's results: by default failing with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`]: `action` is worded to read before the path (`read`, `set the mode of`).
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// An [`Error::Usage`] whose message is all the user sees.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// The single mapping from errors to the exit codes of docs/exit-codes.md.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) | Error::Scope(_) | Error::When(_) => Exit::Usage,
            Error::Token(TokenError::NotAnId { .. } | TokenError::TokenInValue { .. }) => {
                Exit::Usage
            }
            Error::Token(TokenError::NoRandomness(_)) => Exit::Io,
            Error::NoSuchId { .. } | Error::AmbiguousId { .. } => Exit::NoSuchId,
            Error::Problems(_) | Error::Unsafe(_) | Error::Rules { .. } => Exit::Problems,
            Error::Io { .. }
            | Error::LockTimeout { .. }
            | Error::Missing { .. }
            | Error::MissingDir { .. }
            | Error::AlreadyExists(_)
            | Error::DanglingSymlink(_)
            | Error::ChangedWhileOpened(_)
            | Error::ChangedWhileRead(_)
            | Error::Swapped { .. }
            | Error::TempCopy { .. }
            | Error::Acl { .. }
            | Error::Owner { .. }
            | Error::DirSync { .. }
            | Error::TokenNotShown(_)
            | Error::Json(_)
            | Error::ManPage(_)
            | Error::EditorStart { .. }
            | Error::EditorFailed { .. }
            | Error::EditKept { .. }
            | Error::EditLost { .. }
            | Error::Start { .. }
            | Error::Signals { .. }
            | Error::Listen { .. }
            | Error::NotASocket(_)
            | Error::SocketInUse(_)
            | Error::Internal(_) => Exit::Io,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) | Error::Problems(msg) | Error::Unsafe(msg) => f.write_str(msg),
            Error::Rules { path, errors } => {
                write!(f, "the rules file {} has problems: ", path.display())?;
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                write!(
                    f,
                    " (`tokenfile routes check {}` lists them)",
                    path.display()
                )
            }
            Error::Scope(e) => e.fmt(f),
            Error::When(e) => e.fmt(f),
            Error::Token(e) => e.fmt(f),
            Error::NoSuchId { id, file } => write!(
                f,
                "no record in {} has ID {id}: `tokenfile list` shows the IDs in it \
                 (is this the right --file?)",
                file.display()
            ),
            Error::AmbiguousId {
                prefix,
                candidates,
                file,
            } => write!(
                f,
                "ID prefix {prefix} is ambiguous in {}; it matches {}: give more digits",
                file.display(),
                candidates.join(", ")
            ),
            Error::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "cannot {action} {}: {source}{}",
                path.display(),
                // Output that failed changed nothing by itself; the file's fate is told by
                // whoever printed it (mint/rotate say so).
                match path.as_os_str() == "standard output" {
                    true => "",
                    false => next_step(source.kind()),
                }
            ),
            Error::LockTimeout { lock, waited } => write!(
                f,
                "could not lock {} within {:.1}s: another writer holds it \
                 (see `fuser {}`; raise the wait with --lock-timeout)",
                lock.display(),
                waited.as_secs_f64(),
                lock.display()
            ),
            Error::Missing { path, make_dir } => {
                let init = format!("tokenfile --file {} init", path.display());
                let create = match (make_dir, path.parent()) {
                    (true, Some(dir)) => format!("mkdir -p {} && {init}", dir.display()),
                    _ => init,
                };
                write!(
                    f,
                    "{} does not exist: create it with `{create}`, or point --file / $TOKENFILE \
                     at your token file",
                    path.display(),
                )
            }
            Error::MissingDir { dir, file } => write!(
                f,
                "the directory {} (for {}) does not exist: create it with `mkdir -p {}`, or \
                 point --file / $TOKENFILE elsewhere",
                dir.display(),
                file.display(),
                dir.display()
            ),
            Error::AlreadyExists(target) => write!(
                f,
                "{} already exists; not overwriting it (`tokenfile list` shows what is in it; \
                 give another --file for a new one)",
                target.display()
            ),
            Error::DanglingSymlink(path) => write!(
                f,
                "{} is a symlink to a file that does not exist: fix the link, or point --file \
                 / $TOKENFILE at the token file itself",
                path.display()
            ),
            Error::ChangedWhileOpened(path) => write!(
                f,
                "{} kept changing while it was being opened; try again",
                path.display()
            ),
            Error::ChangedWhileRead(path) => write!(
                f,
                "{} kept changing while being read; is something writing it continuously?",
                path.display()
            ),
            Error::Swapped { given, now, locked } => write!(
                f,
                "{} now leads to {} instead of {}, the file that was locked; try again",
                given.display(),
                now.display(),
                locked.display()
            ),
            Error::TempCopy {
                target,
                dir,
                source,
            } => write!(
                f,
                "cannot create a temporary copy of {} in {}: {source}",
                target.display(),
                dir.display()
            ),
            Error::Acl { target, source } => write!(
                f,
                "cannot give the new {} the ACL of the old one ({source}); nothing was changed",
                target.display()
            ),
            Error::Owner {
                target,
                uid,
                gid,
                source,
            } => write!(
                f,
                "cannot give the new {} its old owner {uid}:{gid} ({source}); run as that user \
                 or root",
                target.display()
            ),
            Error::DirSync {
                dir,
                target,
                source,
                undone: true,
            } => write!(
                f,
                "cannot sync the directory {} ({source}); the change to {} was undone: nothing \
                 was changed",
                dir.display(),
                target.display()
            ),
            Error::DirSync {
                dir,
                target,
                source,
                undone: false,
            } => write!(
                f,
                "{} was changed, but syncing its directory {} failed ({source}): a crash may \
                 still undo the change; check the file with `tokenfile list`",
                target.display(),
                dir.display()
            ),
            Error::TokenNotShown(source) => write!(
                f,
                "cannot write the new token to standard output ({source}), so nothing was changed"
            ),
            Error::Json(e) => write!(f, "cannot encode JSON: {e}"),
            Error::ManPage(e) => write!(f, "cannot render the man page: {e}"),
            Error::EditorStart { editor, source } => {
                write!(f, "cannot start the editor `{editor}`: {source}")
            }
            Error::EditorFailed { editor, status } => write!(
                f,
                "the editor `{editor}` failed ({status}); nothing was installed"
            ),
            Error::EditKept { why, copy } => write!(
                f,
                "{why}. Your edit is saved in {} — run `tokenfile edit` again and re-apply it",
                copy.display()
            ),
            Error::EditLost { why, source } => {
                write!(
                    f,
                    "{why}; your edited copy could not be kept either: {source}"
                )
            }
            Error::Start { what, source } => write!(f, "cannot start {what}: {source}"),
            Error::Signals { what, source } => write!(f, "cannot {what}: {source}"),
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::NotASocket(path) => write!(
                f,
                "{} exists and is not a socket; not replacing it",
                path.display()
            ),
            Error::SocketInUse(path) => write!(
                f,
                "{} is in use: another server is listening on it (stop it, or give this one \
                 another path)",
                path.display()
            ),
            Error::Internal(what) => write!(f, "internal error: {what}"),
        }
    }
}

/// What a person can do about a failed system call, when the kind says enough. Every
/// change is all or nothing (docs/writing.md), so "nothing was changed" holds for each of them.
fn next_step(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::PermissionDenied => {
            "; run as a user who may (the file's owner, or with sudo), or fix its permissions"
        }
        io::ErrorKind::IsADirectory => "; --file must name a file, not a directory",
        io::ErrorKind::NotFound => "; it, or a directory on the way to it, does not exist",
        io::ErrorKind::AddrInUse => {
            "; another process listens there (another serve?): stop it, or choose another port"
        }
        io::ErrorKind::AddrNotAvailable => "; that address is not one of this host's",
        io::ErrorKind::ReadOnlyFilesystem => "; the file system is read-only: nothing was changed",
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; free some space and try again: nothing was changed"
        }
        _ => "",
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. }
            | Error::TempCopy { source, .. }
            | Error::Acl { source, .. }
            | Error::Owner { source, .. }
            | Error::DirSync { source, .. }
            | Error::TokenNotShown(source)
            | Error::ManPage(source)
            | Error::EditorStart { source, .. }
            | Error::EditLost { source, .. }
            | Error::Start { source, .. }
            | Error::Listen { source, .. } => Some(source),
            Error::Json(e) => Some(e),
            Error::Signals { source, .. } => Some(source.as_ref()),
            Error::Scope(e) => Some(e),
            Error::When(e) => Some(e),
            Error::Token(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ScopeArgError> for Error {
    fn from(e: ScopeArgError) -> Self {
        Error::Scope(e)
    }
}

impl From<WhenError> for Error {
    fn from(e: WhenError) -> Self {
        Error::When(e)
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::Token(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts these variants had as `format!`s at their sites: scripts and tests match them.
    #[test]
    fn messages_keep_their_text() {
        let p = || PathBuf::from("/d/t");
        let e = || io::Error::other("boom");
        let cases = [
            (
                Error::Missing {
                    path: p(),
                    make_dir: true,
                },
                "/d/t does not exist: create it with `mkdir -p /d && tokenfile --file /d/t init`, \
                 or point --file / $TOKENFILE at your token file",
            ),
            (
                Error::Missing {
                    path: p(),
                    make_dir: false,
                },
                "/d/t does not exist: create it with `tokenfile --file /d/t init`, or point \
                 --file / $TOKENFILE at your token file",
            ),
            (
                Error::MissingDir {
                    dir: "/d".into(),
                    file: p(),
                },
                "the directory /d (for /d/t) does not exist: create it with `mkdir -p /d`, or \
                 point --file / $TOKENFILE elsewhere",
            ),
            (
                Error::AlreadyExists(p()),
                "/d/t already exists; not overwriting it (`tokenfile list` shows what is in it; \
                 give another --file for a new one)",
            ),
            (
                Error::DanglingSymlink(p()),
                "/d/t is a symlink to a file that does not exist: fix the link, or point --file \
                 / $TOKENFILE at the token file itself",
            ),
            (
                Error::Owner {
                    target: p(),
                    uid: 1,
                    gid: 2,
                    source: e(),
                },
                "cannot give the new /d/t its old owner 1:2 (boom); run as that user or root",
            ),
            (
                Error::DirSync {
                    dir: "/d".into(),
                    target: p(),
                    source: e(),
                    undone: true,
                },
                "cannot sync the directory /d (boom); the change to /d/t was undone: nothing was \
                 changed",
            ),
            (
                Error::DirSync {
                    dir: "/d".into(),
                    target: p(),
                    source: e(),
                    undone: false,
                },
                "/d/t was changed, but syncing its directory /d failed (boom): a crash may still \
                 undo the change; check the file with `tokenfile list`",
            ),
            (
                Error::EditKept {
                    why: "locked".into(),
                    copy: p(),
                },
                "locked. Your edit is saved in /d/t — run `tokenfile edit` again and re-apply it",
            ),
            (
                Error::Signals {
                    what: "handle SIGHUP".into(),
                    source: Box::new(e()),
                },
                "cannot handle SIGHUP: boom",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.exit(), Exit::Io, "{error}");
        }
    }
}
