//! Shared by the figure-printing fault suite (`tests/it/fault_*.rs`, see RELIABILITY.md).
//!
//! Sizes come from `TOKENFILE_FAULT_ROUNDS` (default 1, the CI size; the long run documented
//! in RELIABILITY.md uses 10). Random choices come from `TOKENFILE_FAULT_SEED` (default: the
//! clock), printed with every figure so that a failing run can be replayed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{leftovers_in, tokenfile_command};

use tokenfile::format::{Document, Entry};
use tokenfile::index::TokenIndex;
use tokenfile::token::{Digest, Secret};

/// The scale of the run: 1 in CI, 10 for the long run.
pub(crate) fn rounds() -> usize {
    std::env::var("TOKENFILE_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// A small deterministic PRNG (xorshift64*): reproducible from the printed seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn from_env() -> Rng {
        let seed = std::env::var("TOKENFILE_FAULT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        Rng(seed.max(1))
    }

    pub(crate) fn seed(&self) -> u64 {
        self.0
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A second generator for another thread, derived from this one (so the printed seed
    /// still replays both).
    pub(crate) fn split(&mut self) -> Rng {
        Rng(self.next().max(1))
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// A scratch directory with a token file of `records` hashed records (and its lock file
/// and audit log beside it, as after a first `mint`).
pub(crate) struct Scratch {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Scratch {
    pub(crate) fn new(records: usize) -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("tokens");
        let mut content = String::from("# fault suite\n");
        for i in 0..records {
            let digest = Digest::of(format!("pre-{i}").as_bytes());
            content.push_str(&format!(
                "sha256:{}\tread,write\tpre-{i}\t2026-01-01T00:00:00Z\n",
                digest.to_hex()
            ));
        }
        fs::write(&file, content).expect("write the token file");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        Scratch { dir, file }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.path().join("tokens.lock")
    }

    pub(crate) fn mint(&self) -> Command {
        let mut cmd = tokenfile_command();
        cmd.arg("--file").arg(&self.file).args([
            "--lock-timeout",
            "120s",
            "mint",
            "--scope",
            "fault",
        ]);
        cmd
    }

    /// Leftover temp files of the atomic replace.
    pub(crate) fn temp_files(&self) -> Vec<String> {
        leftovers_in(self.path())
    }
}

/// The token a `mint` printed: its whole first line of stdout, if it got that far.
pub(crate) fn printed_token(out: &Output) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.split_inclusive('\n').next()?;
    let token = line.strip_suffix('\n')?;
    (!token.is_empty()).then(|| token.to_string())
}

/// What a reader makes of the file now.
pub(crate) struct FileState {
    pub bytes: Vec<u8>,
    pub invalid_lines: Vec<usize>,
    pub records: usize,
    pub index: TokenIndex,
}

impl FileState {
    pub(crate) fn read(file: &Path) -> FileState {
        let bytes = fs::read(file).expect("the token file must exist and be readable");
        let doc = Document::parse(&bytes);
        let mut invalid_lines = Vec::new();
        let mut records = 0;
        for (line, entry) in doc.entries() {
            match entry {
                Entry::Invalid(_) => invalid_lines.push(line),
                Entry::Record(_) => records += 1,
                _ => {}
            }
        }
        let (index, _) = TokenIndex::load(&bytes);
        FileState {
            bytes,
            invalid_lines,
            records,
            index,
        }
    }

    pub(crate) fn holds(&self, token: &str) -> bool {
        self.index
            .get(&Secret::new(token.as_bytes().to_vec()))
            .is_some()
    }
}
