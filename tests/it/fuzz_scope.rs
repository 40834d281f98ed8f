//! Fuzz target 2: the scope matcher (docs/format.md (scopes)) against an independent model of the
//! rules, and the parsers of granted and required scopes (fail closed, never panic).
//!
//! `cargo test --release --test it -- fuzz_scope:: --nocapture` with `TOKENFILE_FUZZ_SECONDS=600`
//! for a long run (see RELIABILITY.md); CI runs `TOKENFILE_FUZZ_CASES` (default 4096) cases
//! per property.

use proptest::prelude::*;

use crate::support::fuzz::{Property, fuzz};
use tokenfile::decision::{Decision, Grant, Unauthorized, decide};
use tokenfile::error::Exit;
use tokenfile::scope::{RequiredScopes, ScopeSet};
use tokenfile::token::Digest;
use tokenfile::when::parse_timestamp;

/// The grammar of one scope: `[A-Za-z0-9_.:*-]+`.
fn scope_word(item: &str) -> bool {
    !item.is_empty()
        && item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:*-".contains(&b))
}

/// The model of a scopes field: `Some(items)` if valid (docs/format.md), trimmed of spaces.
fn model_field(field: &str) -> Option<Vec<String>> {
    if field.trim_matches(' ').is_empty() {
        return None;
    }
    let items: Vec<String> = field
        .split(',')
        .map(|i| i.trim_matches(' ').to_string())
        .collect();
    if !items.iter().all(|i| scope_word(i)) {
        return None;
    }
    if items.len() > 1 && items.iter().any(|i| i == "*") {
        return None;
    }
    Some(items)
}

/// The model of matching: `*` grants all; `p:*` grants what starts with `p:` (`p:` itself
/// too, docs/format.md); anything else matches exactly, case-sensitively.
fn model_grants(item: &str, required: &str) -> bool {
    if item == "*" {
        return true;
    }
    if let Some(prefix) = item.strip_suffix('*')
        && prefix.ends_with(':')
    {
        return required.starts_with(prefix);
    }
    item == required
}

/// The model of required scopes: every comma item (spaces trimmed) is a scope word without
/// `*`; at least one.
fn model_required(args: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for arg in args {
        for item in arg.split(',') {
            let item = item.trim_matches(' ');
            if !scope_word(item) || item.contains('*') {
                return None;
            }
            out.push(item.to_string());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Granted scopes from a small vocabulary, so that prefixes, near misses and case
/// differences meet often; and anything else sometimes.
const GRANTED: &[&str] = &[
    "a", "a:", "a:b", "a:b:c", "a:*", "a:b:*", "*", "b", "A", "A:b", "A:*", "a*", "ab", ":", ":*",
    "a:b*", "*:*", "a*b", "kafka:*", "kafka",
];
const REQUIRED: &[&str] = &[
    "a", "a:", "a:b", "a:b:c", "ab", "A", "A:b", "a:B", "b", ":", "a:bc", "a::", "kafka:x", "kafka",
];

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(GRANTED).prop_map(str::to_string),
        2 => "(a|b|kafka|Kafka|x\\.y|_|-)(:(a|b|read|\\*|))?(:(a|\\*))?",
        1 => "[ -~]{0,4}",
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::collection::vec((item(), "[ ]{0,1}", "[ ]{0,1}"), 1..4).prop_map(|items| {
            items
                .into_iter()
                .map(|(i, before, after)| format!("{before}{i}{after}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        1 => "[ -~]{0,12}",
        1 => proptest::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn required() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::sample::select(REQUIRED).prop_map(str::to_string),
            2 => item(),
            1 => "(a|b|kafka)(,(a|b|kafka:read)){0,2}",
            1 => Just(String::new()),
            1 => Just(" ".to_string()),
        ],
        0..3,
    )
}

#[test]
fn fuzz_scope_matcher() {
    let _alone = crate::support::serial();
    fuzz(
        "scopes",
        4096,
        vec![
            Property::new(
                "a scopes field parses as the grammar says, and back",
                field(),
                |field| {
                    let parsed = ScopeSet::parse(field.as_bytes());
                    let model = model_field(&field);
                    prop_assert_eq!(parsed.is_ok(), model.is_some(), "{:?}", field);
                    if let Ok(set) = parsed {
                        let canonical = set.to_field();
                        prop_assert!(!canonical.contains(' '));
                        prop_assert_eq!(ScopeSet::parse(canonical.as_bytes()).ok(), Some(set));
                    }
                    Ok(())
                },
            ),
            Property::new(
                "what a scopes field grants is what the rules say",
                (field(), required()),
                |(field, required)| {
                    let (Ok(set), Ok(req)) = (
                        ScopeSet::parse(field.as_bytes()),
                        RequiredScopes::parse(&required),
                    ) else {
                        return Ok(());
                    };
                    let items = model_field(&field).expect("the model accepts what parses");
                    let wanted = model_required(&required).expect("and what is required");
                    let model = wanted
                        .iter()
                        .all(|r| items.iter().any(|i| model_grants(i, r)));
                    prop_assert_eq!(set.grants(&req), model, "{:?} for {:?}", field, required);
                    Ok(())
                },
            ),
            Property::new("required scopes fail closed", required(), |required| {
                let parsed = RequiredScopes::parse(&required);
                prop_assert_eq!(parsed.is_ok(), model_required(&required).is_some());
                if let Err(e) = parsed {
                    prop_assert_eq!(tokenfile::error::Error::from(e).exit(), Exit::Usage);
                }
                Ok(())
            }),
            Property::new(
                "an expired or unknown token is never granted",
                (field(), required(), 0i64..4_000_000_000, any::<bool>()),
                |(field, required, expires, known)| {
                    let (Ok(set), Ok(req)) = (
                        ScopeSet::parse(field.as_bytes()),
                        RequiredScopes::parse(&required),
                    ) else {
                        return Ok(());
                    };
                    let now = parse_timestamp(b"2026-06-01T00:00:00Z").unwrap();
                    let expires = time::OffsetDateTime::from_unix_timestamp(expires).ok();
                    let grant = Grant {
                        id: Digest::of(b"t").id(),
                        name: "n".into(),
                        scopes: set.clone(),
                        expires,
                        line: 1,
                    };
                    let decision = decide(true, known.then_some(grant.view()), &req, now);
                    let expected = if !known {
                        Decision::Unauthorized(Unauthorized::Unknown)
                    } else if expires.is_some_and(|e| e <= now) {
                        Decision::Unauthorized(Unauthorized::Expired(grant.id))
                    } else if set.grants(&req) {
                        Decision::Granted {
                            id: grant.id,
                            name: &grant.name,
                        }
                    } else {
                        Decision::Forbidden {
                            id: grant.id,
                            name: &grant.name,
                        }
                    };
                    prop_assert_eq!(decision, expected);
                    let nobody = decide(false, Some(grant.view()), &req, now);
                    prop_assert_eq!(nobody, Decision::Unauthorized(Unauthorized::NoToken));
                    Ok(())
                },
            ),
        ],
    );
}
