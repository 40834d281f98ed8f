//! The Unix socket of `serve` (docs/protocols.md): protocol, pipelining, many clients, hostile
//! input, the socket file's mode and lifecycle, graceful shutdown.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::thread;

use crate::support::serve::*;
use crate::support::{run, tokenfile_command};
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, umask};
use tempfile::TempDir;

fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let content = record("alpha", "read,kafka:*", "a")
        + &record("old", "*", "expired").replace('\n', "\t\t2020-01-01T00:00:00Z\n");
    fs::write(&file, content).unwrap();
    (dir, file)
}

#[test]
fn protocol() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let alpha = id("alpha");
    let mut c = Client::connect(serve.socket.as_ref().unwrap());
    assert_eq!(c.ask("PING"), "PONG");
    assert_eq!(c.ask("CHECK read alpha"), format!("OK {alpha}"));
    assert_eq!(
        c.ask("CHECK read,kafka:topic:x alpha"),
        format!("OK {alpha}")
    );
    assert_eq!(
        c.ask("CHECK read,write alpha"),
        format!("FORBIDDEN {alpha}")
    );
    assert_eq!(c.ask("CHECK kafka alpha"), format!("FORBIDDEN {alpha}"));
    assert_eq!(c.ask("CHECK read nope"), "UNAUTHORIZED");
    assert_eq!(c.ask("CHECK read old"), "UNAUTHORIZED", "expired");
    assert_eq!(c.ask("CHECK read"), "UNAUTHORIZED", "no token");
    assert_eq!(c.ask("CHECK read alpha\r"), format!("OK {alpha}"), "CRLF");
    for bad in [
        "CHECK * alpha",
        "CHECK kafka:* alpha",
        "CHECK read,,x alpha",
        "CHECK  alpha",
        "CHECK",
        "CHECK read al pha",
        "",
        "HELLO",
        "PING PONG",
    ] {
        let answer = c.ask(bad);
        assert!(answer.starts_with("ERROR "), "{bad:?} → {answer:?}");
    }
    // The connection is still usable after all that.
    assert_eq!(c.ask("PING"), "PONG");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let mut c = Client::connect(serve.socket.as_ref().unwrap());
    let requests = [
        "PING",
        "CHECK read alpha",
        "CHECK write alpha",
        "CHECK read x",
        "BAD",
    ];
    let expected = [
        "PONG".to_owned(),
        ok("alpha"),
        format!("FORBIDDEN {}", id("alpha")),
        "UNAUTHORIZED".to_owned(),
        "ERROR".to_owned(),
    ];
    const ROUNDS: usize = 2000;
    let mut batch = String::new();
    for i in 0..ROUNDS {
        batch.push_str(requests[i % requests.len()]);
        batch.push('\n');
    }
    // Write everything first, from another thread so that neither side can block the
    // other, then read every answer.
    let mut writer = UnixStream::connect(serve.socket.as_ref().unwrap()).unwrap();
    let mut reader = writer.try_clone().unwrap();
    reader.set_read_timeout(Some(PATIENCE)).unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(batch.as_bytes()).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut all = String::new();
    reader.read_to_string(&mut all).unwrap();
    sender.join().unwrap();
    let answers: Vec<&str> = all.lines().collect();
    assert_eq!(answers.len(), ROUNDS);
    for (i, answer) in answers.iter().enumerate() {
        let want = &expected[i % expected.len()];
        assert!(
            answer.starts_with(want.as_str()),
            "answer {i}: {answer:?}, want {want:?}"
        );
    }
    assert_eq!(c.ask("PING"), "PONG");
}

#[test]
fn many_clients_at_once() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let socket = serve.socket.clone().unwrap();
    let clients: Vec<_> = (0..32)
        .map(|n| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&socket);
                for _ in 0..50 {
                    if n % 2 == 0 {
                        assert_eq!(c.ask("CHECK read alpha"), ok("alpha"));
                    } else {
                        assert_eq!(c.ask("CHECK read beta"), "UNAUTHORIZED");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn overlong_lines_get_an_error_and_the_connection_stays_usable() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let mut c = Client::connect(serve.socket.as_ref().unwrap());
    // 1 MiB without a newline, sent in pieces, then the newline.
    let piece = vec![b'A'; 64 * 1024];
    for _ in 0..16 {
        c.send(&piece);
    }
    c.send(b"\n");
    assert_eq!(c.read_line(), "ERROR line too long");
    assert_eq!(c.ask("PING"), "PONG");
    // A line exactly at the limit (8 KiB) is a request like any other.
    let at_limit = format!("CHECK read {}", "t".repeat(8 * 1024 - "CHECK read ".len()));
    assert_eq!(c.ask(&at_limit), "UNAUTHORIZED");
    let over = format!("{at_limit}x");
    assert_eq!(c.ask(&over), "ERROR line too long");
    assert_eq!(c.ask("CHECK read alpha"), ok("alpha"));
}

#[test]
fn garbage_never_takes_the_server_down() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let socket = serve.socket.clone().unwrap();
    let mut c = Client::connect(&socket);
    let garbage: Vec<u8> = (0..=255u8)
        .cycle()
        .take(4096)
        .filter(|&b| b != b'\n')
        .collect();
    c.send(&garbage);
    c.send(b"\n\x00\xff\xfe\n\r\n");
    c.send(b"CHECK \xff\xfe \x00\n");
    for _ in 0..4 {
        assert!(c.read_line().starts_with("ERROR"));
    }
    assert_eq!(c.ask("PING"), "PONG");
    // Clients that connect and vanish, mid-line or not.
    for _ in 0..20 {
        let mut s = UnixStream::connect(&socket).unwrap();
        let _ = s.write_all(b"CHECK read al");
    }
    assert_eq!(ask_once(&socket, "CHECK read alpha"), ok("alpha"));
}

#[test]
fn half_closed_connection_gets_every_answer() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let mut c = Client::connect(serve.socket.as_ref().unwrap());
    // The last request has no newline: end of input ends it.
    c.send(b"PING\nCHECK read alpha");
    assert_eq!(c.finish(), format!("PONG\n{}\n", ok("alpha")));
}

#[test]
fn slow_and_stuck_clients_do_not_block_others() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let socket = serve.socket.clone().unwrap();
    // One client stops mid-line.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"CHECK re").unwrap();
    // Another floods requests and never reads its answers, until its buffers are full.
    let flooder = UnixStream::connect(&socket).unwrap();
    flooder.set_nonblocking(true).unwrap();
    let mut flooder_ref = &flooder;
    let chunk = "PING\n".repeat(4096);
    let mut sent = 0usize;
    for _ in 0..10_000 {
        match flooder_ref.write(chunk.as_bytes()) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flood: {e}"),
        }
    }
    assert!(sent > 0);
    // Everyone else is served.
    let mut c = Client::connect(&socket);
    for _ in 0..20 {
        assert_eq!(c.ask("CHECK read alpha"), ok("alpha"));
    }
    drop(flooder);
    drop(stalled);
    assert_eq!(ask_once(&socket, "PING"), "PONG");
}

#[test]
fn socket_mode_is_0660_whatever_the_umask() {
    let (dir, file) = setup();
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &|cmd| {
        // SAFETY: umask(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                umask(Mode::empty());
                Ok(())
            });
        }
    });
    let socket = serve.socket.clone().unwrap();
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
}

#[test]
fn stale_socket_file_is_replaced() {
    let (dir, file) = setup();
    let socket = dir.path().join("serve.sock");
    // A socket file nobody listens on, as a crashed server leaves it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    assert_eq!(serve.ask("PING"), "PONG");
}

#[test]
fn socket_in_use_or_not_a_socket_is_refused() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    let socket = serve.socket.clone().unwrap();
    let second = run(
        tokenfile_command()
            .arg("--file")
            .arg(&file)
            .args(["serve", "--socket"])
            .arg(&socket),
        None,
    );
    assert_eq!(second.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    assert_eq!(serve.ask("PING"), "PONG", "the first server is untouched");

    let regular = dir.path().join("not-a-socket");
    fs::write(&regular, "keep me").unwrap();
    let third = run(
        tokenfile_command()
            .arg("--file")
            .arg(&file)
            .args(["serve", "--socket"])
            .arg(&regular),
        None,
    );
    assert_eq!(third.status.code(), Some(10));
    assert_eq!(fs::read_to_string(&regular).unwrap(), "keep me");
}

#[test]
fn sigterm_and_sigint_stop_gracefully_and_remove_the_socket() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let (dir, file) = setup();
        let mut serve = Serve::start(&file, dir.path(), Listen::Socket);
        let socket = serve.socket.clone().unwrap();
        // An idle client must not hold the shutdown up; a busy one gets its answers.
        let mut idle = Client::connect(&socket);
        assert_eq!(idle.ask("PING"), "PONG");
        serve.signal(signal);
        let status = serve.wait_exit();
        assert_eq!(status.code(), Some(0), "signal {signal}:\n{}", serve.log());
        assert!(!socket.exists(), "socket file left behind");
        assert_eq!(idle.rest(), "", "the idle client is closed cleanly");
    }
}

#[test]
fn a_stop_signal_during_start_up_still_stops_gracefully() {
    // The socket file exists from bind(2) on, before the signal handlers are in place: a
    // supervisor or script that stops us then must still get a clean exit and no stale
    // socket file.
    for round in 0..20 {
        let (dir, file) = setup();
        let mut serve = Serve::spawn_socket(&file, dir.path());
        let socket = serve.socket.clone().unwrap();
        // A tight poll, to signal as soon after bind(2) as we can.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < end,
                "no socket:\n{}",
                serve.log()
            );
            std::hint::spin_loop();
        }
        serve.signal(Signal::SIGTERM);
        let status = serve.wait_exit();
        assert_eq!(status.code(), Some(0), "round {round}:\n{}", serve.log());
        assert!(!socket.exists(), "round {round}: socket file left behind");
    }
}

#[test]
fn tokens_never_reach_the_log() {
    let (dir, file) = setup();
    let serve = Serve::start_with(&file, dir.path(), Listen::Both, &[("RUST_LOG", "debug")]);
    let secret = "tf_thisIsASecretTokenThatMustNotBeLogged0123456789abcdef";
    let mut c = Client::connect(serve.socket.as_ref().unwrap());
    for line in [
        format!("CHECK read {secret}"),
        format!("CHECK {secret} {secret}"),
        format!("CHECK re*ad {secret}"),
        secret.to_owned(),
        "CHECK read alpha".to_owned(),
    ] {
        c.ask(&line);
    }
    serve.get(
        "/check?scope=read",
        &[("Authorization", &format!("Bearer {secret}"))],
    );
    serve.get("/check?scope=read", &[("Authorization", "Bearer alpha")]);
    serve.get(
        &format!("/check?scope={secret}"),
        &[("Authorization", &format!("Bearer {secret}"))],
    );
    let log = serve.log();
    assert!(
        log.contains(&id("alpha")),
        "IDs are logged at debug:\n{log}"
    );
    assert!(!log.contains(secret), "a token reached the log:\n{log}");
    assert!(
        !log.contains("Bearer alpha") && !log.contains(" alpha "),
        "{log}"
    );
}
