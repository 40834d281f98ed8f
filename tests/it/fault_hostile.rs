//! Fault 5, hostile input (RELIABILITY.md): `serve` gets malformed socket lines and HTTP
//! requests — over-long lines (one of 96 MiB), binary and NUL bytes, invalid UTF-8, lines
//! cut off by a close, half HTTP requests, huge and too many headers, garbage request lines,
//! an HTTP/2 preface — while slow clients hold many connections open on both listeners,
//! trickling a byte at a time (as many as a client can hold without reaching the server's
//! limit of 1024 per listener; src/serve/socket.rs, http.rs).
//!
//! What a user relies on (docs/protocols.md): every malformed socket line gets one `ERROR …` answer
//! (`UNAUTHORIZED` when it still parses as a check of an unknown token; exactly `ERROR line
//! too long` beyond the 8 KiB line limit) and the connection stays usable; every malformed
//! HTTP request gets a 4xx or a clean close, never a 2xx, a 5xx or a hang; a slow HTTP
//! client is cut off once its request head has taken 10 s; meanwhile and afterwards a valid
//! token is still granted on both listeners and `/healthz` says ok; and the server's memory
//! stays bounded: its peak (VmHWM) and its resident size at the end (VmRSS) are less than
//! [`GROWTH_LIMIT_KIB`] above its resident size before.
//!
//! Prints `fault hostile-input: requests=… failures=… rss_before_kib=… rss_after_kib=…
//! hwm_kib=…`. CI sends 1 000 malformed requests; `TOKENFILE_FAULT_ROUNDS=10` sends 10 000.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::fault::{Rng, rounds};
use crate::support::report;
use crate::support::serve::*;

const VALID: &str = "hostile-valid-token";
/// The server's limits (src/serve/socket.rs, http.rs).
const MAX_LINE: usize = 8 * 1024;
const MAX_HEAD: usize = 16 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How much the server may grow, whatever it was sent.
const GROWTH_LIMIT_KIB: u64 = 64 * 1024;
/// A line that would cost this much if it were buffered.
const GIANT_LINE: usize = 96 << 20;
/// Malformed socket lines per connection.
const BATCH: usize = 25;

/// Requests sent and answers that were not what they must be.
#[derive(Default)]
struct Tally {
    requests: usize,
    failures: usize,
    problems: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.problems.len() < 30 {
            self.problems.push(what);
        }
    }

    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.problems.extend(other.problems);
    }
}

/// 1 to `max` random bytes, without those in `except`.
fn random_bytes(rng: &mut Rng, max: u64, except: &[u8]) -> Vec<u8> {
    let len = 1 + rng.below(max);
    (0..len)
        .map(|_| rng.next() as u8)
        .filter(|b| !except.contains(b))
        .collect()
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// A malformed socket line (without its newline), and whether it is over the limit.
fn bad_line(rng: &mut Rng) -> (Vec<u8>, bool) {
    let line = match rng.below(8) {
        0 => {
            let len = MAX_LINE + 1 + rng.below(3 * MAX_LINE as u64) as usize;
            let mut line = b"CHECK read ".to_vec();
            line.resize(len, b'a');
            return (line, true);
        }
        1 => random_bytes(rng, 200, b"\n"),
        2 => b"CHECK read \0tok\0en\0".to_vec(),
        3 => b"CHECK \xff\xfe\xfd tok".to_vec(),
        4 => pick::<&[u8]>(rng, &[b"", b"\r", b"   ", b"\t\t"]).to_vec(),
        5 => pick::<&[u8]>(
            rng,
            &[
                b"CHECK * tok",
                b"CHECK read tok extra",
                b"CHECK  tok",
                b"PING x",
                b"CHECK",
                b"HELLO",
                b"GET / HTTP/1.1",
            ],
        )
        .to_vec(),
        6 => b"CHECK read \xc3\x28\xa0\xa1\xf0\x28\x8c\x28".to_vec(),
        _ => b"CHECK read\x1b[31m tok\x07\x08".to_vec(),
    };
    (line, false)
}

fn acceptable_line(answer: &str, too_long: bool) -> bool {
    if too_long {
        answer == "ERROR line too long"
    } else {
        answer.starts_with("ERROR ") || answer == "UNAUTHORIZED"
    }
}

/// `count` malformed lines, [`BATCH`] per connection; each connection ends in one of three
/// ways: a `PING` (the connection must still answer `PONG`), a last line without its newline
/// and a half-close (answered at end of input), or an abrupt close mid-line.
fn socket_garbage(socket: &Path, count: usize, rng: &mut Rng) -> Tally {
    let mut tally = Tally::default();
    while tally.requests < count {
        let mut lines: Vec<(Vec<u8>, bool)> = (0..BATCH).map(|_| bad_line(rng)).collect();
        let ending = rng.below(3);
        // Without its newline, an empty last line is no line at all.
        while ending == 1 && lines.last().is_some_and(|(line, _)| line.is_empty()) {
            lines.pop();
        }
        tally.requests += lines.len();
        let mut bytes = Vec::new();
        for (i, (line, _)) in lines.iter().enumerate() {
            bytes.extend_from_slice(line);
            if ending == 0 || i + 1 < lines.len() {
                bytes.push(b'\n');
            }
        }
        if ending == 2 {
            let mut stream = UnixStream::connect(socket).expect("connect to the socket");
            let _ = stream.write_all(&bytes[..bytes.len() / 2]);
            continue; // dropped: closed in the middle of a line
        }
        let mut client = Client::connect(socket);
        if ending == 0 {
            bytes.extend_from_slice(b"PING\n");
        }
        client.send(&bytes);
        let answers: Vec<String> = if ending == 0 {
            (0..=lines.len())
                .map_while(|_| client.try_read_line().ok())
                .collect()
        } else {
            client.finish().lines().map(str::to_owned).collect()
        };
        for (i, (line, too_long)) in lines.iter().enumerate() {
            match answers.get(i) {
                Some(answer) if acceptable_line(answer, *too_long) => {}
                other => tally.fail(format!(
                    "socket line {:?}… answered {other:?}",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                )),
            }
        }
        let extra = &answers[lines.len().min(answers.len())..];
        let expected_extra: &[&str] = if ending == 0 { &["PONG"] } else { &[] };
        if extra != expected_extra {
            tally.fail(format!(
                "after the batch: {extra:?}, not {expected_extra:?}"
            ));
        }
    }
    tally
}

/// One line of [`GIANT_LINE`] bytes, streamed: answered `ERROR line too long`, and the
/// connection still answers `PING`.
fn giant_line(socket: &Path) -> Tally {
    let mut tally = Tally {
        requests: 1,
        ..Tally::default()
    };
    let mut client = Client::connect(socket);
    let chunk = vec![b'a'; 64 << 10];
    client.send(b"CHECK read ");
    for _ in 0..GIANT_LINE / chunk.len() {
        client.send(&chunk);
    }
    client.send(b"\nPING\n");
    let answers = [client.try_read_line(), client.try_read_line()];
    let answers: Vec<String> = answers.into_iter().map(|a| format!("{a:?}")).collect();
    if answers != [r#"Ok("ERROR line too long")"#, r#"Ok("PONG")"#] {
        tally.fail(format!("a {GIANT_LINE}-byte line: {answers:?}"));
    }
    tally
}

/// What a malformed HTTP request got.
enum Outcome {
    Status(u16),
    /// Closed without an answer.
    Closed,
    Failed(String),
}

/// Sends `request` on a new connection (half-closing it after, if `then_close`) and reads
/// until the server closes.
fn exchange(addr: SocketAddr, request: &[u8], then_close: bool) -> Outcome {
    let mut stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    // Past the header timeout: a server still silent by then hangs.
    stream
        .set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    // The server may answer and close before it has taken all of an oversized request.
    let _ = stream.write_all(request);
    if then_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after an answer to a request it did not read to the end.
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Outcome::Closed,
        Err(e) => return Outcome::Failed(format!("no answer, no close: {e}")),
    }
    if raw.is_empty() {
        return Outcome::Closed;
    }
    let status = raw
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok());
    match status {
        Some(status) => Outcome::Status(status),
        None => Outcome::Failed(format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        )),
    }
}

/// A malformed HTTP request, and whether the client half-closes after sending it (a
/// request the server would otherwise wait on).
fn bad_request(rng: &mut Rng) -> (Vec<u8>, bool) {
    let ask = b"GET /check?scope=read HTTP/1.1\r\nHost: h\r\nConnection: close\r\n";
    let with = |extra: &[u8]| [&ask[..], extra, b"\r\n"].concat();
    match rng.below(12) {
        0 => {
            let mut r = random_bytes(rng, 300, b"\r\n");
            r.extend_from_slice(b"\r\n\r\n");
            (r, false)
        }
        1 => {
            let lines: [&[u8]; 5] = [
                b"GET\r\n\r\n",
                b"GET /check HTTP/9.9\r\n\r\n",
                b"GET /check HTTP/1.1 extra\r\n\r\n",
                b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
                b"G\xffT /check HTTP/1.1\r\n\r\n",
            ];
            (pick(rng, &lines).to_vec(), false)
        }
        // Cut anywhere, then the client's end of input.
        2 => {
            let full = with(b"Authorization: Bearer unknown-token\r\n");
            let cut = 1 + rng.below(full.len() as u64 - 2) as usize;
            (full[..cut].to_vec(), true)
        }
        3 => {
            let mut pad = b"X-Pad: ".to_vec();
            pad.resize(MAX_HEAD + rng.below(MAX_HEAD as u64) as usize, b'a');
            pad.extend_from_slice(b"\r\n");
            (with(&pad), false)
        }
        4 => {
            let many: Vec<u8> = (0..100)
                .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
                .collect();
            (with(&many), false)
        }
        5 => {
            let mut r = b"GET /check?scope=".to_vec();
            r.resize(MAX_HEAD + 4096, b'a');
            r.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
            (r, false)
        }
        6 => {
            let headers: [&[u8]; 4] = [
                b"Authorization: Bearer \xff\xfe\x80\r\n",
                b"Authorization: Bearer a\x00b\r\n",
                b"X-Required-Scope: \xff\r\n",
                b"Authorization: Bearer a\x01\x7f\r\n",
            ];
            (with(pick(rng, &headers)), false)
        }
        7 => {
            let targets = [
                "/check?scope=%zz",
                "/check?scope=*",
                "/check?scope=",
                "/check",
            ];
            let target = pick(rng, &targets);
            let r = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
            (r.into_bytes(), false)
        }
        8 => {
            let r =
                b"POST /check?scope=read HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nabc";
            (r.to_vec(), true)
        }
        9 => {
            let r = b"POST /check?scope=read HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n";
            (r.to_vec(), true)
        }
        10 => (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), true),
        _ => (with(b"NoColonHere\r\n"), false),
    }
}

fn http_garbage(addr: SocketAddr, count: usize, rng: &mut Rng) -> (Tally, usize, usize) {
    let mut tally = Tally::default();
    let (mut answered, mut closed) = (0, 0);
    for _ in 0..count {
        let (request, then_close) = bad_request(rng);
        tally.requests += 1;
        let problem = match exchange(addr, &request, then_close) {
            Outcome::Status(400..=499) => {
                answered += 1;
                continue;
            }
            Outcome::Closed => {
                closed += 1;
                continue;
            }
            Outcome::Status(status) => format!("status {status}"),
            Outcome::Failed(why) => why,
        };
        tally.fail(format!(
            "HTTP {:?}… got {problem}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        ));
    }
    (tally, answered, closed)
}

/// Slow clients: `count` connections on each listener, each sending a request a byte at a
/// time. The HTTP ones must be cut off within the header timeout (plus slack); the socket
/// ones (whose protocol has no such timeout) must still be answered once their line ends.
fn slow_clients(serve: &Serve, count: usize, until: Instant) -> Tally {
    let mut tally = Tally {
        requests: 2 * count,
        ..Tally::default()
    };
    let opened = Instant::now();
    let mut http: Vec<Option<TcpStream>> = (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(serve.http.unwrap()).expect("connect over HTTP");
            s.write_all(b"GET /check?scope=read HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let mut socket: Vec<Client> = (0..count)
        .map(|_| {
            let mut c = Client::connect(serve.socket.as_ref().unwrap());
            c.send(b"CHECK read ");
            c
        })
        .collect();
    let cut_off_by = opened + HEADER_TIMEOUT + Duration::from_secs(5);
    let mut byte = 0u8;
    while Instant::now() < until.max(cut_off_by) {
        byte = b'a' + (byte + 1) % 26;
        for slot in &mut http {
            let Some(stream) = slot else { continue };
            let mut buf = [0; 512];
            let closed = match stream.read(&mut buf) {
                Ok(_) => true, // EOF, or an answer (408) before the close
                Err(e) if e.kind() == ErrorKind::WouldBlock => stream.write(&[byte]).is_err(),
                Err(_) => true,
            };
            if closed {
                *slot = None;
            }
        }
        if Instant::now() < until {
            for client in &mut socket {
                client.send(&[byte]);
            }
        }
        if http.iter().all(Option::is_none) && Instant::now() >= until {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let open = http.iter().filter(|s| s.is_some()).count();
    if open > 0 {
        tally.fail(format!(
            "{open} slow HTTP clients still connected {:?} after they started",
            opened.elapsed()
        ));
    }
    for mut client in socket {
        match client.ask("").as_str() {
            "UNAUTHORIZED" => {}
            other => tally.fail(format!("a slow socket line was answered {other:?}")),
        }
    }
    tally
}

/// A valid token is granted on both listeners, on fresh connections.
fn still_serving(serve: &Serve) -> Result<(), String> {
    let socket = serve.ask(&format!("CHECK read {VALID}"));
    let bearer = format!("Bearer {VALID}");
    let http = serve.get("/check?scope=read", &[("Authorization", &bearer)]);
    if socket != ok(VALID) || http.status != 204 {
        return Err(format!("socket {socket:?}, HTTP {}", http.status));
    }
    Ok(())
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory(pid: i32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn hostile_input_gets_error_answers_and_bounded_memory() {
    let _alone = crate::support::serial();
    let scale = rounds();
    let mut rng = Rng::from_env();
    let seed = rng.seed();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, format!("{VALID}\tread\thostile\n")).unwrap();
    // A plaintext record: docs/format.md refuses it readable by others.
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let serve = Serve::start(&file, dir.path(), Listen::Both);
    // Warm up (threads, buffers) before measuring where memory starts.
    for _ in 0..20 {
        still_serving(&serve).expect("serving before the test");
    }
    let (rss_before, _) = memory(serve.pid());

    let mut tally = Tally::default();
    let mut socket_rng = rng.split();
    let socket = serve.socket.clone().unwrap();
    // The slow clients hold their connections while everything else runs.
    let slow_until = Instant::now() + Duration::from_secs(3);
    let (slow, others) = thread::scope(|s| {
        let slow = s.spawn(|| slow_clients(&serve, 25 * scale, slow_until));
        let lines = s.spawn(move || {
            let mut t = giant_line(&socket);
            t.add(socket_garbage(&socket, 700 * scale, &mut socket_rng));
            t
        });
        let http = http_garbage(serve.http.unwrap(), 250 * scale, &mut rng);
        let mut serving = Tally::default();
        // Checked while the slow clients hold their connections.
        if let Err(e) = still_serving(&serve) {
            serving.fail(format!("while under attack: {e}"));
        }
        (
            slow.join().expect("slow clients"),
            (lines.join().expect("socket garbage"), http, serving),
        )
    });
    let (lines, (http, answered, closed), serving) = others;
    tally.add(lines);
    tally.add(http);
    tally.add(slow);
    tally.add(serving);

    if let Err(e) = still_serving(&serve) {
        tally.fail(format!("afterwards: {e}"));
    }
    let health = serve.get("/healthz", &[]);
    if health.status != 200 || !health.text().contains(r#""status":"ok""#) {
        tally.fail(format!("/healthz: {} {}", health.status, health.text()));
    }
    let (rss_after, hwm) = memory(serve.pid());
    report(&format!(
        "fault hostile-input: requests={} failures={} rss_before_kib={rss_before} \
         rss_after_kib={rss_after} hwm_kib={hwm} (HTTP: {answered} answered 4xx, {closed} \
         closed; bound: +{GROWTH_LIMIT_KIB} KiB; seed {seed})",
        tally.requests, tally.failures
    ));
    for p in &tally.problems {
        eprintln!("  {p}");
    }
    assert_eq!(
        tally.failures,
        0,
        "see the problems above; log:\n{}",
        serve.log()
    );
    assert!(
        hwm < rss_before + GROWTH_LIMIT_KIB && rss_after < rss_before + GROWTH_LIMIT_KIB,
        "memory grew from {rss_before} KiB to a peak of {hwm} KiB ({rss_after} KiB at the end)"
    );
}
