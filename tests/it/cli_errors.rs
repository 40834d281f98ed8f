//! Errors a person understands: what a new user meets (a missing file, a world-writable one, a
//! misspelt scope, a truncated token, a file edited into a bad state) gets a message on stderr
//! that names the file (and the line, for a line of it), says what went wrong and what to do
//! next — with the exit code of docs/exit-codes.md, nothing on stdout but what was asked for, and never
//! a secret.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use nix::sys::signal::Signal;

/// Asserts the message parts a person needs, and that no secret leaked on either stream.
#[track_caller]
fn explains(out: Out, code: i32, parts: &[&str], secrets: &[&str]) -> Out {
    let out = out.code(code);
    for part in parts {
        assert!(
            out.err().contains(part),
            "stderr should say {part:?}: {out:?}"
        );
    }
    let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    assert_no_secret(&out.stderr, &secrets, "stderr");
    assert_no_secret(&out.stdout, &secrets, "stdout");
    out
}

#[test]
fn init_names_a_missing_directory_and_an_existing_file() {
    let env = Env::new();
    let nested = env.path("no/such/dir/tokens");
    let out = env.tokenfile(&["--file", nested.to_str().unwrap(), "init"]);
    let dir = env.path("no/such/dir").display().to_string();
    explains(out, IO, &[&dir, &format!("mkdir -p {dir}")], &[]);

    let env = Env::init();
    let out = env.tokenfile(&["init"]);
    explains(
        out,
        IO,
        &[&env.file_str(), "already exists", "tokenfile list"],
        &[],
    );
}

#[test]
fn a_directory_given_as_the_file_is_named_as_such() {
    let env = Env::new();
    let out = env.tokenfile(&["--file", &env.dir_str(), "list"]);
    // docs/format.md: a path that is not a regular file is refused (exit 5), like an unsafe one.
    explains(
        out,
        PROBLEMS,
        &[&env.dir_str(), "not a regular file", "not a directory"],
        &[],
    );
}

#[test]
fn a_world_writable_file_is_refused_by_check_and_every_other_reader() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    env.chmod(0o666);
    let fix = format!("chmod o-w {}", env.file_str());

    let out = env.check_out(&token, &["read"]);
    let out = explains(
        out,
        PROBLEMS,
        &[&env.file_str(), "world-writable", &fix],
        &[&token],
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // docs/format.md: list and mint refuse it as well (exit 5), saying how to fix it; nothing
    // is minted.
    let before = env.read();
    let out = env.tokenfile(&["list"]);
    let out = explains(out, PROBLEMS, &["world-writable", &fix], &[&token]);
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = env.tokenfile(&["mint", "--scope", "read"]);
    let out = explains(out, PROBLEMS, &["world-writable", &fix], &[]);
    assert!(out.stdout.is_empty(), "no token is shown: {out:?}");
    assert_eq!(env.read(), before);
    env.chmod(0o600);
    let out = env.tokenfile(&["mint", "--scope", "read"]).ok();
    assert!(
        is_minted_shape(out.out().trim_end()),
        "stdout is the token alone: {out:?}"
    );
}

#[test]
fn a_misspelt_scope_shows_what_the_token_grants() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read,deploy", "--name", "ci"]);
    let id = id_of(token.as_bytes());
    let out = env.check_out(&token, &["raed"]);
    let out = explains(
        out,
        FORBIDDEN,
        &[
            &format!("token {id}"),
            &format!("line 5 of {}", env.file_str()),
            "lacks scope raed",
            "it grants read,deploy",
            "check the spelling",
        ],
        &[&token],
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // Only the scopes that are missing are named as missing.
    let out = env.check_out(&token, &["read", "admin"]);
    explains(out, FORBIDDEN, &["lacks scope admin;"], &[&token]);
}

#[test]
fn a_truncated_token_is_recognised_and_the_json_reason_stays_a_documented_word() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let cut = &token[..token.len() - 3];
    let out = env.check_out(cut, &["read"]);
    explains(
        out,
        UNAUTHORIZED,
        &["unknown token", "mistyped or truncated", "copy it again"],
        &[cut],
    );
    let json = env
        .tokenfile_stdin(
            &["check", "--scope", "read", "--json"],
            format!("{cut}\n").as_bytes(),
        )
        .code(UNAUTHORIZED)
        .json();
    assert_eq!(json["reason"], "unknown token", "{json}");
    assert!(
        json["hint"].as_str().unwrap().contains("checksum"),
        "{json}"
    );
    // A token that is merely unknown has no hint.
    let json = env
        .tokenfile_stdin(&["check", "--scope", "read", "--json"], b"whatever\n")
        .json();
    assert!(json.get("hint").is_none(), "{json}");
}

#[test]
fn an_unknown_token_points_at_the_file_and_at_lint() {
    let env = Env::init();
    let out = env.check_out("some-unknown-token", &["read"]);
    explains(
        out,
        UNAUTHORIZED,
        &[&env.file_str(), "right --file", "tokenfile lint"],
        &["some-unknown-token"],
    );
}

#[test]
fn no_token_says_how_to_pass_one() {
    let env = Env::init();
    let out = env.tokenfile_stdin(&["check", "--scope", "read"], b"");
    explains(
        out,
        UNAUTHORIZED,
        &["no token on stdin", "--token-env"],
        &[],
    );
    let out = env.tokenfile(&["check", "--scope", "read", "--token-env", "DEPLOY_TOKEN"]);
    explains(out, UNAUTHORIZED, &["DEPLOY_TOKEN", "empty or unset"], &[]);
}

#[test]
fn an_expired_token_says_when_and_how_to_renew() {
    let env = Env::init();
    let token = "expired-plain-token";
    env.write(
        format!(
            "{}\tread\tci\t2020-01-01T00:00:00Z\t2021-01-01T00:00:00Z\n",
            hashed(token.as_bytes())
        )
        .as_bytes(),
    );
    let id = id_of(token.as_bytes());
    let out = env.check_out(token, &["read"]);
    explains(
        out,
        UNAUTHORIZED,
        &[
            &format!("token {id} (line 1 of {})", env.file_str()),
            "expired at 2021-01-01T00:00:00Z",
            &format!("tokenfile rotate {id} --expires"),
        ],
        &[token],
    );
}

#[test]
fn an_unknown_id_names_the_file() {
    let env = Env::init();
    env.mint(&["--scope", "read"]);
    for args in [&["revoke", "abcd"][..], &["rotate", "abcdef"]] {
        let out = env.tokenfile(args);
        explains(
            out,
            NO_SUCH_ID,
            &[
                &format!("no record in {} has ID {}", env.file_str(), args[1]),
                "tokenfile list",
            ],
            &[],
        );
    }
}

#[test]
fn a_bad_time_flag_names_the_flag() {
    let env = Env::init();
    let out = env.tokenfile(&["mint", "--scope", "read", "--expires", "90x"]);
    explains(out, USAGE, &["--expires", "\"90x\"", "90d"], &[]);
    let token = env.mint(&["--scope", "read"]);
    let id = id_of(token.as_bytes());
    let out = env.tokenfile(&["rotate", &id, "--grace", "2q"]);
    explains(out, USAGE, &["--grace", "\"2q\"", "12h"], &[&token]);
}

/// A file edited by hand into a bad state: a bad expiry, too many fields, a duplicate. The
/// plaintext credentials on those lines are secrets and must never be shown.
const BAD_EXPIRY: &str = "secret-bad-expiry";
const TOO_MANY: &str = "secret-too-many";
const DUPLICATE: &str = "secret-duplicate";

fn edited_into_a_bad_state() -> Env {
    Env::with_bytes(
        format!(
            "# hand-edited\n\
             {DUPLICATE}\tread\n\
             {BAD_EXPIRY}\tread\tci\t\tnext-tuesday\n\
             {TOO_MANY}\tread\tname\twith\ta\ttab\n\
             {DUPLICATE}\tadmin\n"
        )
        .as_bytes(),
    )
}

const SECRETS: &[&str] = &[BAD_EXPIRY, TOO_MANY, DUPLICATE];

#[test]
fn lint_names_each_bad_line_and_the_way_out() {
    let env = edited_into_a_bad_state();
    let out = env.tokenfile(&["lint"]);
    let out = explains(out, PROBLEMS, &["tokenfile edit"], SECRETS);
    let file = env.file_str();
    let report = out.out();
    for (line, what) in [
        (
            3,
            "expires field (5th) is not an RFC 3339 time such as 2026-05-05T14:23:00Z",
        ),
        (4, "6 TAB-separated fields, at most 5 allowed"),
        (5, "same token as line 2"),
    ] {
        let want = format!("{file}:{line}: error: ");
        let found = report.lines().find(|l| l.starts_with(&want));
        assert!(
            found.is_some_and(|l| l.contains(what)),
            "lint should report line {line} as {what:?}: {out:?}"
        );
    }
}

#[test]
fn list_mint_and_check_on_a_bad_file_say_which_lines_grant_nothing() {
    let env = edited_into_a_bad_state();
    let out = env.tokenfile(&["list"]);
    explains(
        out,
        OK,
        &[
            &format!(
                "invalid line(s) of {} not listed (lines 3, 4)",
                env.file_str()
            ),
            "tokenfile lint",
        ],
        SECRETS,
    );
    let out = env.tokenfile(&["mint", "--scope", "read"]);
    let out = explains(
        out,
        OK,
        &[
            &env.file_str(),
            "2 invalid line(s) that grant nothing (lines 3, 4)",
            "tokenfile lint",
        ],
        SECRETS,
    );
    assert!(is_minted_shape(out.out().trim_end()), "{out:?}");
    // The token on the invalid line is simply unknown; the message says where to look.
    let out = env.check_out(BAD_EXPIRY, &["read"]);
    explains(out, UNAUTHORIZED, &["tokenfile lint"], SECRETS);
}

#[test]
fn serve_logs_bad_lines_by_number_and_keeps_serving() {
    let env = edited_into_a_bad_state();
    let socket = env.path("serve.sock");
    let mut cmd = env.command(&["serve", "--socket", socket.to_str().unwrap()]);
    cmd.stdout(Stdio::piped());
    let running = spawn(cmd, None);
    let end = Instant::now() + Duration::from_secs(20);
    // Answering PING means started, signal handling included.
    let pong = || {
        let mut s = UnixStream::connect(&socket).ok()?;
        s.write_all(b"PING\n").ok()?;
        let mut answer = [0; 5];
        s.read_exact(&mut answer).ok()?;
        (&answer == b"PONG\n").then_some(())
    };
    while pong().is_none() {
        assert!(Instant::now() < end, "serve did not start");
        thread::sleep(Duration::from_millis(20));
    }
    running.signal(Signal::SIGTERM);
    let out = running.wait();
    let out = explains(
        out,
        OK,
        &[
            "line 3",
            "RFC 3339 time such as",
            "line 4",
            "line 5",
            &env.file_str(),
        ],
        SECRETS,
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// A token pasted where an argument belongs is never echoed back: not by the argument
/// parser's complaint, not in a denial, not in an error; `mint` refuses to store one as a
/// scope or a name (it would land in the file and the audit log).
#[test]
fn a_token_pasted_into_an_argument_is_never_echoed() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let redacted = "[token redacted]";
    // Quoted back by the argument parser or a value check: shown redacted.
    for args in [
        vec!["id", token.as_str()],
        vec!["check", "--scope", "read", token.as_str()],
        vec!["mint", "--scope", "read", "--expires", token.as_str()],
    ] {
        let out = env.tokenfile_stdin(&args, format!("{token}\n").as_bytes());
        explains(out, USAGE, &[redacted], &[&token]);
    }
    // Where an ID goes: not echoed at all.
    for command in ["revoke", "rotate"] {
        let out = env.tokenfile(&[command, &token]);
        explains(out, USAGE, &["not a record ID"], &[&token]);
    }
    // A legacy token has no shape to redact by: an ID argument is never echoed when it is
    // longer than any ID, mistyped or not.
    let legacy = "legacy-plaintext-token-0123456789";
    let out = env.tokenfile(&["revoke", legacy]);
    explains(out, USAGE, &["not a record ID", "hex digits"], &[legacy]);
    let out = env.tokenfile(&["revoke", "9f6g"]);
    explains(out, USAGE, &["\"9f6g\" is not a record ID"], &[]);
    // The token as the required scope: a valid scope word, but refused as a usage error
    // (issue 11: once a denial that named it, and `--json` showed it in `required`).
    for json in [false, true] {
        let mut args = vec!["check", "--scope", &token];
        if json {
            args.push("--json");
        }
        let out = env.tokenfile_stdin(&args, format!("{token}\n").as_bytes());
        explains(out, USAGE, &["--scope", "a tokenfile token"], &[&token]);
    }
    let out = env.tokenfile(&["check", "--scope", "read", "--token-env", &token]);
    explains(out, UNAUTHORIZED, &[redacted], &[&token]);
    let before = env.read();
    // Whole, cut, or inside other text: never stored.
    let cut = &token[..30];
    let inside = format!("ci {token}");
    for (flag, value) in [
        ("--scope", token.as_str()),
        ("--scope", cut),
        ("--name", token.as_str()),
        ("--name", cut),
        ("--name", inside.as_str()),
    ] {
        let mut args = vec!["mint", flag, value];
        if flag == "--name" {
            args.extend(["--scope", "read"]);
        }
        let out = env.tokenfile(&args);
        explains(
            out,
            USAGE,
            &[flag, "a tokenfile token", "command line"],
            &[cut],
        );
    }
    assert_eq!(env.read(), before, "a refused mint changed the file");
    let audit = fs_read(&env.audit_path());
    assert!(!audit.contains(&token), "the audit log holds the token");
}

fn fs_read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A scope with a `*` anywhere but alone or after a final colon never matches a check: mint
/// says so and suggests the prefix form instead of issuing a useless token.
#[test]
fn mint_refuses_a_scope_that_can_never_match() {
    let env = Env::init();
    let before = env.read();
    for (scope, suggested) in [
        (
            "kafka*",
            "`kafka:*` for every scope that starts with `kafka:`",
        ),
        ("a*b", "a scope without `*`"),
        ("read,x:*y", "a scope without `*`"),
    ] {
        let out = env.tokenfile(&["mint", "--scope", scope]);
        let out = explains(out, USAGE, &["never match", suggested], &[]);
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert_eq!(env.read(), before);
    env.mint(&["--scope", "kafka:*"]);
    env.mint(&["--scope", "*"]);
}

#[test]
fn empty_required_scopes_point_at_the_stray_comma() {
    let env = Env::init();
    for scope in ["", "read,", "a,,b"] {
        let out = env.tokenfile_stdin(&["check", "--scope", scope], b"tok\n");
        explains(out, USAGE, &["empty required scope", "stray comma"], &[]);
    }
}

/// Whitespace pasted with a token: the token is compared exactly (a check never trims), and
/// the message says what is wrong rather than calling a whole token truncated.
#[test]
fn a_token_with_whitespace_around_it_is_explained() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    for pasted in [
        format!("{token} "),
        format!(" {token}"),
        format!("{token}\t"),
    ] {
        let out = env.check_out(&pasted, &["read"]);
        let out = explains(out, UNAUTHORIZED, &["whitespace"], &[&token]);
        assert!(!out.err().contains("truncated"), "{out:?}");
        let out = env.tokenfile_stdin(
            &["check", "--scope", "read", "--json"],
            format!("{pasted}\n").as_bytes(),
        );
        let out = out.code(UNAUTHORIZED);
        assert_eq!(out.json()["reason"], "unknown token");
        assert!(out.json()["hint"].as_str().unwrap().contains("whitespace"));
    }
}

#[test]
fn list_marks_a_repeated_token_as_a_duplicate() {
    let env = edited_into_a_bad_state();
    let records = env.records();
    let status: Vec<(u64, &str)> = records
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, [(2, "active"), (5, "duplicate")], "{records:?}");
    let out = env.tokenfile(&["list"]).ok();
    let rows: Vec<String> = out.out().lines().skip(1).map(str::to_string).collect();
    assert!(
        rows[0].contains(" active ") && rows[1].contains(" duplicate "),
        "{rows:?}"
    );
}

#[test]
fn a_missing_file_in_a_missing_directory_gets_a_way_out_that_works() {
    let env = Env::new();
    let file = env.path("nodir/tokens");
    let file = file.to_str().unwrap();
    let dir = env.path("nodir").display().to_string();
    let out = env.tokenfile(&["--file", file, "list"]);
    let way_out = format!("mkdir -p {dir} && tokenfile --file {file} init");
    explains(out, IO, &[file, &way_out], &[]);
    // And it does work.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(way_out.replace("tokenfile ", &format!("{BIN} ")))
        .status()
        .unwrap();
    assert!(status.success());
    env.tokenfile(&["--file", file, "list"]).ok();
}

/// An expiry whose instant is past year 9999 in UTC is valid (RFC 3339 allows the offset):
/// every command handles it, none panics.
#[test]
fn an_expiry_at_the_edge_of_time_is_handled_everywhere() {
    let env = Env::with_bytes(b"late\tread\t\t\t9999-12-31T23:30:00-01:00\n");
    let out = env.tokenfile(&["list"]).ok();
    assert!(out.out().contains("9999-12-31T23:30:00-01:00"), "{out:?}");
    assert_eq!(env.check("late", &["read"]), OK);
    env.tokenfile(&["lint"]).ok();
    let token = env.mint(&["--scope", "read", "--expires", "9999-12-31T23:30:00-01:00"]);
    assert_eq!(env.check(&token, &["read"]), OK);
}

#[test]
fn lint_sends_line_problems_to_edit_and_mode_problems_to_chmod() {
    let env = Env::init();
    env.mint(&["--scope", "read"]);
    env.chmod(0o666);
    let out = env.tokenfile(&["lint"]);
    let out = explains(out, PROBLEMS, &["each message above says how"], &[]);
    assert!(out.out().contains("chmod o-w"), "{out:?}");
    assert!(!out.err().contains("tokenfile edit"), "{out:?}");
    let env = edited_into_a_bad_state();
    explains(
        env.tokenfile(&["lint"]),
        PROBLEMS,
        &["fix the lines with `tokenfile edit`"],
        SECRETS,
    );
}

/// A port another process holds: the message says what to do about it.
#[test]
fn serve_on_a_taken_port_says_what_to_do() {
    let env = Env::init();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = env.tokenfile(&["serve", "--http", &addr]);
    explains(
        out,
        IO,
        &[&addr, "another process listens there", "another port"],
        &[],
    );
}
