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
