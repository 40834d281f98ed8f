//! What the adversarial runs against last used found, kept as tests: `serve --seen` pointed
//! at a file that is no sidecar, hostile and hanging sidecars, sidecars that another user
//! planted, figures begun yesterday, a Kubernetes `..data` swap between two runs of `serve`,
//! uses made while the file is missing at shutdown, and `lint --expiring`'s advice.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::serve::*;
use crate::support::*;

/// A sidecar naming `file`, begun at `since` (if given), with `(id, last_used)` rows.
fn write_sidecar(path: &Path, file: &Path, since: Option<&str>, rows: &[(&str, &str)]) {
    let mut header = serde_json::json!({
        "tokenfile_seen": 1, "file": file.display().to_string(), "written": stamp(now())
    });
    if let Some(since) = since {
        header["since"] = since.into();
    }
    let mut text = format!("{header}\n");
    for (id, last_used) in rows {
        text.push_str(&format!(
            "{}\n",
            serde_json::json!({"id": id, "last_used": last_used, "uses": 1})
        ));
    }
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn serve_seen(env: &Env, seen: &Path) -> Out {
    let mut cmd = env.command(&["serve", "--socket"]);
    cmd.arg(env.path("s.sock")).arg("--seen").arg(seen);
    run(cmd, None)
}

#[test]
fn serve_never_takes_a_file_that_is_no_sidecar_for_its_seen_path() {
    let env = Env::init();
    let token = env.mint(&["--scope", "a"]);
    let before = env.read();
    // The token file itself, its lock, its audit log, any other file, a directory.
    let lock = env.path("tokens.lock");
    fs::write(&lock, "").unwrap();
    let other = env.path("config.ini");
    fs::write(&other, "[section]\nkey = value\n").unwrap();
    for path in [
        env.file.clone(),
        lock.clone(),
        env.audit_path(),
        other.clone(),
        env.dir.path().to_path_buf(),
    ] {
        let out = serve_seen(&env, &path).code(USAGE);
        assert!(
            out.err()
                .contains("something other than a last-used sidecar"),
            "{}: {}",
            path.display(),
            out.err()
        );
        assert!(!env.path("s.sock").exists());
    }
    assert_eq!(env.read(), before, "the token file is untouched");
    assert_eq!(
        fs::read_to_string(&other).unwrap(),
        "[section]\nkey = value\n"
    );
    // Through a symlink to the token file too.
    let link = env.path("link.seen");
    symlink(&env.file, &link).unwrap();
    serve_seen(&env, &link).code(USAGE);
    assert_eq!(env.check(&token, &["a"]), 0);
}

#[test]
fn an_existing_sidecar_or_a_new_path_is_fine_for_seen() {
    let env = Env::init();
    let token = env.mint(&["--scope", "a"]);
    let seen = env.path("state.seen");
    let mut serve = Serve::start_configured(&env.file, env.dir.path(), Listen::Socket, &|cmd| {
        cmd.arg("--seen").arg(&seen);
    });
    assert_eq!(serve.ask(&format!("CHECK a {token}")), ok(&token));
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let text = fs::read_to_string(&seen).unwrap();
    assert!(text.starts_with("{\"tokenfile_seen\":1"), "{text}");
    assert!(text.contains("\"since\":"), "{text}");
    // The next start replaces it again.
    let serve = Serve::start_configured(&env.file, env.dir.path(), Listen::Socket, &|cmd| {
        cmd.arg("--seen").arg(&seen);
    });
    drop(serve);
}

/// Runs `list` (or anything) with a deadline: a hang is a failure, not a stuck suite.
fn within_seconds(mut cmd: Command, seconds: u64) -> Out {
    let started = Instant::now();
    let out = run(&mut cmd, None);
    assert!(
        started.elapsed() < Duration::from_secs(seconds),
        "took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn a_fifo_or_a_device_as_sidecar_hangs_nothing() {
    let env = Env::init();
    env.mint(&["--scope", "a"]);
    let own = fs::canonicalize(&env.file).unwrap().with_extension("seen");
    nix::unistd::mkfifo(&own, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = within_seconds(env.command(&["list"]), 5).ok();
    assert!(out.err().contains("cannot be trusted"), "{}", out.err());
    let out = within_seconds(env.command(&["prune", "--unused", "1d", "--dry-run"]), 5);
    assert_eq!(out.code, USAGE, "no usable figures: {}", out.err());
    fs::remove_file(&own).unwrap();
    let out = within_seconds(env.command(&["list", "--seen", "/dev/zero"]), 5).ok();
    assert!(out.err().contains("/dev/zero"), "{}", out.err());
}

#[test]
fn a_sidecar_others_could_write_is_no_evidence_for_prune() {
    let env = Env::init();
    let used = env.mint(&["--scope", "a"]);
    let real = fs::canonicalize(&env.file).unwrap();
    let own = real.with_extension("seen");
    write_sidecar(
        &own,
        &real,
        None,
        &[(&id_of(used.as_bytes()), &days_ago(1))],
    );
    fs::set_permissions(&own, fs::Permissions::from_mode(0o666)).unwrap();
    let out = env.tokenfile(&["prune", "--unused", "0s", "--dry-run"]);
    assert_eq!(out.code, USAGE, "{}", out.err());
    assert!(out.err().contains("world-writable"), "{}", out.err());
    // Owned by another user: the same.
    fs::set_permissions(&own, fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    env.tokenfile(&["prune", "--unused", "0s", "--dry-run"])
        .code(USAGE);
    // A --seen file that is asked for but missing stops prune --unused, not only warns.
    nix::unistd::chown(&own, Some(nix::unistd::getuid()), None).unwrap();
    let out = env.tokenfile(&["prune", "--unused", "0s", "--seen", "/nonexistent/h.seen"]);
    assert_eq!(out.code, USAGE, "{}", out.err());
    assert_eq!(env.ids().len(), 1, "nothing was removed");
}

#[test]
fn a_record_is_unused_only_for_as_long_as_the_figures_go_back() {
    // Minted 200 days ago, never seen.
    let old_line = |token: &str| {
        format!(
            "{}\tread\told\t{}\n",
            hashed(token.as_bytes()),
            days_ago(200)
        )
    };
    let env = Env::with_bytes(format!("# t\n{}", old_line("legacy-token-1")).as_bytes());
    let real = fs::canonicalize(&env.file).unwrap();
    let own = real.with_extension("seen");
    let other = id_of(b"some-other-token");
    // Figures begun yesterday: the record may have been used the day before, unseen.
    write_sidecar(&own, &real, Some(&days_ago(1)), &[(&other, &days_ago(1))]);
    let out = env
        .tokenfile(&["prune", "--unused", "90d", "--dry-run", "--json"])
        .ok();
    assert_eq!(
        out.json()["removed"],
        serde_json::json!([]),
        "{}",
        out.out()
    );
    let listed = env.tokenfile(&["list", "--unused", "90d", "--json"]).ok();
    assert_eq!(listed.json()["records"], serde_json::json!([]));
    // Figures that go back 100 days: now it is unused for 90.
    write_sidecar(&own, &real, Some(&days_ago(100)), &[(&other, &days_ago(1))]);
    let out = env
        .tokenfile(&["prune", "--unused", "90d", "--dry-run", "--json"])
        .ok();
    assert_eq!(out.json()["removed"].as_array().unwrap().len(), 1);
}

#[test]
fn figures_survive_a_kubernetes_swap_between_two_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("..v1"), dir.path().join("..v2"));
    fs::create_dir(&v1).unwrap();
    fs::create_dir(&v2).unwrap();
    let content = record("alpha", "read", "");
    for v in [&v1, &v2] {
        fs::write(v.join("tokens"), &content).unwrap();
        fs::set_permissions(v.join("tokens"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    symlink("..v1", dir.path().join("..data")).unwrap();
    symlink("..data/tokens", dir.path().join("tokens")).unwrap();
    let file = dir.path().join("tokens");
    let state = tempfile::tempdir().unwrap();
    let seen = state.path().join("tokens.seen");
    let start = || {
        let seen = seen.clone();
        Serve::start_configured(&file, state.path(), Listen::Socket, &move |cmd| {
            cmd.arg("--seen").arg(&seen);
        })
    };
    let mut serve = start();
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    // The swap: ..data now points at ..v2, and ..v1 is gone.
    let next = dir.path().join("..data.tmp");
    symlink("..v2", &next).unwrap();
    fs::rename(&next, dir.path().join("..data")).unwrap();
    fs::remove_dir_all(&v1).unwrap();
    let mut serve = start();
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let text = fs::read_to_string(&seen).unwrap();
    assert!(text.contains("\"uses\":2"), "{text}");
    assert!(!state.path().join("tokens.seen.ignored").exists(), "{text}");
}

#[test]
fn uses_made_before_the_file_went_missing_are_written_at_shutdown() {
    let env = Env::init();
    let token = env.mint(&["--scope", "a"]);
    let probe = env.mint(&["--scope", "a"]);
    let seen = fs::canonicalize(&env.file).unwrap().with_extension("seen");
    let mut serve = Serve::start_configured(&env.file, env.dir.path(), Listen::Socket, &|cmd| {
        cmd.args(["--seen-interval", "1h"]);
    });
    for _ in 0..3 {
        assert_eq!(serve.ask(&format!("CHECK a {token}")), ok(&token));
    }
    fs::rename(&env.file, env.path("moved-away")).unwrap();
    serve.answers(&format!("CHECK a {probe}"), "UNAUTHORIZED", PATIENCE);
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let text = fs::read_to_string(&seen).unwrap();
    assert!(
        text.contains(&format!("\"id\":\"{}\"", id_of(token.as_bytes())))
            && text.contains("\"uses\":3"),
        "{text}"
    );
}

#[test]
fn lint_expiring_advice_actually_ends_the_warning() {
    let env = Env::init();
    env.mint(&["--scope", "a", "--expires", "3d"]);
    let out = env.tokenfile(&["lint", "--expiring", "14d"]).code(5);
    let id = env.ids()[0].clone();
    let advice = format!("tokenfile rotate {id} --grace 24h --expires 90d");
    assert!(out.out().contains(&advice), "{}", out.out());
    // Following it: the successor expires in 90 days, the old record is in its grace period.
    let rotated = env.command(&["rotate", &id, "--grace", "24h", "--expires", "90d"]);
    run_to(rotated, std::process::Stdio::piped()).ok();
    let out = env.tokenfile(&["lint", "--expiring", "14d"]).ok();
    assert!(!out.out().contains("expiring"), "{}", out.out());
    let listed = env.tokenfile(&["list", "--expiring", "14d", "--json"]).ok();
    assert_eq!(listed.json()["records"], serde_json::json!([]));
}
