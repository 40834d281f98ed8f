//! The line rules of the token file (docs/format.md, "Lines"), written once for every reader:
//! the lossless [`Document`](crate::format::Document), the index `serve` builds
//! ([`crate::index`]) and the one-shot scan of `check` ([`crate::scan`]).
//!
//! - A UTF-8 byte order mark at the very start of the file is not part of line 1.
//! - A line ends at LF; a CR just before that LF belongs to the ending (CRLF), any other CR
//!   belongs to the line (a lone CR is no line end).
//! - The last line may have no ending; a CR at its end then stays part of it.
//!
//! [`split`] applies them to bytes in memory, [`read`] to a reader in chunks (a 100 MB file
//! is never held whole, and a reader may stop at the line it was looking for).

use std::io::{self, Read};
use std::ops::ControlFlow;

/// The UTF-8 byte order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How a line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `\n`.
    Lf,
    /// `\r\n`.
    CrLf,
    /// Only the last line of a file can lack an ending.
    None,
}

impl Ending {
    /// The ending's bytes (none for [`Ending::None`]).
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Ending::Lf => b"\n",
            Ending::CrLf => b"\r\n",
            Ending::None => b"",
        }
    }
}

/// Whether `bytes` start with a BOM, and the bytes after it.
pub fn strip_bom(bytes: &[u8]) -> (bool, &[u8]) {
    match bytes.strip_prefix(BOM) {
        Some(rest) => (true, rest),
        None => (false, bytes),
    }
}

/// Hands every line at the start of `data` to `line` (its content without the ending, and
/// the ending) — with `at_end` the rest too, as the last line — and returns how many bytes
/// that was, and whether `line` stopped the walk (by returning `Break`; the count then ends
/// after the line that stopped it).
pub fn split<'a>(
    data: &'a [u8],
    at_end: bool,
    mut line: impl FnMut(&'a [u8], Ending) -> ControlFlow<()>,
) -> (usize, bool) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', data) {
        let raw = &data[start..end];
        start = end + 1;
        let flow = match raw.strip_suffix(b"\r") {
            Some(content) => line(content, Ending::CrLf),
            None => line(raw, Ending::Lf),
        };
        if flow.is_break() {
            return (start, true);
        }
    }
    if at_end && start < data.len() {
        let flow = line(&data[start..], Ending::None);
        return (data.len(), flow.is_break());
    }
    (start, false)
}

/// How much of a file is held at a time when reading in chunks (more only for a longer line).
const CHUNK: usize = 256 * 1024;

/// [`split`] over everything `reader` yields, read in chunks; with `at_file_start` a
/// leading BOM is skipped. Each chunk starts with the rest of the one before (a line cut by
/// the chunk boundary), so every line reaches `line` whole. Whether `line` stopped the walk.
pub fn read(
    mut reader: impl Read,
    at_file_start: bool,
    mut line: impl FnMut(&[u8], Ending) -> ControlFlow<()>,
) -> io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    // `buf[start..end]` holds bytes read but not yet handed out.
    let (mut start, mut end) = (0, 0);
    let mut skip_bom = at_file_start;
    loop {
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            // One line fills the buffer: make room for the rest of it.
            buf.resize(buf.len() * 2, 0);
        }
        let read = match reader.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        end += read;
        let eof = read == 0;
        if skip_bom {
            if end < BOM.len() && !eof {
                continue;
            }
            if buf[..end].starts_with(BOM) {
                start = BOM.len();
            }
            skip_bom = false;
        }
        let (used, stopped) = split(&buf[start..end], eof, &mut line);
        if eof || stopped {
            return Ok(stopped);
        }
        start += used;
    }
}

/// A reader that hands out at most `.1` bytes per read, to cut lines anywhere (for the
/// tests of every reader of lines).
#[cfg(test)]
pub(crate) struct Trickle<'a>(pub(crate) &'a [u8], pub(crate) usize);

#[cfg(test)]
impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(bytes: &[u8]) -> Vec<(Vec<u8>, Ending)> {
        let mut lines = Vec::new();
        let (bom, body) = strip_bom(bytes);
        let (used, _) = split(body, true, |content, ending| {
            lines.push((content.to_vec(), ending));
            ControlFlow::Continue(())
        });
        assert_eq!(used, body.len());
        let mut streamed = Vec::new();
        for chunk in [1, 2, 3, 7, 4096] {
            streamed.clear();
            read(Trickle(bytes, chunk), true, |content, ending| {
                streamed.push((content.to_vec(), ending));
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(streamed, lines, "chunks of {chunk}, bom {bom}");
        }
        lines
    }

    #[test]
    fn the_rules() {
        use Ending::*;
        let lines = |b: &[u8]| collect(b);
        assert_eq!(lines(b""), vec![]);
        assert_eq!(
            lines(b"a\r\nb\nc"),
            vec![
                (b"a".to_vec(), CrLf),
                (b"b".to_vec(), Lf),
                (b"c".to_vec(), None)
            ]
        );
        // A lone CR is part of the line; so is a CR at the end of a last line.
        assert_eq!(
            lines(b"a\rb\nc\r"),
            vec![(b"a\rb".to_vec(), Lf), (b"c\r".to_vec(), None)]
        );
        assert_eq!(lines(b"\xEF\xBB\xBFx\n"), vec![(b"x".to_vec(), Lf)]);
        // Only at the very start.
        assert_eq!(
            lines(b"x\n\xEF\xBB\xBFy"),
            vec![(b"x".to_vec(), Lf), (b"\xEF\xBB\xBFy".to_vec(), None)]
        );
    }

    #[test]
    fn a_line_longer_than_a_chunk_arrives_whole() {
        let mut file = vec![b'#'; 3 * CHUNK + 5];
        file.extend_from_slice(b"\nfar\n");
        let mut seen = Vec::new();
        read(&file[..], true, |content, _| {
            seen.push(content.len());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, vec![3 * CHUNK + 5, 3]);
    }

    #[test]
    fn break_stops_the_walk() {
        let mut seen = 0;
        let (used, stopped) = split(b"a\nb\nc\n", true, |_, _| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!((used, stopped, seen), (4, true, 2));
    }

    proptest! {
        #[test]
        fn chunked_reading_agrees(input in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), Just(0xEF), Just(0xBB), Just(0xBF)], 0..64)) {
            collect(&input);
        }
    }
}
