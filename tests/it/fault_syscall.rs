//! Fault 8, every system call fails in turn (RELIABILITY.md), in SQLite's manner: for each
//! writing command — `init`, `mint`, `revoke`, `rotate`, `hash`, `edit` — every `openat`,
//! `write`, `fsync`, `fdatasync`, `rename`/`renameat`/`renameat2`, `fchmod`, `fchown` (and
//! `writev`, `pwrite64`, `linkat`, `fsetxattr` once the binary makes them) is failed in turn
//! with `strace --inject=SYSCALL:error=EIO:when=N`, N = 1 up to the number of such calls an
//! uninjected run makes (counted first, with the same trace). Then the same with ENOSPC.
//!
//! Every run must leave (docs/writing.md, §5):
//! - the token file byte-identical to before, or fully changed (exactly the change asked
//!   for) with the audit log grown by the matching line (event and IDs);
//! - a non-zero exit exactly when nothing changed;
//! - no temp file of the atomic replace (`.tokens.tmp-*`) nor an editing copy
//!   (`.tokens.edit-*`) — except the copy a failed `edit` keeps on purpose and names on
//!   stderr, so that the admin's work is not lost (tests/it/cli_edit.rs);
//! - for `mint` and `rotate`: on exit 0 the token on stdout, and a changed file stores that
//!   very token (its SHA-256, computed with `sha2` by the support module);
//! - when the log holds the line of a change that then failed, a second line after it
//!   (docs/writing.md: "a change that then fails gets a second line saying so").
//!
//! And the uninjected run of each command, the one that counts the calls, must show the
//! order docs/writing.md and §2 name: the audit line written and synced, and for `mint`/`rotate` the
//! token written to stdout, before the temp file is renamed over the token file.
//!
//! **A fault on the audit log itself** (its `openat`, `write` or sync). docs/writing.md says both "a
//! failure to write the audit log is a warning on stderr, never a lost change" and "no
//! change lands without its audit line, even across kill -9: the line is written and synced
//! before the new file is renamed into place". The first sentence is the rule for exactly
//! this case, a log that cannot be written; the second is about order (a crash between the
//! two steps), and it holds whenever the log can be written. Refusing the change would lose
//! it, which the first sentence forbids, and tests/it/cli_audit.rs already asserts that an
//! unwritable log is a warning and the change lands. So here: when the injected call is one
//! on the audit log, the change must still land (exit 0, file changed) and stderr must carry
//! a warning naming the log; only then may its line be missing (a failed `write`) or present
//! but not synced (a failed sync).
//!
//! `edit` is traced without `-f`: strace counts injections per syscall *and per tracee*, so
//! under `-f` `when=1` would also fail the first `openat` of the shell and of every program
//! in the editor script — a test of a broken editor, not of tokenfile (`edit` starts no
//! thread of its own). The other commands are traced with `-f` (mint and rotate scan the
//! file in a second thread; it makes none of these calls, so per-tracee counting changes
//! nothing there).
//!
//! Sizes: CI (`cargo test`) fails every call of every command with EIO and with ENOSPC, on
//! a small file (about 310 runs, a few seconds: each run is one short process);
//! `TOKENFILE_FAULT_SCALE=full` adds EDQUOT and repeats everything on a file of 3 000
//! records, whose copy takes several `write` calls. Prints `fault syscall COMMAND: runs=… changed=… unchanged=…
//! failures=…` per command and a total line; skipped, saying so, without a working strace.
//!
//! Today's code (2026-12-02, `ea352ba`, before the write-path fixes) fails 90 of the CI
//! checks, each case below with EIO and with ENOSPC ("#N": the Nth call of that kind); they
//! are what the fixes must turn green (RELIABILITY.md, "Every system call fails in turn"):
//! - order, every command: the audit line is written after the rename; mint and rotate
//!   also print the token after it (8 problems in the uninjected runs);
//! - the directory's `openat` after the rename (init #9, mint/revoke/rotate/hash #10,
//!   edit #13) and `fsync` #2 (the directory's): the file changed, yet exit 10; init,
//!   revoke, hash and edit then write no audit line at all, mint and rotate stored a token
//!   that was never shown, and edit says "was not changed" and keeps a copy of the edit it
//!   installed;
//! - mint and rotate `write` #3, the token to stdout: the token is stored, nothing shown,
//!   exit 10;
//! - the `write`s to stderr after the change (init, revoke, hash #3–5; edit #4–6; mint
//!   #4–9; rotate #4–12): `eprintln!` panics, exit 101 with the file changed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{BIN, clear_env, id_of, is_root, leftovers_in, report, sha256_hex};

/// The calls that are failed in turn (a call the binary never makes gets no run).
const SYSCALLS: &[&str] = &[
    "openat",
    "write",
    "writev",
    "pwrite64",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "linkat",
    "fchmod",
    "fchown",
    "fsetxattr",
];

/// The errors injected: an I/O error and a full disk in CI; in the full run a full quota
/// too, which error handling written for ENOSPC easily forgets.
const ERRNOS_CI: &[&str] = &["EIO", "ENOSPC"];
const ERRNOS_FULL: &[&str] = &["EIO", "ENOSPC", "EDQUOT"];

/// A run that takes longer than this is stopped and counted as a failure.
const RUN_LIMIT: Duration = Duration::from_secs(60);

const ALPHA: &str = "alpha-plaintext-token-for-the-syscall-faults";
const BETA: &str = "beta-plaintext-token-for-the-syscall-faults";
const GAMMA: &str = "gamma-plaintext-token-for-the-syscall-faults";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cmd {
    Init,
    Mint,
    Revoke,
    Rotate,
    Hash,
    Edit,
}

impl Cmd {
    const ALL: [Cmd; 6] = [
        Cmd::Init,
        Cmd::Mint,
        Cmd::Revoke,
        Cmd::Rotate,
        Cmd::Hash,
        Cmd::Edit,
    ];

    fn name(self) -> &'static str {
        match self {
            Cmd::Init => "init",
            Cmd::Mint => "mint",
            Cmd::Revoke => "revoke",
            Cmd::Rotate => "rotate",
            Cmd::Hash => "hash",
            Cmd::Edit => "edit",
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Cmd::Init => vec!["init".into()],
            Cmd::Mint => vec![
                "mint".into(),
                "--scope".into(),
                "fault".into(),
                "--name".into(),
                "minted".into(),
            ],
            Cmd::Revoke => vec!["revoke".into(), id_of(ALPHA.as_bytes())],
            Cmd::Rotate => vec!["rotate".into(), id_of(BETA.as_bytes())],
            Cmd::Hash => vec!["hash".into()],
            Cmd::Edit => vec!["edit".into()],
        }
    }

    /// Whether strace follows children and threads (see the module comment for `edit`).
    fn follow(self) -> bool {
        self != Cmd::Edit
    }

    fn issues_token(self) -> bool {
        matches!(self, Cmd::Mint | Cmd::Rotate)
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    cmd: Cmd,
    /// Extra hashed records in the file (0 in CI; the full run adds a large file).
    extra: usize,
}

impl Scenario {
    fn label(&self) -> String {
        match self.extra {
            0 => self.cmd.name().to_string(),
            n => format!("{} ({n} records)", self.cmd.name()),
        }
    }
}

fn hashed_line(token: &str, scopes: &str, name: &str) -> String {
    format!(
        "sha256:{}\t{scopes}\t{name}\t2026-01-01T00:00:00Z\n",
        sha256_hex(token.as_bytes())
    )
}

/// The token file every scenario but `init` starts from: two hashed records, one
/// plaintext (for `hash`), and `extra` more hashed ones.
fn original(extra: usize) -> Vec<u8> {
    let mut text = String::from("# syscall faults\n");
    text.push_str(&hashed_line(ALPHA, "read", "alpha"));
    text.push_str(&hashed_line(BETA, "write", "beta"));
    text.push_str(&format!("{GAMMA}\tread,write\tgamma\n"));
    for i in 0..extra {
        text.push_str(&hashed_line(
            &format!("extra-{i}"),
            "read",
            &format!("extra-{i}"),
        ));
    }
    text.into_bytes()
}

/// What `edit`'s editor script writes: alpha gets a second scope.
fn edited(extra: usize) -> Vec<u8> {
    let text = String::from_utf8(original(extra)).unwrap();
    let from = hashed_line(ALPHA, "read", "alpha");
    text.replacen(&from, &hashed_line(ALPHA, "read,admin", "alpha"), 1)
        .into_bytes()
}

const EARLIER_AUDIT: &[u8] =
    b"{\"event\":\"mint\",\"ids\":[\"000000000000\"],\"note\":\"earlier\"}\n";

/// One run's directory: `work/` holds the token file and its sidecars, nothing else.
struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    fn new(scenario: Scenario) -> RunDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = RunDir { dir };
        fs::create_dir(run.work()).unwrap();
        if scenario.cmd != Cmd::Init {
            let file = run.file();
            fs::write(&file, original(scenario.extra)).unwrap();
            // Group-readable and of another group, as for a `serve` running as its own
            // group: the copy then needs its fchown and its fchmod.
            fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
            if is_root() {
                std::os::unix::fs::chown(&file, Some(0), Some(65534)).unwrap();
            }
            fs::write(run.work().join("tokens.lock"), b"").unwrap();
            fs::write(run.audit(), EARLIER_AUDIT).unwrap();
            for sidecar in [run.work().join("tokens.lock"), run.audit()] {
                fs::set_permissions(sidecar, fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        if scenario.cmd == Cmd::Edit {
            fs::write(run.dir.path().join("edited"), edited(scenario.extra)).unwrap();
            let script = run.dir.path().join("editor.sh");
            fs::write(
                &script,
                format!(
                    "#!/bin/sh\ncat '{}' >\"$1\"\n",
                    run.dir.path().join("edited").display()
                ),
            )
            .unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        }
        run
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn file(&self) -> PathBuf {
        self.work().join("tokens")
    }

    fn audit(&self) -> PathBuf {
        self.work().join("tokens.audit.jsonl")
    }

    fn trace(&self) -> PathBuf {
        self.dir.path().join("trace")
    }
}

struct RunOutput {
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: String,
    trace: String,
}

impl RunOutput {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    fn exit_text(&self) -> String {
        match self.status {
            None => format!("no exit within {} s", RUN_LIMIT.as_secs()),
            Some(s) => match s.code() {
                Some(code) => format!("exit {code}"),
                None => format!("{s}"),
            },
        }
    }
}

/// Runs the scenario's command under strace: traced calls `trace`, and `inject` failed.
fn run_traced(run: &RunDir, scenario: Scenario, trace: &str, inject: Option<String>) -> RunOutput {
    let out_path = run.dir.path().join("stdout");
    let err_path = run.dir.path().join("stderr");
    let mut cmd = Command::new("strace");
    if scenario.cmd.follow() {
        cmd.arg("-f");
    }
    cmd.args(["-qq", "-y", "-s", "8", "-o"])
        .arg(run.trace())
        .args(["-e", &format!("trace={trace}")]);
    if let Some(inject) = inject {
        cmd.arg(format!("--inject={inject}"));
    }
    cmd.arg("--")
        .arg(BIN)
        .arg("--file")
        .arg(run.file())
        .args(["--lock-timeout", "5s"])
        .args(scenario.cmd.args())
        .current_dir(run.dir.path());
    clear_env(&mut cmd)
        // cargo's search path would make the loader try dozens of directories: a user's
        // run opens only its libraries. No backtrace either: a panic's message suffices.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_BACKTRACE")
        .env("EDITOR", run.dir.path().join("editor.sh"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("start strace");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for strace") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    RunOutput {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
        trace: fs::read_to_string(run.trace()).unwrap_or_default(),
    }
}

/// One line of an `strace -o FILE [-f] -y` trace.
struct Call<'a> {
    pid: &'a str,
    name: &'a str,
    line: &'a str,
}

fn calls(trace: &str) -> impl Iterator<Item = Call<'_>> {
    trace.lines().filter_map(|line| {
        // "1234  name(args) = result" under -f, "name(args) = result" without; a
        // "<... name resumed>" line is the end of a call already counted.
        let rest = line.trim_start_matches(|c: char| c.is_ascii_digit());
        let pid = &line[..line.len() - rest.len()];
        let rest = rest.trim_start();
        let open = rest.find('(')?;
        let name = &rest[..open];
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then_some(Call {
                pid,
                name,
                line: rest,
            })
    })
}

/// The most calls of each name one tracee made (strace counts `when=` per tracee).
fn count_calls(trace: &str) -> BTreeMap<String, usize> {
    let mut per_tracee: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for call in calls(trace) {
        *per_tracee.entry((call.pid, call.name)).or_default() += 1;
    }
    let mut most = BTreeMap::new();
    for ((_, name), n) in per_tracee {
        let entry = most.entry(name.to_string()).or_insert(0);
        *entry = (*entry).max(n);
    }
    most
}

/// The path a traced call works on, as `-y` shows it: the first `fd<path>`, or for the
/// calls that take a path (`openat`, a rename, `linkat`) the first path given.
fn call_path<'a>(call: &Call<'a>) -> &'a str {
    let line = call.line;
    let takes_path =
        call.name == "openat" || call.name.starts_with("rename") || call.name == "linkat";
    if takes_path
        && let Some(start) = line.find('"')
        && let Some(len) = line[start + 1..].find('"')
    {
        return &line[start + 1..start + 1 + len];
    }
    match (line.find('<'), line.find('>')) {
        (Some(a), Some(b)) if a < b => &line[a + 1..b],
        _ => "",
    }
}

/// The first argument's fd number, if any.
fn call_fd(call: &Call) -> Option<u32> {
    let args = &call.line[call.name.len() + 1..];
    let digits: String = args.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a traced call works on, in words.
fn target(call: &Call, run_dir: &Path) -> String {
    if call.name.starts_with("write") || call.name == "pwrite64" {
        match call_fd(call) {
            Some(1) => return "stdout".into(),
            Some(2) => return "stderr".into(),
            _ => {}
        }
    }
    let path = call_path(call);
    let work = run_dir.join("work");
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if Path::new(path) == work {
        "directory".into()
    } else if name.starts_with(".tokens.tmp-") {
        "temp file".into()
    } else if name.starts_with(".tokens.edit-") {
        "editing copy".into()
    } else if name == "tokens.audit.jsonl" {
        "audit log".into()
    } else if name == "tokens.lock" {
        "lock file".into()
    } else if name == "tokens" {
        "token file".into()
    } else {
        path.to_string()
    }
}

/// A record line's fields.
fn fields(line: &str) -> Vec<&str> {
    line.strip_suffix('\n')
        .unwrap_or(line)
        .split('\t')
        .collect()
}

/// What the command was asked to do, as the file and the audit log must show it once it
/// landed: the event and its IDs.
struct Change {
    event: &'static str,
    ids: Vec<String>,
}

/// If `after` is exactly the change the scenario asks for, the change; else why not.
fn landed(
    scenario: Scenario,
    reference: &[u8],
    after: Option<&[u8]>,
    printed: Option<&str>,
) -> Result<Change, String> {
    let after = after.ok_or("the token file is gone")?;
    let before = original(scenario.extra);
    let exact = |event: &'static str, ids: Vec<String>| {
        (after == reference)
            .then_some(Change { event, ids })
            .ok_or_else(|| "the token file is neither the old one nor the new one".to_string())
    };
    // The new record a mint or rotate appended to `kept`, checked against the token shown.
    let new_record = |kept: &[u8], scopes: &str, name: &str| -> Result<String, String> {
        let added = after
            .strip_prefix(kept)
            .ok_or("the token file is neither the old one nor the new one")?;
        let added = std::str::from_utf8(added).map_err(|_| "the new line is not UTF-8")?;
        if added.matches('\n').count() != 1 || !added.ends_with('\n') {
            return Err(format!("the token file did not gain one line: {added:?}"));
        }
        let f = fields(added);
        if f.len() < 4 || f[1] != scopes || f[2] != name {
            return Err(format!(
                "the token file gained an unexpected record: {added:?}"
            ));
        }
        let digest = f[0]
            .strip_prefix("sha256:")
            .ok_or("the new record is not hashed")?;
        let token = printed.ok_or("the file stores a new token that was never shown on stdout")?;
        if sha256_hex(token.as_bytes()) != digest {
            return Err("the stored record is not the token shown on stdout".into());
        }
        Ok(digest[..12].to_string())
    };
    match scenario.cmd {
        Cmd::Init => exact("init", Vec::new()),
        Cmd::Revoke => exact("revoke", vec![id_of(ALPHA.as_bytes())]),
        Cmd::Hash => exact("hash", vec![id_of(GAMMA.as_bytes())]),
        Cmd::Edit => exact("edit", vec![id_of(ALPHA.as_bytes())]),
        Cmd::Mint => Ok(Change {
            event: "mint",
            ids: vec![new_record(&before, "fault", "minted")?],
        }),
        Cmd::Rotate => {
            let text = String::from_utf8(before).unwrap();
            let kept = text.replacen(&hashed_line(BETA, "write", "beta"), "", 1);
            Ok(Change {
                event: "rotate",
                ids: vec![new_record(kept.as_bytes(), "write", "beta")?],
            })
        }
    }
}

/// The token a mint or rotate printed: its whole first line of stdout.
fn printed_token(stdout: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stdout).ok()?;
    let token = text.split_inclusive('\n').next()?.strip_suffix('\n')?;
    (!token.is_empty()).then(|| token.to_string())
}

/// The lines the audit log gained, parsed; or what is wrong with it.
fn audit_gained(before: &[u8], after: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let gained = after
        .strip_prefix(before)
        .ok_or("the audit log lost or changed earlier lines")?;
    let text = std::str::from_utf8(gained).map_err(|_| "an audit line that is not UTF-8")?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("a torn audit line: {text:?}"));
    }
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|_| format!("a garbled audit line: {l:?}")))
        .collect()
}

fn matches_change(line: &serde_json::Value, change: &Change) -> bool {
    line["event"] == change.event && line["ids"] == serde_json::json!(change.ids)
}

/// Leftover temp files; a failed edit's kept copy, named on stderr, is no leftover.
fn leftovers(work: &Path, out: &RunOutput) -> Vec<String> {
    leftovers_in(work)
        .into_iter()
        .filter(|name| {
            !(name.starts_with(".tokens.edit-")
                && out.code() != Some(0)
                && out.stderr.contains(name.as_str()))
        })
        .collect()
}

/// Whether the change landed, and what is wrong with the run.
struct Verdict {
    changed: bool,
    wrong: Vec<String>,
}

fn judge(scenario: Scenario, reference: &[u8], run: &RunDir, out: &RunOutput) -> Verdict {
    let mut wrong = Vec::new();
    let before = (scenario.cmd != Cmd::Init).then(|| original(scenario.extra));
    let after = fs::read(run.file()).ok();
    let printed = printed_token(&out.stdout);
    let injected = calls(&out.trace).find(|c| c.line.contains("(INJECTED)"));
    let on_audit_log = injected
        .as_ref()
        .is_some_and(|c| target(c, run.dir.path()) == "audit log");
    let same = after == before;
    let change = if same {
        None
    } else {
        match landed(scenario, reference, after.as_deref(), printed.as_deref()) {
            Ok(change) => Some(change),
            Err(why) => {
                wrong.push(why);
                None
            }
        }
    };
    let code = out.code();
    if !same && code != Some(0) {
        wrong.push(format!("changed, yet {}", out.exit_text()));
    }
    if same && code == Some(0) {
        wrong.push("exit 0, yet nothing changed".into());
    }
    if scenario.cmd.issues_token() && code == Some(0) && printed.is_none() {
        wrong.push("exit 0 without a token on stdout".into());
    }
    let audit_before = if scenario.cmd == Cmd::Init {
        &b""[..]
    } else {
        EARLIER_AUDIT
    };
    match audit_gained(audit_before, &fs::read(run.audit()).unwrap_or_default()) {
        Err(why) => wrong.push(why),
        Ok(gained) => {
            if let Some(change) = &change {
                if !gained.iter().any(|l| matches_change(l, change)) && !on_audit_log {
                    wrong.push(format!(
                        "changed without its audit line ({} {:?})",
                        change.event, change.ids
                    ));
                }
            } else if same
                && let Some(at) = gained
                    .iter()
                    .position(|l| l["event"] == scenario.cmd.name())
                && at + 1 == gained.len()
            {
                wrong.push(
                    "the audit log holds a change that failed, with no line saying so".into(),
                );
            }
        }
    }
    if on_audit_log && same {
        wrong.push(
            "the audit log could not be written and the change was refused (docs/writing.md: a \
             warning, never a lost change)"
                .into(),
        );
    }
    if on_audit_log && code == Some(0) {
        let log_name = "tokens.audit.jsonl";
        if !(out.stderr.contains("warning") && out.stderr.contains(log_name)) {
            wrong.push("the audit log could not be written, and no warning names it".into());
        }
    }
    let left = leftovers(&run.work(), out);
    if !left.is_empty() {
        wrong.push(format!("left behind: {}", left.join(", ")));
    }
    Verdict {
        changed: !same,
        wrong,
    }
}

/// The order docs/writing.md and §2 name, in the uninjected trace: the audit line written and
/// synced, and a minted token written to stdout, before the rename over the file.
fn check_order(scenario: Scenario, run_dir: &Path, trace: &str) -> Vec<String> {
    let calls: Vec<Call> = calls(trace).collect();
    let is_target = |c: &Call, what: &str| target(c, run_dir) == what;
    let Some(rename) = calls.iter().position(|c| {
        (c.name.starts_with("rename") || c.name == "linkat") && is_target(c, "temp file")
    }) else {
        return vec!["no rename of a temp file over the token file".into()];
    };
    let mut wrong = Vec::new();
    let audit_write = calls
        .iter()
        .position(|c| c.name.starts_with("write") && is_target(c, "audit log"));
    let audit_sync = calls
        .iter()
        .position(|c| c.name.contains("sync") && is_target(c, "audit log"));
    match (audit_write, audit_sync) {
        (None, _) => wrong.push("the audit line is never written".into()),
        (Some(w), _) if w > rename => {
            wrong.push("the audit line is written after the rename".into());
        }
        (_, None) => wrong.push("the audit log is never synced".into()),
        (_, Some(s)) if s > rename => wrong.push("the audit log is synced after the rename".into()),
        _ => {}
    }
    if scenario.cmd.issues_token() {
        match calls
            .iter()
            .position(|c| c.name.starts_with("write") && is_target(c, "stdout"))
        {
            None => wrong.push("the token is never written to stdout".into()),
            Some(w) if w > rename => wrong.push("the token is printed after the rename".into()),
            _ => {}
        }
    }
    wrong
}

/// One injected run.
#[derive(Clone)]
struct Case {
    scenario: Scenario,
    syscall: &'static str,
    errno: &'static str,
    n: usize,
}

struct Outcome {
    case: Case,
    changed: bool,
    /// What the injected call was working on ("not reached" when it never came).
    target: String,
    wrong: Vec<String>,
}

#[derive(Default)]
struct Figures {
    runs: usize,
    changed: usize,
    unchanged: usize,
    failures: usize,
    per_call: BTreeMap<(&'static str, &'static str), usize>,
}

fn strace_works() -> Result<(), String> {
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "--inject=openat:error=EIO:when=60000",
            "true",
        ])
        .output()
        .map_err(|e| format!("strace is not installed ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "strace cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn every_failing_syscall_leaves_the_old_file_or_the_whole_change() {
    let _alone = crate::support::serial();
    if let Err(why) = strace_works() {
        report(&format!("fault syscall: SKIPPED ({why})"));
        return;
    }
    let full = std::env::var("TOKENFILE_FAULT_SCALE").is_ok_and(|v| v == "full");
    let started = Instant::now();
    let mut scenarios: Vec<Scenario> = Cmd::ALL
        .iter()
        .map(|&cmd| Scenario { cmd, extra: 0 })
        .collect();
    if full {
        scenarios.extend(
            Cmd::ALL
                .iter()
                .filter(|&&cmd| cmd != Cmd::Init)
                .map(|&cmd| Scenario { cmd, extra: 3000 }),
        );
    }
    let traced = SYSCALLS.join(",");

    // First the uninjected runs: how many calls of each kind, the bytes a landed change
    // leaves (for the commands whose result is not random), and the order of the steps.
    let mut cases = Vec::new();
    let mut references = Vec::new();
    let mut order_wrong = Vec::new();
    for (index, &scenario) in scenarios.iter().enumerate() {
        let run = RunDir::new(scenario);
        let out = run_traced(&run, scenario, &traced, None);
        assert_eq!(
            out.code(),
            Some(0),
            "the uninjected {} must work: {}",
            scenario.label(),
            out.stderr
        );
        let reference = fs::read(run.file()).unwrap();
        let verdict = judge(scenario, &reference, &run, &out);
        assert!(
            verdict.changed && verdict.wrong.is_empty(),
            "the uninjected {} must land cleanly: {:?} {}",
            scenario.label(),
            verdict.wrong,
            out.stderr
        );
        for why in check_order(scenario, run.dir.path(), &out.trace) {
            order_wrong.push(format!("{} (uninjected): {why}", scenario.label()));
        }
        references.push(reference);
        let counts = count_calls(&out.trace);
        for &syscall in SYSCALLS {
            let n = counts.get(syscall).copied().unwrap_or(0);
            for &errno in if full { ERRNOS_FULL } else { ERRNOS_CI } {
                for n in 1..=n {
                    cases.push((
                        index,
                        Case {
                            scenario,
                            syscall,
                            errno,
                            n,
                        },
                    ));
                }
            }
        }
    }

    // Then every injected run, two at a time.
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((index, case)) = cases.get(i).cloned() else {
                        break;
                    };
                    let run = RunDir::new(case.scenario);
                    let inject = format!("{}:error={}:when={}", case.syscall, case.errno, case.n);
                    let out = run_traced(&run, case.scenario, case.syscall, Some(inject));
                    let verdict = judge(case.scenario, &references[index], &run, &out);
                    let target = calls(&out.trace)
                        .find(|c| c.line.contains("(INJECTED)"))
                        .map_or_else(|| "not reached".into(), |c| target(&c, run.dir.path()));
                    let mut wrong = verdict.wrong;
                    if !wrong.is_empty() {
                        let stderr: Vec<&str> = out.stderr.lines().take(3).collect();
                        wrong.push(format!(
                            "{}; stderr: {}",
                            out.exit_text(),
                            stderr.join(" / ")
                        ));
                    }
                    outcomes.lock().unwrap().push(Outcome {
                        case,
                        changed: verdict.changed,
                        target,
                        wrong,
                    });
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| {
        (
            o.case.scenario.cmd,
            o.case.scenario.extra,
            o.case.syscall,
            o.case.errno,
            o.case.n,
        )
    });

    let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
    let mut failures = order_wrong.len();
    for why in &order_wrong {
        eprintln!("  {why}");
    }
    for o in &outcomes {
        let f = figures.entry(o.case.scenario.label()).or_default();
        f.runs += 1;
        if o.changed {
            f.changed += 1;
        } else {
            f.unchanged += 1;
        }
        *f.per_call
            .entry((o.case.syscall, o.case.errno))
            .or_default() += 1;
        if !o.wrong.is_empty() {
            f.failures += 1;
            failures += 1;
            eprintln!(
                "  {} {}#{} {} (on the {}): {}",
                o.case.scenario.label(),
                o.case.syscall,
                o.case.n,
                o.case.errno,
                o.target,
                o.wrong.join("; ")
            );
        }
    }
    for (label, f) in &figures {
        let calls: Vec<String> = f
            .per_call
            .iter()
            .map(|((syscall, errno), n)| format!("{syscall}/{errno} {n}"))
            .collect();
        report(&format!(
            "fault syscall {label}: runs={} changed={} unchanged={} failures={} ({})",
            f.runs,
            f.changed,
            f.unchanged,
            f.failures,
            calls.join(", ")
        ));
    }
    report(&format!(
        "fault syscall: runs={} failures={} order_checks={} order_failures={} scale={} seconds={}",
        outcomes.len(),
        failures,
        scenarios.len(),
        order_wrong.len(),
        if full { "full" } else { "ci" },
        started.elapsed().as_secs()
    ));
    assert_eq!(failures, 0, "see the cases above");
}
