//! Helpers for the black-box tests of `tokenfile serve`: start the real binary, talk to it
//! over its socket and HTTP, poll for an answer with a deadline, and always kill what was
//! started.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokenfile::token::Digest;

use super::{run, send_signal, tokenfile_command};

/// docs/protocols.md / the issue: a change is answered within one second.
pub(crate) const RELOAD: Duration = Duration::from_secs(1);
/// Generous bound for things that are not about speed (start-up, shutdown).
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A hashed record line for `token`.
pub(crate) fn record(token: &str, scopes: &str, name: &str) -> String {
    format!(
        "sha256:{}\t{scopes}\t{name}\n",
        Digest::of(token.as_bytes()).to_hex()
    )
}

pub(crate) fn id(token: &str) -> String {
    Digest::of(token.as_bytes()).id().to_string()
}

pub(crate) fn ok(token: &str) -> String {
    format!("OK {}", id(token))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    Socket,
    Http,
    Both,
}

/// A running `tokenfile serve`; killed and reaped when dropped.
pub(crate) struct Serve {
    child: Option<Child>,
    pub socket: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    log: PathBuf,
}

impl Serve {
    /// Starts serving `file`; the socket and the log go into `dir`.
    pub(crate) fn start(file: &Path, dir: &Path, listen: Listen) -> Serve {
        Self::start_with(file, dir, listen, &[])
    }

    pub(crate) fn start_with(
        file: &Path,
        dir: &Path,
        listen: Listen,
        env: &[(&str, &str)],
    ) -> Serve {
        Self::start_configured(file, dir, listen, &|cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Like [`Serve::start`], with `configure` applied to the command last (environment,
    /// user, limits).
    pub(crate) fn start_configured(
        file: &Path,
        dir: &Path,
        listen: Listen,
        configure: &dyn Fn(&mut Command),
    ) -> Serve {
        let socket =
            matches!(listen, Listen::Socket | Listen::Both).then(|| dir.join("serve.sock"));
        // A free port can be taken between our probe and the server's bind: retry.
        for _ in 0..5 {
            let http = matches!(listen, Listen::Http | Listen::Both).then(free_port);
            let log = dir.join("serve.log");
            let mut serve = Serve {
                child: Some(spawn(file, socket.as_deref(), http, &log, configure)),
                socket: socket.clone(),
                http,
                log,
            };
            match serve.wait_ready() {
                Ok(()) => return serve,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("serve did not start:\n{log}"),
            }
        }
        panic!("no free port found for serve");
    }

    /// Starts serving `file` on a socket in `dir` without waiting for it to be ready.
    pub(crate) fn spawn_socket(file: &Path, dir: &Path) -> Serve {
        let socket = dir.join("serve.sock");
        let log = dir.join("serve.log");
        Serve {
            child: Some(spawn(file, Some(&socket), None, &log, &|_| {})),
            socket: Some(socket),
            http: None,
            log,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let socket_up = self
                .socket
                .as_ref()
                .is_none_or(|p| UnixStream::connect(p).is_ok());
            let http_up = self.http.is_none_or(|a| TcpStream::connect(a).is_ok());
            if socket_up && http_up {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!("not ready within {PATIENCE:?}:\n{}", self.log()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub(crate) fn signal(&self, signal: Signal) {
        send_signal(self.pid(), signal).expect("kill");
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the server to exit by itself.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < end, "serve did not exit:\n{}", self.log());
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the server logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn ask(&self, line: &str) -> String {
        ask_once(self.socket.as_ref().expect("no socket"), line)
    }

    pub(crate) fn get(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        http(self.http.expect("no http"), "GET", target, headers)
    }

    /// Polls a socket answer until it is `want`.
    pub(crate) fn answers(&self, line: &str, want: &str, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let got = self.ask(line);
            if got == want {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "{line:?} answered {got:?}, not {want:?}, within {within:?}\nlog:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A Prometheus sample of `/metrics` (the first line starting with `name`).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics", &[]).text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(
    file: &Path,
    socket: Option<&Path>,
    http: Option<SocketAddr>,
    log: &Path,
    configure: &dyn Fn(&mut Command),
) -> Child {
    let mut cmd = tokenfile_command();
    cmd.arg("--file").arg(file).arg("serve");
    if let Some(socket) = socket {
        cmd.arg("--socket").arg(socket);
    }
    if let Some(addr) = http {
        cmd.arg("--http").arg(addr.to_string());
    }
    // TOKENFILE_TEST_LOG=tokenfile=trace shows what the server saw, when debugging a test.
    let level = std::env::var("TOKENFILE_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("RUST_LOG", level);
    configure(&mut cmd);
    let log = fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tokenfile serve")
}

pub(crate) fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// One request on a fresh connection.
pub(crate) fn ask_once(socket: &Path, line: &str) -> String {
    Client::connect(socket).ask(line)
}

/// A persistent socket connection.
pub(crate) struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub(crate) fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).expect("connect to the socket");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the socket");
    }

    pub(crate) fn read_line(&mut self) -> String {
        self.try_read_line()
            .unwrap_or_else(|e| panic!("read from the socket: {e}"))
    }

    /// One answer line; an error if the server closed, timed out or sent a line without
    /// its newline (the answers are ASCII, so bytes that are not UTF-8 are an error too).
    pub(crate) fn try_read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        match line.strip_suffix('\n') {
            Some(answer) => Ok(answer.to_owned()),
            None => Err(std::io::Error::other(format!(
                "unterminated answer {line:?}"
            ))),
        }
    }

    pub(crate) fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.read_line()
    }

    /// Whatever the server still sends until it closes (errors count as the end).
    pub(crate) fn rest(mut self) -> String {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        String::from_utf8_lossy(&rest).into_owned()
    }

    /// Closes our writing half and returns everything the server still sends.
    pub(crate) fn finish(mut self) -> String {
        self.writer.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .expect("read to the end");
        rest
    }
}

#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`, read to the end.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw_http(addr, request.as_bytes())
}

/// Sends raw bytes and parses the (first) response.
pub(crate) fn raw_http(addr: SocketAddr, request: &[u8]) -> Response {
    try_raw_http(addr, request).expect("HTTP exchange")
}

/// Like [`raw_http`], but a server that closes early (and resets the connection) is an
/// error rather than a panic.
pub(crate) fn try_raw_http(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    exchange(stream, request)
}

/// [`http`] over a Unix socket (`serve --http unix:PATH`).
pub(crate) fn http_unix(
    socket: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let stream = UnixStream::connect(socket).expect("connect to the HTTP socket");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    exchange(stream, request.as_bytes()).expect("HTTP exchange over the Unix socket")
}

fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<Response> {
    // The server may answer and close before taking all of an oversized request.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse_response(&raw))
}

/// A kept-alive HTTP/1.1 connection, for tests that send many requests (one connection per
/// request would pile up thousands of sockets in TIME_WAIT).
pub(crate) struct HttpConn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl HttpConn {
    pub(crate) fn connect(addr: SocketAddr) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            addr,
            stream: BufReader::new(stream),
        })
    }

    /// One `GET` on this connection; the response is read by its `Content-Length`.
    pub(crate) fn get(
        &mut self,
        target: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        loop {
            let before = raw.len();
            self.stream.read_until(b'\n', &mut raw)?;
            if raw.len() == before {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if raw.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let head = parse_response(&raw);
        let length = head
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap_or(0));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        raw.extend_from_slice(&body);
        Ok(parse_response(&raw))
    }
}

pub(crate) fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Replaces `path` atomically the way careful writers do: a temp file, created 0600 (a
/// token file with plaintext must not be readable by others, docs/trust.md), then rename.
pub(crate) fn replace_by_rename(path: &Path, content: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp-test");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .unwrap();
    file.write_all(content.as_bytes()).unwrap();
    drop(file);
    fs::rename(&temp, path).unwrap();
}

/// Runs `tokenfile --file FILE args…` with `stdin`, returning (exit code, stdout).
pub(crate) fn cli(file: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    let mut cmd = tokenfile_command();
    cmd.arg("--file").arg(file).args(args);
    let out = run(cmd, Some(stdin.as_bytes()));
    (out.code, out.out().trim().to_owned())
}

/// The user tests run a serve as when it must take no read lease (nobody).
pub(crate) const NOBODY: u32 = 65534;

/// `content` in a file of root's that serve's group may read (docs/trust.md: a
/// group-readable 0640 file), served by a serve running as nobody: it can take no read
/// lease on the file, so it has only the file's times and events to go by.
pub(crate) fn served_as_nobody(content: &str) -> (tempfile::TempDir, PathBuf, Serve) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::fs::chown;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, content).unwrap();
    chown(&file, Some(0), Some(NOBODY)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    chown(&run, Some(NOBODY), Some(NOBODY)).unwrap();
    let serve = Serve::start_configured(&file, &run, Listen::Socket, &|cmd| {
        cmd.uid(NOBODY).gid(NOBODY);
    });
    (dir, file, serve)
}
