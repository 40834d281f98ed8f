//! In-place rewrites of a large file, non-stop, read by a serve without a read lease
//! (docs/protocols.md): a binary of its own, because its loops load the machine and would
//! slow the timing tests of tests/it/serve_reload.rs that cargo runs beside each other.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::serve::*;

/// An admin's script rewriting a large file in place, again and again with the same
/// content (`flock tokens.lock sh -c 'c=$(cat tokens); printf "%s\n" "$c" > tokens'`),
/// while something touches it every 10 ms so that it is never quiet, read by a serve that
/// can take no lease: a token in every version is never refused. (Found by an adversarial
/// run: the hold ran out, the read that it forced landed between a rewrite's truncate and
/// its write, and the empty state was installed: 194 of 1017 checks refused in 12 s.)
#[test]
fn a_large_file_rewritten_in_place_in_a_loop_never_refuses_a_stable_token() {
    let mut content = record("stable", "read", "s");
    for i in 0..1300 {
        content += &record(&format!("filler-{i}"), "read", "f");
    }
    let (dir, file, serve) = served_as_nobody(&content);
    assert_eq!(serve.ask("CHECK read stable"), ok("stable"));
    let lock = dir.path().join("tokens.lock");
    let end = Instant::now() + Duration::from_secs(5);
    // Three such scripts at once (each waits for the lock in turn).
    let rewriting: Vec<_> = (0..3)
        .map(|_| {
            let (file, lock) = (file.clone(), lock.clone());
            thread::spawn(move || {
                for _ in 0..500 {
                    if Instant::now() >= end {
                        break;
                    }
                    let status = Command::new("flock")
                        .arg(&lock)
                        .args([
                            "sh",
                            "-c",
                            r#"c=$(cat "$1"); printf '%s\n' "$c" > "$1""#,
                            "sh",
                        ])
                        .arg(&file)
                        .status()
                        .unwrap();
                    assert!(status.success());
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let touching = {
        let file = file.clone();
        thread::spawn(move || {
            for _ in 0..1000 {
                if Instant::now() >= end {
                    break;
                }
                let status = Command::new("touch").arg(&file).status().unwrap();
                assert!(status.success());
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut client = Client::connect(serve.socket.as_ref().unwrap());
    let (mut checks, mut refused) = (0, 0);
    while Instant::now() < end && checks < 2000 {
        checks += 1;
        if client.ask("CHECK read stable") != ok("stable") {
            refused += 1;
        }
        thread::sleep(Duration::from_millis(5));
    }
    for rewriter in rewriting {
        rewriter.join().expect("a rewriting thread");
    }
    touching.join().expect("the touching thread");
    assert_eq!(
        refused,
        0,
        "{refused} of {checks} checks of a stable token refused\nlog:\n{}",
        serve.log()
    );
}
