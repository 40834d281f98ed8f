//! Fault 3, disk full / read-only / permission denied (RELIABILITY.md): `mint` into a file
//! it cannot rewrite must leave the original byte for byte, leave no temp file, exit 10 and
//! name the file in its message.
//!
//! - ENOSPC: a tiny tmpfs in a private user + mount namespace (`unshare -r -m`), filled so
//!   that 0, 1, 2, … 9 pages are free, fewer than the ten a copy of the file needs (the write
//!   of the temp copy fails at a different point each time), and one with no inode left
//!   (its creation fails);
//! - read-only: a read-only bind mount of the directory, in the same kind of namespace;
//! - permission denied: a directory the writer cannot write, a file it cannot read, a lock
//!   file it cannot open — as `nobody` when the tests run as root (root ignores modes).
//!
//! Prints `fault enospc|read-only|permission: tries=… failures=… losses=…` (a failure is
//! anything but a clean refusal; a loss, a failed command that changed the file). Namespaced cases are skipped, saying so, where the system
//! does not allow them. CI runs one round; `TOKENFILE_FAULT_ROUNDS=10` runs ten.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::support::fault::*;
use crate::support::{
    BIN, is_root, leftovers_in, mount_namespaces_work, report, tokenfile_command,
};

/// Runs `script` in a new user + mount namespace; `None` if namespaces are not available.
fn in_namespace(script: &str, args: &[&str]) -> Option<String> {
    if let Err(why) = mount_namespaces_work() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let out = Command::new("unshare")
        .args(["-r", "-m", "bash", "-c", script, "fault-disk"])
        .args(args)
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "the namespace script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shell helpers for the scripts: `attempt NAME DIR` runs a mint on `DIR/tokens`, compares
/// it with `DIR/../before`, and prints one result line.
const ATTEMPT: &str = r#"
set -u
BIN=$1; W=$2
attempt() {
    local name=$1 d=$2 rc
    "$BIN" --file "$d/tokens" --lock-timeout 5s mint --scope fault >"$W/out" 2>"$W/err"
    rc=$?
    local same=0 named=0 temps
    cmp -s "$d/tokens" "$W/before" && same=1
    grep -qF "$d/tokens" "$W/err" && named=1
    temps=$(ls -A "$d" | grep -c '\.tmp-')
    echo "case=$name rc=$rc identical=$same named=$named temps=$temps printed=$(wc -c <"$W/out")"
}
"#;

/// A token file 60 bytes short of ten 4 KiB pages: a copy of it needs ten free pages, and
/// so does the file itself once a record is added — eleven if it were rewritten in place.
fn prepare(dir: &Path) {
    let scratch = Scratch::new(350);
    let mut bytes = fs::read(&scratch.file).unwrap();
    let target = 10 * 4096 - 60;
    assert!(bytes.len() + 10 < target);
    bytes.push(b'#');
    bytes.resize(target - 1, b'-');
    bytes.push(b'\n');
    fs::write(dir.join("orig"), bytes).unwrap();
}

struct Tally {
    tries: usize,
    failures: usize,
    losses: usize,
    problems: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            tries: 0,
            failures: 0,
            losses: 0,
            problems: Vec::new(),
        }
    }

    /// One result line of [`ATTEMPT`]: the mint must have failed cleanly.
    fn line(&mut self, line: &str) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("?")
                .to_string()
        };
        self.tries += 1;
        let identical = field("identical") == "1";
        let ok = field("rc") == "10"
            && field("named") == "1"
            && field("temps") == "0"
            && field("printed") == "0";
        // A loss: the command failed and the file is not what it was.
        if !identical && field("rc") != "0" {
            self.losses += 1;
        }
        // A failure: anything but a clean refusal (a success means the fault was not even
        // provoked).
        if !ok || !identical {
            self.failures += 1;
            self.problems.push(line.to_string());
        }
    }

    fn report(&self, what: &str) {
        report(&format!(
            "fault {what}: tries={} failures={} losses={}",
            self.tries, self.failures, self.losses
        ));
        for p in self.problems.iter().take(20) {
            eprintln!("  {p}");
        }
        assert_eq!(self.failures, 0, "see the cases above");
    }
}

/// Runs an `attempt` script in a namespace over the scratch dir `work`, tallies its result
/// lines (`per_round` attempts each round) and prints the figure `fault <label>: …`.
fn attempt_in_namespace(script: &str, work: &Path, label: &str, per_round: usize) {
    let dir = work.to_str().unwrap();
    let round_count = rounds().to_string();
    let Some(out) = in_namespace(script, &[BIN, dir, &round_count]) else {
        report(&format!(
            "fault {label}: SKIPPED (no user + mount namespaces here)"
        ));
        return;
    };
    let mut tally = Tally::new();
    for line in out.lines() {
        assert!(line.starts_with("case="), "unexpected output: {line}");
        tally.line(line);
    }
    assert_eq!(tally.tries, per_round * rounds());
    tally.report(label);
}

/// Runs `rounds` (a script that calls `attempt`, with `$D` a fresh directory `dir` in the
/// scratch dir and `$ROUNDS` the number of rounds) alone in a namespace, and tallies it as
/// [`attempt_in_namespace`] does.
fn fault_rounds(dir: &str, rounds: &str, label: &str, per_round: usize) {
    let _alone = crate::support::serial();
    let work = tempfile::tempdir().unwrap();
    prepare(work.path());
    let script = format!("{ATTEMPT}\nROUNDS=$3\nD=$W/{dir}\nmkdir -p \"$D\"\n{rounds}");
    attempt_in_namespace(&script, work.path(), label, per_round);
}

#[test]
fn disk_full_leaves_the_file_alone() {
    fault_rounds(
        "full",
        r#"for round in $(seq "$ROUNDS"); do
    # Out of space: 0..9 free pages, fewer than a copy of the file needs.
    mount -t tmpfs -o size=256k tmpfs "$D"
    cp "$W/orig" "$D/tokens"; chmod 600 "$D/tokens"
    : >"$D/tokens.lock"; : >"$D/tokens.audit.jsonl"
    cp "$D/tokens" "$W/before"
    for free in 0 1 2 3 4 5 6 7 8 9; do
        rm -f "$D/filler"
        dd if=/dev/zero of="$D/filler" bs=4096 2>/dev/null
        truncate -s -$((free * 4096)) "$D/filler"
        attempt "enospc-free-$free-pages" "$D"
    done
    umount "$D"
    # Out of inodes: the directory, the file, its lock and audit log use them all.
    mount -t tmpfs -o size=1m,nr_inodes=4 tmpfs "$D"
    cp "$W/orig" "$D/tokens"; chmod 600 "$D/tokens"
    : >"$D/tokens.lock"; : >"$D/tokens.audit.jsonl"
    cp "$D/tokens" "$W/before"
    attempt "enospc-no-inode" "$D"
    umount "$D"
done
"#,
        "enospc",
        11,
    );
}

#[test]
fn read_only_mount_leaves_the_file_alone() {
    fault_rounds(
        "ro",
        r#"cp "$W/orig" "$D/tokens"; chmod 600 "$D/tokens"
"$BIN" --file "$D/tokens" mint --scope setup >"$D/setup.token" 2>/dev/null || echo "setup mint failed"
cp "$D/tokens" "$W/before"
mount --bind "$D" "$D"
mount -o remount,bind,ro "$D"
for round in $(seq "$ROUNDS"); do
    attempt "read-only-bind-mount" "$D"
done
"#,
        "read-only",
        1,
    );
}

const NOBODY: u32 = 65534;

#[test]
fn permission_denied_leaves_the_file_alone() {
    let _alone = crate::support::serial();
    let root = is_root();
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut tally = Tally::new();
    for round in 0..rounds() {
        for case in ["dir-not-writable", "file-not-readable", "lock-not-openable"] {
            let d = work.path().join(format!("{case}-{round}"));
            fs::create_dir(&d).unwrap();
            let file = d.join("tokens");
            let lock = d.join("tokens.lock");
            let scratch = Scratch::new(50);
            fs::copy(&scratch.file, &file).unwrap();
            fs::write(&lock, b"").unwrap();
            for p in [&file, &lock] {
                fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
            }
            // Who may do what: as root, by owner (the writer runs as nobody); otherwise by
            // mode (the writer is us).
            let (dir_mode, denied) = match case {
                "dir-not-writable" => (0o555, None),
                "file-not-readable" => (0o755, Some(&file)),
                _ => (0o755, Some(&lock)),
            };
            if root {
                // Writable for the writer through its group: a directory owned by nobody
                // would make the root-owned file in it unsafe (docs/format.md), refused before
                // the fault is even met.
                let writable_dir = dir_mode != 0o555;
                chown(&d, Some(0), Some(if writable_dir { NOBODY } else { 0 })).unwrap();
                let mode = if writable_dir { 0o775 } else { 0o755 };
                fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
                for p in [&file, &lock] {
                    let owner = if Some(p) == denied { 0 } else { NOBODY };
                    chown(p, Some(owner), Some(owner)).unwrap();
                }
            } else {
                if let Some(p) = denied {
                    fs::set_permissions(p, fs::Permissions::from_mode(0o000)).unwrap();
                }
                fs::set_permissions(&d, fs::Permissions::from_mode(dir_mode)).unwrap();
            }
            let before = fs::read(&file).unwrap();
            let mut cmd = tokenfile_command();
            cmd.arg("--file")
                .arg(&file)
                .args(["--lock-timeout", "5s", "mint", "--scope", "fault"]);
            if root {
                cmd.uid(NOBODY).gid(NOBODY);
            }
            let out = cmd.output().unwrap();
            // Back to modes we can read and clean up.
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
            for p in [&file, &lock] {
                fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
            }
            let identical = fs::read(&file).unwrap() == before;
            let named = String::from_utf8_lossy(&out.stderr).contains(file.to_str().unwrap());
            tally.line(&format!(
                "case={case} rc={} identical={} named={} temps={} printed={}",
                out.status.code().unwrap_or(-1),
                u8::from(identical),
                u8::from(named),
                leftovers_in(&d).len(),
                out.stdout.len()
            ));
            if !named {
                eprintln!("  {case}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
    }
    tally.report("permission");
}
