//! A load generator for `serve`'s Unix socket (docs/protocols.md), and the trivial server it is
//! compared with.
//!
//! ```sh
//! # the request line comes from the environment, never argv (it holds a token):
//! export TF_REQUEST="CHECK deploy $(cargo run -q --release --example gen_tokens -- --token 4)"
//! socket_load pipelined   SOCKET [--connections 2] [--seconds 3] [--batch 256] [--window 4096]
//! socket_load unpipelined SOCKET [--requests 20000]
//! socket_load fixed-server SOCKET                  # baseline: answers every line at once
//! ```
//!
//! - `pipelined`: each connection has a writer that sends request lines in batches of
//!   `--batch`, keeping at most `--window` unanswered, and a reader that counts the
//!   answers; prints `checks_per_s` over `--seconds` (after a short warm-up).
//! - `unpipelined`: one connection, one request at a time; the time from writing a request
//!   to reading its whole answer, over `--requests` requests (after a warm-up); prints
//!   p50/p99/p99.9 in µs.
//! - `fixed-server`: a Unix-socket server that answers each line with the fixed line
//!   `OK 000000000000` (as long as `serve`'s `OK <id>`) from one thread per connection:
//!   the cost of the kernel and of this generator, which `serve`'s figures are divided by.
//!
//! Every answer must equal the first one (the request is the same each time); a different
//! one is counted in `errors=`, and the exit code is then 1. The output is one line of
//! `key=value` pairs on stdout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: socket_load pipelined|unpipelined|fixed-server SOCKET [--connections N] \
                     [--seconds S] [--batch N] [--window N] [--requests N] (request line in $TF_REQUEST)";
const WARMUP: Duration = Duration::from_millis(500);
const FIXED_ANSWER: &[u8] = b"OK 000000000000\n";

struct Options {
    connections: usize,
    seconds: f64,
    batch: usize,
    window: usize,
    requests: usize,
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(socket)) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut options = Options {
        connections: 2,
        seconds: 3.0,
        batch: 256,
        window: 4096,
        requests: 20_000,
    };
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<f64>().ok());
        let Some(value) = value.filter(|v| *v > 0.0) else {
            eprintln!("socket_load: {flag} needs a positive number\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--connections" => options.connections = value as usize,
            "--seconds" => options.seconds = value,
            "--batch" => options.batch = value as usize,
            "--window" => options.window = value as usize,
            "--requests" => options.requests = value as usize,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match mode.as_str() {
        "fixed-server" => fixed_server(&socket),
        "pipelined" | "unpipelined" => {
            let Ok(mut request) = std::env::var("TF_REQUEST") else {
                eprintln!("socket_load: set TF_REQUEST to the request line");
                return ExitCode::from(2);
            };
            request.push('\n');
            if mode == "pipelined" {
                pipelined(&socket, request.as_bytes(), &options)
            } else {
                unpipelined(&socket, request.as_bytes(), &options)
            }
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("socket_load: {errors} answers differed from the first one");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("socket_load: {socket}: {e}");
            ExitCode::from(10)
        }
    }
}

/// One request answered the plain way: what every later answer must equal.
fn first_answer(stream: &mut BufReader<UnixStream>, request: &[u8]) -> io::Result<Vec<u8>> {
    stream.get_mut().write_all(request)?;
    let mut answer = Vec::new();
    stream.read_until(b'\n', &mut answer)?;
    if answer.last() != Some(&b'\n') {
        return Err(io::Error::other("the server closed the connection"));
    }
    Ok(answer)
}

/// Answers so far, for the writers' window: a count and a way to wait for it to move.
struct Progress {
    answered: Mutex<u64>,
    moved: Condvar,
}

fn pipelined(socket: &str, request: &[u8], options: &Options) -> io::Result<u64> {
    let expected = first_answer(&mut BufReader::new(UnixStream::connect(socket)?), request)?;
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let batch: Vec<u8> = request.repeat(options.batch);
    let mut threads = Vec::new();
    for _ in 0..options.connections {
        let stream = UnixStream::connect(socket)?;
        let mut reader = stream.try_clone()?;
        let mut writer = stream;
        let progress = Arc::new(Progress {
            answered: Mutex::new(0),
            moved: Condvar::new(),
        });
        let (stop_w, progress_w, batch) = (stop.clone(), progress.clone(), batch.clone());
        let (window, per_batch) = (options.window as u64, options.batch as u64);
        threads.push(thread::spawn(move || -> io::Result<()> {
            let mut sent = 0u64;
            while !stop_w.load(Relaxed) {
                let mut answered = progress_w.answered.lock().unwrap();
                while sent - *answered + per_batch > window.max(per_batch) {
                    answered = progress_w.moved.wait(answered).unwrap();
                }
                drop(answered);
                writer.write_all(&batch)?;
                sent += per_batch;
            }
            // Lets the server see the end once it has answered everything.
            writer.shutdown(std::net::Shutdown::Write)
        }));
        let (expected, total, errors) = (expected.clone(), total.clone(), errors.clone());
        threads.push(thread::spawn(move || -> io::Result<()> {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut at = 0; // position in `expected` of the next byte
            loop {
                let n = reader.read(&mut buffer)?;
                if n == 0 {
                    return Ok(());
                }
                let mut lines = 0;
                for &b in &buffer[..n] {
                    if b != expected[at] {
                        errors.fetch_add(1, Relaxed);
                    }
                    at += 1;
                    if at == expected.len() {
                        at = 0;
                        lines += 1;
                    }
                }
                total.fetch_add(lines, Relaxed);
                *progress.answered.lock().unwrap() += lines;
                progress.moved.notify_one();
            }
        }));
    }
    thread::sleep(WARMUP);
    let (start_count, started) = (total.load(Relaxed), Instant::now());
    thread::sleep(Duration::from_secs_f64(options.seconds));
    let (end_count, elapsed) = (total.load(Relaxed), started.elapsed());
    stop.store(true, Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a thread panicked"))??;
    }
    let checks = end_count - start_count;
    println!(
        "mode=pipelined connections={} batch={} window={} checks={checks} seconds={:.3} checks_per_s={:.0} errors={}",
        options.connections,
        options.batch,
        options.window,
        elapsed.as_secs_f64(),
        checks as f64 / elapsed.as_secs_f64(),
        errors.load(Relaxed)
    );
    Ok(errors.load(Relaxed))
}

fn unpipelined(socket: &str, request: &[u8], options: &Options) -> io::Result<u64> {
    let mut stream = BufReader::new(UnixStream::connect(socket)?);
    let expected = first_answer(&mut stream, request)?;
    let mut answer = Vec::with_capacity(expected.len());
    let mut errors = 0u64;
    let mut ask = |stream: &mut BufReader<UnixStream>| -> io::Result<Duration> {
        let started = Instant::now();
        stream.get_mut().write_all(request)?;
        answer.clear();
        stream.read_until(b'\n', &mut answer)?;
        let took = started.elapsed();
        if answer != expected {
            errors += 1;
        }
        Ok(took)
    };
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        ask(&mut stream)?;
    }
    let mut samples = Vec::with_capacity(options.requests);
    let started = Instant::now();
    for _ in 0..options.requests {
        samples.push(ask(&mut stream)?);
    }
    let elapsed = started.elapsed();
    samples.sort_unstable();
    let quantile = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "mode=unpipelined requests={} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} checks_per_s={:.0} errors={errors}",
        samples.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(0.999),
        quantile(1.0),
        samples.len() as f64 / elapsed.as_secs_f64(),
    );
    Ok(errors)
}

/// The baseline: reads what is there, answers every complete line with [`FIXED_ANSWER`],
/// writes the answers in one go — what `serve` does, minus the check.
fn fixed_server(socket: &str) -> io::Result<u64> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        thread::spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut answers = Vec::new();
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let lines = buffer[..n].iter().filter(|&&b| b == b'\n').count();
                answers.clear();
                for _ in 0..lines {
                    answers.extend_from_slice(FIXED_ANSWER);
                }
                if stream.write_all(&answers).is_err() {
                    break;
                }
            }
        });
    }
    Ok(0)
}
