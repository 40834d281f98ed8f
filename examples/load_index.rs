//! Measures what a `serve` reload costs: read the file and build the [`TokenIndex`].
//!
//! ```sh
//! cargo run --release --example load_index -- tokens              # one load, then exit
//! cargo run --release --example load_index -- tokens --iterations 10
//! cargo run --release --example load_index -- tokens --stream     # TokenIndex::read_from
//! cargo run --release --example load_index -- tokens --whole      # fs::read + TokenIndex::load
//! ```
//!
//! By default the file is read and indexed by `TokenIndex::read_file`, as `serve` does (in
//! chunks, a large file as two halves by two threads); `--stream` reads and indexes it in
//! chunks by one thread (`TokenIndex::read_from`); `--whole` reads it into memory first
//! (`fs::read`) and indexes the bytes (`TokenIndex::load`).
//! Prints one line per load (`read_ms`, `load_ms`, records, problems) on stderr and, with
//! `--iterations`, the median on stdout. Run once without `--iterations` it is a process that
//! reads and indexes the file and exits — what `bench/run.sh` times against `wc -l`. The
//! index is not dropped at the end (a reload drops the previous state after the swap, off
//! the request path; the process exit frees it here).

use std::process::ExitCode;
use std::time::Instant;

use tokenfile::index::TokenIndex;

const USAGE: &str = "usage: load_index FILE [--stream | --whole] [--iterations N] [--quiet]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut iterations = 1usize;
    let mut quiet = false;
    let mut stream = false;
    let mut whole = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => iterations = n,
                _ => {
                    eprintln!("load_index: --iterations needs a positive number");
                    return ExitCode::from(2);
                }
            },
            "--quiet" => quiet = true,
            "--stream" => stream = true,
            "--whole" => whole = true,
            _ if file.is_none() => file = Some(arg),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(file) = file else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut totals = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let (bytes, read, (index, problems)) = if !whole {
            let loaded = std::fs::File::open(&file).and_then(|file| match stream {
                true => TokenIndex::read_from(file),
                false => {
                    let size = file.metadata()?.len();
                    let indexed = TokenIndex::read_file(&file, size)?;
                    Ok((indexed.index, indexed.problems))
                }
            });
            match loaded {
                // Reading and indexing interleave: all of it counts as load_ms.
                Ok(loaded) => (Vec::new(), std::time::Duration::ZERO, loaded),
                Err(e) => {
                    eprintln!("load_index: cannot read {file}: {e}");
                    return ExitCode::from(10);
                }
            }
        } else {
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("load_index: cannot read {file}: {e}");
                    return ExitCode::from(10);
                }
            };
            let read = started.elapsed();
            let loaded = TokenIndex::load(&bytes);
            (bytes, read, loaded)
        };
        let total = started.elapsed();
        if !quiet {
            eprintln!(
                "read_ms={:.1} load_ms={:.1} total_ms={:.1} records={} tokens={} problems={}",
                read.as_secs_f64() * 1e3,
                (total - read).as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3,
                index.records,
                index.len(),
                problems.len()
            );
        }
        totals.push(total.as_secs_f64() * 1e3);
        if iterations == 1 {
            // Leave freeing to the process exit, like a reload leaves it off the hot path.
            std::mem::forget(index);
            std::mem::forget(bytes);
        }
    }
    if iterations > 1 {
        totals.sort_by(f64::total_cmp);
        println!("median_total_ms={:.1}", totals[totals.len() / 2]);
    }
    ExitCode::SUCCESS
}
