//! docs/format.md tokens and IDs, §3 commands, flags, outputs and exit codes, and expiry — through
//! the real binary.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn is_hex12(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b"0123456789abcdef".contains(&b))
}

/// The last line of the file, as text.
fn last_line(env: &Env) -> String {
    let text = String::from_utf8(env.read()).expect("utf-8 file");
    text.lines().last().expect("a line").to_string()
}

// --- Tokens and IDs -------------------------------------------------------------------

#[test]
fn mint_prints_the_token_alone_and_stores_only_its_digest() {
    let env = Env::init();
    let out = env
        .tokenfile(&["mint", "--scope", "read", "--name", "ci"])
        .ok();
    let stdout = out.out();
    let token = stdout.strip_suffix('\n').expect("one trailing newline");
    assert!(!token.contains('\n'), "{out:?}");
    assert!(is_minted_shape(token), "{out:?}");
    // The human context goes to stderr and names the ID, never the token.
    assert!(out.err().contains(&id_of(token.as_bytes())), "{out:?}");
    assert!(!out.err().contains(token), "{out:?}");

    let file = String::from_utf8(env.read()).unwrap();
    assert!(!file.contains(token), "the token must not be stored");
    let line = last_line(&env);
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[0], hashed(token.as_bytes()));
    assert_eq!(fields[1], "read");
    assert_eq!(fields[2], "ci");
    let created = parse_time(fields[3]);
    assert!((now() - created).whole_seconds().abs() < 300, "{line}");
    assert_eq!(fields.len(), 4, "no expiry field without --expires: {line}");

    assert_eq!(env.check(token, &["read"]), OK);
    let second = env.mint(&["--scope", "read"]);
    assert_ne!(second, token, "every mint makes a new token");
}

#[test]
fn plaintext_mint_stores_the_token_itself() {
    let env = Env::init();
    let out = env
        .tokenfile(&["mint", "--scope", "read", "--plaintext"])
        .ok();
    let token = out.out().trim_end_matches('\n').to_string();
    assert!(is_minted_shape(&token));
    let line = last_line(&env);
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[..3], [token.as_str(), "read", ""], "{line}");
    parse_time(fields[3]);
    let record = &env.records()[0];
    assert_eq!(record["stored"], "plaintext");
    assert_eq!(record["id"], id_of(token.as_bytes()));
    assert_eq!(env.check(&token, &["read"]), OK);
    // lint warns about plaintext but the file is fine.
    let lint = env.tokenfile(&["lint", "--json"]).ok().json();
    assert!(has_finding(&lint, |f| f["kind"] == "plaintext"), "{lint}");
    env.tokenfile(&["lint", "--strict"]).code(PROBLEMS);
}

#[test]
fn id_prints_the_id_that_list_shows() {
    let env = Env::init();
    let hashed_token = env.mint(&["--scope", "read"]);
    let plain_token = env.mint(&["--scope", "read", "--plaintext"]);
    let listed = env.ids();
    for (i, token) in [&hashed_token, &plain_token].into_iter().enumerate() {
        let out = env
            .tokenfile_stdin(&["id"], format!("{token}\n").as_bytes())
            .ok();
        assert_eq!(
            out.out(),
            format!("{}\n", id_of(token.as_bytes())),
            "{out:?}"
        );
        let id = out.out().trim_end().to_string();
        assert!(is_hex12(&id));
        assert_eq!(listed[i], id);
    }
    // The ID survives `hash`.
    env.tokenfile(&["hash"]).ok();
    assert_eq!(env.ids(), listed);
    // No token on stdin is a usage error.
    env.tokenfile_stdin(&["id"], b"").code(USAGE);
    env.tokenfile(&["id"]).code(USAGE);
}

#[test]
fn tokens_are_never_accepted_as_arguments() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    env.tokenfile(&["check", "--scope", "read", &token])
        .code(USAGE);
    env.tokenfile(&["id", &token]).code(USAGE);
}

#[test]
fn the_token_is_the_first_line_of_stdin_without_its_ending() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let check = |stdin: String| {
        env.tokenfile_stdin(&["check", "--scope", "read"], stdin.as_bytes())
            .code
    };
    assert_eq!(check(format!("{token}\n")), OK);
    assert_eq!(check(format!("{token}\r\n")), OK);
    assert_eq!(check(token.clone()), OK);
    assert_eq!(check(format!("{token}\nsomething else\n")), OK);
    assert_eq!(check(format!("\n{token}\n")), UNAUTHORIZED);
    assert_eq!(check(format!("{token} \n")), UNAUTHORIZED);
    assert_eq!(check(format!(" {token}\n")), UNAUTHORIZED);
    assert_eq!(check(String::new()), UNAUTHORIZED);
}

#[test]
fn a_mistyped_or_truncated_minted_token_is_unknown_and_recognized() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let last = token.chars().last().unwrap();
    let typo = format!(
        "{}{}",
        &token[..token.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    let truncated = token[..token.len() - 2].to_string();
    for bad in [&typo, &truncated] {
        let out = env.check_out(bad, &["read"]).code(UNAUTHORIZED);
        assert!(out.err().contains("checksum"), "{out:?}");
        // No record has it: exit 4 (docs/exit-codes.md; this test once expected 0), the ID all the same.
        let id = env
            .tokenfile_stdin(&["id"], format!("{bad}\n").as_bytes())
            .code(NO_SUCH_ID);
        assert!(id.err().contains("checksum"), "{id:?}");
        assert_eq!(id.out(), format!("{}\n", id_of(bad.as_bytes())));
    }
}

#[test]
fn check_reads_the_token_from_the_named_environment_variable() {
    let env = Env::init();
    let token = env.mint(&["--scope", "deploy"]);
    let run = |value: Option<&str>, scope: &str| {
        let mut cmd = env.command(&["check", "--scope", scope, "--token-env", "MY_TOKEN"]);
        match value {
            Some(v) => cmd.env("MY_TOKEN", v),
            None => cmd.env_remove("MY_TOKEN"),
        };
        // stdin holds another, valid token: --token-env must win.
        run(cmd, Some(format!("{token}\n").as_bytes()))
    };
    assert_eq!(run(Some(&token), "deploy").code, OK);
    assert_eq!(run(Some(&format!("{token}\n")), "deploy").code, OK);
    assert_eq!(run(Some(&token), "admin").code, FORBIDDEN);
    assert_eq!(run(Some("wrong"), "deploy").code, UNAUTHORIZED);
    assert_eq!(run(None, "deploy").code, UNAUTHORIZED);
    assert_eq!(run(Some(""), "deploy").code, UNAUTHORIZED);
}

/// The shortest prefix of at least 4 digits of `id` that no other ID shares.
fn unique_prefix(id: &str, all: &[String]) -> String {
    (4..=12)
        .map(|n| id[..n].to_string())
        .find(|p| {
            all.iter()
                .filter(|other| other.starts_with(p.as_str()))
                .count()
                == 1
        })
        .expect("IDs are distinct")
}

#[test]
fn revoke_and_rotate_accept_an_id_prefix_of_at_least_four_digits() {
    let env = Env::init();
    let tokens: Vec<String> = (0..3).map(|_| env.mint(&["--scope", "read"])).collect();
    let ids: Vec<String> = tokens.iter().map(|t| id_of(t.as_bytes())).collect();
    assert_eq!(env.ids(), ids);

    let p0 = unique_prefix(&ids[0], &ids);
    env.tokenfile(&["revoke", &p0]).ok();
    assert_eq!(env.check(&tokens[0], &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&tokens[1], &["read"]), OK);

    let p1 = unique_prefix(&ids[1], &ids).to_uppercase();
    let rotated = env.tokenfile(&["rotate", &p1]).ok();
    let new_token = rotated.out().trim_end().to_string();
    assert!(is_minted_shape(&new_token), "{rotated:?}");
    assert_eq!(env.check(&tokens[1], &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&new_token, &["read"]), OK);

    // Too short, not hex, too long: usage errors; nothing changes.
    let before = env.read();
    for bad in [&ids[2][..3], "zzzz", "12 4", &format!("{}0", ids[2])] {
        env.tokenfile(&["revoke", bad]).code(USAGE);
        env.tokenfile(&["rotate", bad]).code(USAGE);
    }
    // Unknown: 4.
    let unknown = (0..16u32)
        .map(|n| format!("{n:04x}"))
        .find(|p| !env.ids().iter().any(|id| id.starts_with(p.as_str())))
        .unwrap();
    let out = env.tokenfile(&["revoke", &unknown]).code(NO_SUCH_ID);
    assert!(out.err().contains(&unknown), "{out:?}");
    env.tokenfile(&["rotate", &unknown]).code(NO_SUCH_ID);
    assert_eq!(env.read(), before);
}

/// Two small strings whose SHA-256 share the first four hex digits.
fn colliding_pair() -> (String, String, String) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for n in 0..200_000u32 {
        let token = format!("amb-{n}");
        let prefix = sha256_hex(token.as_bytes())[..4].to_string();
        if let Some(first) = seen.insert(prefix.clone(), token.clone()) {
            return (first, token, prefix);
        }
    }
    panic!("no 4-digit collision among 200000 strings");
}

#[test]
fn an_ambiguous_prefix_is_refused_and_lists_the_candidates() {
    let (a, b, prefix) = colliding_pair();
    let original = format!("{a}\tread\tfirst\n{b}\twrite\tsecond\n");
    let env = Env::with_bytes(original.as_bytes());
    let (id_a, id_b) = (id_of(a.as_bytes()), id_of(b.as_bytes()));
    for cmd in ["revoke", "rotate"] {
        let out = env.tokenfile(&[cmd, &prefix]).code(NO_SUCH_ID);
        // The candidates with their names, and the file they are in.
        for part in [
            format!("{id_a} (first)"),
            format!("{id_b} (second)"),
            env.file_str(),
        ] {
            assert!(out.err().contains(&part), "{part:?}: {out:?}");
        }
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert_eq!(env.read(), original.as_bytes());
    let common = id_a
        .bytes()
        .zip(id_b.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    env.tokenfile(&["revoke", &id_b[..common + 1]]).ok();
    assert_eq!(env.read(), format!("{a}\tread\tfirst\n").as_bytes());
}

#[test]
fn revoke_is_all_or_nothing() {
    let env = Env::init();
    let t1 = env.mint(&["--scope", "read"]);
    let t2 = env.mint(&["--scope", "read"]);
    let t3 = env.mint(&["--scope", "read"]);
    let before = env.read();
    let (id1, id2) = (id_of(t1.as_bytes()), id_of(t2.as_bytes()));
    let all = env.ids();
    let missing = (0..16u32)
        .map(|n| format!("{n:04x}"))
        .find(|p| !all.iter().any(|id| id.starts_with(p.as_str())))
        .unwrap();
    let missing = missing.as_str();
    env.tokenfile(&["revoke", &id1, missing]).code(NO_SUCH_ID);
    env.tokenfile(&["revoke", &id1, "abc"]).code(USAGE);
    assert_eq!(env.read(), before);
    env.tokenfile(&["revoke"]).code(USAGE);

    env.tokenfile(&["revoke", &id1, &id2, &id1]).ok();
    assert_eq!(env.check(&t1, &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&t2, &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&t3, &["read"]), OK);
    assert_eq!(env.ids(), vec![id_of(t3.as_bytes())]);
}

#[test]
fn revoke_removes_every_copy_of_a_duplicated_token() {
    let env = Env::with_bytes(b"dup\tread\nother\tread\ndup\t*\n");
    env.tokenfile(&["revoke", &id_of(b"dup")]).ok();
    assert_eq!(env.read(), b"other\tread\n");
}

// --- rotate ---------------------------------------------------------------------------

#[test]
fn rotate_without_grace_replaces_the_token_keeping_scopes_and_name() {
    let env = Env::init();
    let old = env.mint(&["--scope", "read,kafka:*", "--name", "billing job"]);
    let out = env.tokenfile(&["rotate", &id_of(old.as_bytes())]).ok();
    let new = out.out().strip_suffix('\n').unwrap().to_string();
    assert!(is_minted_shape(&new) && new != old, "{out:?}");
    assert!(!out.err().contains(&new), "{out:?}");
    assert_eq!(env.check(&old, &["read"]), UNAUTHORIZED);
    assert_eq!(env.check(&new, &["read", "kafka:x"]), OK);
    assert_eq!(env.check(&new, &["write"]), FORBIDDEN);
    let records = env.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["id"], id_of(new.as_bytes()));
    assert_eq!(records[0]["name"], "billing job");
    assert_eq!(records[0]["scopes"], serde_json::json!(["read", "kafka:*"]));
    assert_eq!(records[0]["stored"], "hashed");
}

#[test]
fn rotate_with_grace_keeps_the_old_token_until_now_plus_grace() {
    let env = Env::init();
    let old = env.mint(&["--scope", "deploy", "--name", "ci"]);
    let old_id = id_of(old.as_bytes());
    let before = now();
    let out = env
        .tokenfile(&["rotate", &old_id, "--grace", "1h", "--json"])
        .ok();
    let after = now();
    let json = out.json();
    let new = json["token"].as_str().unwrap().to_string();
    assert!(is_minted_shape(&new));
    assert_eq!(json["id"], id_of(new.as_bytes()));
    assert_eq!(json["replaces"], old_id.as_str());
    assert_eq!(json["name"], "ci");

    let records = env.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let old_record = records.iter().find(|r| r["id"] == old_id.as_str()).unwrap();
    let expires = parse_time(old_record["expires"].as_str().expect("old record expires"));
    let hour = time::Duration::hours(1);
    assert!(
        expires >= before + hour - time::Duration::seconds(2)
            && expires <= after + hour + time::Duration::seconds(2),
        "old expiry {expires} not about now+1h ({before}..{after})"
    );
    assert_eq!(json["old_valid_until"], old_record["expires"]);
    assert_eq!(old_record["status"], "active");
    assert_eq!(env.check(&old, &["deploy"]), OK);
    assert_eq!(env.check(&new, &["deploy"]), OK);

    // A rotation's new token inherits the old expiry unless --expires says otherwise.
    let out = env
        .tokenfile(&[
            "rotate",
            &id_of(new.as_bytes()),
            "--expires",
            "30d",
            "--json",
        ])
        .ok();
    let newest = out.json();
    let expires = parse_time(newest["expires"].as_str().unwrap());
    let days = (expires - now()).whole_days();
    assert!((29..=30).contains(&days), "{newest}");
    env.tokenfile(&["rotate", &old_id, "--grace", "soon"])
        .code(USAGE);
}

// --- init, the file path, and I/O errors -----------------------------------------------

#[test]
fn init_creates_a_private_file_with_a_header_comment_even_with_a_permissive_umask() {
    let env = Env::new();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$0\" init", BIN])
        .env("TOKENFILE", &env.file)
        .env_remove("TOKENFILE_AUDIT_LOG");
    let out = run(cmd, None).ok();
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(env.mode(), 0o600);
    let text = String::from_utf8(env.read()).unwrap();
    assert!(!text.is_empty() && text.ends_with('\n'));
    assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    env.tokenfile(&["lint", "--strict"]).ok();
    assert!(env.ids().is_empty());
}

#[test]
fn init_refuses_an_existing_file_and_leaves_it_alone() {
    let env = Env::with_bytes(b"precious\tread\n");
    env.chmod(0o640);
    let out = env.tokenfile(&["init"]);
    assert_ne!(out.code, OK, "{out:?}");
    assert!(out.err().contains(&env.file_str()), "{out:?}");
    assert_eq!(env.read(), b"precious\tread\n");
    assert_eq!(env.mode(), 0o640);
    // An empty existing file is still a file.
    let empty = Env::with_bytes(b"");
    assert_ne!(empty.tokenfile(&["init"]).code, OK);
    assert_eq!(empty.read(), b"");
}

#[test]
fn a_missing_file_is_an_io_error_that_names_it() {
    let env = Env::new();
    let commands: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["lint"],
        &["check", "--scope", "read"],
        &["mint", "--scope", "read"],
        &["revoke", "abcd"],
        &["rotate", "abcd"],
        &["hash"],
        &["edit"],
        &["serve", "--http", "127.0.0.1:0"],
    ];
    // The message says how to create the file, and never echoes the token on stdin.
    let init = format!("tokenfile --file {} init", env.file_str());
    for args in commands {
        let out = env.tokenfile_stdin(args, b"some-token\n").code(IO);
        let out = out.err_has(&format!("{} does not exist", env.file_str()));
        let out = out.err_has(&init);
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_no_secret(&out.stderr, &[b"some-token"], "stderr");
    }
    assert!(!env.file.exists(), "nothing may create the file but init");
    assert!(
        !env.path("tokens.lock").exists(),
        "a mistyped path leaves no lock file behind"
    );
}

#[test]
fn file_flag_wins_over_the_environment() {
    let a = Env::init();
    let b = Env::init();
    let a_before = a.read();
    // `a`'s environment, `b` by flag.
    let out = run(
        a.command(&["--file", &b.file_str(), "mint", "--scope", "read"]),
        None,
    )
    .ok();
    let token = out.out().trim_end().to_string();
    assert_eq!(a.read(), a_before);
    assert_eq!(b.check(&token, &["read"]), OK);
    // The short form, after the command.
    let out = run(
        a.command(&["mint", "-f", &b.file_str(), "--scope", "x"]),
        None,
    )
    .ok();
    assert_eq!(b.check(out.out().trim_end(), &["x"]), OK);
    assert_eq!(a.read(), a_before);
    // Without --file, $TOKENFILE is used.
    let t = a.mint(&["--scope", "read"]);
    assert_eq!(a.check(&t, &["read"]), OK);
    assert_eq!(b.check(&t, &["read"]), UNAUTHORIZED);
}

#[test]
fn help_documents_the_default_file_and_the_exit_codes() {
    let env = Env::new();
    let out = env.tokenfile(&["--help"]).ok();
    assert!(out.out().contains("/etc/tokenfile/tokens"), "{out:?}");
    assert!(out.out().contains("TOKENFILE"), "{out:?}");
    env.tokenfile(&["--version"]).ok();
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::init();
    for args in [
        &[][..],
        &["frobnicate"],
        &["list", "--bogus"],
        &["mint", "--scope", "read", "--expires", "whenever"],
        &[
            "mint",
            "--scope",
            "read",
            "--expires",
            "2001-01-01T00:00:00Z",
        ],
        &["mint", "--scope", "read", "--name", "tab\there"],
        &["mint", "--scope", "read", "--name", "line\nbreak"],
        &["--lock-timeout", "forever", "mint", "--scope", "read"],
        &["completions", "powershell-ish"],
        &["serve"],
    ] {
        let out = env.tokenfile(args).code(USAGE);
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert!(env.ids().is_empty());
}

#[test]
fn completions_for_each_shell() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.tokenfile(&["completions", shell]).ok();
        assert!(out.out().len() > 100, "{out:?}");
        assert!(out.out().contains("tokenfile"), "{out:?}");
        assert!(out.out().contains("rotate"), "{out:?}");
    }
}

#[test]
fn json_outputs_parse() {
    let env = Env::init();
    let minted = env
        .tokenfile(&["mint", "--scope", "read", "--name", "j", "--json"])
        .ok()
        .json();
    let token = minted["token"].as_str().unwrap().to_string();
    assert!(is_minted_shape(&token));
    assert_eq!(minted["id"], id_of(token.as_bytes()));
    assert_eq!(minted["scopes"], serde_json::json!(["read"]));
    assert_eq!(minted["name"], "j");
    assert_eq!(minted["stored"], "hashed");
    parse_time(minted["created"].as_str().unwrap());

    let list = env.list_json();
    assert_eq!(list["records"][0]["id"], minted["id"]);
    assert_eq!(list["records"][0]["status"], "active");
    let lint = env.tokenfile(&["lint", "--json"]).ok().json();
    assert_eq!(lint["errors"], 0);
    let check = env
        .tokenfile_stdin(
            &["check", "--scope", "read", "--json"],
            format!("{token}\n").as_bytes(),
        )
        .ok()
        .json();
    assert_eq!(check["result"], "granted");
    let rotated = env
        .tokenfile(&["rotate", minted["id"].as_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(rotated["replaces"], minted["id"]);
}

#[test]
fn check_refuses_a_world_writable_file() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    env.chmod(0o666);
    let out = env.check_out(&token, &["read"]).code(PROBLEMS);
    assert!(out.err().contains("world-writable"), "{out:?}");
    let lint = env.tokenfile(&["lint", "--json"]).code(PROBLEMS).json();
    assert!(
        has_finding(&lint, |f| f["kind"] == "unsafe-permissions"),
        "{lint}"
    );
    env.chmod(0o600);
    assert_eq!(env.check(&token, &["read"]), OK);
    // A world-writable directory without the sticky bit lets anyone replace the file.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(env.check(&token, &["read"]), PROBLEMS);
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(env.check(&token, &["read"]), OK);
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn lint_exit_codes() {
    let clean = Env::init();
    clean.mint(&["--scope", "read"]);
    clean.tokenfile(&["lint"]).ok();
    clean.tokenfile(&["lint", "--strict"]).ok();

    let warnings = Env::with_bytes(b"plain\tread\n");
    let out = warnings.tokenfile(&["lint"]).ok();
    assert!(out.out().contains("[plaintext]"), "{out:?}");
    warnings.tokenfile(&["lint", "--strict"]).code(PROBLEMS);

    let errors = Env::with_bytes(b"bad\t\n");
    errors.tokenfile(&["lint"]).code(PROBLEMS);
}

// --- expiry ---------------------------------------------------------------------------

#[test]
fn expires_accepts_durations_and_rfc3339() {
    let env = Env::init();
    for (when, days) in [("90d", 90), ("12h", 0), ("30m", 0), ("2w", 14)] {
        let out = env
            .tokenfile(&["mint", "--scope", "read", "--expires", when, "--json"])
            .ok();
        let json = out.json();
        let expires = parse_time(json["expires"].as_str().unwrap());
        let created = parse_time(json["created"].as_str().unwrap());
        let expected = match when {
            "12h" => time::Duration::hours(12),
            "30m" => time::Duration::minutes(30),
            _ => time::Duration::days(days),
        };
        assert_eq!(expires - created, expected, "{out:?}");
        assert_eq!(env.check(json["token"].as_str().unwrap(), &["read"]), OK);
    }
    let token = env.mint(&["--scope", "read", "--expires", "2099-06-01T12:00:00+02:00"]);
    let record = env
        .records()
        .into_iter()
        .find(|r| r["id"] == id_of(token.as_bytes()))
        .unwrap();
    assert_eq!(record["expires"], "2099-06-01T10:00:00Z");
    assert!(last_line(&env).ends_with("\t2099-06-01T10:00:00Z"));
    assert_eq!(env.check(&token, &["read"]), OK);
}

#[test]
fn an_expired_record_grants_nothing_and_is_listed_as_expired() {
    let env = Env::with_bytes(
        b"old-tok\tread\told one\t2000-01-01T00:00:00Z\t2001-01-01T00:00:00+01:00\n\
          new-tok\tread\tnew one\t\t2999-01-01T00:00:00Z\n",
    );
    let out = env.check_out("old-tok", &["read"]).code(UNAUTHORIZED);
    assert!(out.err().contains("expired"), "{out:?}");
    assert_eq!(env.check("new-tok", &["read"]), OK);

    let records = env.records();
    assert_eq!(records[0]["status"], "expired");
    assert_eq!(records[0]["expires"], "2000-12-31T23:00:00Z");
    assert_eq!(records[1]["status"], "active");
    let text = env.tokenfile(&["list"]).ok().out();
    let row = text
        .lines()
        .find(|l| l.starts_with(&id_of(b"old-tok")))
        .unwrap_or_else(|| panic!("no row for the old record:\n{text}"));
    assert!(row.split_whitespace().any(|w| w == "expired"), "{row}");

    let lint = env.tokenfile(&["lint", "--json"]).ok().json();
    assert!(
        has_finding(&lint, |f| f["kind"] == "expired" && f["line"] == 1),
        "{lint}"
    );
    let json = env
        .tokenfile_stdin(&["check", "--scope", "read", "--json"], b"old-tok\n")
        .code(UNAUTHORIZED)
        .json();
    assert_eq!(json["result"], "unauthorized");
}

#[test]
fn check_and_id_answer_after_the_first_line_without_waiting_for_end_of_input() {
    // A terminal, or `{ echo "$T"; long_running; } | tokenfile check`: stdin stays open.
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    for args in [&["check", "--scope", "read"][..], &["id"]] {
        let mut child = env
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, format!("{token}\n").as_bytes()).unwrap();
        // Generous: this detects a hang, it does not measure speed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        drop(stdin);
        let status = status.unwrap_or_else(|| panic!("{args:?} waited for end of input"));
        assert_eq!(status.code(), Some(OK), "{args:?}");
    }
}
