//! docs/format.md (scopes) through `tokenfile check`: what a token's scopes grant, and that a bad
//! required scope is a usage error, never a grant.

use crate::support::*;

/// A file with one plaintext record per scope set, so the tests can present known tokens.
fn env_with(records: &[(&str, &str)]) -> Env {
    let mut bytes = Vec::new();
    for (token, scopes) in records {
        bytes.extend_from_slice(format!("{token}\t{scopes}\n").as_bytes());
    }
    Env::with_bytes(&bytes)
}

#[track_caller]
fn expect(env: &Env, token: &str, required: &[&str], code: i32) {
    let out = env.check_out(token, required);
    assert_eq!(
        out.code, code,
        "token {token} required {required:?}: {out:?}"
    );
}

#[test]
fn star_grants_every_scope() {
    let env = env_with(&[("all-tok", "*")]);
    for scope in ["read", "kafka", "kafka:endpoint:read", "A-b_c.d:e", "x"] {
        expect(&env, "all-tok", &[scope], OK);
    }
    expect(&env, "all-tok", &["read", "write", "admin"], OK);
}

#[test]
fn a_trailing_colon_star_grants_what_starts_with_its_prefix() {
    let env = env_with(&[("kafka-tok", "kafka:*")]);
    expect(&env, "kafka-tok", &["kafka:endpoint:read"], OK);
    expect(&env, "kafka-tok", &["kafka:x"], OK);
    expect(&env, "kafka-tok", &["kafka"], FORBIDDEN);
    // docs/format.md: `kafka:*` grants `kafka:` (this test once asserted the opposite).
    expect(&env, "kafka-tok", &["kafka:"], OK);
    expect(&env, "kafka-tok", &["kafkaesque:x"], FORBIDDEN);
    expect(&env, "kafka-tok", &["Kafka:x"], FORBIDDEN);
    expect(&env, "kafka-tok", &["zookeeper:kafka:x"], FORBIDDEN);
}

#[test]
fn other_scopes_match_exactly_and_case_sensitively() {
    let env = env_with(&[("read-tok", "read"), ("star-in-middle", "foo*,a*b")]);
    expect(&env, "read-tok", &["read"], OK);
    for other in ["Read", "READ", "rea", "reads", "read:x", "write"] {
        expect(&env, "read-tok", &[other], FORBIDDEN);
    }
    // Only `*` alone and a trailing `:*` are wildcards.
    for other in ["foo", "foobar", "ab", "axb"] {
        expect(&env, "star-in-middle", &[other], FORBIDDEN);
    }
}

#[test]
fn several_required_scopes_must_all_be_granted() {
    let env = env_with(&[("rw", "read, write ,kafka:*")]);
    expect(&env, "rw", &["read", "write"], OK);
    expect(&env, "rw", &["read,write"], OK);
    expect(&env, "rw", &["read,write", "kafka:topic"], OK);
    expect(&env, "rw", &["read", "admin"], FORBIDDEN);
    expect(&env, "rw", &["read,admin"], FORBIDDEN);
    expect(&env, "rw", &["kafka:topic", "kafka"], FORBIDDEN);
}

#[test]
fn a_malformed_or_empty_required_scope_is_a_usage_error_even_for_a_full_access_token() {
    let env = env_with(&[("all-tok", "*"), ("read-tok", "read")]);
    let bad: &[&[&str]] = &[
        &[""],
        &[" "],
        &[","],
        &["read,"],
        &[",read"],
        &["read,,write"],
        &["*"],
        &["kafka:*"],
        &["re*d"],
        &["re ad"],
        &["réad"],
        &["a;b"],
        &["read\t"],
        &["read", ""],
        &["read", "*"],
    ];
    for required in bad {
        for token in ["all-tok", "read-tok", "unknown-tok", ""] {
            let out = env.check_out(token, required);
            assert_eq!(out.code, USAGE, "required {required:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{out:?}");
            assert!(!out.stderr.is_empty(), "a usage error says why: {out:?}");
        }
    }
    // No scope at all is a usage error too.
    env.tokenfile_stdin(&["check"], b"all-tok\n").code(USAGE);
}

#[test]
fn outcomes_are_the_exit_codes_of_the_table() {
    let past = "2001-01-01T00:00:00Z";
    let env = Env::with_bytes(
        format!(
            "good\tread\nold\tread\t\t\t{past}\n{}\tread\n",
            hashed(b"h")
        )
        .as_bytes(),
    );
    expect(&env, "good", &["read"], OK);
    expect(&env, "good", &["write"], FORBIDDEN);
    expect(&env, "nope", &["read"], UNAUTHORIZED);
    expect(&env, "", &["read"], UNAUTHORIZED);
    expect(&env, "old", &["read"], UNAUTHORIZED);
    expect(&env, "old", &["write"], UNAUTHORIZED);
    expect(&env, "h", &["read"], OK);
    // The stored digest string itself is not a token.
    expect(&env, &hashed(b"h"), &["read"], UNAUTHORIZED);
    // Granted is silent on stdout; denials say why on stderr.
    let granted = env.check_out("good", &["read"]);
    assert!(granted.stdout.is_empty(), "{granted:?}");
    let forbidden = env.check_out("good", &["write"]);
    assert!(forbidden.stdout.is_empty(), "{forbidden:?}");
    assert!(forbidden.err().contains(&id_of(b"good")), "{forbidden:?}");
}

#[test]
fn check_json_reports_the_decision() {
    let env = env_with(&[("good", "read")]);
    let cases = [
        ("good", "read", OK, "granted"),
        ("good", "write", FORBIDDEN, "forbidden"),
        ("nope", "read", UNAUTHORIZED, "unauthorized"),
    ];
    for (token, scope, code, result) in cases {
        let out = env
            .tokenfile_stdin(
                &["check", "--scope", scope, "--json"],
                format!("{token}\n").as_bytes(),
            )
            .code(code);
        let json = out.json();
        assert_eq!(json["result"], result, "{out:?}");
        assert_eq!(json["required"], serde_json::json!([scope]), "{out:?}");
        if code != UNAUTHORIZED {
            assert_eq!(json["id"], id_of(b"good"), "{out:?}");
        }
    }
}

#[test]
fn the_first_record_of_a_token_is_the_one_that_counts() {
    let env = env_with(&[("dup", "read"), ("dup", "*")]);
    expect(&env, "dup", &["read"], OK);
    expect(&env, "dup", &["write"], FORBIDDEN);
    let lint = env.tokenfile(&["lint", "--json"]).code(PROBLEMS).json();
    assert!(
        has_finding(&lint, |f| f["kind"] == "duplicate" && f["line"] == 2),
        "{lint}"
    );
}

#[test]
fn mint_validates_scopes_and_stores_them_canonically() {
    let env = Env::init();
    let before = env.read();
    for bad in [
        &["--scope", ""][..],
        &["--scope", "*", "--scope", "read"],
        &["--scope", "*,read"],
        &["--scope", "bad scope"],
        &["--scope", "read,"],
        &["--scope", "tab\there"],
    ] {
        let mut args = vec!["mint"];
        args.extend_from_slice(bad);
        let out = env.tokenfile(&args).code(USAGE);
        assert!(out.stdout.is_empty(), "no token on a usage error: {out:?}");
    }
    env.tokenfile(&["mint"]).code(USAGE);
    assert_eq!(env.read(), before, "failed mints must not touch the file");

    let token = env.mint(&["--scope", "read", "--scope", "write,kafka:*"]);
    let listed = env.records();
    assert_eq!(
        listed[0]["scopes"],
        serde_json::json!(["read", "write", "kafka:*"])
    );
    let text = String::from_utf8(env.read()).unwrap();
    let line = text.lines().last().unwrap();
    assert_eq!(
        line.split('\t').nth(1),
        Some("read,write,kafka:*"),
        "{line}"
    );
    expect(&env, &token, &["read", "write", "kafka:a:b"], OK);
    expect(&env, &token, &["kafka"], FORBIDDEN);
}
