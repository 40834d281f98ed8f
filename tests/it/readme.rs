//! Every fenced code block of README.md is exercised, so the README cannot drift from the
//! binary: a renamed flag, a changed JSON key or a broken proxy configuration fails here.
//!
//! A block's info string says how it is exercised:
//!
//! | info string       | exercised by                                                       |
//! |-------------------|--------------------------------------------------------------------|
//! | `sh`              | run with bash (`set -euo pipefail`) against a fixture token file  |
//! | `sh serve`        | the same, with a `serve` running on the README's socket and port   |
//! | `sh long-running` | started; must answer `/healthz`, then stop cleanly on SIGTERM      |
//! | `sh nginx`        | run with the `nginx` block saved as `nginx.conf`, under real nginx |
//! | `nginx`           | (the configuration the `sh nginx` block uses)                      |
//! | `routes`          | the rules file `/etc/tokenfile/routes` of every fixture; `routes check` |
//! | `sh routes-serve` | started by the nginx routes test; then the `nginx routes` site     |
//! | `nginx routes`    | run under a real nginx with git, curl -u and a webhook (`proxies`) |
//! | `caddyfile`       | run under a real Caddy in front of `serve` and a stand-in app      |
//! | `yaml traefik`    | run under a real Traefik (file provider) in front of `serve`       |
//! | `yaml traefik-static` | that Traefik's static configuration                            |
//! | `yaml envoy`      | checked, and its checks sent to `serve` as Envoy would send them   |
//! | `yaml prometheus` | every metric it names is one the Metrics table documents           |
//! | `json KIND`       | compared key by key with the real output of KIND                   |
//! | `sh ci`           | run by `.ci/run` (it builds with cargo: too heavy for a test)      |
//! | `sh no-run`       | needs a cluster, an editor or CI itself; [`NOT_RUN`] names the cover |
//! | `text`            | a grammar, not code: must hold no command                          |
//!
//! Any other info string fails the test, so a new block cannot go unexercised.
//!
//! The README uses a few placeholders a reader recognises; each block is run with them
//! replaced: the ID `9f6b6b6e5127` (and its prefix `9f6b`) by the fixture record's, the
//! ports 9180 (serve), 8080 (nginx) and 3000 (the application) by free ones, and
//! `/etc/tokenfile/`, `/run/tokenfile/`, `/var/lib/tokenfile/` by directories under the fixture root. `#> text`
//! lines in a shell block are its expected stdout lines, in order.
//!
//! A block that needs a tool that is not installed (nginx, caddy, socat, …) is skipped with a
//! message; `.ci/run` installs them all.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::serve::*;
use crate::support::{BIN, eventually, run, send_signal, tokenfile_command};
use nix::sys::signal::Signal;
use serde_json::Value;

const README: &str = include_str!("../../README.md");
const PLACEHOLDER_ID: &str = "9f6b6b6e5127";
const PLACEHOLDER_PREFIX: &str = "9f6b";
/// Bound on one block's run; a hung block is killed and fails.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The `sh no-run` blocks, each recognised by a line it contains, and what covers it instead.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "EDITOR=vim tokenfile edit",
        "interactive; tests/it/cli_edit.rs scripts editors",
    ),
    (
        "kubectl apply",
        "needs a cluster; tests/it/serve_reload.rs swaps ..data, tests/it/contrib.rs checks the Secret",
    ),
    ("bash .ci/run", "CI's own steps; .ci/run is what runs them"),
];

mod proxies;

#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    body: String,
}

impl Block {
    fn name(&self) -> String {
        format!("README.md:{} (```{})", self.line, self.info)
    }
}

fn blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in README.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    line: i + 1,
                    info: info.trim().to_string(),
                    body: String::new(),
                });
            }
            (Some(_), Some("")) => blocks.push(open.take().expect("open block")),
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md ends inside a code block");
    blocks
}

fn blocks_of(info: &str) -> Vec<Block> {
    blocks().into_iter().filter(|b| b.info == info).collect()
}

fn the_block(info: &str) -> Block {
    let found = blocks_of(info);
    assert_eq!(found.len(), 1, "README.md should have one ```{info} block");
    found.into_iter().next().expect("one block")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Tools a shell block calls that may be missing on a bare machine.
fn missing_tools(body: &str) -> Vec<&'static str> {
    ["nginx", "curl", "socat", "nc", "man", "flock", "jq"]
        .into_iter()
        .filter(|tool| {
            body.split(|c: char| c.is_whitespace() || c == '|' || c == '(' || c == ';')
                .any(|word| word == *tool)
        })
        .filter(|tool| find_tool(tool).is_none())
        .collect()
}

/// The last-used sidecar a `serve` would have written for the fixture: its record last used
/// two days ago (so the README's "end the grace once unused for a day" recipe ends it).
fn write_fixture_sidecar(file: &Path, id: &str) {
    let real = fs::canonicalize(file).unwrap();
    let at = (crate::support::now() - time::Duration::days(2))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let header =
        serde_json::json!({"tokenfile_seen": 1, "file": real.display().to_string(), "written": at});
    let line = serde_json::json!({"id": id, "last_used": at, "uses": 3, "last_client": "uid 1000"});
    fs::write(
        format!("{}.seen", real.display()),
        format!("{header}\n{line}\n"),
    )
    .unwrap();
}

// --- The fixture every shell block runs against. -------------------------------------------

struct Fixture {
    root: tempfile::TempDir,
    /// The working directory of the block (empty at first).
    work: PathBuf,
    /// `$TOKENFILE`: /etc/tokenfile/tokens under the root.
    file: PathBuf,
    /// `$TOKEN`: scopes read,deploy, name ci.
    token: String,
    id: String,
    serve_port: SocketAddr,
    nginx_port: SocketAddr,
    app_port: SocketAddr,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::Builder::new()
            .prefix("tokenfile-readme-")
            .tempdir()
            .unwrap();
        let dir = |p: &str| {
            let d = root.path().join(p);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let (work, etc) = (dir("work"), dir("etc/tokenfile"));
        dir("run/tokenfile");
        dir("var/lib/tokenfile/hosts");
        dir("home");
        let file = etc.join("tokens");
        let (code, _) = cli(&file, &["init"], "");
        assert_eq!(code, 0, "init the fixture");
        let (code, out) = cli(
            &file,
            &["mint", "--scope", "read,deploy", "--name", "ci"],
            "",
        );
        assert_eq!(code, 0, "mint the fixture token");
        let token = out.trim().to_string();
        write_fixture_sidecar(&file, &id(&token));
        fs::write(etc.join("routes"), the_block("routes").body).unwrap();
        let mut ports = BTreeSet::new();
        while ports.len() < 3 {
            ports.insert(free_port());
        }
        let ports: Vec<SocketAddr> = ports.into_iter().collect();
        Fixture {
            id: id(&token),
            root,
            work,
            file,
            token,
            serve_port: ports[0],
            nginx_port: ports[1],
            app_port: ports[2],
        }
    }

    fn root(&self) -> String {
        self.root.path().display().to_string()
    }

    /// The README's placeholders, replaced by this fixture's values.
    fn substitute(&self, text: &str) -> String {
        let root = self.root();
        text.replace(PLACEHOLDER_ID, &self.id)
            .replace(PLACEHOLDER_PREFIX, &self.id[..4])
            .replace("127.0.0.1:9180", &self.serve_port.to_string())
            .replace("127.0.0.1:8080", &self.nginx_port.to_string())
            .replace("127.0.0.1:3000", &self.app_port.to_string())
            .replace("/etc/tokenfile/", &format!("{root}/etc/tokenfile/"))
            .replace("/run/tokenfile/", &format!("{root}/run/tokenfile/"))
            .replace("/var/lib/tokenfile/", &format!("{root}/var/lib/tokenfile/"))
    }

    /// bash running `block` in its own process group, in `work`, with a clean environment.
    fn bash(&self, block: &Block) -> Command {
        let script = self.root.path().join(format!("block-{}.sh", block.line));
        fs::write(
            &script,
            format!("set -euo pipefail\n{}", self.substitute(&block.body)),
        )
        .unwrap();
        let bin_dir = Path::new(BIN).parent().unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .current_dir(&self.work)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    bin_dir.display()
                ),
            )
            .env("HOME", self.root.path().join("home"))
            .env("TOKENFILE", &self.file)
            .env("TOKEN", &self.token)
            .env("MANPAGER", "cat")
            .env("LC_ALL", "C.UTF-8")
            .process_group(0);
        cmd
    }
}

/// A child in its own process group; the whole group is killed when dropped, so a block's
/// background jobs (`serve &`) never outlive the test.
struct Group(Child);

impl Group {
    fn signal(&self, signal: Signal) {
        let _ = send_signal(-(self.0.id() as i32), signal);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_block(fx: &Fixture, block: &Block) -> Ran {
    let (out, err) = (fx.root.path().join("stdout"), fx.root.path().join("stderr"));
    // Files, not pipes: a background job keeps a pipe open after bash exits.
    let mut cmd = fx.bash(block);
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut group = Group(cmd.spawn().expect("start bash"));
    let end = Instant::now() + BLOCK_TIMEOUT;
    let code = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= end {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(group);
    Ran {
        code,
        stdout: fs::read_to_string(out).unwrap_or_default(),
        stderr: fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Runs a shell block and checks it exits 0 and prints its `#>` lines in order.
fn assert_block_runs(fx: &Fixture, block: &Block) {
    let ran = run_block(fx, block);
    let report = || {
        format!(
            "{} exited {:?} (None: hung, killed)\n--- block ---\n{}--- stdout ---\n{}--- stderr ---\n{}",
            block.name(),
            ran.code,
            fx.substitute(&block.body),
            ran.stdout,
            ran.stderr
        )
    };
    assert_eq!(ran.code, Some(0), "{}", report());
    let mut printed = ran.stdout.lines().map(str::trim);
    for expected in fx.substitute(&block.body).lines() {
        if let Some(want) = expected.trim().strip_prefix("#> ") {
            assert!(
                printed.any(|line| line == want),
                "{} should print {want:?} (in this order):\n{}",
                block.name(),
                report()
            );
        }
    }
    assert!(
        !ran.stdout.contains(&fx.token) && !ran.stderr.contains(&fx.token),
        "{} shows the fixture token",
        block.name()
    );
}

#[test]
fn every_block_is_exercised() {
    let ci = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    let all = blocks();
    assert!(all.len() > 15, "README.md lost its examples?");
    // The README starts with the two commands of a fresh clone; .ci/run runs them.
    assert_eq!(all[0].info, "sh ci");
    assert!(all[0].body.contains("cargo test --locked") && all[0].body.contains("check"));
    assert!(
        ci.contains("```sh ci"),
        ".ci/run must run the ```sh ci blocks"
    );
    for block in &all {
        let (lang, kind) = block.info.split_once(' ').unwrap_or((&block.info, ""));
        match (lang, kind) {
            ("sh", "" | "ci" | "serve" | "long-running" | "nginx" | "routes-serve") => {}
            ("nginx" | "caddyfile" | "routes", "")
            | ("nginx", "routes")
            | ("yaml", "traefik" | "traefik-static" | "prometheus" | "envoy") => {}
            ("json", "check" | "mint" | "rotate" | "list" | "lint" | "healthz" | "audit") => {}
            ("sh", "no-run") => assert!(
                NOT_RUN.iter().any(|(key, _)| block.body.contains(key)),
                "{} is not run: add what covers it to NOT_RUN",
                block.name()
            ),
            ("text", "") => {
                for line in block.body.lines() {
                    assert!(
                        !line.starts_with("tokenfile ") && !line.starts_with("$ "),
                        "{} holds a command that nothing runs: {line}",
                        block.name()
                    );
                }
            }
            _ => panic!(
                "{}: unknown kind of block; see tests/it/readme.rs for the kinds",
                block.name()
            ),
        }
    }
}

#[test]
fn shell_blocks_run() {
    let plain = blocks_of("sh");
    assert!(plain.len() >= 7, "{plain:?}");
    for block in plain {
        let missing = missing_tools(&block.body);
        if !missing.is_empty() {
            eprintln!("SKIPPED {}: {missing:?} not installed", block.name());
            continue;
        }
        assert_block_runs(&Fixture::new(), &block);
    }
}

#[test]
fn socket_block_talks_to_a_running_serve() {
    for block in blocks_of("sh serve") {
        let missing = missing_tools(&block.body);
        if !missing.is_empty() {
            eprintln!("SKIPPED {}: {missing:?} not installed", block.name());
            continue;
        }
        let fx = Fixture::new();
        let serve = Serve::start(
            &fx.file,
            &fx.root.path().join("run/tokenfile"),
            Listen::Both,
        );
        let socket = serve.socket.clone().unwrap();
        let readme_socket = format!("{}/run/tokenfile/tokenfile.sock", fx.root());
        std::os::unix::fs::symlink(&socket, &readme_socket).unwrap();
        assert_block_runs(&fx, &block);
    }
}

#[test]
fn serve_block_starts_and_stops_cleanly() {
    let block = the_block("sh long-running");
    let fx = Fixture::new();
    let mut cmd = fx.bash(&block);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let group = Group(cmd.spawn().unwrap());
    let socket = fx.root.path().join("run/tokenfile/tokenfile.sock");
    eventually(
        "the README's serve command answers /healthz",
        PATIENCE,
        || TcpStream::connect(fx.serve_port).is_ok(),
    );
    let health = http(fx.serve_port, "GET", "/healthz", &[]);
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        socket.exists(),
        "serve should listen on the README's socket"
    );
    // SIGTERM to the group reaches bash too, which dies of it; serve's clean exit shows in
    // its socket being removed and its port closed.
    group.signal(Signal::SIGTERM);
    eventually(
        "serve stops on SIGTERM and removes its socket",
        PATIENCE,
        || !socket.exists() && TcpStream::connect(fx.serve_port).is_err(),
    );
}

/// Stops the nginx that a block started as a daemon (its own session: not in the group).
struct NginxPid(PathBuf);

impl Drop for NginxPid {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(&self.0)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // The nginx master our block started.
            let _ = send_signal(pid, Signal::SIGTERM);
        }
    }
}

#[test]
fn nginx_walkthrough_protects_a_page() {
    let block = the_block("sh nginx");
    let missing = missing_tools(&block.body);
    if !missing.is_empty() {
        eprintln!("SKIPPED {}: {missing:?} not installed", block.name());
        return;
    }
    let fx = Fixture::new();
    let config = fx.substitute(&the_block("nginx").body);
    fs::write(fx.work.join("nginx.conf"), config).unwrap();
    let _nginx = NginxPid(fx.work.join("nginx.pid"));
    // The walkthrough curls the page with and without the token (200, 401: its #> lines).
    assert_block_runs(&fx, &block);
}

/// The `tokenfile_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tokenfile_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn prometheus_rules_use_documented_metrics() {
    let table = README
        .split("### Metrics")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("README has a Metrics section");
    let documented = metric_names(table);
    let blocks = blocks_of("yaml prometheus");
    assert!(!blocks.is_empty(), "README lost its alert rules");
    for block in blocks {
        let used = metric_names(&block.body);
        assert!(!used.is_empty(), "{} names no metric", block.name());
        let undocumented: Vec<_> = used.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "{} uses metrics the Metrics table does not document: {undocumented:?}",
            block.name()
        );
    }
}

/// Caddy's `copy_headers` leaves a client's copy of a header in place when the auth answer
/// lacks it (GHSA-7r4p-vjf4-gxv4): the recipe copies the headers `serve` sends on every grant,
/// and strips their underscore aliases.
#[test]
fn caddy_block_copies_only_headers_serve_always_sends() {
    let site = the_block("caddyfile").body;
    let copied: BTreeSet<String> = site
        .lines()
        .find_map(|l| l.trim().strip_prefix("copy_headers"))
        .expect("copy_headers")
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let always = BTreeSet::from([
        "x-token-id".to_string(),
        "x-token-name".to_string(),
        "x-token-expires".to_string(),
    ]);
    assert_eq!(copied, always);
    assert!(site.contains("header_up -X_Token_*"), "{site}");
}

/// Same keys everywhere (arrays compared by their first element); `null` matches any type.
fn same_shape(sample: &Value, real: &Value, at: &str) -> Result<(), String> {
    match (sample, real) {
        (Value::Null, _) | (_, Value::Null) => Ok(()),
        (Value::Object(s), Value::Object(r)) => {
            let (sk, rk): (BTreeSet<_>, BTreeSet<_>) = (s.keys().collect(), r.keys().collect());
            if sk != rk {
                return Err(format!("{at}: sample keys {sk:?}, real keys {rk:?}"));
            }
            s.iter()
                .try_for_each(|(k, v)| same_shape(v, &r[k], &format!("{at}.{k}")))
        }
        (Value::Array(s), Value::Array(r)) => match (s.first(), r.first()) {
            (Some(s), Some(r)) => same_shape(s, r, &format!("{at}[0]")),
            _ => Ok(()),
        },
        (s, r) if std::mem::discriminant(s) == std::mem::discriminant(r) => Ok(()),
        (s, r) => Err(format!("{at}: sample {s}, real {r}")),
    }
}

fn run_json(fx: &Fixture, args: &[&str], stdin: &str) -> Value {
    let (code, stdout) = cli(&fx.file, args, stdin);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} exited {code}; stdout is not JSON ({e}): {stdout}"))
}

/// The real output a `json KIND` sample stands for.
fn real_json(kind: &str) -> Value {
    let fx = Fixture::new();
    let token = format!("{}\n", fx.token);
    match kind {
        "check" => run_json(&fx, &["check", "--scope", "write", "--json"], &token),
        "mint" => run_json(
            &fx,
            &[
                "mint",
                "--scope",
                "read,write",
                "--name",
                "ci",
                "--expires",
                "90d",
                "--json",
            ],
            "",
        ),
        "rotate" => run_json(&fx, &["rotate", &fx.id, "--grace", "24h", "--json"], ""),
        "list" => {
            let mut f = fs::OpenOptions::new().append(true).open(&fx.file).unwrap();
            f.write_all(b"bad\t\n").unwrap();
            run_json(&fx, &["list", "--json"], "")
        }
        "lint" => {
            let mut f = fs::OpenOptions::new().append(true).open(&fx.file).unwrap();
            f.write_all(b"plain-token\tread\n").unwrap();
            run_json(&fx, &["lint", "--json"], "")
        }
        "audit" => {
            // Under sudo, the audit line also names the invoking user.
            let status = run(
                tokenfile_command()
                    .arg("--file")
                    .arg(&fx.file)
                    .args(["mint", "--scope", "deploy", "--expires", "90d"])
                    .env("SUDO_USER", "bob"),
                None,
            )
            .status;
            assert!(status.success());
            let log = fs::read_to_string(format!("{}.audit.jsonl", fx.file.display())).unwrap();
            serde_json::from_str(log.lines().last().unwrap()).unwrap()
        }
        "healthz" => {
            let serve = Serve::start(&fx.file, fx.root.path(), Listen::Http);
            let r = serve.get("/healthz", &[]);
            serde_json::from_slice(&r.body).unwrap()
        }
        other => panic!("no real output known for json {other}"),
    }
}

#[test]
fn json_samples_have_the_shape_of_the_real_output() {
    let samples: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.info.starts_with("json"))
        .collect();
    assert!(samples.len() >= 7, "{samples:?}");
    for block in samples {
        let kind = block.info.trim_start_matches("json").trim();
        let sample: Value = serde_json::from_str(&block.body)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", block.name()));
        let real = real_json(kind);
        if let Err(e) = same_shape(&sample, &real, kind) {
            panic!(
                "{} does not match the real output: {e}\nreal: {real:#}",
                block.name()
            );
        }
    }
}

/// The names of the commands `--help` lists.
fn listed_commands() -> Vec<String> {
    use clap::CommandFactory;
    tokenfile::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

/// A rendered man page (`man -l`), or its roff source when `man` is not installed.
fn render_man_page(page: &Path) -> String {
    let Some(man) = find_tool("man") else {
        eprintln!("man is not installed: checking the roff source only");
        return fs::read_to_string(page).unwrap();
    };
    let out = Command::new(man)
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("NAME"),
        "man -l {page:?} failed: {out:?}"
    );
    text
}

#[test]
fn man_pages_render_and_document_every_command_and_its_options() {
    let fx = Fixture::new();
    let out = run(tokenfile_command().arg("man"), None);
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(roff.contains(".TH tokenfile"), "{roff}");
    let dir = fx.root.path().join("man1");
    fs::create_dir(&dir).unwrap();
    let out = run(tokenfile_command().args(["man", "--dir"]).arg(&dir), None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "the pages go into the directory: {out:?}"
    );
    // `tokenfile man` prints exactly the page `--dir` writes as tokenfile.1.
    assert_eq!(fs::read_to_string(dir.join("tokenfile.1")).unwrap(), roff);
    let main = render_man_page(&dir.join("tokenfile.1"));
    for heading in ["EXIT STATUS", "SECURITY", "--lock-timeout"] {
        assert!(
            main.contains(heading),
            "tokenfile(1) lacks {heading:?}:\n{main}"
        );
    }
    assert!(!main.contains("EXTRA"), "{main}");
    let commands = listed_commands();
    assert!(commands.len() >= 12, "{commands:?}");
    let mut cli = <tokenfile::cli::Cli as clap::CommandFactory>::command();
    cli.build();
    for command in commands {
        let reference = format!("tokenfile-{command}(1)");
        assert!(
            main.contains(&reference),
            "tokenfile(1) does not list {reference}"
        );
        let page = render_man_page(&dir.join(format!("tokenfile-{command}.1")));
        let sub = cli.find_subcommand(&command).unwrap();
        // Every option the command takes, its own and the global ones, is on its page.
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                assert!(
                    page.contains(&format!("--{long}")),
                    "tokenfile-{command}(1) does not document --{long}:\n{page}"
                );
            }
        }
    }
}

#[test]
fn bash_completion_is_valid_bash_and_knows_every_command() {
    let out = run(tokenfile_command().args(["completions", "bash"]), None);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        bash.wait().unwrap().success(),
        "bash -n rejects the completion script"
    );
    for command in listed_commands() {
        assert!(script.contains(&command), "completion lacks {command}");
    }
}

#[test]
fn expected_output_lines_are_checked() {
    // The `#>` check must be able to fail: a block that prints something else is caught.
    let fx = Fixture::new();
    let block = Block {
        line: 0,
        info: "sh".into(),
        body: "echo denied\n#> granted\n".into(),
    };
    let caught = std::panic::catch_unwind(|| assert_block_runs(&fx, &block));
    assert!(caught.is_err());
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown text's headings (outside code blocks).
fn anchors_of(text: &str) -> BTreeSet<String> {
    let mut in_block = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        in_block ^= line.starts_with("```");
        if !in_block && line.starts_with('#') {
            anchors.insert(slug(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// README.md and every page of docs/, by path relative to the repository.
fn documents() -> Vec<(PathBuf, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![(PathBuf::from("README.md"), README.to_string())];
    let mut pages: Vec<PathBuf> = fs::read_dir(repo.join("docs"))
        .expect("docs/ is in the repository")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    for page in pages {
        let text = fs::read_to_string(&page).unwrap();
        docs.push((page.strip_prefix(repo).unwrap().to_path_buf(), text));
    }
    docs
}

#[test]
fn links_point_at_headings_and_files_that_exist() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = documents();
    assert!(docs.len() >= 6, "README.md and the docs/ pages: {docs:?}");
    for (path, text) in &docs {
        let dir = path.parent().unwrap_or(Path::new(""));
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if target.contains("://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            // Inside the repository: a clone has nothing outside it (no ../shared/).
            let resolved = repo.join(&file);
            assert!(
                resolved.exists()
                    && resolved
                        .canonicalize()
                        .unwrap()
                        .starts_with(repo.canonicalize().unwrap()),
                "{}: the link {target} names no file of the repository",
                path.display()
            );
            if !anchor.is_empty() {
                let headings = anchors_of(&fs::read_to_string(&resolved).unwrap());
                assert!(
                    headings.contains(anchor),
                    "{}: no heading for the link {target}",
                    path.display()
                );
            }
        }
    }
    assert!(README.contains("](BENCHMARKS.md)") && README.contains("](RELIABILITY.md)"));
}

#[test]
fn the_docs_cite_only_what_a_clone_has() {
    // The repository carries its own reference: nothing may send a reader to a file that is
    // in no clone (the project's private contract lived at ../shared/SPEC.md).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = documents();
    for page in ["RELIABILITY.md", "BENCHMARKS.md"] {
        texts.push((
            PathBuf::from(page),
            fs::read_to_string(repo.join(page)).unwrap(),
        ));
    }
    let mut dirs = ["src", "tests", "examples", "bench", ".ci"]
        .map(|d| repo.join(d))
        .to_vec();
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let code = path.extension().is_some_and(|e| e == "rs" || e == "sh")
                || path.ends_with(".ci/run");
            if path.is_dir() {
                dirs.push(path);
            } else if code && !path.ends_with(file!()) {
                texts.push((path.clone(), fs::read_to_string(&path).unwrap()));
            }
        }
    }
    // The word SPEC (SPEC.md, SPEC §2, SPEC:), not a name that contains it (SUSPECT_LIMIT).
    let cites_spec = |line: &str| {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        line.match_indices("SPEC").any(|(i, _)| {
            !word(line[..i].chars().next_back()) && !word(line[i + 4..].chars().next())
        })
    };
    assert!(cites_spec("(SPEC §4)") && cites_spec("SPEC.md") && cites_spec("(SPEC: no"));
    assert!(!cites_spec("SUSPECT_LIMIT") && !cites_spec("SPECIAL"));
    for (path, text) in texts {
        for (n, line) in text.lines().enumerate() {
            assert!(
                !cites_spec(line),
                "{}:{}: cites SPEC, which no clone has; cite docs/ instead: {line}",
                path.display(),
                n + 1
            );
        }
    }
    // docs/ pages hold prose and grammars, not commands nothing runs (the README's run).
    for (path, text) in documents().into_iter().skip(1) {
        let mut info = None;
        for line in text.lines() {
            match (info.is_some(), line.strip_prefix("```")) {
                (false, Some(i)) => {
                    assert_eq!(
                        i,
                        "text",
                        "{}: a ```{i} block is run by nothing",
                        path.display()
                    );
                    info = Some(i.to_string());
                }
                (true, Some(_)) => info = None,
                _ => {}
            }
        }
    }
}
