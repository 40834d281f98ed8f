//! The shipped deployment files work: the systemd unit passes `systemd-analyze verify`, the
//! Kubernetes Secret holds a valid token file, its nginx config passes `nginx -t`, and the
//! example gate script maps exit codes as documented. Each test skips, saying why, only when
//! the tool it needs is not installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{BIN, run, tokenfile_command};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

/// The indented block under the line `marker` (a YAML literal block), de-indented.
fn yaml_block(text: &str, marker: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != marker).skip(1);
    let first = lines.next().expect("block after marker");
    let indent = first.len() - first.trim_start().len();
    let mut out = format!("{}\n", &first[indent..]);
    for line in lines {
        if line.len() - line.trim_start().len() < indent && !line.trim().is_empty() {
            break;
        }
        out.push_str(line.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = find_tool("systemd-analyze") else {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    };
    let unit = fs::read_to_string(repo("contrib/systemd/tokenfile.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenfile.service");
    fs::write(&path, unit.replace("/usr/local/bin/tokenfile", BIN)).unwrap();
    // The unit's Documentation=man:tokenfile(1) must resolve, once installed as its
    // comment says (into a MANPATH of our own here).
    let man1 = dir.path().join("man/man1");
    fs::create_dir_all(&man1).unwrap();
    let made = run(tokenfile_command().args(["man", "--dir"]).arg(&man1), None);
    assert!(made.status.success());
    assert!(unit.contains("Documentation=man:tokenfile(1)"));
    assert!(unit.contains("tokenfile man --dir /usr/local/share/man/man1"));
    let mut verify = Command::new(analyze);
    verify.arg("verify").arg(&path);
    if find_tool("man").is_some() {
        verify.env("MANPATH", dir.path().join("man"));
    } else {
        eprintln!("man is not installed: Documentation= is not checked");
        verify.arg("--man=no");
    }
    let out = verify.output().unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_secret_is_a_valid_hashed_token_file() {
    let secret = fs::read_to_string(repo("contrib/kubernetes/secret.yaml")).unwrap();
    let tokens = yaml_block(&secret, "tokens: |");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, &tokens).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(
        tokenfile_command()
            .args(["--file"])
            .arg(&file)
            .args(["lint", "--strict"]),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tokens.contains("sha256:"),
        "the Secret must hold digests only"
    );
}

/// The directives of the nginx `location` block that opens with `opening` (e.g.
/// `location / {`), one per line, trimmed.
fn nginx_location(server: &str, opening: &str) -> Vec<String> {
    server
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != opening)
        .skip(1)
        .take_while(|l| *l != "}")
        .map(str::to_string)
        .collect()
}

#[test]
fn kubernetes_secret_volume_is_not_readable_by_others() {
    // A Secret volume is 0644 by default; tokenfile refuses a plaintext file readable by
    // others, so the README promises defaultMode 0440 (docs/trust.md).
    let deployment = fs::read_to_string(repo("contrib/kubernetes/deployment.yaml")).unwrap();
    let volume = deployment
        .split("- name: tokens\n")
        .nth(1)
        .expect("the tokens volume");
    let mode = volume
        .lines()
        .find_map(|l| l.trim().strip_prefix("defaultMode:"))
        .expect("the tokens volume sets defaultMode")
        .trim();
    assert_eq!(mode, "0440");
}

#[test]
fn kubernetes_nginx_keeps_the_token_from_the_app_and_the_scope_from_the_client() {
    let deployment = fs::read_to_string(repo("contrib/kubernetes/deployment.yaml")).unwrap();
    let server = yaml_block(&deployment, "default.conf: |");
    let app = nginx_location(&server, "location / {");
    assert!(
        app.iter().any(|l| l == "auth_request /_tokenfile;"),
        "{app:?}"
    );
    assert!(
        app.iter()
            .any(|l| l == "proxy_set_header Authorization \"\";"),
        "the app must never see the token: {app:?}"
    );
    let auth = nginx_location(&server, "location = /_tokenfile {");
    assert!(
        auth.iter()
            .any(|l| l == "proxy_set_header X-Required-Scope \"\";"),
        "nginx copies the client's headers into the auth_request: a client's own \
         X-Required-Scope must be cleared there: {auth:?}"
    );
}

#[test]
fn kubernetes_nginx_config_passes_nginx_t() {
    let Some(nginx) = find_tool("nginx") else {
        eprintln!("SKIP: nginx is not installed");
        return;
    };
    let deployment = fs::read_to_string(repo("contrib/kubernetes/deployment.yaml")).unwrap();
    let server = yaml_block(&deployment, "default.conf: |");
    assert!(server.contains("auth_request /_tokenfile;"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         {server}}}\n"
    );
    let path = dir.path().join("nginx.conf");
    fs::write(&path, conf).unwrap();
    let out = Command::new(nginx)
        .args(["-t", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gate_script_runs_the_command_only_when_granted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let gate = |args: &[&str], token: &str| {
        Command::new(repo("examples/gate.sh"))
            .args(args)
            .env("PATH", &path)
            .env("TOKENFILE", &file)
            .env("TOKEN", token)
            .output()
            .unwrap()
    };
    assert!(
        run(
            tokenfile_command().arg("--file").arg(&file).arg("init"),
            None,
        )
        .status
        .success()
    );
    let minted = run(
        tokenfile_command()
            .arg("--file")
            .arg(&file)
            .args(["mint", "--scope", "deploy"]),
        None,
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let marker = dir.path().join("ran");
    let touch = ["touch", marker.to_str().unwrap()];

    let denied = gate(&[&["admin"][..], &touch].concat(), &token);
    assert_eq!(denied.status.code(), Some(1));
    assert!(!marker.exists());
    let unknown = gate(&[&["deploy"][..], &touch].concat(), "tf_not-a-token");
    assert_eq!(unknown.status.code(), Some(3));
    assert!(!marker.exists());
    let granted = gate(&[&["deploy"][..], &touch].concat(), &token);
    assert_eq!(granted.status.code(), Some(0), "{granted:?}");
    assert!(marker.exists());
}
