//! The sidecars (docs/writing.md: the lock file, the audit log) and the POSIX ACLs of the file
//! and its directories (docs/trust.md), against another user (uid 65534) who shares a sticky
//! world-writable directory with root's token file, or who was granted an ACL entry.
//!
//! Run as root (as CI does); each test that needs root or `setfacl` says so and returns.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Root's token file (0600, one hashed record) in a sticky world-writable directory, as
/// docs/trust.md allows; `None` when not run as root.
fn sticky() -> Option<(Env, String)> {
    if !is_root() {
        eprintln!("skipped: needs root to plant files owned by uid {NOBODY}");
        return None;
    }
    let env = Env::init();
    let token = env.mint(&["--scope", "admin"]);
    chmod(env.dir.path(), 0o1777);
    Some((env, token))
}

/// Replaces `path` by a symlink to `target` owned by nobody, as that user would plant it.
fn plant_link(path: &Path, target: &Path) {
    let _ = fs::remove_file(path);
    symlink(target, path).unwrap();
    lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// Replaces `path` by a file of nobody's with `mode`.
fn plant_file(path: &Path, mode: u32) {
    let _ = fs::remove_file(path);
    fs::write(path, b"").unwrap();
    chmod(path, mode);
    lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A root-owned file outside the sticky directory, that an attacker would like root to write.
fn victim(env: &Env) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("victim");
    fs::write(&path, b"precious\n").unwrap();
    chmod(&path, 0o600);
    let _ = env;
    (dir, path)
}

fn has_setfacl() -> bool {
    let found = Command::new("setfacl").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: setfacl is not installed");
    }
    found
}

fn setfacl(args: &[&str], path: &Path) {
    let out = Command::new("setfacl")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "setfacl {args:?}: {out:?}");
}

#[test]
fn a_lock_symlink_planted_by_another_user_is_refused() {
    let Some((env, _)) = sticky() else { return };
    let (_keep, target) = victim(&env);
    let lock = env.path("tokens.lock");
    plant_link(&lock, &target);
    let before = env.read();
    let out = env.tokenfile(&["mint", "--scope", "x"]).code(PROBLEMS);
    let err = out.err();
    assert!(
        err.contains(&format!("rm -- {}", lock.display())),
        "{out:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "no token shown for a refused change: {out:?}"
    );
    assert_eq!(env.read(), before);
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
}

#[test]
fn a_lock_symlink_swapped_during_parallel_mints_loses_no_update() {
    let Some((env, _)) = sticky() else { return };
    let lock = env.path("tokens.lock");
    let (_keep, a) = victim(&env);
    let (_keep2, b) = victim(&env);
    plant_link(&lock, &a);
    let records_before = env.records().len();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, lock) = (stop.clone(), lock.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                let tmp = lock.with_extension("swap");
                let _ = fs::remove_file(&tmp);
                if symlink(if flip { &a } else { &b }, &tmp).is_ok() {
                    let _ = lchown(&tmp, Some(NOBODY), Some(NOBODY));
                    let _ = fs::rename(&tmp, &lock);
                }
                flip = !flip;
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mints: Vec<_> = (0..30)
        .map(|_| {
            spawn(
                env.command(&["mint", "--scope", "x", "--lock-timeout", "30"]),
                None,
            )
        })
        .collect();
    let succeeded = mints
        .into_iter()
        .map(super::support::Running::wait)
        .filter(|out| out.code == OK)
        .count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        env.records().len(),
        records_before + succeeded,
        "every mint that printed a token must have landed"
    );
    assert_eq!(succeeded, 0, "a lock file that is a symlink is refused");
}

#[test]
fn a_lock_file_owned_by_another_user_is_refused_even_while_they_hold_it() {
    let Some((env, _)) = sticky() else { return };
    let lock = env.path("tokens.lock");
    plant_file(&lock, 0o644);
    // The attacker holds the lock on their own file: every writer would wait for it.
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .arg("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if fs::read_to_string("/proc/locks")
            .is_ok_and(|l| l.contains(&format!(":{} ", fs::metadata(&lock).unwrap().ino())))
        {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = env.tokenfile(&["mint", "--scope", "x", "--lock-timeout", "2"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let out = out.code(PROBLEMS);
    assert!(out.err().contains("uid 65534"), "{out:?}");
    assert!(
        out.err().contains(&format!("rm -- {}", lock.display())),
        "{out:?}"
    );
}

#[test]
fn a_world_writable_lock_file_is_refused_and_check_still_answers() {
    let Some((env, token)) = sticky() else { return };
    let lock = env.path("tokens.lock");
    chmod(&lock, 0o666);
    env.tokenfile(&["mint", "--scope", "x"])
        .code(PROBLEMS)
        .err_has("tokens.lock");
    // `check` only waits on a lock it may trust: it answers, it does not fail.
    assert_eq!(env.check(&token, &["admin"]), OK);
    plant_link(&lock, Path::new("/nonexistent-lock"));
    assert_eq!(env.check(&token, &["admin"]), OK);
    let out = env.tokenfile(&["lint"]).code(PROBLEMS);
    assert!(out.out().contains("tokens.lock"), "{out:?}");
    assert!(!Path::new("/nonexistent-lock").exists());
}

/// Runs `mint` (which must succeed: an audit failure is a warning) and returns its stderr.
fn mint_warns(env: &Env, extra: &[&str]) -> String {
    let mut args = vec!["mint", "--scope", "x"];
    args.extend_from_slice(extra);
    let before = env.records().len();
    let out = env.tokenfile(&args).ok();
    assert_eq!(env.records().len(), before + 1, "the change still lands");
    let err = out.err();
    assert!(err.contains("warning"), "{out:?}");
    err
}

#[test]
fn an_audit_symlink_to_a_victim_file_is_never_written_through() {
    let Some((env, _)) = sticky() else { return };
    let (_keep, target) = victim(&env);
    let audit = env.path("tokens.audit.jsonl");
    plant_link(&audit, &target);
    let err = mint_warns(&env, &[]);
    assert!(err.contains(&format!("rm -- {}", audit.display())), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
}

#[test]
fn a_dangling_audit_symlink_is_named_as_such() {
    let Some((env, _)) = sticky() else { return };
    let audit = env.path("tokens.audit.jsonl");
    let nowhere = env.path("nowhere");
    plant_link(&audit, &nowhere);
    let err = mint_warns(&env, &[]);
    assert!(err.contains("symlink"), "{err}");
    assert!(err.contains(&format!("rm -- {}", audit.display())), "{err}");
    assert!(!nowhere.exists());
}

#[test]
fn an_audit_file_another_user_owns_or_can_write_is_not_written() {
    let Some((env, _)) = sticky() else { return };
    let audit = env.path("tokens.audit.jsonl");
    plant_file(&audit, 0o666);
    let err = mint_warns(&env, &[]);
    assert!(err.contains("uid 65534"), "{err}");
    assert_eq!(fs::read(&audit).unwrap(), b"");
    // Root's own, but writable by everyone: anyone could erase its lines.
    fs::remove_file(&audit).unwrap();
    fs::write(&audit, b"").unwrap();
    chmod(&audit, 0o666);
    let err = mint_warns(&env, &[]);
    assert!(err.contains("chmod o-w") || err.contains("rm --"), "{err}");
    assert_eq!(fs::read(&audit).unwrap(), b"");
    // A hard link to a file of root's elsewhere.
    let (_keep, target) = victim(&env);
    fs::remove_file(&audit).unwrap();
    fs::hard_link(&target, &audit).unwrap();
    mint_warns(&env, &[]);
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
}

#[test]
fn an_explicit_audit_log_that_is_a_symlink_is_not_followed() {
    let Some((env, _)) = sticky() else { return };
    let (_keep, target) = victim(&env);
    let link = env.path("elsewhere.jsonl");
    plant_link(&link, &target);
    let link_arg = link.display().to_string();
    let err = mint_warns(&env, &["--audit-log", &link_arg]);
    assert!(err.contains(&link_arg), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
    let out = env
        .tokenfile(&["--audit-log", &link_arg, "lint"])
        .code(PROBLEMS);
    assert!(out.out().contains(&format!("rm -- {link_arg}")), "{out:?}");
}

#[test]
fn a_missing_audit_log_and_lock_are_created_0600_whatever_the_umask() {
    let Some((env, _)) = sticky() else { return };
    fs::remove_file(env.path("tokens.lock")).unwrap();
    fs::remove_file(env.path("tokens.audit.jsonl")).unwrap();
    let out = run(
        {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!("umask 0; exec {BIN} mint --scope x"))
                .env("TOKENFILE", &env.file)
                .env_remove("TOKENFILE_AUDIT_LOG");
            cmd
        },
        None,
    );
    let out = out.ok();
    assert!(!out.err().contains("warning"), "{out:?}");
    for name in ["tokens.lock", "tokens.audit.jsonl"] {
        let meta = fs::symlink_metadata(env.path(name)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o600, "{name}");
    }
    assert_eq!(env.audit_lines().len(), 1);
}

#[test]
fn a_named_user_who_may_write_the_file_or_a_directory_makes_it_unsafe() {
    if !is_root() || !has_setfacl() {
        return;
    }
    let env = Env::init();
    let token = env.mint(&["--scope", "admin"]);
    setfacl(&["-m", &format!("u:{NOBODY}:rw")], &env.file);
    let out = env.check_out(&token, &["admin"]).code(PROBLEMS);
    assert!(
        out.err()
            .contains(&format!("setfacl -x u:{NOBODY} {}", env.file_str())),
        "{out:?}"
    );
    // Masked to read-only by the ACL mask: no longer writable by that user.
    setfacl(&["-m", "m::r"], &env.file);
    assert_eq!(env.check(&token, &["admin"]), OK);
    setfacl(&["-b"], &env.file);
    // A directory on the way.
    setfacl(&["-m", &format!("u:{NOBODY}:rwx")], env.dir.path());
    let out = env.check_out(&token, &["admin"]).code(PROBLEMS);
    assert!(
        out.err()
            .contains(&format!("setfacl -x u:{NOBODY} {}", env.dir_str())),
        "{out:?}"
    );
    setfacl(&["-b"], env.dir.path());
    // The takeover an adversarial run found: the user a directory's ACL lets write puts a
    // file of their own in the file's place and so becomes "the file's owner". A named write
    // entry on a directory counts unless it names the directory's owner (or root).
    let dir = env.dir.path().join("sub");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("tokens");
    let evil = "evil-token-of-nobody";
    fs::write(
        &file,
        format!("sha256:{}\tadmin\n", sha256_hex(evil.as_bytes())),
    )
    .unwrap();
    chmod(&file, 0o600);
    std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    setfacl(&["-m", &format!("u:{NOBODY}:rwx")], &dir);
    let path = file.to_str().unwrap();
    let out = env
        .tokenfile_stdin(
            &["--file", path, "check", "--scope", "admin"],
            format!("{evil}\n").as_bytes(),
        )
        .code(PROBLEMS);
    assert!(out.err().contains("setfacl -x"), "{out:?}");
    setfacl(&["-b"], &dir);
    // A named group with write: like group-writable, a lint warning only.
    setfacl(&["-m", &format!("g:{NOBODY}:rw")], &env.file);
    assert_eq!(env.check(&token, &["admin"]), OK);
    let out = env.tokenfile(&["lint"]).ok();
    assert!(out.out().contains("ACL"), "{out:?}");
}

#[test]
fn a_named_user_who_may_read_plaintext_exposes_it() {
    if !is_root() || !has_setfacl() {
        return;
    }
    let env = Env::with_bytes(b"plain-secret-1\tadmin\n");
    setfacl(&["-m", &format!("u:{NOBODY}:r")], &env.file);
    let out = env.check_out("plain-secret-1", &["admin"]).code(PROBLEMS);
    assert!(
        out.err().contains(&format!("setfacl -x u:{NOBODY}")),
        "{out:?}"
    );
    assert!(!out.err().contains("plain-secret-1"));
    env.tokenfile(&["list"]).code(PROBLEMS);
    // A named group may read, as a 0640 group may.
    setfacl(&["-b"], &env.file);
    setfacl(&["-m", &format!("g:{NOBODY}:r")], &env.file);
    assert_eq!(env.check("plain-secret-1", &["admin"]), OK);
    // Hashed only: a digest is not a credential.
    let env = Env::init();
    let token = env.mint(&["--scope", "admin"]);
    setfacl(&["-m", &format!("u:{NOBODY}:r")], &env.file);
    assert_eq!(env.check(&token, &["admin"]), OK);
}

#[test]
fn a_credential_on_an_invalid_line_is_plaintext_for_the_exposure_rule() {
    let env = Env::with_bytes(b"tf_likely_a_real_token\tbad scope!\n");
    env.chmod(0o644);
    let out = env.tokenfile(&["list"]).code(PROBLEMS);
    assert!(out.err().contains("chmod o-r"), "{out:?}");
    assert!(!out.err().contains("tf_likely_a_real_token"));
    env.tokenfile(&["lint"]).code(PROBLEMS);
    // A malformed digest may be a token someone pasted after `sha256:`.
    env.write(b"sha256:abc\t*\n");
    env.chmod(0o644);
    env.tokenfile(&["list"]).code(PROBLEMS);
    // Comments and blank lines are not credentials.
    env.write(b"# tf_in_a_comment\n\n");
    env.chmod(0o644);
    env.tokenfile(&["list"]).ok();
}

/// `serve` applies the same rule: a readable-by-others file with a credential on an invalid
/// line fails closed (valid hashed records and all), and a named-user read ACL counts.
#[test]
fn serve_counts_invalid_lines_and_acls_as_exposure() {
    use crate::support::serve::*;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let hashed = format!("sha256:{}\tread\n", sha256_hex(b"alpha"));
    fs::write(&file, format!("{hashed}tf_pasted_secret\tbad scope!\n")).unwrap();
    chmod(&file, 0o644);
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    assert_eq!(serve.ask("CHECK read alpha"), "UNAUTHORIZED");
    assert!(serve.log().contains("chmod o-r"), "{}", serve.log());
    assert!(!serve.log().contains("tf_pasted_secret"));
    drop(serve);
    if !is_root() || !has_setfacl() {
        return;
    }
    fs::write(&file, "alpha\tread\n").unwrap();
    chmod(&file, 0o600);
    setfacl(&["-m", &format!("u:{NOBODY}:r")], &file);
    let serve = Serve::start(&file, dir.path(), Listen::Socket);
    assert_eq!(serve.ask("CHECK read alpha"), "UNAUTHORIZED");
    assert!(
        serve.log().contains(&format!("setfacl -x u:{NOBODY}")),
        "{}",
        serve.log()
    );
}
