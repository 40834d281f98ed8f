//! Fault 4, reload under load (RELIABILITY.md): `serve` answers checks from several threads,
//! over its socket and over HTTP, while the token file is rewritten in every way people save
//! it — `tokenfile mint`/`revoke` (rename), an editor's rename-over, an in-place rewrite
//! written in pieces (`cat > file`, vim `backupcopy=yes`), a truncate then an append (`: >
//! file; cat new >> file`), `>>`, `cp` over it, and a Kubernetes Secret volume's `..data`
//! symlink swap. The file is that Secret layout throughout (`tokens -> ..data/tokens`), so
//! every writer goes through the symlinks the way it would there.
//!
//! What a user relies on (docs/protocols.md), checked on every answer and after every rewrite:
//! - a token valid in every version is never refused (`OK` / 204), and no answer is an
//!   `ERROR` or a 5xx;
//! - a token that is never valid is never granted — not even when the file is caught cut
//!   right after it (every other version ends with a record whose token starts with it, and
//!   an in-place writer pauses exactly there: a one-field line is a full-access record);
//! - a token added is granted, and a token removed refused, within [`RELOAD`] of the end of
//!   the rewrites.
//!
//! Prints `fault reload-under-load: rewrites=… checks=… refused=… errors=… never_granted=…
//! late=…`. CI runs 100 rewrites; `TOKENFILE_FAULT_ROUNDS=10` runs 1000.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::fault::{Rng, rounds};
use crate::support::report;
use crate::support::serve::*;

/// Valid in every version. One is a plaintext record, so that the in-place writer's first
/// pause (in the middle of its line) leaves a file with a different, shorter token in it.
const STABLE: [&str; 3] = [
    "stable-plaintext-token",
    "stable-hashed-token-1",
    "stable-hashed-token-2",
];
/// Never valid; see [`BAIT`].
const NEVER: &str = "never-valid";
/// A plaintext record that every other version ends with: a file cut right after its first
/// [`NEVER`]`.len()` bytes grants [`NEVER`] everything.
const BAIT: &str = "never-valid-bait";
/// Tokens added by the test, beyond [`STABLE`]: the oldest are removed again.
const MIN_ROLLING: usize = 3;
const MAX_ROLLING: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Style {
    Mint,
    Revoke,
    RenameOver,
    InPlace,
    TruncateThenAppend,
    Append,
    Cp,
    SecretSwap,
}

/// The in-place rewrite twice: it is the one that leaves half-written files to be seen.
const STYLES: [Style; 9] = [
    Style::InPlace,
    Style::Mint,
    Style::Revoke,
    Style::RenameOver,
    Style::InPlace,
    Style::TruncateThenAppend,
    Style::Append,
    Style::Cp,
    Style::SecretSwap,
];

/// What the file holds now, and the Secret volume it lives in:
/// `volume/tokens -> ..data/tokens`, `volume/..data -> ..v<N>`.
struct Model {
    volume: PathBuf,
    version: u32,
    /// Valid now besides [`STABLE`], oldest first.
    rolling: VecDeque<String>,
    bait: bool,
    added: usize,
}

impl Model {
    fn new(volume: PathBuf) -> Model {
        let model = Model {
            volume,
            version: 0,
            rolling: VecDeque::new(),
            bait: false,
            added: 0,
        };
        let (content, _) = model.render();
        fs::create_dir_all(model.version_dir(0)).unwrap();
        write_private(&model.version_dir(0).join("tokens"), &content);
        symlink("..v0", model.volume.join("..data")).unwrap();
        symlink("..data/tokens", model.link()).unwrap();
        model
    }

    /// The name everybody uses (and `serve` is given).
    fn link(&self) -> PathBuf {
        self.volume.join("tokens")
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.volume.join(format!("..v{version}"))
    }

    /// The file the links lead to now: where a rename must land to replace it.
    fn real(&self) -> PathBuf {
        self.version_dir(self.version).join("tokens")
    }

    /// The file's content, and where the in-place writer pauses: in the middle of the
    /// plaintext stable line, and right after [`NEVER`] in the bait line (or, without it,
    /// in the middle of the last line).
    fn render(&self) -> (String, [usize; 2]) {
        let mut text = String::from("# reload under load\n");
        let first_cut = text.len() + STABLE[0].len() / 2;
        text += &format!("{}\tread\tstable\n", STABLE[0]);
        for token in &STABLE[1..] {
            text += &record(token, "read", "stable");
        }
        for token in &self.rolling {
            text += &record(token, "read", "rolling");
        }
        let second_cut = if self.bait {
            let at = text.len() + NEVER.len();
            text += &format!("{BAIT}\tread\tbait\n");
            at
        } else {
            text.len() - 5
        };
        (text, [first_cut, second_cut])
    }

    fn fresh_token(&mut self, seed: u64) -> String {
        self.added += 1;
        format!("rolling-{seed}-{}", self.added)
    }
}

/// Writes a new token file 0600: it holds a plaintext record, which docs/trust.md refuses to
/// serve from a file others can read (a Secret volume's default 0644 included).
fn write_private(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A pause of an in-place writer long enough for the reloader to look (it reads a file
/// quiet for 50 ms), but shorter than the 0.3 s after an in-place write that it waits
/// before it believes a state that takes tokens away (`CONFIRM` in src/serve/policy.rs).
fn long_pause(rng: &mut Rng) -> Duration {
    Duration::from_millis(50 + rng.below(100))
}

/// One rewrite in `style`; returns the tokens it added and removed.
fn rewrite(
    model: &mut Model,
    style: Style,
    rng: &mut Rng,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    let link = model.link();
    match style {
        Style::Mint => {
            let (code, token) = cli(&link, &["mint", "--scope", "read", "--name", "m"], "");
            assert_eq!(code, 0, "mint failed");
            model.rolling.push_back(token.clone());
            return (vec![token], vec![]);
        }
        Style::Revoke => {
            let token = model.rolling.pop_front().expect("a rolling token");
            let (code, _) = cli(&link, &["revoke", &id(&token)], "");
            assert_eq!(code, 0, "revoke failed");
            return (vec![], vec![token]);
        }
        Style::Append => {
            let token = model.fresh_token(seed);
            let status = Command::new("sh")
                .arg("-c")
                .arg(r#"printf '%s' "$1" >> "$2""#)
                .args(["sh", &record(&token, "read", "appended")])
                .arg(&link)
                .status()
                .unwrap();
            assert!(status.success(), "sh >> failed");
            model.rolling.push_back(token.clone());
            return (vec![token], vec![]);
        }
        _ => {}
    }
    // The writers of a whole new content: one token more, sometimes the oldest one less,
    // and the bait in every other version.
    let token = model.fresh_token(seed);
    model.rolling.push_back(token.clone());
    // A version with the bait only adds to the one before, so that a reader that took it
    // cut right after NEVER would install that at once: nothing is confirmed first.
    model.bait = !model.bait;
    let mut removed = Vec::new();
    if model.rolling.len() > MAX_ROLLING
        || (!model.bait && model.rolling.len() > MIN_ROLLING && rng.below(2) == 0)
    {
        removed.extend(model.rolling.pop_front());
    }
    let (content, cuts) = model.render();
    match style {
        Style::RenameOver => replace_by_rename(&model.real(), &content),
        Style::InPlace => {
            // A long pause at one cut at most, because the reloader waits for a state that
            // takes tokens away to stay the same, and that wait would hide a second pause
            // from it: right after NEVER when the bait is there, else sometimes in the
            // middle of the stable tokens.
            let slow = if model.bait {
                1
            } else {
                2 * rng.below(2) as usize
            };
            let mut f = File::create(&link).unwrap(); // O_TRUNC, through the links
            let mut from = 0;
            for (i, to) in cuts.into_iter().enumerate() {
                f.write_all(&content.as_bytes()[from..to]).unwrap();
                from = to;
                if i == slow {
                    thread::sleep(long_pause(rng));
                }
            }
            f.write_all(&content.as_bytes()[from..]).unwrap();
        }
        Style::TruncateThenAppend => {
            File::create(&link).unwrap();
            // Half with no pause at all: truncate and rewrite then often land within one
            // tick of the file system's clock, so the finished file has the times of the
            // empty one (see serve_reload::truncate_then_rewrite_is_seen_within_a_second).
            let pause = if rng.below(2) == 0 {
                long_pause(rng)
            } else {
                Duration::ZERO
            };
            thread::sleep(pause);
            let mut f = OpenOptions::new().append(true).open(&link).unwrap();
            f.write_all(content.as_bytes()).unwrap();
        }
        Style::Cp => {
            let source = model.volume.join("new-tokens");
            fs::write(&source, &content).unwrap();
            let status = Command::new("cp").arg(&source).arg(&link).status().unwrap();
            assert!(status.success(), "cp failed");
        }
        Style::SecretSwap => {
            let old = model.version_dir(model.version);
            model.version += 1;
            fs::create_dir(model.version_dir(model.version)).unwrap();
            write_private(&model.real(), &content);
            let temp = model.volume.join("..data_tmp");
            symlink(format!("..v{}", model.version), &temp).unwrap();
            fs::rename(&temp, model.volume.join("..data")).unwrap();
            fs::remove_dir_all(old).unwrap();
        }
        Style::Mint | Style::Revoke | Style::Append => unreachable!(),
    }
    (vec![token], removed)
}

/// The checking threads: told to stop and joined when dropped, so that a failing test
/// does not leave them (and, through them, `serve`) running.
struct Checkers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Checkers {
    /// Two threads on the socket and two over HTTP.
    fn start(serve: &Arc<Serve>, tally: &Arc<Tally>) -> Checkers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4)
            .map(|i| {
                let (serve, tally, stop) = (serve.clone(), tally.clone(), stop.clone());
                thread::spawn(move || {
                    if i % 2 == 0 {
                        check_socket(&serve, &tally, &stop);
                    } else {
                        check_http(&serve, &tally, &stop);
                    }
                })
            })
            .collect();
        Checkers { stop, threads }
    }

    /// Stops and joins them; false if one panicked.
    fn stop(&mut self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let joined: Vec<bool> = self.threads.drain(..).map(|t| t.join().is_ok()).collect();
        joined.into_iter().all(|ok| ok)
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the checking threads saw.
#[derive(Default)]
struct Tally {
    checks: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    never_granted: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(what);
        }
    }
}

/// The token a checking thread asks about next: the stable ones in turn, and every fourth
/// time the one that is never valid.
fn pick(n: u64) -> &'static str {
    if n % 4 == 3 {
        NEVER
    } else {
        STABLE[(n % 3) as usize]
    }
}

/// Checks over one socket connection until `stop`.
fn check_socket(serve: &Serve, tally: &Tally, stop: &AtomicBool) {
    let mut client = Client::connect(serve.socket.as_ref().unwrap());
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let token = pick(n);
        n += 1;
        let answer = client.ask(&format!("CHECK read {token}"));
        tally.checks.fetch_add(1, Ordering::SeqCst);
        let at = format!("socket check {n}, {token}: {answer:?}");
        if answer.starts_with("ERROR") {
            tally.problem(&tally.errors, at);
        } else if token == NEVER && answer != "UNAUTHORIZED" {
            tally.problem(&tally.never_granted, at);
        } else if token != NEVER && answer != ok(token) {
            tally.problem(&tally.refused, at);
        }
    }
}

/// Checks over one kept-alive HTTP connection (a new one after an error) until `stop`.
fn check_http(serve: &Serve, tally: &Tally, stop: &AtomicBool) {
    let addr = serve.http.unwrap();
    let mut conn = HttpConn::connect(addr).expect("connect over HTTP");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let token = pick(n);
        n += 1;
        let bearer = format!("Bearer {token}");
        let answer = conn.get("/check?scope=read", &[("Authorization", &bearer)]);
        tally.checks.fetch_add(1, Ordering::SeqCst);
        let status = match answer {
            Ok(response) => response.status,
            Err(e) => {
                tally.problem(&tally.errors, format!("HTTP check {n}: {e}"));
                conn = HttpConn::connect(addr).expect("reconnect over HTTP");
                continue;
            }
        };
        let at = format!("HTTP check {n}, {token}: {status}");
        if status >= 500 {
            tally.problem(&tally.errors, at);
        } else if token == NEVER && status != 401 {
            tally.problem(&tally.never_granted, at);
        } else if token != NEVER && status != 204 {
            tally.problem(&tally.refused, at);
        }
    }
}

/// Waits until every token in `granted` is granted and every one in `gone` refused; how
/// long that took, or `None` if not within [`RELOAD`] (then it waits up to [`PATIENCE`]
/// more, so that one late reload is not counted again at the next wait).
fn settle(client: &mut Client, granted: &[String], gone: &[String]) -> Option<Duration> {
    let start = Instant::now();
    let all_seen = |client: &mut Client| {
        granted
            .iter()
            .all(|t| client.ask(&format!("CHECK read {t}")) == ok(t))
            && gone
                .iter()
                .all(|t| client.ask(&format!("CHECK read {t}")) == "UNAUTHORIZED")
    };
    while start.elapsed() < RELOAD + PATIENCE {
        if all_seen(client) {
            let took = start.elapsed();
            return (took <= RELOAD).then_some(took);
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn reload_under_load_never_refuses_a_valid_token() {
    let _alone = crate::support::serial();
    let rewrites_wanted = 100 * rounds();
    let mut rng = Rng::from_env();
    let seed = rng.seed();
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("secret");
    fs::create_dir(&volume).unwrap();
    let mut model = Model::new(volume);
    let serve = Serve::start(&model.link(), dir.path(), Listen::Both);
    let reloads_before = serve.metric("tokenfile_reloads_total");

    let tally = Arc::new(Tally::default());
    let serve = Arc::new(serve);
    let mut checkers = Checkers::start(&serve, &tally);

    let mut probe = Client::connect(serve.socket.as_ref().unwrap());
    let (mut rewrites, mut late) = (0, 0);
    let mut by_style: BTreeMap<Style, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut problems = Vec::new();
    // Bounded by count, and by time in case reloads stall.
    let end = Instant::now() + Duration::from_secs(120) * rounds() as u32;
    while rewrites < rewrites_wanted && Instant::now() < end {
        // A burst of 1–3 rewrites close together (a reload may not settle between them),
        // then wait for all of it to be seen.
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for _ in 0..=rng.below(3) {
            let mut style = STYLES[rng.below(STYLES.len() as u64) as usize];
            if style == Style::Revoke && model.rolling.len() <= MIN_ROLLING {
                style = Style::Mint;
            }
            let (plus, minus) = rewrite(&mut model, style, &mut rng, seed);
            added.retain(|t| !minus.contains(t));
            added.extend(plus);
            removed.extend(minus);
            *by_style.entry(style).or_default() += 1;
            rewrites += 1;
            thread::sleep(Duration::from_millis(rng.below(5)));
        }
        match settle(&mut probe, &added, &removed) {
            Some(took) => slowest = slowest.max(took),
            None => {
                late += 1;
                problems.push(format!(
                    "after rewrite {rewrites}: {} added / {} removed token(s) not seen within {RELOAD:?}",
                    added.len(),
                    removed.len()
                ));
            }
        }
    }
    assert!(checkers.stop(), "a checking thread panicked");
    let reloads = serve.metric("tokenfile_reloads_total") - reloads_before;
    let styles: Vec<String> = by_style.iter().map(|(s, n)| format!("{s:?} {n}")).collect();
    let t = &tally;
    let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
    report(&format!(
        "fault reload-under-load: rewrites={rewrites} checks={} refused={} errors={} \
         never_granted={} late={late} (reloads {reloads}; slowest change seen after {} ms; \
         {}; seed {seed})",
        load(&t.checks),
        load(&t.refused),
        load(&t.errors),
        load(&t.never_granted),
        slowest.as_millis(),
        styles.join(", "),
    ));
    for p in t.problems.lock().unwrap().iter().chain(&problems) {
        eprintln!("  {p}");
    }
    assert!(
        rewrites >= rewrites_wanted,
        "only {rewrites} rewrites in time"
    );
    assert!(load(&t.checks) > 0);
    assert_eq!(
        load(&t.refused),
        0,
        "valid tokens refused; log:\n{}",
        serve.log()
    );
    assert_eq!(load(&t.errors), 0, "errors; log:\n{}", serve.log());
    assert_eq!(load(&t.never_granted), 0, "never-valid token granted");
    assert_eq!(late, 0, "changes not seen within {RELOAD:?}");
    assert!(reloads >= (rewrites / 4) as f64, "only {reloads} reloads");
}
