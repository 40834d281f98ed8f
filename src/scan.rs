//! The one-shot lookup of `tokenfile check` and `tokenfile id`: a single pass over the file
//! in chunks that fully parses only the lines whose credential is the presented token (for
//! one check, building the whole [`TokenIndex`](crate::index::TokenIndex) would cost more
//! than the answer). It gives the same record as the index: the first valid one
//! (docs/format.md).
//!
//! The presented token is compared by digest with `sha256:` records, never to the stored
//! string itself, and with plaintext records without early exit.

use std::io::{self, Read};
use std::ops::ControlFlow;

use crate::decision::Grant;
use crate::format::{self, Entry, HASH_PREFIX};
use crate::lines;
use crate::token::Secret;

/// Equality that does not stop at the first differing byte (only a difference in length
/// does: a credential's length is no secret). Not `subtle`'s `ct_eq`, which `Secret` uses:
/// it reads each byte through an optimization barrier, and this runs on every line of the
/// file — a one-shot `check` of 100k hashed records took 4× as long with it (BENCHMARKS.md);
/// this fold has no branch to take early and is vectorized.
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

/// The first valid record of `token` in everything `reader` yields, read in chunks: a
/// one-shot `check` of a 100 MB file neither allocates nor touches 100 MB of memory, and
/// stops reading at the record it looks for.
pub fn find_record(reader: impl Read, token: &Secret) -> io::Result<Option<Grant>> {
    if token.is_empty() {
        return Ok(None);
    }
    let matcher = Matcher::new(token);
    let mut number = 0;
    let mut found = None;
    lines::read(reader, true, |line, _| {
        number += 1;
        found = matcher.grant(line, number);
        match found {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    })?;
    Ok(found)
}

/// Which of `candidates` are the credential of some line of everything `reader` yields
/// (valid or not: a token is a token): for words a person gave where a scope or a name goes,
/// which may be a legacy token of no recognizable shape. One pass to the end.
pub fn credentials_among(reader: impl Read, candidates: &[Secret]) -> io::Result<Vec<bool>> {
    let matchers: Vec<Matcher<'_>> = candidates.iter().map(Matcher::new).collect();
    let mut found = vec![false; candidates.len()];
    if candidates.iter().all(Secret::is_empty) {
        return Ok(found);
    }
    lines::read(reader, true, |line, _| {
        for (matcher, found) in matchers.iter().zip(found.iter_mut()) {
            *found |= !matcher.token.is_empty() && matcher.is_candidate(line);
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, Unauthorized, decide};
    use crate::index::{LoadProblem, TokenIndex};
    use crate::lines::Trickle;
    use crate::scope::RequiredScopes;
    use crate::token::Digest;
    use crate::when::{Timestamp, parse_timestamp};
    use proptest::prelude::*;

    fn req(s: &str) -> RequiredScopes {
        RequiredScopes::parse(&[s]).unwrap()
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    #[test]
    fn words_that_are_credentials_of_the_file() {
        let file = format!(
            "plainDupToken123\tread\nsha256:{}\twrite\ninvalidTok\t!!\n",
            crate::token::Digest::of(b"hashed-legacy").to_hex()
        );
        let words = [
            "read",
            "plainDupToken123",
            "hashed-legacy",
            "invalidTok",
            "",
        ]
        .map(secret);
        let found = credentials_among(file.as_bytes(), &words).unwrap();
        assert_eq!(found, [false, true, true, true, false]);
    }

    fn now() -> Timestamp {
        parse_timestamp(b"2026-06-01T00:00:00Z").unwrap()
    }

    /// The decision of the index and of the scan, which must agree (names included); the
    /// name is left out of what is returned, as the tests compare outcomes and IDs.
    fn both(file: &str, token: &str, scope: &str) -> Decision<'static> {
        let (index, _) = TokenIndex::load(file.as_bytes());
        let by_index = index.check(&secret(token), &req(scope), now());
        let found = find_record(file.as_bytes(), &secret(token)).unwrap();
        let by_scan = decide(
            !token.is_empty(),
            found.as_ref().map(Grant::view),
            &req(scope),
            now(),
        );
        assert_eq!(by_index, by_scan, "index and scan disagree");
        for chunk in [1, 3, 64, 4096] {
            let streamed = find_record(Trickle(file.as_bytes(), chunk), &secret(token));
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

    // The index against the document model (nasty files, a file large enough for the
    // two-thread load, any bytes) is checked in tests/it/fuzz_format.rs.

    #[test]
    fn long_lines_are_scanned_across_chunks() {
        let mut file = vec![b'#'; 3 * 256 * 1024 + 5];
        file.extend_from_slice(b"\nfar\tread\n");
        let found = find_record(&file[..], &secret("far")).unwrap().unwrap();
        assert_eq!(found.line, 2);
        let found = find_record(Trickle(&file, 4096), &secret("far")).unwrap();
        assert_eq!(found.map(|grant| grant.line), Some(2));
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
