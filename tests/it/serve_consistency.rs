//! A token valid before and after a change is never refused during it (docs/protocols.md), while the
//! file is rewritten many times — by rename, and in place (truncate, then write in two
//! pieces so that a half-written file is really there to be seen).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::serve::*;

const VERSIONS: usize = 60;

/// Version `i` of the file: a long comment first, so that a partial file lacks `alpha`;
/// then `alpha` and the tokens `v1`…`vi`, so that each version only adds to the one before
/// (a state that takes tokens away is installed only after a confirmation delay longer
/// than the pauses below, which would leave nothing to swap during the run).
fn version(i: usize) -> (String, String) {
    let head: String = (0..40)
        .map(|n| format!("# version {i}, comment line {n} padding padding padding\n"))
        .collect();
    let mut tail = record("alpha", "read", "a");
    for v in 1..=i {
        tail += &record(&format!("v{v}"), "read", "v");
    }
    (head, tail)
}

/// Most rewrites follow each other closely (a reload cannot settle between them); every
/// tenth is followed by a pause long enough for a reload, so that states do get swapped
/// while the checks run.
fn pause(i: usize) {
    let pause = if i % 10 == 9 { 150 } else { (i % 4) as u64 };
    thread::sleep(Duration::from_millis(pause));
}

fn write_in_place(path: &Path, i: usize) {
    let (head, tail) = version(i);
    let mut f = File::create(path).unwrap(); // O_TRUNC: the file is empty from here
    f.write_all(head.as_bytes()).unwrap();
    thread::sleep(Duration::from_millis(1));
    f.write_all(tail.as_bytes()).unwrap();
}

fn write_by_rename(path: &Path, i: usize) {
    let (head, tail) = version(i);
    replace_by_rename(path, &(head + &tail));
}

fn never_refused_while(rewrite: fn(&Path, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let (head, tail) = version(0);
    fs::write(&file, head + &tail).unwrap();
    let serve = Serve::start(&file, dir.path(), Listen::Both);
    let before = serve.metric("tokenfile_reloads_total");

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        let file = file.clone();
        thread::spawn(move || {
            for i in 1..=VERSIONS {
                rewrite(&file, i);
                pause(i);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut client = Client::connect(serve.socket.as_ref().unwrap());
    let mut checks = 0u64;
    // Bounded by the writer, and by time in case it panicked.
    let end = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::SeqCst) && Instant::now() < end {
        let answer = client.ask("CHECK read alpha");
        assert_eq!(
            answer,
            ok("alpha"),
            "refused during a change after {checks} checks\n{}",
            serve.log()
        );
        checks += 1;
    }
    writer.join().unwrap();
    let last = format!("v{VERSIONS}");
    serve.answers(&format!("CHECK read {last}"), &ok(&last), RELOAD);
    assert_eq!(client.ask("CHECK read alpha"), ok("alpha"));
    let reloads = serve.metric("tokenfile_reloads_total") - before;
    assert!(reloads >= 2.0, "only {reloads} reloads during the run");
    assert!(checks > 0);
}

#[test]
fn never_refused_while_replaced_by_rename() {
    let _alone = crate::support::serial();
    never_refused_while(write_by_rename);
}

#[test]
fn never_refused_while_written_in_place() {
    let _alone = crate::support::serial();
    never_refused_while(write_in_place);
}
