//! Last used in a real `serve` (docs/last-used.md): the figures of socket and HTTP checks in
//! the sidecar, written on an interval and at SIGTERM, never torn by `kill -9`, a revoked
//! record dropping out, a corrupt or foreign sidecar a warning, two servers on one file;
//! `X-Token-Expires` and the expiry gauges of `/metrics`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::eventually;
use crate::support::serve::*;
use nix::sys::signal::Signal;
use tempfile::TempDir;

/// What the sidecar says, by ID; panics if it does not parse as a whole (torn or corrupt).
fn sidecar(path: &Path) -> HashMap<String, serde_json::Value> {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["tokenfile_seen"], 1, "{text}");
    assert!(text.ends_with('\n'), "{text:?}");
    lines
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (row["id"].as_str().unwrap().to_string(), row)
        })
        .collect()
}

fn setup(content: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, content).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let seen = dir.path().join("tokens.seen");
    (dir, file, seen)
}

fn quick(cmd: &mut Command) {
    cmd.args(["--seen-interval", "100ms"]);
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

#[test]
fn socket_and_http_uses_land_in_the_sidecar() {
    let _timed = crate::support::timed();
    let content =
        record("alpha", "read", "ci") + &record("beta", "read", "") + &record("never", "read", "");
    let (dir, file, seen) = setup(&content);
    let serve = Serve::start_configured(&file, dir.path(), Listen::Both, &quick);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    assert_eq!(
        serve.ask("CHECK write alpha"),
        format!("FORBIDDEN {}", id("alpha"))
    );
    assert_eq!(serve.ask("CHECK read nobody"), "UNAUTHORIZED");
    let (name, value) = bearer("beta");
    let response = http(
        serve.http.unwrap(),
        "GET",
        "/check?scope=read",
        &[(name, &value), ("X-Forwarded-For", "203.0.113.7, 10.0.0.1")],
    );
    assert_eq!(response.status, 204);
    eventually(
        "the sidecar names both records",
        Duration::from_secs(5),
        || seen.exists() && sidecar(&seen).len() == 2,
    );
    let rows = sidecar(&seen);
    let alpha = &rows[&id("alpha")];
    assert_eq!(alpha["uses"], 2, "a grant and a missing scope: {alpha}");
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(alpha["last_client"], format!("uid {uid}"));
    assert!(alpha["last_used"].as_str().unwrap().ends_with('Z'));
    // The address the nearest proxy appended, not the one a client may have sent.
    assert_eq!(rows[&id("beta")]["last_client"], "10.0.0.1");
    assert!(!rows.contains_key(&id("never")));
    // Never a token, only IDs; never readable by others.
    let text = fs::read_to_string(&seen).unwrap();
    assert!(!text.contains("alpha") && !text.contains("beta"), "{text}");
    assert_eq!(
        fs::metadata(&seen).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The token file is not touched.
    assert_eq!(fs::read_to_string(&file).unwrap(), content);
}

#[test]
fn sigterm_writes_the_last_uses_and_a_restart_keeps_them() {
    let (dir, file, seen) = setup(&record("alpha", "read", ""));
    // An interval no test waits for: only the shutdown can have written it.
    let long = |cmd: &mut Command| {
        cmd.args(["--seen-interval", "1h"]);
    };
    let mut serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &long);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    assert!(!seen.exists());
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    assert_eq!(sidecar(&seen)[&id("alpha")]["uses"], 1);

    // A restart starts from the sidecar: one more use makes two.
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    eventually("the count goes on", Duration::from_secs(5), || {
        sidecar(&seen)[&id("alpha")]["uses"] == 2
    });
}

#[test]
fn a_revoked_record_drops_out_of_the_sidecar() {
    let _timed = crate::support::timed();
    let (dir, file, seen) = setup(&(record("alpha", "read", "") + &record("beta", "read", "")));
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    serve.ask("CHECK read alpha");
    serve.ask("CHECK read beta");
    eventually("both are in the sidecar", Duration::from_secs(5), || {
        seen.exists() && sidecar(&seen).len() == 2
    });
    // Revoked by rewriting the file without it (as `revoke` does, by rename).
    let next = dir.path().join("next");
    fs::write(&next, record("beta", "read", "")).unwrap();
    fs::set_permissions(&next, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&next, &file).unwrap();
    serve.answers("CHECK read alpha", "UNAUTHORIZED", Duration::from_secs(3));
    serve.ask("CHECK read beta");
    eventually(
        "alpha is gone from the sidecar",
        Duration::from_secs(5),
        || {
            let rows = sidecar(&seen);
            !rows.contains_key(&id("alpha")) && rows[&id("beta")]["uses"] == 2
        },
    );
}

#[test]
fn a_corrupt_or_foreign_sidecar_is_a_warning() {
    for (what, text) in [
        ("corrupt", "this is not json\n".to_string()),
        (
            "foreign",
            "{\"tokenfile_seen\":1,\"file\":\"/elsewhere/tokens\",\"written\":\"2026-01-01T00:00:00Z\"}\n"
                .to_string(),
        ),
    ] {
        let (dir, file, seen) = setup(&record("alpha", "read", ""));
        fs::write(&seen, &text).unwrap();
        let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
        assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"), "{what}");
        eventually("the sidecar is replaced", Duration::from_secs(5), || {
            fs::read_to_string(&seen).is_ok_and(|t| t != text)
        });
        assert_eq!(sidecar(&seen)[&id("alpha")]["uses"], 1, "{what}");
        assert!(
            serve.log().contains("last-used sidecar ignored"),
            "{what}: {}",
            serve.log()
        );
        // What it held is moved aside, not destroyed by the next write.
        let aside = dir.path().join("tokens.seen.ignored");
        assert_eq!(fs::read_to_string(&aside).unwrap(), text, "{what}");
    }
}

#[test]
fn a_sidecar_with_one_bad_line_is_kept_aside_with_its_history() {
    let (dir, file, seen) = setup(&(record("alpha", "read", "") + &record("beta", "read", "")));
    let header = format!(
        "{{\"tokenfile_seen\":1,\"file\":{:?},\"written\":\"2026-01-01T00:00:00Z\"}}\n",
        fs::canonicalize(&file).unwrap().display().to_string()
    );
    let history = format!(
        "{header}{{\"id\":\"{}\",\"last_used\":\"2026-01-01T00:00:00Z\",\"uses\":5000}}\ngarbage\n",
        id("beta")
    );
    fs::write(&seen, &history).unwrap();
    fs::set_permissions(&seen, fs::Permissions::from_mode(0o600)).unwrap();
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    eventually("the new sidecar", Duration::from_secs(5), || {
        fs::read_to_string(&seen).is_ok_and(|t| t != history)
    });
    let aside = fs::read_to_string(dir.path().join("tokens.seen.ignored")).unwrap();
    assert_eq!(
        aside, history,
        "beta's 5000 uses are still there to recover"
    );
}

#[test]
fn a_file_caught_empty_or_missing_loses_no_figure() {
    let _timed = crate::support::timed();
    // `probe` tells when serve sees a change; its own uses are not counted below.
    let content =
        record("alpha", "read", "") + &record("beta", "read", "") + &record("probe", "read", "");
    let (dir, file, seen) = setup(&content);
    let mut serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    let uses = |rows: &HashMap<String, serde_json::Value>, token: &str| {
        rows.get(&id(token))
            .map_or(0, |row| row["uses"].as_u64().unwrap())
    };
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    assert_eq!(serve.ask("CHECK read beta"), ok("beta"));
    eventually("both rows", Duration::from_secs(5), || {
        seen.exists() && sidecar(&seen).len() == 2
    });
    // An in-place writer truncates the file, and a use lands meanwhile: the sidecar written
    // then has no row (nothing is in the file), but the figures are not forgotten.
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    fs::write(&file, "").unwrap();
    serve.answers("CHECK read probe", "UNAUTHORIZED", PATIENCE);
    eventually("the empty file's sidecar", Duration::from_secs(5), || {
        sidecar(&seen).is_empty()
    });
    fs::write(&file, &content).unwrap();
    serve.answers("CHECK read probe", &ok("probe"), PATIENCE);
    let back = |rows: &HashMap<String, serde_json::Value>| {
        uses(rows, "alpha") == 2 && uses(rows, "beta") == 1
    };
    if !crate::support::within(Duration::from_secs(5), || back(&sidecar(&seen))) {
        panic!(
            "the rows are not back: {:?}\n{}",
            sidecar(&seen),
            serve.log()
        );
    }

    // Uses just before the file goes missing, and before it is made unsafe, are kept for
    // when it is back (nothing is written meanwhile).
    for _ in 0..5 {
        assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    }
    fs::rename(&file, dir.path().join("away")).unwrap();
    serve.answers("CHECK read probe", "UNAUTHORIZED", PATIENCE);
    fs::rename(dir.path().join("away"), &file).unwrap();
    serve.answers("CHECK read probe", &ok("probe"), PATIENCE);
    assert_eq!(serve.ask("CHECK read beta"), ok("beta"));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o606)).unwrap();
    serve.answers("CHECK read probe", "UNAUTHORIZED", PATIENCE);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    serve.answers("CHECK read probe", &ok("probe"), PATIENCE);
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    let rows = sidecar(&seen);
    assert_eq!(
        (uses(&rows, "alpha"), uses(&rows, "beta")),
        (7, 2),
        "{rows:?}"
    );
}

#[test]
fn a_fifo_or_a_planted_sidecar_hangs_nothing_and_is_not_believed() {
    let (dir, file, seen) = setup(&record("alpha", "read", ""));
    nix::unistd::mkfifo(&seen, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    eventually(
        "the FIFO replaced by a sidecar",
        Duration::from_secs(5),
        || fs::symlink_metadata(&seen).is_ok_and(|m| m.is_file()),
    );
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success(), "{}", serve.log());

    // A sidecar another user planted (in a sticky directory, say) claiming a use in 2099.
    let (dir, file, seen) = setup(&record("alpha", "read", ""));
    let real = fs::canonicalize(&file).unwrap();
    let forged = format!(
        "{{\"tokenfile_seen\":1,\"file\":{:?},\"written\":\"2026-01-01T00:00:00Z\"}}\n\
         {{\"id\":\"{}\",\"last_used\":\"2099-01-01T00:00:00Z\",\"uses\":999,\"last_client\":\"attacker\"}}\n",
        real.display().to_string(),
        id("alpha")
    );
    fs::write(&seen, &forged).unwrap();
    nix::unistd::chown(&seen, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let list = |seen: &Path| {
        let mut cmd = crate::support::tokenfile_command();
        cmd.arg("--file")
            .arg(&file)
            .args(["list", "--json", "--seen"])
            .arg(seen);
        crate::support::run(cmd, None)
    };
    let out = list(&seen).ok();
    assert!(out.err().contains("cannot be trusted"), "{}", out.err());
    assert!(out.json()["records"][0]["last_used"].is_null());
    // Owned by us, the row from 2099 is still left out.
    nix::unistd::chown(&seen, Some(nix::unistd::getuid()), None).unwrap();
    let out = list(&seen).ok();
    assert!(
        out.json()["records"][0]["last_used"].is_null(),
        "{}",
        out.out()
    );
    drop(dir);
}

#[test]
fn the_sidecar_mode_and_group_do_not_depend_on_the_umask() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let (dir, file, seen) = setup(&record("alpha", "read", ""));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::chown(&file, None, Some(nix::unistd::Gid::from_raw(NOBODY))).unwrap();
    // A stale temporary copy from a writer killed mid-write.
    let stale = dir.path().join(".tokens.seen.AbC123.tmp");
    fs::write(&stale, "half").unwrap();
    let strict_umask = |cmd: &mut Command| {
        quick(cmd);
        // SAFETY: umask(2) is async-signal-safe, and nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
                Ok(())
            });
        }
    };
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &strict_umask);
    assert_eq!(serve.ask("CHECK read alpha"), ok("alpha"));
    eventually("the sidecar", Duration::from_secs(5), || seen.exists());
    let meta = fs::metadata(&seen).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), NOBODY, "the token file's group");
    assert!(!stale.exists(), "the stale temporary copy is removed");
}

#[test]
fn kill_9_never_leaves_a_torn_sidecar() {
    let _alone = crate::support::serial();
    let (dir, file, seen) = setup(&record("alpha", "read", ""));
    let fast = |cmd: &mut Command| {
        cmd.args(["--seen-interval", "10ms"]);
    };
    for round in 0..8 {
        let mut serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &fast);
        let mut client = Client::connect(serve.socket.as_ref().unwrap());
        // Checks for 20 to 160 ms, so that the kill falls anywhere in the writes.
        for _ in 0..(4 + round * 4) {
            assert_eq!(client.ask("CHECK read alpha"), ok("alpha"));
            std::thread::sleep(Duration::from_millis(5));
        }
        serve.signal(Signal::SIGKILL);
        let _ = serve.wait_exit();
        if seen.exists() {
            // Old or new, never half: it parses whole, and only its own temporaries may be
            // left (by the kill) beside it.
            assert!(sidecar(&seen)[&id("alpha")]["uses"].as_u64().unwrap() >= 1);
        }
    }
    assert!(seen.exists(), "no sidecar was written in 8 rounds");
}

#[test]
fn two_servers_on_one_file_keep_each_others_figures() {
    let _timed = crate::support::timed();
    let (dir, file, seen) = setup(&(record("alpha", "read", "") + &record("beta", "read", "")));
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let first = Serve::start_configured(&file, one.path(), Listen::Socket, &quick);
    let second = Serve::start_configured(&file, two.path(), Listen::Socket, &quick);
    first.ask("CHECK read alpha");
    second.ask("CHECK read beta");
    eventually(
        "both uses are in the one sidecar",
        Duration::from_secs(5),
        || seen.exists() && sidecar(&seen).len() == 2,
    );
    drop(dir);
}

#[test]
fn two_servers_writing_at_once_drop_no_row() {
    let _alone = crate::support::serial();
    let tokens: Vec<String> = (0..300).map(|i| format!("token-{i}")).collect();
    let content: String = tokens.iter().map(|t| record(t, "read", "")).collect();
    let (dir, file, seen) = setup(&content);
    let fast = |cmd: &mut Command| {
        cmd.args(["--seen-interval", "5ms"]);
    };
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let mut first = Serve::start_configured(&file, one.path(), Listen::Socket, &fast);
    let mut second = Serve::start_configured(&file, two.path(), Listen::Socket, &fast);
    let mut a = Client::connect(first.socket.as_ref().unwrap());
    let mut b = Client::connect(second.socket.as_ref().unwrap());
    for (i, token) in tokens.iter().enumerate() {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(client.ask(&format!("CHECK read {token}")), ok(token));
    }
    first.signal(Signal::SIGTERM);
    second.signal(Signal::SIGTERM);
    assert!(first.wait_exit().success() && second.wait_exit().success());
    assert_eq!(sidecar(&seen).len(), tokens.len(), "every use has its row");
    drop(dir);
}

#[test]
fn a_grant_says_when_the_token_expires_and_metrics_count_expiries() {
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let soon = soon
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let content = record("forever", "read", "")
        + &record("soon", "read", "").replace('\n', &format!("\t\t{soon}\n"))
        + &record("later", "read", "").replace('\n', "\t\t2999-01-01T00:00:00Z\n")
        + &record("gone", "read", "").replace('\n', "\t\t2020-01-01T00:00:00Z\n");
    let (dir, file, _) = setup(&content);
    let serve = Serve::start(&file, dir.path(), Listen::Http);
    let ask = |token: &str| {
        let (name, value) = bearer(token);
        http(
            serve.http.unwrap(),
            "GET",
            "/check?scope=read",
            &[(name, &value)],
        )
    };
    let granted = ask("soon");
    assert_eq!(granted.status, 204);
    assert_eq!(granted.header("X-Token-Expires"), Some(soon.as_str()));
    // Present and empty for a record that never expires: a proxy that copies it overwrites
    // a client's forged copy.
    assert_eq!(ask("forever").header("X-Token-Expires"), Some(""));
    assert_eq!(ask("gone").status, 401);
    assert_eq!(serve.metric("tokenfile_records_expiring_7d"), 1.0);
    let soonest = time::OffsetDateTime::parse(&soon, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp() as f64;
    assert_eq!(
        serve.metric("tokenfile_soonest_expiry_timestamp_seconds"),
        soonest
    );
}

#[test]
fn a_denial_is_explained_at_debug_level_without_the_token() {
    let content = record("alpha-secret-token", "read,kafka:*", "ci")
        + &record("old-secret-token", "read", "").replace('\n', "\t\t2020-01-01T00:00:00Z\n");
    let (dir, file, _) = setup(&content);
    let debug = |cmd: &mut Command| {
        cmd.env("RUST_LOG", "tokenfile=debug");
    };
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &debug);
    serve.ask("CHECK read,write alpha-secret-token");
    serve.ask("CHECK read old-secret-token");
    serve.ask("CHECK read unknown-secret-token");
    eventually("three explanations", Duration::from_secs(3), || {
        serve.log().matches("explain=").count() >= 3
    });
    let log = serve.log();
    // The required scopes by position only: a client may put a token there.
    assert!(
        log.contains(r##""required":"#2","granted_by":null"##),
        "{log}"
    );
    assert!(
        log.contains(r##""required":"#1","granted_by":"read""##),
        "{log}"
    );
    assert!(!log.contains(r#""required":"write""#), "{log}");
    assert!(
        log.contains("expired token") && log.contains("unknown token"),
        "{log}"
    );
    assert!(!log.contains("secret-token"), "a token in the log:\n{log}");
}

#[test]
fn a_token_used_near_its_expiry_is_warned_about_once() {
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(3))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let content = record("soon", "read", "deploy bot").replace('\n', &format!("\t\t{soon}\n"))
        + &record("forever", "read", "");
    let (dir, file, _) = setup(&content);
    let serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    serve.ask("CHECK read forever");
    // Not used yet: no warning, however near its expiry.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!serve.log().contains("still in use"), "{}", serve.log());
    for _ in 0..3 {
        serve.ask("CHECK read soon");
        std::thread::sleep(Duration::from_millis(150));
    }
    eventually("the warning", Duration::from_secs(3), || {
        serve.log().contains("still in use")
    });
    let log = serve.log();
    assert_eq!(log.matches("still in use").count(), 1, "once a day:\n{log}");
    assert!(
        log.contains(&id("soon")) && log.contains("deploy bot"),
        "{log}"
    );
    assert!(!log.contains(&id("forever")), "{log}");
}

#[test]
fn list_reads_what_serve_wrote() {
    let (dir, file, seen) =
        setup(&(record("alpha", "read", "used") + &record("beta", "read", "idle")));
    let mut serve = Serve::start_configured(&file, dir.path(), Listen::Socket, &quick);
    serve.ask("CHECK read alpha");
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_exit().success());
    assert!(seen.exists());
    let out = crate::support::tokenfile_command()
        .args(["--file", file.to_str().unwrap(), "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = listing["records"].as_array().unwrap();
    let alpha = records.iter().find(|r| r["name"] == "used").unwrap();
    let beta = records.iter().find(|r| r["name"] == "idle").unwrap();
    assert_eq!(alpha["uses"], 1, "{alpha}");
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(alpha["last_client"], format!("uid {uid}"));
    assert!(alpha["last_used"].is_string(), "{alpha}");
    assert!(beta["last_used"].is_null(), "{beta}");
}
