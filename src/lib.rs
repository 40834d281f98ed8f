//! `tokenfile`: manage a TAB-delimited bearer-token file and answer scope checks.
//!
//! The contract is written down in `docs/` (format, trust, writing, protocols, exit codes);
//! each part of it lives in one module:
//!
//! | module | owns | reference |
//! |---|---|---|
//! | [`lines`] | the line rules: BOM, LF/CRLF, a lone CR, the last line; bytes and chunked readers | docs/format.md "Lines" |
//! | [`format`](mod@format) | the lossless [`Document`](format::Document) and every change to it; one line → record, comment, blank or invalid; first record counts | docs/format.md |
//! | [`routes`] | scopes from the request: the rules file, path globs, path normalization | docs/routes.md |
//! | [`scope`] | the scope grammar, what a record grants, what a check requires | docs/format.md "Scopes" |
//! | [`token`] | minting, the digest, the ID, the checksum, redaction of secrets | docs/format.md "Tokens, digests and IDs" |
//! | [`when`] | RFC 3339 timestamps, `DURATION` and `WHEN` arguments | docs/format.md |
//! | [`decision`] | the decision of a check: granted, forbidden, unauthorized (and why) | docs/format.md, docs/exit-codes.md |
//! | [`scan`] | the one-shot lookup of `check` and `id` (one pass, in chunks) | docs/format.md |
//! | [`index`] | the [`TokenIndex`](index::TokenIndex) `serve` answers from, and reading a file into it | docs/protocols.md |
//! | [`seen`] | the last-used sidecar `<file>.seen`: its format, reading, merging, writing | README "Which tokens are still used?" |
//! | `trust` | whether a file may be believed: path, owners, modes, ACLs, exposure | docs/trust.md |
//! | `store` | the lock, the locked read-modify-write, the atomic, durable landing | docs/writing.md |
//! | `audit` | the audit log: one JSON line per change, synced before it lands | docs/writing.md "Audit log" |
//! | `lint` | what `lint` reports and `edit` validates | README "Commands" |
//! | [`error`] | the one error type and its one mapping to exit codes | docs/exit-codes.md |
//! | [`cli`] | the command line: arguments, one function per command, `--json` documents, output, `edit` | README "Commands", docs/exit-codes.md |
//! | `serve` | `serve`: reload policy and watcher, socket and HTTP listeners, metrics | docs/protocols.md |

pub(crate) mod audit;
pub mod cli;
pub mod decision;
pub mod error;
pub mod format;
pub mod index;
pub mod lines;
pub(crate) mod lint;
pub mod routes;
pub mod scan;
pub mod scope;
pub mod seen;
pub(crate) mod serve;
pub(crate) mod store;
pub mod token;
pub(crate) mod trust;
pub mod when;
