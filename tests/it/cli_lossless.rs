//! docs/format.md "Lossless", through the real binary: every rewrite keeps the bytes it did not
//! mean to change; invalid lines are kept, reported by line number and never echoed.

use std::fs;
use std::path::Path;

use crate::support::*;

const MIB: usize = 1 << 20;

/// Nasty files generated here, so the tests do not depend on what `fixtures/` holds.
fn generated() -> Vec<(String, Vec<u8>)> {
    let digest_line = format!("{}\tdeploy\tdeployer\r\n", hashed(b"hashed-token"));
    let mut big = Vec::new();
    big.push(b'#');
    big.extend(std::iter::repeat_n(b'c', MIB));
    big.push(b'\n');
    big.extend(std::iter::repeat_n(b'x', MIB));
    big.extend_from_slice(b"\tread\tbig credential\n");
    big.extend_from_slice(b"big-name\tread\t");
    big.extend(std::iter::repeat_n(b'n', MIB));
    big.push(b'\n');
    big.extend_from_slice(b"big-invalid\t");
    big.extend(std::iter::repeat_n(b'?', MIB));
    big.push(b'\n');

    let mut samples: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("only-newline", b"\n".to_vec()),
        ("only-crlf", b"\r\n".to_vec()),
        ("bom-only", BOM.to_vec()),
        (
            "crlf",
            [
                b"# written on Windows\r\nplain-crlf\tread,write\tci\r\n".to_vec(),
                digest_line.into_bytes(),
            ]
            .concat(),
        ),
        ("crlf-no-final-newline", b"a-tok\tread\r\nb-tok\twrite".to_vec()),
        ("no-final-newline", b"first\tread\nlast-line\t*".to_vec()),
        ("single-line-no-newline", b"lonely".to_vec()),
        ("bom", [BOM, b"token-after-bom\tread\n"].concat()),
        ("bom-crlf-no-final", [BOM, b"x\tread\r\ny"].concat()),
        (
            "invalid-lines",
            b"good\tread\nempty-scopes\t\nstar\t*,read\nbad scope\tread\n\
              too\tmany\tfields\there\tand\there\nsha256:ABC\tread\n\tno-credential\n\
              t\tread\tn\tyesterday\nt2\tread\tn\t\tnever\nt3\tr e a d\n"
                .to_vec(),
        ),
        (
            "comments-and-blanks",
            b"# comment\n\n   \n\t\n#\tcomment with tab\n\t \t\n#\n".to_vec(),
        ),
        ("legacy", b"legacy-token-one\nlegacy-token-two\n".to_vec()),
        (
            "nul-and-invalid-utf8",
            b"nul\0inside\tread\n\xff\xfe-not-utf8\tread\tname\xe9\nok\tread\tna\0me".to_vec(),
        ),
        ("cr-only-endings", b"mac\tread\rstyle\tread\r".to_vec()),
        ("mixed-endings", b"a\tread\nb\tread\r\nc\n\r\n".to_vec()),
        (
            "all-fields",
            b"t\t read , kafka:* \tname with spaces\t2026-05-05T14:23:00.123+02:00\t2099-01-01T00:00:00Z\n\
              u\tread\t\t\t\n"
                .to_vec(),
        ),
        ("big-lines", big),
    ];
    samples
        .drain(..)
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}

/// The lead's hand-made files in `fixtures/` (anything but documentation), if present.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let Ok(entries) = fs::read_dir(&dir) else {
        eprintln!("no fixtures/ directory; using generated samples only");
        return Vec::new();
    };
    let mut found: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("fixtures entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .map(|p| {
            let bytes = fs::read(&p).expect("read fixture");
            (
                format!("fixtures/{}", p.file_name().unwrap().to_string_lossy()),
                bytes,
            )
        })
        .collect();
    found.sort();
    found
}

fn samples() -> Vec<(String, Vec<u8>)> {
    let mut all = generated();
    all.extend(fixtures());
    all
}

#[test]
fn mint_then_revoke_restores_every_file() {
    for (name, original) in samples() {
        let env = Env::with_bytes(&original);
        let minted = env
            .tokenfile(&[
                "mint",
                "--scope",
                "probe:write",
                "--name",
                "probe",
                "--json",
            ])
            .ok()
            .json();
        let token = minted["token"].as_str().expect("token");
        let id = minted["id"].as_str().expect("id");
        let created = minted["created"].as_str().expect("created");

        // The new record is appended in the file's own line ending; nothing else changes
        // except that a last line without an ending gets one.
        let ending = file_ending(&original);
        let mut expected = with_final_ending(&original);
        expected.extend_from_slice(
            format!(
                "{}\tprobe:write\tprobe\t{created}",
                hashed(token.as_bytes())
            )
            .as_bytes(),
        );
        expected.extend_from_slice(ending);
        assert!(
            env.read() == expected,
            "{name}: mint changed more than it appended"
        );
        assert_eq!(env.check(token, &["probe:write"]), OK, "{name}");

        env.tokenfile(&["revoke", id]).ok();
        assert!(
            env.read() == with_final_ending(&original),
            "{name}: mint + revoke did not restore the original bytes"
        );
        assert_eq!(env.check(token, &["probe:write"]), UNAUTHORIZED, "{name}");
    }
}

#[test]
fn a_file_without_final_newline_gets_exactly_one() {
    for (original, expected) in [
        (
            &b"first\tread\nlast-line\t*"[..],
            &b"first\tread\nlast-line\t*\n"[..],
        ),
        (
            b"a-tok\tread\r\nb-tok\twrite",
            b"a-tok\tread\r\nb-tok\twrite\r\n",
        ),
        (b"lonely", b"lonely\n"),
        (b"# only a comment", b"# only a comment\n"),
    ] {
        let env = Env::with_bytes(original);
        let token = env.mint(&["--scope", "x"]);
        let id = env.id(&token);
        env.tokenfile(&["revoke", &id]).ok();
        assert_eq!(
            String::from_utf8_lossy(&env.read()),
            String::from_utf8_lossy(expected)
        );
    }
}

#[test]
fn revoke_of_a_middle_record_removes_only_that_line() {
    let original = b"# head\r\nkeep-1\tread\r\ndrop-me\twrite\tx\r\n\r\nkeep-2\t*\r\nbad\t\r\n";
    let env = Env::with_bytes(original);
    env.tokenfile(&["revoke", &id_of(b"drop-me")]).ok();
    assert_eq!(
        env.read(),
        b"# head\r\nkeep-1\tread\r\n\r\nkeep-2\t*\r\nbad\t\r\n".to_vec()
    );
}

#[test]
fn hash_changes_only_credentials_of_plaintext_records() {
    let original = [
        &b"# keep plain\tread\n"[..],
        b"plainA\tread,write\tname A\t2026-01-01T00:00:00Z\r\n",
        b"legacyTok\n",
        hashed(b"already").as_bytes(),
        b"\t*\n",
        b"bad-cred-xyz\t\n",
        b"  \t\n",
        b"nul\0x\t read , write \tn",
    ]
    .concat();
    let expected = [
        &b"# keep plain\tread\n"[..],
        hashed(b"plainA").as_bytes(),
        b"\tread,write\tname A\t2026-01-01T00:00:00Z\r\n",
        hashed(b"legacyTok").as_bytes(),
        b"\n",
        hashed(b"already").as_bytes(),
        b"\t*\n",
        b"bad-cred-xyz\t\n",
        b"  \t\n",
        hashed(b"nul\0x").as_bytes(),
        b"\t read , write \tn",
    ]
    .concat();
    let env = Env::with_bytes(&original);
    let ids_before = env.ids();
    assert_eq!(env.check("plainA", &["write"]), OK);

    let out = env.tokenfile(&["hash"]).ok();
    assert!(out.stdout.is_empty(), "{out:?}");
    // The invalid line may hold a plaintext token: hash says it left it alone.
    assert!(out.err().contains("1 invalid line"), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&env.read()),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(env.ids(), ids_before, "IDs must survive hash");
    assert_eq!(
        ids_before,
        vec![
            id_of(b"plainA"),
            id_of(b"legacyTok"),
            id_of(b"already"),
            id_of(b"nul\0x")
        ]
    );
    assert_eq!(env.check("plainA", &["write"]), OK);
    assert_eq!(env.check("legacyTok", &["anything"]), OK);
    assert!(
        env.records().iter().all(|r| r["stored"] == "hashed"),
        "{:?}",
        env.records()
    );

    // Nothing left to hash: the file is not rewritten and no change is logged.
    let audit_before = env.audit_lines().len();
    env.tokenfile(&["hash"]).ok();
    assert_eq!(env.read(), expected);
    assert_eq!(env.audit_lines().len(), audit_before);
}

#[test]
fn hash_of_every_sample_matches_the_grammar() {
    for (name, original) in samples() {
        let env = Env::with_bytes(&original);
        env.tokenfile(&["hash"]).ok();
        assert!(
            env.read() == expected_after_hash(&original),
            "{name}: hash changed bytes other than plaintext credentials"
        );
    }
}

#[test]
fn lint_reports_exactly_the_invalid_lines_of_every_sample() {
    for (name, original) in samples() {
        let env = Env::with_bytes(&original);
        let expected = invalid_line_numbers(&original);
        let out = env.tokenfile(&["lint", "--json"]);
        let report = out.json();
        let reported: Vec<usize> = report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["kind"] == "invalid")
            .map(|f| f["line"].as_u64().expect("line") as usize)
            .collect();
        assert_eq!(reported, expected, "{name}: {out:?}");
        if !expected.is_empty() {
            assert_eq!(out.code, PROBLEMS, "{name}: {out:?}");
        }
        let listed: Vec<usize> = env.list_json()["invalid_lines"]
            .as_array()
            .expect("invalid_lines")
            .iter()
            .map(|n| n.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(listed, expected, "{name}: list --json invalid_lines");
        assert_eq!(env.read(), original, "{name}: lint/list must not write");
    }
}

#[test]
fn invalid_lines_are_kept_reported_by_number_and_never_echoed() {
    let secrets: [&[u8]; 6] = [
        b"s3cret-empty-scopes",
        b"s3cret-star-not-alone",
        b"s3cret-bad-scope",
        b"s3cret-too-many",
        b"s3cret-bad-time",
        b"s3cret-bad-expiry",
    ];
    let original = [
        &b"# header\n"[..],
        b"good\tread\n",
        b"s3cret-empty-scopes\t\n",
        b"s3cret-star-not-alone\t*,read\n",
        b"s3cret-bad-scope\tre ad\n",
        b"s3cret-too-many\ta\tb\tc\td\te\n",
        b"s3cret-bad-time\tread\tn\tyesterday\n",
        b"s3cret-bad-expiry\tread\tn\t\tnever\n",
    ]
    .concat();
    let invalid_lines = [3, 4, 5, 6, 7, 8];
    let env = Env::with_bytes(&original);
    let path = env.file_str();

    let text = env.tokenfile(&["lint"]).code(PROBLEMS);
    for n in invalid_lines {
        let prefix = format!("{path}:{n}: error:");
        assert!(
            text.out()
                .lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with("[invalid]")),
            "lint should report line {n}: {text:?}"
        );
    }
    let json = env.tokenfile(&["lint", "--json"]).code(PROBLEMS);
    assert_eq!(json.json()["errors"], invalid_lines.len());
    let list = env.tokenfile(&["list"]).ok();
    assert!(list.err().contains("lines 3, 4, 5, 6, 7, 8"), "{list:?}");
    let list_json = env.tokenfile(&["list", "--json"]).ok();
    assert_eq!(list_json.json()["records"].as_array().unwrap().len(), 1);

    for out in [&text, &json, &list, &list_json] {
        assert_no_secret(&out.stdout, &secrets, "lint/list stdout");
        assert_no_secret(&out.stderr, &secrets, "lint/list stderr");
    }
    for secret in secrets {
        let token = String::from_utf8_lossy(secret);
        let out = env.check_out(&token, &["read"]);
        assert_eq!(
            out.code, UNAUTHORIZED,
            "an invalid line must grant nothing: {out:?}"
        );
        assert_no_secret(&out.stderr, &secrets, "check stderr");
    }

    // Every rewrite keeps them byte for byte.
    let token = env.mint(&["--scope", "read"]);
    env.tokenfile(&["revoke", &id_of(b"good")]).ok();
    let hash = env.tokenfile(&["hash"]).ok();
    assert_no_secret(&hash.stderr, &secrets, "hash stderr");
    let (_, lines) = split_lines(&env.read());
    let (_, before) = split_lines(&original);
    let kept: Vec<&RawLine> = lines
        .iter()
        .filter(|l| l.content.starts_with(b"s3cret-"))
        .collect();
    let want: Vec<&RawLine> = before
        .iter()
        .filter(|l| l.content.starts_with(b"s3cret-"))
        .collect();
    assert_eq!(kept, want);
    assert_eq!(env.check(&token, &["read"]), OK);
}

#[test]
fn empty_scopes_grant_nothing_but_a_legacy_line_grants_everything() {
    let env = Env::with_bytes(b"tab-only\t\nspaces-only\t  \nlegacy-full\n");
    for scope in ["read", "admin", "kafka:endpoint:read"] {
        assert_eq!(env.check("tab-only", &[scope]), UNAUTHORIZED);
        assert_eq!(env.check("spaces-only", &[scope]), UNAUTHORIZED);
        assert_eq!(env.check("legacy-full", &[scope]), OK);
    }
    let lint = env.tokenfile(&["lint", "--json"]).code(PROBLEMS).json();
    let invalid: Vec<u64> = lint["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "invalid")
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    assert_eq!(invalid, vec![1, 2]);
}

#[test]
fn tokens_on_odd_lines_still_check() {
    let env = Env::with_bytes(
        &[
            BOM,
            b"first-after-bom\tread\r\n",
            b"nul\0inside\tread\r\n",
            b"\xff\xfe-not-utf8\tread\tname\xe9\r\n",
            b"last-without-newline\tread",
        ]
        .concat(),
    );
    for token in [
        &b"first-after-bom"[..],
        b"nul\0inside",
        b"\xff\xfe-not-utf8",
        b"last-without-newline",
    ] {
        let mut stdin = token.to_vec();
        stdin.push(b'\n');
        let out = env.tokenfile_stdin(&["check", "--scope", "read"], &stdin);
        assert_eq!(
            out.code,
            OK,
            "{:?}: {out:?}",
            String::from_utf8_lossy(token)
        );
        let id = env.tokenfile_stdin(&["id"], &stdin).ok();
        assert_eq!(id.out().trim_end(), id_of(token));
    }
    // The BOM is not part of the first credential.
    let mut with_bom = BOM.to_vec();
    with_bom.extend_from_slice(b"first-after-bom\n");
    assert_eq!(
        env.tokenfile_stdin(&["check", "--scope", "read"], &with_bom)
            .code,
        UNAUTHORIZED
    );
}
