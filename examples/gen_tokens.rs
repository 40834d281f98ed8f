//! Generates a large, valid token file for benchmarks and fault tests.
//!
//! ```sh
//! cargo run --release --example gen_tokens -- --records 100000 > tokens            # hashed
//! cargo run --release --example gen_tokens -- --records 100000 --plaintext > tokens
//! cargo run --release --example gen_tokens -- --token 99999        # the token of record 99999
//! cargo run --release --example gen_tokens -- --credential 99999   # what its line stores
//! ```
//!
//! The output is deterministic for a given `--seed`: record `i` holds the token
//! `tf_` + base64url(SHA-256(seed ‖ i)) + checksum, shaped exactly like a minted one, so the
//! benchmark can ask for the token of any record without keeping the secrets anywhere. The
//! file starts with the header comment `init` writes; records cycle through a handful of
//! scope sets (as real files do), every record has a name and a created time, and every
//! tenth record also has an expiry (far in the future, so every record is active).

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use tokenfile::token::{self, Digest, Shape};

const SCOPE_SETS: &[&str] = &[
    "read",
    "read,write",
    "deploy",
    "kafka:*",
    "*",
    "metrics:read,logs:read",
    "billing:export",
];

const HEADER: &str = "\
# tokenfile token file: one record per line, fields separated by a single TAB:
#   credential  scopes  name  created  expires
# credential is sha256:<hex> (or a plaintext token); scopes is `*` or a comma list.
# Add tokens with `tokenfile mint`, edit safely with `tokenfile edit`.
";

/// The token of record `index`: shaped like a minted token (prefix, 43 characters, checksum).
fn token_of(seed: u64, index: u64) -> String {
    let mut random = Sha256::new();
    random.update(seed.to_le_bytes());
    random.update(index.to_le_bytes());
    let mut token = String::with_capacity(token::MINTED_LEN);
    token.push_str(token::PREFIX);
    URL_SAFE_NO_PAD.encode_string(random.finalize(), &mut token);
    let sum = Sha256::digest(token.as_bytes());
    URL_SAFE_NO_PAD.encode_string(&sum[..4], &mut token);
    token
}

fn credential_of(seed: u64, index: u64, plaintext: bool) -> String {
    let token = token_of(seed, index);
    if plaintext {
        token
    } else {
        format!("sha256:{}", Digest::of(token.as_bytes()).to_hex())
    }
}

/// `2026-01-01T00:00:00Z` plus `seconds`, without pulling in a time library.
fn created_at(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days from 2026-01-01 within a non-leap 365-day year cycle is good enough for
    // distinct, valid timestamps: roll the year every 365 days (2026..).
    let (year, mut day) = (2026 + days / 365, days % 365);
    const MONTH_DAYS: [u64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while day >= MONTH_DAYS[month] {
        day -= MONTH_DAYS[month];
        month += 1;
    }
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        month + 1,
        day + 1,
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

struct Options {
    records: u64,
    plaintext: bool,
    seed: u64,
    token: Option<u64>,
    credential: Option<u64>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        records: 10_000,
        plaintext: false,
        seed: 1,
        token: None,
        credential: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--records" => options.records = number("--records")?,
            "--seed" => options.seed = number("--seed")?,
            "--token" => options.token = Some(number("--token")?),
            "--credential" => options.credential = Some(number("--credential")?),
            "--plaintext" => options.plaintext = true,
            "-h" | "--help" => {
                return Err("usage: gen_tokens [--records N] [--plaintext] [--seed S] \
                            [--token I | --credential I]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gen_tokens: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let result = (|| -> io::Result<()> {
        if let Some(i) = options.token {
            let token = token_of(options.seed, i);
            debug_assert_eq!(token::shape(token.as_bytes()), Shape::Minted);
            return writeln!(out, "{token}");
        }
        if let Some(i) = options.credential {
            return writeln!(out, "{}", credential_of(options.seed, i, options.plaintext));
        }
        out.write_all(HEADER.as_bytes())?;
        for i in 0..options.records {
            let scopes = SCOPE_SETS[(i % SCOPE_SETS.len() as u64) as usize];
            write!(
                out,
                "{}\t{scopes}\tsvc-{i}\t{}",
                credential_of(options.seed, i, options.plaintext),
                created_at(i * 37)
            )?;
            if i % 10 == 9 {
                out.write_all(b"\t2099-01-01T00:00:00Z")?;
            }
            out.write_all(b"\n")?;
        }
        out.flush()
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `gen_tokens | head`: the reader went away.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_tokens: {e}");
            ExitCode::FAILURE
        }
    }
}
