//! The check decision (SPEC §1 scopes, expiry, first-record-counts), shared by `tokenfile
//! check` and `serve`.
//!
//! Two ways to find the record of a presented token, with the same answer:
//! - [`TokenIndex`]: every record keyed by its SHA-256 digest, built once (for `serve`);
//! - [`find_record`]: a single pass over the raw file that fully parses only lines whose
//!   credential matches (for one-shot `check`, where building an index would cost more than
//!   the answer).
//!
//! Either way the presented token is compared by digest for `sha256:` records, never to the
//! stored string itself, and plaintext records are compared without early exit.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::sync::Arc;

use crate::format::{self, Entry, HASH_PREFIX, Invalid, Record};
use crate::scope::{RequiredScopes, ScopeSet};
use crate::token::{Digest, Id, Secret};
use crate::when::Timestamp;

/// What a record grants: all a check needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: Id,
    pub name: Arc<str>,
    pub scopes: Arc<ScopeSet>,
    pub expires: Option<Timestamp>,
    /// 1-based line number in the file it was loaded from.
    pub line: usize,
}

impl Grant {
    pub fn from_record(record: &Record, line: usize) -> Self {
        Grant {
            id: record.id(),
            name: record.name_lossy().into(),
            scopes: Arc::new(record.scopes.clone()),
            expires: record.expires,
            line,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Exit 0, HTTP 204.
    Granted { id: Id, name: Arc<str> },
    /// Exit 1, HTTP 403: a valid token without (all) the required scopes.
    Forbidden { id: Id, name: Arc<str> },
    /// Exit 3, HTTP 401.
    Unauthorized(Unauthorized),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    NoToken,
    Unknown,
    Expired(Id),
}

impl Unauthorized {
    pub fn reason(self) -> &'static str {
        match self {
            Unauthorized::NoToken => "no token",
            Unauthorized::Unknown => "unknown token",
            Unauthorized::Expired(_) => "expired token",
        }
    }
}

/// Decides a check once the token's record (if any) is known.
pub fn decide(
    token_present: bool,
    grant: Option<&Grant>,
    required: &RequiredScopes,
    now: Timestamp,
) -> Decision {
    if !token_present {
        return Decision::Unauthorized(Unauthorized::NoToken);
    }
    let Some(grant) = grant else {
        return Decision::Unauthorized(Unauthorized::Unknown);
    };
    if grant.expires.is_some_and(|e| e <= now) {
        return Decision::Unauthorized(Unauthorized::Expired(grant.id));
    }
    if grant.scopes.grants(required) {
        Decision::Granted {
            id: grant.id,
            name: grant.name.clone(),
        }
    } else {
        Decision::Forbidden {
            id: grant.id,
            name: grant.name.clone(),
        }
    }
}

/// A problem found while loading: an invalid line or a duplicate token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadProblem {
    Invalid { line: usize, why: Invalid },
    Duplicate { line: usize, first: usize, id: Id },
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadProblem::Invalid { line, why } => write!(f, "line {line}: invalid, ignored: {why}"),
            LoadProblem::Duplicate { line, first, id } => write!(
                f,
                "line {line}: same token as line {first} (ID {id}); only line {first} counts"
            ),
        }
    }
}

/// All records of a file keyed by token digest; the first record of a token wins.
#[derive(Debug, Default, Clone)]
pub struct TokenIndex {
    by_digest: HashMap<Digest, Grant>,
    /// Lines with a valid record, including shadowed duplicates.
    pub records: usize,
}

impl TokenIndex {
    /// Builds the index from the file's bytes, reporting invalid lines and duplicates.
    pub fn load(bytes: &[u8]) -> (TokenIndex, Vec<LoadProblem>) {
        let doc = format::Document::parse(bytes);
        let mut index = TokenIndex {
            by_digest: HashMap::with_capacity(doc.lines.len()),
            records: 0,
        };
        let mut problems = Vec::new();
        // Records usually share a handful of scope sets; share them instead of copying.
        let mut interned: HashMap<ScopeSet, Arc<ScopeSet>> = HashMap::new();
        for (line, entry) in doc.entries() {
            match entry {
                Entry::Record(record) => {
                    index.records += 1;
                    let digest = record.digest();
                    match index.by_digest.entry(digest) {
                        MapEntry::Occupied(first) => problems.push(LoadProblem::Duplicate {
                            line,
                            first: first.get().line,
                            id: digest.id(),
                        }),
                        MapEntry::Vacant(slot) => {
                            let scopes = interned
                                .entry(record.scopes.clone())
                                .or_insert_with(|| Arc::new(record.scopes.clone()))
                                .clone();
                            slot.insert(Grant {
                                scopes,
                                ..Grant::from_record(&record, line)
                            });
                        }
                    }
                }
                Entry::Invalid(why) => problems.push(LoadProblem::Invalid { line, why }),
                Entry::Blank | Entry::Comment => {}
            }
        }
        (index, problems)
    }

    pub fn get(&self, token: &Secret) -> Option<&Grant> {
        self.by_digest.get(&token.digest())
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Every token's digest with the record that counts for it (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&Digest, &Grant)> + '_ {
        self.by_digest.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn check(&self, token: &Secret, required: &RequiredScopes, now: Timestamp) -> Decision {
        decide(!token.is_empty(), self.get(token), required, now)
    }
}

/// Equality that does not stop at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds the first valid record of `token` in the raw file bytes in one pass.
pub fn find_record(bytes: &[u8], token: &Secret) -> Option<Grant> {
    if token.is_empty() {
        return None;
    }
    let digest_hex = token.digest().to_hex();
    let body = bytes.strip_prefix(format::BOM).unwrap_or(bytes);
    for (index, raw_line) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        let credential = match line.iter().position(|&b| b == b'\t') {
            Some(tab) => &line[..tab],
            None => line,
        };
        let candidate = match credential.strip_prefix(HASH_PREFIX) {
            Some(hex) => constant_time_eq(hex, digest_hex.as_bytes()),
            None => constant_time_eq(credential, token.expose()),
        };
        if candidate && let Entry::Record(record) = format::parse_line(line) {
            return Some(Grant::from_record(&record, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::when::parse_timestamp;
    use proptest::prelude::*;

    fn req(s: &str) -> RequiredScopes {
        RequiredScopes::parse(&[s]).unwrap()
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    fn now() -> Timestamp {
        parse_timestamp(b"2026-06-01T00:00:00Z").unwrap()
    }

    fn both(file: &str, token: &str, scope: &str) -> Decision {
        let (index, _) = TokenIndex::load(file.as_bytes());
        let by_index = index.check(&secret(token), &req(scope), now());
        let found = find_record(file.as_bytes(), &secret(token));
        let by_scan = decide(!token.is_empty(), found.as_ref(), &req(scope), now());
        assert_eq!(by_index, by_scan, "index and scan disagree");
        by_index
    }

    #[test]
    fn outcomes() {
        let hashed = format!("sha256:{}\tread\tci", Digest::of(b"h").to_hex());
        let file = format!(
            "# c\nlegacy\nscoped\tread,kafka:*\tbob\nold\t*\t\t\t2026-05-01T00:00:00Z\n{hashed}\n"
        );
        assert!(matches!(
            both(&file, "legacy", "x"),
            Decision::Granted { .. }
        ));
        assert!(matches!(
            both(&file, "scoped", "kafka:a"),
            Decision::Granted { .. }
        ));
        assert!(matches!(
            both(&file, "scoped", "write"),
            Decision::Forbidden { .. }
        ));
        assert!(matches!(both(&file, "h", "read"), Decision::Granted { .. }));
        assert!(matches!(
            both(&file, "h", "write"),
            Decision::Forbidden { .. }
        ));
        assert_eq!(
            both(&file, "nope", "read"),
            Decision::Unauthorized(Unauthorized::Unknown)
        );
        assert!(matches!(
            both(&file, "old", "read"),
            Decision::Unauthorized(Unauthorized::Expired(_))
        ));
        assert_eq!(
            both(&file, "", "read"),
            Decision::Unauthorized(Unauthorized::NoToken)
        );
    }

    #[test]
    fn stored_digest_string_is_not_a_token() {
        let stored = format!("sha256:{}", Digest::of(b"h").to_hex());
        let file = format!("{stored}\t*\n");
        assert_eq!(
            both(&file, &stored, "read"),
            Decision::Unauthorized(Unauthorized::Unknown)
        );
    }

    #[test]
    fn first_record_counts_and_invalid_lines_grant_nothing() {
        let file = "tok\tbad scope\ntok\tread\ntok\t*\n";
        assert!(matches!(
            both(file, "tok", "write"),
            Decision::Forbidden { .. }
        ));
        let (_, problems) = TokenIndex::load(file.as_bytes());
        assert!(matches!(problems[0], LoadProblem::Invalid { line: 1, .. }));
        assert!(matches!(
            problems[1],
            LoadProblem::Duplicate {
                line: 3,
                first: 2,
                ..
            }
        ));
        assert!(matches!(
            both("tok\t\n", "tok", "x"),
            Decision::Unauthorized(_)
        ));
    }

    #[test]
    fn crlf_and_bom_files_work() {
        let file = "\u{feff}tok\tread\r\nother\r\n";
        assert!(matches!(
            both(file, "tok", "read"),
            Decision::Granted { .. }
        ));
        assert!(matches!(
            both(file, "other", "read"),
            Decision::Granted { .. }
        ));
    }

    proptest! {
        #[test]
        fn scan_agrees_with_index(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("a".to_string()), Just("b\tread".to_string()), Just("a\twrite".to_string()),
                    Just("b\t".to_string()), Just("#a".to_string()), Just("a\tread\tn\tx".to_string()),
                    Just(format!("sha256:{}\tread", Digest::of(b"a").to_hex())),
                    Just("c\t*\t\t\t2020-01-01T00:00:00Z".to_string()),
                ], 0..8),
            token in prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")],
            scope in prop_oneof![Just("read"), Just("write")],
        ) {
            let file = lines.join("\n");
            both(&file, token, scope);
        }
    }
}
