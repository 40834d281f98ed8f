//! The JSON documents of the commands' `--json` (what each field means: README "JSON
//! output"): the scripting contract. Field names and their presence are promises; a change
//! here is a change for every script that reads them. The one part kept elsewhere is a lint
//! finding (`lint::Finding`, built where the problems are found); `serve`'s `/healthz` body is
//! in `serve/http.rs`. Only [`Issued`] holds a secret, and it is shown by
//! `output::print_json_revealing` alone.

use serde::Serialize;

use crate::lint::Finding;
use crate::token::Secret;

/// What `mint` and `rotate` print about a new token.
#[derive(Serialize)]
pub(crate) struct Issued<'a> {
    /// Shown by `commands::reveal` alone: every other string of the document is redacted.
    #[serde(serialize_with = "serialize_secret")]
    pub(crate) token: &'a Secret,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) created: String,
    pub(crate) expires: Option<String>,
    pub(crate) stored: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replaces: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) old_valid_until: Option<String>,
}

fn serialize_secret<S: serde::Serializer>(token: &&Secret, s: S) -> Result<S::Ok, S::Error> {
    let text = std::str::from_utf8(token.expose()).expect("a minted token is URL-safe ASCII");
    s.serialize_str(text)
}

/// `check --json`.
#[derive(Serialize)]
pub(crate) struct CheckReport<'a> {
    pub(crate) result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hint: Option<&'static str>,
    pub(crate) required: Vec<&'a str>,
    /// With `--routes` only: the request and the rule that decided what it needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) route: Option<&'a RouteMatch>,
    /// With `--explain` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) explain: Option<crate::decision::Explanation>,
}

/// One record of `list --json`.
#[derive(Serialize)]
pub(crate) struct ListedRecord {
    pub(crate) id: String,
    pub(crate) line: usize,
    pub(crate) status: &'static str,
    pub(crate) stored: &'static str,
    pub(crate) scopes: Vec<String>,
    pub(crate) name: String,
    pub(crate) created: Option<String>,
    pub(crate) expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duplicate_of_line: Option<usize>,
    /// The record that `rotate --grace` put in this one's place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replaced_by: Option<String>,
    /// When `serve` last granted the token or refused it for a missing scope (RFC 3339), by
    /// the last-used sidecars; `null`: never seen.
    pub(crate) last_used: Option<String>,
    /// How many such checks (0 for never).
    pub(crate) uses: u64,
    /// Who asked last (`uid 1000`, an address), if known.
    pub(crate) last_client: Option<String>,
}

/// `list --json`.
#[derive(Serialize)]
pub(crate) struct Listing {
    pub(crate) file: String,
    pub(crate) records: Vec<ListedRecord>,
    pub(crate) invalid_lines: Vec<usize>,
}

/// `lint --json`.
#[derive(Serialize)]
pub(crate) struct LintReport {
    pub(crate) file: String,
    pub(crate) errors: usize,
    pub(crate) warnings: usize,
    pub(crate) findings: Vec<Finding>,
}

/// One record `prune` removes (or would, with `--dry-run`).
#[derive(Serialize)]
pub(crate) struct PrunedRecord {
    pub(crate) id: String,
    pub(crate) line: usize,
    /// Later lines with the same token (duplicates that granted nothing), removed with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) duplicate_lines: Vec<usize>,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    /// `expired` or `unused`.
    pub(crate) reason: &'static str,
    pub(crate) expires: Option<String>,
    pub(crate) last_used: Option<String>,
}

/// `prune --json`.
#[derive(Serialize)]
pub(crate) struct PruneReport {
    pub(crate) file: String,
    pub(crate) dry_run: bool,
    pub(crate) removed: Vec<PrunedRecord>,
}

/// `check --routes`: the request decided, and the rule for it (`null`: none covers it).
#[derive(Serialize)]
pub(crate) struct RouteMatch {
    pub(crate) file: String,
    pub(crate) method: String,
    /// The path as normalized for matching.
    pub(crate) path: String,
    pub(crate) rule: Option<RuleMatch>,
}

/// The rule that covers a request.
#[derive(Serialize)]
pub(crate) struct RuleMatch {
    pub(crate) line: usize,
    pub(crate) methods: String,
    /// The rule's path glob.
    pub(crate) path: String,
    /// What the rule requires, shown as a list of scopes.
    #[serde(serialize_with = "scope_list")]
    pub(crate) scopes: crate::scope::RequiredScopes,
}

fn scope_list<S: serde::Serializer>(
    scopes: &crate::scope::RequiredScopes,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(scopes.iter())
}

/// `routes check --json`.
#[derive(Serialize)]
pub(crate) struct RoutesReport<'a> {
    pub(crate) file: String,
    /// Rules parsed (0 when the file has errors).
    pub(crate) rules: usize,
    pub(crate) findings: &'a [RouteFinding],
}

/// One problem of a rules file (`line` 0: the file as a whole).
#[derive(Serialize)]
pub(crate) struct RouteFinding {
    pub(crate) line: usize,
    /// `error` (exit 5) or `warning`.
    pub(crate) severity: &'static str,
    pub(crate) message: String,
}
