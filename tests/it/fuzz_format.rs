//! Fuzz target 1: the parser round trip (docs/format.md "Lossless"), and the two readers built on
//! it (the `serve` index and the one-shot scan) agreeing with the document model.
//!
//! `cargo test --release --test it -- fuzz_format:: --nocapture` with `TOKENFILE_FUZZ_SECONDS=600`
//! for a long run (see RELIABILITY.md); CI runs `TOKENFILE_FUZZ_CASES` (default 256) cases
//! per property.

use std::collections::HashMap;
use std::io::{self, Read};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::support::fuzz::{Property, fuzz};
use tokenfile::decision::Grant;
use tokenfile::format::{
    self, Credential, Document, Entry, MAX_FIELDS, format_record, parse_line, with_field,
};
use tokenfile::index::{LoadProblem, TokenIndex};
use tokenfile::lines::{BOM, Ending};
use tokenfile::scan;
use tokenfile::scope::ScopeSet;
use tokenfile::token::{Digest, Secret};
use tokenfile::when::{format_timestamp, parse_timestamp};

/// Bytes that matter to the format, often; anything else sometimes. (A table over a plain
/// byte rather than a weighted union: generating kilobytes of these stays cheap.)
fn file_byte() -> impl Strategy<Value = u8> {
    const SPECIAL: &[u8] = b"\n\n\n\n\r\r\t\t\t\t #,*\xEF\xBB\xBF\0";
    any::<u8>().prop_map(|b| match usize::from(b) {
        i if i < SPECIAL.len() * 4 => SPECIAL[i / 4],
        i if i < 160 => b'a' + (i % 4) as u8,
        // The rest spread over all byte values (VT, FF, DEL, invalid UTF-8, ...).
        _ => b.wrapping_mul(167),
    })
}

fn any_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(file_byte(), 0..64),
        proptest::collection::vec(file_byte(), 0..2048),
    ]
}

/// Tokens the fields below are made of, so that records repeat and collide.
const TOKENS: &[&str] = &["a", "b", "tok", "tf_x", "sha256:", "#c", "a b"];

fn credential_field() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(TOKENS).prop_map(str::to_string),
        3 => proptest::sample::select(TOKENS)
            .prop_map(|t| format!("sha256:{}", Digest::of(t.as_bytes()).to_hex())),
        1 => Just(format!("sha256:{}", "A".repeat(64))),
        1 => Just("sha256:abc".to_string()),
        1 => Just(String::new()),
        1 => "[a-z\\x00-\\x1f ]{1,6}",
    ]
}

fn scopes_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("read".to_string()),
        Just("read, write".to_string()),
        Just("kafka:*".to_string()),
        Just("a*b".to_string()),
        Just("*,read".to_string()),
        Just(String::new()),
        Just(" ".to_string()),
        Just("a,,b".to_string()),
        "[a-z:.*_ -]{1,8}(,[a-z:.*_ -]{1,8}){0,2}",
    ]
}

fn time_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("2026-01-01T00:00:00Z".to_string()),
        Just("2020-01-01T00:00:00Z".to_string()),
        Just("2099-12-31T23:59:59.5+02:00".to_string()),
        Just("2026-02-30T00:00:00Z".to_string()),
        Just("yesterday".to_string()),
        (2000u32..2100, 1u32..13, 1u32..29, 0u32..24)
            .prop_map(|(y, m, d, h)| format!("{y}-{m:02}-{d:02}T{h:02}:00:00Z")),
    ]
}

/// A line shaped like a record (valid or not), a comment or a blank line.
fn record_line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (
            credential_field(),
            proptest::option::of(scopes_field()),
            proptest::option::of("[ -~]{0,8}"),
            proptest::option::of(time_field()),
            proptest::option::of(time_field()),
            0usize..3,
        )
            .prop_map(|(c, s, n, created, expires, extra)| {
                let mut fields = vec![c];
                let rest = [s, n.map(|n| n.replace('\t', " ")), created, expires];
                for f in rest.into_iter() {
                    match f {
                        Some(f) => fields.push(f),
                        None => break,
                    }
                }
                if fields.len() == MAX_FIELDS {
                    fields.extend(std::iter::repeat_n("x".to_string(), extra));
                }
                fields.join("\t")
            }),
        1 => "#[ -~\\t]{0,10}".prop_map(|s| s.clone()),
        1 => "[ \\t]{0,3}".prop_map(|s| s.clone()),
    ]
}

fn line_file() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec(
            (
                record_line(),
                prop_oneof![3 => Just("\n"), 1 => Just("\r\n"), 1 => Just("")],
            ),
            0..40,
        ),
    )
        .prop_map(|(bom, lines)| {
            let mut file = if bom { BOM.to_vec() } else { Vec::new() };
            for (line, end) in lines {
                file.extend_from_slice(line.as_bytes());
                file.extend_from_slice(end.as_bytes());
            }
            file
        })
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// A document written back without a change is the same bytes, three ways.
fn round_trip(input: &[u8]) -> Result<(), TestCaseError> {
    let doc = Document::parse(input);
    prop_assert_eq!(doc.to_bytes(), input);
    let mut written = Vec::new();
    doc.write_to(&mut written).unwrap();
    prop_assert_eq!(&written, input);
    prop_assert!(doc.is(input));
    // Classifying never panics, and a line is never reported with its credential.
    for (_, entry) in doc.entries() {
        if let Entry::Invalid(why) = entry {
            let text = why.to_string();
            prop_assert!(!text.contains("tok") && !text.contains("tf_x"), "{}", text);
        }
    }
    // Appending touches nothing before the new line.
    let mut grown = doc.clone();
    grown.push_line(b"new\tread".to_vec());
    let bytes = grown.to_bytes();
    prop_assert!(bytes.starts_with(input));
    let style = doc.preferred_ending().as_bytes();
    let mut expected = input.to_vec();
    if let Some(last) = doc.lines().last().filter(|l| l.ending == Ending::None) {
        // A trailing CR stays part of its line: it gets CRLF, not the file's style.
        expected.extend_from_slice(if last.content.ends_with(b"\r") {
            b"\r\n"
        } else {
            style
        });
    }
    expected.extend_from_slice(b"new\tread");
    expected.extend_from_slice(style);
    prop_assert_eq!(&bytes, &expected);
    let reparsed = Document::parse(&bytes);
    prop_assert_eq!(reparsed.lines().len(), doc.lines().len() + 1);
    // Every old line still says what it said.
    for (old, new) in doc.lines().iter().zip(reparsed.lines()) {
        prop_assert_eq!(&old.content, &new.content);
        prop_assert_eq!(old.entry(), new.entry());
    }
    Ok(())
}

/// The index as the document model defines it: first record of a token wins.
fn reference(bytes: &[u8]) -> (Vec<(Digest, Grant)>, usize, Vec<LoadProblem>) {
    let doc = Document::parse(bytes);
    let mut first: HashMap<Digest, usize> = HashMap::new();
    let (mut grants, mut records, mut problems) = (Vec::new(), 0, Vec::new());
    for (line, entry) in doc.entries() {
        match entry {
            Entry::Record(record) => {
                records += 1;
                let digest = record.digest();
                if let Some(&first) = first.get(&digest) {
                    problems.push(LoadProblem::Duplicate {
                        line,
                        first,
                        id: digest.id(),
                    });
                } else {
                    first.insert(digest, line);
                    grants.push((digest, Grant::from_record(&record, line)));
                }
            }
            Entry::Invalid(why) => problems.push(LoadProblem::Invalid { line, why }),
            Entry::Blank | Entry::Comment => {}
        }
    }
    (grants, records, problems)
}

/// At most `chunk` bytes per read, so that lines are cut anywhere.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// `TokenIndex::load`, `TokenIndex::read_from` and the one-shot scan agree with the model.
fn readers_agree(bytes: &[u8], chunk: usize) -> Result<(), TestCaseError> {
    let (want, records, problems) = reference(bytes);
    // The document's own quick count of invalid lines (what `mint` warns about).
    let invalid: Vec<usize> = problems
        .iter()
        .filter_map(|p| match p {
            LoadProblem::Invalid { line, .. } => Some(*line),
            LoadProblem::Duplicate { .. } => None,
        })
        .collect();
    prop_assert_eq!(Document::parse(bytes).invalid_lines(), invalid);
    let loaded = TokenIndex::load(bytes);
    let streamed = TokenIndex::read_from(Trickle(bytes, chunk)).unwrap();
    // Split as `serve` splits a large file: after the first line end past the middle.
    let split = memchr::memchr(b'\n', &bytes[bytes.len() / 2..])
        .map_or(bytes.len(), |at| bytes.len() / 2 + at + 1);
    let (first, second) = bytes.split_at(split);
    let halves =
        TokenIndex::read_from_parts(Trickle(first, chunk), Trickle(second, chunk)).unwrap();
    for (index, got_problems) in [loaded, streamed, halves] {
        let got: Vec<(Digest, Grant)> = index.iter().map(|(d, g)| (*d, g.to_grant())).collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(index.records, records);
        prop_assert_eq!(&got_problems, &problems);
        // The lookup table finds every entry, and nothing else.
        for (digest, grant) in &want {
            prop_assert_eq!(index.get_digest(digest), Some(grant.view()));
        }
        prop_assert_eq!(index.get_digest(&Digest::of(b"not in any file")), None);
    }
    for token in TOKENS.iter().chain(&["", "sha256:zz", "absent"]) {
        let secret = Secret::new(token.as_bytes().to_vec());
        let want = want
            .iter()
            .find(|(d, _)| *d == secret.digest() && !token.is_empty())
            .map(|(_, g)| g.clone());
        let found = scan::find_record(bytes, &secret).unwrap();
        prop_assert_eq!(&found, &want, "token {:?}", token);
        let scanned = scan::find_record(Trickle(bytes, chunk), &secret).unwrap();
        prop_assert_eq!(&scanned, &want, "token {:?} in chunks of {}", token, chunk);
    }
    Ok(())
}

#[test]
fn readers_agree_on_nasty_files() {
    let _alone = crate::support::serial();
    let mut files: Vec<Vec<u8>> = [
        &b""[..],
        b"\n",
        b"\r\n",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB\xBFtok\tread\r\nother\r\n",
        b"tok",
        b"tok\r",
        b"tok\t\r",
        b"tok\tread\r\r\n",
        b"a\tb\tc\td\te\tf\tg\n\t\t\n \t \n#x\ty\nz\t\xff\n",
        b"x\0y\tread\n\xff\xfe\tr\tn\xff\n",
        b"dup\tread\nother\nbad\t\ndup\twrite\nother\t*\tn\n",
    ]
    .map(<[u8]>::to_vec)
    .to_vec();
    // A line longer than the readers' 256 KiB chunks.
    let mut long = vec![b'x'; 800 << 10];
    long.extend_from_slice(b"\tread\nshort\n");
    files.push(long);
    // Past 4 MiB `TokenIndex::read_file` reads two halves in two threads (as
    // `read_from_parts` does here): duplicates across the halves, invalid lines in both, CRLF,
    // and a last line without an ending.
    let mut large = b"\xEF\xBB\xBF# header\r\n".to_vec();
    for i in 0.. {
        if large.len() > (4 << 20) + (64 << 10) {
            break;
        }
        let line = match i % 97 {
            0 => format!("bad{i}\t\r\n"),
            1 => format!("tok{}\tread\tdup\n", i % 1000),
            _ => format!("tok{i}\tread,write\tname {i}\t2026-01-01T00:00:00Z\n"),
        };
        large.extend_from_slice(line.as_bytes());
    }
    large.extend_from_slice(b"last\t*");
    files.push(large);
    for file in &files {
        // Tiny reads re-scan the unfinished line each time: keep them to small files.
        let chunks: &[usize] = if file.len() < 4096 {
            &[1, 2, 7, 4096]
        } else {
            &[100_000]
        };
        for &chunk in chunks {
            if let Err(e) = readers_agree(file, chunk) {
                panic!(
                    "{e} in {:?}",
                    String::from_utf8_lossy(&file[..file.len().min(80)])
                );
            }
        }
    }
}

#[test]
fn fuzz_parser_round_trip() {
    let _alone = crate::support::serial();
    fuzz(
        "parser",
        256,
        vec![
            Property::new("round trip of any bytes", any_file(), |f| round_trip(&f)),
            Property::new("round trip of record-shaped lines", line_file(), |f| {
                round_trip(&f)
            }),
            Property::new(
                "index, streamed index and scan agree with the document",
                (line_file(), 1usize..300),
                |(f, chunk)| readers_agree(&f, chunk),
            ),
            Property::new(
                "readers agree on any bytes",
                (any_file(), 16usize..512),
                |(f, chunk)| readers_agree(&f, chunk),
            ),
            Property::new(
                "a formatted record parses back to itself",
                (
                    proptest::sample::select(TOKENS),
                    any::<bool>(),
                    proptest::collection::vec("[A-Za-z0-9_.:-]{1,6}(:\\*)?", 1..4),
                    "[^\\t\\r\\n]{0,10}",
                    proptest::option::of(0i64..4_000_000_000),
                    proptest::option::of(0i64..4_000_000_000),
                ),
                |(token, hashed, scopes, name, created, expires)| {
                    if token.contains(' ') || token.starts_with('#') || token.starts_with("sha256:")
                    {
                        return Ok(());
                    }
                    let secret = Secret::new(token.as_bytes().to_vec());
                    let credential = if hashed {
                        Credential::hashed_field(&secret.digest())
                    } else {
                        token.as_bytes().to_vec()
                    };
                    let scopes = ScopeSet::parse(scopes.join(",").as_bytes())
                        .map_err(|e| fail(format!("generated scopes rejected: {e}")))?;
                    let stamp = |s: Option<i64>| {
                        s.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                    };
                    let (created, expires) = (stamp(created), stamp(expires));
                    let line =
                        format_record(&credential, &scopes, name.as_bytes(), created, expires);
                    let Entry::Record(record) = parse_line(&line) else {
                        return Err(fail(format!(
                            "{:?} does not parse",
                            String::from_utf8_lossy(&line)
                        )));
                    };
                    prop_assert_eq!(record.digest(), secret.digest());
                    prop_assert_eq!(record.credential.is_plaintext(), !hashed);
                    prop_assert_eq!(&record.scopes, &scopes);
                    prop_assert_eq!(&record.name, &name.as_bytes().to_vec());
                    prop_assert_eq!(record.created, created);
                    prop_assert_eq!(record.expires, expires);
                    for t in [created, expires].into_iter().flatten() {
                        prop_assert_eq!(parse_timestamp(format_timestamp(t).as_bytes()), Some(t));
                    }
                    Ok(())
                },
            ),
            Property::new(
                "with_field changes one field and keeps the others",
                (
                    proptest::collection::vec("[^\\t\\n]{0,5}", 1..6),
                    0usize..MAX_FIELDS,
                    "[^\\t\\n]{0,5}",
                ),
                |(fields, index, value)| {
                    let content = fields.join("\t");
                    let changed = with_field(content.as_bytes(), index, value.as_bytes());
                    let parts: Vec<&[u8]> = changed.split(|&b| b == b'\t').collect();
                    prop_assert_eq!(parts[index], value.as_bytes());
                    for (i, old) in fields.iter().enumerate() {
                        if i != index {
                            prop_assert_eq!(parts[i], old.as_bytes());
                        }
                    }
                    prop_assert_eq!(parts.len(), fields.len().max(index + 1));
                    Ok(())
                },
            ),
        ],
    );
    // Keep the module's imports honest.
    let _ = format::HASH_PREFIX;
}
