//! Forward auth for every proxy (docs/protocols.md, docs/routes.md), through a real `serve`:
//! HTTP over a Unix socket and several listeners at once, Envoy's `ext_authz`, Basic and
//! `X-Api-Key` clients, scopes from the original request's method and path (`--routes`),
//! live reloads of the rules file, and the headers of a grant.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::serve::*;
use crate::support::{eventually, run, timed, tokenfile_command};

const RULES: &str = "\
# METHODS          PATH              SCOPES
GET                /api/**           app:read
POST,PUT,DELETE    /api/**           app:write
*                  /admin/**         admin
GET                /files/*.txt      files
";

/// A file with `reader` (app:read), `writer` (app:read,app:write), `root` (*) and `nameless`
/// (app:read, empty name), and the rules above in `routes`.
fn setup() -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let content = record("reader", "app:read", "ci reader")
        + &record("writer", "app:read,app:write", "deployer")
        + &record("root", "*", "root")
        + &record("nameless", "app:read", "");
    fs::write(&file, content).unwrap();
    let routes = dir.path().join("routes");
    fs::write(&routes, RULES).unwrap();
    (dir, file, routes)
}

/// `serve` on TCP with `args` added (e.g. `--routes FILE`, `--accept basic`).
fn serve_with(file: &Path, dir: &Path, args: &[String]) -> Serve {
    Serve::start_configured(file, dir, Listen::Http, &|cmd: &mut Command| {
        cmd.args(args);
    })
}

fn routes_arg(routes: &Path) -> Vec<String> {
    vec!["--routes".into(), routes.display().to_string()]
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `/check` with the original request in Traefik's and Caddy's headers.
fn forwarded(serve: &Serve, token: &str, method: &str, uri: &str) -> Response {
    let auth = bearer(token);
    serve.get(
        "/check",
        &[
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Uri", uri),
        ],
    )
}

#[test]
fn http_over_a_unix_socket_beside_tcp() {
    let (dir, file, _) = setup();
    let unix = dir.path().join("http.sock");
    let mut serve = serve_with(
        &file,
        dir.path(),
        &[format!("--http=unix:{}", unix.display())],
    );
    eventually("the HTTP socket", PATIENCE, || {
        std::os::unix::net::UnixStream::connect(&unix).is_ok()
    });
    let meta = fs::symlink_metadata(&unix).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "socket mode");

    let auth = bearer("reader");
    let headers = [("Authorization", auth.as_str())];
    // Both listeners answer alike.
    let over_unix = http_unix(&unix, "GET", "/check?scope=app:read", &headers);
    let over_tcp = serve.get("/check?scope=app:read", &headers);
    for r in [&over_unix, &over_tcp] {
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(r.header("X-Token-Id"), Some(id("reader").as_str()));
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
    }
    let denied = http_unix(&unix, "GET", "/check?scope=app:write", &headers);
    assert_eq!(denied.status, 403);
    assert_eq!(http_unix(&unix, "GET", "/healthz", &[]).status, 200);
    // Last used: the Unix peer is a uid, as on the line socket.
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    assert!(!unix.exists(), "the HTTP socket is removed at exit");
}

#[test]
fn an_http_socket_path_that_is_not_a_stale_socket_is_refused() {
    let (dir, file, _) = setup();
    let start = |path: &Path| {
        let mut cmd = tokenfile_command();
        cmd.arg("--file")
            .arg(&file)
            .arg("serve")
            .arg(format!("--http=unix:{}", path.display()));
        run(cmd, None)
    };
    // A regular file is never replaced.
    let regular = dir.path().join("not-a-socket");
    fs::write(&regular, "keep me").unwrap();
    let out = start(&regular).code(10);
    assert!(
        out.err().contains(&regular.display().to_string()),
        "{}",
        out.err()
    );
    assert_eq!(fs::read(&regular).unwrap(), b"keep me");
    // A socket someone listens on is theirs.
    let busy = dir.path().join("busy.sock");
    let _listener = UnixListener::bind(&busy).unwrap();
    let out = start(&busy).code(10);
    assert!(out.err().contains("busy.sock"), "{}", out.err());
    assert!(busy.exists());
    // A stale one (its server gone) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let mut serve = serve_with(
        &file,
        dir.path(),
        &[format!("--http=unix:{}", stale.display())],
    );
    eventually("the replaced socket", PATIENCE, || {
        std::os::unix::net::UnixStream::connect(&stale).is_ok()
    });
    assert_eq!(http_unix(&stale, "GET", "/healthz", &[]).status, 200);
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
}

#[test]
fn envoy_ext_authz_grants_with_200_and_takes_scopes_from_its_header() {
    let (dir, file, _) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let auth = bearer("reader");
    let ask = |target: &str, scope: Option<&str>, auth: Option<&str>| {
        let mut headers = Vec::new();
        if let Some(scope) = scope {
            headers.push(("X-Required-Scope", scope));
        }
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        http(serve.http.unwrap(), "POST", target, &headers)
    };
    let granted = ask("/ext_authz/api/items?x=1", Some("app:read"), Some(&auth));
    assert_eq!(granted.status, 200, "Envoy takes only 200 as a grant");
    assert_eq!(granted.header("X-Token-Id"), Some(id("reader").as_str()));
    assert_eq!(granted.header("X-Token-Name"), Some("ci reader"));
    assert_eq!(granted.header("Cache-Control"), Some("no-store"));
    assert_eq!(ask("/ext_authz", Some("app:read"), Some(&auth)).status, 200);
    let forbidden = ask("/ext_authz/api", Some("app:write"), Some(&auth));
    assert_eq!(forbidden.status, 403);
    let unknown = ask("/ext_authz/api", Some("app:read"), Some("Bearer nope"));
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.header("WWW-Authenticate"),
        Some("Bearer realm=\"tokenfile\"")
    );
    // The query is the client's: it never chooses a scope here.
    assert_eq!(
        ask("/ext_authz/api?scope=app:read", None, Some(&auth)).status,
        400
    );
    // Only under the prefix: `/ext_authzfoo` is not a check.
    assert_eq!(
        ask("/ext_authzfoo", Some("app:read"), Some(&auth)).status,
        404
    );
}

#[test]
fn basic_and_api_key_are_accepted_only_when_asked_for() {
    let (dir, file, _) = setup();
    let basic = |user: &str, password: &str| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    };
    let challenges = |r: &Response| -> Vec<String> {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    {
        let serve = Serve::start(&file, dir.path(), Listen::Http);
        let as_basic = serve.get(
            "/check?scope=app:read",
            &[("Authorization", &basic("git", "reader"))],
        );
        assert_eq!(as_basic.status, 401, "Basic is off by default");
        assert_eq!(challenges(&as_basic), ["Bearer realm=\"tokenfile\""]);
        let as_key = serve.get("/check?scope=app:read", &[("X-Api-Key", "reader")]);
        assert_eq!(as_key.status, 401, "X-Api-Key is off by default");
    }
    let serve = serve_with(
        &file,
        dir.path(),
        &["--accept".into(), "basic,api-key".into()],
    );
    for user in ["git", "", "ci@example.com"] {
        let r = serve.get(
            "/check?scope=app:read",
            &[("Authorization", &basic(user, "reader"))],
        );
        assert_eq!(r.status, 204, "user {user:?}");
        assert_eq!(r.header("X-Token-Id"), Some(id("reader").as_str()));
    }
    let by_key = serve.get("/check?scope=app:read", &[("X-Api-Key", "reader")]);
    assert_eq!(by_key.status, 204);
    // Bearer still works, and the same token in two places is fine.
    let auth = bearer("reader");
    let both = serve.get(
        "/check?scope=app:read",
        &[("Authorization", auth.as_str()), ("X-Api-Key", "reader")],
    );
    assert_eq!(both.status, 204);
    // Two different tokens: neither is picked.
    let two = serve.get(
        "/check?scope=app:read",
        &[("Authorization", auth.as_str()), ("X-Api-Key", "root")],
    );
    assert_eq!(two.status, 401);
    let wrong = serve.get(
        "/check?scope=app:read",
        &[("Authorization", &basic("git", "guess"))],
    );
    assert_eq!(wrong.status, 401);
    // Basic is offered first (nginx before 1.23 passes only the first challenge on).
    assert_eq!(
        challenges(&wrong),
        ["Basic realm=\"tokenfile\"", "Bearer realm=\"tokenfile\""]
    );
    let forbidden = serve.get("/check?scope=app:write", &[("X-Api-Key", "reader")]);
    assert_eq!(forbidden.status, 403);
}

#[test]
fn routes_decide_the_scopes_of_the_original_request() {
    let (dir, file, routes) = setup();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let status =
        |token: &str, method: &str, uri: &str| forwarded(&serve, token, method, uri).status;
    // First matching rule wins; HEAD is covered by GET.
    assert_eq!(status("reader", "GET", "/api/items/7"), 204);
    assert_eq!(status("reader", "HEAD", "/api/items/7"), 204);
    assert_eq!(status("reader", "DELETE", "/api/items/7"), 403);
    assert_eq!(status("writer", "DELETE", "/api/items/7"), 204);
    assert_eq!(status("reader", "GET", "/api"), 204, "/api/** covers /api");
    assert_eq!(status("reader", "GET", "/admin/users"), 403);
    assert_eq!(status("root", "PATCH", "/admin/users"), 204);
    assert_eq!(status("nobody", "GET", "/api/items"), 401);
    // No rule: refused, whatever the token grants.
    assert_eq!(status("root", "GET", "/other"), 403);
    assert_eq!(status("root", "PATCH", "/api/items"), 403);
    assert_eq!(status("root", "GET", "/files/a/b.txt"), 403);
    // The path is normalized before it is matched: what the application will serve.
    assert_eq!(status("reader", "GET", "/api/../admin/users"), 403);
    assert_eq!(status("root", "GET", "/api/%2e%2e/admin/users"), 204);
    assert_eq!(status("reader", "GET", "//api//items?x=/admin"), 204);
    assert_eq!(status("reader", "GET", "/api/caf%C3%A9"), 204);
    assert_eq!(status("reader", "GET", "/files/notes.txt"), 403);
    // A path that cannot be normalized without guessing is 400, never matched.
    for uri in [
        "/api%2F..%2Fadmin",
        "/api/..\\admin",
        "/../api",
        "/api/%zz",
        "/api/%00",
        "api",
        "/api/..;/admin/users",
        "/admin;x/users",
    ] {
        let r = forwarded(&serve, "root", "GET", uri);
        assert_eq!(r.status, 400, "{uri}");
        assert!(
            !r.text().contains(uri),
            "the 400 repeats the path: {}",
            r.text()
        );
    }
    // nginx's pair works the same; the two pairs together must agree.
    let auth = bearer("reader");
    let nginx = serve.get(
        "/check",
        &[
            ("Authorization", &auth),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/x"),
        ],
    );
    assert_eq!(nginx.status, 204);
    let disagree = serve.get(
        "/check",
        &[
            ("Authorization", &auth),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/x"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/admin/x"),
        ],
    );
    assert_eq!(disagree.status, 400);
    let half = serve.get(
        "/check",
        &[("Authorization", &auth), ("X-Forwarded-Uri", "/api/x")],
    );
    assert_eq!(half.status, 400, "a URI without its method");
    let twice = serve.get(
        "/check",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/x"),
            ("X-Forwarded-Uri", "/admin/x"),
        ],
    );
    assert_eq!(twice.status, 400);
    // An explicit scope must be granted as well as the rule's.
    let both = |scope: &str| {
        serve
            .get(
                &format!("/check?scope={scope}"),
                &[
                    ("Authorization", &auth),
                    ("X-Forwarded-Method", "GET"),
                    ("X-Forwarded-Uri", "/api/x"),
                ],
            )
            .status
    };
    assert_eq!(both("app:read"), 204);
    assert_eq!(both("app:write"), 403);
    // Without an original request the explicit scope alone decides; without either, 400.
    assert_eq!(
        serve
            .get("/check?scope=app:read", &[("Authorization", &auth)])
            .status,
        204
    );
    assert_eq!(serve.get("/check", &[("Authorization", &auth)]).status, 400);
    // Envoy: its own method and path.
    let envoy = |method: &str, target: &str| {
        http(
            serve.http.unwrap(),
            method,
            target,
            &[("Authorization", &auth)],
        )
        .status
    };
    assert_eq!(envoy("GET", "/ext_authz/api/items"), 200);
    assert_eq!(envoy("POST", "/ext_authz/api/items"), 403);
    assert_eq!(envoy("GET", "/ext_authz/other"), 403);
    assert_eq!(serve.metric("tokenfile_route_misses_total"), 4.0);
    assert_eq!(serve.metric("tokenfile_routes_rules"), 4.0);
}

fn healthz_routes(serve: &Serve) -> serde_json::Value {
    let body = serve.get("/healthz", &[]).text();
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["routes"].clone()
}

#[test]
fn the_rules_file_reloads_live_and_a_broken_one_keeps_the_last_good_rules() {
    let (dir, file, routes) = setup();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let _timed = timed();
    let status = |method: &str, uri: &str| forwarded(&serve, "reader", method, uri).status;
    assert_eq!(status("GET", "/reports/1"), 403);

    // Replaced by rename: in use within the second.
    replace_by_rename(&routes, &format!("GET /reports/** app:read\n{RULES}"));
    eventually("the renamed rules", RELOAD, || {
        status("GET", "/reports/1") == 204
    });

    // Broken in place: the last good rules stay, and it shows.
    fs::write(&routes, "GET /reports/** app:read\nget /api/** app:read\n").unwrap();
    eventually("the broken rules noticed", RELOAD, || {
        serve.metric("tokenfile_routes_reload_failures_total") == 1.0
    });
    assert_eq!(status("GET", "/reports/1"), 204);
    assert_eq!(
        status("GET", "/api/x"),
        204,
        "the last good rules are in use"
    );
    assert_eq!(serve.metric("tokenfile_routes_file_ok"), 0.0);
    let health = healthz_routes(&serve);
    assert_eq!(health["status"], "stale");
    assert!(
        health["problem"].as_str().unwrap().contains("line 2"),
        "{health}"
    );
    assert!(
        serve.log().contains("keeping the last good routes"),
        "{}",
        serve.log()
    );

    // Fixed in place: in use, and healthy again.
    fs::write(&routes, "GET /api/** admin\n").unwrap();
    eventually("the fixed rules", RELOAD, || status("GET", "/api/x") == 403);
    assert_eq!(status("GET", "/reports/1"), 403);
    assert_eq!(serve.metric("tokenfile_routes_file_ok"), 1.0);
    assert_eq!(healthz_routes(&serve)["status"], "ok");

    // Deleted: the last good rules stay; re-created: in use.
    fs::remove_file(&routes).unwrap();
    eventually("the deletion noticed", RELOAD, || {
        serve.metric("tokenfile_routes_file_ok") == 0.0
    });
    assert_eq!(status("GET", "/api/x"), 403);
    fs::write(&routes, RULES).unwrap();
    eventually("the re-created rules", RELOAD, || {
        status("GET", "/api/x") == 204
    });
    assert!(serve.metric("tokenfile_routes_reloads_total") >= 3.0);
}

#[test]
fn a_last_rule_still_being_written_is_not_used() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let (dir, file, routes) = setup();
    fs::write(&routes, "GET /api/** app:read-all\n").unwrap();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let _timed = timed();
    let status = || forwarded(&serve, "reader", "GET", "/api/x").status;
    assert_eq!(status(), 403);
    // A writer in the middle of the line: `app:read` of `app:read-all`, no line ending yet.
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&routes)
        .unwrap();
    writer.write_all(b"GET /api/** app:read").unwrap();
    let until = Instant::now() + Duration::from_millis(450);
    while Instant::now() < until {
        assert_ne!(status(), 204, "half a rule was used: {}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.write_all(b"-all\n").unwrap();
    drop(writer);
    std::thread::sleep(RELOAD);
    assert_eq!(status(), 403);
    // A file that simply ends without a line ending is used once it is left alone.
    fs::write(&routes, "GET /api/** app:read").unwrap();
    eventually("the unended rules file", RELOAD * 2, || status() == 204);
}

#[test]
fn a_secret_pasted_into_a_rules_file_is_never_shown() {
    let (dir, file, routes) = setup();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let token = "tf_JfNtFeWrXaFR84kQzL2mP9vB7sD3gH5jK1nC6xY0wTeA";
    let lower = token.to_ascii_lowercase();
    let upper = token.to_ascii_uppercase();
    for line in [
        format!("{token} /x s"),
        format!("GET@{token} /x s"),
        format!("GET,{lower} /x s"),
        format!("GET /x {token}"),
    ] {
        fs::write(&routes, format!("{line}\n")).unwrap();
        eventually("the broken rules noticed", RELOAD * 2, || {
            healthz_routes(&serve)["status"] == "stale"
        });
        let shown = healthz_routes(&serve).to_string() + &serve.log();
        for part in [token, &upper, &token[..16], &lower] {
            assert!(!shown.contains(part), "{line}: {shown}");
        }
        let mut cmd = tokenfile_command();
        cmd.args(["routes", "check", "--json"]).arg(&routes);
        let out = run(cmd, None);
        assert_eq!(out.code, 5);
        let printed = out.out() + &out.err();
        for part in [token, &upper, &token[..16], &lower] {
            assert!(!printed.contains(part), "{line}: {printed}");
        }
        fs::write(&routes, RULES).unwrap();
        eventually("good rules again", RELOAD * 2, || {
            healthz_routes(&serve)["status"] == "ok"
        });
    }
}

#[test]
fn serve_refuses_to_start_with_a_broken_or_unsafe_rules_file() {
    let (_dir, file, routes) = setup();
    let start = || {
        let mut cmd = tokenfile_command();
        cmd.arg("--file")
            .arg(&file)
            .arg("serve")
            .arg("--http")
            .arg(free_port().to_string())
            .arg("--routes")
            .arg(&routes);
        run(cmd, None)
    };
    fs::write(&routes, "GET /ok read\nGET /api/** read, write\n").unwrap();
    let out = start().code(5);
    assert!(out.err().contains("line 2"), "{}", out.err());
    // Whoever can change the rules decides what every route needs.
    fs::write(&routes, RULES).unwrap();
    fs::set_permissions(&routes, fs::Permissions::from_mode(0o666)).unwrap();
    let out = start().code(5);
    assert!(out.err().contains("chmod o-w"), "{}", out.err());
    fs::remove_file(&routes).unwrap();
    let out = start().code(10);
    assert!(out.err().contains("rules file"), "{}", out.err());
}

#[test]
fn a_grant_always_names_the_record_even_with_an_empty_name() {
    let (dir, file, _) = setup();
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let auth = bearer("nameless");
    let r = serve.get("/check?scope=app:read", &[("Authorization", &auth)]);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("X-Token-Id"), Some(id("nameless").as_str()));
    // Present and empty: a proxy that copies it overwrites a client's own X-Token-Name.
    assert_eq!(r.header("X-Token-Name"), Some(""));
}

#[test]
fn a_rules_file_written_non_stop_is_still_reloaded_within_a_second() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let (dir, file, routes) = setup();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let _timed = timed();
    let status = || forwarded(&serve, "reader", "GET", "/api/x").status;
    assert_eq!(status(), 204);
    // The rule tightened in place, then a comment appended every 80 ms, for 3 s.
    fs::write(&routes, "GET /api/** admin\n").unwrap();
    let changed = Instant::now();
    let mut tightened = None;
    let mut appender = fs::OpenOptions::new().append(true).open(&routes).unwrap();
    while changed.elapsed() < Duration::from_secs(3) {
        appender.write_all(b"# still writing\n").unwrap();
        if tightened.is_none() && status() == 403 {
            tightened = Some(changed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(80));
    }
    let took = tightened.expect("the tightened rule was never used while the file kept changing");
    assert!(took <= RELOAD + Duration::from_millis(500), "took {took:?}");
}

#[test]
fn rules_kept_stale_by_an_unsafe_directory_recover_once_it_is_fixed() {
    let (dir, file, _) = setup();
    let rules_dir = dir.path().join("rules");
    fs::create_dir(&rules_dir).unwrap();
    let routes = rules_dir.join("routes");
    fs::write(&routes, RULES).unwrap();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    let _timed = timed();
    let status = || forwarded(&serve, "reader", "GET", "/api/x").status;
    assert_eq!(status(), 204);
    // Made unsafe, and a new version written meanwhile: refused, the last good rules stay.
    fs::set_permissions(&rules_dir, fs::Permissions::from_mode(0o777)).unwrap();
    replace_by_rename(&routes, "GET /api/** admin\n");
    eventually("the unsafe directory noticed", RELOAD * 3, || {
        healthz_routes(&serve)["status"] == "stale"
    });
    assert_eq!(status(), 204);
    // Fixed: the file is read again without being touched.
    fs::set_permissions(&rules_dir, fs::Permissions::from_mode(0o755)).unwrap();
    eventually("the fixed directory noticed", RELOAD * 3, || {
        status() == 403
    });
    assert_eq!(healthz_routes(&serve)["status"], "ok");
    assert_eq!(serve.metric("tokenfile_routes_file_ok"), 1.0);
    // Made unsafe with no change to the file: reported, the rules in use stay.
    fs::set_permissions(&rules_dir, fs::Permissions::from_mode(0o777)).unwrap();
    eventually("a chmod alone noticed", RELOAD * 3, || {
        healthz_routes(&serve)["status"] == "stale"
    });
    assert_eq!(status(), 403);
    fs::set_permissions(&rules_dir, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_route_miss_is_counted_only_when_it_is_the_reason_for_a_403() {
    let (dir, file, routes) = setup();
    let serve = serve_with(&file, dir.path(), &routes_arg(&routes));
    assert_eq!(forwarded(&serve, "nobody", "GET", "/other").status, 401);
    assert_eq!(serve.metric("tokenfile_route_misses_total"), 0.0);
    assert_eq!(forwarded(&serve, "reader", "GET", "/other").status, 403);
    assert_eq!(serve.metric("tokenfile_route_misses_total"), 1.0);
}

#[test]
fn start_up_never_hangs_on_a_busy_socket_and_names_a_path_given_twice() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    };
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    let (dir, file, _) = setup();
    // A server that never accepts, its backlog full: a blocking connect would wait for ever.
    let busy = dir.path().join("busy.sock");
    let server = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(server.as_raw_fd(), &UnixAddr::new(&busy).unwrap()).unwrap();
    listen(&server, Backlog::new(1).unwrap()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let client = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let _ = connect(client.as_raw_fd(), &UnixAddr::new(&busy).unwrap());
        clients.push(client);
    }
    let start = |extra: &[String]| {
        let mut cmd = tokenfile_command();
        cmd.arg("--file").arg(&file).arg("serve").args(extra);
        run(cmd, None)
    };
    let began = Instant::now();
    let out = start(&[format!("--http=unix:{}", busy.display())]).code(10);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert!(out.err().contains("in use"), "{}", out.err());
    assert!(busy.exists(), "another server's socket is left alone");
    // The same path for two listeners: a usage error that says so.
    let twice = dir.path().join("twice.sock");
    let out = start(&[
        format!("--http=unix:{}", twice.display()),
        "--socket".into(),
        twice.display().to_string(),
    ])
    .code(2);
    assert!(out.err().contains("two listeners"), "{}", out.err());
    assert!(!twice.exists());
    drop(clients);
}

#[test]
fn port_zero_logs_the_port_it_got() {
    let (dir, file, _) = setup();
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &|cmd| {
        cmd.args(["--http", "127.0.0.1:0"]);
    });
    eventually("the listening line", PATIENCE, || {
        serve.log().contains("listening http=")
    });
    let log = serve.log();
    assert!(!log.contains("http=127.0.0.1:0 "), "{log}");
    let port: u16 = log
        .split("http=127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("a port in the log");
    assert_ne!(port, 0);
    assert_eq!(
        http(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "GET",
            "/healthz",
            &[]
        )
        .status,
        200
    );
}
