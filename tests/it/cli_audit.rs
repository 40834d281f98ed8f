//! docs/writing.md (audit log): one JSON line per change, 0600, IDs/names/scopes/uid, never a token
//! or a digest; a failure to write it is a warning, never a lost change.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

fn uid() -> u64 {
    u64::from(nix::unistd::getuid().as_raw())
}

#[track_caller]
fn assert_event(line: &serde_json::Value, event: &str, ids: &[&str]) {
    assert_eq!(line["event"], event, "{line}");
    assert_eq!(line["ids"], serde_json::json!(ids), "{line}");
    assert_eq!(line["uid"], uid(), "{line}");
    let time = parse_time(line["time"].as_str().expect("time"));
    assert!((now() - time).whole_seconds().abs() < 600, "{line}");
}

#[test]
fn every_change_appends_one_line_and_nothing_else_does() {
    let env = Env::new();
    // A permissive umask must not make the log readable by others.
    let mut init = Command::new("sh");
    init.args(["-c", "umask 000; exec \"$0\" init", BIN])
        .env("TOKENFILE", &env.file)
        .env_remove("TOKENFILE_AUDIT_LOG");
    run(init, None).ok();
    let log = env.audit_path();
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_event(&env.audit_lines()[0], "init", &[]);

    let t1 = env.mint(&[
        "--scope",
        "read,kafka:*",
        "--name",
        "ci bot",
        "--expires",
        "90d",
    ]);
    let id1 = id_of(t1.as_bytes());
    let line = &env.audit_lines()[1];
    assert_event(line, "mint", &[id1.as_str()]);
    assert_eq!(line["records"][0]["name"], "ci bot");
    assert_eq!(line["records"][0]["scopes"], "read,kafka:*");
    assert!(line["records"][0]["expires"].is_string(), "{line}");

    let t2 = env.mint(&["--scope", "write", "--plaintext"]);
    let id2 = id_of(t2.as_bytes());
    assert_event(&env.audit_lines()[2], "mint", &[id2.as_str()]);

    let rotated = env.tokenfile(&["rotate", &id1, "--grace", "1h"]).ok();
    let t3 = rotated.out().trim_end().to_string();
    let id3 = id_of(t3.as_bytes());
    let line = &env.audit_lines()[3];
    assert_event(line, "rotate", &[id3.as_str()]);
    assert_eq!(line["replaces"], id1.as_str());
    assert_eq!(line["records"][0]["name"], "ci bot");

    env.tokenfile(&["hash"]).ok();
    let line = &env.audit_lines()[4];
    assert_event(line, "hash", &[id2.as_str()]);
    assert_eq!(line["records"][0]["scopes"], "write");

    env.tokenfile(&["revoke", &id1, &id2]).ok();
    assert_event(
        &env.audit_lines()[5],
        "revoke",
        &[id1.as_str(), id2.as_str()],
    );

    let editor = env.path("editor.sh");
    write_script(
        &editor,
        "printf 'by-hand\\tread\\tadded by hand\\n' >> \"$1\"",
    );
    run(env.command(&["edit"]).env("EDITOR", &editor), None).ok();
    let line = &env.audit_lines()[6];
    assert_event(line, "edit", &[id_of(b"by-hand").as_str()]);
    assert_eq!(line["added"], serde_json::json!([id_of(b"by-hand")]));
    assert_eq!(line["records"][0]["name"], "added by hand");

    // The hand-added record is plaintext: hashing it is a change.
    env.tokenfile(&["hash"]).ok();
    assert_event(&env.audit_lines()[7], "hash", &[id_of(b"by-hand").as_str()]);

    // Reads, failed changes and changes that change nothing log nothing.
    let count = env.audit_lines().len();
    env.tokenfile(&["list"]).ok();
    env.tokenfile(&["list", "--json"]).ok();
    env.tokenfile(&["lint"]).code(OK);
    env.check(&t3, &["read"]);
    env.id(&t3);
    env.tokenfile(&["revoke", "ffff0000"]).code(NO_SUCH_ID);
    env.tokenfile(&["mint", "--scope", "bad scope"]).code(USAGE);
    env.tokenfile(&["hash"]).ok(); // nothing left to hash
    run(env.command(&["edit"]).env("EDITOR", "true"), None).ok();
    env.tokenfile(&["init"]);
    assert_eq!(env.audit_lines().len(), count);

    // Never a token, never a digest.
    let text = fs::read(&log).unwrap();
    let secrets: Vec<Vec<u8>> = [&t1, &t2, &t3]
        .iter()
        .flat_map(|t| [t.as_bytes().to_vec(), sha256_hex(t.as_bytes()).into_bytes()])
        .chain([sha256_hex(b"by-hand").into_bytes()])
        .collect();
    let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    assert_no_secret(&text, &secrets, "the audit log");
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn sudo_user_is_recorded() {
    let env = Env::init();
    let out = run(
        env.command(&["mint", "--scope", "read"])
            .env("SUDO_USER", "alice"),
        None,
    )
    .ok();
    let line = env.audit_lines().pop().unwrap();
    assert_eq!(line["sudo_user"], "alice", "{out:?}");
}

#[test]
fn the_log_path_comes_from_the_flag_then_the_environment() {
    let env = Env::init();
    let by_env = env.path("env-audit.jsonl");
    let by_flag = env.path("flag-audit.jsonl");
    let default_lines = env.audit_lines().len();

    run(
        env.command(&["mint", "--scope", "a"])
            .env("TOKENFILE_AUDIT_LOG", &by_env),
        None,
    )
    .ok();
    run(
        env.command(&[
            "--audit-log",
            &by_flag.display().to_string(),
            "mint",
            "--scope",
            "b",
        ])
        .env("TOKENFILE_AUDIT_LOG", &by_env),
        None,
    )
    .ok();
    let lines = |p: &std::path::Path| fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(&by_env), 1);
    assert_eq!(lines(&by_flag), 1);
    assert_eq!(env.audit_lines().len(), default_lines);
    assert_eq!(
        fs::metadata(&by_flag).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn an_unwritable_audit_log_is_a_warning_and_the_change_lands() {
    let env = Env::new();
    let missing = env.path("no-such-dir/audit.jsonl");
    let flag = missing.display().to_string();
    let with_log = |args: &[&str]| {
        let mut all = vec!["--audit-log", flag.as_str()];
        all.extend_from_slice(args);
        env.tokenfile(&all)
    };
    let warned = |out: &Out| {
        assert_eq!(out.code, OK, "{out:?}");
        assert!(out.err().contains("warning"), "{out:?}");
        assert!(
            out.err().contains(&flag),
            "the warning names the log: {out:?}"
        );
    };
    let out = with_log(&["init"]);
    warned(&out);
    assert!(env.file.exists());

    let out = with_log(&["mint", "--scope", "read"]);
    warned(&out);
    let token = out.out().strip_suffix('\n').unwrap().to_string();
    assert!(
        is_minted_shape(&token),
        "the token is still printed: {out:?}"
    );
    assert_eq!(env.check(&token, &["read"]), OK);

    let out = with_log(&["rotate", &id_of(token.as_bytes())]);
    warned(&out);
    let new = out.out().trim_end().to_string();
    assert_eq!(env.check(&token, &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&new, &["read"]), OK);

    let out = with_log(&["revoke", &id_of(new.as_bytes())]);
    warned(&out);
    assert_eq!(env.check(&new, &["read"]), UNAUTHORIZED);
    assert!(!missing.parent().unwrap().exists());
    assert!(!env.audit_path().exists(), "no fallback to another log");
}
