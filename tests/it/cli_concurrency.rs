//! docs/writing.md, with real processes started at once, and
//! "a reader sees the old file or the new one, never a mix".

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::support::*;

/// Every line of a file written by this tool: a header comment or a complete minted record.
#[track_caller]
fn assert_well_formed(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    assert!(
        text.ends_with('\n'),
        "torn file (no final newline): {text:?}"
    );
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(
            (4..=5).contains(&fields.len())
                && fields[0].len() == 7 + 64
                && fields[0].starts_with("sha256:")
                && matches!(classify(line.as_bytes()), Kind::Hashed),
            "torn or malformed line {line:?} in\n{text}"
        );
    }
}

#[test]
fn fifty_parallel_mints_leave_fifty_valid_records() {
    const N: usize = 50;
    let env = Env::init();
    let header = env.read();
    let scopes: Vec<String> = (0..N).map(|i| format!("job:{i}")).collect();
    let names: Vec<String> = (0..N).map(|i| format!("worker {i}")).collect();
    // Start all of them before waiting for any.
    let running: Vec<Running> = (0..N)
        .map(|i| {
            spawn(
                env.command(&[
                    "--lock-timeout",
                    "60s",
                    "mint",
                    "--scope",
                    &scopes[i],
                    "--name",
                    &names[i],
                ]),
                None,
            )
        })
        .collect();
    let tokens: Vec<String> = running
        .into_iter()
        .map(|r| {
            let out = r.wait().ok();
            let token = out
                .out()
                .strip_suffix('\n')
                .expect("token line")
                .to_string();
            assert!(is_minted_shape(&token), "{out:?}");
            token
        })
        .collect();
    let distinct: BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), N, "tokens must be distinct");

    let bytes = env.read();
    assert!(bytes.starts_with(&header), "the header was lost");
    assert_well_formed(&bytes);
    let records = env.records();
    assert_eq!(records.len(), N);
    let listed: BTreeSet<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let minted: BTreeSet<String> = tokens.iter().map(|t| id_of(t.as_bytes())).collect();
    assert_eq!(listed, minted);
    let listed_names: BTreeSet<&str> = records
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed_names, names.iter().map(String::as_str).collect());

    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(env.check(token, &[&scopes[i]]), OK, "token {i}");
    }
    assert_eq!(env.check(&tokens[0], &[&scopes[1]]), FORBIDDEN);
    env.tokenfile(&["lint", "--strict"]).ok();

    // The audit log has one intact line per change.
    let audit = env.audit_lines();
    assert_eq!(audit.len(), 1 + N);
    assert_eq!(audit.iter().filter(|l| l["event"] == "mint").count(), N);
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[test]
fn concurrent_revokes_and_mints_end_in_exactly_the_expected_set() {
    const SEEDS: usize = 20;
    const REVOKED: usize = 10;
    const MINTS: usize = 10;
    let seeds: Vec<String> = (0..SEEDS).map(|i| format!("seed-token-{i}")).collect();
    let mut original = b"# seeded\nbroken-line\t\n".to_vec();
    for (i, seed) in seeds.iter().enumerate() {
        original
            .extend_from_slice(format!("{}\tseed\tseed {i}\n", hashed(seed.as_bytes())).as_bytes());
    }
    let env = Env::with_bytes(&original);

    // Interleave: revoke, mint, revoke, mint, ... all started before any is waited for.
    let mut running = Vec::new();
    for i in 0..REVOKED.max(MINTS) {
        if let Some(seed) = seeds[..REVOKED].get(i) {
            let id = id_of(seed.as_bytes());
            running.push((
                false,
                spawn(env.command(&["--lock-timeout", "60s", "revoke", &id]), None),
            ));
        }
        if i < MINTS {
            running.push((
                true,
                spawn(
                    env.command(&["--lock-timeout", "60s", "mint", "--scope", "new", "--json"]),
                    None,
                ),
            ));
        }
    }
    let mut minted = Vec::new();
    for (is_mint, r) in running {
        let out = r.wait().ok();
        if is_mint {
            minted.push(out.json()["token"].as_str().unwrap().to_string());
        }
    }

    // Survivors keep their bytes and order, before the new records; the comment and the
    // invalid line stay.
    let mut expected_prefix = b"# seeded\nbroken-line\t\n".to_vec();
    for (i, seed) in seeds.iter().enumerate().skip(REVOKED) {
        expected_prefix
            .extend_from_slice(format!("{}\tseed\tseed {i}\n", hashed(seed.as_bytes())).as_bytes());
    }
    let bytes = env.read();
    assert!(
        bytes.starts_with(&expected_prefix),
        "survivors changed:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let (_, tail) = split_lines(&bytes[expected_prefix.len()..]);
    assert_eq!(tail.len(), MINTS);

    let ids = env.ids();
    let expected: Vec<String> = seeds[REVOKED..]
        .iter()
        .map(|s| id_of(s.as_bytes()))
        .collect();
    assert_eq!(ids[..SEEDS - REVOKED], expected[..]);
    let new_ids: BTreeSet<String> = ids[SEEDS - REVOKED..].iter().cloned().collect();
    let minted_ids: BTreeSet<String> = minted.iter().map(|t| id_of(t.as_bytes())).collect();
    assert_eq!(new_ids, minted_ids);
    assert_eq!(ids.len(), SEEDS - REVOKED + MINTS);

    for (i, seed) in seeds.iter().enumerate() {
        let want = if i < REVOKED { UNAUTHORIZED } else { OK };
        assert_eq!(env.check(seed, &["seed"]), want, "seed {i}");
    }
    for token in &minted {
        assert_eq!(env.check(token, &["new"]), OK);
    }
}

#[test]
fn readers_see_the_old_file_or_the_new_one_never_a_mix() {
    const WRITES: usize = 15;
    let env = Env::init();
    let done = Arc::new(AtomicBool::new(false));
    let path = env.file.clone();
    let reader = {
        let done = done.clone();
        thread::spawn(move || {
            let mut snapshots = 0usize;
            // Bounded: stops when the writers are done, or after many reads.
            while !done.load(Ordering::SeqCst) && snapshots < 2_000_000 {
                let bytes = fs::read(&path).expect("the file never disappears");
                assert_well_formed(&bytes);
                snapshots += 1;
            }
            snapshots
        })
    };
    for _ in 0..WRITES {
        env.mint(&["--scope", "read"]);
    }
    let token = env.mint(&["--scope", "read"]);
    env.tokenfile(&["rotate", &id_of(token.as_bytes()), "--grace", "1h"])
        .ok();
    done.store(true, Ordering::SeqCst);
    let snapshots = reader.join().expect("reader saw a torn file");
    assert!(snapshots > 0);
    assert_eq!(env.ids().len(), WRITES + 2);
}
