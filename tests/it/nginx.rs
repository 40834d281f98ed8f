//! A real nginx in front of `tokenfile serve`, with `auth_request` exactly as `docs/serve.md`
//! shows it: granted requests reach the protected upstream, others are refused, and nginx
//! refuses everything once `serve` is gone (fail closed).
//!
//! Skips (with a message) only when no nginx binary is installed; CI installs it.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::eventually;
use crate::support::serve::*;
use nix::sys::signal::Signal;

fn find_nginx() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// A running nginx; stopped and reaped when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// The site: `/api/` needs scope `read`, `/admin/` needs scope `admin`; both proxy to an
/// upstream (a second server block) that echoes the token ID it was given.
fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr, serve: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen {upstream};
        location / {{
            return 200 "secret page for $http_x_token_id\n";
        }}
    }}

    server {{
        listen {listen};

        location = /_auth/read {{
            internal;
            proxy_pass http://{serve}/check?scope=read;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location = /_auth/admin {{
            internal;
            proxy_pass http://{serve}/check?scope=admin;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}

        location /api/ {{
            auth_request /_auth/read;
            auth_request_set $token_id $upstream_http_x_token_id;
            proxy_set_header X-Token-Id $token_id;
            proxy_set_header Authorization "";
            proxy_pass http://{upstream};
        }}
        location /admin/ {{
            auth_request /_auth/admin;
            auth_request_set $token_id $upstream_http_x_token_id;
            proxy_set_header X-Token-Id $token_id;
            proxy_set_header Authorization "";
            proxy_pass http://{upstream};
        }}
    }}
}}
"#
    )
}

fn start_nginx(bin: &Path, dir: &Path, serve: SocketAddr) -> (Nginx, SocketAddr) {
    // Free ports can be taken between our probe and nginx's bind: retry.
    for _ in 0..5 {
        let (listen, upstream) = (free_port(), free_port());
        if listen == upstream {
            continue;
        }
        fs::write(dir.join("nginx.conf"), config(dir, listen, upstream, serve)).unwrap();
        let _ = fs::remove_file(dir.join("error.log"));
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            // Before the configuration is read, nginx logs here (not to /var/log).
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            dir: dir.to_path_buf(),
        };
        let end = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = nginx.error_log();
                if log.contains("Address already in use") {
                    break;
                }
                panic!("nginx exited with {status}:\n{log}");
            }
            if TcpStream::connect(listen).is_ok() && TcpStream::connect(upstream).is_ok() {
                return (nginx, listen);
            }
            assert!(
                Instant::now() < end,
                "nginx did not start:\n{}",
                nginx.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free ports for nginx");
}

#[test]
fn nginx_auth_request_in_front_of_serve() {
    let _timed = crate::support::timed();
    let Some(nginx_bin) = find_nginx() else {
        eprintln!("SKIPPED nginx_auth_request_in_front_of_serve: no nginx binary installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, record("alpha", "read", "reader")).unwrap();
    let mut serve = Serve::start(&file, dir.path(), Listen::Http);
    let nginx_dir = dir.path().join("nginx");
    fs::create_dir(&nginx_dir).unwrap();
    let (nginx, addr) = start_nginx(&nginx_bin, &nginx_dir, serve.http.unwrap());
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http(addr, "GET", path, &headers)
    };

    // Granted: the upstream answers, and learns the token's ID (never the token).
    let r = get("/api/x", Some("alpha"));
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
    assert_eq!(r.text(), format!("secret page for {}\n", id("alpha")));

    // Unknown or missing token: 401 with the challenge passed through.
    for token in [Some("nope"), None] {
        let r = get("/api/x", token);
        assert_eq!(r.status, 401, "{token:?}: {r:?}");
        assert!(!r.text().contains("secret page"));
    }

    // Valid token without the scope: 403.
    let r = get("/admin/x", Some("alpha"));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(!r.text().contains("secret page"));

    // A new token is honoured through nginx as soon as serve sees the file change.
    replace_by_rename(
        &file,
        &(record("alpha", "read", "reader") + &record("root", "read,admin", "admin")),
    );
    eventually("the new admin token works through nginx", RELOAD, || {
        get("/admin/x", Some("root")).status == 200
    });

    // serve gone: nginx refuses (auth_request turns an unreachable auth server into 500).
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit().code(), Some(0));
    let r = get("/api/x", Some("alpha"));
    assert!(!(200..300).contains(&r.status), "{r:?}");
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("secret page"));
}
