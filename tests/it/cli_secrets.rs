//! docs/exit-codes.md "A secret never appears on stderr, in an error message, in a log, in the audit
//! log, or in `list`": every command, on its success and error paths, with known tokens.

use std::fs;

use crate::support::*;

/// Runs a whole session and returns what every run printed, split into output that may hold
/// the one token it just issued (`mint`/`rotate` stdout) and everything else.
struct Session {
    env: Env,
    /// (label, bytes) that must hold no secret at all.
    clean: Vec<(String, Vec<u8>)>,
    /// (label, stdout, the token it issues) of mint and rotate.
    issued: Vec<(String, Vec<u8>, String)>,
    secrets: Vec<Vec<u8>>,
}

impl Session {
    fn record(&mut self, label: &str, out: &Out) {
        self.clean
            .push((format!("{label} stderr"), out.stderr.clone()));
        self.clean
            .push((format!("{label} stdout"), out.stdout.clone()));
    }

    fn record_issued(&mut self, label: &str, out: &Out, token: &str) {
        self.clean
            .push((format!("{label} stderr"), out.stderr.clone()));
        self.issued
            .push((label.to_string(), out.stdout.clone(), token.to_string()));
    }

    fn secret(&mut self, token: &str) {
        self.secrets.push(token.as_bytes().to_vec());
        self.secrets.push(sha256_hex(token.as_bytes()).into_bytes());
    }

    fn run(&mut self, label: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let out = run(
            self.env.command(args),
            stdin.map(|s| format!("{s}\n").into_bytes()).as_deref(),
        );
        self.record(label, &out);
        out
    }
}

#[test]
fn no_command_leaks_a_token_or_its_digest() {
    let mut s = Session {
        env: Env::new(),
        clean: Vec::new(),
        issued: Vec::new(),
        secrets: Vec::new(),
    };
    // A hand-written plaintext record and an invalid line that holds a plaintext token.
    s.run("init", &["init"], None);
    let mut bytes = s.env.read();
    bytes.extend_from_slice(
        b"legacy-secret-value-1\tread\tlegacy\ninvalid-secret-value-2\tbad scope\n",
    );
    s.env.write(&bytes);
    s.secret("legacy-secret-value-1");
    s.secret("invalid-secret-value-2");

    let out = s
        .env
        .tokenfile(&["mint", "--scope", "read", "--name", "hashed"])
        .ok();
    let t1 = out.out().trim_end().to_string();
    s.record_issued("mint", &out, &t1);
    s.secret(&t1);
    let out = s
        .env
        .tokenfile(&["mint", "--scope", "read", "--plaintext", "--json"])
        .ok();
    let t2 = out.json()["token"].as_str().unwrap().to_string();
    s.record_issued("mint --plaintext --json", &out, &t2);
    s.secret(&t2);
    let typo = format!("{}x", &t1[..t1.len() - 1]);
    s.secret(&typo);

    for (label, args) in [
        ("list", &["list"][..]),
        ("list --json", &["list", "--json"]),
        ("lint", &["lint"]),
        ("lint --json", &["lint", "--json"]),
        ("lint --strict", &["lint", "--strict"]),
    ] {
        s.run(label, args, None);
    }
    for token in [
        &t1,
        &t2,
        &typo,
        &"legacy-secret-value-1".to_string(),
        &"invalid-secret-value-2".to_string(),
    ] {
        for scope in ["read", "write"] {
            s.run("check", &["check", "--scope", scope], Some(token));
            s.run(
                "check --json",
                &["check", "--scope", scope, "--json"],
                Some(token),
            );
        }
        s.run(
            "check bad scope",
            &["check", "--scope", "bad scope"],
            Some(token),
        );
        s.run("id", &["id"], Some(token));
        let out = run(
            s.env
                .command(&["check", "--scope", "read", "--token-env", "T"])
                .env("T", token),
            None,
        );
        s.record("check --token-env", &out);
    }

    // Changes.
    let out = s
        .env
        .tokenfile(&["rotate", &id_of(t1.as_bytes()), "--grace", "1h"])
        .ok();
    let t3 = out.out().trim_end().to_string();
    s.record_issued("rotate", &out, &t3);
    s.secret(&t3);
    let out = s
        .env
        .tokenfile(&["rotate", &id_of(t2.as_bytes()), "--json"])
        .ok();
    let t4 = out.json()["token"].as_str().unwrap().to_string();
    s.record_issued("rotate --json", &out, &t4);
    s.secret(&t4);
    s.run("hash", &["hash"], None).ok();
    let editor = s.env.path("editor.sh");
    write_script(
        &editor,
        "printf 'edited-secret-value-3\\tread\\n' >> \"$1\"",
    );
    s.secret("edited-secret-value-3");
    // The file already has an invalid line: confirm writing anyway.
    let out = run(
        s.env.command(&["edit"]).env("EDITOR", &editor),
        Some(b"w\n"),
    )
    .ok();
    s.record("edit", &out);
    write_script(&editor, "printf 'broken-secret-value-4\\t\\n' >> \"$1\"");
    s.secret("broken-secret-value-4");
    let out = run(
        s.env.command(&["edit"]).env("EDITOR", &editor),
        Some(b"q\n"),
    )
    .code(PROBLEMS);
    s.record("edit refused", &out);
    s.run("revoke", &["revoke", &id_of(t3.as_bytes())], None)
        .ok();

    // Error paths.
    s.run("revoke unknown", &["revoke", "ffff0000ffff"], None);
    s.run("mint bad scope", &["mint", "--scope", ""], None);
    s.env.chmod(0o666);
    s.run(
        "check world-writable",
        &["check", "--scope", "read"],
        Some(&t4),
    );
    s.env.chmod(0o600);
    let missing = s.env.path("missing").display().to_string();
    s.run(
        "check missing file",
        &["--file", &missing, "check", "--scope", "read"],
        Some(&t4),
    );

    // Plus the audit log, read as a whole.
    let audit = fs::read(s.env.audit_path()).unwrap();
    s.clean.push(("audit log".into(), audit));

    let secrets: Vec<&[u8]> = s.secrets.iter().map(Vec::as_slice).collect();
    for (label, bytes) in &s.clean {
        assert_no_secret(bytes, &secrets, label);
    }
    // mint/rotate stdout holds its own token and nothing else secret.
    for (label, stdout, token) in &s.issued {
        let others: Vec<&[u8]> = secrets
            .iter()
            .copied()
            .filter(|x| *x != token.as_bytes())
            .collect();
        assert_no_secret(stdout, &others, label);
        assert!(
            String::from_utf8_lossy(stdout).contains(token.as_str()),
            "{label}"
        );
    }
}

#[test]
fn list_and_lint_never_show_a_plaintext_credential_even_in_odd_places() {
    // Credentials in every kind of line: valid, duplicate, expired, invalid in each field.
    let lines = [
        "pt-secret-aaaa1\tread\tname",
        "pt-secret-aaaa1\t*\tdup",
        "pt-secret-bbbb2\tread\told\t\t2001-01-01T00:00:00Z",
        "pt-secret-cccc3\t\tempty scopes",
        "pt-secret-dddd4\tre ad",
        "pt-secret-eeee5\tread\tn\tnot-a-time",
        "pt-secret-ffff6\ta\tb\tc\td\te",
        "pt-secret-gggg7 with space\tread",
        "sha256:pt-secret-hhhh8\tread",
    ];
    let env = Env::with_bytes((lines.join("\n") + "\n").as_bytes());
    let secrets: [&[u8]; 8] = [
        b"pt-secret-aaaa1",
        b"pt-secret-bbbb2",
        b"pt-secret-cccc3",
        b"pt-secret-dddd4",
        b"pt-secret-eeee5",
        b"pt-secret-ffff6",
        b"pt-secret-gggg7",
        b"pt-secret-hhhh8",
    ];
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["lint"],
        &["lint", "--json"],
        &["hash"],
        &["lint", "--json"],
    ] {
        let out = env.tokenfile(args);
        assert_no_secret(&out.stdout, &secrets, &format!("{args:?} stdout"));
        assert_no_secret(&out.stderr, &secrets, &format!("{args:?} stderr"));
    }
}

/// A legacy or hand-made token has no shape to be recognized by; pasted whole where a scope,
/// a name or an ID goes, it is still never echoed: `check` learns it from the file before it
/// names the scopes, `mint` refuses to store it, and an ID that is not hex is not quoted.
#[test]
fn a_shapeless_token_of_the_file_pasted_whole_is_never_echoed() {
    let plain = "plainDupToken123";
    let hashed = "legacyHashedTok9";
    let env = Env::with_bytes(
        format!(
            "# t\n{plain}\tread\tlegacy\nsha256:{}\tread\thashed legacy\n",
            sha256_hex(hashed.as_bytes())
        )
        .as_bytes(),
    );
    let other = env.mint(&["--scope", "write"]);
    for secret in [plain, hashed] {
        for extra in [&[][..], &["--json"][..], &["--explain"][..]] {
            let mut args = vec!["check", "--scope", secret];
            args.extend_from_slice(extra);
            let out = env.tokenfile_stdin(&args, format!("{other}\n").as_bytes());
            assert_eq!(out.code, FORBIDDEN, "{args:?}");
            let printed = out.out() + &out.err();
            assert!(!printed.contains(secret), "{args:?} echoed it:\n{printed}");
        }
        let before = env.read();
        let out = env.tokenfile(&["mint", "--scope", "read", "--name", secret]);
        assert_eq!(out.code, USAGE, "mint --name {secret}: {}", out.err());
        assert!(!(out.out() + &out.err()).contains(secret));
        let out = env.tokenfile(&["mint", "--scope", &format!("read,{secret}")]);
        assert_eq!(out.code, USAGE, "mint --scope {secret}: {}", out.err());
        assert_eq!(env.read(), before, "nothing stored");
        let out = env.tokenfile(&["revoke", secret]);
        assert_eq!(out.code, USAGE);
        assert!(!out.err().contains(secret), "{}", out.err());
    }
    // An ID-shaped mistake is still quoted, to be fixed.
    let out = env.tokenfile(&["revoke", "9f6b6b6e5127a"]).code(USAGE);
    assert!(out.err().contains("9f6b6b6e5127a"), "{}", out.err());
    let out = env.tokenfile(&["revoke", "9f6g"]).code(USAGE);
    assert!(out.err().contains("9f6g"), "{}", out.err());
}
