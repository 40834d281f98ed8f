//! Writing results. Secrets and requested results go to stdout, everything else to stderr.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Exit, Result};
pub(crate) use crate::token::redact;
use crate::token::{REDACTED, Secret};

fn stdout_error(e: io::Error) -> Error {
    Error::io("write to", Path::new("standard output"), e)
}

/// Writes `text` to stdout, redacted: what a command prints comes from the file and the
/// command line, either of which may hold a pasted token (a name, a scope, a path).
pub(crate) fn print(text: &str) -> Result<()> {
    write_stdout(redact(text).as_bytes())
}

/// Writes the token that `mint` or `rotate` hands out, alone on a line: the one output that
/// is not redacted, and it takes a [`Secret`] so that nothing else can pass for it.
pub(crate) fn print_token(token: &Secret) -> Result<()> {
    // Sized once: a buffer that grew would leave a copy nobody wipes.
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(token.expose().len() + 1));
    line.extend_from_slice(token.expose());
    line.push(b'\n');
    write_secret(&line)
}

/// The write of a secret, which must fail loudly whenever nobody can see it (docs/writing.md:
/// a token is never stored that nobody was shown): to the descriptor itself, because
/// `io::stdout()` takes EBADF (stdout open read-only, `1</dev/null`) for success; and never
/// to /dev/null, where Rust's start-up puts a closed stdout (`>&-`), so that `mint >&-` is
/// not a token nobody saw. `mint >/dev/null` (or `>/dev/zero`: any character device but a
/// terminal) is refused too: it shows the token to nobody.
fn write_secret(bytes: &[u8]) -> Result<()> {
    use std::os::fd::AsFd;
    let stdout = io::stdout();
    let mut buffered = stdout.lock();
    buffered.flush().map_err(stdout_error)?;
    let fd = stdout.as_fd();
    // A character device that is not a terminal (/dev/null, /dev/zero, /dev/urandom, …)
    // keeps nothing for anyone to read.
    let to_nobody = nix::sys::stat::fstat(fd).is_ok_and(|st| {
        st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFCHR
            && !std::io::IsTerminal::is_terminal(&fd)
    });
    if to_nobody {
        return Err(stdout_error(io::Error::other(
            "it is /dev/null, another device that keeps nothing, or closed: the token would \
             be shown to nobody",
        )));
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(0) => return Err(stdout_error(io::ErrorKind::WriteZero.into())),
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(stdout_error(io::Error::from(errno))),
        }
    }
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Writes one JSON document and a newline to stdout, every string in it redacted.
pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    write_json(value, None)
}

/// [`print_json`] of the document of `mint`/`rotate`, which carries `token`: a string equal
/// to that very secret is shown, every other string is redacted as always.
pub(crate) fn print_json_revealing(value: &impl Serialize, token: &Secret) -> Result<()> {
    write_json(value, Some(token))
}

fn write_json(value: &impl Serialize, revealed: Option<&Secret>) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(Error::Json)?;
    let mut text = redact_json(&text, revealed);
    text.push('\n');
    match revealed {
        Some(_) => write_secret(text.as_bytes()),
        None => write_stdout(text.as_bytes()),
    }
}

/// `json` (a document serde_json wrote) with every string literal, keys too, redacted —
/// except one equal to `revealed`. Done on the text, not on a `Value`, so the fields keep
/// their order; a string that does not decode (it cannot happen) is replaced whole.
pub(crate) fn redact_json(json: &str, revealed: Option<&Secret>) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(open) = bytes[at..].iter().position(|&b| b == b'"').map(|i| at + i) {
        let mut close = open + 1;
        while close < bytes.len() && bytes[close] != b'"' {
            close += if bytes[close] == b'\\' { 2 } else { 1 };
        }
        if close >= bytes.len() {
            // Not from serde_json: fail closed.
            out.push_str(&json[copied..open]);
            out.push_str(&format!("\"{REDACTED}\""));
            return out;
        }
        let literal = &json[open..=close];
        at = close + 1;
        let inner = &literal[1..literal.len() - 1];
        // Without escapes the literal's inside is the string itself: no decoding needed.
        let decoded = match inner.contains('\\') {
            false => Ok(std::borrow::Cow::Borrowed(inner)),
            true => serde_json::from_str::<String>(literal).map(std::borrow::Cow::Owned),
        };
        let replaced = match decoded {
            Ok(text) if revealed.is_some_and(|t| t.expose() == text.as_bytes()) => None,
            Ok(text) => match redact(&text) {
                std::borrow::Cow::Borrowed(_) => None,
                std::borrow::Cow::Owned(shown) => Some(serde_json::Value::from(shown).to_string()),
            },
            Err(_) => Some(format!("\"{REDACTED}\"")),
        };
        if let Some(replaced) = replaced {
            out.push_str(&json[copied..open]);
            out.push_str(&replaced);
            copied = close + 1;
        }
    }
    out.push_str(&json[copied..]);
    out
}

/// What a command's stdout is to it, for [`conclude`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// The output is the job (`list`, `id`, `lint`, `completions`): output lost to a full
    /// disk is a failure, and a reader that went away (`list | head`) is not.
    Job,
    /// The output only reports the decision that the exit code carries (`check`).
    Report,
}

/// The exit code of a command that decided `decision` and then tried to print its result
/// (`printed`). A closed or failing stdout never turns a failure into success (docs/exit-codes.md): a
/// reader that went away (EPIPE) leaves the decision as it is, and so does any other write
/// failure of a report or of a command that already failed; only a job whose output was
/// lost otherwise (`list > /dev/full`) fails for it.
pub(crate) fn conclude(decision: Exit, printed: Result<()>, stdout: Stdout) -> Result<Exit> {
    let e = match printed {
        Ok(()) => return Ok(decision),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            return Ok(decision);
        }
        Err(e) => e,
    };
    if stdout == Stdout::Job && decision == Exit::Success {
        return Err(e);
    }
    note(&format!("warning: {e}"));
    Ok(decision)
}

/// Human context on stderr (a token pasted into an argument is redacted).
///
/// Every line for a person goes through here or [`note_raw`]: redacted, and never a panic
/// when stderr is closed or full (`2>/dev/full`): a failing stderr must not turn a decision
/// or a landed change into exit 101, so a line that cannot be written is dropped.
pub(crate) fn note(text: &str) {
    note_raw(&format!("tokenfile: {text}\n"));
}

/// [`note`] without the `tokenfile: ` prefix or the line ending (a prompt, a `file:line:`
/// finding).
pub(crate) fn note_raw(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(redact(text).as_bytes());
    let _ = stderr.flush();
}

/// Names come from the file and may hold anything but TAB; keep terminal control
/// sequences out of a human's terminal.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A plain text table with aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_redacted_in_place_except_the_revealed_token() {
        let token = crate::token::mint().unwrap();
        let text = std::str::from_utf8(token.expose()).unwrap().to_string();
        let bare = &text[3..];
        let doc = serde_json::json!({
            "token": text,
            "name": format!("ci \"{text}\"\n"),
            "scopes": ["read", format!("x{bare}")],
            "n": 3,
        });
        let json = serde_json::to_string_pretty(&doc).unwrap();
        for revealed in [None, Some(&token)] {
            let shown = redact_json(&json, revealed);
            let value: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(value["name"], format!("ci \"{REDACTED}\"\n"));
            assert_eq!(value["scopes"][1], format!("x{REDACTED}"));
            assert_eq!(value["n"], 3);
            let expected = if revealed.is_some() { &text } else { REDACTED };
            assert_eq!(value["token"], *expected);
            assert!(!shown.contains(&bare[..12]) || revealed.is_some());
            // Order and layout are kept: only the strings change.
            assert_eq!(shown.lines().count(), json.lines().count());
        }
    }
}
