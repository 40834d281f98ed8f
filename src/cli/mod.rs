//! The command line (README "Commands"): parsing, dispatch, and where a command's result or
//! error becomes its messages and exit code (the mapping of errors is `Error::exit`'s).

mod args;
mod commands;
mod edit;
mod json;
mod last_used;
mod man;
pub(crate) mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;
use args::DEFAULT_FILE;

use crate::audit::AuditLog;
use crate::error::{Exit, Result};
use crate::store::{self, Store};

/// What every command needs: where the file, its lock and its audit log are.
pub(crate) struct Context {
    /// The token file and its lock, from `--file` and `--lock-timeout`.
    pub(crate) store: Store,
    audit_log: Option<PathBuf>,
}

impl Context {
    /// The audit log: `--audit-log`, else `<file>.audit.jsonl` beside the real file (so
    /// resolving the file's path can fail).
    pub(crate) fn audit(&self) -> Result<AuditLog> {
        Ok(AuditLog::new(match &self.audit_log {
            Some(path) => path.clone(),
            None => store::sibling(&self.store.target()?, ".audit.jsonl"),
        }))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap quotes the argument it rejects: a token pasted as one must not show.
            let rendered = e.render().to_string();
            let mut text = output::redact(&rendered).into_owned();
            if text != rendered {
                // A token in an argument is a token in `ps` and the shell's history.
                text.push_str(
                    "tokenfile: a token never goes on the command line: pipe it on stdin \
                     (`printf '%s\\n' \"$T\" | tokenfile check ...`); it is now in your shell \
                     history, so rotate it (`tokenfile rotate ID`)\n",
                );
            }
            if e.use_stderr() {
                output::note_raw(&text);
            } else {
                // As clap's own printing: a closed stdout (`--help >&-`) is no reason to fail.
                let _ = output::print(&text);
            }
            // --help and --version are successes; everything else clap rejects is usage.
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                Exit::Success.code()
            });
        }
    };
    match run(cli) {
        // A failed write to stdout is an error like any other here: only the command knows
        // whether its output was the job or a report of a decision (`output::conclude`).
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            output::note(&format!("error: {e}"));
            ExitCode::from(e.exit().code())
        }
    }
}

/// Runs a parsed command line. `Ok` holds every outcome that is not a failure, a denied
/// `check` too; `Err` is what stopped the command.
pub(crate) fn run(cli: Cli) -> Result<Exit> {
    let ctx = Context {
        store: Store::new(
            cli.file.unwrap_or_else(|| PathBuf::from(DEFAULT_FILE)),
            cli.lock_timeout,
        ),
        audit_log: cli.audit_log,
    };
    commands::dispatch(&ctx, cli.command)
}
