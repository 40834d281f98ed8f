//! The Unix socket listener and its line protocol (docs/protocols.md):
//!
//! ```text
//! CHECK <scope>[,<scope>…] <token>   →  OK <id> | FORBIDDEN <id> | UNAUTHORIZED | ERROR <reason>
//! PING                               →  PONG
//! ```
//!
//! Every line gets exactly one answer, in order, so a client may pipeline. A line is at most
//! [`MAX_LINE`] bytes; a longer one is answered `ERROR line too long` and skipped up to its
//! newline, and the connection stays usable. A last line without a newline is answered at
//! end of input (`printf 'PING' | nc -U …` works). Clients are independent tasks: a slow one
//! only ever holds its own connection — a silent one until [`IDLE_TIMEOUT`], one that does
//! not read its answers until [`WRITE_TIMEOUT`].

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::stat::{Mode, umask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::scope::RequiredScopes;
use crate::token::Secret;

use super::state::{Shared, log_decision};
use super::usage::Client;
use super::{AcceptFailures, next_connection, stopped};

/// Longest request line, without its newline. A token is at most 4 KiB.
pub(super) const MAX_LINE: usize = 8 * 1024;
const SOCKET_MODE: u32 = 0o660;
/// A connection that sends nothing for this long is closed. (Each read restarts it: a client
/// trickling a line byte by byte keeps its connection, and its one slot of
/// of `max_connections`; the socket is for the local group only, see the README.)
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A client that does not read its answers for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket file we created; removed when dropped, if it is still ours.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Another server may have taken the path over since; leave its socket alone.
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(socket = %self.path.display(), "cannot remove the socket: {e}");
                }
            }
            _ => {}
        }
    }
}

/// Binds the socket with mode 0660 from the first moment.
///
/// Must run before any other thread exists: the mode is set through the process umask,
/// which is shared by all threads.
pub(super) fn bind(path: &Path) -> Result<(StdUnixListener, SocketFile)> {
    remove_stale(path)?;
    let old = umask(Mode::from_bits_truncate(0o777 & !SOCKET_MODE));
    let bound = StdUnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|e| Error::io("listen on the socket", path, e))?;
    // The umask already gave 0660; make it exact whatever the file system did.
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| Error::io("set the mode of the socket", path, e))?;
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat the socket", path, e))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configure the socket", path, e))?;
    Ok((listener, file))
}

/// A socket file left by a server that died is removed; one that a server still listens
/// on, or anything that is not a socket, is an error.
fn remove_stale(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat the socket", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket(path.to_path_buf()));
    }
    match someone_listens(path) {
        Ok(true) => Err(Error::SocketInUse(path.to_path_buf())),
        Ok(false) => {
            info!(socket = %path.display(), "removing a stale socket");
            fs::remove_file(path).map_err(|e| Error::io("remove the stale socket", path, e))
        }
        Err(e) => Err(Error::io("probe the existing socket", path, e)),
    }
}

/// Whether a server listens on the socket at `path`: a connect without blocking, because a
/// listener whose backlog is full would hold a blocking one (and `serve`'s start, SIGTERM
/// included) until it accepts. Refused: nobody listens (a stale socket).
fn someone_listens(path: &Path) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(probe.as_raw_fd(), &UnixAddr::new(path)?) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Accepts until `shutdown`, then waits for every connection to finish what it has read.
pub(super) async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    max_connections: usize,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    let mut failures = AcceptFailures::new("socket");
    // Backpressure: at the connection limit, wait for one to end before accepting.
    while let Some((permit, (stream, _))) =
        next_connection(&slots, &mut stop, &mut failures, || listener.accept()).await
    {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            connection(stream, &shared, shutdown).await;
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(mut stream: UnixStream, shared: &Shared, mut shutdown: watch::Receiver<bool>) {
    // Who asks, for last used (docs/last-used.md): the kernel's word, not the client's.
    let client = stream
        .peer_cred()
        .map_or(Client::Unknown, |cred| Client::Uid(cred.uid()));
    let mut chunk = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    // Skipping the rest of an over-long line.
    let mut discarding = false;
    let mut answers: Vec<u8> = Vec::new();
    loop {
        let read = tokio::select! {
            // A request fully read is answered before this is looked at again.
            biased;
            () = stopped(&mut shutdown) => break,
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)) => read,
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!("socket read failed: {e}");
                break;
            }
            Err(_) => {
                debug!("closing an idle socket connection");
                break;
            }
        };
        if n == 0 {
            // End of input (possibly only our half): answer a last unterminated line.
            if !line.is_empty() && !discarding {
                answer(shared, client, &line, &mut answers);
            }
            let _ = send(&mut stream, &answers).await;
            break;
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let (segment, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], true),
                None => (rest, false),
            };
            rest = if complete {
                &rest[segment.len() + 1..]
            } else {
                &[]
            };
            if discarding {
                discarding = !complete;
                continue;
            }
            if line.len() + segment.len() > MAX_LINE {
                answers.extend_from_slice(b"ERROR line too long\n");
                shared.count_invalid();
                wipe(&mut line);
                discarding = !complete;
                continue;
            }
            line.extend_from_slice(segment);
            if complete {
                answer(shared, client, &line, &mut answers);
                wipe(&mut line);
            }
        }
        if send(&mut stream, &answers).await.is_err() {
            break;
        }
        answers.clear();
        // Best effort, as `Secret` does: request bytes may hold a token.
        chunk[..n].fill(0);
    }
    wipe(&mut line);
}

fn wipe(line: &mut Vec<u8>) {
    line.fill(0);
    line.clear();
}

async fn send(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client does not read its answers",
        )),
    }
}

/// Appends the answer to one request line (without its newline) to `out`.
pub(super) fn answer(shared: &Shared, client: Client, line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    if verb.eq_ignore_ascii_case(b"CHECK") {
        return check(shared, client, args.unwrap_or_default(), out);
    }
    let reply = if verb.eq_ignore_ascii_case(b"PING") && args.is_none_or(|a| a.is_empty()) {
        Reply::Pong
    } else if line.is_empty() {
        Reply::Error("empty request (expected CHECK or PING)".into())
    } else {
        Reply::Error("unknown request (expected CHECK <scope>[,<scope>…] <token>, or PING)".into())
    };
    if matches!(reply, Reply::Error(_)) {
        shared.count_invalid();
    }
    reply.write(out);
}

enum Reply<'a> {
    Decision(Decision<'a>),
    Pong,
    Error(String),
}

impl Reply<'_> {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Reply::Decision(Decision::Granted { id, .. }) => {
                out.extend_from_slice(format!("OK {id}\n").as_bytes());
            }
            Reply::Decision(Decision::Forbidden { id, .. }) => {
                out.extend_from_slice(format!("FORBIDDEN {id}\n").as_bytes());
            }
            Reply::Decision(Decision::Unauthorized(_)) => out.extend_from_slice(b"UNAUTHORIZED\n"),
            Reply::Pong => out.extend_from_slice(b"PONG\n"),
            Reply::Error(reason) => {
                out.extend_from_slice(b"ERROR ");
                // One line whatever the reason holds.
                out.extend(
                    reason
                        .bytes()
                        .map(|b| if b.is_ascii_control() { b' ' } else { b }),
                );
                out.push(b'\n');
            }
        }
    }
}

/// `CHECK <scopes> <token>`: a missing token is answered like HTTP's missing one,
/// `UNAUTHORIZED`; a bad scope is an error, never a grant. The answer goes to `out`.
fn check(shared: &Shared, client: Client, args: &[u8], out: &mut Vec<u8>) {
    let (scopes, token) = match args.iter().position(|&b| b == b' ') {
        Some(space) => (&args[..space], &args[space + 1..]),
        None => (args, &[][..]),
    };
    let required = match std::str::from_utf8(scopes)
        .map_err(|_| Error::usage("malformed required scope: not UTF-8"))
        .and_then(|s| Ok(RequiredScopes::parse(&[s])?))
    {
        Ok(required) => required,
        Err(e) => {
            shared.count_invalid();
            return Reply::Error(e.to_string()).write(out);
        }
    };
    let token = token.trim_ascii();
    if token.iter().any(u8::is_ascii_whitespace) {
        shared.count_invalid();
        return Reply::Error("a token contains no whitespace".into()).write(out);
    }
    shared.check(
        &Secret::new(token.to_vec()),
        &required,
        client,
        |decision, _| {
            log_decision("socket", &decision);
            Reply::Decision(decision).write(out);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::state::Snapshot;
    use crate::token::Digest;

    fn shared() -> Shared {
        let file = format!(
            "tok\tread\tbob\nsha256:{}\tkafka:*\n",
            Digest::of(b"hashed").to_hex()
        );
        Shared::new(PathBuf::from("t"), Snapshot::from_bytes(file.as_bytes()).0)
    }

    fn ask(shared: &Shared, line: &str) -> String {
        let mut out = Vec::new();
        answer(shared, Client::Unknown, line.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn protocol() {
        let s = shared();
        let id = Digest::of(b"tok").id();
        assert_eq!(ask(&s, "PING"), "PONG\n");
        assert_eq!(ask(&s, "PING\r"), "PONG\n");
        assert_eq!(ask(&s, "CHECK read tok"), format!("OK {id}\n"));
        assert_eq!(ask(&s, "check read tok\r"), format!("OK {id}\n"));
        assert_eq!(ask(&s, "CHECK read,write tok"), format!("FORBIDDEN {id}\n"));
        assert_eq!(
            ask(&s, "CHECK kafka:a:b hashed"),
            format!("OK {}\n", Digest::of(b"hashed").id())
        );
        assert_eq!(ask(&s, "CHECK read nope"), "UNAUTHORIZED\n");
        assert_eq!(ask(&s, "CHECK read"), "UNAUTHORIZED\n");
        assert_eq!(ask(&s, "CHECK read "), "UNAUTHORIZED\n");
        for bad in [
            "CHECK * tok",
            "CHECK  tok",
            "CHECK",
            "CHECK re ad tok",
            "CHECK read to k",
            "",
            "HELLO",
            "PING x",
        ] {
            assert!(
                ask(&s, bad).starts_with("ERROR "),
                "{bad:?}: {}",
                ask(&s, bad)
            );
        }
        let mut out = Vec::new();
        answer(&s, Client::Unknown, b"CHECK \xff\x00 tok", &mut out);
        assert!(out.starts_with(b"ERROR "));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
