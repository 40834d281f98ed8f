//! Changes that fail half-way (docs/writing.md, §5): a token nobody saw is never stored, the audit
//! line comes before the rename, `rotate --grace` reports the real end, `edit` leaves no
//! copy of the file behind on a signal, and ACL and modes survive rewrites and any umask.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

/// A file with one hashed record (`tok-a`, expiring at `expires`, or never).
fn env_with_record(expires: Option<&str>) -> Env {
    let line = format!(
        "# tokens\n{}\tread\talpha\t2026-01-01T00:00:00Z\t{}\n",
        hashed(b"tok-a"),
        expires.unwrap_or("")
    );
    Env::with_bytes(line.as_bytes())
}

/// Runs the binary with stdout on the write end of a pipe whose read end is already
/// closed: every write gets EPIPE (Rust ignores SIGPIPE).
fn run_with_closed_pipe(env: &Env, args: &[&str]) -> Out {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    run_to(env.command(args), Stdio::from(writer))
}

fn run_with_stdout(env: &Env, args: &[&str], stdout: &str) -> Out {
    let file = fs::OpenOptions::new().write(true).open(stdout).unwrap();
    run_to(env.command(args), Stdio::from(file))
}

/// A failed attempt to show a new token: exit 10, said so, the file as it was, no temp
/// file, and an audit trail that ends in `failed` (or says nothing) — never a lone change.
#[track_caller]
fn assert_unshown_change_cancelled(env: &Env, before: &[u8], out: Out) {
    let out = out.code(IO).err_has("nothing was changed");
    assert_eq!(env.read(), before, "the file changed: {out:?}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    if let Some(last) = env.audit_lines().last() {
        assert_eq!(last["event"], "failed", "{last}");
    }
}

#[test]
fn mint_and_rotate_whose_token_cannot_be_shown_change_nothing() {
    let env = env_with_record(None);
    let before = env.read();
    let id = id_of(b"tok-a");
    for args in [
        vec!["mint", "--scope", "read"],
        vec!["mint", "--scope", "read", "--json"],
        vec!["rotate", id.as_str()],
        vec!["rotate", id.as_str(), "--json"],
        vec!["rotate", id.as_str(), "--grace", "1h"],
    ] {
        assert_unshown_change_cancelled(&env, &before, run_with_closed_pipe(&env, &args));
        assert_unshown_change_cancelled(&env, &before, run_with_stdout(&env, &args, "/dev/full"));
    }
    // The failed attempts are in the audit log, each followed by its `failed` line.
    let lines = env.audit_lines();
    assert_eq!(lines.len(), 2 * 10, "{lines:?}");
    for pair in lines.chunks(2) {
        assert_eq!(pair[1]["event"], "failed");
        assert_eq!(pair[1]["change"], pair[0]["event"]);
        assert_eq!(pair[1]["ids"], pair[0]["ids"]);
    }
    // And the record still works.
    assert_eq!(env.check("tok-a", &["read"]), OK);
}

#[test]
fn a_shown_token_lands_and_its_audit_line_is_there() {
    let env = env_with_record(None);
    let out = env.tokenfile(&["mint", "--scope", "read", "--json"]).ok();
    let token = out.json()["token"].as_str().unwrap().to_string();
    assert_eq!(env.check(&token, &["read"]), OK);
    let line = env.audit_lines().pop().unwrap();
    assert_eq!(line["event"], "mint");
    assert_eq!(line["ids"], serde_json::json!([id_of(token.as_bytes())]));
}

#[test]
fn rotate_grace_reports_the_real_end_and_list_names_the_replacement() {
    let expires = now() + time::Duration::hours(1);
    let stamp = expires
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let env = env_with_record(Some(&stamp));
    let old = id_of(b"tok-a");
    let out = env
        .tokenfile(&["rotate", &old, "--grace", "48h", "--json"])
        .ok();
    let doc = out.json();
    let new = doc["id"].as_str().unwrap().to_string();
    let until = parse_time(doc["old_valid_until"].as_str().unwrap());
    assert_eq!(until, parse_time(&stamp), "{doc}");
    let line = env.audit_lines().pop().unwrap();
    assert_eq!(line["event"], "rotate");
    assert_eq!(parse_time(line["old_valid_until"].as_str().unwrap()), until);
    // The old record still expires in an hour, not later.
    let records = env.records();
    let old_record = records.iter().find(|r| r["id"] == old.as_str()).unwrap();
    assert_eq!(parse_time(old_record["expires"].as_str().unwrap()), until);
    assert_eq!(old_record["replaced_by"], new.as_str(), "{old_record}");
    let new_record = records.iter().find(|r| r["id"] == new.as_str()).unwrap();
    assert!(new_record.get("replaced_by").is_none(), "{new_record}");
    let human = env.tokenfile(&["list"]).ok().out();
    let row = human.lines().find(|l| l.starts_with(&old)).unwrap();
    assert!(row.contains(&format!("replaced by {new}")), "{human}");
    // Revoking the successor ends the marker: the old record is replaced by nothing, and the
    // file keeps no comment about a record that is gone.
    env.tokenfile(&["revoke", &new]).ok();
    let records = env.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].get("replaced_by").is_none(), "{records:?}");
    let file = std::fs::read_to_string(env.file_str()).unwrap();
    assert!(!file.contains("replaced by"), "{file}");

    // The human message says the same end.
    let env = env_with_record(Some(&stamp));
    let out = env.tokenfile(&["rotate", &old, "--grace", "48h"]).ok();
    let said = out
        .err()
        .lines()
        .find(|l| l.contains("stays valid until"))
        .map_or_else(
            || panic!("{out:?}"),
            |l| l.rsplit(' ').next().unwrap().to_string(),
        );
    assert_eq!(parse_time(&said), parse_time(&stamp), "{out:?}");

    // A grace shorter than the record's life ends the old token at now+grace.
    let env = env_with_record(None);
    let doc = env
        .tokenfile(&["rotate", &old, "--grace", "2h", "--json"])
        .ok()
        .json();
    let until = parse_time(doc["old_valid_until"].as_str().unwrap());
    let wanted = now() + time::Duration::hours(2);
    assert!((until - wanted).abs() < time::Duration::minutes(5), "{doc}");
    // Revoking the old record removes its marker too: list has nothing to say about it.
    env.tokenfile(&["revoke", &old]).ok();
    assert!(!String::from_utf8_lossy(&env.read()).contains(&old));
}

/// Runs `sh -c 'umask 0277; exec tokenfile …'`.
fn under_umask(env: &Env, args: &[&str]) -> Out {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 0277; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .env("TOKENFILE", &env.file)
        .current_dir(env.dir.path());
    run(cmd, None)
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn modes_are_set_explicitly_under_any_umask() {
    let env = Env::new();
    under_umask(&env, &["init"]).ok();
    assert_eq!(env.mode(), 0o600);
    assert_eq!(mode_of(&env.path("tokens.lock")), 0o600);
    assert_eq!(mode_of(&env.audit_path()), 0o600);
    let out = under_umask(&env, &["mint", "--scope", "read"]).ok();
    assert!(is_minted_shape(out.out().trim_end()), "{out:?}");
    assert_eq!(env.mode(), 0o600);
    // The editing copy too.
    let editor = env.path("editor.sh");
    write_script(&editor, "stat -c %a \"$1\" >\"$DIR/copy-mode\"");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 0277; exec \"$0\" edit")
        .arg(BIN)
        .env("TOKENFILE", &env.file)
        .env("EDITOR", &editor)
        .env("DIR", env.dir.path());
    run(cmd, None).ok();
    assert_eq!(fs::read_to_string(env.path("copy-mode")).unwrap(), "600\n");
}

fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rewrites_keep_the_posix_acl() {
    if Command::new("setfacl").arg("--version").output().is_err() {
        eprintln!("skipped: setfacl is not installed (apt-get install acl)");
        return;
    }
    let env = env_with_record(None);
    let set = Command::new("setfacl")
        .args(["-m", "u:65534:r"])
        .arg(&env.file)
        .status()
        .unwrap();
    if !set.success() {
        eprintln!("skipped: this file system does not take ACLs");
        return;
    }
    let acl = getfacl(&env.file);
    assert!(acl.contains("user:65534:r--"), "{acl}");
    let token = env.mint(&["--scope", "read"]);
    assert_eq!(getfacl(&env.file), acl);
    env.tokenfile(&["rotate", &id_of(token.as_bytes())]).ok();
    assert_eq!(getfacl(&env.file), acl);
    env.tokenfile(&["revoke", &id_of(b"tok-a")]).ok();
    assert_eq!(getfacl(&env.file), acl);
}

/// `edit` driven by an editor script that says it started (`$DIR/started`), then sleeps
/// or writes an invalid line; its own process group, so that a test can signal the group
/// as a terminal does.
struct Editing {
    env: Env,
    child: std::process::Child,
}

fn start_edit(editor_body: &str) -> Editing {
    let env = Env::with_bytes(b"# tokens\nplain-token\tread\tp\n");
    let editor = env.path("editor.sh");
    write_script(&editor, editor_body);
    let mut cmd = env.command(&["edit"]);
    cmd.env("EDITOR", &editor)
        .env("DIR", env.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start edit");
    let started = Instant::now();
    while !env.path("started").exists() {
        assert!(started.elapsed() < HANG_GUARD, "the editor never started");
        sleep(Duration::from_millis(10));
    }
    Editing { env, child }
}

impl Editing {
    fn copies(&self) -> Vec<String> {
        self.env
            .leftovers()
            .into_iter()
            .filter(|n| n.contains(".edit-"))
            .collect()
    }

    fn signal(&self, sig: Signal, group: bool) {
        let pid = self.child.id() as i32;
        let _ = send_signal(if group { -pid } else { pid }, sig);
    }

    /// Waits for edit to end; returns the signal that ended it, if one did.
    fn wait(mut self) -> (Option<i32>, String, Env) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The editor may outlive a killed edit, holding stderr open: end the group.
                let pid = self.child.id() as i32;
                let _ = send_signal(-pid, Signal::SIGKILL);
                let mut err = String::new();
                if let Some(stderr) = self.child.stderr.take() {
                    for line in BufReader::new(stderr).lines() {
                        err.push_str(&line.unwrap_or_default());
                        err.push('\n');
                    }
                }
                return (status.signal(), err, self.env);
            }
            if started.elapsed() > HANG_GUARD {
                let _ = self.child.kill();
                panic!("edit did not end");
            }
            sleep(Duration::from_millis(10));
        }
    }
}

/// Runs until `$DIR/go` appears (or 60 s pass).
const SLEEPING_EDITOR: &str = "touch \"$DIR/started\"; i=0; \
    while [ ! -e \"$DIR/go\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done";
const INVALID_EDITOR: &str = "printf 'x\\tbad scope!\\n' >>\"$1\"; touch \"$DIR/started\"";

#[test]
fn signals_while_the_editor_runs_leave_no_copy() {
    for (sig, group) in [
        (Signal::SIGINT, true), // Ctrl-C: the terminal signals the whole group
        (Signal::SIGINT, false),
        (Signal::SIGHUP, true),
        (Signal::SIGTERM, false),
    ] {
        let editing = start_edit(SLEEPING_EDITOR);
        assert_eq!(editing.copies().len(), 1, "the editor has its copy");
        let before = editing.env.read();
        editing.signal(sig, group);
        if sig == Signal::SIGINT && !group {
            // edit waits for the editor (Ctrl-C would have reached it too), then stops.
            sleep(Duration::from_millis(100));
            fs::write(editing.env.path("go"), b"").unwrap();
        }
        let (signal, err, env) = editing.wait();
        assert_eq!(
            signal,
            Some(sig as i32),
            "edit should end by the signal: {err}"
        );
        assert_eq!(env.read(), before);
        assert_no_edit_copy(&env, sig);
    }
}

/// No `.tokens.edit-*` copy is left after `edit` ended by `sig`.
fn assert_no_edit_copy(env: &Env, sig: Signal) {
    let copies: Vec<String> = env
        .leftovers()
        .into_iter()
        .filter(|n| n.contains(".edit-"))
        .collect();
    assert!(
        copies.is_empty(),
        "signal {sig}: a copy is left: {copies:?}"
    );
}

#[test]
fn signals_at_the_prompt_leave_no_copy() {
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGTERM] {
        let editing = start_edit(INVALID_EDITOR);
        // Wherever edit is by now (validating, or waiting at the e/w/q prompt with stdin
        // open), the copy must go with it.
        sleep(Duration::from_millis(300));
        editing.signal(sig, sig == Signal::SIGINT);
        let (signal, err, env) = editing.wait();
        assert_eq!(signal, Some(sig as i32), "{err}");
        assert_no_edit_copy(&env, sig);
    }
}

#[test]
fn a_copy_left_by_kill_9_is_removed_by_the_next_writer() {
    let editing = start_edit(SLEEPING_EDITOR);
    let copy = editing.copies().pop().expect("the editing copy");
    editing.signal(Signal::SIGKILL, true);
    let (signal, _, env) = editing.wait();
    assert_eq!(signal, Some(Signal::SIGKILL as i32));
    assert!(env.path(&copy).exists(), "kill -9 cannot be caught");
    // A running edit's copy is not touched by a writer meanwhile.
    let live = start_edit(SLEEPING_EDITOR);
    let _ = live.env.mint(&["--scope", "read"]);
    assert_eq!(live.copies().len(), 1, "the live edit keeps its copy");
    live.signal(Signal::SIGTERM, true);
    live.wait();

    // `lint` reports it (an error: a cron job sees it), and removes nothing.
    let out = env.tokenfile(&["lint", "--json"]).code(5);
    let findings = out.json();
    let stale: Vec<_> = findings["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == "stale-edit-copy")
        .collect();
    assert_eq!(stale.len(), 1, "{findings}");
    assert!(stale[0]["message"].as_str().unwrap().contains(&copy));
    assert!(env.path(&copy).exists(), "lint only reports");

    let out = env.tokenfile(&["mint", "--scope", "read"]).ok();
    assert!(!env.path(&copy).exists(), "the stale copy is still there");
    assert!(out.err().contains(&copy), "stderr should name it: {out:?}");
}

/// Every failing system call of a change, injected with strace: the command exits non-zero
/// exactly when the file is unchanged, and leaves no temp file or backup behind.
#[test]
fn an_injected_failure_fails_exactly_the_changes_that_did_not_land() {
    let probe = Command::new("strace").args(["-qq", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: strace is missing or may not trace here");
        return;
    }
    let env = env_with_record(None);
    let original = env.read();
    let id = id_of(b"tok-a");
    let mut tried = 0;
    for args in [vec!["mint", "--scope", "read"], vec!["rotate", id.as_str()]] {
        for (call, error) in [
            ("fsync", "EIO"),
            ("fdatasync", "EIO"),
            ("rename", "EXDEV"),
            ("linkat", "EPERM"),
            ("write", "ENOSPC"),
        ] {
            for when in 1..=3 {
                env.write(&original);
                let before = env.read();
                let mut cmd = Command::new("strace");
                cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
                    .arg(format!("inject={call}:error={error}:when={when}"))
                    .arg(BIN)
                    .args(&args)
                    .env("TOKENFILE", &env.file)
                    .current_dir(env.dir.path());
                let out = run(cmd, None);
                tried += 1;
                let changed = env.read() != before;
                assert_eq!(
                    out.code != OK,
                    !changed,
                    "{call}#{when}={error}: exit {} but the file {}: {out:?}",
                    out.code,
                    if changed { "changed" } else { "did not change" }
                );
                let left: Vec<String> = fs::read_dir(env.dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
                    .collect();
                assert!(left.is_empty(), "{call}#{when}: left {left:?}");
            }
        }
    }
    assert_eq!(tried, 30);
}
