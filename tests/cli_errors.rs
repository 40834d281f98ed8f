//! Errors a person understands: what a new user meets (a missing file, a world-writable one, a
//! misspelt scope, a truncated token, a file edited into a bad state) gets a message on stderr
//! that names the file (and the line, for a line of it), says what went wrong and what to do
//! next — with the exit code of SPEC §3, nothing on stdout but what was asked for, and never
//! a secret.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

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
    explains(out, IO, &[&env.dir_str(), "not a directory"], &[]);
}

#[test]
fn a_world_writable_file_is_refused_by_check_and_warned_about_elsewhere() {
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

    // list and mint still work (an admin must be able to see and fix the file), but say
    // that check and serve will refuse it.
    let out = env.tokenfile(&["list"]);
    let out = explains(out, OK, &["world-writable", &fix, "refuse"], &[&token]);
    assert!(out.out().starts_with("ID"), "{out:?}");
    let out = env.tokenfile(&["mint", "--scope", "read"]);
    let out = explains(out, OK, &["world-writable", &fix], &[]);
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
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(running.id() as i32, libc::SIGTERM) };
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
