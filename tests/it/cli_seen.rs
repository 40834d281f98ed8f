//! Last used, expiry and why: `list` with the last-used sidecars (`--seen`, `--unused`,
//! `--expiring`), `prune`, `check --explain` and `lint --expiring` — through the real binary.
//! The sidecars are written here by hand in their documented format (`src/seen.rs`), as
//! `serve` writes them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

/// A sidecar at `path` naming `file`, with `(id, last_used, uses, client)` lines.
fn write_sidecar(path: &Path, file: &Path, entries: &[(&str, &str, u64, Option<&str>)]) {
    let mut text = format!(
        "{}\n",
        serde_json::json!({"tokenfile_seen": 1, "file": file.display().to_string(), "written": stamp(now())})
    );
    for (id, last_used, uses, client) in entries {
        let mut line = serde_json::json!({"id": id, "last_used": last_used, "uses": uses});
        if let Some(client) = client {
            line["last_client"] = (*client).into();
        }
        text.push_str(&format!("{line}\n"));
    }
    fs::write(path, text).unwrap();
}

/// The file's own sidecar, `<real file>.seen`.
fn own_sidecar(env: &Env) -> (PathBuf, PathBuf) {
    let real = fs::canonicalize(&env.file).unwrap();
    let mut name = real.as_os_str().to_owned();
    name.push(".seen");
    (PathBuf::from(name), real)
}

fn record<'a>(records: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record {id} in {records:?}"))
}

fn listed_ids(out: &Out) -> Vec<String> {
    out.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Writes `lines` after the header comment of a fresh file.
fn env_with_lines(lines: &[String]) -> Env {
    let mut text = String::from("# tokens\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    Env::with_bytes(text.as_bytes())
}

// --- list ----------------------------------------------------------------------------

#[test]
fn list_shows_last_used_uses_and_client_from_the_sidecar() {
    let env = Env::init();
    let used = env.mint(&["--scope", "read", "--name", "ci"]);
    let idle = env.mint(&["--scope", "read"]);
    let (used_id, idle_id) = (id_of(used.as_bytes()), id_of(idle.as_bytes()));
    let (sidecar, real) = own_sidecar(&env);
    let at = days_ago(3);
    write_sidecar(&sidecar, &real, &[(&used_id, &at, 42, Some("10.0.0.7"))]);

    let records = env.records();
    let r = record(&records, &used_id);
    assert_eq!(r["last_used"], at.as_str());
    assert_eq!(r["uses"], 42);
    assert_eq!(r["last_client"], "10.0.0.7");
    let never = record(&records, &idle_id);
    assert!(never["last_used"].is_null(), "{never}");
    assert_eq!(never["uses"], 0);
    assert!(never["last_client"].is_null(), "{never}");

    let out = env.tokenfile(&["list"]).ok();
    let text = out.out();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("LAST USED") && header.ends_with("USES"),
        "{text}"
    );
    let row = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(row(&used_id).contains("3d ago"), "{text}");
    assert!(row(&used_id).trim_end().ends_with("42"), "{text}");
    assert!(row(&idle_id).contains("never"), "{text}");
    assert!(
        !text.contains(&used) && !out.err().contains(&used),
        "{out:?}"
    );
}

#[test]
fn seen_files_of_several_hosts_merge_latest_wins() {
    let env = Env::init();
    let a = id_of(env.mint(&["--scope", "read"]).as_bytes());
    let b = id_of(env.mint(&["--scope", "read"]).as_bytes());
    // Other hosts keep the file under another path: their header is not checked.
    let host1 = env.path("host1.seen");
    let host2 = env.path("host2.seen");
    let (old, new) = (days_ago(10), days_ago(1));
    write_sidecar(
        &host1,
        Path::new("/srv/elsewhere/tokens"),
        &[(&a, &old, 5, Some("uid 1000")), (&b, &new, 1, Some("h1"))],
    );
    write_sidecar(
        &host2,
        Path::new("/other/tokens"),
        &[(&a, &new, 2, Some("10.1.1.1")), (&b, &old, 9, Some("h2"))],
    );
    let out = env.tokenfile(&["list", "--json", "--seen"]).code(USAGE); // --seen needs a value
    drop(out);
    let out = env
        .tokenfile(&[
            "list",
            "--json",
            "--seen",
            host1.to_str().unwrap(),
            host2.to_str().unwrap(),
        ])
        .ok();
    let json = out.json();
    let records = json["records"].as_array().unwrap();
    assert_eq!(record(records, &a)["last_used"], new.as_str());
    assert_eq!(record(records, &a)["uses"], 2);
    assert_eq!(record(records, &a)["last_client"], "10.1.1.1");
    assert_eq!(record(records, &b)["last_client"], "h1");
    // Repeated --seen works the same.
    let again = env
        .tokenfile(&[
            "list",
            "--json",
            "--seen",
            host2.to_str().unwrap(),
            "--seen",
            host1.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(again["records"], json["records"]);
}

#[test]
fn a_corrupt_or_foreign_sidecar_is_a_warning_never_fatal() {
    let env = Env::init();
    let id = id_of(env.mint(&["--scope", "read"]).as_bytes());
    let (sidecar, _) = own_sidecar(&env);
    fs::write(&sidecar, "this is not a sidecar\n").unwrap();
    let out = env.tokenfile(&["list", "--json"]).ok();
    assert!(
        out.err().contains(&sidecar.display().to_string()),
        "{out:?}"
    );
    assert!(out.err().contains("corrupt"), "{out:?}");
    assert_eq!(
        record(out.json()["records"].as_array().unwrap(), &id)["uses"],
        0
    );

    // The file's own sidecar must name this file.
    write_sidecar(
        &sidecar,
        Path::new("/somewhere/else/tokens"),
        &[(&id, &days_ago(1), 3, None)],
    );
    let out = env.tokenfile(&["list"]).ok();
    assert!(out.err().contains("another token file"), "{out:?}");
    assert!(out.out().contains("never"), "{out:?}");

    // A --seen file that is missing or corrupt is named too; the others still count.
    let good = env.path("good.seen");
    write_sidecar(
        &good,
        Path::new("/x/tokens"),
        &[(&id, &days_ago(2), 7, None)],
    );
    let bad = env.path("bad.seen");
    fs::write(&bad, "{\"tokenfile_seen\":1}\n").unwrap();
    let out = env
        .tokenfile(&[
            "list",
            "--json",
            "--seen",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
            env.path("missing.seen").to_str().unwrap(),
        ])
        .ok();
    assert!(out.err().contains("bad.seen"), "{out:?}");
    assert!(out.err().contains("missing.seen"), "{out:?}");
    assert_eq!(
        record(out.json()["records"].as_array().unwrap(), &id)["uses"],
        7
    );
}

#[test]
fn unused_and_expiring_filter_the_listing() {
    let created_long_ago = days_ago(200);
    let tokens = [
        "tf_unused_recently",
        "tf_unused_long",
        "tf_never_old",
        "tf_never_new",
        "tf_soon",
        "tf_later",
        "tf_gone",
    ];
    let ids: Vec<String> = tokens.iter().map(|t| id_of(t.as_bytes())).collect();
    let line = |token: &str, created: &str, expires: &str| {
        format!("{}\tread\t\t{created}\t{expires}", hashed(token.as_bytes()))
    };
    let env = env_with_lines(&[
        line(tokens[0], &created_long_ago, ""),
        line(tokens[1], &created_long_ago, ""),
        line(tokens[2], &created_long_ago, ""),
        line(tokens[3], &days_ago(1), ""),
        line(
            tokens[4],
            &created_long_ago,
            &stamp(now() + time::Duration::days(3)),
        ),
        line(
            tokens[5],
            &created_long_ago,
            &stamp(now() + time::Duration::days(60)),
        ),
        line(tokens[6], &created_long_ago, &days_ago(1)),
    ]);
    let (sidecar, real) = own_sidecar(&env);
    write_sidecar(
        &sidecar,
        &real,
        &[
            (&ids[0], &days_ago(2), 10, None),
            (&ids[1], &days_ago(120), 10, None),
            (&ids[4], &days_ago(1), 1, None),
            (&ids[5], &days_ago(1), 1, None),
            (&ids[6], &days_ago(150), 1, None),
        ],
    );
    let unused = listed_ids(&env.tokenfile(&["list", "--json", "--unused", "90d"]).ok());
    // Never seen counts from creation: the token minted yesterday is not unused for 90 days.
    assert_eq!(unused, vec![ids[1].clone(), ids[2].clone(), ids[6].clone()]);
    let expiring = listed_ids(&env.tokenfile(&["list", "--json", "--expiring", "14d"]).ok());
    // Only active records: the expired one is not "expiring".
    assert_eq!(expiring, vec![ids[4].clone()]);
    let both = env
        .tokenfile(&["list", "--expiring", "90d", "--unused", "1d"])
        .ok();
    assert!(
        both.out().contains(&ids[4]) && both.out().contains(&ids[5]),
        "{both:?}"
    );
    assert!(!both.out().contains(&ids[0]), "{both:?}");
    env.tokenfile(&["list", "--unused", "soon"]).code(USAGE);
}

#[test]
fn a_record_in_grace_still_says_which_record_replaced_it() {
    let env = Env::init();
    let old = env.mint(&["--scope", "read"]);
    let old_id = id_of(old.as_bytes());
    let new = env
        .tokenfile(&["rotate", &old_id, "--grace", "24h"])
        .ok()
        .out();
    let new_id = id_of(new.trim_end().as_bytes());
    let (sidecar, real) = own_sidecar(&env);
    write_sidecar(&sidecar, &real, &[(&old_id, &days_ago(2), 3, None)]);
    let records = env.records();
    assert_eq!(record(&records, &old_id)["replaced_by"], new_id.as_str());
    let text = env.tokenfile(&["list", "--unused", "1d"]).ok().out();
    assert!(
        text.contains(&format!("active (replaced by {new_id})")),
        "{text}"
    );
    assert!(text.contains("2d ago"), "{text}");
}

// --- prune ---------------------------------------------------------------------------

/// A file with comments, an invalid line, a grace marker and a duplicate of an expired record.
fn prune_fixture() -> (Env, Vec<String>, Vec<u8>) {
    let expired = "tf_expired_one";
    let active = "tf_active_one";
    let idle = "tf_idle_one";
    let ids: Vec<String> = [expired, active, idle]
        .iter()
        .map(|t| id_of(t.as_bytes()))
        .collect();
    let old = days_ago(200);
    let text = format!(
        "# header\r\n{e}\tread\tgone\t{old}\t{past}\n# a comment\n{a}\tread\tkept\t{old}\t\nbad line\there\n\n{i}\twrite\tidle\t{old}\n# tokenfile: {ide} replaced by {ia} (rotate --grace)\n{e}\tread\tcopy\t{old}\t\n# no newline at the end",
        e = hashed(expired.as_bytes()),
        a = hashed(active.as_bytes()),
        i = hashed(idle.as_bytes()),
        ide = ids[0],
        ia = ids[1],
        past = days_ago(1),
    );
    let env = Env::with_bytes(text.as_bytes());
    (env, ids, text.into_bytes())
}

#[test]
fn prune_removes_expired_records_with_their_duplicates_and_markers_only() {
    let (env, ids, before) = prune_fixture();
    // Every line that goes is named, the duplicate too.
    let planned = env.tokenfile(&["prune", "--dry-run", "--json"]).ok().json();
    assert_eq!(planned["removed"][0]["line"], 2);
    assert_eq!(
        planned["removed"][0]["duplicate_lines"],
        serde_json::json!([9])
    );
    let out = env.tokenfile(&["prune"]).ok();
    assert!(
        out.err().contains(&format!("removed {}", ids[0]))
            && out.err().contains("with its duplicate line(s) 9"),
        "{out:?}"
    );
    let after = String::from_utf8(env.read()).unwrap();
    // Every other line byte for byte: the removed record, its duplicate and the marker go.
    let expected: String = String::from_utf8(before)
        .unwrap()
        .split_inclusive('\n')
        .filter(|l| !l.contains(&hashed(b"tf_expired_one")) && !l.starts_with("# tokenfile: "))
        .collect();
    assert_eq!(after, expected);
    let audit = env.audit_lines();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["event"], "prune");
    assert_eq!(audit[0]["ids"], serde_json::json!([ids[0]]));
    assert_eq!(audit[0]["expired"], serde_json::json!([ids[0]]));
    assert!(!audit[0].to_string().contains("sha256:"), "{audit:?}");

    // Again: nothing to prune, exit 0, nothing written, no audit line.
    let out = env.tokenfile(&["prune", "--expired"]).ok();
    assert!(out.err().contains("nothing to prune"), "{out:?}");
    assert_eq!(String::from_utf8(env.read()).unwrap(), after);
    assert_eq!(env.audit_lines().len(), 1);
}

#[test]
fn prune_unused_uses_the_sidecars_and_dry_run_changes_nothing() {
    let (env, ids, before) = prune_fixture();
    let (sidecar, real) = own_sidecar(&env);
    // Without figures, --unused refuses rather than remove everything on no evidence.
    env.tokenfile(&["prune", "--unused", "30d"]).code(USAGE);
    assert_eq!(env.read(), before);
    write_sidecar(&sidecar, &real, &[(&ids[1], &days_ago(1), 4, None)]);

    let out = env
        .tokenfile(&["prune", "--unused", "30d", "--dry-run", "--json"])
        .ok();
    let json = out.json();
    assert_eq!(json["dry_run"], true);
    let removed: Vec<(&str, &str)> = json["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        removed,
        vec![(ids[0].as_str(), "expired"), (ids[2].as_str(), "unused")]
    );
    assert_eq!(env.read(), before, "a dry run changes nothing");
    assert!(
        env.audit_lines().is_empty(),
        "a dry run writes no audit line"
    );
    let human = env
        .tokenfile(&["prune", "--unused", "30d", "--dry-run"])
        .ok();
    assert!(
        human.err().contains("would remove") && human.out().is_empty(),
        "{human:?}"
    );

    // Another host's figures count too (--seen): the idle record was used there.
    let other = env.path("other.seen");
    write_sidecar(
        &other,
        Path::new("/elsewhere"),
        &[(&ids[2], &days_ago(2), 1, None)],
    );
    let with_other = env
        .tokenfile(&[
            "prune",
            "--unused",
            "30d",
            "--dry-run",
            "--json",
            "--seen",
            other.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(with_other["removed"].as_array().unwrap().len(), 1);

    let out = env.tokenfile(&["prune", "--unused", "30d", "--json"]).ok();
    assert_eq!(out.json()["dry_run"], false);
    assert_eq!(out.json()["removed"].as_array().unwrap().len(), 2);
    let left: Vec<String> = env.ids();
    assert_eq!(left, vec![ids[1].clone()]);
    let audit = env.audit_lines();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["unused"], serde_json::json!([ids[2]]));
    assert_eq!(audit[0]["records"].as_array().unwrap().len(), 2);
    // The invalid and unterminated lines are still there, byte for byte.
    let after = String::from_utf8(env.read()).unwrap();
    assert!(
        after.contains("bad line\there\n") && after.ends_with("# no newline at the end"),
        "{after:?}"
    );
}

// --- check --explain -----------------------------------------------------------------

fn explain(env: &Env, token: &str, scopes: &[&str], json: bool) -> Out {
    let mut args = vec!["check", "--explain"];
    if json {
        args.push("--json");
    }
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = env.tokenfile_stdin(&args, format!("{token}\n").as_bytes());
    let tail = &token[token.len().saturating_sub(12)..];
    for text in [out.out(), out.err()] {
        assert!(!text.contains(token) && !text.contains(tail), "{out:?}");
    }
    out
}

#[test]
fn explain_says_which_line_and_scope_granted() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read,kafka:*", "--name", "ci"]);
    let id = id_of(token.as_bytes());
    let out = explain(&env, &token, &["read", "kafka:topic"], false).code(OK);
    let err = out.err();
    assert!(
        err.contains(&format!(
            "line 5 of {} matched: record {id} (name: ci)",
            env.file_str()
        )),
        "{err}"
    );
    assert!(err.contains("scope read: granted by read"), "{err}");
    assert!(
        err.contains("scope kafka:topic: granted by kafka:*"),
        "{err}"
    );
    assert!(out.out().is_empty(), "{out:?}");

    let json = explain(&env, &token, &["read", "write"], true)
        .code(FORBIDDEN)
        .json();
    assert_eq!(json["result"], "forbidden");
    let e = &json["explain"];
    assert_eq!(e["result"], "forbidden");
    assert_eq!(e["reason"], "missing scope");
    assert_eq!(e["matched"]["id"], id.as_str());
    assert_eq!(e["matched"]["line"], 5);
    assert_eq!(e["matched"]["name"], "ci");
    assert_eq!(e["scopes"][0]["granted_by"], "read");
    assert_eq!(e["scopes"][1]["required"], "write");
    assert!(e["scopes"][1]["granted_by"].is_null(), "{e}");
    // Without --explain, no explain object.
    let plain = env
        .tokenfile_stdin(
            &["check", "--scope", "read", "--json"],
            format!("{token}\n").as_bytes(),
        )
        .json();
    assert!(plain.get("explain").is_none(), "{plain}");
    let human = explain(&env, &token, &["write"], false).code(FORBIDDEN);
    assert!(
        human.err().contains("scope write: not granted"),
        "{human:?}"
    );
}

#[test]
fn explain_says_why_a_token_was_refused() {
    let env = Env::init();
    let token = env.mint(&["--scope", "read"]);
    // Unknown, with the hints.
    let unknown = explain(&env, "tf_not_a_token_here_at_all", &["read"], true)
        .code(UNAUTHORIZED)
        .json();
    assert_eq!(unknown["explain"]["reason"], "unknown token");
    assert!(unknown["explain"]["matched"].is_null());
    let damaged = &token[..token.len() - 1];
    let out = explain(&env, damaged, &["read"], false).code(UNAUTHORIZED);
    assert!(out.err().contains("checksum does not match"), "{out:?}");
    let json = explain(&env, damaged, &["read"], true).json();
    assert!(
        json["explain"]["hint"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{json}"
    );
    let spaced = format!("{token} ");
    let json = explain(&env, &spaced, &["read"], true)
        .code(UNAUTHORIZED)
        .json();
    assert!(
        json["explain"]["hint"]
            .as_str()
            .unwrap()
            .contains("whitespace"),
        "{json}"
    );

    // Expired since when; and a later duplicate that would have granted is shadowed.
    let expired = "tf_expired_but_copied_later";
    let id = id_of(expired.as_bytes());
    let at = days_ago(3);
    let env = env_with_lines(&[
        format!("{}\tread\told\t\t{at}", hashed(expired.as_bytes())),
        format!("{}\tread,write\tnew", hashed(expired.as_bytes())),
    ]);
    let out = explain(&env, expired, &["write"], false).code(UNAUTHORIZED);
    let err = out.err();
    assert!(err.contains(&format!("expired at {at}")), "{err}");
    assert!(err.contains("line 3 has the same token"), "{err}");
    assert!(err.contains("duplicate of line 2"), "{err}");
    let json = explain(&env, expired, &["write"], true)
        .code(UNAUTHORIZED)
        .json();
    let e = &json["explain"];
    assert_eq!(e["reason"], "expired token");
    assert_eq!(e["expired_at"], at.as_str());
    assert_eq!(e["matched"]["id"], id.as_str());
    assert_eq!(e["matched"]["line"], 2);
    assert_eq!(e["shadowed"][0]["line"], 3);
    assert_eq!(e["shadowed"][0]["duplicate_of_line"], 2);
    // The explanation never changes the decision.
    assert_eq!(env.check(expired, &["write"]), UNAUTHORIZED);
}

// --- lint --expiring -----------------------------------------------------------------

#[test]
fn lint_expiring_exits_5_for_cron_and_0_when_nothing_expires_soon() {
    let env = Env::init();
    env.mint(&["--scope", "read", "--expires", "60d"]);
    env.tokenfile(&["lint", "--expiring", "14d"]).code(OK);
    env.tokenfile(&["lint"]).code(OK);
    let soon = env.mint(&["--scope", "read", "--expires", "3d"]);
    let id = id_of(soon.as_bytes());
    let out = env.tokenfile(&["lint", "--expiring", "14d"]).code(PROBLEMS);
    assert!(
        out.out().contains("[expiring]") && out.out().contains(&id),
        "{out:?}"
    );
    let json = env
        .tokenfile(&["lint", "--expiring", "14d", "--json"])
        .code(PROBLEMS)
        .json();
    let finding = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "expiring")
        .unwrap()
        .clone();
    assert_eq!(finding["severity"], "warning");
    assert_eq!(finding["id"], id.as_str());
    // Without --expiring, lint is as before: no finding, exit 0.
    env.tokenfile(&["lint"]).code(OK);
    env.tokenfile(&["lint", "--expiring", "1d"]).code(OK);
}

#[test]
fn prune_never_shows_a_plaintext_token_it_removes() {
    let token = "legacy-plaintext-token-0123456789";
    let env = env_with_lines(&[format!("{token}\tread\tlegacy\t\t{}", days_ago(1))]);
    for args in [
        &["prune", "--dry-run"][..],
        &["prune", "--dry-run", "--json"],
        &["prune", "--json"],
    ] {
        let out = env.tokenfile(args).ok();
        assert_no_secret(out.out().as_bytes(), &[token.as_bytes()], "prune stdout");
        assert_no_secret(out.err().as_bytes(), &[token.as_bytes()], "prune stderr");
    }
    assert!(env.ids().is_empty());
    let audit = fs::read(env.audit_path()).unwrap();
    assert_no_secret(&audit, &[token.as_bytes()], "the audit log");
}
