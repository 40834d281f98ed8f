//! The check decision (SPEC §1 scopes, expiry, first-record-counts), shared by `tokenfile
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
use std::sync::Arc;

use crate::format::{self, Entry, HASH_PREFIX, Invalid, Record};
use crate::scope::{RequiredScopes, ScopeError, ScopeSet};
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

    /// Whether both grant exactly the same access (scopes and expiry); names and lines may
    /// differ.
    pub fn grants_same_as(&self, other: &Grant) -> bool {
        (Arc::ptr_eq(&self.scopes, &other.scopes) || self.scopes == other.scopes)
            && self.expires == other.expires
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
///
/// Built for a million records in a fraction of a second: the lines are split in place
/// (nothing is copied but names), each distinct scopes field is parsed once and shared, and
/// the grants sit in one vector in file order behind a small open-addressing table keyed by
/// the digest (already a uniform hash, so it is folded, not re-hashed).
#[derive(Debug, Default, Clone)]
pub struct TokenIndex {
    /// The first record of each token, in file order.
    entries: Vec<(Digest, Grant)>,
    /// Linear probing over a power of two of slots, at most half full.
    slots: Vec<Slot>,
    /// Lines with a valid record, including shadowed duplicates.
    pub records: usize,
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

/// A fast hash for scopes fields while loading: they come from the file, whose writer can
/// grant itself anything anyway, so there is no flooding to defend against.
#[derive(Default, Clone, Copy)]
struct FieldHasher(u64);

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

type FieldHash = std::hash::BuildHasherDefault<FieldHasher>;

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
                || (found.tag == tag && self.entries[found.entry as usize].0 == *digest)
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
        let before_second = memchr::memchr_iter(b'\n', first).count();
        let (mut loader, second) = std::thread::scope(|scope| {
            let second = scope.spawn(move || {
                let mut loader = Loader::new(second.len());
                loader.number = before_second;
                loader.lines(second, true);
                loader
            });
            // The first half keeps room for the second's records, appended below.
            let mut loader = Loader::new(body.len());
            loader.lines(first, true);
            (loader, second.join())
        });
        let second = match second {
            Ok(second) => second,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        loader.index.records += second.index.records;
        loader.index.entries.extend(second.index.entries);
        loader.problems.extend(second.problems);
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
        // The second part's lines were numbered from its own start.
        let before = loader.number;
        loader.index.records += second.index.records;
        loader
            .index
            .entries
            .extend(second.index.entries.into_iter().map(|(digest, grant)| {
                let line = grant.line + before;
                (digest, Grant { line, ..grant })
            }));
        loader
            .problems
            .extend(second.problems.into_iter().map(|problem| match problem {
                LoadProblem::Invalid { line, why } => LoadProblem::Invalid {
                    line: line + before,
                    why,
                },
                // Found only by `finish`, after the parts are joined.
                duplicate @ LoadProblem::Duplicate { .. } => duplicate,
            }));
        Ok(loader.finish())
    }

    /// Fills the table from `entries`; returns (duplicate, first) entry index pairs.
    fn build_slots(&mut self) -> Vec<(usize, usize)> {
        const AHEAD: usize = 8;
        self.slots = vec![EMPTY; (self.entries.len().max(4) * 2).next_power_of_two()];
        let mask = self.slots.len() - 1;
        let mut duplicates = Vec::new();
        for i in 0..self.entries.len() {
            if let Some((ahead, _)) = self.entries.get(i + AHEAD) {
                prefetch(&self.slots[(slot_hash(ahead) >> 32) as usize & mask]);
            }
            let (slot, tag) = self.probe(&self.entries[i].0);
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

    pub fn get(&self, token: &Secret) -> Option<&Grant> {
        self.get_digest(&token.digest())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The record that counts for a digest (e.g. one taken from another index's [`iter`]).
    ///
    /// [`iter`]: TokenIndex::iter
    pub fn get_digest(&self, digest: &Digest) -> Option<&Grant> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.probe(digest).0] {
            EMPTY => None,
            found => Some(&self.entries[found.entry as usize].1),
        }
    }

    /// Whether every token of `older` is in this index with the same access (scopes and
    /// expiry; see [`Grant::grants_same_as`]) — i.e. replacing `older` by `self` takes
    /// nothing away.
    ///
    /// Most new versions of a file keep the old records in the same order (appended to,
    /// reloaded unchanged), so the entries are first compared side by side, in memory order;
    /// only from the first difference on is each remaining token looked up, with its slot
    /// fetched into the cache a few tokens ahead. (Looking up every token of a million-record
    /// file at random cost more than indexing it.)
    pub fn grants_all_of(&self, older: &TokenIndex) -> bool {
        const AHEAD: usize = 8;
        let same = self
            .entries
            .iter()
            .zip(&older.entries)
            .take_while(|((new_digest, new), (old_digest, old))| {
                new_digest == old_digest && new.grants_same_as(old)
            })
            .count();
        let rest = &older.entries[same..];
        if rest.is_empty() {
            return true;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        rest.iter().enumerate().all(|(i, (digest, old))| {
            if let Some((ahead, _)) = rest.get(i + AHEAD) {
                prefetch(&self.slots[(slot_hash(ahead) >> 32) as usize & mask]);
            }
            self.get_digest(digest)
                .is_some_and(|new| new.grants_same_as(old))
        })
    }

    /// Every token's digest with the record that counts for it (in file order).
    pub fn iter(&self) -> impl Iterator<Item = (&Digest, &Grant)> + '_ {
        self.entries.iter().map(|(digest, grant)| (digest, grant))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn check(&self, token: &Secret, required: &RequiredScopes, now: Timestamp) -> Decision {
        decide(!token.is_empty(), self.get(token), required, now)
    }
}

/// The first pass of [`TokenIndex::load`]: parses lines in order into entries.
struct Loader {
    index: TokenIndex,
    problems: Vec<LoadProblem>,
    /// Records usually share a handful of scope sets: each distinct field is parsed once
    /// and the result shared.
    scope_sets: HashMap<Box<[u8]>, Result<Arc<ScopeSet>, ScopeError>, FieldHash>,
    all: Arc<ScopeSet>,
    no_name: Arc<str>,
    /// Lines seen so far.
    number: usize,
}

impl Loader {
    fn new(size_hint: usize) -> Loader {
        Loader {
            index: TokenIndex {
                // A guess (records are rarely shorter); the vector grows if it is wrong.
                entries: Vec::with_capacity(size_hint / 80 + 1),
                slots: Vec::new(),
                records: 0,
            },
            problems: Vec::new(),
            scope_sets: HashMap::default(),
            all: Arc::new(ScopeSet::all()),
            no_name: Arc::from(""),
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
        let (all, scope_sets) = (&self.all, &mut self.scope_sets);
        let fields = format::check_fields(fields, |field| match field {
            None => Ok(all.clone()),
            Some(field) => match scope_sets.get(field) {
                Some(parsed) => parsed.clone(),
                None => {
                    let parsed = ScopeSet::parse(field).map(Arc::new);
                    scope_sets.insert(field.into(), parsed.clone());
                    parsed
                }
            },
        });
        let fields = match fields {
            Ok(fields) => fields,
            Err(why) => {
                self.problems.push(LoadProblem::Invalid {
                    line: self.number,
                    why,
                });
                return;
            }
        };
        self.index.records += 1;
        if self.index.entries.len() == MAX_ENTRIES {
            return; // beyond 4 billion tokens: not indexed
        }
        let digest = fields.digest();
        let name = match fields.name {
            [] => self.no_name.clone(),
            name => match std::str::from_utf8(name) {
                Ok(name) => Arc::from(name),
                Err(_) => Arc::from(&*String::from_utf8_lossy(name)),
            },
        };
        self.index.entries.push((
            digest,
            Grant {
                id: digest.id(),
                name,
                scopes: fields.scopes,
                expires: fields.expires,
                line: self.number,
            },
        ));
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
                let (digest, grant) = &index.entries[duplicate];
                problems.push(LoadProblem::Duplicate {
                    line: grant.line,
                    first: index.entries[first].1.line,
                    id: digest.id(),
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

    fn both(file: &str, token: &str, scope: &str) -> Decision {
        let (index, _) = TokenIndex::load(file.as_bytes());
        let by_index = index.check(&secret(token), &req(scope), now());
        let found = find_record(file.as_bytes(), &secret(token));
        let by_scan = decide(!token.is_empty(), found.as_ref(), &req(scope), now());
        assert_eq!(by_index, by_scan, "index and scan disagree");
        for chunk in [1, 3, 64, 4096] {
            let streamed = find_record_in(Trickle::new(file.as_bytes(), chunk), &secret(token));
            assert_eq!(
                streamed.unwrap(),
                found,
                "scan in chunks of {chunk} disagrees"
            );
        }
        by_index
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
    // two-thread load, any bytes) is checked in tests/fuzz_format.rs.

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
