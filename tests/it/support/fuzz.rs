//! A budgeted property runner for the fuzz targets (`tests/it/fuzz_*.rs`, see RELIABILITY.md).
//!
//! This crate builds on stable Rust only, so instead of `cargo fuzz` (libFuzzer, nightly) the
//! targets are proptest properties driven by a loop: `TOKENFILE_FUZZ_CASES` cases per
//! property (the target's default otherwise, sized for CI), or, with
//! `TOKENFILE_FUZZ_SECONDS`, as many batches as fit in that many seconds per target. Every
//! batch has a fresh seed; a failure is shrunk to a minimal input and reported with its batch
//! seed; `TOKENFILE_FUZZ_SEED` set to the `seed=` of a figure line replays that run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use super::report;

/// One property of a target.
pub(crate) struct Property<'a> {
    pub name: &'static str,
    #[allow(clippy::type_complexity)]
    pub run: Box<dyn FnMut(&mut TestRunner) -> Result<(), String> + 'a>,
}

impl<'a> Property<'a> {
    pub(crate) fn new<S, F>(name: &'static str, strategy: S, test: F) -> Property<'a>
    where
        S: Strategy + 'a,
        S::Value: Clone + std::fmt::Debug,
        F: Fn(S::Value) -> Result<(), TestCaseError> + 'a,
    {
        Property {
            name,
            run: Box::new(move |runner| runner.run(&strategy, &test).map_err(|e| e.to_string())),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs every property of a target, batch after batch, until the case count or the time
/// budget is spent; prints `fuzz <target>: cases=… failures=… seconds=… seed=…`.
pub(crate) fn fuzz(target: &str, default_cases: u32, mut properties: Vec<Property<'_>>) {
    let per_batch = env_number("TOKENFILE_FUZZ_CASES")
        .map_or(default_cases, |n| n as u32)
        .max(1);
    let budget = env_number("TOKENFILE_FUZZ_SECONDS").map(Duration::from_secs);
    let mut seed = env_number("TOKENFILE_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let first_seed = seed;
    let started = Instant::now();
    let (mut cases, mut batches) = (0u64, 0u64);
    let mut failures = Vec::new();
    loop {
        for property in &mut properties {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&seed.to_le_bytes());
            let config = Config {
                cases: per_batch,
                failure_persistence: None,
                ..Config::default()
            };
            let mut runner =
                TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
            let property_started = Instant::now();
            let outcome = (property.run)(&mut runner);
            if std::env::var_os("TOKENFILE_FUZZ_VERBOSE").is_some() {
                eprintln!(
                    "  {}: {per_batch} cases in {:.1}s",
                    property.name,
                    property_started.elapsed().as_secs_f64()
                );
            }
            if let Err(e) = outcome {
                failures.push(format!("{} (batch seed {seed}): {e}", property.name));
            }
            cases += u64::from(per_batch);
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        batches += 1;
        let more_time = budget.is_some_and(|b| started.elapsed() < b);
        if !more_time || !failures.is_empty() {
            break;
        }
    }
    let figure = format!(
        "fuzz {target}: cases={cases} properties={} batches={batches} failures={} \
         seconds={:.0} seed={first_seed}",
        properties.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    // Collected by .ci/run, with the fault suite's figures.
    report(&figure);
    for f in &failures {
        eprintln!("  {f}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
