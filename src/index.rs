//! The index `serve` answers from (docs/protocols.md): every record of a file keyed by the
//! SHA-256 digest of its token, the first record of a token winning (docs/format.md), with
//! the invalid lines and duplicates found on the way.
//!
//! How it is laid out, and why, is in [`TokenIndex`]; what it costs is measured by
//! `bench/run.sh` (BENCHMARKS.md).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use sha2::{Digest as _, Sha256};

use crate::decision::{Decision, GrantRef, decide};
use crate::format::{self, Duplicate, FieldHash, Invalid};
use crate::lines;
use crate::scope::{RequiredScopes, ScopeError, ScopeSet};
use crate::token::{Digest, Id, Secret};
use crate::when::Timestamp;

/// A problem found while loading: an invalid line or a duplicate token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadProblem {
    /// An invalid line, which grants nothing.
    Invalid {
        /// Its 1-based number.
        line: usize,
        /// What is wrong with it.
        why: Invalid,
    },
    /// A later record of a token that an earlier line has (see [`format::Duplicate`]).
    Duplicate {
        /// Its 1-based number.
        line: usize,
        /// The 1-based number of the line that counts.
        first: usize,
        /// The token's ID.
        id: Id,
    },
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadProblem::Invalid { line, why } => write!(f, "line {line}: invalid, ignored: {why}"),
            LoadProblem::Duplicate { line, first, id } => {
                let duplicate = Duplicate {
                    line: *line,
                    first: *first,
                    id: *id,
                };
                write!(f, "line {line}: {duplicate}")
            }
        }
    }
}

/// All records of a file keyed by token digest; the first record of a token wins.
///
/// Laid out for a small reload peak (`serve` holds two of these during a reload, the one in
/// use and the new one) and few cache misses: the lines are split in place, each distinct
/// scopes field is parsed once and shared, the names sit one after the other in one string,
/// and the records are fixed-size entries in file order behind a small open-addressing table
/// keyed by the digest (already a uniform hash, so it is folded, not re-hashed). What that
/// costs and saves is measured in BENCHMARKS.md.
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
    /// Records kept by `rotate --grace` after a new one replaced them (the
    /// [`Replaced`](format::Replaced) markers): they expire on purpose, so no alert is due.
    replaced: Vec<Box<str>>,
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
    pub fn load(bytes: &[u8]) -> (TokenIndex, Vec<LoadProblem>) {
        let (_, body) = lines::strip_bom(bytes);
        let mut loader = Loader::new(body.len());
        lines::split(body, true, |content, _| loader.line(content));
        loader.finish()
    }

    /// [`TokenIndex::load`] of everything `reader` yields, read in chunks: the same index
    /// and problems, without holding the whole file in memory (for a 100 MB file, filling
    /// a fresh 100 MB buffer costs about as much as indexing it).
    pub fn read_from(reader: impl Read) -> io::Result<(TokenIndex, Vec<LoadProblem>)> {
        Ok(Loader::read(reader, true)?.finish())
    }

    /// [`TokenIndex::read_from`] of `first` followed by `second`, each read and parsed by a
    /// thread of its own and joined in file order, as [`TokenIndex::read_file`] does with the
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
        // `name_start..+name_len` is where `Loader::line` put the name: within `names` (a
        // string in memory, whose offsets fit a usize) and on character boundaries.
        let start = entry.name_start as usize;
        let name = &self.names[start..start + entry.name_len as usize];
        GrantRef {
            id: entry.digest.id(),
            name,
            scopes: &self.scope_sets[entry.scopes as usize],
            expires: entry.expires(),
            line: entry.line as usize,
        }
    }

    /// The entry that counts for `digest`.
    fn find(&self, digest: &Digest) -> Option<&IndexEntry> {
        self.position(digest).map(|at| &self.entries[at])
    }

    /// The record that counts for `token`.
    pub fn get(&self, token: &Secret) -> Option<GrantRef<'_>> {
        self.get_digest(&token.digest())
    }

    /// How many tokens the index holds (a token once, however many records it has).
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
    /// fetched into the cache a few tokens ahead (looking up every token at random cost more
    /// than indexing the file: BENCHMARKS.md).
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

    /// Whether the record of `digest` was replaced by `rotate --grace` and is only kept for
    /// the grace period: its expiry is planned, not a surprise to warn about.
    pub fn is_replaced(&self, digest: &Digest) -> bool {
        !self.replaced.is_empty() && {
            let id = digest.id();
            self.replaced.iter().any(|old| **old == *id.as_str())
        }
    }

    /// Whether the index holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The decision for `token` asking for `required` at `now` (an empty token is none).
    pub fn check(&self, token: &Secret, required: &RequiredScopes, now: Timestamp) -> Decision<'_> {
        self.check_at(token, required, now).0
    }

    /// [`TokenIndex::check`], with the position of the record that decided (in [`iter`]'s
    /// order, for figures kept beside the index, e.g. when it was last used) and its expiry:
    /// one lookup for all three.
    ///
    /// [`iter`]: TokenIndex::iter
    pub fn check_at(
        &self,
        token: &Secret,
        required: &RequiredScopes,
        now: Timestamp,
    ) -> (Decision<'_>, Option<usize>, Option<Timestamp>) {
        let position = (!token.is_empty())
            .then(|| self.position(&token.digest()))
            .flatten();
        let grant = position.map(|at| self.view(&self.entries[at]));
        let expires = grant.and_then(|grant| grant.expires);
        (
            decide(!token.is_empty(), grant, required, now),
            position,
            expires,
        )
    }

    /// The position of a record that counts for `digest`, in [`TokenIndex::iter`]'s order.
    pub fn position(&self, digest: &Digest) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.probe(digest).0] {
            EMPTY => None,
            found => Some(found.entry as usize),
        }
    }

    /// The soonest expiry among the records still active at `now`, and how many of them
    /// expire before `within` (for `/metrics`).
    pub fn expiring(&self, now: Timestamp, within: Timestamp) -> (Option<Timestamp>, usize) {
        let mut soonest = None;
        let mut count = 0;
        for entry in &self.entries {
            let Some(expires) = entry.expires().filter(|&at| at > now) else {
                continue;
            };
            if self.is_replaced(&entry.digest) {
                continue;
            }
            count += usize::from(expires <= within);
            if soonest.is_none_or(|s| expires < s) {
                soonest = Some(expires);
            }
        }
        (soonest, count)
    }
}

/// From this size on (about 40 000 records) a file is read and indexed by two threads.
const TWO_READERS: u64 = 4 << 20;
/// How far past the middle of the file its split looks for a line end.
const SPLIT_WINDOW: usize = 64 * 1024;

/// What [`TokenIndex::read_file`] read.
#[derive(Debug)]
pub struct Indexed {
    /// The records.
    pub index: TokenIndex,
    /// The invalid lines and duplicates, in line order.
    pub problems: Vec<LoadProblem>,
    /// Tells versions of the file apart: the SHA-256 of its bytes, or for a file read as two
    /// halves the SHA-256 of the halves' digests (as good, since the split depends only on
    /// the bytes).
    pub content: Digest,
    /// How many bytes were read.
    pub len: u64,
}

impl TokenIndex {
    /// The index of the first `size` bytes of `file` (its size when it was stat'ed): what
    /// `serve` loads. The file is read by offset in chunks, never held whole; a large one is
    /// read as two halves at once, split at a line end ([`TokenIndex::read_from_parts`]).
    pub fn read_file(file: &File, size: u64) -> io::Result<Indexed> {
        let Some(split) = split_point(file, size)? else {
            let mut part = Part::new(file, 0, Some(size));
            let (index, problems) = TokenIndex::read_from(&mut part)?;
            return Ok(Indexed {
                index,
                problems,
                content: part.digest(),
                len: part.len,
            });
        };
        let (mut first, mut second) = (
            Part::new(file, 0, Some(split)),
            Part::new(file, split, Some(size)),
        );
        let (index, problems) = TokenIndex::read_from_parts(&mut first, &mut second)?;
        let mut both = Sha256::new();
        both.update(first.digest().0);
        both.update(second.digest().0);
        Ok(Indexed {
            index,
            problems,
            content: Digest(both.finalize().into()),
            len: first.len + second.len,
        })
    }
}

/// Just after the first line end past the middle of a large file; `None` for a small file
/// or one without a line end near its middle (read whole then).
fn split_point(file: &File, size: u64) -> io::Result<Option<u64>> {
    if size < TWO_READERS {
        return Ok(None);
    }
    let middle = size / 2;
    let mut window = vec![0u8; SPLIT_WINDOW];
    let n = file.read_at(&mut window, middle)?;
    Ok(memchr::memchr(b'\n', &window[..n]).map(|at| middle + at as u64 + 1))
}

/// A part of a file read from `pos` up to `end` (or its end), by offset — so that two
/// threads can read one descriptor — hashed and counted on the way.
struct Part<'f> {
    file: &'f File,
    pos: u64,
    end: Option<u64>,
    sha256: Sha256,
    len: u64,
}

impl<'f> Part<'f> {
    fn new(file: &'f File, pos: u64, end: Option<u64>) -> Self {
        Part {
            file,
            pos,
            end,
            sha256: Sha256::new(),
            len: 0,
        }
    }

    fn digest(&self) -> Digest {
        Digest(self.sha256.clone().finalize().into())
    }
}

impl Read for Part<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.end.map_or(buf.len() as u64, |end| end - self.pos);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.sha256.update(&buf[..n]);
        self.pos += n as u64;
        self.len += n as u64;
        Ok(n)
    }
}

/// The first pass of every load: parses lines in order into entries.
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
    fn read(reader: impl Read, at_file_start: bool) -> io::Result<Loader> {
        let mut loader = Loader::new(0);
        lines::read(reader, at_file_start, |content, _| loader.line(content))?;
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

    /// One line without its ending (the walk over the lines never stops).
    fn line(&mut self, content: &[u8]) -> ControlFlow<()> {
        self.number += 1;
        if !format::is_record_line(content) {
            if let Some(marker) = format::Replaced::parse(content) {
                self.index
                    .replaced
                    .push(marker.old.to_ascii_lowercase().into());
            }
            return ControlFlow::Continue(());
        }
        let fields = match format::split_record(content, |field| self.scopes_of(field)) {
            Ok(fields) => fields,
            Err(why) => {
                // An invalid line grants nothing, but its first field may be a token.
                self.index.plaintext += usize::from(crate::trust::line_holds_plaintext(content));
                self.problems.push(LoadProblem::Invalid {
                    line: self.number,
                    why,
                });
                return ControlFlow::Continue(());
            }
        };
        self.index.records += 1;
        self.index.plaintext += usize::from(fields.hashed.is_none());
        if self.index.entries.len() == MAX_ENTRIES {
            return ControlFlow::Continue(()); // beyond 4 billion tokens: not indexed
        }
        let name_start = self.index.names.len() as u64;
        let name = String::from_utf8_lossy(fields.name);
        // A name longer than `name_len` can say (4 GiB on one line) is cut at a character.
        let mut name_len = name.len().min(u32::MAX as usize);
        while !name.is_char_boundary(name_len) {
            name_len -= 1;
        }
        self.index.names.push_str(&name[..name_len]);
        let (expires_seconds, expires_nanos) = expiry_parts(fields.expires);
        self.index.entries.push(IndexEntry {
            digest: fields.digest(),
            expires_seconds,
            expires_nanos,
            name_start,
            name_len: name_len as u32,
            scopes: fields.scopes,
            line: u32::try_from(self.number).unwrap_or(u32::MAX),
        });
        ControlFlow::Continue(())
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
        self.index.replaced.extend(next_index.replaced);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::when::parse_timestamp;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
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

    #[test]
    fn a_large_file_read_as_two_halves_is_indexed_as_one() {
        use std::io::Write;
        let mut bytes = b"\xEF\xBB\xBFdup\tread\r\n".to_vec();
        let mut i = 0;
        while bytes.len() <= TWO_READERS as usize + 4096 {
            let line = match i % 50 {
                0 => format!("bad{i}\t\n"),
                _ => format!("tok{i}\tread\tname {i}\n"),
            };
            bytes.extend_from_slice(line.as_bytes());
            i += 1;
        }
        bytes.extend_from_slice(b"dup\t*\nlast\twrite");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let size = bytes.len() as u64;
        assert!(
            split_point(&file, size).unwrap().is_some(),
            "read as two halves"
        );
        let read = TokenIndex::read_file(&file, size).unwrap();
        let (whole, problems) = TokenIndex::load(&bytes);
        assert_eq!(read.problems, problems);
        assert_eq!(read.len, size);
        assert_eq!(read.index.len(), whole.len());
        assert!(read.index.grants_all_of(&whole) && whole.grants_all_of(&read.index));
        let names: Vec<_> = read.index.iter().map(|(_, g)| g.to_grant()).collect();
        let want: Vec<_> = whole.iter().map(|(_, g)| g.to_grant()).collect();
        assert_eq!(names, want);
        // The duplicate in the second half of the first line's token is reported there.
        assert!(matches!(
            problems.last(),
            Some(LoadProblem::Duplicate { first: 1, .. })
        ));
        // Another version of the file has another content digest; the same one the same.
        assert_eq!(
            TokenIndex::read_file(&file, size).unwrap().content,
            read.content
        );
        assert_ne!(
            TokenIndex::read_file(&file, size - 1).unwrap().content,
            read.content
        );
    }
}
