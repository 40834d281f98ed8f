//! docs/exit-codes.md: a secret never appears on stderr, in an error message, in the audit log,
//! in `list` or in a `--json` document other than `mint`'s and `rotate`'s token field — also
//! when a user pastes a token where a scope, name or ID goes, whole, cut short, or glued to
//! other characters. These cases came from an adversarial review: a minted token without its
//! `tf_` prefix, a token already sitting in a record's scopes or name, a legacy plaintext
//! credential of the file pasted into a name or scope, a token in the `--file` or
//! `--audit-log` path.

use std::fs;

use crate::support::{
    self, Env, OK, USAGE, assert_no_secret, hashed, id_of, is_minted_shape, write_script,
};

/// What must never show of a secret: its first and its last 12 characters.
fn parts(secret: &str) -> [&[u8]; 2] {
    [
        &secret.as_bytes()[..12],
        &secret.as_bytes()[secret.len() - 12..],
    ]
}

#[track_caller]
fn assert_clean(out: &support::Out, secrets: &[&str], label: &str) {
    assert!(!out.err().contains("panicked"), "{label}: {out:?}");
    for secret in secrets {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert_no_secret(bytes, &parts(secret), &format!("{label} {stream}"));
        }
    }
}

/// The random part and checksum of a minted token, as `${T#tf_}` gives it.
fn bare(token: &str) -> &str {
    &token[3..]
}

/// A token's tail cut from the front (no prefix, no checksum to verify): fixed, so that the
/// test never depends on what a random token happens to hold.
const CUT_TAIL: &str = "Xk3vQ9pLm2Rt7WzAb8Nc4Yd1Ue6Vf0Gh5Jq";

#[test]
fn a_token_without_its_prefix_is_refused_and_never_echoed() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read", "--name", "real"]);
    let id = id_of(token.as_bytes());
    let before = env.read();
    let audit_before = fs::read(env.audit_path()).unwrap();
    // `${T#tf_}`, `${T#t}` and a tail that no checksum can confirm.
    let pastes = [bare(&token), &token[1..], CUT_TAIL];
    let stdin = format!("{token}\n");
    for secret in pastes {
        for glue in ["", "x", "ci-", "deploy_", "a:", "/"] {
            let p = format!("{glue}{secret}");
            let p = p.as_str();
            let listed = format!("read,{p}");
            let in_path = format!("/nonexistent/{p}/tokens");
            let refused: Vec<Vec<&str>> = vec![
                vec!["mint", "--scope", p],
                vec!["mint", "--scope", &listed],
                vec!["mint", "--scope", "read", "--name", p],
                vec!["check", "--scope", p],
                vec!["check", "--scope", &listed, "--json"],
                vec!["mint", "--scope", "read", "--expires", p],
                vec!["rotate", &id, "--grace", p],
                vec!["rotate", &id, "--expires", p],
                vec!["--lock-timeout", p, "list"],
                vec!["completions", p],
                vec![p],
                vec!["list", p],
                vec!["revoke", p],
            ];
            for args in refused {
                let out = env.tokenfile_stdin(&args, stdin.as_bytes());
                assert_clean(&out, &[secret], &format!("{args:?}"));
                out.code(USAGE);
            }
            // Not usage errors, but the name they echo is no less a secret.
            let echoed: Vec<Vec<&str>> = vec![
                vec!["check", "--scope", "read", "--token-env", p],
                vec!["check", "--scope", "read", "--token-env", p, "--json"],
                vec!["--file", &in_path, "list"],
                vec!["--file", &in_path, "mint", "--scope", "read"],
            ];
            for args in echoed {
                let out = env.tokenfile(&args);
                assert_clean(&out, &[secret], &format!("{args:?}"));
                assert_ne!(out.code, OK, "{out:?}");
            }
        }
    }
    assert_eq!(env.read(), before, "a refused command changed the file");
    assert_eq!(fs::read(env.audit_path()).unwrap(), audit_before);

    // An audit log that cannot be written is a warning, which names its path.
    for secret in [token.as_str(), bare(&token), CUT_TAIL] {
        let log = format!("/nonexistent/{secret}/audit.jsonl");
        let out = env
            .tokenfile(&["--audit-log", &log, "mint", "--scope", "read"])
            .ok();
        assert!(out.err().contains("audit log"), "{out:?}");
        let err = support::Out {
            what: out.what.clone(),
            code: out.code,
            status: out.status,
            stdout: Vec::new(),
            stderr: out.stderr.clone(),
        };
        assert_clean(&err, &[secret], "--audit-log");
    }
}

#[test]
fn a_token_in_a_records_scopes_or_name_is_never_shown() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    let b = bare(&token);
    let mut bytes = env.read();
    // Hand-edited lines (`printf 'legacy1\tdeploy,%s\tci %s\n' "$T" "$T" >> FILE`), with a
    // dead scope that lint quotes, and the same without the prefix and cut.
    let lines = [
        format!("legacy1\tdeploy,{token}\tci {token}\n"),
        format!("legacy2\tdeploy,{b}\tci {b}\n"),
        format!("legacy3\tdeploy,{token}*\tx{token}\n"),
        format!("legacy4\tdeploy,{CUT_TAIL}*\tx/{CUT_TAIL}\n"),
        format!("legacy5\tdeploy,{b}\tn {b}\n"),
        format!("{}\tdeploy,{b}*\tn:{b}\n", hashed(b"legacy6")),
    ];
    for line in &lines {
        bytes.extend_from_slice(line.as_bytes());
    }
    env.write(&bytes);
    let secrets = [bare(&token), CUT_TAIL];
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["lint"],
        &["lint", "--json"],
    ] {
        let out = env.tokenfile(args);
        assert_clean(&out, &secrets, &format!("{args:?}"));
        assert!(
            out.out().contains("[token redacted]"),
            "{args:?} shows the records: {out:?}"
        );
    }
    let id = |credential: &[u8]| id_of(credential);
    // rotate --json shows its own new token, and nothing else of a secret.
    for (old, json) in [(&b"legacy1"[..], true), (b"legacy4", false)] {
        let mut args = vec!["rotate".to_string(), id(old)];
        if json {
            args.push("--json".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.tokenfile(&args).ok();
        assert_clean(&out, &secrets, &format!("{args:?}"));
        if json {
            let doc = out.json();
            let new = doc["token"].as_str().unwrap_or_default();
            assert!(is_minted_shape(new), "{out:?}");
        }
    }
    env.tokenfile(&["revoke", &id(b"legacy2")]).ok();
    env.tokenfile(&["hash"]).ok();
    // edit: a change to a record whose name holds a token.
    let editor = env.path("editor.sh");
    write_script(&editor, "sed -i 's/^\\(.*\\tn \\)/\\1x/' \"$1\"");
    let out = run_edit(&env, &editor);
    assert_clean(&out, &secrets, "edit");
    out.ok();
    let audit = fs::read(env.audit_path()).unwrap();
    assert_no_secret(&audit, &parts(bare(&token)), "audit log");
    assert_no_secret(&audit, &parts(CUT_TAIL), "audit log");
    let text = String::from_utf8_lossy(&audit);
    for event in ["\"rotate\"", "\"revoke\"", "\"hash\"", "\"edit\""] {
        let line = text.lines().rev().find(|l| l.contains(event));
        let line = line.unwrap_or_else(|| panic!("no {event} line in {text}"));
        assert!(line.contains("[token redacted]"), "{event}: {line}");
    }
}

fn run_edit(env: &Env, editor: &std::path::Path) -> support::Out {
    let mut cmd = env.command(&["edit"]);
    cmd.env("EDITOR", editor);
    support::run(cmd, Some(b""))
}

#[test]
fn a_plaintext_credential_of_the_file_is_refused_as_a_name_or_scope() {
    let short = "legacy-plain-secret1"; // 20 bytes, no shape at all
    let long = "s3cr3tLegacyTokenValue0123456789abcdEFGH"; // 40
    let file = format!("{short}\tdeploy\n{long}\tdeploy\nvm\tread\n");
    let env = Env::with_bytes(file.as_bytes());
    let before = env.read();
    for secret in [short, long] {
        let glued = format!("ci-{secret}-x");
        let listed = format!("deploy,{secret}");
        for args in [
            vec!["mint", "--scope", "deploy", "--name", secret],
            vec!["mint", "--scope", "deploy", "--name", &glued],
            vec!["mint", "--scope", secret],
            vec!["mint", "--scope", &listed, "--json"],
        ] {
            let out = env.tokenfile(&args);
            assert_clean(&out, &[secret], &format!("{args:?}"));
            out.code(USAGE);
        }
    }
    assert_eq!(env.read(), before, "a refused mint changed the file");
    // A credential too short to be a secret blocks nothing.
    env.mint(&["--scope", "vm", "--name", "vm-builder"]);
}

#[test]
fn a_token_in_the_file_path_is_never_shown() {
    let other = Env::init();
    let token = other.mint(&["--scope", "read"]);
    let env = Env::new();
    for secret in [token.as_str(), bare(&token), CUT_TAIL] {
        let dir = env.path(&format!("d-{secret}"));
        fs::create_dir(&dir).unwrap();
        let file = dir.join("tokens").display().to_string();
        let f = file.as_str();
        let audit = dir.join("tokens.audit.jsonl");
        let shown = [bare(&token), CUT_TAIL];
        let mut outs = vec![env.tokenfile(&["--file", f, "init"]).ok()];
        outs.push(env.tokenfile(&["--file", f, "mint", "--scope", "a"]).ok());
        for args in [
            &["list"][..],
            &["list", "--json"],
            &["lint"],
            &["lint", "--json"],
        ] {
            let mut all = vec!["--file", f];
            all.extend_from_slice(args);
            outs.push(env.tokenfile(&all));
        }
        for out in &outs {
            let out = support::Out {
                what: out.what.clone(),
                code: out.code,
                status: out.status,
                // mint's own new token is on its stdout.
                stdout: if out.what.contains("mint") {
                    Vec::new()
                } else {
                    out.stdout.clone()
                },
                stderr: out.stderr.clone(),
            };
            assert_clean(&out, &shown, &out.what);
        }
        let log = fs::read(&audit).unwrap();
        assert_no_secret(&log, &parts(bare(&token)), "audit log");
        assert_no_secret(&log, &parts(CUT_TAIL), "audit log");
        assert!(String::from_utf8_lossy(&log).contains("[token redacted]"));
    }
}
