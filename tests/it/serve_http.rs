//! The HTTP listener of `serve` (docs/protocols.md): forward-auth answers and headers, `/healthz`,
//! `/metrics`, hostile clients, start-up errors, graceful shutdown.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use crate::support::serve::*;
use crate::support::{eventually, run, tokenfile_command};
use nix::sys::signal::Signal;
use tempfile::TempDir;

fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let content = record("alpha", "read,kafka:*", "Jürgen's CI\u{7f}")
        + &record("old", "*", "expired").replace('\n', "\t\t2020-01-01T00:00:00Z\n")
        + "broken line\twith bad scope!\n";
    fs::write(&file, content).unwrap();
    (dir, file)
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn with(value: &str) -> Vec<(&'static str, &str)> {
    vec![("Authorization", value)]
}

fn check(serve: &Serve, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let response = http(serve.http.unwrap(), method, target, headers);
    assert_eq!(
        response.header("Cache-Control"),
        Some("no-store"),
        "{target}: {response:?}"
    );
    response
}

#[test]
fn forward_auth_answers() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let (auth, alpha) = bearer("alpha");

    // Granted: 204 with the ID and a header-safe name; any method.
    for method in ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"] {
        let r = check(&serve, method, "/check?scope=read", &with(&alpha));
        assert_eq!(r.status, 204, "{method}");
        assert_eq!(r.header("X-Token-Id"), Some(id("alpha").as_str()));
        assert_eq!(r.header("X-Token-Name"), Some("J%C3%BCrgen's CI%7F"));
        assert_eq!(r.header("WWW-Authenticate"), None);
    }
    // Scopes: comma list, repeated, percent-encoded, from the header, all combined.
    for target in [
        "/check?scope=read,kafka:a",
        "/check?scope=read&scope=kafka:a",
        "/check?scope=kafka%3Aendpoint%3Aread",
        "/check?other=1&scope=read+,+kafka:x",
    ] {
        assert_eq!(
            check(&serve, "GET", target, &with(&alpha)).status,
            204,
            "{target}"
        );
    }
    let header = [(auth, alpha.as_str()), ("X-Required-Scope", "kafka:a")];
    assert_eq!(check(&serve, "GET", "/check", &header).status, 204);
    let both = [(auth, alpha.as_str()), ("X-Required-Scope", "write")];
    assert_eq!(check(&serve, "GET", "/check?scope=read", &both).status, 403);

    // Forbidden: 403, the ID, no challenge.
    let r = check(&serve, "GET", "/check?scope=read,write", &with(&alpha));
    assert_eq!(r.status, 403);
    assert_eq!(r.header("WWW-Authenticate"), None);
    assert_eq!(r.header("X-Token-Id"), Some(id("alpha").as_str()));
    assert_eq!(
        check(&serve, "GET", "/check?scope=kafka", &with(&alpha)).status,
        403
    );

    // Unauthorized: missing, unknown, expired, another scheme, a record that is invalid.
    let (_, unknown) = bearer("nope");
    let (_, old) = bearer("old");
    let (_, broken) = bearer("broken");
    for headers in [
        vec![],
        with(&unknown),
        with(&old),
        with(&broken),
        with("Basic YWxwaGE6"),
        with("Bearer"),
        vec![(auth, alpha.as_str()), (auth, alpha.as_str())],
    ] {
        let r = check(&serve, "GET", "/check?scope=read", &headers);
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Bearer realm=\"tokenfile\"")
        );
        assert_eq!(r.header("X-Token-Id"), None);
    }

    // Bad request: no scope, or a malformed one — never a grant, whatever the token.
    for target in [
        "/check",
        "/check?scope=",
        "/check?scope=*",
        "/check?scope=kafka:*",
        "/check?scope=read,,write",
        "/check?scope=a%20b",
        "/check?scope=%zz",
        "/check?scope=%FF",
    ] {
        let r = check(&serve, "GET", target, &with(&alpha));
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.header("X-Token-Id"), None);
    }
    let empty_header = [(auth, alpha.as_str()), ("X-Required-Scope", "")];
    assert_eq!(check(&serve, "GET", "/check", &empty_header).status, 400);
}

#[test]
fn healthz_metrics_and_other_paths() {
    let _timed = crate::support::timed();
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let (auth, alpha) = bearer("alpha");
    check(&serve, "GET", "/check?scope=read", &[(auth, &alpha)]);
    check(&serve, "GET", "/check?scope=write", &[(auth, &alpha)]);
    check(&serve, "GET", "/check?scope=read", &[]);
    check(&serve, "GET", "/check", &[]);

    let r = check(&serve, "GET", "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let health: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["file_present"], true);
    assert_eq!(health["records"], 2);
    assert_eq!(health["invalid_lines"], 1);
    assert!(health["last_reload"].as_str().unwrap().ends_with('Z'));

    let r = check(&serve, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    for sample in [
        "tokenfile_checks_total{outcome=\"granted\"} 1",
        "tokenfile_checks_total{outcome=\"forbidden\"} 1",
        "tokenfile_checks_total{outcome=\"unauthorized\"} 1",
        "tokenfile_checks_total{outcome=\"invalid\"} 1",
        "tokenfile_reloads_total 0",
        "tokenfile_reload_failures_total 0",
        "tokenfile_records_loaded 2",
        "tokenfile_invalid_lines 1",
        "tokenfile_file_present 1",
        "# TYPE tokenfile_last_reload_timestamp_seconds gauge",
    ] {
        assert!(text.contains(sample), "{sample} missing from\n{text}");
    }
    assert!(serve.metric("tokenfile_last_reload_timestamp_seconds") > 1.7e9);

    assert_eq!(check(&serve, "GET", "/", &[]).status, 404);
    assert_eq!(check(&serve, "GET", "/checkx", &[]).status, 404);
    assert_eq!(check(&serve, "GET", "/check/", &[]).status, 404);
    let r = check(&serve, "POST", "/healthz", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));

    // A vanished file shows in both.
    fs::remove_file(&file).unwrap();
    eventually("healthz reports the missing file", RELOAD, || {
        let r = serve.get("/healthz", &[]);
        let health: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        health["file_present"] == false && health["status"] == "missing"
    });
    assert_eq!(serve.metric("tokenfile_file_present"), 0.0);
    assert_eq!(serve.metric("tokenfile_reload_failures_total"), 1.0);
    assert_eq!(serve.metric("tokenfile_records_loaded"), 0.0);
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let mut stream = TcpStream::connect(serve.http.unwrap()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let one = "GET /check?scope=read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alpha\r\n\r\n";
    let mut requests = one.repeat(20);
    requests.push_str("GET /check?scope=read HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(requests.as_bytes()).unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 204").count(), 20, "{all}");
    assert_eq!(all.matches("HTTP/1.1 401").count(), 1, "{all}");
}

#[test]
fn hostile_clients_do_not_block_others() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let addr = serve.http.unwrap();
    // Slowloris: a request head that never ends.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /check?scope=read HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Oversized headers are refused.
    let huge = format!(
        "GET /check?scope=read HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // (hyper answers 431 and closes; the unread rest of the request may reset the
    // connection before the answer is read, which is fine too.)
    if let Ok(r) = try_raw_http(addr, huge.as_bytes()) {
        assert_eq!(r.status, 431);
    }
    // Garbage.
    let r = raw_http(addr, b"\x00\x01\x02 nonsense\r\n\r\n");
    assert_eq!(r.status, 400);
    // Everyone else is served.
    let (auth, alpha) = bearer("alpha");
    for _ in 0..10 {
        assert_eq!(
            check(&serve, "GET", "/check?scope=read", &[(auth, &alpha)]).status,
            204
        );
    }
    for s in &mut slow {
        let _ = s.write_all(b"1\r\n");
    }
}

#[test]
fn sigterm_stops_gracefully() {
    let (dir, file) = setup();
    let mut serve = Serve::start(&file, dir.path(), Listen::Http);
    let addr = serve.http.unwrap();
    // An idle keep-alive connection does not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit().code(), Some(0), "{}", serve.log());
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

#[test]
fn busy_port_and_missing_file_fail_at_start() {
    let (dir, file) = setup();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(
        tokenfile_command()
            .arg("--file")
            .arg(&file)
            .args(["serve", "--http", &addr]),
        None,
    );
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));

    let out = run(
        tokenfile_command()
            .arg("--file")
            .arg(dir.path().join("missing"))
            .args(["serve", "--http", "127.0.0.1:1"]),
        None,
    );
    assert_eq!(out.status.code(), Some(10));

    let out = run(
        tokenfile_command().arg("--file").arg(&file).arg("serve"),
        None,
    );
    assert_eq!(out.status.code(), Some(2), "neither --socket nor --http");
}

/// While serve fails closed, `/healthz` says so with 503 (a readiness probe or a load
/// balancer looks at the status code), with the same JSON.
#[test]
fn healthz_is_503_while_failing_closed() {
    let _timed = crate::support::timed();
    use std::os::unix::fs::PermissionsExt;
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    assert_eq!(check(&serve, "GET", "/healthz", &[]).status, 200);
    let status = |r: &Response| {
        let health: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        health["status"].as_str().unwrap_or_default().to_owned()
    };
    fs::remove_file(&file).unwrap();
    eventually("healthz says missing", RELOAD, || {
        status(&serve.get("/healthz", &[])) == "missing"
    });
    let r = check(&serve, "GET", "/healthz", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let (_keep, original) = setup();
    fs::copy(&original, &file).unwrap();
    eventually("healthz says ok again", RELOAD, || {
        serve.get("/healthz", &[]).status == 200
    });
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    eventually("healthz says refused", RELOAD, || {
        status(&serve.get("/healthz", &[])) == "refused"
    });
    assert_eq!(check(&serve, "GET", "/healthz", &[]).status, 503);
}

/// The answers hyper makes itself (an oversized head, garbage) carry `Cache-Control:
/// no-store` like every other answer.
#[test]
fn errors_of_the_http_layer_carry_no_store() {
    let (dir, file) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let addr = serve.http.unwrap();
    let r = raw_http(addr, b"\x00\x01\x02 nonsense\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("Cache-Control"), Some("no-store"), "{r:?}");

    let huge = format!(
        "GET /check?scope=read HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The server answers before it has read the whole request, then closes, which may
    // reset the connection before the answer is read: a reader thread takes it at once,
    // and a few attempts are allowed.
    let mut answered = 0;
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let read = std::thread::spawn(move || {
            let mut raw = Vec::new();
            let _ = reader.read_to_end(&mut raw);
            raw
        });
        let _ = stream.write_all(huge.as_bytes());
        let raw = read.join().unwrap();
        if raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let r = parse_response(&raw);
            assert_eq!(r.status, 431);
            assert_eq!(r.header("Cache-Control"), Some("no-store"), "{r:?}");
            answered += 1;
        }
    }
    assert!(answered > 0, "no answer to an oversized request was read");
}

/// A token in the path, the query or any header never reaches the log, at any level.
#[test]
fn no_log_line_holds_a_path_query_or_header_value() {
    let (dir, file) = setup();
    let env = [("RUST_LOG", "trace,debug")];
    let serve = Serve::start_with(&file, dir.path(), Listen::Http, &env);
    let addr = serve.http.unwrap();
    for target in [
        "/tf_secretinpath",
        "/check?scope=read&t=tf_secretinquery",
        "/check/tf_secretinpath2?tf_secretinquery2",
    ] {
        http(
            addr,
            "GET",
            target,
            &[
                ("Authorization", "Bearer tf_secretinheader"),
                ("X-Api-Key", "tf_secretinapikey"),
                ("X-Forwarded-Uri", "/x?token=tf_secretinforwarded"),
            ],
        );
    }
    // The method is the client's too: an extension method can hold anything.
    let _ = try_raw_http(addr, b"TFSECRETINMETHOD /check HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = try_raw_http(addr, b"GET /tf_secretingarbage\x00 HTTP/1.1\r\n\r\n");
    let _ = try_raw_http(addr, b"GET / HTTP/1.1\r\nX-Bad: tf_secretinbad\x01\r\n\r\n");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = serve.log();
    assert!(log.contains("http"), "no request was logged at all:\n{log}");
    assert!(
        !log.to_lowercase().contains("secretin"),
        "a request's token was logged:\n{log}"
    );
}
