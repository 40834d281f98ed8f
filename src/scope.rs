//! Scopes (docs/format.md): the grammar, what a record's scopes grant, and the scopes a
//! check requires.

use std::fmt;

use crate::token::TokenError;

/// `[A-Za-z0-9_.:*-]+`
fn is_scope_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'*' | b'-')
}

fn is_scope_word(item: &[u8]) -> bool {
    !item.is_empty() && item.iter().copied().all(is_scope_char)
}

/// Spaces around items are tolerated (docs/format.md); TAB cannot occur inside a field.
fn trim_spaces(mut item: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = item {
        item = rest;
    }
    while let [rest @ .., b' '] = item {
        item = rest;
    }
    item
}

/// One scope a record holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Granted {
    /// `*`: every scope.
    All,
    /// `kafka:*` is stored as `kafka:` and grants every scope starting with it.
    Prefix(Box<str>),
    /// Anything else matches exactly, case-sensitively.
    Exact(Box<str>),
}

impl Granted {
    /// Whether this item grants the one required scope `required`.
    pub fn grants(&self, required: &str) -> bool {
        match self {
            Granted::All => true,
            // `kafka:*` grants `kafka:` too (docs/format.md): the prefix is all it asks for.
            Granted::Prefix(prefix) => required.starts_with(&**prefix),
            Granted::Exact(scope) => **scope == *required,
        }
    }

    /// A scope with a `*` anywhere but `*` alone or a final `:*` after a star-free prefix
    /// (`ka*ka`, `kafka*`, `*:*`, `a*:*`) is valid by the grammar but can never match a
    /// required scope (those contain no `*`): `lint` reports one in the file, and `mint`
    /// refuses to write one.
    pub fn is_dead(&self) -> bool {
        match self {
            Granted::All => false,
            Granted::Prefix(s) | Granted::Exact(s) => s.contains('*'),
        }
    }
}

impl fmt::Display for Granted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granted::All => f.write_str("*"),
            Granted::Prefix(prefix) => write!(f, "{prefix}*"),
            Granted::Exact(scope) => f.write_str(scope),
        }
    }
}

/// The scopes field of a record: `*` or a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Granted>);

/// Why a scopes field is invalid. Never contains credential bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// The field holds nothing, or only spaces.
    Empty,
    /// An item of the list is empty, as in `read,` or `a,,b`.
    EmptyItem,
    /// An item holds a byte outside the grammar. The item itself is not echoed, in case a
    /// credential was pasted into the wrong column.
    BadCharacter {
        /// Which item, counting from 1.
        item: usize,
        /// The first byte of it outside the grammar.
        byte: u8,
    },
    /// `*` is listed beside other items; it must be the whole field.
    StarNotAlone,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Empty => f.write_str("the scopes field is empty"),
            ScopeError::EmptyItem => f.write_str("the scopes field has an empty item"),
            ScopeError::BadCharacter { item, byte } => {
                let shown = if byte.is_ascii_graphic() || *byte == b' ' {
                    format!("{:?}", char::from(*byte))
                } else {
                    format!("byte 0x{byte:02x}")
                };
                write!(
                    f,
                    "scope item {item} contains {shown}, outside [A-Za-z0-9_.:*-]"
                )
            }
            ScopeError::StarNotAlone => f.write_str("`*` must stand alone in the scopes field"),
        }
    }
}

impl std::error::Error for ScopeError {}

impl ScopeSet {
    /// `*`, every scope: also what a legacy line without a scopes field grants.
    pub fn all() -> Self {
        ScopeSet(vec![Granted::All])
    }

    /// Parses a scopes field as stored in the file.
    pub fn parse(field: &[u8]) -> std::result::Result<Self, ScopeError> {
        if trim_spaces(field).is_empty() {
            return Err(ScopeError::Empty);
        }
        let mut items = Vec::new();
        for (index, raw) in field.split(|&b| b == b',').enumerate() {
            let item = trim_spaces(raw);
            if item.is_empty() {
                return Err(ScopeError::EmptyItem);
            }
            if let Some(&byte) = item.iter().find(|&&b| !is_scope_char(b)) {
                return Err(ScopeError::BadCharacter {
                    item: index + 1,
                    byte,
                });
            }
            // The grammar admits only ASCII, so this cannot fail.
            let text = std::str::from_utf8(item).map_err(|_| ScopeError::EmptyItem)?;
            items.push(match text {
                "*" => Granted::All,
                _ if text.ends_with(":*") => Granted::Prefix(text[..text.len() - 1].into()),
                _ => Granted::Exact(text.into()),
            });
        }
        if items.len() > 1 && items.contains(&Granted::All) {
            return Err(ScopeError::StarNotAlone);
        }
        Ok(ScopeSet(items))
    }

    /// Parses scopes given on the command line (`--scope a --scope b,c`) for a new record.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Self, ScopeArgError> {
        let joined = args
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(",");
        if args.is_empty() {
            return Err(ScopeArgError::NoScope);
        }
        let set = ScopeSet::parse(joined.as_bytes()).map_err(ScopeArgError::Field)?;
        crate::token::refuse_token_in("--scope", &joined).map_err(ScopeArgError::Token)?;
        if let Some(dead) = set.0.iter().find(|item| item.is_dead()) {
            let text = dead.to_string();
            // The prefix form only where the one `*` is at the end (`kafka*`).
            let stem = text.trim_end_matches('*').trim_end_matches(':');
            let instead = if stem.trim_matches(['*', ':']).is_empty() {
                "`*` for every scope".to_string()
            } else if stem.contains('*') {
                "a scope without `*`".to_string()
            } else {
                format!("`{stem}:*` for every scope that starts with `{stem}:`")
            };
            return Err(ScopeArgError::DeadStar { text, instead });
        }
        Ok(set)
    }

    /// Whether every one of `required` is granted by some item; all or nothing. Nothing
    /// grants [`RequiredScopes::unsatisfiable`].
    pub fn grants(&self, required: &RequiredScopes) -> bool {
        !required.0.is_empty()
            && required
                .0
                .iter()
                .all(|req| self.0.iter().any(|g| g.grants(req)))
    }

    /// The items in the order the field lists them.
    pub fn items(&self) -> &[Granted] {
        &self.0
    }

    /// Canonical field form: items joined by `,` without spaces.
    pub fn to_field(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Why scopes given as arguments (`--scope`, a check's required scopes, `serve`'s requests)
/// were refused.
#[derive(Debug)]
pub enum ScopeArgError {
    /// `mint` without `--scope`.
    NoScope,
    /// A new record's scopes break the grammar.
    Field(ScopeError),
    /// A new record's scopes hold what looks like a token.
    Token(TokenError),
    /// A new record's scope has a `*` that would never match a check.
    DeadStar {
        /// That scope item, as it would be stored.
        text: String,
        /// What to give instead, worded to follow "Use".
        instead: String,
    },
    /// A required scope holds what looks like a token: never echoed.
    TokenAsRequired,
    /// A required scope, or an item of a list of them, is empty (a stray comma).
    EmptyRequired,
    /// A required scope item breaks the grammar. It is safe to quote: an argument that
    /// looks like a token was already refused as [`ScopeArgError::TokenAsRequired`].
    MalformedRequired(String),
    /// A required scope item contains `*`: a check asks for concrete scopes, never patterns.
    StarRequired(String),
    /// No required scope was given at all.
    NoRequired,
}

impl fmt::Display for ScopeArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeArgError::NoScope => f.write_str("at least one --scope is required"),
            ScopeArgError::Field(e) => write!(f, "--scope: {e}"),
            ScopeArgError::Token(e) => write!(f, "{e}"),
            ScopeArgError::DeadStar { text, instead } => write!(
                f,
                "--scope {text}: a `*` works only alone (`*`, every scope) or as a final `:*` \
                 after a prefix without `*` (`kafka:*`); `{text}` would never match a check. \
                 Use {instead}"
            ),
            ScopeArgError::TokenAsRequired => f.write_str(
                "a required scope holds what looks like a tokenfile token (not shown): \
                 present the token as the token (stdin, --token-env, the Authorization \
                 header), never where a scope goes",
            ),
            ScopeArgError::EmptyRequired => f.write_str(
                "empty required scope: an empty scope, or an empty item in a list \
                 (a stray comma, as in `read,`)",
            ),
            ScopeArgError::MalformedRequired(item) => {
                write!(f, "malformed required scope {item:?}: use [A-Za-z0-9_.:-]")
            }
            ScopeArgError::StarRequired(item) => write!(
                f,
                "required scope {item:?} contains `*`: a check asks for one concrete scope"
            ),
            ScopeArgError::NoRequired => f.write_str("no required scope given (use --scope)"),
        }
    }
}

impl std::error::Error for ScopeArgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScopeArgError::Field(e) => Some(e),
            ScopeArgError::Token(e) => Some(e),
            _ => None,
        }
    }
}

/// The scopes a check requires: at least one, each matching the grammar and without `*` —
/// or none at all, which is [`RequiredScopes::unsatisfiable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredScopes(Vec<Box<str>>);

impl RequiredScopes {
    /// Parses required scopes from several arguments, each possibly comma-separated.
    /// Anything empty or malformed is an error — never a grant (fail closed).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, ScopeArgError> {
        let mut scopes: Vec<Box<str>> = Vec::new();
        for arg in args {
            // A token is a valid scope word: without this, a check for it would echo it as
            // the scope it lacks (`check --json`'s `required`, a denial, serve's answers).
            if crate::token::redact(arg.as_ref()) != arg.as_ref() {
                return Err(ScopeArgError::TokenAsRequired);
            }
            for raw in arg.as_ref().split(',') {
                let item = raw.trim_matches(' ');
                if item.is_empty() {
                    return Err(ScopeArgError::EmptyRequired);
                }
                if !is_scope_word(item.as_bytes()) {
                    return Err(ScopeArgError::MalformedRequired(item.to_string()));
                }
                if item.contains('*') {
                    return Err(ScopeArgError::StarRequired(item.to_string()));
                }
                if !scopes.iter().any(|s| **s == *item) {
                    scopes.push(item.into());
                }
            }
        }
        if scopes.is_empty() {
            return Err(ScopeArgError::NoRequired);
        }
        Ok(RequiredScopes(scopes))
    }

    /// The required scopes in the order given, a repeated one once.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    /// A requirement no token meets, whatever it grants (even `*`): what a request needs
    /// when no rule of a rules file covers it (docs/routes.md). `parse` never makes one.
    pub fn unsatisfiable() -> Self {
        RequiredScopes(Vec::new())
    }

    /// Whether this is [`RequiredScopes::unsatisfiable`].
    pub fn is_unsatisfiable(&self) -> bool {
        self.0.is_empty()
    }

    /// Both requirements at once: every scope of each (an unsatisfiable one stays so).
    #[must_use]
    pub fn and(&self, other: &RequiredScopes) -> RequiredScopes {
        if self.is_unsatisfiable() || other.is_unsatisfiable() {
            return RequiredScopes::unsatisfiable();
        }
        let mut scopes = self.0.clone();
        for scope in &other.0 {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        RequiredScopes(scopes)
    }
}

impl fmt::Display for RequiredScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s.as_bytes()).unwrap()
    }

    fn req(s: &str) -> RequiredScopes {
        RequiredScopes::parse(&[s]).unwrap()
    }

    #[test]
    fn unsatisfiable_is_granted_by_nothing() {
        let none = RequiredScopes::unsatisfiable();
        assert!(!ScopeSet::all().grants(&none));
        assert!(!set("a,b:*").grants(&none));
        assert!(req("a").and(&none).is_unsatisfiable());
        assert!(none.and(&req("a")).is_unsatisfiable());
        let both = req("a,b").and(&req("b,c"));
        assert_eq!(both.to_string(), "a,b,c");
        assert!(set("a,b,c").grants(&both));
        assert!(!set("a,b").grants(&both));
    }

    #[test]
    fn star_grants_everything() {
        assert!(set("*").grants(&req("anything:at.all")));
    }

    #[test]
    fn prefix_wildcard_grants_what_starts_with_its_prefix() {
        let s = set("kafka:*");
        assert!(s.grants(&req("kafka:endpoint:read")));
        assert!(s.grants(&req("kafka:x")));
        assert!(!s.grants(&req("kafka")));
        assert!(!s.grants(&req("kafkaX:read")));
    }

    #[test]
    fn prefix_wildcard_grants_its_bare_prefix() {
        // docs/format.md: `kafka:*` grants `kafka:` (this module once asserted the opposite).
        assert!(set("kafka:*").grants(&req("kafka:")));
        assert!(set("a:b:*").grants(&req("a:b:")));
        assert!(!set("a:b:*").grants(&req("a:b")));
        assert!(set(":*").grants(&req(":")));
    }

    #[test]
    fn a_star_before_the_final_colon_star_is_dead() {
        for dead in ["*:*", "a*:*", "a:*b:*", "ka*ka", "kafka*", "**", "a:**"] {
            let s = set(dead);
            assert!(s.items()[0].is_dead(), "{dead}");
            for r in ["a:", "a:x", "kafka", "x", ":", "a*:x"] {
                if let Ok(r) = RequiredScopes::parse(&[r]) {
                    assert!(!s.grants(&r), "{dead} grants {r}");
                }
            }
        }
        for alive in ["*", "kafka:*", "a:b:*", ":*", "read"] {
            assert!(!set(alive).items()[0].is_dead(), "{alive}");
        }
    }

    #[test]
    fn exact_is_case_sensitive() {
        let s = set("read, write");
        assert!(s.grants(&req("read")));
        assert!(s.grants(&req("read,write")));
        assert!(!s.grants(&req("Read")));
        assert!(!s.grants(&req("read,admin")));
    }

    #[test]
    fn star_inside_a_scope_is_dead_not_a_wildcard() {
        let s = set("ka*ka");
        assert!(!s.grants(&req("kaXka")));
        assert!(s.items()[0].is_dead());
    }

    #[test]
    fn invalid_scope_fields() {
        for bad in [
            "", " ", "a,,b", "a,", "*,read", "read,*", "sp ace", "é", "a;b",
        ] {
            assert!(ScopeSet::parse(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn required_scopes_fail_closed() {
        for bad in ["", " ", "*", "kafka:*", "a,,b", "a b", "x\u{0}"] {
            let err = crate::error::Error::from(RequiredScopes::parse(&[bad]).unwrap_err());
            assert_eq!(err.exit(), crate::error::Exit::Usage, "{bad:?}");
        }
        assert!(RequiredScopes::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn a_token_is_never_a_required_scope_nor_echoed() {
        let token = crate::token::mint().unwrap();
        let token = std::str::from_utf8(token.expose()).unwrap().to_string();
        for arg in [
            token.clone(),
            format!("read,{token}"),
            format!("a:{token}"),
            format!("x{}", &token[..30]),
            format!("bad {token}"),
        ] {
            let err = crate::error::Error::from(RequiredScopes::parse(&[&arg]).unwrap_err());
            assert_eq!(err.exit(), crate::error::Exit::Usage, "{arg}");
            assert!(!err.to_string().contains(&token[..16]), "{err}");
        }
    }
}
