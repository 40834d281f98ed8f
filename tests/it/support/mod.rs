//! The one support module of the integration tests: the binary's path, one runner with a
//! hang guard and a cleared environment, a temp dir with a token file, one bounded poll, one
//! lock holder, one temp-file lister, one figure reporter, an independent SHA-256 (the `sha2`
//! crate, not tokenfile's own digest) and a small independent reading of the docs/format.md
//! line grammar that the lossless tests use as their oracle.
//!
//! Every child process gets a generous hang guard (it is killed and the test fails); no test
//! asserts on speed.

pub(crate) mod fault;
pub(crate) mod fuzz;
pub(crate) mod serve;

use std::borrow::BorrowMut;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tokenfile");

/// The variables tokenfile reads, cleared from every child so that no test depends on the
/// caller's environment; a test that wants one sets it on the command.
const READ_FROM_ENV: &[&str] = &[
    "TOKENFILE",
    "TOKENFILE_AUDIT_LOG",
    "VISUAL",
    "EDITOR",
    "SUDO_USER",
    "RUST_LOG",
];

/// The binary with the variables it reads cleared; every test starts tokenfile from here.
pub(crate) fn tokenfile_command() -> Command {
    let mut cmd = Command::new(BIN);
    clear_env(&mut cmd);
    cmd
}

/// Clears what tokenfile reads from `cmd`'s environment, for a wrapper (strace, setpriv)
/// that starts [`BIN`] in turn.
pub(crate) fn clear_env(cmd: &mut Command) -> &mut Command {
    for name in READ_FROM_ENV {
        cmd.env_remove(name);
    }
    cmd
}

/// A child that runs longer than this is hung: it is killed and the test fails. This is a
/// guard against a stuck test, not an assertion on speed.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(90);

/// Exit codes of docs/exit-codes.md.
pub(crate) const OK: i32 = 0;
pub(crate) const FORBIDDEN: i32 = 1;
pub(crate) const USAGE: i32 = 2;
pub(crate) const UNAUTHORIZED: i32 = 3;
pub(crate) const NO_SUCH_ID: i32 = 4;
pub(crate) const PROBLEMS: i32 = 5;
pub(crate) const IO: i32 = 10;

/// What a finished `tokenfile` run produced.
pub(crate) struct Out {
    pub what: String,
    /// The exit code, or -1000 - the signal that ended the child.
    pub code: i32,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            self.out(),
            self.err()
        )
    }
}

impl Out {
    pub(crate) fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub(crate) fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Asserts the exit code, showing everything the command printed when it differs.
    #[track_caller]
    pub(crate) fn code(self, expected: i32) -> Self {
        assert_eq!(self.code, expected, "unexpected exit code: {self:?}");
        self
    }

    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        self.code(OK)
    }

    /// stdout as exactly one JSON document.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// Asserts that stderr mentions `needle`.
    #[track_caller]
    pub(crate) fn err_has(self, needle: &str) -> Self {
        assert!(
            self.err().contains(needle),
            "stderr should mention {needle:?}: {self:?}"
        );
        self
    }
}

/// A started child with its output being collected.
pub(crate) struct Running {
    what: String,
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    stdin: Option<JoinHandle<()>>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Starts `cmd` with piped stdout/stderr; stdin gets `stdin` then EOF, or is /dev/null.
pub(crate) fn spawn(cmd: impl BorrowMut<Command>, stdin: Option<&[u8]>) -> Running {
    start(cmd, stdin, None)
}

/// Runs `cmd` to completion with its stdout sent to `stdout` (a file, a closed pipe) rather
/// than collected.
pub(crate) fn run_to(cmd: impl BorrowMut<Command>, stdout: Stdio) -> Out {
    start(cmd, None, Some(stdout)).wait()
}

fn start(mut cmd: impl BorrowMut<Command>, stdin: Option<&[u8]>, stdout: Option<Stdio>) -> Running {
    let cmd = cmd.borrow_mut();
    let what = describe(cmd);
    let collect_stdout = stdout.is_none();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(stdout.unwrap_or_else(Stdio::piped))
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let stdin = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        // The child may exit without reading: a broken pipe here is not a failure.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let stdout = match child.stdout.take() {
        Some(pipe) => drain(pipe),
        None => {
            debug_assert!(!collect_stdout);
            thread::spawn(Vec::new)
        }
    };
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    Running {
        what,
        child,
        stdout,
        stderr,
        stdin,
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| -1000 - status.signal().unwrap_or(0))
}

impl Running {
    /// Whether the child has exited, without waiting.
    pub(crate) fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Sends `signal` to the child; one that has exited already is no failure.
    pub(crate) fn signal(&self, signal: Signal) {
        let _ = send_signal(self.child.id() as i32, signal);
    }

    /// Waits for the child (killing it after [`HANG_GUARD`]) and collects its output.
    pub(crate) fn wait(mut self) -> Out {
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`{}` hung for {HANG_GUARD:?}; killed", self.what);
            }
            thread::sleep(Duration::from_millis(2));
        };
        if let Some(writer) = self.stdin.take() {
            let _ = writer.join();
        }
        Out {
            what: self.what,
            code: exit_code(status),
            status,
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }
}

/// Runs `cmd` to completion.
pub(crate) fn run(cmd: impl BorrowMut<Command>, stdin: Option<&[u8]>) -> Out {
    spawn(cmd, stdin).wait()
}

/// A temp dir holding the token file `tokens` (not created by `new`).
pub(crate) struct Env {
    pub dir: TempDir,
    pub file: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tokenfile-test-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join("tokens");
        Env { dir, file }
    }

    /// An env whose file holds exactly `bytes`, mode 0600.
    pub(crate) fn with_bytes(bytes: &[u8]) -> Self {
        let env = Env::new();
        env.write(bytes);
        env
    }

    /// An env with a file made by `tokenfile init`.
    pub(crate) fn init() -> Self {
        let env = Env::new();
        env.tokenfile(&["init"]).ok();
        env
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn dir_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub(crate) fn file_str(&self) -> String {
        self.file.display().to_string()
    }

    /// The binary with `TOKENFILE` set to this env's file and the other variables it reads
    /// cleared, so the tests do not depend on the caller's environment.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = tokenfile_command();
        cmd.args(args)
            .env("TOKENFILE", &self.file)
            .current_dir(self.dir.path());
        cmd
    }

    pub(crate) fn tokenfile(&self, args: &[&str]) -> Out {
        run(self.command(args), None)
    }

    pub(crate) fn tokenfile_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        run(self.command(args), Some(stdin))
    }

    /// Mints a token with these extra arguments; returns the token printed on stdout.
    #[track_caller]
    pub(crate) fn mint(&self, args: &[&str]) -> String {
        let mut all = vec!["mint"];
        all.extend_from_slice(args);
        let out = self.tokenfile(&all).ok();
        let text = out.out();
        let token = text
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("mint output should end with a newline: {out:?}"));
        assert!(is_minted_shape(token), "not a minted token: {out:?}");
        token.to_string()
    }

    /// `check --scope …` with the token on stdin; returns the exit code.
    pub(crate) fn check(&self, token: &str, scopes: &[&str]) -> i32 {
        self.check_out(token, scopes).code
    }

    pub(crate) fn check_out(&self, token: &str, scopes: &[&str]) -> Out {
        let mut args = vec!["check"];
        for s in scopes {
            args.push("--scope");
            args.push(s);
        }
        self.tokenfile_stdin(&args, format!("{token}\n").as_bytes())
    }

    /// The ID `tokenfile id` prints for `token`.
    #[track_caller]
    pub(crate) fn id(&self, token: &str) -> String {
        let out = self
            .tokenfile_stdin(&["id"], format!("{token}\n").as_bytes())
            .ok();
        out.out().trim_end_matches('\n').to_string()
    }

    pub(crate) fn list_json(&self) -> serde_json::Value {
        self.tokenfile(&["list", "--json"]).ok().json()
    }

    /// Every record `list --json` shows, as JSON.
    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        self.list_json()["records"]
            .as_array()
            .expect("records array")
            .clone()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    }

    pub(crate) fn read(&self) -> Vec<u8> {
        fs::read(&self.file).expect("read the token file")
    }

    pub(crate) fn write(&self, bytes: &[u8]) {
        fs::write(&self.file, bytes).expect("write the token file");
        self.chmod(0o600);
    }

    pub(crate) fn chmod(&self, mode: u32) {
        fs::set_permissions(&self.file, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub(crate) fn mode(&self) -> u32 {
        fs::metadata(&self.file).expect("stat").mode() & 0o7777
    }

    pub(crate) fn audit_path(&self) -> PathBuf {
        self.path("tokens.audit.jsonl")
    }

    /// The audit log's lines, each parsed as JSON (none if there is no log).
    pub(crate) fn audit_lines(&self) -> Vec<serde_json::Value> {
        let Ok(text) = fs::read_to_string(self.audit_path()) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Names in the dir that look like temp files of a writer or an editing copy.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        leftovers_in(self.dir.path())
    }
}

/// Whether `lint --json` output `lint` has a finding that `matches`.
pub(crate) fn has_finding(
    lint: &serde_json::Value,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    lint["findings"]
        .as_array()
        .expect("lint --json has findings")
        .iter()
        .any(matches)
}

/// Names in `dir` that look like temp files of a writer (`.tmp-`) or an editing copy
/// (`.edit-`), sorted.
pub(crate) fn leftovers_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.contains(".tmp-") || n.contains(".edit-"))
        .collect();
    names.sort();
    names
}

/// `^tf_[A-Za-z0-9_-]+$`
pub(crate) fn is_minted_shape(token: &str) -> bool {
    token.len() > 3
        && token.starts_with("tf_")
        && token[3..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A record's ID as docs/format.md defines it: the first 12 hex digits of its token's SHA-256.
pub(crate) fn id_of(token: &[u8]) -> String {
    sha256_hex(token)[..12].to_string()
}

/// `sha256:<hex>` of a token, as `mint` stores it.
pub(crate) fn hashed(token: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(token))
}

/// Writes an executable `/bin/sh` script.
pub(crate) fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// What the heavy tests and the tests with a deadline share. As separate binaries the fault
/// suite, the fuzz targets and the serve tests ran one binary after another; in one binary
/// they would run side by side, and a test that loads both cores (a kill loop, strace, a
/// fuzz batch) could make a one-second reload deadline fail on a 2-core machine.
static MACHINE: RwLock<()> = RwLock::new(());

/// Taken by a test that loads the machine: it runs with no other such test and no
/// [`timed`] one beside it.
pub(crate) fn serial() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(PoisonError::into_inner)
}

/// Taken by a test with a deadline (a reload answered within a second): it may run beside
/// other tests, but not beside a [`serial`] one.
pub(crate) fn timed() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(PoisonError::into_inner)
}

/// kill(2): `pid`, or with a negative `pid` its process group.
pub(crate) fn send_signal(pid: i32, signal: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
}

/// Whether `unshare -r -m` gives a test its own user + mount namespace in which it may mount
/// a tmpfs (a full or read-only disk of its own); `Err` says why not.
pub(crate) fn mount_namespaces_work() -> Result<(), String> {
    let probe = Command::new("unshare")
        .args([
            "-r",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs \"$0\"",
            "/tmp",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`unshare -r -m` + tmpfs mount failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `probe` every few milliseconds until it returns true; panics after `within`.
pub(crate) fn eventually(what: &str, within: Duration, mut probe: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    loop {
        if probe() {
            return;
        }
        if Instant::now() >= end {
            panic!("{what}: not within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// An exclusive lock on a file (the writers' `<file>.lock`), held until dropped: closing the
/// file releases it.
pub(crate) struct HeldLock {
    _file: fs::File,
}

/// Takes the exclusive lock on `path` (creating the file), failing the test if someone else
/// holds it.
#[track_caller]
pub(crate) fn hold_lock(path: &Path) -> HeldLock {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open lock file {}: {e}", path.display()));
    if let Err(e) = file.try_lock() {
        panic!("could not take {}: {e}", path.display());
    }
    HeldLock { _file: file }
}

/// Whether nobody holds the lock on `path`: taking it without waiting succeeds.
pub(crate) fn lock_is_free(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        // No lock file at all: nobody can be holding it.
        return true;
    };
    // Closing `file` releases the lock again if we got it.
    file.try_lock().is_ok()
}

/// Prints a figure line (`cargo test -- --nocapture` or `--show-output` shows it) and
/// appends it to `$TOKENFILE_FAULT_REPORT` when set (.ci/run collects them).
pub(crate) fn report(line: &str) {
    println!("{line}");
    if let Ok(path) = std::env::var("TOKENFILE_FAULT_REPORT")
        && let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

pub(crate) fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[track_caller]
pub(crate) fn parse_time(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// Asserts that `haystack` contains none of `secrets`.
#[track_caller]
pub(crate) fn assert_no_secret(haystack: &[u8], secrets: &[&[u8]], where_: &str) {
    for secret in secrets {
        assert!(
            !secret.is_empty() && !haystack.windows(secret.len()).any(|w| w == *secret),
            "{where_} leaks the secret {:?}:\n{}",
            String::from_utf8_lossy(secret),
            String::from_utf8_lossy(haystack)
        );
    }
}

// --- An independent reading of the docs/format.md grammar, the oracle of the lossless tests. ---

pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line of a file: its content (without the ending, and without the BOM on line 1) and
/// its ending (`\n`, `\r\n` or nothing for a last line without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawLine {
    pub content: Vec<u8>,
    pub ending: &'static [u8],
}

/// Splits a file into lines; `(bom, lines)`.
pub(crate) fn split_lines(bytes: &[u8]) -> (bool, Vec<RawLine>) {
    let (bom, mut rest) = match bytes.strip_prefix(BOM) {
        Some(rest) => (true, rest),
        None => (false, bytes),
    };
    let mut lines = Vec::new();
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = &rest[..end];
                lines.push(match line.strip_suffix(b"\r") {
                    Some(content) => RawLine {
                        content: content.to_vec(),
                        ending: b"\r\n",
                    },
                    None => RawLine {
                        content: line.to_vec(),
                        ending: b"\n",
                    },
                });
                rest = &rest[end + 1..];
            }
            None => {
                lines.push(RawLine {
                    content: rest.to_vec(),
                    ending: b"",
                });
                rest = &[];
            }
        }
    }
    (bom, lines)
}

pub(crate) fn join_lines(bom: bool, lines: &[RawLine]) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(BOM);
    }
    for line in lines {
        out.extend_from_slice(&line.content);
        out.extend_from_slice(line.ending);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Blank,
    Comment,
    /// A valid record whose credential is the token itself.
    Plain(Vec<u8>),
    /// A valid record with a `sha256:` credential.
    Hashed,
    Invalid,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

fn scopes_ok(field: &[u8]) -> bool {
    let items: Vec<&[u8]> = field.split(|&b| b == b',').map(trim_spaces).collect();
    if items.iter().any(|i| i.is_empty()) {
        return false; // also covers an empty field
    }
    let grammar = items.iter().all(|item| {
        item.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"_.:*-".contains(&b))
    });
    let star_alone = items.len() == 1 || !items.iter().any(|i| *i == b"*");
    grammar && star_alone
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    s
}

fn time_ok(field: &[u8]) -> bool {
    field.is_empty()
        || std::str::from_utf8(field).is_ok_and(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
        })
}

/// Classifies one line's content by docs/format.md.
pub(crate) fn classify(content: &[u8]) -> Kind {
    if content.first() == Some(&b'#') {
        return Kind::Comment;
    }
    if content.iter().all(|&b| b == b' ' || b == b'\t') {
        return Kind::Blank;
    }
    let fields: Vec<&[u8]> = content.split(|&b| b == b'\t').collect();
    let credential = fields[0];
    let valid = fields.len() <= 5
        && !credential.is_empty()
        && !credential.iter().copied().any(is_space)
        && fields.get(1).is_none_or(|s| scopes_ok(s))
        && fields.get(3).is_none_or(|t| time_ok(t))
        && fields.get(4).is_none_or(|t| time_ok(t));
    if !valid {
        return Kind::Invalid;
    }
    match credential.strip_prefix(b"sha256:") {
        Some(hex) if hex.len() == 64 && hex.iter().all(|b| b"0123456789abcdef".contains(b)) => {
            Kind::Hashed
        }
        Some(_) => Kind::Invalid,
        None => Kind::Plain(credential.to_vec()),
    }
}

/// What `hash` must make of a file: every plaintext record's credential field replaced by
/// its `sha256:` form, every other byte kept.
pub(crate) fn expected_after_hash(bytes: &[u8]) -> Vec<u8> {
    let (bom, mut lines) = split_lines(bytes);
    for line in &mut lines {
        if let Kind::Plain(token) = classify(&line.content) {
            let rest = &line.content[token.len()..];
            let mut content = hashed(&token).into_bytes();
            content.extend_from_slice(rest);
            line.content = content;
        }
    }
    join_lines(bom, &lines)
}

/// 1-based numbers of the invalid lines of a file.
pub(crate) fn invalid_line_numbers(bytes: &[u8]) -> Vec<usize> {
    let (_, lines) = split_lines(bytes);
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| classify(&l.content) == Kind::Invalid)
        .map(|(i, _)| i + 1)
        .collect()
}

/// The line ending a file's new lines get: its first line's ending, else `\n`.
pub(crate) fn file_ending(bytes: &[u8]) -> &'static [u8] {
    let (_, lines) = split_lines(bytes);
    lines
        .iter()
        .map(|l| l.ending)
        .find(|e| !e.is_empty())
        .unwrap_or(b"\n")
}

/// What a file looks like once a line has been appended and removed again: the same bytes,
/// except that a last line without an ending gets the file's ending.
pub(crate) fn with_final_ending(bytes: &[u8]) -> Vec<u8> {
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let mut out = bytes.to_vec();
    if body.ends_with(b"\r") {
        // An LF after a lone CR would turn it into a CRLF ending and change what the last
        // line says, so tokenfile ends such a line with CRLF whatever the file's style.
        out.extend_from_slice(b"\r\n");
    } else if !body.is_empty() && !body.ends_with(b"\n") {
        out.extend_from_slice(file_ending(bytes));
    }
    out
}

/// Whether `probe` holds within `within` (polled every 10 ms): [`eventually`] for a test that
/// reports the failure itself.
pub(crate) fn within(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// RFC 3339 to the second, as the tool writes times.
pub(crate) fn stamp(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// [`stamp`] of `days` days ago.
pub(crate) fn days_ago(days: i64) -> String {
    stamp(now() - time::Duration::days(days))
}
