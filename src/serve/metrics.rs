//! Counters of `serve` and their Prometheus text exposition (format 0.0.4).
//!
//! Plain atomics rather than a metrics crate: a handful of counters, one writer per event,
//! and a text format simple enough to write by hand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::decision::Decision;

use super::routes::RoutesStatus;

/// How one check ended, the `outcome` label of `tokenfile_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Granted,
    Forbidden,
    Unauthorized,
    /// The request itself was unusable (no or malformed scope): HTTP 400, socket `ERROR`.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Granted,
        Outcome::Forbidden,
        Outcome::Unauthorized,
        Outcome::Invalid,
    ];

    pub(super) fn of(decision: &Decision) -> Self {
        match decision {
            Decision::Granted { .. } => Outcome::Granted,
            Decision::Forbidden { .. } => Outcome::Forbidden,
            Decision::Unauthorized(_) => Outcome::Unauthorized,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Forbidden => "forbidden",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Invalid => "invalid",
        }
    }
}

/// What the exposition reports of the state in use, taken from it by whoever holds it:
/// the counters need not know how a state is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Gauges {
    pub records: usize,
    pub invalid_lines: usize,
    /// Read from the file, rather than missing, unreadable or unsafe.
    pub file_present: bool,
    /// Unix time at which the state was installed.
    pub installed_unix: f64,
    /// The soonest expiry among the active records (Unix seconds), if any expires.
    pub soonest_expiry_unix: Option<i64>,
    /// How many active records expire within the next 7 days.
    pub expiring_soon: usize,
}

#[derive(Debug, Default)]
pub(super) struct Metrics {
    checks: [AtomicU64; 4],
    /// New states installed from the file (content changed, or SIGHUP).
    reloads: AtomicU64,
    /// Attempts that ended without a usable file: missing, unreadable, unsafe.
    reload_failures: AtomicU64,
}

impl Metrics {
    pub(super) fn count_check(&self, outcome: Outcome) {
        self.checks[outcome as usize].fetch_add(1, Relaxed);
    }

    pub(super) fn count_reload(&self) {
        self.reloads.fetch_add(1, Relaxed);
    }

    pub(super) fn count_reload_failure(&self) {
        self.reload_failures.fetch_add(1, Relaxed);
    }

    pub(super) fn reloads(&self) -> u64 {
        self.reloads.load(Relaxed)
    }

    pub(super) fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Relaxed)
    }

    /// The whole exposition, with the gauges of the state in use and, with `--routes`, the
    /// figures of the rules file.
    pub(super) fn render(&self, gauges: &Gauges, routes: Option<&RoutesStatus>) -> String {
        let mut out = String::with_capacity(1536);
        let name = "tokenfile_checks_total";
        let _ = writeln!(
            out,
            "# HELP {name} Checks answered, by outcome.\n# TYPE {name} counter"
        );
        for outcome in Outcome::ALL {
            let value = self.checks[outcome as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{outcome=\"{}\"}} {value}", outcome.label());
        }
        let mut single = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        single(
            "tokenfile_reloads_total",
            "counter",
            "Times a new state of the token file was installed.",
            self.reloads().to_string(),
        );
        single(
            "tokenfile_reload_failures_total",
            "counter",
            "Reloads that found the file missing, unreadable or unsafe (no token is accepted then).",
            self.reload_failures().to_string(),
        );
        single(
            "tokenfile_records_loaded",
            "gauge",
            "Valid records in the state in use.",
            gauges.records.to_string(),
        );
        single(
            "tokenfile_invalid_lines",
            "gauge",
            "Invalid lines skipped in the state in use.",
            gauges.invalid_lines.to_string(),
        );
        single(
            "tokenfile_file_present",
            "gauge",
            "1 if the state in use was read from the file; 0 if it is missing, unreadable or unsafe.",
            u8::from(gauges.file_present).to_string(),
        );
        single(
            "tokenfile_last_reload_timestamp_seconds",
            "gauge",
            "Unix time at which the state in use was installed.",
            format!("{:.3}", gauges.installed_unix),
        );
        single(
            "tokenfile_soonest_expiry_timestamp_seconds",
            "gauge",
            "Unix time of the soonest expiry among the active records; +Inf if none expires.",
            gauges
                .soonest_expiry_unix
                .map_or_else(|| "+Inf".to_string(), |at| at.to_string()),
        );
        single(
            "tokenfile_records_expiring_7d",
            "gauge",
            "Active records that expire within the next 7 days.",
            gauges.expiring_soon.to_string(),
        );
        if let Some(routes) = routes {
            single(
                "tokenfile_routes_rules",
                "gauge",
                "Rules of the routes file in use.",
                routes.rules.to_string(),
            );
            single(
                "tokenfile_routes_file_ok",
                "gauge",
                "1 if the rules in use are the routes file as it is; 0 if its last change could not be used (the last good rules stay).",
                u8::from(routes.problem.is_none()).to_string(),
            );
            single(
                "tokenfile_routes_reloads_total",
                "counter",
                "Times a changed routes file was installed.",
                routes.reloads.to_string(),
            );
            single(
                "tokenfile_routes_reload_failures_total",
                "counter",
                "Changes of the routes file that could not be used: unparsable, missing or unsafe.",
                routes.failures.to_string(),
            );
            single(
                "tokenfile_routes_last_reload_timestamp_seconds",
                "gauge",
                "Unix time at which the rules in use were installed.",
                routes.installed_unix.to_string(),
            );
            single(
                "tokenfile_route_misses_total",
                "counter",
                "Checks of a request that no rule covers (answered 403).",
                routes.misses.to_string(),
            );
        }
        out
    }
}
