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
    /// Any other failure to read or write the file that is not a plain syscall error.
    File(String),
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
            Error::Io { .. } | Error::LockTimeout { .. } | Error::File(_) => Exit::Io,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) | Error::Problems(msg) | Error::Unsafe(msg) | Error::File(msg) => {
                f.write_str(msg)
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
            Error::Io { source, .. } => Some(source),
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
