//! The check decision (docs/format.md: scopes, expiry, first record counts), shared by `tokenfile
//! check` and `serve`.
//!
//! Two ways to find the record of a presented token, with the same answer:
//! - [`TokenIndex`]: every record keyed by its SHA-256 digest, built once (for `serve`);
//! - [`find_record`] / [`find_record_in`]: a single pass over the raw file (in chunks, for
//!   the reader) that fully parses only lines whose credential matches (for one-shot
//!   `check`, where building an index would cost more than the answer).
//!
//! Either way the presented token is compared by digest for `sha256:` records, never to the
//! stored string itself, and plaintext records are compared without early exit.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::format::{self, Entry, FieldHash, HASH_PREFIX, Invalid, Record};
use crate::scope::{RequiredScopes, ScopeError, ScopeSet};
use crate::token::{Digest, Id, Secret};
use crate::when::Timestamp;

/// What a record grants: all a check needs of it, borrowed from a [`TokenIndex`] or a
/// [`Grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRef<'a> {
    pub id: Id,
    pub name: &'a str,
    pub scopes: &'a ScopeSet,
    pub expires: Option<Timestamp>,
    /// 1-based line number in the file it was loaded from.
    pub line: usize,
}

impl GrantRef<'_> {
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
    pub id: Id,
    pub name: String,
    pub scopes: ScopeSet,
    pub expires: Option<Timestamp>,
    /// 1-based line number in the file it was loaded from.
    pub line: usize,
}

impl Grant {
    pub fn from_record(record: &Record, line: usize) -> Self {
        Grant {
            id: record.id(),
            name: record.name_lossy(),
            scopes: record.scopes.clone(),
            expires: record.expires,
            line,
        }
    }

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
    Granted { id: Id, name: &'a str },
    /// Exit 1, HTTP 403: a valid token without (all) the required scopes.
    Forbidden { id: Id, name: &'a str },
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
///
/// Built for a million records in a fraction of a second, and held in about 90 bytes a
/// record: the lines are split in place, each distinct scopes field is parsed once and
/// shared, the names sit one after the other in one string, and the records are fixed-size
/// entries in file order behind a small open-addressing table keyed by the digest (already a
/// uniform hash, so it is folded, not re-hashed). `serve` holds two of these during a reload
/// (the one in use and the new one), so their size is its peak memory.
#[derive(Debug, Default, Clone)]
pub struct TokenIndex {
    /// The first record of each token, in file order.
    entries: Vec<IndexEntry>,
    /// Every entry's name, one after the other.
    names: String,
    /// The distinct scope sets (by value), referred to by position.
    scope_sets: Vec<ScopeSet>,
    /// Linear probing over a power of two of slots, at most half full.
    slots: Vec<Slot>,
    /// Lines with a valid record, including shadowed duplicates.
    pub records: usize,
    /// How many lines may hold a plaintext credential (`trust::line_holds_plaintext`): valid
    /// records that store the token itself rather than its digest, and invalid lines whose
    /// first field is not a digest (docs/trust.md: such a file must not be readable by others).
    pub plaintext: usize,
}

/// One record in 64 bytes, a cache line: what a lookup reads after its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    digest: Digest,
    /// The expiry as Unix seconds and nanoseconds ([`NO_EXPIRY`] for none): the instant is
    /// all a check needs (the offset it was written with stays in the file).
    expires_seconds: i64,
    expires_nanos: u32,
    name_start: u64,
    name_len: u32,
    scopes: u32,
    /// The line number, saturated at `u32::MAX` (only ever shown).
    line: u32,
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() == 64);

/// `expires_nanos` of a record without expiry (a real one is below 10⁹).
const NO_EXPIRY: u32 = u32::MAX;

impl IndexEntry {
    fn expires(&self) -> Option<Timestamp> {
        if self.expires_nanos == NO_EXPIRY {
            return None;
        }
        // A valid timestamp can still be an instant outside the range of the time type —
        // `9999-12-31T23:30:00-01:00` is in the year 10000 in UTC — so such an expiry is
        // saturated, which keeps its side of every "now".
        let saturated = match self.expires_seconds > 0 {
            true => time::PrimitiveDateTime::MAX.assume_utc(),
            false => time::PrimitiveDateTime::MIN.assume_utc(),
        };
        Some(
            Timestamp::from_unix_timestamp(self.expires_seconds)
                .and_then(|at| at.replace_nanosecond(self.expires_nanos))
                .unwrap_or(saturated),
        )
    }

    fn expires_as(&self, other: &IndexEntry) -> bool {
        (self.expires_seconds, self.expires_nanos) == (other.expires_seconds, other.expires_nanos)
    }
}

/// The parts of an expiry as an [`IndexEntry`] holds them.
fn expiry_parts(expires: Option<Timestamp>) -> (i64, u32) {
    expires.map_or((0, NO_EXPIRY), |at| (at.unix_timestamp(), at.nanosecond()))
}

/// An index into `entries` and 32 more bits of the digest's hash, so that a probe reads an
/// entry (a likely cache miss) only when it is almost surely the one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    entry: u32,
    tag: u32,
}

const EMPTY: Slot = Slot {
    entry: u32::MAX,
    tag: 0,
};

/// From this size on (about 40 000 records), [`TokenIndex::load`] parses with two threads.
const PARALLEL_LOAD: usize = 4 << 20;

/// Entry indices are `u32`, one value being [`EMPTY`].
const MAX_ENTRIES: usize = u32::MAX as usize;

/// Asks the CPU to bring `item` into the cache; a hint only.
#[inline(always)]
fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults and changes no memory; the pointer is valid anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

/// A digest's hash: its four words folded and spread (Fibonacci hashing), so that even
/// hand-made digests that differ only at the end land far apart. The high half picks the
/// slot, the low half is the tag.
fn slot_hash(digest: &Digest) -> u64 {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&digest.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let folded =
        word(0) ^ word(1).rotate_left(16) ^ word(2).rotate_left(32) ^ word(3).rotate_left(48);
    folded.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl TokenIndex {
    /// The slot that holds `digest`, or the empty slot where it would go, and the tag.
    fn probe(&self, digest: &Digest) -> (usize, u32) {
        let mask = self.slots.len() - 1;
        let hash = slot_hash(digest);
        let tag = hash as u32;
        let mut slot = (hash >> 32) as usize & mask;
        loop {
            let found = self.slots[slot];
            if found == EMPTY
                || (found.tag == tag && self.entries[found.entry as usize].digest == *digest)
            {
                return (slot, tag);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Builds the index from the file's bytes, reporting invalid lines and duplicates.
    ///
    /// Two passes: the lines are parsed in order into `entries`, then the table is built
    /// with each slot fetched into the cache a few records ahead of its use (on a large
    /// file, waiting for a table slot in main memory was the largest single cost).
    ///
    /// A large file's lines are parsed by two threads, each taking half of the file; the
    /// halves are joined in file order before the table is built, so the result is the same.
    pub fn load(bytes: &[u8]) -> (TokenIndex, Vec<LoadProblem>) {
        let body = bytes.strip_prefix(format::BOM).unwrap_or(bytes);
        let split = (body.len() >= PARALLEL_LOAD)
            .then(|| memchr::memchr(b'\n', &body[body.len() / 2..]))
            .flatten()
            .map(|newline| body.len() / 2 + newline + 1);
        let Some(split) = split else {
            let mut loader = Loader::new(body.len());
            loader.lines(body, true);
            return loader.finish();
        };
        let (first, second) = body.split_at(split);
        let (mut loader, second) = std::thread::scope(|scope| {
            let second = scope.spawn(move || {
                let mut loader = Loader::new(second.len());
                loader.lines(second, true);
                loader
            });
            let mut loader = Loader::new(first.len());
            loader.lines(first, true);
            (loader, second.join())
        });
        match second {
            Ok(second) => loader.append(second),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        loader.finish()
    }

    /// [`TokenIndex::load`] of everything `reader` yields, read in chunks: the same index
    /// and problems, without holding the whole file in memory (for a 100 MB file, filling
    /// a fresh 100 MB buffer costs about as much as indexing it).
    pub fn read_from(reader: impl Read) -> io::Result<(TokenIndex, Vec<LoadProblem>)> {
        Ok(Loader::read(reader, true)?.finish())
    }

    /// [`TokenIndex::read_from`] of `first` followed by `second`, each read and parsed by a
    /// thread of its own and joined in file order, as [`TokenIndex::load`] does with the
    /// halves of a large file. `first` must end at a line end (or be empty); a BOM is
    /// skipped at the start of `first` only.
    pub fn read_from_parts(
        first: impl Read + Send,
        second: impl Read + Send,
    ) -> io::Result<(TokenIndex, Vec<LoadProblem>)> {
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(move || Loader::read(second, false));
            (Loader::read(first, true), second.join())
        });
        let second = match second {
            Ok(second) => second?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let mut loader = first?;
        loader.append(second);
        Ok(loader.finish())
    }

    /// Fills the table from `entries`; returns (duplicate, first) entry index pairs.
    fn build_slots(&mut self) -> Vec<(usize, usize)> {
        const AHEAD: usize = 8;
        self.slots = vec![EMPTY; (self.entries.len().max(4) * 2).next_power_of_two()];
        let mask = self.slots.len() - 1;
        let mut duplicates = Vec::new();
        for i in 0..self.entries.len() {
            if let Some(ahead) = self.entries.get(i + AHEAD) {
                prefetch(&self.slots[(slot_hash(&ahead.digest) >> 32) as usize & mask]);
            }
            let (slot, tag) = self.probe(&self.entries[i].digest);
            match self.slots[slot] {
                EMPTY => {
                    self.slots[slot] = Slot {
                        entry: i as u32,
                        tag,
                    }
                }
                first => duplicates.push((i, first.entry as usize)),
            }
        }
        duplicates
    }

    /// What `entry` grants, with its parts borrowed from this index.
    fn view(&self, entry: &IndexEntry) -> GrantRef<'_> {
        let start = usize::try_from(entry.name_start).unwrap_or(usize::MAX);
        let end = start.saturating_add(entry.name_len as usize);
        GrantRef {
            id: entry.digest.id(),
            name: self.names.get(start..end).unwrap_or_default(),
            scopes: &self.scope_sets[entry.scopes as usize],
            expires: entry.expires(),
            line: entry.line as usize,
        }
    }

    /// The entry that counts for `digest`.
    fn find(&self, digest: &Digest) -> Option<&IndexEntry> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.probe(digest).0] {
            EMPTY => None,
            found => Some(&self.entries[found.entry as usize]),
        }
    }

    pub fn get(&self, token: &Secret) -> Option<GrantRef<'_>> {
        self.get_digest(&token.digest())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The record that counts for a digest (e.g. one taken from another index's [`iter`]).
    ///
    /// [`iter`]: TokenIndex::iter
    pub fn get_digest(&self, digest: &Digest) -> Option<GrantRef<'_>> {
        self.find(digest).map(|entry| self.view(entry))
    }

    /// Whether every token of `older` is in this index with the same access (scopes and
    /// expiry; names and lines may differ) — i.e. replacing `older` by `self` takes nothing
    /// away.
    ///
    /// Most new versions of a file keep the old records in the same order (appended to,
    /// reloaded unchanged), so the entries are first compared side by side, in memory order;
    /// only from the first difference on is each remaining token looked up, with its slot
    /// fetched into the cache a few tokens ahead. (Looking up every token of a million-record
    /// file at random cost more than indexing it.)
    pub fn grants_all_of(&self, older: &TokenIndex) -> bool {
        const AHEAD: usize = 8;
        // Each index holds every scope set once, so an old set is the same as at most one
        // new set: compare their positions through this table.
        let positions: HashMap<&ScopeSet, u32> = self.scope_sets.iter().zip(0..).collect();
        let old_to_new: Vec<Option<u32>> = older
            .scope_sets
            .iter()
            .map(|set| positions.get(set).copied())
            .collect();
        let same_access = |new: &IndexEntry, old: &IndexEntry| {
            old_to_new[old.scopes as usize] == Some(new.scopes) && new.expires_as(old)
        };
        let same = self
            .entries
            .iter()
            .zip(&older.entries)
            .take_while(|(new, old)| new.digest == old.digest && same_access(new, old))
            .count();
        let rest = &older.entries[same..];
        if rest.is_empty() {
            return true;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        rest.iter().enumerate().all(|(i, old)| {
            if let Some(ahead) = rest.get(i + AHEAD) {
                prefetch(&self.slots[(slot_hash(&ahead.digest) >> 32) as usize & mask]);
            }
            self.find(&old.digest)
                .is_some_and(|new| same_access(new, old))
        })
    }

    /// Every token's digest with the record that counts for it (in file order).
    pub fn iter(&self) -> impl Iterator<Item = (&Digest, GrantRef<'_>)> + '_ {
        self.entries
            .iter()
            .map(|entry| (&entry.digest, self.view(entry)))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn check(&self, token: &Secret, required: &RequiredScopes, now: Timestamp) -> Decision<'_> {
        decide(!token.is_empty(), self.get(token), required, now)
    }
}

/// The first pass of [`TokenIndex::load`]: parses lines in order into entries.
struct Loader {
    index: TokenIndex,
    problems: Vec<LoadProblem>,
    /// Records usually share a handful of scope sets: each distinct field is parsed once,
    /// and fields that parse alike (`a,b` and `a, b`) share one set.
    fields: HashMap<Box<[u8]>, Result<u32, ScopeError>, FieldHash>,
    sets: HashMap<ScopeSet, u32>,
    /// Lines seen so far.
    number: usize,
}

impl Loader {
    fn new(size_hint: usize) -> Loader {
        Loader {
            index: TokenIndex {
                // A guess (records are rarely shorter); the vector grows if it is wrong.
                entries: Vec::with_capacity(size_hint / 80 + 1),
                ..TokenIndex::default()
            },
            problems: Vec::new(),
            fields: HashMap::default(),
            sets: HashMap::new(),
            number: 0,
        }
    }

    /// Parses everything `reader` yields, in chunks; `at_file_start`: a leading BOM is
    /// skipped.
    fn read(mut reader: impl Read, at_file_start: bool) -> io::Result<Loader> {
        let mut loader = Loader::new(0);
        let mut chunks = Chunks::new(&mut reader, at_file_start);
        while let Some((data, eof)) = chunks.next()? {
            let consumed = loader.lines(data, eof);
            chunks.consume(consumed);
            if eof {
                break;
            }
        }
        Ok(loader)
    }

    /// The position of `set` in the index's scope sets, added if new.
    fn intern(&mut self, set: ScopeSet) -> u32 {
        let next = self.index.scope_sets.len() as u32;
        *self.sets.entry(set).or_insert_with_key(|set| {
            self.index.scope_sets.push(set.clone());
            next
        })
    }

    /// The scope set of a scopes field (`None`: a one-field legacy line, `*`).
    fn scopes_of(&mut self, field: Option<&[u8]>) -> Result<u32, ScopeError> {
        let key = field.unwrap_or(b"*");
        if let Some(known) = self.fields.get(key) {
            return known.clone();
        }
        let parsed = ScopeSet::parse(key).map(|set| self.intern(set));
        self.fields.insert(key.into(), parsed.clone());
        parsed
    }

    /// Takes every complete line at the start of `data` (with `at_end`, the rest too, as
    /// the last line) and returns how many bytes that was.
    fn lines(&mut self, data: &[u8], at_end: bool) -> usize {
        let mut line_start = 0;
        let mut field_start = 0;
        let mut fields = format::Fields::default();
        // One pass over the bytes finds every TAB and line end.
        for at in memchr::memchr2_iter(b'\t', b'\n', data) {
            if data[at] == b'\t' {
                fields.push(&data[field_start..at]);
                field_start = at + 1;
                continue;
            }
            let raw = &data[line_start..at];
            // A CR before the LF belongs to the line ending, not to the line.
            let content = raw.strip_suffix(b"\r").unwrap_or(raw);
            self.line(
                content,
                std::mem::take(&mut fields),
                field_start - line_start,
            );
            (line_start, field_start) = (at + 1, at + 1);
        }
        if at_end && line_start < data.len() {
            // The last line has no ending (a CR there is part of it, as in the document).
            self.line(&data[line_start..], fields, field_start - line_start);
            return data.len();
        }
        line_start
    }

    /// One line without its ending; `fields` are those before the last TAB, and the last
    /// field starts at `last_field`.
    fn line<'a>(&mut self, content: &'a [u8], mut fields: format::Fields<'a>, last_field: usize) {
        self.number += 1;
        if !format::is_record_line(content) {
            return;
        }
        fields.push(&content[last_field.min(content.len())..]);
        let fields = match format::check_fields(fields, |field| self.scopes_of(field)) {
            Ok(fields) => fields,
            Err(why) => {
                // An invalid line grants nothing, but its first field may be a token.
                self.index.plaintext += usize::from(crate::trust::line_holds_plaintext(content));
                self.problems.push(LoadProblem::Invalid {
                    line: self.number,
                    why,
                });
                return;
            }
        };
        self.index.records += 1;
        self.index.plaintext += usize::from(fields.hashed.is_none());
        if self.index.entries.len() == MAX_ENTRIES {
            return; // beyond 4 billion tokens: not indexed
        }
        let name_start = self.index.names.len() as u64;
        match std::str::from_utf8(fields.name) {
            Ok(name) => self.index.names.push_str(name),
            Err(_) => self
                .index
                .names
                .push_str(&String::from_utf8_lossy(fields.name)),
        }
        let (expires_seconds, expires_nanos) = expiry_parts(fields.expires);
        self.index.entries.push(IndexEntry {
            digest: fields.digest(),
            expires_seconds,
            expires_nanos,
            name_start,
            // A name is part of one line, and a line is held in memory whole.
            name_len: u32::try_from(self.index.names.len() as u64 - name_start).unwrap_or(u32::MAX),
            scopes: fields.scopes,
            line: u32::try_from(self.number).unwrap_or(u32::MAX),
        });
    }

    /// Appends what `next` parsed of the part of the file that follows this one's.
    fn append(&mut self, next: Loader) {
        let Loader {
            index: next_index,
            problems: next_problems,
            number: next_lines,
            ..
        } = next;
        let before_lines = self.number;
        let before_names = self.index.names.len() as u64;
        let shift_line = |line: usize| line.saturating_add(before_lines).min(u32::MAX as usize);
        let scopes: Vec<u32> = next_index
            .scope_sets
            .into_iter()
            .map(|set| self.intern(set))
            .collect();
        self.index.names.push_str(&next_index.names);
        let room = MAX_ENTRIES - self.index.entries.len();
        self.index
            .entries
            .reserve_exact(next_index.entries.len().min(room));
        self.index
            .entries
            .extend(
                next_index
                    .entries
                    .into_iter()
                    .take(room)
                    .map(|entry| IndexEntry {
                        name_start: entry.name_start + before_names,
                        scopes: scopes[entry.scopes as usize],
                        line: shift_line(entry.line as usize) as u32,
                        ..entry
                    }),
            );
        self.index.records += next_index.records;
        self.index.plaintext += next_index.plaintext;
        self.number += next_lines;
        self.problems
            .extend(next_problems.into_iter().map(|problem| match problem {
                LoadProblem::Invalid { line, why } => LoadProblem::Invalid {
                    line: line + before_lines,
                    why,
                },
                // Found only by `finish`, once the parts are joined.
                duplicate @ LoadProblem::Duplicate { .. } => duplicate,
            }));
    }

    /// The second pass: the table, and the duplicates it finds.
    fn finish(self) -> (TokenIndex, Vec<LoadProblem>) {
        let Loader {
            mut index,
            mut problems,
            ..
        } = self;
        let duplicates = index.build_slots();
        if !duplicates.is_empty() {
            // Only the first record of a token counts: drop the others and build again.
            let mut shadowed = vec![false; index.entries.len()];
            for &(duplicate, first) in &duplicates {
                shadowed[duplicate] = true;
                let entry = &index.entries[duplicate];
                problems.push(LoadProblem::Duplicate {
                    line: entry.line as usize,
                    first: index.entries[first].line as usize,
                    id: entry.digest.id(),
                });
            }
            let mut position = 0;
            index.entries.retain(|_| {
                position += 1;
                !shadowed[position - 1]
            });
            index.build_slots();
            // In line order, as one pass would have reported them.
            problems.sort_by_key(|p| match p {
                LoadProblem::Invalid { line, .. } | LoadProblem::Duplicate { line, .. } => *line,
            });
        }
        (index, problems)
    }
}

/// How much of a file is held at a time when reading in chunks (more only for a longer line).
const CHUNK: usize = 256 * 1024;

/// A file read in chunks, for a line-by-line pass: each chunk starts with the unconsumed
/// rest of the one before (a line cut by the chunk boundary), and a leading BOM is skipped.
struct Chunks<'r, R> {
    reader: &'r mut R,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes read but not yet consumed.
    start: usize,
    end: usize,
    at_file_start: bool,
}

impl<'r, R: Read> Chunks<'r, R> {
    fn new(reader: &'r mut R, at_file_start: bool) -> Self {
        Chunks {
            reader,
            buf: vec![0u8; CHUNK],
            start: 0,
            end: 0,
            at_file_start,
        }
    }

    /// The unconsumed bytes after one more read, and whether the file ended.
    fn next(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        loop {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                // One line fills the buffer: make room for the rest of it.
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let read = match self.reader.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.end += read;
            let eof = read == 0;
            if self.at_file_start {
                if self.end < format::BOM.len() && !eof {
                    continue;
                }
                if self.buf[..self.end].starts_with(format::BOM) {
                    self.start = format::BOM.len();
                }
                self.at_file_start = false;
            }
            return Ok(Some((&self.buf[self.start..self.end], eof)));
        }
    }

    /// Marks the first `n` bytes of the last chunk as used.
    fn consume(&mut self, n: usize) {
        self.start += n;
    }
}

/// Equality that does not stop at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Recognizes the lines whose credential is a given token, without parsing them.
struct Matcher<'a> {
    token: &'a [u8],
    digest_hex: String,
    /// A credential never contains a TAB, so such a token matches no plaintext record.
    token_has_tab: bool,
}

/// `sha256:` and 64 hex digits.
const HASHED_LEN: usize = HASH_PREFIX.len() + 64;

impl<'a> Matcher<'a> {
    fn new(token: &'a Secret) -> Self {
        Matcher {
            token: token.expose(),
            digest_hex: token.digest().to_hex(),
            token_has_tab: token.expose().contains(&b'\t'),
        }
    }

    /// Whether the credential (the bytes before the first TAB) of `line` is the token, or
    /// `sha256:` and the token's digest. Only the length of a plaintext credential decides
    /// before all of its bytes are compared, as with [`constant_time_eq`].
    fn is_candidate(&self, line: &[u8]) -> bool {
        let ends_at = |len: usize| line.len() == len || line.get(len) == Some(&b'\t');
        if line.starts_with(HASH_PREFIX) {
            // A credential that starts with `sha256:` is compared as a digest, never as a
            // token (the prefix holds no TAB, so the credential starts with it too).
            ends_at(HASHED_LEN)
                && constant_time_eq(
                    &line[HASH_PREFIX.len()..HASHED_LEN],
                    self.digest_hex.as_bytes(),
                )
        } else {
            let len = self.token.len();
            !self.token_has_tab
                && line.len() >= len
                && ends_at(len)
                && constant_time_eq(&line[..len], self.token)
        }
    }

    /// The grant of `line` (number `number`) if it is a valid record of the token.
    fn grant(&self, line: &[u8], number: usize) -> Option<Grant> {
        if !self.is_candidate(line) {
            return None;
        }
        match format::parse_line(line) {
            Entry::Record(record) => Some(Grant::from_record(&record, number)),
            _ => None,
        }
    }
}

/// Finds the first valid record of `token` in the raw file bytes in one pass.
pub fn find_record(bytes: &[u8], token: &Secret) -> Option<Grant> {
    if token.is_empty() {
        return None;
    }
    let matcher = Matcher::new(token);
    let body = bytes.strip_prefix(format::BOM).unwrap_or(bytes);
    let (mut start, mut number) = (0, 0);
    for end in memchr::memchr_iter(b'\n', body) {
        number += 1;
        let raw = &body[start..end];
        start = end + 1;
        // A CR before the LF belongs to the line ending, not to the line.
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if let Some(grant) = matcher.grant(line, number) {
            return Some(grant);
        }
    }
    // The last line has no ending (a CR there is part of it, as in the document).
    matcher.grant(&body[start..], number + 1)
}

/// [`find_record`] over a reader, in chunks: a one-shot `check` of a 100 MB file neither
/// allocates nor touches 100 MB of memory, and stops reading at the record it looks for.
pub fn find_record_in(mut reader: impl Read, token: &Secret) -> io::Result<Option<Grant>> {
    if token.is_empty() {
        return Ok(None);
    }
    let matcher = Matcher::new(token);
    let mut chunks = Chunks::new(&mut reader, true);
    let mut number = 0;
    while let Some((data, eof)) = chunks.next()? {
        let mut consumed = 0;
        for newline in memchr::memchr_iter(b'\n', data) {
            number += 1;
            let raw = &data[consumed..newline];
            consumed = newline + 1;
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if let Some(grant) = matcher.grant(line, number) {
                return Ok(Some(grant));
            }
        }
        if eof {
            // The last line has no ending (a CR there is part of it, as in the document).
            return Ok(matcher.grant(&data[consumed..], number + 1));
        }
        chunks.consume(consumed);
    }
    Ok(None)
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

    /// The decision of the index and of the scan, which must agree (names included); the
    /// name is left out of what is returned, as the tests compare outcomes and IDs.
    fn both(file: &str, token: &str, scope: &str) -> Decision<'static> {
        let (index, _) = TokenIndex::load(file.as_bytes());
        let by_index = index.check(&secret(token), &req(scope), now());
        let found = find_record(file.as_bytes(), &secret(token));
        let by_scan = decide(
            !token.is_empty(),
            found.as_ref().map(Grant::view),
            &req(scope),
            now(),
        );
        assert_eq!(by_index, by_scan, "index and scan disagree");
        for chunk in [1, 3, 64, 4096] {
            let streamed = find_record_in(Trickle::new(file.as_bytes(), chunk), &secret(token));
            assert_eq!(
                streamed.unwrap(),
                found,
                "scan in chunks of {chunk} disagrees"
            );
        }
        match by_index {
            Decision::Granted { id, .. } => Decision::Granted { id, name: "" },
            Decision::Forbidden { id, .. } => Decision::Forbidden { id, name: "" },
            Decision::Unauthorized(why) => Decision::Unauthorized(why),
        }
    }

    /// A reader that hands out at most `chunk` bytes per read, to cut lines anywhere.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl<'a> Trickle<'a> {
        fn new(data: &'a [u8], chunk: usize) -> Self {
            Trickle { data, chunk }
        }
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    // The index against the document model (nasty files, a file large enough for the
    // two-thread load, any bytes) is checked in tests/it/fuzz_format.rs.

    #[test]
    fn long_lines_are_scanned_across_chunks() {
        let mut file = vec![b'#'; 3 * CHUNK + 5];
        file.extend_from_slice(b"\nfar\tread\n");
        let found = find_record_in(&file[..], &secret("far")).unwrap().unwrap();
        assert_eq!(found.line, 2);
        assert_eq!(find_record(&file, &secret("far")), Some(found));
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
        // Expiries whose instant lies past the time type's range, either way.
        let edges =
            "late\t*\t\t\t9999-12-31T23:30:00-01:00\nearly\t*\t\t\t0000-01-01T00:30:00+01:00\n";
        assert!(matches!(
            both(edges, "late", "read"),
            Decision::Granted { .. }
        ));
        assert!(matches!(
            both(edges, "early", "read"),
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

    #[test]
    fn access_is_compared_by_value_across_indexes() {
        let index = |text: &str| TokenIndex::load(text.as_bytes()).0;
        let old = index("a\tx, y\nb\tz\t\t\t2026-01-01T01:00:00+01:00\n");
        // Another spelling of the same scopes and of the same instant, records moved, a name
        // changed: nothing is taken away, whichever part of a two-part load a record is in.
        let same = "b\tz\tnew name\t\t2026-01-01T00:00:00Z\na\tx,y\n";
        assert!(index(same).grants_all_of(&old));
        let (first, second) = same.split_at(same.find('\n').unwrap() + 1);
        let (halves, _) = TokenIndex::read_from_parts(first.as_bytes(), second.as_bytes()).unwrap();
        assert!(halves.grants_all_of(&old));
        assert_eq!(halves.get(&secret("b")).unwrap().name, "new name");
        assert_eq!(
            halves.get(&secret("a")).unwrap().scopes,
            old.get(&secret("a")).unwrap().scopes
        );
        // Half a second later, or a scope less, is a change.
        assert!(!index("a\tx,y\nb\tz\t\t\t2026-01-01T00:00:00.5Z\n").grants_all_of(&old));
        assert!(!index("a\tx\nb\tz\t\t\t2026-01-01T00:00:00Z\n").grants_all_of(&old));
        assert!(!index("a\tx,y\nb\tz\n").grants_all_of(&old));
        let expires = old.get(&secret("b")).unwrap().expires;
        assert_eq!(
            expires,
            Some(parse_timestamp(b"2026-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(old.get(&secret("a")).unwrap().expires, None);
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
