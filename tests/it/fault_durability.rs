//! The order of a write, checked in the system calls (RELIABILITY.md): a kill -9 cannot
//! show that a missing fsync would lose data after a power cut (the page cache survives a
//! killed process), so this traces `mint` with `strace` and checks that every write
//! 1. holds the exclusive `flock` on `<file>.lock` before it creates its temp file,
//! 2. creates the temp file beside the file, `O_CREAT|O_EXCL`, mode 0600,
//! 3. fsyncs the temp file before renaming it over the file,
//! 4. renames it, then opens and fsyncs the directory,
//! 5. and still holds the lock until then.
//!
//! Prints `fault durability: tries=… failures=…`; skipped (saying so) without `strace`.

use std::collections::HashMap;
use std::process::Command;

use crate::support::fault::*;
use crate::support::{BIN, report};

/// One traced system call: name, arguments, result.
struct Call {
    name: String,
    args: String,
    result: String,
}

fn parse_trace(text: &str) -> Vec<Call> {
    text.lines()
        .filter_map(|line| {
            // "1234  name(args) = result": the pid is there with -f.
            let line = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            // "name(args)   = result": the result follows the last ")" padded before "= ".
            let open = line.find('(')?;
            let equals = line
                .match_indices("= ")
                .map(|(i, _)| i)
                .filter(|&i| line[..i].trim_end().ends_with(')'))
                .last()?;
            let args = line[open + 1..equals].trim_end().strip_suffix(')')?;
            Some(Call {
                name: line[..open].to_string(),
                args: args.to_string(),
                result: line[equals + 2..].split_whitespace().next()?.to_string(),
            })
        })
        .collect()
}

/// Checks one traced mint; returns what is wrong.
fn check_order(calls: &[Call], file: &str, dir: &str) -> Vec<String> {
    let lock = format!("\"{file}.lock\"");
    let temp_prefix = format!("\"{dir}/.tokens.tmp-");
    let mut fds: HashMap<String, String> = HashMap::new();
    let (mut locked, mut lock_fd) = (false, None);
    let (mut temp_fd, mut temp_synced, mut renamed, mut dir_synced) = (None, false, false, false);
    let mut wrong = Vec::new();
    for call in calls {
        let first_arg = call.args.split(", ").next().unwrap_or("").to_string();
        match call.name.as_str() {
            "openat" => {
                let path = call.args.split(", ").nth(1).unwrap_or("").to_string();
                if call.result.parse::<i32>().is_ok_and(|fd| fd >= 0) {
                    fds.insert(call.result.clone(), path.clone());
                }
                if path.starts_with(&temp_prefix) {
                    if !locked {
                        wrong.push("temp file created without the lock".into());
                    }
                    if !(call.args.contains("O_CREAT")
                        && call.args.contains("O_EXCL")
                        && call.args.ends_with("0600"))
                    {
                        wrong.push(format!("temp file not created O_EXCL 0600: {}", call.args));
                    }
                    temp_fd = Some(call.result.clone());
                }
                if path == format!("\"{dir}\"") && renamed && !call.args.contains("O_DIRECTORY") {
                    // The directory opened to be synced (O_DIRECTORY is the listing done by
                    // the cleanup of leftovers, before).
                    fds.insert(call.result.clone(), "<dir to sync>".into());
                }
            }
            "flock"
                if call.args.contains("LOCK_EX")
                    && call.result == "0"
                    && fds.get(&first_arg) == Some(&lock) =>
            {
                locked = true;
                lock_fd = Some(first_arg);
            }
            "fsync" | "fdatasync" if call.result == "0" => {
                if Some(&first_arg) == temp_fd.as_ref() && !renamed {
                    temp_synced = true;
                }
                if renamed && fds.get(&first_arg).map(String::as_str) == Some("<dir to sync>") {
                    if !locked {
                        wrong.push("directory synced after the lock was released".into());
                    }
                    dir_synced = true;
                }
            }
            "rename" | "renameat" | "renameat2" if call.args.contains(&temp_prefix) => {
                if !temp_synced {
                    wrong.push("renamed before the temp file was synced".into());
                }
                if !locked {
                    wrong.push("renamed without the lock".into());
                }
                if !call.args.contains(&format!("\"{file}\"")) {
                    wrong.push(format!("renamed somewhere else: {}", call.args));
                }
                renamed = true;
            }
            "close" => {
                if Some(&first_arg) == lock_fd.as_ref() {
                    locked = false;
                    lock_fd = None;
                }
                fds.remove(&first_arg);
            }
            _ => {}
        }
    }
    if !renamed {
        wrong.push("no rename of a temp file over the file".into());
    }
    if !dir_synced {
        wrong.push("the directory was not synced after the rename".into());
    }
    wrong
}

#[test]
fn every_write_is_locked_synced_and_renamed_in_order() {
    let _alone = crate::support::serial();
    if Command::new("strace").arg("-V").output().is_err() {
        report("fault durability: SKIPPED (strace is not installed)");
        return;
    }
    let scratch = Scratch::new(100);
    let trace = scratch.path().join("trace");
    let file = scratch.file.to_str().unwrap().to_string();
    let dir = scratch.path().to_str().unwrap().to_string();
    let (mut tries, mut failures) = (0, 0);
    for i in 0..10 * rounds() {
        tries += 1;
        // A plain mint; every third one also has a leftover temp file to clean up first.
        if i % 3 == 2 {
            std::fs::write(scratch.path().join(".tokens.tmp-leftover"), b"x").unwrap();
        }
        let out = Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .args([
                "-e",
                "trace=openat,flock,fsync,fdatasync,rename,renameat,renameat2,close",
                BIN,
                "--file",
                &file,
                "mint",
                "--scope",
                "fault",
            ])
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        let mut wrong = check_order(&parse_trace(&text), &file, &dir);
        if !out.status.success() {
            wrong.push(format!(
                "mint failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !wrong.is_empty() {
            failures += 1;
            eprintln!("  try {tries}: {}", wrong.join("; "));
        }
    }
    report(&format!(
        "fault durability: tries={tries} failures={failures}"
    ));
    assert_eq!(failures, 0);
}
