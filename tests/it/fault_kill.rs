//! Fault 1, kill -9 loop (RELIABILITY.md): `mint` writers are killed with SIGKILL at random
//! moments of their run — before the lock, while writing the temp copy, around the fsync
//! and the rename, while printing. After every kill:
//! - the file still starts with exactly the bytes it had (nothing before the end changes)
//!   and has no invalid line;
//! - every token that a finished mint printed, or that landed, is in it (a mint killed
//!   between printing and the rename showed a token that was never stored);
//! - at most one temp file is left over (the killed writer's; the next writer removes it);
//! - the lock is free for the next writer.
//!
//! Prints `fault kill-9: tries=… kills=… completed=… failures=… losses=…`. CI runs 100
//! kills; `TOKENFILE_FAULT_ROUNDS=10` runs 1000.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::support::fault::*;
use crate::support::{lock_is_free, report};

#[test]
fn kill_9_loop_loses_nothing() {
    let _alone = crate::support::serial();
    let kills_wanted = 100 * rounds();
    // Enough records that a mint spends real time writing (~1 MB), so kills land in every
    // phase of it, not only at process start.
    let scratch = Scratch::new(10_000);
    let mut rng = Rng::from_env();
    let seed = rng.seed();
    let original = std::fs::read(&scratch.file).unwrap();

    // How long an undisturbed mint takes here: kills are spread over 0..1.5× that.
    let started = Instant::now();
    let mut printed: Vec<String> = Vec::new();
    for _ in 0..3 {
        let out = scratch.mint().output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed.push(printed_token(&out).expect("a minted token"));
    }
    let span_us = (started.elapsed().as_micros() as u64 / 3 * 3 / 2).max(1000);

    let (mut tries, mut kills, mut completed, mut failures, mut losses) = (0, 0, 0, 0, 0);
    // Where the kills landed: with a temp copy on disk (mid-write), or after the record
    // was in place (before the token was printed, or during the print).
    let (mut mid_write, mut after_landing) = (0, 0);
    let mut records = FileState::read(&scratch.file).records;
    let mut problems: Vec<String> = Vec::new();
    while kills < kills_wanted && tries < kills_wanted * 20 {
        tries += 1;
        let mut child = scratch
            .mint()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sleep(Duration::from_micros(rng.below(span_us)));
        let _ = child.kill(); // SIGKILL; a no-op if it already finished
        let out = child.wait_with_output().unwrap();
        let killed = out.status.signal() == Some(9);
        match out.status.signal() {
            Some(9) => kills += 1,
            _ if out.status.success() => completed += 1,
            _ => {
                failures += 1;
                problems.push(format!("try {tries}: mint failed: {:?}", out.status));
            }
        }
        let state = FileState::read(&scratch.file);
        // docs/writing.md: the token is printed before the rename, so a mint killed in between
        // showed a token that never landed (and failed). One that landed must stay.
        if let Some(token) = printed_token(&out).filter(|t| !killed || state.holds(t)) {
            printed.push(token);
        }
        let mut failed = Vec::new();
        if !state.bytes.starts_with(&original) {
            failed.push("the bytes before the end changed".to_string());
        }
        if !state.invalid_lines.is_empty() {
            failed.push(format!("invalid lines {:?}", state.invalid_lines));
        }
        let missing = printed.iter().filter(|t| !state.holds(t)).count();
        if missing > 0 {
            losses += missing;
            failed.push(format!("{missing} printed token(s) missing"));
        }
        let temps = scratch.temp_files();
        if killed && !temps.is_empty() {
            mid_write += 1;
        }
        if killed && state.records > records {
            after_landing += 1;
        }
        records = state.records;
        if temps.len() > 1 {
            failed.push(format!("temp files pile up: {temps:?}"));
        }
        if !lock_is_free(&scratch.lock_path()) {
            failed.push("the lock is still held".to_string());
        }
        if !failed.is_empty() {
            failures += 1;
            problems.push(format!("try {tries}: {}", failed.join("; ")));
            // Start the next try from a sound file, so that one failure is not counted
            // again after every later kill.
            printed.retain(|t| state.holds(t));
        }
    }

    // A writer after the last kill finds the lock free and cleans up.
    let out = scratch.mint().output().unwrap();
    if !out.status.success() || !scratch.temp_files().is_empty() {
        failures += 1;
        problems.push(format!(
            "the writer after the last kill: {:?}, temp files {:?}",
            out.status,
            scratch.temp_files()
        ));
    }

    report(&format!(
        "fault kill-9: tries={tries} kills={kills} completed={completed} failures={failures} \
         losses={losses} (kills mid-write: {mid_write}, after the record landed: \
         {after_landing}; printed tokens checked: {}; seed {seed})",
        printed.len()
    ));
    for p in problems.iter().take(20) {
        eprintln!("  {p}");
    }
    assert!(kills >= kills_wanted, "only {kills} kills in {tries} tries");
    assert_eq!(failures, 0, "see the problems above");
    assert_eq!(losses, 0);
}

/// docs/writing.md across `kill -9`: the audit line is synced before the rename, so every record
/// that landed has its `mint` line, whenever the writer died. Prints
/// `fault kill-9 audit: kills=… landed=… audited=… unlogged=…`. CI runs 150 kills.
#[test]
fn kill_9_never_lands_a_change_without_its_audit_line() {
    let _alone = crate::support::serial();
    let kills_wanted = 150 * rounds();
    // Big enough that a kill can land between the audit line and the rename.
    let scratch = Scratch::new(2_000);
    let mut rng = Rng::from_env();
    let seed = rng.seed();
    let started = Instant::now();
    for _ in 0..3 {
        assert!(scratch.mint().output().unwrap().status.success());
    }
    let span_us = (started.elapsed().as_micros() as u64 / 3 * 3 / 2).max(1000);
    let (mut tries, mut kills) = (0, 0);
    while kills < kills_wanted && tries < kills_wanted * 20 {
        tries += 1;
        // A file, not /dev/null: a token printed to /dev/null is shown to nobody, and mint
        // refuses that (docs/writing.md).
        let mut child = scratch
            .mint()
            .stdout(std::fs::File::create(scratch.path().join("mint.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sleep(Duration::from_micros(rng.below(span_us)));
        let _ = child.kill();
        if child.wait().unwrap().signal() == Some(9) {
            kills += 1;
        }
    }
    // Minted records are the ones with scope `fault`; each ID must have a `mint` line.
    let bytes = std::fs::read(&scratch.file).unwrap();
    let doc = tokenfile::format::Document::parse(&bytes);
    let landed: Vec<String> = doc
        .counted_records()
        .filter(|(_, r)| r.scopes.to_field() == "fault")
        .map(|(_, r)| r.id().to_string())
        .collect();
    let log = std::fs::read_to_string(scratch.path().join("tokens.audit.jsonl")).unwrap();
    let audited: std::collections::HashSet<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "mint")
        .filter_map(|v| v["ids"][0].as_str().map(str::to_string))
        .collect();
    let unlogged: Vec<&String> = landed.iter().filter(|id| !audited.contains(*id)).collect();
    report(&format!(
        "fault kill-9 audit: tries={tries} kills={kills} landed={} audited={} unlogged={} \
         (seed {seed})",
        landed.len(),
        audited.len(),
        unlogged.len()
    ));
    assert!(kills >= kills_wanted, "only {kills} kills in {tries} tries");
    assert!(
        !landed.is_empty(),
        "no mint landed: the loop tested nothing"
    );
    assert!(
        unlogged.is_empty(),
        "records without an audit line: {unlogged:?}"
    );
}
