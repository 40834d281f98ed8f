//! Scopes from the request (docs/routes.md): a rules file maps the method and path of the
//! request a proxy protects to the scopes it needs, so that one auth endpoint can guard a
//! whole API (`serve --routes FILE`, `check --routes FILE --method M --path P`,
//! `routes check FILE`).
//!
//! ```text
//! # METHODS          PATH GLOB       SCOPES
//! GET                /api/**         app:read
//! POST,PUT,DELETE    /api/**         app:write
//! *                  /admin/**       admin
//! ```
//!
//! One rule a line, three fields separated by spaces or TABs; `#` starts a comment line. The
//! first rule whose methods and glob match wins; a request no rule matches needs something no
//! token has (fail closed: 403). `*` in a glob matches within one segment, `**` (a segment of
//! its own) any number of segments, none included: `/api/**` matches `/api`, `/api/` and
//! everything below. A rule for `GET` also covers `HEAD`, which is a `GET` without the body.
//!
//! A path is matched only once [normalized](normalize_path): the query cut off,
//! percent-decoded, `.`/`..` segments resolved and duplicate slashes dropped — the form the
//! application will act on. What cannot be normalized without guessing how the application
//! reads it (an encoded slash, a backslash, a `;` path parameter, a control character, `..`
//! above the root, a bad escape) is refused (HTTP 400, exit 2), never matched as best it can.

use std::fmt;
use std::fs::Metadata;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::scope::{RequiredScopes, ScopeArgError};
use crate::trust::{self, Refusal};

/// Largest rules file read; a rules file is written by hand.
pub const MAX_RULES_FILE: u64 = 1 << 20;

/// How many rules [`Rules::unreachable`] compares (with every earlier one).
pub const UNREACHABLE_CHECKED: usize = 5000;

/// A parsed rules file, rules in file order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// One rule: which requests it covers and what they need.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based line in the rules file.
    pub line: usize,
    methods: Methods,
    glob: Glob,
    scopes: RequiredScopes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Methods {
    Any,
    Listed(Vec<Box<str>>),
}

/// A path glob, as segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    text: Box<str>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, none included.
    Any,
    /// Bytes, where `*` matches any run within the segment.
    Pattern(Box<[u8]>),
}

/// A problem with one line of a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong and how to write it instead; never the line's text (it may hold a
    /// pasted secret).
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl Rules {
    /// Parses a rules file; every bad line is reported, and one bad line makes the whole
    /// file unusable (a rules file half applied would guard some routes and not others).
    pub fn parse(bytes: &[u8]) -> Result<Rules, Vec<RuleError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            match parse_line(raw, line) {
                Ok(Some(rule)) => rules.push(rule),
                Ok(None) => {}
                // Redacted once more on top of what each message leaves out: a message may
                // quote an item of the line, and the line may hold a pasted secret.
                Err(message) => errors.push(RuleError {
                    line,
                    message: crate::token::redact(&message).into_owned(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(Rules { rules })
        } else {
            Err(errors)
        }
    }

    /// The first rule for `method` and the normalized `path`, if any.
    pub fn find(&self, method: &str, path: &NormalizedPath) -> Option<&Rule> {
        let segments = path.segments();
        self.rules
            .iter()
            .find(|rule| rule.methods.matches(method) && rule.glob.matches(&segments))
    }

    /// The rules, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules that can never match because an earlier one matches every request they do
    /// (same or wider methods, a glob that covers theirs): `(shadowed, by)` lines. Each rule
    /// is compared with every earlier one, so only the first [`UNREACHABLE_CHECKED`] rules
    /// are looked at.
    pub fn unreachable(&self) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (i, later) in self.rules.iter().enumerate().take(UNREACHABLE_CHECKED) {
            if let Some(earlier) = self.rules[..i].iter().find(|earlier| earlier.covers(later)) {
                found.push((later.line, earlier.line));
            }
        }
        found
    }
}

impl Rule {
    /// The scopes a request this rule matches needs.
    pub fn scopes(&self) -> &RequiredScopes {
        &self.scopes
    }

    /// The methods as written (`*` or a comma-separated list).
    pub fn methods(&self) -> String {
        match &self.methods {
            Methods::Any => "*".to_owned(),
            Methods::Listed(list) => list.join(","),
        }
    }

    /// The path glob as written.
    pub fn glob(&self) -> &str {
        &self.glob.text
    }

    fn covers(&self, later: &Rule) -> bool {
        let methods = match (&self.methods, &later.methods) {
            (Methods::Any, _) => true,
            (Methods::Listed(_), Methods::Any) => false,
            (Methods::Listed(mine), Methods::Listed(theirs)) => {
                theirs.iter().all(|m| mine.contains(m))
            }
        };
        methods && self.glob.covers(&later.glob)
    }
}

impl Methods {
    fn matches(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::Listed(list) => list
                .iter()
                .any(|m| **m == *method || (method == "HEAD" && &**m == "GET")),
        }
    }
}

fn parse_line(raw: &[u8], line: usize) -> Result<Option<Rule>, String> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err("not UTF-8".into());
    };
    let fields: Vec<&str> = text.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
    match fields.as_slice() {
        [] => Ok(None),
        [first, ..] if first.starts_with('#') => Ok(None),
        [methods, glob, scopes] => Ok(Some(Rule {
            line,
            methods: parse_methods(methods)?,
            glob: parse_glob(glob)?,
            scopes: parse_scopes(scopes)?,
        })),
        [_] | [_, _] => {
            Err("expected three fields, METHODS PATH SCOPES, e.g. `GET /api/** app:read`".into())
        }
        _ => Err(
            "more than three fields: scopes are separated by commas without spaces \
                  (`app:read,app:write`), and a comment goes on a line of its own"
                .into(),
        ),
    }
}

fn parse_methods(field: &str) -> Result<Methods, String> {
    if field == "*" {
        return Ok(Methods::Any);
    }
    let mut list: Vec<Box<str>> = Vec::new();
    for method in field.split(',') {
        if method.is_empty() {
            return Err("an empty method: write methods as `GET,POST`, or `*` for any".into());
        }
        if method == "*" {
            return Err("`*` stands for every method and must stand alone".into());
        }
        // A field is echoed only when it is a method everyone knows: anything else may be a
        // secret pasted into the wrong place (the message reaches logs and /healthz).
        let known = STANDARD_METHODS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(method));
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(match known {
                Some(upper) => format!(
                    "methods are case-sensitive and upper case: `{upper}`, not `{}`",
                    upper.to_ascii_lowercase()
                ),
                None => "methods are case-sensitive and upper case (`GET`, not `get`); this \
                         field is not a method"
                    .into(),
            });
        }
        if !is_method(method) {
            return Err(
                "the methods field holds something that is not an HTTP method (write \
                        `GET,POST`, or `*` for any)"
                    .into(),
            );
        }
        if !list.iter().any(|m| **m == *method) {
            list.push(method.into());
        }
    }
    Ok(Methods::Listed(list))
}

fn parse_glob(field: &str) -> Result<Glob, String> {
    let Some(rest) = field.strip_prefix('/') else {
        return Err("a path glob starts with `/`, e.g. `/api/**`".into());
    };
    if field.contains(['?', '#']) {
        return Err("a path glob matches the path alone: no `?query` or `#fragment`".into());
    }
    if field.contains('%') {
        return Err(
            "write the path decoded, as it is matched (`/a b`, not `/a%20b`); `*` matches a `%`"
                .into(),
        );
    }
    if field.contains('\\') || field.bytes().any(|b| b.is_ascii_control()) {
        return Err("a backslash or a control character never matches a path".into());
    }
    let mut segments = Vec::new();
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "" if !last => {
                return Err(
                    "`//` never matches: paths are matched with duplicate slashes \
                            removed"
                        .into(),
                );
            }
            "." | ".." => {
                return Err(
                    "`.` and `..` never match: paths are matched with them resolved".into(),
                );
            }
            "**" => segments.push(Segment::Any),
            _ if part.contains("**") => {
                return Err(
                    "`**` matches whole segments and stands alone between slashes, as in \
                     `/api/**` or `/api/**/edit`"
                        .into(),
                );
            }
            _ => segments.push(Segment::Pattern(part.as_bytes().into())),
        }
    }
    Ok(Glob {
        text: field.into(),
        segments,
    })
}

fn parse_scopes(field: &str) -> Result<RequiredScopes, String> {
    RequiredScopes::parse(&[field]).map_err(|e| match e {
        // The message of a pasted token must not repeat it.
        ScopeArgError::TokenAsRequired => {
            "the scopes field holds what looks like a token; a rules file names scopes".into()
        }
        other => format!("scopes: {other}"),
    })
}

/// A rules file as read.
pub(crate) struct RulesFile {
    pub(crate) rules: Rules,
    /// `fstat` of what was read, for `serve` to tell a later change.
    pub(crate) meta: Metadata,
    /// Whether the last line has its line ending (an empty file counts as ended): one that
    /// has none may still be being written.
    pub(crate) ended: bool,
}

/// Judges the rules file's path as [`read_file`] does, without reading it.
pub(crate) fn judge_file(path: &Path) -> Result<()> {
    open_trusted(path).map(drop)
}

/// Reads and parses the rules file at `path`, which must be as trustworthy as a token file
/// (docs/trust.md): whoever can change it decides what every route needs.
pub(crate) fn read_file(path: &Path) -> Result<RulesFile> {
    let trusted = open_trusted(path)?;
    let mut bytes = Vec::new();
    (&trusted.file)
        .take(MAX_RULES_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read the rules file", path, e))?;
    if bytes.len() as u64 > MAX_RULES_FILE {
        return Err(Error::Problems(format!(
            "the rules file {} is larger than {} KiB: a rules file is written by hand",
            path.display(),
            MAX_RULES_FILE / 1024
        )));
    }
    let rules = Rules::parse(&bytes).map_err(|errors| Error::Rules {
        path: path.to_path_buf(),
        errors,
    })?;
    Ok(RulesFile {
        rules,
        meta: trusted.meta,
        ended: bytes.last().is_none_or(|&b| b == b'\n'),
    })
}

/// Opens the rules file if it may be trusted, with messages about a rules file: the trust
/// walk's own speak of the token file and its tokens.
fn open_trusted(path: &Path) -> Result<trust::Trusted> {
    trust::open(path).map_err(|refusal| match refusal {
        Refusal::Missing => Error::io(
            "read the rules file",
            path,
            std::io::Error::from_raw_os_error(nix::libc::ENOENT),
        ),
        Refusal::Unsafe(why) => Error::Unsafe(format!(
            "refusing to use the rules file (whoever can change it decides what every route \
             needs): {}",
            why.to_string()
                .replace("can add a token", "can change the rules")
                .replace(
                    "--file / $TOKENFILE must name the token file itself",
                    "--routes must name the rules file itself"
                )
                .replace("--file must name a file", "--routes must name a file")
        )),
        other => other.into_error(path),
    })
}

/// Whether `text` can be an HTTP method: a token (RFC 9110: one or more `tchar`).
pub fn is_method(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The methods of RFC 9110 and PATCH: the only method names a message or a log repeats.
pub const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

impl Glob {
    /// Whether every path `later` matches, this matches too — as far as can be told simply:
    /// the same glob; or segment by segment, each of ours covering theirs (`*` covers any
    /// segment, a glob covers a literal it matches), ending in `**` (`/api/**` covers
    /// `/api/items` and `/api/admin/**`) or as long as theirs (`/api/*` covers `/api/x`).
    fn covers(&self, later: &Glob) -> bool {
        if self == later {
            return true;
        }
        let covers_segment = |mine: &Segment, theirs: &Segment| match (mine, theirs) {
            (Segment::Pattern(mine), _) if **mine == *b"*" => *theirs != Segment::Any,
            (Segment::Pattern(mine), Segment::Pattern(theirs)) if !theirs.contains(&b'*') => {
                segment_matches(mine, theirs)
            }
            _ => false,
        };
        let pairwise = |mine: &[Segment], theirs: &[Segment]| {
            mine.iter()
                .zip(theirs)
                .all(|(mine, theirs)| covers_segment(mine, theirs))
        };
        match self.segments.split_last() {
            Some((Segment::Any, prefix)) => {
                later.segments.len() >= prefix.len() && pairwise(prefix, &later.segments)
            }
            _ => {
                self.segments.len() == later.segments.len()
                    && pairwise(&self.segments, &later.segments)
            }
        }
    }

    /// Whether the path's segments match, `**` spanning any number of them.
    fn matches(&self, path: &[&[u8]]) -> bool {
        wildcard_match(
            &self.segments,
            path,
            |segment| *segment == Segment::Any,
            |segment, text| match segment {
                Segment::Pattern(glob) => segment_matches(glob, text),
                Segment::Any => false,
            },
        )
    }
}

/// Whether one segment matches a glob segment, `*` matching any run of bytes (none
/// included).
fn segment_matches(glob: &[u8], text: &[u8]) -> bool {
    wildcard_match(glob, text, |&b| b == b'*', |&g, &t| g == t)
}

/// The usual wildcard walk, for segments of a path (`**`) and bytes of a segment (`*`):
/// whether `text` matches `pattern`, where an item that `is_star` matches any run of items
/// (none included) and any other item one that `matches_one`. It backtracks only to the last
/// star: linear in practice, never exponential.
fn wildcard_match<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    matches_one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(star) if is_star(star) => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(one) if matches_one(one, &text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, from)) => {
                    p = star + 1;
                    t = from + 1;
                    backtrack = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(is_star)
}

/// A request path in the one form rules are matched against: absolute, decoded, without
/// dot segments or empty segments (a trailing slash is kept: the application may tell
/// `/a/` from `/a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(Vec<u8>);

impl NormalizedPath {
    /// The path's bytes, e.g. `/api/v1/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The segments after the leading `/` (`/` alone is one empty segment).
    fn segments(&self) -> Vec<&[u8]> {
        self.0[1..].split(|&b| b == b'/').collect()
    }
}

/// Why a request path cannot be normalized (the HTTP 400 body, `check`'s usage error).
/// None of them repeats the path: a client may have put a token in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` or a backslash: the application may or may not split there.
    Separator,
    /// A control character, raw or encoded (`%00`, `%0A`, …).
    Control,
    /// A `;`, raw or encoded: a path parameter (`/admin;x/`), which some servers (Tomcat,
    /// Spring) strip before routing and others keep.
    Parameter,
    /// More `..` than segments before them.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the original path does not start with /",
            PathError::BadEscape => "the original path has a malformed %-escape",
            PathError::Separator => {
                "the original path has an encoded slash (%2F), or a backslash, raw or encoded"
            }
            PathError::Control => "the original path has a control character",
            PathError::Parameter => {
                "the original path has a `;` (a path parameter, which some servers strip and \
                 others keep)"
            }
            PathError::AboveRoot => "the original path climbs above the root with ..",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalizes a request target (path, maybe `?query` and `#fragment`) for matching: see the
/// module documentation.
pub fn normalize_path(target: &[u8]) -> Result<NormalizedPath, PathError> {
    let end = memchr::memchr2(b'?', b'#', target).unwrap_or(target.len());
    let Some(path) = target[..end].strip_prefix(b"/") else {
        return Err(PathError::NotAbsolute);
    };
    // `/segment` after `/segment`, decoded straight into place (one allocation a request:
    // this runs on the check path); a decoded segment never holds a `/`, so the last `/`
    // starts the last segment, which `..` removes.
    let mut out = Vec::with_capacity(end + 1);
    let mut trailing_slash = false;
    let mut raw_segments = path.split(|&b| b == b'/').peekable();
    while let Some(raw) = raw_segments.next() {
        let last = raw_segments.peek().is_none();
        let start = out.len();
        out.push(b'/');
        decode_segment_into(raw, &mut out)?;
        match &out[start + 1..] {
            b"" | b"." => {
                out.truncate(start);
                trailing_slash = last;
            }
            b".." => {
                out.truncate(start);
                let previous = memchr::memrchr(b'/', &out).ok_or(PathError::AboveRoot)?;
                out.truncate(previous);
                trailing_slash = last;
            }
            _ => trailing_slash = false,
        }
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Ok(NormalizedPath(out))
}

/// Appends the percent-decoding of one raw segment to `out`.
fn decode_segment_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let byte = if raw[i] == b'%' {
            let value = escaped_byte(&raw[i + 1..]).ok_or(PathError::BadEscape)?;
            i += 3;
            value
        } else {
            i += 1;
            raw[i - 1]
        };
        match byte {
            b'/' | b'\\' => return Err(PathError::Separator),
            b';' => return Err(PathError::Parameter),
            b if b.is_ascii_control() => return Err(PathError::Control),
            b => out.push(b),
        }
    }
    Ok(())
}

/// The byte of a `%XX` escape whose `XX` starts `after`: exactly two hex digits (not `+1`,
/// which `u8::from_str_radix` would take).
pub(crate) fn escaped_byte(after: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    match after {
        [high, low, ..] => Some(u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text.as_bytes()).unwrap()
    }

    fn errors(text: &str) -> Vec<RuleError> {
        Rules::parse(text.as_bytes()).unwrap_err()
    }

    fn path(text: &str) -> NormalizedPath {
        normalize_path(text.as_bytes()).unwrap()
    }

    /// The line of the rule `method path` matches, 0 for none.
    fn line_for(rules: &Rules, method: &str, target: &str) -> usize {
        rules.find(method, &path(target)).map_or(0, |r| r.line)
    }

    #[test]
    fn normalization() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/a/%2e%2E/c", "/c"),
            ("/a/.%2e", "/"),
            ("/caf%C3%A9?x=/../..#f", "/caf\u{e9}"),
            ("/a%20b", "/a b"),
            ("/%25", "/%"),
            ("/a?/../admin", "/a"),
            ("/..a/b..", "/..a/b.."),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw).as_bytes(), want.as_bytes(), "{raw}");
        }
        let refused = [
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("http://host/a", PathError::NotAbsolute),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/admin", PathError::AboveRoot),
            ("/a%2Fb", PathError::Separator),
            ("/a%5cb", PathError::Separator),
            ("/a\\b", PathError::Separator),
            ("/a%00", PathError::Control),
            ("/a%0a", PathError::Control),
            ("/a\tb", PathError::Control),
            ("/a%7F", PathError::Control),
            ("/admin;x/secret", PathError::Parameter),
            ("/api/..;/admin", PathError::Parameter),
            ("/a%3Bb", PathError::Parameter),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%+1", PathError::BadEscape),
        ];
        for (raw, want) in refused {
            assert_eq!(normalize_path(raw.as_bytes()), Err(want), "{raw:?}");
        }
        // Not UTF-8 after decoding is still a path: matched byte for byte.
        assert_eq!(path("/%FF").as_bytes(), b"/\xFF");
    }

    #[test]
    fn globs() {
        let r = rules(
            "GET /api/** read\n\
             GET /files/*.txt text\n\
             GET /users/*/keys keys\n\
             GET /a/**/z az\n\
             GET /exact exact\n\
             GET / root\n",
        );
        for (target, line) in [
            ("/api", 1),
            ("/api/", 1),
            ("/api/x/y/z", 1),
            ("/apix", 0),
            ("/files/a.txt", 2),
            ("/files/.txt", 2),
            ("/files/a.txt/b", 0),
            ("/files/a/b.txt", 0),
            ("/users/alice/keys", 3),
            ("/users//keys", 0), // `//` is dropped: /users/keys
            ("/users/a/b/keys", 0),
            ("/a/z", 4),
            ("/a/b/c/z", 4),
            ("/a/b/c/zz", 0),
            ("/exact", 5),
            ("/exact/", 0),
            ("/Exact", 0),
            ("/", 6),
            ("/other", 0),
        ] {
            assert_eq!(line_for(&r, "GET", target), line, "{target}");
        }
    }

    #[test]
    fn star_within_a_segment_backtracks() {
        assert!(segment_matches(b"a*b*c", b"axxbyyc"));
        assert!(segment_matches(b"*", b""));
        assert!(segment_matches(b"**x", b"x"));
        assert!(!segment_matches(b"a*b", b"axxbyy"));
        assert!(segment_matches(b"*.tar.gz", b"x.tar.tar.gz"));
        // A pathological glob stays fast.
        let long = vec![b'a'; 10_000];
        assert!(!segment_matches(b"*a*a*a*a*a*b", &long));
        let r = rules("* /**/**/**/**/b x\n");
        let deep = format!("/{}", "a/".repeat(2_000));
        assert_eq!(line_for(&r, "GET", &deep), 0);
    }

    #[test]
    fn methods_and_first_match() {
        let r = rules(
            "# comment\n\
             \n\
             GET         /api/**   app:read\n\
             POST,PUT,DELETE\t/api/**\tapp:write\n\
             *  /**  admin\n",
        );
        assert_eq!(line_for(&r, "GET", "/api/x"), 3);
        assert_eq!(line_for(&r, "HEAD", "/api/x"), 3);
        assert_eq!(line_for(&r, "DELETE", "/api/x"), 4);
        assert_eq!(line_for(&r, "PATCH", "/api/x"), 5);
        assert_eq!(line_for(&r, "get", "/api/x"), 5);
        assert_eq!(
            r.find("GET", &path("/api")).unwrap().scopes().to_string(),
            "app:read"
        );
        assert!(r.unreachable().is_empty());
        let shadowed = rules("* /** all\nGET /api/** read\nGET /x a\nGET,POST /x b\n");
        assert_eq!(shadowed.unreachable(), vec![(2, 1), (3, 1), (4, 1)]);
        let partly = rules("GET /x a\nGET,POST /x b\nGET /x c\n");
        assert_eq!(partly.unreachable(), vec![(3, 1)]);
        let below = rules(
            "GET /api/** a\nGET /api/items b\nGET /api/*/x c\nGET /apix d\nGET /api e\nGET /ap*/x f\n",
        );
        assert_eq!(below.unreachable(), vec![(2, 1), (3, 1), (5, 1)]);
        let admin_after = rules("GET /api/** a\nGET /api/admin/** admin\n");
        assert_eq!(admin_after.unreachable(), vec![(2, 1)]);
        let stars =
            rules("GET /api/* a\nGET /api/x b\nGET /api/x/y c\nGET /*.txt d\nGET /a.txt e\n");
        assert_eq!(stars.unreachable(), vec![(2, 1), (5, 4)]);
    }

    #[test]
    fn rules_file_errors_name_their_line() {
        let errs = errors(
            "GET /ok read\n\
             get /x read\n\
             GET api/** read\n\
             GET /api/** read, write\n\
             GET /a/**b read\n\
             GET,* /x read\n\
             GET /x?y read\n\
             GET /x kafka:*\n\
             GET /x\n\
             GET /a//b read\n\
             GET /a/../b read\n\
             GET /a%20b read\n\
             GET /x tf_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA\n\
             GET, /x read\n",
        );
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, (2..=14).collect::<Vec<_>>());
        assert!(errs[0].message.contains("`GET`, not `get`"), "{}", errs[0]);
        assert!(errs[2].message.contains("more than three fields"));
        assert!(errs[6].message.contains('*'), "{}", errs[6]);
        for e in &errs {
            assert!(!e.to_string().contains("tf_Zm9v"), "{e}");
        }
        assert!(Rules::parse(b"").unwrap().is_empty());
        assert_eq!(
            Rules::parse(b"\xEF\xBB\xBFGET /x a\r\nGET /y b")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            Rules::parse(b"GET /\xFF a\n").unwrap_err()[0].message,
            "not UTF-8"
        );
    }
}
