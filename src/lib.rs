//! `tokenfile`: manage a TAB-delimited bearer-token file and answer scope checks.
//!
//! Module map (§1: docs/format.md, trust.md; §2, §5: docs/writing.md; §3: README "Commands"):
//! - [`format`]: §1 the file, a lossless line model
//! - [`scope`]: §1 scopes
//! - [`token`]: §1 token, hash and ID
//! - [`when`]: timestamps and durations
//! - [`check`]: the check decision shared by the CLI and `serve`
//! - [`store`]: §2 locked, atomic read-modify-write
//! - [`audit`]: §5 audit log
//! - [`trust`]: §1 trusting the file: the one check every reader opens it through
//! - [`lint`]: problems of a token file
//! - [`cli`]: §3 command line

pub mod audit;
pub mod check;
pub mod cli;
pub mod error;
pub mod format;
pub mod lint;
pub mod scope;
pub mod serve;
pub mod store;
pub mod token;
pub mod trust;
pub mod when;
