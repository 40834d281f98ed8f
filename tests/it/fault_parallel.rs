//! Fault 2, parallel writers (RELIABILITY.md): 100 `mint` processes started at once, round
//! after round, on one file. Every writer must succeed, every printed token must be in the
//! file, the file must hold exactly the records it had plus one per writer, with no invalid
//! line and no temp file left.
//!
//! Prints `fault parallel: rounds=… writers=… tries=… failures=… losses=…`. CI runs 5 rounds
//! (500 mints); `TOKENFILE_FAULT_ROUNDS=10` runs 50 (5000 mints).

use std::process::Stdio;

use crate::support::fault::*;
use crate::support::report;

const WRITERS: usize = 100;

#[test]
fn parallel_writers_lose_nothing() {
    let _alone = crate::support::serial();
    let rounds_wanted = 5 * rounds();
    let scratch = Scratch::new(100);
    let mut expected_records = FileState::read(&scratch.file).records;
    let (mut tries, mut failures, mut losses) = (0, 0, 0);
    let mut problems = Vec::new();
    for round in 1..=rounds_wanted {
        let children: Vec<_> = (0..WRITERS)
            .map(|_| {
                scratch
                    .mint()
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn a writer")
            })
            .collect();
        let mut tokens = Vec::new();
        for child in children {
            tries += 1;
            let out = child.wait_with_output().unwrap();
            match printed_token(&out) {
                Some(token) if out.status.success() => tokens.push(token),
                _ => {
                    failures += 1;
                    problems.push(format!(
                        "round {round}: a writer failed ({:?}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
        let state = FileState::read(&scratch.file);
        let missing = tokens.iter().filter(|t| !state.holds(t)).count();
        losses += missing;
        expected_records += tokens.len();
        if missing > 0
            || state.records != expected_records
            || !state.invalid_lines.is_empty()
            || !scratch.temp_files().is_empty()
        {
            failures += 1;
            problems.push(format!(
                "round {round}: {missing} token(s) missing, {} records (expected \
                 {expected_records}), invalid lines {:?}, temp files {:?}",
                state.records,
                state.invalid_lines,
                scratch.temp_files()
            ));
            expected_records = state.records;
        }
    }
    report(&format!(
        "fault parallel: rounds={rounds_wanted} writers={WRITERS} tries={tries} \
         failures={failures} losses={losses}"
    ));
    for p in problems.iter().take(20) {
        eprintln!("  {p}");
    }
    assert_eq!(failures, 0, "see the problems above");
    assert_eq!(losses, 0);
}
