//! The one error type of the crate and its single mapping to the exit codes (docs/exit-codes.md).
//!
//! Every failure a user or the file system can cause ends up here; `main` turns it into a
//! message on stderr and an exit code, and nowhere else decides exit codes.

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
    Success = 0,
    Forbidden = 1,
    Usage = 2,
    Unauthorized = 3,
    NoSuchId = 4,
    Problems = 5,
    Io = 10,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug)]
pub enum Error {
    /// Bad flag value, ...
    Usage(String),
    /// Malformed, empty or dead scopes given as arguments.
    Scope(ScopeArgError),
    /// A bad duration, time or lock timeout.
    When(WhenError),
    /// A bad ID, a token where a name or scope goes, or no randomness to mint with.
    Token(TokenError),
    /// No record in `file` has that ID.
    NoSuchId { id: String, file: PathBuf },
    /// The ID prefix matches more than one record of `file`; the candidates are listed
    /// (ID and name).
    AmbiguousId {
        prefix: String,
        candidates: Vec<String>,
        file: PathBuf,
    },
    /// The file has problems (lint, edit) — the message says which.
    Problems(String),
    /// The file is unsafe to use (e.g. world-writable).
    Unsafe(String),
    /// An I/O operation on a named path failed.
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The advisory lock could not be taken in time.
    LockTimeout { lock: PathBuf, waited: Duration },
    /// The token file (`path`, as given) does not exist; `make_dir`: its directory does
    /// not either, and `init` makes none.
    Missing { path: PathBuf, make_dir: bool },
    /// The directory of the token file (`file`, as given) does not exist.
    MissingDir { dir: PathBuf, file: PathBuf },
    /// `init` found the file already there.
    AlreadyExists(PathBuf),
    /// The path is a symlink to nothing.
    DanglingSymlink(PathBuf),
    /// The path kept changing while it was being opened.
    ChangedWhileOpened(PathBuf),
    /// `serve`'s first read never found the file at rest.
    ChangedWhileRead(PathBuf),
    /// After locking, the path leads to another file than the one locked.
    Swapped {
        given: PathBuf,
        now: PathBuf,
        locked: PathBuf,
    },
    /// The temporary copy of `target` could not be created in `dir`.
    TempCopy {
        target: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    /// The new file could not be given the old one's ACL.
    Acl { target: PathBuf, source: io::Error },
    /// The new file could not be given the old one's owner.
    Owner {
        target: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    /// The directory sync after the rename failed; `undone`: the old file is back.
    DirSync {
        dir: PathBuf,
        target: PathBuf,
        source: io::Error,
        undone: bool,
    },
    /// The token that `mint`/`rotate` made could not be shown, so nothing was changed.
    TokenNotShown(io::Error),
    /// A JSON document could not be encoded.
    Json(serde_json::Error),
    /// The man page could not be rendered.
    ManPage(io::Error),
    /// `$VISUAL`/`$EDITOR` could not be started.
    EditorStart { editor: String, source: io::Error },
    /// The editor exited with a failure.
    EditorFailed {
        editor: String,
        status: std::process::ExitStatus,
    },
    /// An edit failed to install (`why`); the admin's copy is kept at `copy`.
    EditKept { why: String, copy: PathBuf },
    /// An edit failed to install (`why`) and its copy could not be kept either.
    EditLost { why: String, source: io::Error },
    /// `serve` could not start a thread or its runtime (`what`).
    Start {
        what: &'static str,
        source: io::Error,
    },
    /// `serve` could not set up its signal handling (`what`, e.g. "handle SIGHUP").
    Signals {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `serve` could not listen on an address.
    Listen { addr: String, source: io::Error },
    /// The socket path is taken by something that is not a socket.
    NotASocket(PathBuf),
    /// Another server listens on the socket path.
    SocketInUse(PathBuf),
    /// A bug: something that holds by construction did not.
    Internal(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

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
            Error::Problems(_) | Error::Unsafe(_) => Exit::Problems,
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
                "{} is in use: another server is listening on it",
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
