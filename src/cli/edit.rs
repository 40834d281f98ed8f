//! `tokenfile edit`: visudo for the token file.
//!
//! The admin edits a private copy (0600, beside the file) without holding the lock, so
//! other writers are not blocked while an editor is open. On save the copy is validated;
//! with problems the admin edits again, writes anyway (explicitly) or quits. Installing
//! takes the lock and re-reads the file: if it changed meanwhile, lines that were only
//! appended (what `mint` does) are carried over; any other concurrent change is never
//! overwritten — the edit is refused and the copy kept for the admin to re-apply.
//!
//! The copy holds every credential, so it never outlives the edit by accident: errors drop
//! it, SIGINT/SIGHUP/SIGTERM remove it before the process dies, and a copy left by a
//! `kill -9` carries its dead process's ID in its name, for the next writer to remove.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::Command;

use tempfile::NamedTempFile;

use crate::audit::{AuditLog, AuditRecord, Change, Commit, Event};
use crate::cli::output::{note, note_raw};
use crate::error::{Error, Exit, Result};
use crate::format::{Document, Line};
use crate::lint::{self, Severity};
use crate::store::{self, Store};
use crate::token::Id;
use crate::when;

enum Answer {
    EditAgain,
    WriteAnyway,
    Quit,
}

fn ask() -> Result<Answer> {
    note_raw("tokenfile: (e)dit again, (w)rite anyway, (q)uit without saving? [e] ");
    let mut reply = String::new();
    let read = io::stdin()
        .lock()
        .read_line(&mut reply)
        .map_err(|e| Error::io("read the answer from", Path::new("standard input"), e))?;
    if read == 0 {
        note_raw("\n");
        return Ok(Answer::Quit); // no one to ask: never install a broken file silently
    }
    Ok(match reply.trim() {
        "w" | "W" | "write" => Answer::WriteAnyway,
        "q" | "Q" | "quit" | "x" => Answer::Quit,
        _ => Answer::EditAgain,
    })
}

fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_string())
}

fn run_editor(path: &Path) -> Result<()> {
    let editor = editor();
    // Through sh, so that EDITOR="code --wait" works as it does for git and visudo.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .map_err(|source| Error::EditorStart {
            editor: editor.clone(),
            source,
        })?;
    if !status.success() {
        return Err(Error::EditorFailed { editor, status });
    }
    Ok(())
}

/// If `current` is `original` plus appended lines, returns `edited` plus those lines.
fn merge_appended(original: &[u8], current: &[u8], edited: &[u8]) -> Option<Vec<u8>> {
    let mut appended = current.strip_prefix(original)?;
    if !original.is_empty() && !original.ends_with(b"\n") {
        // The appender had to end the last line first.
        appended = appended
            .strip_prefix(b"\r\n")
            .or_else(|| appended.strip_prefix(b"\n"))?;
    }
    let mut edited = Document::parse(edited);
    edited.end_last_line();
    let mut merged = edited.to_bytes();
    merged.extend_from_slice(appended);
    Some(merged)
}

/// Record lines by ID (the record that counts for each), for the audit log.
fn records_by_id<'a>(doc: &Document<'a>) -> BTreeMap<Id, (AuditRecord, Line<'a>)> {
    doc.counted_records()
        .map(|(line, record)| {
            let text = doc.lines()[line - 1].clone();
            (record.id(), (AuditRecord::from(&record), text))
        })
        .collect()
}

fn audit_event(before: &[u8], after: &[u8]) -> Event {
    let old = records_by_id(&Document::parse(before));
    let new = records_by_id(&Document::parse(after));
    let mut records = Vec::new();
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    for (id, (record, line)) in &new {
        match old.get(id) {
            None => added.push(id.to_string()),
            Some((_, old_line)) if old_line.content != line.content => changed.push(id.to_string()),
            Some(_) => continue,
        }
        records.push(record.clone());
    }
    for (id, (record, _)) in &old {
        if !new.contains_key(id) {
            removed.push(id.to_string());
            records.push(record.clone());
        }
    }
    Event::new(
        Change::Edit {
            added,
            removed,
            changed,
        },
        records,
    )
}

/// Removes the editing copy when a signal ends the process (docs/writing.md: no full copy of the
/// file is left behind). Only async-signal-safe calls run in the handler.
mod on_signal {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::ptr;
    use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

    use nix::libc::{self, c_char, c_int};
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

    const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGHUP, Signal::SIGTERM];
    static COPY: AtomicPtr<c_char> = AtomicPtr::new(ptr::null_mut());
    static IN_EDITOR: AtomicBool = AtomicBool::new(false);
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn handle(sig: c_int) {
        // Ctrl-C reaches the editor too, and it decides (vi uses the key itself); the
        // edit stops once the editor returns.
        if sig == libc::SIGINT && IN_EDITOR.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
        die(sig);
    }

    fn die(sig: c_int) {
        let copy = COPY.swap(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: unlink, signal and raise are async-signal-safe; `copy` is a leaked,
        // NUL-terminated string (or null).
        unsafe {
            if !copy.is_null() {
                libc::unlink(copy);
            }
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// While alive, the signals remove `path` and then end the process as they would have.
    pub(super) struct Guard;

    impl Guard {
        pub(super) fn new(path: &Path) -> Guard {
            if let Ok(path) = CString::new(path.as_os_str().as_bytes()) {
                let old = COPY.swap(path.into_raw(), Ordering::SeqCst);
                free(old);
            }
            let action = SigAction::new(
                SigHandler::Handler(handle),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            for sig in SIGNALS {
                // SAFETY: the handler only touches atomics and async-signal-safe calls.
                let _ = unsafe { sigaction(sig, &action) };
            }
            Guard
        }

        /// Runs the editor; a Ctrl-C meanwhile ends the edit once the editor returns.
        pub(super) fn editing<T>(&self, run: impl FnOnce() -> T) -> T {
            IN_EDITOR.store(true, Ordering::SeqCst);
            let result = run();
            IN_EDITOR.store(false, Ordering::SeqCst);
            if INTERRUPTED.load(Ordering::SeqCst) {
                die(libc::SIGINT);
            }
            result
        }

        /// The copy is no longer ours to remove (kept for the admin, or gone).
        pub(super) fn forget(&self) {
            free(COPY.swap(ptr::null_mut(), Ordering::SeqCst));
        }
    }

    fn free(path: *mut c_char) {
        if !path.is_null() {
            // SAFETY: every non-null pointer stored in COPY came from CString::into_raw
            // and is freed once, by whoever swapped it out.
            drop(unsafe { CString::from_raw(path) });
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            self.forget();
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            for sig in SIGNALS {
                // SAFETY: restoring the default disposition.
                let _ = unsafe { sigaction(sig, &default) };
            }
        }
    }
}

/// Keeps the admin's edited copy after a failure to install it, and says where it is.
/// The kept copy is renamed `.…edit-saved-…`: no writer removes it as a leftover.
fn keep_edit(copy: NamedTempFile, guard: &on_signal::Guard, why: impl fmt::Display) -> Error {
    guard.forget();
    let saved = copy.path().file_name().and_then(|name| {
        let name = name.to_str()?;
        let (_, random) = name.rsplit_once('-')?;
        let prefix = name.get(..name.find(".edit-")? + ".edit-".len())?;
        Some(
            copy.path()
                .with_file_name(format!("{prefix}saved-{random}")),
        )
    });
    let kept = copy.into_temp_path().keep().map(|kept| match saved {
        Some(saved) if fs::rename(&kept, &saved).is_ok() => saved,
        _ => kept,
    });
    match kept {
        Ok(copy) => Error::EditKept {
            why: why.to_string(),
            copy,
        },
        Err(e) => Error::EditLost {
            why: why.to_string(),
            source: e.error,
        },
    }
}

pub(super) fn edit(store: &Store, audit: &AuditLog) -> Result<Exit> {
    let target = store.target()?;
    let original = store.read()?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    // Copies that an earlier edit left when it was killed are removed under the lock
    // (and named on stderr): they hold every credential. Only if the lock is free now:
    // the edit itself needs no lock until it installs, and the next writer cleans up.
    drop(Store::new(store.path(), std::time::Duration::ZERO).lock());
    // Beside the file: same file system, same protection, 0600 from the start. The name
    // carries this process's ID, so that a copy whose process is gone is known stale.
    let mut copy = tempfile::Builder::new()
        .prefix(&format!(
            "{}{}-",
            store::edit_copy_prefix(&target),
            std::process::id()
        ))
        .tempfile_in(dir)
        .map_err(|e| Error::io("create an editing copy in", dir, e))?;
    let guard = on_signal::Guard::new(copy.path());
    store::set_mode(copy.as_file(), 0o600)
        .and_then(|()| copy.write_all(&original))
        .and_then(|()| copy.flush())
        .map_err(|e| Error::io("write", copy.path(), e))?;
    let shown = store.path().display().to_string();

    let edited = loop {
        guard.editing(|| run_editor(copy.path()))?;
        let edited = fs::read(copy.path()).map_err(|e| Error::io("read", copy.path(), e))?;
        if edited == original {
            note(&format!("no changes; {shown} left as it was"));
            return Ok(Exit::Success);
        }
        let problems: Vec<_> = lint::lint_document(&Document::parse(&edited), when::now())
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        if problems.is_empty() {
            break edited;
        }
        for p in &problems {
            let line = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            note_raw(&format!("{shown}{line}: {}\n", p.message));
        }
        note(&format!(
            "{} problem(s); invalid lines grant nothing and duplicates are ignored",
            problems.len()
        ));
        match ask()? {
            Answer::EditAgain => continue,
            Answer::WriteAnyway => break edited,
            Answer::Quit => {
                return Err(Error::Problems(format!(
                    "{shown}: edit discarded because of the problems above; the file was not changed"
                )));
            }
        }
    };

    // From here on no failure may lose the admin's work: the copy is kept and named.
    let locked = match store.lock() {
        Ok(locked) => locked,
        Err(e) => {
            return Err(keep_edit(
                copy,
                &guard,
                format!("{e}; {shown} was not changed"),
            ));
        }
    };
    let (current, meta) = match locked.read() {
        Ok(Some(found)) => found,
        Ok(None) => return Err(keep_edit(copy, &guard, store::missing_file(store.path()))),
        Err(e) => return Err(keep_edit(copy, &guard, e)),
    };
    let install = if current == original {
        edited
    } else if let Some(merged) = merge_appended(&original, &current, &edited) {
        note(&format!(
            "lines appended to {shown} while you edited were kept"
        ));
        merged
    } else {
        return Err(keep_edit(
            copy,
            &guard,
            format!(
                "{shown} was changed by someone else while you edited it; your version was NOT \
                 installed, so that change is not lost"
            ),
        ));
    };
    let mut commit = Commit::new(audit, audit_event(&current, &install));
    if let Err(e) = locked.replace(&install, Some(&meta), &mut commit) {
        // Failing after the rename (the directory sync), the edit is in place: its copy
        // has served, and the error says what is uncertain.
        if fs::read(&target).is_ok_and(|now| now == install) {
            return Err(e);
        }
        return Err(keep_edit(
            copy,
            &guard,
            format!("{e}; {shown} was not changed"),
        ));
    }
    drop(locked);
    note(&format!("installed {shown}"));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_lines_survive_an_edit() {
        assert_eq!(
            merge_appended(b"a\n", b"a\nnew\n", b"A\n").as_deref(),
            Some(&b"A\nnew\n"[..])
        );
        assert_eq!(
            merge_appended(b"a", b"a\nnew\n", b"A").as_deref(),
            Some(&b"A\nnew\n"[..])
        );
        // An edited last line ending in a lone CR keeps it: LF alone would make it CRLF.
        assert_eq!(
            merge_appended(b"a\n", b"a\nnew\n", b"a\ntok\r").as_deref(),
            Some(&b"a\ntok\r\r\nnew\n"[..])
        );
        assert_eq!(merge_appended(b"a\nb\n", b"a\n", b"x\n"), None);
        assert_eq!(merge_appended(b"a\n", b"b\n", b"x\n"), None);
    }
}
