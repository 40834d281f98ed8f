//! The token file (docs/format.md): a lossless line model.
//!
//! A [`Document`] remembers every line's exact bytes and line ending, so writing back an
//! unchanged document reproduces the input byte for byte — CRLF, a missing final newline, a
//! BOM, NUL bytes and invalid UTF-8 included. Lines are classified on demand by
//! [`parse_line`]; a change replaces, removes or appends whole lines and touches nothing else.
//!
//! A parsed document borrows its lines from the bytes it was parsed from (one `Vec` per line
//! made a 1M-line file cost a million allocations); a changed or appended line owns its bytes.

use std::borrow::Cow;
use std::collections::hash_map::Entry::{Occupied, Vacant};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;

use crate::lines::{self, BOM, Ending};
use crate::scope::{ScopeError, ScopeSet};
use crate::token::{Digest, ID_LEN, Id, IdPrefix, Secret};
use crate::when::{Timestamp, parse_timestamp};

/// What starts a stored digest; a credential that starts with it is never a token.
pub const HASH_PREFIX: &[u8] = b"sha256:";
/// credential, scopes, name, created, expires.
pub const MAX_FIELDS: usize = 5;

/// One line of a [`Document`].
#[derive(Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The bytes of the line without its ending (and without the BOM on line 1): borrowed
    /// from the parsed input, or owned once the line is changed or new.
    pub content: Cow<'a, [u8]>,
    /// How it ends, kept on rewrite.
    pub ending: Ending,
}

impl fmt::Debug for Line<'_> {
    // Lines may hold plaintext credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Line({} bytes, {:?})", self.content.len(), self.ending)
    }
}

impl Line<'_> {
    /// What the line is ([`parse_line`]).
    pub fn entry(&self) -> Entry {
        parse_line(&self.content)
    }
}

/// A token file, line by line, as it was read: see the module comment. Its lines are only
/// ever changed by its own operations, each of which keeps every other line byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document<'a> {
    bom: bool,
    lines: Vec<Line<'a>>,
}

impl<'a> Document<'a> {
    /// Splits `bytes` into lines that borrow from it; nothing is copied.
    pub fn parse(bytes: &'a [u8]) -> Document<'a> {
        let (bom, rest) = lines::strip_bom(bytes);
        let mut lines = Vec::with_capacity(rest.len() / 64 + 1);
        lines::split(rest, true, |content, ending| {
            lines.push(Line {
                content: Cow::Borrowed(content),
                ending,
            });
            ControlFlow::Continue(())
        });
        Document { bom, lines }
    }

    /// Whether the file starts with a byte order mark (kept, never part of line 1).
    pub fn has_bom(&self) -> bool {
        self.bom
    }

    /// The lines, line 1 first.
    pub fn lines(&self) -> &[Line<'a>] {
        &self.lines
    }

    /// The file's bytes: the parsed input itself for an unchanged document.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self
            .lines
            .iter()
            .map(|l| l.content.len() + 2)
            .sum::<usize>()
            + BOM.len();
        let mut out = Vec::with_capacity(len);
        if self.bom {
            out.extend_from_slice(BOM);
        }
        for line in &self.lines {
            out.extend_from_slice(&line.content);
            out.extend_from_slice(line.ending.as_bytes());
        }
        out
    }

    /// Writes the document, the same bytes as [`Document::to_bytes`], without building them.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.bom {
            out.write_all(BOM)?;
        }
        for line in &self.lines {
            out.write_all(&line.content)?;
            out.write_all(line.ending.as_bytes())?;
        }
        Ok(())
    }

    /// Whether [`Document::to_bytes`] would be exactly `bytes`, without building them.
    pub fn is(&self, bytes: &[u8]) -> bool {
        let mut rest = match (self.bom, bytes.strip_prefix(BOM)) {
            (true, Some(rest)) => rest,
            (true, None) => return false,
            (false, _) => bytes,
        };
        for line in &self.lines {
            let content: &[u8] = &line.content;
            // A line borrowed from `bytes` at this very place is equal without a look.
            let in_place = content.as_ptr() == rest.as_ptr() && content.len() <= rest.len();
            let after_content = match in_place {
                true => Some(&rest[content.len()..]),
                false => rest.strip_prefix(content),
            };
            let Some(after) = after_content.and_then(|r| r.strip_prefix(line.ending.as_bytes()))
            else {
                return false;
            };
            rest = after;
        }
        rest.is_empty()
    }

    /// The line ending new lines get: the file's own style (CRLF files stay CRLF).
    pub fn preferred_ending(&self) -> Ending {
        self.lines
            .iter()
            .map(|l| l.ending)
            .find(|e| *e != Ending::None)
            .unwrap_or(Ending::Lf)
    }

    /// Appends a line at the end. A last line without an ending first gets one — the only
    /// way to append without gluing the new record onto it. That is the file's style, except
    /// after a CR: an LF there would turn the CR into part of a CRLF ending and change what
    /// the line says (an invalid `tok<CR>` would become a valid `tok`), so it gets CRLF.
    pub fn push_line(&mut self, content: Vec<u8>) {
        let ending = self.preferred_ending();
        self.end_last_line();
        self.lines.push(Line {
            content: Cow::Owned(content),
            ending,
        });
    }

    /// Gives a last line without an ending one, by the rule of [`Document::push_line`], so
    /// that bytes can be appended after it.
    pub fn end_last_line(&mut self) {
        let ending = self.preferred_ending();
        if let Some(last) = self.lines.last_mut()
            && last.ending == Ending::None
        {
            last.ending = if last.content.ends_with(b"\r") {
                Ending::CrLf
            } else {
                ending
            };
        }
    }

    /// Every line with its 1-based number and classification.
    pub fn entries(&self) -> impl Iterator<Item = (usize, Entry)> + '_ {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, line)| (i + 1, line.entry()))
    }

    /// Every line with its 1-based number and what it counts for: only the first record of
    /// a token counts (docs/format.md), a later one is a [`Duplicate`].
    pub fn classify(&self) -> impl Iterator<Item = (usize, Classified)> + '_ {
        let mut first_line_of: HashMap<Digest, usize> = HashMap::new();
        self.entries().map(move |(line, entry)| {
            let classified = match entry {
                Entry::Blank => Classified::Blank,
                Entry::Comment => Classified::Comment,
                Entry::Invalid(why) => Classified::Invalid(why),
                Entry::Record(record) => match first_line_of.entry(record.digest()) {
                    Vacant(vacant) => {
                        vacant.insert(line);
                        Classified::Record(record)
                    }
                    Occupied(first) => {
                        let duplicate = Duplicate {
                            line,
                            first: *first.get(),
                            id: record.id(),
                        };
                        Classified::Duplicate(record, duplicate)
                    }
                },
            };
            (line, classified)
        })
    }

    /// The record that counts for each token, with its 1-based line number.
    pub fn counted_records(&self) -> impl Iterator<Item = (usize, Record)> + '_ {
        self.classify()
            .filter_map(|(line, classified)| match classified {
                Classified::Record(record) => Some((line, record)),
                _ => None,
            })
    }

    /// The 1-based numbers of the invalid lines, as [`Document::entries`] would classify
    /// them, without building a record for every line: each distinct scopes field is checked
    /// once. (`mint` on a 100k-record file spent a third of its time on full records.)
    pub fn invalid_lines(&self) -> Vec<usize> {
        let mut scopes: HashMap<&[u8], Result<(), ScopeError>, FieldHash> = HashMap::default();
        let mut invalid = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            let content: &[u8] = &line.content;
            if !is_record_line(content) {
                continue;
            }
            let checked = split_record(content, |field| match field {
                None => Ok(()),
                Some(field) => scopes
                    .entry(field)
                    .or_insert_with(|| ScopeSet::parse(field).map(drop))
                    .clone(),
            });
            if checked.is_err() {
                invalid.push(i + 1);
            }
        }
        invalid
    }

    /// Every valid record, duplicates included, with its 0-based line index.
    fn records(&self) -> impl Iterator<Item = (usize, Record)> + '_ {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| match line.entry() {
                Entry::Record(record) => Some((i, record)),
                _ => None,
            })
    }

    /// The first line whose credential is plaintext, at least `min_len` bytes long and found
    /// inside one of `values` (a legacy token pasted into a name): its 1-based number and the
    /// position of that value. One pass, looking only at the first field of each line, with
    /// no record built (`mint` runs it under the lock).
    pub fn credential_inside(&self, values: &[&[u8]], min_len: usize) -> Option<(usize, usize)> {
        self.lines.iter().enumerate().find_map(|(index, line)| {
            let credential = credential_field(&line.content)
                .filter(|c| c.len() >= min_len && !c.starts_with(HASH_PREFIX))?;
            let value = values
                .iter()
                .position(|value| memchr::memmem::find(value, credential).is_some())?;
            Some((index + 1, value))
        })
    }

    /// The first line whose credential is `sha256:` and one of `digests` (a token of the file
    /// pasted whole into a name or a scope, which has no shape to be recognized by): its
    /// 1-based number and the position of that digest. Plaintext credentials are
    /// [`Document::credential_inside`]'s.
    pub fn hashed_credential_of(&self, digests: &[Digest]) -> Option<(usize, usize)> {
        if digests.is_empty() {
            return None;
        }
        self.lines.iter().enumerate().find_map(|(index, line)| {
            let hex = credential_field(&line.content)?.strip_prefix(HASH_PREFIX)?;
            let digest = Digest::from_hex(hex)?;
            Some((index + 1, digests.iter().position(|d| *d == digest)?))
        })
    }

    /// The IDs of the records that count, with their names: what a person's ID prefix is
    /// resolved against.
    pub fn ids(&self) -> Ids {
        Ids(self
            .counted_records()
            .map(|(_, record)| (record.id(), record.name_lossy()))
            .collect())
    }

    /// The record that counts for `id`.
    pub fn record_of(&self, id: Id) -> Option<Record> {
        self.counted_records()
            .map(|(_, record)| record)
            .find(|record| record.id() == id)
    }

    /// Appends a new record, formatted by [`Record::to_line`].
    pub fn push_record(&mut self, record: &Record) {
        self.push_line(record.to_line());
    }

    /// Removes every record line with one of `ids` — duplicates too, so that no copy of a
    /// revoked token keeps granting — and the [`Replaced`] markers about them, old or new,
    /// which have nothing left to say (a record kept for a grace period whose successor is
    /// revoked is replaced by nothing).
    pub fn remove_records(&mut self, ids: &[Id]) {
        // A set: `prune` may remove thousands of a file's records at once.
        let ids: HashSet<Id> = ids.iter().copied().collect();
        let names: HashSet<&str> = ids.iter().map(Id::as_str).collect();
        let mut doomed: BTreeSet<usize> = self
            .records()
            .filter(|(_, r)| ids.contains(&r.id()))
            .map(|(i, _)| i)
            .collect();
        doomed.extend(self.lines.iter().enumerate().filter_map(|(i, line)| {
            let marker = Replaced::parse(&line.content)?;
            (names.contains(marker.old) || names.contains(marker.new)).then_some(i)
        }));
        let mut index = 0;
        self.lines.retain(|_| {
            index += 1;
            !doomed.contains(&(index - 1))
        });
    }

    /// Makes every record of `id` expire no later than `until`, leaving the rest of each line
    /// byte for byte.
    pub fn shorten_expiry(&mut self, id: Id, until: Timestamp) {
        let stamp = crate::when::format_timestamp(until);
        let targets: Vec<(usize, Record)> = self.records().filter(|(_, r)| r.id() == id).collect();
        for (index, record) in targets {
            if record.expires.is_some_and(|e| e <= until) {
                continue;
            }
            let line = &mut self.lines[index];
            line.content = with_field(&line.content, FIELD_EXPIRES, stamp.as_bytes()).into();
        }
    }

    /// Puts `new` in the place of the record `old`: at once, or with `grace_until` by keeping
    /// `old` until then and saying which record replaced it (a [`Replaced`] marker).
    pub fn replace_record(&mut self, old: Id, new: &Record, grace_until: Option<Timestamp>) {
        match grace_until {
            Some(until) => {
                self.shorten_expiry(old, until);
                self.push_line(Replaced::line(old, new.id()));
            }
            None => self.remove_records(&[old]),
        }
        self.push_record(new);
    }

    /// Stores the SHA-256 of every plaintext credential instead of the credential, each
    /// line's other fields byte for byte; returns the records that were hashed (duplicates
    /// too).
    pub fn hash_plaintext(&mut self) -> Vec<Record> {
        let plain: Vec<(usize, Record)> = self
            .records()
            .filter(|(_, r)| r.credential.is_plaintext())
            .collect();
        for (index, record) in &plain {
            let line = &mut self.lines[*index];
            let field = Credential::hashed_field(&record.digest());
            line.content = with_field(&line.content, FIELD_CREDENTIAL, &field).into();
        }
        plain.into_iter().map(|(_, r)| r).collect()
    }

    /// Which record replaced which, by the [`Replaced`] markers: old ID to new ID, the latest
    /// marker counting (a record rotated twice was replaced by the second one).
    pub fn replacements(&self) -> HashMap<&str, &str> {
        self.lines
            .iter()
            .filter_map(|line| Replaced::parse(&line.content))
            .map(|marker| (marker.old, marker.new))
            .collect()
    }
}

/// The IDs of a document's records that count ([`Document::ids`]), with their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids(BTreeMap<Id, String>);

impl Ids {
    /// The one ID that `prefix` matches.
    pub fn resolve(&self, prefix: &IdPrefix) -> Result<Id, Unresolved> {
        let mut matches = self.0.iter().filter(|(id, _)| prefix.matches(id));
        match (matches.next(), matches.next()) {
            (None, _) => Err(Unresolved::NoMatch),
            (Some((id, _)), None) => Ok(*id),
            (Some(first), Some(second)) => Err(Unresolved::Ambiguous(
                [first, second]
                    .into_iter()
                    .chain(matches)
                    .map(|(id, name)| (*id, name.clone()))
                    .collect(),
            )),
        }
    }
}

/// Why an ID prefix resolves to no single record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No record's ID starts with it.
    NoMatch,
    /// Every ID it matches, with the name of its record.
    Ambiguous(Vec<(Id, String)>),
}

/// A line as [`Document::classify`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Empty or only spaces and TABs.
    Blank,
    /// Its first byte is `#`.
    Comment,
    /// Meant as a record but not a valid one: it grants nothing.
    Invalid(Invalid),
    /// The record that counts for its token.
    Record(Record),
    /// A later record of a token that an earlier line has: it grants nothing.
    Duplicate(Record, Duplicate),
}

/// A record line whose token an earlier record line already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// The 1-based number of this line.
    pub line: usize,
    /// The 1-based number of the first line with the token, the one that counts.
    pub first: usize,
    /// The token's ID.
    pub id: Id,
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Duplicate { first, id, .. } = self;
        write!(
            f,
            "same token as line {first} (ID {id}); only line {first} counts"
        )
    }
}

/// The comment `rotate --grace` writes above the new record, so that `list` can say which
/// record replaced the one kept for the grace period. A comment: every reader ignores it, and
/// `edit` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced<'a> {
    /// The ID of the record kept for the grace period.
    pub old: &'a str,
    /// The ID of the record that replaced it.
    pub new: &'a str,
}

impl<'a> Replaced<'a> {
    const PREFIX: &'static str = "# tokenfile: ";
    const VERB: &'static str = " replaced by ";

    /// The marker line saying that `new` replaced `old`.
    pub fn line(old: Id, new: Id) -> Vec<u8> {
        format!("{}{old}{}{new} (rotate --grace)", Self::PREFIX, Self::VERB).into_bytes()
    }

    /// The marker that `content` is, if it is one.
    pub fn parse(content: &'a [u8]) -> Option<Replaced<'a>> {
        let rest = std::str::from_utf8(content.strip_prefix(Self::PREFIX.as_bytes())?).ok()?;
        let (old, rest) = rest.split_once(Self::VERB)?;
        let new = rest.split(' ').next()?;
        let is_id = |s: &str| s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit());
        (is_id(old) && is_id(new)).then_some(Replaced { old, new })
    }
}

/// A fast hash for fields of the file (scopes fields, seen again and again): they come from
/// the file, whose writer can grant itself anything anyway, so there is no flooding to
/// defend against.
#[derive(Default, Clone, Copy)]
pub(crate) struct FieldHasher(u64);

impl std::hash::Hasher for FieldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FieldHash = std::hash::BuildHasherDefault<FieldHasher>;

/// What one line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Empty or only spaces and TABs.
    Blank,
    /// Its first byte is `#`.
    Comment,
    /// A valid record.
    Record(Record),
    /// Meant as a record but not a valid one: it grants nothing.
    Invalid(Invalid),
}

/// What a record stores of its token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The token itself (legacy lines, `mint --plaintext`).
    Plain(Secret),
    /// Its SHA-256, stored as `sha256:<hex>`.
    Hashed(Digest),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => write!(f, "Plain(id={})", self.digest().id()),
            Credential::Hashed(d) => write!(f, "Hashed(id={})", d.id()),
        }
    }
}

impl Credential {
    /// The token's SHA-256, which a presented token is compared by.
    pub fn digest(&self) -> Digest {
        match self {
            Credential::Plain(secret) => secret.digest(),
            Credential::Hashed(digest) => *digest,
        }
    }

    /// Whether the token itself is stored.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, Credential::Plain(_))
    }

    /// The credential field as stored: the token itself, or `sha256:<64 lowercase hex>`.
    pub fn field(&self) -> Cow<'_, [u8]> {
        match self {
            Credential::Plain(secret) => Cow::Borrowed(secret.expose()),
            Credential::Hashed(digest) => Cow::Owned(Credential::hashed_field(digest)),
        }
    }

    /// The stored form of a digest: `sha256:<64 lowercase hex>`.
    pub fn hashed_field(digest: &Digest) -> Vec<u8> {
        let mut field = HASH_PREFIX.to_vec();
        field.extend_from_slice(digest.to_hex().as_bytes());
        field
    }
}

/// A valid record line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The token or its digest.
    pub credential: Credential,
    /// What it grants (`*` for a legacy one-field line).
    pub scopes: ScopeSet,
    /// Free text without TAB, as stored (not necessarily UTF-8); empty if none.
    pub name: Vec<u8>,
    /// When it was minted, if the line says.
    pub created: Option<Timestamp>,
    /// When it stops granting, if ever.
    pub expires: Option<Timestamp>,
}

impl Record {
    /// The token's SHA-256.
    pub fn digest(&self) -> Digest {
        self.credential.digest()
    }

    /// The record's public identifier.
    pub fn id(&self) -> Id {
        self.digest().id()
    }

    /// The name, invalid UTF-8 replaced.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Whether it grants nothing any more at `now` (expires ≤ now).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Whether it still grants at `now` but expires within `window` of it (`list
    /// --expiring`, `lint --expiring`); a window past any representable time covers every
    /// expiry.
    pub fn expires_within(&self, window: std::time::Duration, now: Timestamp) -> bool {
        let Some(expires) = self.expires.filter(|e| *e > now) else {
            return false;
        };
        time::Duration::try_from(window)
            .ok()
            .and_then(|w| now.checked_add(w))
            .is_none_or(|end| expires <= end)
    }

    /// The record as a line of the file (see [`format_record`]); parsing it gives the
    /// record back, times to the second.
    pub fn to_line(&self) -> Vec<u8> {
        format_record(
            &self.credential.field(),
            &self.scopes,
            &self.name,
            self.created,
            self.expires,
        )
    }
}

/// Why a line is invalid. It never carries credential bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// More than [`MAX_FIELDS`] fields (how many).
    TooManyFields(usize),
    /// Nothing before the first TAB.
    EmptyCredential,
    /// A space, CR or other whitespace inside the credential.
    WhitespaceInCredential,
    /// `sha256:` not followed by exactly 64 lowercase hex digits.
    BadDigest,
    /// The scopes field does not parse.
    Scopes(ScopeError),
    /// The created field is neither empty nor an RFC 3339 time.
    Created,
    /// The expires field is neither empty nor an RFC 3339 time.
    Expires,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::TooManyFields(n) => {
                write!(
                    f,
                    "{n} TAB-separated fields, at most {MAX_FIELDS} allowed (credential, scopes, \
                     name, created, expires; a name cannot hold a TAB)"
                )
            }
            Invalid::EmptyCredential => f.write_str("the credential field is empty"),
            Invalid::WhitespaceInCredential => f.write_str(
                "the credential contains whitespace (fields are separated by a single TAB)",
            ),
            Invalid::BadDigest => {
                f.write_str("`sha256:` must be followed by exactly 64 lowercase hex digits")
            }
            Invalid::Scopes(e) => e.fmt(f),
            Invalid::Created => f.write_str(
                "the created field (4th) is not an RFC 3339 time such as 2026-05-05T14:23:00Z \
                 (or empty)",
            ),
            Invalid::Expires => f.write_str(
                "the expires field (5th) is not an RFC 3339 time such as 2026-05-05T14:23:00Z \
                 (or empty)",
            ),
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

fn is_comment(content: &[u8]) -> bool {
    content.first() == Some(&b'#')
}

fn is_blank(content: &[u8]) -> bool {
    content.iter().all(|&b| b == b' ' || b == b'\t')
}

/// Whether a line (without its ending) is meant as a record — neither a comment nor blank —
/// and so is either a valid record or an invalid line.
pub fn is_record_line(content: &[u8]) -> bool {
    !is_comment(content) && !is_blank(content)
}

/// The first field of a line meant as a record (see [`is_record_line`]), as written:
/// untrimmed, whether or not the rest of the line is valid.
pub fn credential_field(content: &[u8]) -> Option<&[u8]> {
    is_record_line(content).then(|| match memchr::memchr(b'\t', content) {
        Some(tab) => &content[..tab],
        None => content,
    })
}

/// Classifies one line (without its ending).
pub fn parse_line(content: &[u8]) -> Entry {
    if is_comment(content) {
        return Entry::Comment;
    }
    if is_blank(content) {
        return Entry::Blank;
    }
    match parse_record(content) {
        Ok(record) => Entry::Record(record),
        Err(invalid) => Entry::Invalid(invalid),
    }
}

fn parse_record(content: &[u8]) -> Result<Record, Invalid> {
    let fields = split_record(content, |field| match field {
        None => Ok(ScopeSet::all()), // legacy one-field line: full access
        Some(field) => ScopeSet::parse(field),
    })?;
    let credential = match fields.hashed {
        Some(digest) => Credential::Hashed(digest),
        None => Credential::Plain(Secret::new(fields.credential.to_vec())),
    };
    Ok(Record {
        credential,
        scopes: fields.scopes,
        name: fields.name.to_vec(),
        created: fields.created,
        expires: fields.expires,
    })
}

/// A valid record line split into its fields, borrowing from the line. [`parse_line`] and
/// the index of [`crate::index::TokenIndex`] both go through [`split_record`], so they accept
/// exactly the same lines for exactly the same reasons.
#[derive(Debug)]
pub struct RecordFields<'a, S> {
    /// The credential field as stored (a plaintext token, or `sha256:<hex>`).
    pub credential: &'a [u8],
    /// The digest of a `sha256:` credential; `None` for a plaintext one.
    pub hashed: Option<Digest>,
    /// What the `scopes` callback made of the scopes field.
    pub scopes: S,
    /// Empty when the line has no name field.
    pub name: &'a [u8],
    /// The created field, parsed.
    pub created: Option<Timestamp>,
    /// The expires field, parsed.
    pub expires: Option<Timestamp>,
}

impl<S> RecordFields<'_, S> {
    /// The digest the record is looked up by.
    pub fn digest(&self) -> Digest {
        self.hashed.unwrap_or_else(|| Digest::of(self.credential))
    }
}

/// The TAB-separated fields of a line, borrowed: the first [`MAX_FIELDS`] (missing ones
/// empty, which is what an empty field means too) and how many there are.
#[derive(Debug, Clone, Copy, Default)]
struct Fields<'a> {
    fields: [&'a [u8]; MAX_FIELDS],
    count: usize,
}

impl<'a> Fields<'a> {
    /// Adds the next field.
    #[inline]
    fn push(&mut self, field: &'a [u8]) {
        if self.count < MAX_FIELDS {
            self.fields[self.count] = field;
        }
        self.count += 1;
    }

    fn split(content: &'a [u8]) -> Fields<'a> {
        let mut fields = Fields::default();
        let mut start = 0;
        for tab in memchr::memchr_iter(b'\t', content) {
            fields.push(&content[start..tab]);
            start = tab + 1;
        }
        fields.push(&content[start..]);
        fields
    }
}

/// Splits and checks a record line (not a comment or blank line) without copying it. The
/// scopes field (`None` on a legacy one-field line) is handed to `scopes`, so that a caller
/// that sees the same field a million times can parse it once.
pub fn split_record<'a, S>(
    content: &'a [u8],
    scopes: impl FnOnce(Option<&'a [u8]>) -> Result<S, ScopeError>,
) -> Result<RecordFields<'a, S>, Invalid> {
    check_fields(Fields::split(content), scopes)
}

/// [`split_record`] of a line already split into its fields.
fn check_fields<'a, S>(
    fields: Fields<'a>,
    scopes: impl FnOnce(Option<&'a [u8]>) -> Result<S, ScopeError>,
) -> Result<RecordFields<'a, S>, Invalid> {
    if fields.count > MAX_FIELDS {
        return Err(Invalid::TooManyFields(fields.count));
    }
    let [credential, scopes_field, name, created, expires] = fields.fields;
    let hashed = check_credential(credential)?;
    let scopes = scopes((fields.count > 1).then_some(scopes_field)).map_err(Invalid::Scopes)?;
    let created = parse_optional_time(created).map_err(|()| Invalid::Created)?;
    let expires = parse_optional_time(expires).map_err(|()| Invalid::Expires)?;
    Ok(RecordFields {
        credential,
        hashed,
        scopes,
        name,
        created,
        expires,
    })
}

/// Checks a credential field; the digest if it is a `sha256:` one, `None` if plaintext.
fn check_credential(field: &[u8]) -> Result<Option<Digest>, Invalid> {
    if field.is_empty() {
        return Err(Invalid::EmptyCredential);
    }
    // The common case first: a good digest holds no whitespace, so it needs no other test.
    if let Some(digest) = field.strip_prefix(HASH_PREFIX).and_then(Digest::from_hex) {
        return Ok(Some(digest));
    }
    // No early exit: the loop over a typical 50-byte credential vectorizes.
    if field.iter().fold(false, |found, &b| found | is_space(b)) {
        return Err(Invalid::WhitespaceInCredential);
    }
    if field.starts_with(HASH_PREFIX) {
        return Err(Invalid::BadDigest);
    }
    Ok(None)
}

fn parse_optional_time(field: &[u8]) -> Result<Option<Timestamp>, ()> {
    match field {
        [] => Ok(None),
        f => parse_timestamp(f).map(Some).ok_or(()),
    }
}

/// Returns `content` with field `index` (0-based) set to `value`, every other field kept
/// byte for byte. Missing fields in between are filled in (`*` for the scopes of a legacy
/// one-field line, empty otherwise).
pub fn with_field(content: &[u8], index: usize, value: &[u8]) -> Vec<u8> {
    let mut fields: Vec<&[u8]> = content.split(|&b| b == b'\t').collect();
    while fields.len() <= index {
        fields.push(if fields.len() == 1 { b"*" } else { b"" });
    }
    fields[index] = value;
    fields.join(&b'\t')
}

/// Positions of fields, for [`with_field`].
const FIELD_CREDENTIAL: usize = 0;
const FIELD_EXPIRES: usize = 4;

/// Formats a new record line; trailing empty fields after the scopes are left out.
pub fn format_record(
    credential: &[u8],
    scopes: &ScopeSet,
    name: &[u8],
    created: Option<Timestamp>,
    expires: Option<Timestamp>,
) -> Vec<u8> {
    let scopes = scopes.to_field();
    let created = created.map(crate::when::format_timestamp);
    let expires = expires.map(crate::when::format_timestamp);
    let mut fields: Vec<&[u8]> = vec![
        credential,
        scopes.as_bytes(),
        name,
        created.as_deref().unwrap_or("").as_bytes(),
        expires.as_deref().unwrap_or("").as_bytes(),
    ];
    while fields.len() > 2 && fields.last().is_some_and(|f| f.is_empty()) {
        fields.pop();
    }
    fields.join(&b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(s: &[u8]) -> Entry {
        parse_line(s)
    }

    #[test]
    fn legacy_line_is_full_access() {
        let Entry::Record(r) = entry(b"secret123") else {
            panic!()
        };
        assert_eq!(r.scopes, ScopeSet::all());
        assert!(r.credential.is_plaintext());
    }

    #[test]
    fn empty_scopes_is_invalid_never_full_access() {
        assert_eq!(
            entry(b"tok\t"),
            Entry::Invalid(Invalid::Scopes(ScopeError::Empty))
        );
    }

    #[test]
    fn classification() {
        assert_eq!(entry(b""), Entry::Blank);
        assert_eq!(entry(b" \t "), Entry::Blank);
        assert_eq!(entry(b"# hi\tthere"), Entry::Comment);
        assert_eq!(
            entry(b"a\tb\tc\td\te\tf"),
            Entry::Invalid(Invalid::TooManyFields(6))
        );
        assert_eq!(entry(b"\tread"), Entry::Invalid(Invalid::EmptyCredential));
        assert_eq!(
            entry(b"to ken\tread"),
            Entry::Invalid(Invalid::WhitespaceInCredential)
        );
        assert_eq!(
            entry(b"sha256:abc\tread"),
            Entry::Invalid(Invalid::BadDigest)
        );
        assert_eq!(
            entry(b"tok\tread\tname\tyesterday"),
            Entry::Invalid(Invalid::Created)
        );
        assert_eq!(
            entry(b"tok\tread\tname\t\tnever"),
            Entry::Invalid(Invalid::Expires)
        );
        let Entry::Record(r) = entry(b"tok\tread\t\t\t2026-01-01T00:00:00Z") else {
            panic!()
        };
        assert!(r.expires.is_some());
        assert!(r.created.is_none());
    }

    #[test]
    fn uppercase_digest_is_invalid() {
        let line = format!("sha256:{}\tread", "A".repeat(64));
        assert_eq!(entry(line.as_bytes()), Entry::Invalid(Invalid::BadDigest));
    }

    #[test]
    fn hashed_and_plain_share_the_id() {
        let Entry::Record(plain) = entry(b"tok\tread") else {
            panic!()
        };
        let hashed_line = Credential::hashed_field(&Digest::of(b"tok"));
        let Entry::Record(hashed) = entry(&with_field(b"tok\tread", 0, &hashed_line)) else {
            panic!()
        };
        assert_eq!(plain.id(), hashed.id());
    }

    #[test]
    fn invalid_reasons_never_echo_the_credential() {
        for line in [
            &b"s3cr3t-value\t\xff"[..],
            b"s3cr3t-value\tr e a d",
            b"s3cr3t-value\tread\tn\tbad",
            b"s3cr3t-value\ta\tb\tc\td\te",
        ] {
            let Entry::Invalid(why) = entry(line) else {
                panic!()
            };
            assert!(!why.to_string().contains("s3cr3t"));
        }
    }

    #[test]
    fn nasty_bytes_round_trip() {
        for input in [
            &b""[..],
            b"\n",
            b"\r\n",
            b"a\r\nb\nc",
            b"a\r",
            b"\r",
            b"\xEF\xBB\xBFtok\tread\r\n",
            b"\xEF\xBB\xBF",
            b"x\0y\n\xff\xfe\n",
            b"\n\n\n",
        ] {
            assert_eq!(Document::parse(input).to_bytes(), input, "{input:?}");
        }
    }

    #[test]
    fn push_line_terminates_the_last_line_in_file_style() {
        let mut doc = Document::parse(b"a\r\nb");
        doc.push_line(b"c".to_vec());
        assert_eq!(doc.to_bytes(), b"a\r\nb\r\nc\r\n");
        let mut doc = Document::parse(b"");
        doc.push_line(b"c".to_vec());
        assert_eq!(doc.to_bytes(), b"c\n");
    }

    #[test]
    fn push_line_keeps_a_trailing_cr_in_its_line() {
        let mut doc = Document::parse(b"a\ntok\r");
        doc.push_line(b"new".to_vec());
        let bytes = doc.to_bytes();
        assert_eq!(bytes, b"a\ntok\r\r\nnew\n");
        let reparsed = Document::parse(&bytes);
        assert_eq!(&reparsed.lines[1].content[..], b"tok\r");
        assert!(matches!(reparsed.lines[1].entry(), Entry::Invalid(_)));
    }

    #[test]
    fn with_field_keeps_the_rest() {
        assert_eq!(with_field(b"tok", 4, b"E"), b"tok\t*\t\t\tE");
        assert_eq!(with_field(b"tok\t a , b \tn", 0, b"X"), b"X\t a , b \tn");
        assert_eq!(
            with_field(b"t\tr\tn\tc\told", 4, b"new"),
            b"t\tr\tn\tc\tnew"
        );
    }

    #[test]
    fn format_record_trims_trailing_empty_fields() {
        let s = ScopeSet::parse(b"a, b").unwrap();
        assert_eq!(format_record(b"c", &s, b"", None, None), b"c\ta,b");
        let t = parse_timestamp(b"2026-01-01T00:00:00Z");
        assert_eq!(
            format_record(b"c", &s, b"", None, t),
            b"c\ta,b\t\t\t2026-01-01T00:00:00Z"
        );
    }

    fn id_of(token: &str) -> Id {
        Digest::of(token.as_bytes()).id()
    }

    fn at(text: &str) -> Timestamp {
        parse_timestamp(text.as_bytes()).unwrap()
    }

    /// The bytes after `change`, which must keep every line it does not touch.
    fn changed(input: &str, change: impl FnOnce(&mut Document)) -> String {
        let mut doc = Document::parse(input.as_bytes());
        change(&mut doc);
        String::from_utf8(doc.to_bytes()).unwrap()
    }

    #[test]
    fn classify_counts_the_first_record_of_a_token() {
        let hashed = Credential::hashed_field(&Digest::of(b"a"));
        let file = format!(
            "a\tread\n# c\n\nbad\t\n{}\twrite\na\t*\n",
            hashed.escape_ascii()
        );
        let doc = Document::parse(file.as_bytes());
        let kinds: Vec<String> = doc
            .classify()
            .map(|(line, c)| match c {
                Classified::Record(r) => format!("{line} record {}", r.scopes.to_field()),
                Classified::Duplicate(_, d) => format!("{line} {d}"),
                Classified::Invalid(_) => format!("{line} invalid"),
                Classified::Blank | Classified::Comment => format!("{line} -"),
            })
            .collect();
        let id = id_of("a");
        let repeat = format!("same token as line 1 (ID {id}); only line 1 counts");
        assert_eq!(
            kinds,
            [
                "1 record read".to_string(),
                "2 -".into(),
                "3 -".into(),
                "4 invalid".into(),
                format!("5 {repeat}"),
                format!("6 {repeat}"),
            ]
        );
        let counted: Vec<usize> = doc.counted_records().map(|(line, _)| line).collect();
        assert_eq!(counted, [1]);
        assert_eq!(doc.record_of(id).unwrap().scopes.to_field(), "read");
    }

    #[test]
    fn ids_resolve_to_one_record() {
        let doc = Document::parse(b"a\tread\tfirst\nb\tread\na\twrite\n");
        let ids = doc.ids();
        let full = id_of("a");
        let prefix = |text: &str| IdPrefix::parse(text).unwrap();
        assert_eq!(ids.resolve(&prefix(full.as_str())), Ok(full));
        assert_eq!(ids.resolve(&prefix(&full.as_str()[..4])), Ok(full));
        assert_eq!(
            ids.resolve(&prefix("ffffffffffff")),
            Err(Unresolved::NoMatch)
        );
        // Two records that share a prefix: every candidate is named, once.
        let (one, two) = (0..)
            .map(|i| format!("t{i}"))
            .flat_map(|a| (0..200).map(move |j| (a.clone(), format!("u{j}"))))
            .find(|(a, b)| id_of(a).as_str()[..4] == id_of(b).as_str()[..4])
            .unwrap();
        let file = format!("{one}\t*\tone\n{two}\t*\n{one}\tread\n");
        let ambiguous = Document::parse(file.as_bytes());
        let one_id = id_of(&one);
        let shared = &one_id.as_str()[..4];
        let Err(Unresolved::Ambiguous(candidates)) = ambiguous.ids().resolve(&prefix(shared))
        else {
            panic!("{shared} is ambiguous")
        };
        let mut want = vec![
            (id_of(&one), "one".to_string()),
            (id_of(&two), String::new()),
        ];
        want.sort();
        assert_eq!(candidates, want);
    }

    #[test]
    fn remove_records_takes_every_copy_and_its_markers() {
        let (a, b) = (id_of("a"), id_of("b"));
        let marker = String::from_utf8(Replaced::line(a, b)).unwrap();
        let input = format!("# keep\r\na\tread\r\nb\t*\r\n{marker}\r\na\twrite\r\nc");
        let after = changed(&input, |doc| doc.remove_records(&[a]));
        assert_eq!(after, "# keep\r\nb\t*\r\nc");
        assert!(Document::parse(after.as_bytes()).replacements().is_empty());
        // Revoking the successor leaves the old record replaced by nothing.
        let after = changed(&input, |doc| doc.remove_records(&[b]));
        assert_eq!(after, "# keep\r\na\tread\r\na\twrite\r\nc");
    }

    #[test]
    fn shorten_expiry_only_shortens() {
        let input =
            "a\tread\n a-not\na\t*\tn\t\t2026-01-01T00:00:00Z\na\t*\t\t\t2030-01-01T00:00:00Z\n";
        let after = changed(input, |doc| {
            doc.shorten_expiry(id_of("a"), at("2027-01-01T00:00:00Z"));
        });
        assert_eq!(
            after,
            "a\tread\t\t\t2027-01-01T00:00:00Z\n a-not\na\t*\tn\t\t2026-01-01T00:00:00Z\n\
             a\t*\t\t\t2027-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn replace_record_at_once_or_after_a_grace_period() {
        let new = Record {
            credential: Credential::Hashed(Digest::of(b"n")),
            scopes: ScopeSet::parse(b"read").unwrap(),
            name: b"ci".to_vec(),
            created: Some(at("2026-06-01T00:00:00Z")),
            expires: None,
        };
        let new_line = String::from_utf8(new.to_line()).unwrap();
        let input = "# c\nold\tread\tci\nold\tread\n";
        let now = changed(input, |doc| doc.replace_record(id_of("old"), &new, None));
        assert_eq!(now, format!("# c\n{new_line}\n"));
        let until = at("2026-06-02T00:00:00Z");
        let later = changed(input, |doc| {
            doc.replace_record(id_of("old"), &new, Some(until));
        });
        let marker = String::from_utf8(Replaced::line(id_of("old"), new.id())).unwrap();
        assert_eq!(
            later,
            format!(
                "# c\nold\tread\tci\t\t2026-06-02T00:00:00Z\nold\tread\t\t\t2026-06-02T00:00:00Z\n\
                 {marker}\n{new_line}\n"
            )
        );
        let doc = Document::parse(later.as_bytes());
        let (old, replaced_by) = (id_of("old"), new.id());
        assert_eq!(
            doc.replacements().get(old.as_str()),
            Some(&replaced_by.as_str())
        );
    }

    #[test]
    fn a_new_record_parses_back_to_itself() {
        for credential in [
            Credential::Plain(Secret::new(b"tf_plain".to_vec())),
            Credential::Hashed(Digest::of(b"x")),
        ] {
            let record = Record {
                credential,
                scopes: ScopeSet::parse(b"b, a:*").unwrap(),
                name: "n é".as_bytes().to_vec(),
                created: Some(at("2026-06-01T00:00:00Z")),
                expires: Some(at("2026-07-01T00:00:00Z")),
            };
            assert_eq!(parse_line(&record.to_line()), Entry::Record(record.clone()));
        }
    }

    #[test]
    fn hash_plaintext_keeps_the_other_fields() {
        let input = "\u{feff}p\tread\tn\r\nsha256:x\n# p\nq\nq\t*\n";
        let mut hashed = Vec::new();
        let after = changed(input, |doc| hashed = doc.hash_plaintext());
        let h = |t: &str| {
            String::from_utf8(Credential::hashed_field(&Digest::of(t.as_bytes()))).unwrap()
        };
        assert_eq!(
            after,
            format!(
                "\u{feff}{}\tread\tn\r\nsha256:x\n# p\n{}\n{}\t*\n",
                h("p"),
                h("q"),
                h("q")
            )
        );
        let ids: Vec<Id> = hashed.iter().map(Record::id).collect();
        assert_eq!(ids, [id_of("p"), id_of("q"), id_of("q")]);
    }

    #[test]
    fn credential_inside_finds_long_plaintext_only() {
        let doc = Document::parse(b"short\nsha256:0123456789abcdef0123\n# 0123456789abcdef0123\nlegacy-credential-0123\tread\n");
        let inside = |values: &[&[u8]], min_len| doc.credential_inside(values, min_len);
        assert_eq!(
            inside(&[b"n", b"my legacy-credential-0123 name"], 16),
            Some((4, 1))
        );
        assert_eq!(inside(&[b"short sha256:0123456789abcdef0123"], 16), None);
        assert_eq!(inside(&[b"short"], 5), Some((1, 0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_write_round_trip(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let doc = Document::parse(&input);
            let mut written = Vec::new();
            doc.write_to(&mut written).unwrap();
            prop_assert!(doc.is(&input));
            prop_assert_eq!(&written, &input);
            prop_assert_eq!(doc.to_bytes(), input);
        }

        #[test]
        fn is_agrees_with_to_bytes(
            a in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), Just(0xEF), Just(0xBB), Just(0xBF)], 0..24),
            b in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), Just(0xEF), Just(0xBB), Just(0xBF)], 0..24),
            push in any::<bool>(),
        ) {
            let mut doc = Document::parse(&a);
            if push {
                doc.push_line(b"x".to_vec());
            }
            prop_assert_eq!(doc.is(&b), doc.to_bytes() == b);
            prop_assert_eq!(doc.is(&a), doc.to_bytes() == a);
        }

        #[test]
        fn round_trip_of_line_shaped_input(
            lines in proptest::collection::vec(
                ("[a-z\t#\r ]{0,12}", prop_oneof![Just("\n"), Just("\r\n"), Just("")]),
                0..20),
            bom in any::<bool>(),
        ) {
            let mut input = Vec::new();
            if bom { input.extend_from_slice(BOM); }
            for (content, end) in &lines {
                input.extend_from_slice(content.as_bytes());
                input.extend_from_slice(end.as_bytes());
            }
            let doc = Document::parse(&input);
            prop_assert_eq!(doc.to_bytes(), input.clone());
            // Classifying never panics and appending keeps the prefix intact.
            let _ = doc.entries().count();
            let mut grown = doc.clone();
            grown.push_line(b"new".to_vec());
            let style = doc.preferred_ending().as_bytes();
            let mut expected = doc.to_bytes();
            if let Some(last) = doc.lines.last().filter(|l| l.ending == Ending::None) {
                expected.extend_from_slice(if last.content.ends_with(b"\r") { b"\r\n" } else { style });
            }
            expected.extend_from_slice(b"new");
            expected.extend_from_slice(style);
            prop_assert_eq!(grown.to_bytes(), expected);
        }
    }
}
