//! Man pages from the clap definitions: `tokenfile(1)` for the tool, its global options, exit
//! codes and commands, and `tokenfile-<command>(1)` for each command's own options — the
//! pages `tokenfile(1)`'s COMMANDS section refers to, as git's do.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;

use super::args::{AFTER_HELP, Cli};
use crate::error::{Error, Result};

/// The command definition as the pages show it.
fn built() -> clap::Command {
    let mut cli = Cli::command();
    // Gives each command the global options and its page name (`tokenfile-mint`).
    cli.build();
    cli
}

/// `tokenfile(1)` alone (`tokenfile man`).
pub(super) fn tool_page() -> Result<Vec<u8>> {
    main_page(&built()).map_err(render_error)
}

/// Every page, as (file name, roff).
fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let cli = built();
    let mut pages = vec![(
        "tokenfile.1".to_string(),
        main_page(&cli).map_err(render_error)?,
    )];
    // `help` is clap's own, and its page would say nothing `--help` does not.
    let listed = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help");
    for command in listed {
        let man = Man::new(command.clone());
        let mut roff = Vec::new();
        man.render(&mut roff).map_err(render_error)?;
        pages.push((man.get_filename(), roff));
    }
    Ok(pages)
}

/// `tokenfile(1)`: clap_mangen's sections, except that the text after `--help` (exit codes,
/// where tokens never go) gets headings of its own instead of one called EXTRA.
fn main_page(cli: &clap::Command) -> io::Result<Vec<u8>> {
    let man = Man::new(cli.clone());
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    man.render_options_section(&mut roff)?;
    man.render_subcommands_section(&mut roff)?;
    let (codes, notes) = AFTER_HELP.split_once("\n\n").unwrap_or((AFTER_HELP, ""));
    writeln!(roff, ".SH \"EXIT STATUS\"")?;
    for line in codes.lines().skip(1) {
        let (code, meaning) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        writeln!(roff, ".TP\n{}\n{}", escape(code), escape(meaning.trim()))?;
    }
    writeln!(roff, ".SH SECURITY\n{}", escape(&notes.replace('\n', " ")))?;
    man.render_version_section(&mut roff)?;
    Ok(roff)
}

/// Text as a roff line: a leading `.` or `'` would be a request, `\` an escape.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

fn render_error(e: io::Error) -> Error {
    Error::ManPage(e)
}

/// Writes every page into `dir` (man pages are for every user: the umask's mode, not 0600).
pub(super) fn write_pages(dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (name, roff) in pages()? {
        let path = dir.join(&name);
        fs::write(&path, roff).map_err(|e| Error::io("write", &path, e))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
