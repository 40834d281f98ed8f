//! Writing results. Secrets and requested results go to stdout, everything else to stderr.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Exit, Result};
pub use crate::token::redact;

fn stdout_error(e: io::Error) -> Error {
    Error::io("write to", Path::new("standard output"), e)
}

/// Writes `text` to stdout as is.
pub fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Writes one JSON document and a newline to stdout.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::File(format!("cannot encode JSON: {e}")))?;
    print(&format!("{text}\n"))
}

/// What a command's stdout is to it, for [`conclude`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
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
pub fn conclude(decision: Exit, printed: Result<()>, stdout: Stdout) -> Result<Exit> {
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

/// A record's name for output that is shown to someone (`list`, `check --json`): a token
/// pasted into a name by an older version, or by hand, is not shown.
pub fn shown_name(name: &str) -> String {
    redact(name).into_owned()
}

/// Human context on stderr (a token pasted into an argument is redacted).
///
/// Every line for a person goes through here or [`note_raw`]: redacted, and never a panic
/// when stderr is closed or full (`2>/dev/full`): a failing stderr must not turn a decision
/// or a landed change into exit 101, so a line that cannot be written is dropped.
pub fn note(text: &str) {
    note_raw(&format!("tokenfile: {text}\n"));
}

/// [`note`] without the `tokenfile: ` prefix or the line ending (a prompt, a `file:line:`
/// finding).
pub fn note_raw(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(redact(text).as_bytes());
    let _ = stderr.flush();
}

/// Names come from the file and may hold anything but TAB; keep terminal control
/// sequences out of a human's terminal.
pub fn printable(text: &str) -> String {
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
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
