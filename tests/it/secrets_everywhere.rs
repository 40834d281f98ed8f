//! docs/exit-codes.md "a token is never accepted as a command-line argument … A secret never appears on
//! stderr, in an error message, in a log, in the audit log, or in `list`", for every command
//! and for `serve` at its most verbose (`RUST_LOG=trace`), while a background thread reads
//! `/proc/*/cmdline` of every process over and over: no token and no SHA-256 digest of one
//! may show up in any process's command line, any stderr, serve's log, the audit log or
//! `list`. (`tests/it/cli_secrets.rs` covers the error paths of the commands one by one.)
//!
//! So that it can fail, the test also checks that the secrets are where they must be: each
//! issued token on its command's stdout, serve's log at debug level and above (a decision
//! line per check), and the scanner seeing a marker in a command line it must see.

use std::collections::HashSet;
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::serve::{HttpConn, Listen, Serve};
use crate::support::{self, Env, Out, assert_no_secret, id_of, run, sha256_hex, write_script};
use nix::sys::signal::Signal;

/// Reads every process's command line until stopped, keeping each distinct one (bounded),
/// so that they can be checked against secrets learned only later — a token `mint` prints
/// is not known while `mint` runs.
struct ProcScanner {
    stop: Arc<AtomicBool>,
    scans: Arc<AtomicU64>,
    seen: Arc<Mutex<HashSet<Vec<u8>>>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Distinct command lines kept at most (a shared machine runs many processes).
const MAX_CMDLINES: usize = 100_000;

impl ProcScanner {
    fn start() -> ProcScanner {
        let stop = Arc::new(AtomicBool::new(false));
        let scans = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let thread = {
            let (stop, scans, seen) = (stop.clone(), scans.clone(), seen.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(entries) = fs::read_dir("/proc") else {
                        return;
                    };
                    let mut batch = Vec::new();
                    for entry in entries.flatten() {
                        let is_pid = entry.file_name().to_string_lossy().parse::<u32>().is_ok();
                        // A process may be gone by now: nothing to read, nothing leaked.
                        if let Ok(cmdline) = fs::read(entry.path().join("cmdline"))
                            && is_pid
                        {
                            batch.push(cmdline);
                        }
                    }
                    let mut seen = seen.lock().unwrap();
                    for cmdline in batch {
                        if seen.len() < MAX_CMDLINES {
                            seen.insert(cmdline);
                        }
                    }
                    drop(seen);
                    scans.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        ProcScanner {
            stop,
            scans,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops scanning; returns how many scans ran and every command line seen.
    fn finish(mut self) -> (u64, Vec<Vec<u8>>) {
        self.stop_thread();
        let seen = self.seen.lock().unwrap().iter().cloned().collect();
        (self.scans.load(Ordering::SeqCst), seen)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProcScanner {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Every command run, with `RUST_LOG=trace` (in case a command ever logs), and what they
/// printed that must hold no secret.
struct Session {
    env: Env,
    /// (what, bytes) that must hold no secret.
    clean: Vec<(String, Vec<u8>)>,
    /// Tokens and their SHA-256 hex digests.
    secrets: Vec<Vec<u8>>,
}

impl Session {
    fn secret(&mut self, token: &str) {
        self.secrets.push(token.as_bytes().to_vec());
        self.secrets.push(sha256_hex(token.as_bytes()).into_bytes());
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.env.command(args);
        cmd.env("RUST_LOG", "trace");
        cmd
    }

    /// Runs a command; its stderr (and stdout, unless it issues a token) must be clean.
    fn run_cmd(&mut self, what: &str, cmd: Command, stdin: Option<&str>, issues: bool) -> Out {
        let out = run(cmd, stdin.map(|s| format!("{s}\n").into_bytes()).as_deref());
        self.clean
            .push((format!("{what} stderr"), out.stderr.clone()));
        if !issues {
            self.clean
                .push((format!("{what} stdout"), out.stdout.clone()));
        }
        out
    }

    fn tf(&mut self, args: &[&str], stdin: Option<&str>) -> Out {
        let cmd = self.command(args);
        self.run_cmd(&args.join(" "), cmd, stdin, false)
    }

    /// A command that prints one new token on stdout: it must be there.
    fn issue(&mut self, args: &[&str]) -> String {
        let cmd = self.command(args);
        let out = self.run_cmd(&args.join(" "), cmd, None, true).ok();
        let token = out.out().trim_end().to_string();
        assert!(token.starts_with("tf_"), "no token on stdout: {out:?}");
        self.secret(&token);
        token
    }
}

#[test]
fn no_secret_in_any_command_line_log_or_output() {
    let _alone = crate::support::serial();
    let scanner = ProcScanner::start();
    // A command line the scanner must see: `sh -c` shows its `$0` as an argument.
    let marker = "secrets-everywhere-scanner-marker";
    let status = Command::new("sh")
        .args(["-c", "sleep 0.3", marker])
        .status()
        .unwrap();
    assert!(status.success());
    let mut s = Session {
        env: Env::new(),
        clean: Vec::new(),
        secrets: Vec::new(),
    };
    s.tf(&["init"], None).ok();
    let t1 = s.issue(&["mint", "--scope", "read", "--name", "first"]);
    let t2 = s.issue(&["mint", "--scope", "read", "--plaintext"]);
    let typo = format!("{}x", &t1[..t1.len() - 1]);
    s.secret(&typo);
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["lint"],
        &["lint", "--json"],
    ] {
        s.tf(args, None);
    }
    for token in [&t1, &t2, &typo] {
        s.tf(&["check", "--scope", "read"], Some(token));
        s.tf(&["check", "--scope", "write", "--json"], Some(token));
        s.tf(&["id"], Some(token));
        let mut cmd = s.command(&["check", "--scope", "read", "--token-env", "T"]);
        cmd.env("T", token);
        s.run_cmd("check --token-env", cmd, None, false);
    }
    let t3 = s.issue(&["rotate", &id_of(t1.as_bytes()), "--grace", "1h"]);
    s.tf(&["hash"], None).ok();
    // An editor that adds a plaintext record by hand.
    let editor = s.env.path("editor.sh");
    write_script(
        &editor,
        "printf 'edited-secret-token-4\\tread\\n' >> \"$1\"",
    );
    s.secret("edited-secret-token-4");
    let mut cmd = s.command(&["edit"]);
    cmd.env("EDITOR", &editor);
    s.run_cmd("edit", cmd, None, false).ok();
    s.tf(&["revoke", &id_of(t3.as_bytes())], None).ok();

    // serve at its most verbose, asked about every token over both listeners, with a
    // token where the scope goes too, and a reload in between.
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(
        &s.env.file,
        dir.path(),
        Listen::Both,
        &[("RUST_LOG", "trace")],
    );
    let t5 = s.issue(&["mint", "--scope", "read", "--name", "while serving"]);
    serve.answers(
        &format!("CHECK read {t5}"),
        &support::serve::ok(&t5),
        support::serve::RELOAD,
    );
    let mut http = HttpConn::connect(serve.http.unwrap()).expect("connect over HTTP");
    for token in [
        &t1,
        &t2,
        &t3,
        &t5,
        &typo,
        &"edited-secret-token-4".to_string(),
    ] {
        for scopes in ["read", "write", token.as_str()] {
            serve.ask(&format!("CHECK {scopes} {token}"));
            let bearer = format!("Bearer {token}");
            http.get(
                &format!("/check?scope={scopes}"),
                &[("Authorization", &bearer)],
            )
            .expect("HTTP check");
            http.get(
                "/check",
                &[("Authorization", &bearer), ("X-Required-Scope", scopes)],
            )
            .expect("HTTP check");
        }
    }
    serve.signal(Signal::SIGHUP);
    support::eventually(
        "the SIGHUP reload is logged",
        support::serve::RELOAD,
        || serve.log().contains("SIGHUP"),
    );
    let mut serve = serve;
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success(), "serve did not stop cleanly");

    let (scans, cmdlines) = scanner.finish();
    let log = fs::read(dir.path().join("serve.log")).unwrap();
    let audit = fs::read(s.env.audit_path()).expect("an audit log");
    let list = s.tf(&["list", "--json"], None).ok();

    // Where the secrets must be, and what makes the search meaningful.
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("DEBUG") && text.contains(&id_of(t5.as_bytes())),
        "serve did not log at debug level, by record ID:\n{text}"
    );
    assert!(audit.len() > 100, "the audit log is (nearly) empty");
    assert!(
        cmdlines
            .iter()
            .any(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes())),
        "the /proc scanner missed a command line it had to see"
    );

    // How many of our own runs the scanner caught (each lasts milliseconds).
    let ours = cmdlines
        .iter()
        .filter(|c| c.starts_with(support::BIN.as_bytes()))
        .count();
    let secrets: Vec<&[u8]> = s.secrets.iter().map(Vec::as_slice).collect();
    for cmdline in &cmdlines {
        assert_no_secret(cmdline, &secrets, "a process's command line");
    }
    assert_no_secret(&log, &secrets, "serve's log");
    assert_no_secret(&audit, &secrets, "the audit log");
    assert_no_secret(&list.stdout, &secrets, "list --json");
    for (what, bytes) in &s.clean {
        assert_no_secret(bytes, &secrets, what);
    }
    // Messages are redacted as a last line of defence against a token pasted into an
    // argument. None was pasted in these runs: a redacted token here is one the code itself
    // put into a message, which the scans above could not see.
    let redacted = tokenfile::token::REDACTED.as_bytes();
    let mut everything: Vec<(&str, &[u8])> = vec![("serve's log", &log), ("the audit log", &audit)];
    everything.extend(
        s.clean
            .iter()
            .map(|(what, bytes)| (what.as_str(), bytes.as_slice())),
    );
    for (what, bytes) in everything {
        assert!(
            !bytes.windows(redacted.len()).any(|w| w == redacted),
            "{what} holds a redacted token: the code put a token into a message"
        );
    }
    // Reached only when nothing leaked: the assertions above stop at the first leak.
    support::report(&format!(
        "secrets: proc_scans={scans} cmdlines={} tokenfile_runs_seen={ours} outputs={} \
         log_bytes={} secrets={} leaks=0",
        cmdlines.len(),
        s.clean.len(),
        log.len(),
        secrets.len()
    ));
}
