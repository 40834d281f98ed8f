//! The check decision (docs/format.md: scopes, expiry, first record counts), shared by
//! `tokenfile check` and `serve`: given the record that counts for a presented token (found
//! by [`crate::scan`] or [`crate::index`]), granted, forbidden or unauthorized, and why.

use crate::format::Record;
use crate::scope::{RequiredScopes, ScopeSet};
use crate::token::Id;
use crate::when::Timestamp;

/// What a record grants: all a check needs of it, borrowed from a [`TokenIndex`](crate::index::TokenIndex) or a
/// [`Grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRef<'a> {
    /// The record's ID (of its token's digest).
    pub id: Id,
    /// The record's name, empty if it has none (invalid UTF-8 replaced).
    pub name: &'a str,
    /// What the record grants.
    pub scopes: &'a ScopeSet,
    /// When the record stops granting, if ever.
    pub expires: Option<Timestamp>,
    /// 1-based line number in the file it was loaded from.
    pub line: usize,
}

impl GrantRef<'_> {
    /// The same grant, owning its parts.
    pub fn to_grant(&self) -> Grant {
        Grant {
            id: self.id,
            name: self.name.to_owned(),
            scopes: self.scopes.clone(),
            expires: self.expires,
            line: self.line,
        }
    }
}

/// A [`GrantRef`] that owns its parts: what the one-shot scan finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// As in [`GrantRef::id`].
    pub id: Id,
    /// As in [`GrantRef::name`].
    pub name: String,
    /// As in [`GrantRef::scopes`].
    pub scopes: ScopeSet,
    /// As in [`GrantRef::expires`].
    pub expires: Option<Timestamp>,
    /// 1-based line number in the file it was loaded from.
    pub line: usize,
}

impl Grant {
    /// What `record`, found at 1-based `line`, grants.
    pub fn from_record(record: &Record, line: usize) -> Self {
        Grant {
            id: record.id(),
            name: record.name_lossy(),
            scopes: record.scopes.clone(),
            expires: record.expires,
            line,
        }
    }

    /// The grant, borrowed, as [`decide`] takes it.
    pub fn view(&self) -> GrantRef<'_> {
        GrantRef {
            id: self.id,
            name: &self.name,
            scopes: &self.scopes,
            expires: self.expires,
            line: self.line,
        }
    }
}

/// The answer to a check; a granted or forbidden one borrows the record's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Exit 0, HTTP 204.
    Granted {
        /// The record that granted it.
        id: Id,
        /// Its name (shown to the proxy as `X-Token-Name`).
        name: &'a str,
    },
    /// Exit 1, HTTP 403: a valid token without (all) the required scopes.
    Forbidden {
        /// The record that lacks a scope.
        id: Id,
        /// Its name.
        name: &'a str,
    },
    /// Exit 3, HTTP 401.
    Unauthorized(Unauthorized),
}

/// Why a check is unauthorized (exit 3, HTTP 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No token was presented (empty stdin, variable or header).
    NoToken,
    /// No valid record has the token.
    Unknown,
    /// The record that has it has expired.
    Expired(Id),
}

impl Unauthorized {
    /// The documented word for scripts (`check --json`'s `reason`).
    pub fn reason(self) -> &'static str {
        match self {
            Unauthorized::NoToken => "no token",
            Unauthorized::Unknown => "unknown token",
            Unauthorized::Expired(_) => "expired token",
        }
    }
}

/// Decides a check once the token's record (if any) is known.
pub fn decide<'a>(
    token_present: bool,
    grant: Option<GrantRef<'a>>,
    required: &RequiredScopes,
    now: Timestamp,
) -> Decision<'a> {
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
            name: grant.name,
        }
    } else {
        Decision::Forbidden {
            id: grant.id,
            name: grant.name,
        }
    }
}

/// `check --json`'s `hint` for an unknown token that looks damaged: a minted token whose
/// checksum does not match.
pub const DAMAGED_HINT: &str = "mistyped or truncated: its checksum does not match";
/// `check --json`'s `hint` for an unknown token with whitespace around it.
pub const WHITESPACE_HINT: &str =
    "it begins or ends with whitespace (pasted with a space or TAB?); tokens have none";

/// Why an unknown token may be unknown, from its shape alone (never its value): whitespace
/// pasted around it, or a minted token cut short or mistyped.
pub fn unknown_hint(token: &[u8]) -> Option<&'static str> {
    if token.first().is_some_and(u8::is_ascii_whitespace)
        || token.last().is_some_and(u8::is_ascii_whitespace)
    {
        // Checked first: a whole token with a space pasted after it is no damaged token.
        Some(WHITESPACE_HINT)
    } else if crate::token::shape(token) == crate::token::Shape::DamagedMinted {
        Some(DAMAGED_HINT)
    } else {
        None
    }
}

/// Why a check came out as it did (`check --explain`, and what `serve` may log for a denial):
/// the record that counted, which of its scopes granted each required scope, and for a
/// refusal the reason. It names records by ID, line and name — never the token, nor its
/// digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// `granted`, `forbidden` or `unauthorized`, as `check --json`'s `result`.
    pub result: &'static str,
    /// For a refusal, the documented word (`missing scope`, `unknown token`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The record that counts for the token, if any has it.
    pub matched: Option<Matched>,
    /// Each required scope and the granted scope that covered it (`null`: none did). Empty
    /// when no record counted.
    pub scopes: Vec<ScopeCover>,
    /// When the matched record expired, if it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
    /// Later lines with the same token: duplicates that grant nothing, shadowed by the
    /// matched line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<Shadowed>,
    /// For an unknown token: what its shape suggests ([`unknown_hint`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
}

/// The record that counted for a presented token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Matched {
    /// Its ID.
    pub id: String,
    /// Its 1-based line.
    pub line: usize,
    /// Its name (may be empty).
    pub name: String,
    /// What it grants, as the field lists it.
    pub granted: Vec<String>,
}

/// One required scope and what covered it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScopeCover {
    /// The required scope.
    pub required: String,
    /// The first granted scope of the record that covers it (`*`, `kafka:*`, or the scope
    /// itself); `None` when none does.
    pub granted_by: Option<String>,
}

/// A later line with the presented token, which grants nothing because an earlier one has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shadowed {
    /// The duplicate's 1-based line.
    pub line: usize,
    /// The line that counts instead.
    pub duplicate_of_line: usize,
    /// What the duplicate would have granted, had it counted (it may differ: a hand edit
    /// that appended a "fixed" copy of a line is the usual cause).
    pub granted: Vec<String>,
    /// When the duplicate expires, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Explains a check of `token` against `matches` — every valid record that has the token, in
/// the order of the file (the first counts; the rest are duplicates). It decides as
/// [`decide`] does with the first match, so explanation and decision never disagree.
pub fn explain(
    token: &[u8],
    matches: &[Grant],
    required: &RequiredScopes,
    now: Timestamp,
) -> Explanation {
    let first = matches.first();
    let decision = decide(!token.is_empty(), first.map(Grant::view), required, now);
    let (result, reason) = match decision {
        Decision::Granted { .. } => ("granted", None),
        Decision::Forbidden { .. } => ("forbidden", Some("missing scope")),
        Decision::Unauthorized(why) => ("unauthorized", Some(why.reason())),
    };
    let granted_list = |scopes: &ScopeSet| scopes.items().iter().map(ToString::to_string).collect();
    let scopes = match first {
        Some(grant) => required
            .iter()
            .map(|req| ScopeCover {
                required: req.to_owned(),
                granted_by: grant
                    .scopes
                    .items()
                    .iter()
                    .find(|g| g.grants(req))
                    .map(ToString::to_string),
            })
            .collect(),
        None => Vec::new(),
    };
    let hint = match decision {
        Decision::Unauthorized(Unauthorized::Unknown) => unknown_hint(token),
        _ => None,
    };
    Explanation {
        result,
        reason,
        matched: first.map(|g| Matched {
            id: g.id.to_string(),
            line: g.line,
            name: g.name.clone(),
            granted: granted_list(&g.scopes),
        }),
        scopes,
        expired_at: first
            .and_then(|g| g.expires)
            .filter(|e| *e <= now)
            .map(crate::when::format_timestamp),
        shadowed: match first {
            Some(first) => matches[1..]
                .iter()
                .map(|g| Shadowed {
                    line: g.line,
                    duplicate_of_line: first.line,
                    granted: granted_list(&g.scopes),
                    expires: g.expires.map(crate::when::format_timestamp),
                })
                .collect(),
            None => Vec::new(),
        },
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Secret;
    use crate::when::parse_timestamp;

    fn grant(token: &str, scopes: &str, line: usize, expires: Option<&str>) -> Grant {
        Grant {
            id: Secret::new(token.as_bytes().to_vec()).digest().id(),
            name: "ci".into(),
            scopes: ScopeSet::parse(scopes.as_bytes()).unwrap(),
            expires: expires.map(|e| parse_timestamp(e.as_bytes()).unwrap()),
            line,
        }
    }

    fn now() -> Timestamp {
        parse_timestamp(b"2026-06-01T00:00:00Z").unwrap()
    }

    #[test]
    fn each_required_scope_names_what_covered_it() {
        let required = RequiredScopes::parse(&["kafka:read", "deploy"]).unwrap();
        let matches = [grant("t", "read,kafka:*", 3, None)];
        let e = explain(b"t", &matches, &required, now());
        assert_eq!((e.result, e.reason), ("forbidden", Some("missing scope")));
        assert_eq!(e.scopes[0].granted_by.as_deref(), Some("kafka:*"));
        assert_eq!(e.scopes[1].granted_by, None);
        assert_eq!(e.matched.unwrap().line, 3);
    }

    #[test]
    fn expired_and_shadowed() {
        let required = RequiredScopes::parse(&["read"]).unwrap();
        let matches = [
            grant("t", "read", 2, Some("2026-01-01T00:00:00Z")),
            grant("t", "read,write", 9, None),
        ];
        let e = explain(b"t", &matches, &required, now());
        assert_eq!(e.reason, Some("expired token"));
        assert_eq!(e.expired_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(e.shadowed.len(), 1);
        assert_eq!(
            (e.shadowed[0].line, e.shadowed[0].duplicate_of_line),
            (9, 2)
        );
    }

    #[test]
    fn unknown_with_hints_and_never_the_token() {
        let required = RequiredScopes::parse(&["read"]).unwrap();
        let e = explain(b"secret-value ", &[], &required, now());
        assert_eq!(e.reason, Some("unknown token"));
        assert_eq!(e.hint, Some(WHITESPACE_HINT));
        assert!(e.matched.is_none() && e.scopes.is_empty());
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("secret-value"), "{json}");
        assert_eq!(explain(b"", &[], &required, now()).reason, Some("no token"));
    }
}
