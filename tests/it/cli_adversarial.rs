//! Issue 11: what an adversarial (or merely unlucky) user does to the CLI, and the docs/format.md/§3
//! promises it must not break: a closed or failing stdout never turns a failure into
//! success; a token pasted anywhere, glued to anything, is refused and never echoed; `*`
//! scopes that can never match are refused and reported; an out-of-range argument is a usage
//! error, never a crash; `id` says whether the file has the token; `--help` says what a
//! script and an operator need.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Where a command's stdout goes.
#[derive(Debug, Clone, Copy)]
enum Sink {
    /// A pipe whose reader is gone before the command writes (`… | true`): EPIPE.
    ClosedPipe,
    /// `> /dev/full`: ENOSPC.
    DevFull,
}

/// Runs `cmd` with stdout into `sink` and `stdin` (then EOF) on stdin; returns its exit code
/// and stderr. The child is killed after [`HANG_GUARD`].
fn run_into(env: &Env, mut cmd: Command, stdin: &[u8], sink: Sink) -> (i32, String) {
    let input = env.path(".stdin");
    fs::write(&input, stdin).unwrap();
    cmd.stdin(File::open(&input).unwrap());
    match sink {
        Sink::ClosedPipe => {
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            cmd.stdout(writer);
        }
        Sink::DevFull => {
            cmd.stdout(File::options().write(true).open("/dev/full").unwrap());
        }
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start tokenfile");
    // The command is started: drop our copy of the pipe's write end (held in `cmd`).
    drop(cmd);
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tokenfile hung with stdout into {sink:?}");
        }
        thread::sleep(Duration::from_millis(2));
    };
    let stderr = reader.join().unwrap();
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    (status.code().unwrap_or(-1), stderr)
}

/// A file with a granted, a forbidden and an unknown case, and a problem for `lint`.
fn decisions_env() -> (Env, String) {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    (env, token)
}

#[test]
fn check_exits_with_its_decision_whatever_happens_to_stdout() {
    let (env, token) = decisions_env();
    for sink in [Sink::ClosedPipe, Sink::DevFull] {
        for (presented, scope, expected) in [
            (token.as_str(), "read", OK),
            (token.as_str(), "write", FORBIDDEN),
            ("unknown-token", "read", UNAUTHORIZED),
            ("", "read", UNAUTHORIZED),
        ] {
            for json in [true, false] {
                let mut args = vec!["check", "--scope", scope];
                if json {
                    args.push("--json");
                }
                let stdin = format!("{presented}\n");
                let (code, stderr) = run_into(&env, env.command(&args), stdin.as_bytes(), sink);
                assert_eq!(code, expected, "{args:?} into {sink:?}: {stderr}");
            }
        }
    }
}

#[test]
fn a_failing_stdout_never_turns_a_failure_into_success() {
    let (env, token) = decisions_env();
    let other = Env::init();
    let missing = env.path("missing").display().to_string();
    let unknown = b"unknown-token\n".as_slice();
    let known = format!("{token}\n");
    // (args, stdin, env, code into a closed pipe, code into /dev/full)
    type Case<'a> = (Vec<&'a str>, &'a [u8], &'a Env, i32, i32);
    let cases: Vec<Case> = vec![
        // The output is the job: a reader that went away is fine, lost output is not.
        (vec!["list"], b"", &env, OK, IO),
        (vec!["list", "--json"], b"", &env, OK, IO),
        (vec!["lint", "--json"], b"", &env, OK, IO),
        (vec!["id"], known.as_bytes(), &env, OK, IO),
        (vec!["--file", &missing, "id"], unknown, &env, OK, IO),
        (vec!["completions", "bash"], b"", &env, OK, IO),
        // A failure stays that failure.
        (vec!["id"], unknown, &env, NO_SUCH_ID, NO_SUCH_ID),
        (vec!["id"], known.as_bytes(), &other, NO_SUCH_ID, NO_SUCH_ID),
    ];
    for (args, stdin, env, closed, full) in cases {
        for (sink, expected) in [(Sink::ClosedPipe, closed), (Sink::DevFull, full)] {
            let (code, stderr) = run_into(env, env.command(&args), stdin, sink);
            assert_eq!(code, expected, "{args:?} into {sink:?}: {stderr}");
        }
    }
    // lint of a file with problems: exit 5, whatever happens to its report.
    let bad = Env::with_bytes(b"tok\tbad scope\n");
    for sink in [Sink::ClosedPipe, Sink::DevFull] {
        for args in [&["lint", "--json"][..], &["lint"]] {
            let (code, stderr) = run_into(&bad, bad.command(args), b"", sink);
            assert_eq!(code, PROBLEMS, "{args:?} into {sink:?}: {stderr}");
        }
    }
    // A token nobody saw is no success (docs/writing.md): whatever mint does with the file.
    for sink in [Sink::ClosedPipe, Sink::DevFull] {
        let (code, stderr) = run_into(&env, env.command(&["mint", "--scope", "x"]), b"", sink);
        assert_ne!(code, OK, "mint into {sink:?}: {stderr}");
    }
}

/// What must never show of `token`: 12 characters of its random part stand for all of it.
fn secret_part(token: &str) -> &str {
    &token[3..15]
}

#[track_caller]
fn assert_clean(out: &Out, token: &str) {
    assert!(!out.err().contains("panicked"), "{out:?}");
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert_no_secret(bytes, &[secret_part(token).as_bytes()], stream);
    }
}

/// Every character a token can be glued after, and some text around it.
const GLUE: &[&str] = &[
    "", "x", "Q", "7", "_", "-", "/", ":", ".", "ci-", "a:", "deploy_", "x/y/", "é",
];

#[test]
fn a_token_glued_to_anything_is_refused_and_never_echoed() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read", "--name", "real"]);
    let id = id_of(token.as_bytes());
    let before = env.read();
    let audit_before = fs::read(env.audit_path()).unwrap();
    let cut = &token[..30];
    for glue in GLUE {
        for secret in [token.as_str(), cut] {
            for after in ["", "-prod", "x"] {
                let pasted = format!("{glue}{secret}{after}");
                let p = pasted.as_str();
                let listed = format!("read,{p}");
                let long_flag = format!("--{p}");
                let flag_value = format!("--bogus={p}");
                let short_flag = format!("-{p}");
                let refused: Vec<Vec<&str>> = vec![
                    vec!["mint", "--scope", "read", "--name", p],
                    vec!["mint", "--scope", p],
                    vec!["mint", "--scope", &listed],
                    vec!["check", "--scope", p],
                    vec!["check", "--scope", p, "--json"],
                    vec!["check", "--scope", &listed, "--json"],
                    vec!["revoke", p],
                    vec!["revoke", &id, p],
                    vec!["rotate", p],
                    // clap's own complaints quote the argument.
                    vec![p],
                    vec!["list", p],
                    vec!["id", p],
                    vec!["list", &long_flag],
                    vec!["mint", "--scope", "read", &flag_value],
                    vec!["check", "--scope", "read", &short_flag],
                ];
                for args in refused {
                    let out = env.tokenfile_stdin(&args, format!("{token}\n").as_bytes());
                    assert_clean(&out, &token);
                    out.code(USAGE);
                }
            }
        }
    }
    assert_eq!(env.read(), before, "a refused command changed the file");
    assert_eq!(fs::read(env.audit_path()).unwrap(), audit_before);
    let out = env.tokenfile(&["list"]).ok();
    assert_clean(&out, &token);
}

/// A name that holds a token already in the file (an older version let one in, or an admin
/// pasted it by hand) is not shown by `list` or `check --json`.
#[test]
fn a_token_already_in_a_name_is_never_shown() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let mut bytes = env.read();
    for glue in GLUE {
        let line = format!(
            "{}\tread\t{glue}{token}\n",
            hashed(format!("t{glue}").as_bytes())
        );
        bytes.extend_from_slice(line.as_bytes());
    }
    env.write(&bytes);
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["lint"],
        &["lint", "--json"],
    ] {
        assert_clean(&env.tokenfile(args), &token);
    }
    for glue in GLUE {
        let out = env.tokenfile_stdin(
            &["check", "--scope", "read", "--json"],
            format!("t{glue}\n").as_bytes(),
        );
        assert_clean(&out, &token);
        out.ok();
    }
}

#[test]
fn a_prefix_wildcard_grants_its_bare_prefix_but_not_the_word() {
    let env = Env::with_bytes(b"kafka-tok\tkafka:*\nnested\ta:b:*\n");
    assert_eq!(env.check("kafka-tok", &["kafka:"]), OK);
    assert_eq!(env.check("kafka-tok", &["kafka:topic"]), OK);
    assert_eq!(env.check("kafka-tok", &["kafka"]), FORBIDDEN);
    assert_eq!(env.check("nested", &["a:b:"]), OK);
    assert_eq!(env.check("nested", &["a:b"]), FORBIDDEN);
    assert_eq!(env.check("nested", &["a:"]), FORBIDDEN);
}

/// `*` anywhere but alone or as a final `:*` after a star-free prefix never matches.
const DEAD: &[&str] = &[
    "*:*", "a*:*", "a:*b:*", "*a:*", "**", "kafka*", "a:**", "x*y",
];

#[test]
fn mint_refuses_and_lint_reports_every_dead_scope() {
    let env = Env::init();
    let before = env.read();
    for dead in DEAD {
        for scopes in [dead.to_string(), format!("read,{dead}")] {
            let out = env.tokenfile(&["mint", "--scope", &scopes]);
            let out = out.code(USAGE).err_has("never match");
            assert!(out.stdout.is_empty(), "{out:?}");
        }
    }
    assert_eq!(env.read(), before, "a refused mint changed the file");
    // The same scopes written by hand: lint names each line.
    let mut bytes = Vec::new();
    for (i, dead) in DEAD.iter().enumerate() {
        let credential = hashed(format!("dead-{i}").as_bytes());
        bytes.extend_from_slice(format!("{credential}\t{dead}\n").as_bytes());
    }
    bytes.extend_from_slice(format!("{}\tkafka:*,*\n", hashed(b"x")).as_bytes());
    bytes.extend_from_slice(format!("{}\tkafka:*\n", hashed(b"alive")).as_bytes());
    let env = Env::with_bytes(&bytes);
    let report = env.tokenfile(&["lint", "--json"]).json();
    let mut dead_lines: Vec<u64> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "dead-scope")
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    dead_lines.sort();
    let expected: Vec<u64> = (1..=DEAD.len() as u64).collect();
    assert_eq!(dead_lines, expected, "{report:#}");
}

#[test]
fn an_argument_out_of_range_is_a_usage_error_never_a_crash() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let id = id_of(token.as_bytes());
    let before = env.read();
    let durations = [
        "18446744073709551615s1000ms",
        "18446744073709551615s1s",
        "99999999999999d",
        "9999999999999999999h",
        "99999999999999999999ms",
        "18446744073709551616s",
        "31000000000000w",
        "99999999999999999999999999999999999999d",
    ];
    let dates = [
        "10000-01-01T00:00:00Z",
        "99999-12-31T23:59:59Z",
        "+10000-01-01T00:00:00Z",
    ];
    let mut runs: Vec<Vec<String>> = Vec::new();
    let s = |v: &[&str]| {
        v.iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>()
    };
    // Too long to count (past u64 seconds) for --lock-timeout; every one of them lands past
    // year 9999 for --expires and --grace.
    for d in durations.iter().filter(|d| **d != "99999999999999d") {
        runs.push(s(&["--lock-timeout", d, "list"]));
        runs.push(s(&["--lock-timeout", d, "mint", "--scope", "read"]));
    }
    for d in durations {
        runs.push(s(&["rotate", &id, "--grace", d]));
    }
    for d in durations.iter().chain(&dates) {
        runs.push(s(&["mint", "--scope", "read", "--expires", d]));
        runs.push(s(&["rotate", &id, "--expires", d]));
    }
    for n in ["1e300", "1e9", "inf", "NaN", "-1", "18446744073709551616"] {
        runs.push(s(&["--lock-timeout", n, "list"]));
    }
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.tokenfile(&args);
        assert!(!out.err().contains("panicked"), "{out:?}");
        out.code(USAGE);
    }
    assert_eq!(env.read(), before, "a refused command changed the file");
    // Long, but a wait that a Duration holds: accepted.
    env.tokenfile(&["--lock-timeout", "99999999999999d", "list"])
        .ok();
}

#[test]
fn id_says_whether_the_file_has_the_token() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read", "--name", "ci bot"]);
    let id = id_of(token.as_bytes());
    // In the file: the ID on stdout, the line and name on stderr.
    let out = env
        .tokenfile_stdin(&["id"], format!("{token}\n").as_bytes())
        .ok();
    assert_eq!(out.out(), format!("{id}\n"));
    let stored = hashed(token.as_bytes());
    let text = String::from_utf8(env.read()).unwrap();
    let line = 1 + text.lines().position(|l| l.starts_with(&stored)).unwrap();
    let out = out.err_has(&format!("line {line} of")).err_has("ci bot");
    assert!(out.err().contains(&env.file_str()), "{out:?}");
    // Not in the file: still the ID, and exit 4.
    let out = env
        .tokenfile_stdin(&["id"], b"some-other-token\n")
        .code(NO_SUCH_ID)
        .err_has("no record");
    assert_eq!(out.out(), format!("{}\n", id_of(b"some-other-token")));
    // No file: just the ID.
    let missing = env.path("missing").display().to_string();
    let out = env
        .tokenfile_stdin(&["--file", &missing, "id"], format!("{token}\n").as_bytes())
        .ok();
    assert_eq!(out.out(), format!("{id}\n"));
    assert!(!Path::new(&missing).exists());
}

#[test]
fn help_tells_what_scripts_and_operators_need() {
    let env = Env::new();
    let help = |args: &[&str]| env.tokenfile(args).ok().out();
    let check = help(&["check", "--help"]);
    for code in ["0 ", "1 ", "2 ", "3 ", "5 ", "10 "] {
        let listed = check.lines().any(|l| l.trim_start().starts_with(code));
        assert!(
            listed,
            "check --help does not list exit code {code}:\n{check}"
        );
    }
    for words in [
        "granted",
        "lacks a required scope",
        "unknown",
        "expired",
        "unsafe",
    ] {
        assert!(
            check.contains(words),
            "check --help lacks {words:?}:\n{check}"
        );
    }
    let serve = help(&["serve", "--help"]);
    for words in [
        "/check", "/healthz", "/metrics", "CHECK", "PING", "204", "401", "403", "400", "503",
        "SIGHUP", "SIGTERM", "SIGINT", "reload",
    ] {
        assert!(
            serve.contains(words),
            "serve --help lacks {words:?}:\n{serve}"
        );
    }
    let completions = help(&["completions", "--help"]);
    for words in ["bash", "zsh", "fish", "bash-completion"] {
        assert!(
            completions.contains(words),
            "completions --help lacks {words:?}:\n{completions}"
        );
    }
}
