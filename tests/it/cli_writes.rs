//! docs/writing.md: modes and owners kept, symlinks kept, the `flock(2)` on the
//! sidecar `<file>.lock` (timeouts, waiting, interplay with `flock(1)`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::support::*;

#[test]
fn a_rewrite_keeps_mode_and_owner_and_replaces_by_rename() {
    let env = Env::init();
    env.chmod(0o640);
    let owner = if is_root() {
        std::os::unix::fs::chown(&env.file, Some(4242), Some(4343)).unwrap();
        Some((4242, 4343))
    } else {
        eprintln!("not root: cannot give the file another owner; checking mode only");
        None
    };
    let inode = fs::metadata(&env.file).unwrap().ino();
    let token = env.mint(&["--scope", "read"]);
    let meta = fs::metadata(&env.file).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if let Some((uid, gid)) = owner {
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }
    assert_ne!(
        meta.ino(),
        inode,
        "the file is replaced by rename, not rewritten in place"
    );

    for mode in [0o400, 0o660, 0o604] {
        env.chmod(mode);
        env.tokenfile(&["rotate", &id_of(token.as_bytes()), "--grace", "1m"])
            .ok();
        assert_eq!(env.mode(), mode);
        env.tokenfile(&["hash"]).ok();
        assert_eq!(env.mode(), mode);
    }
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[test]
fn a_symlinked_path_keeps_the_link_and_replaces_the_file_it_points_to() {
    // The layout of a Kubernetes volume: tokens -> ..data/tokens, ..data -> ..2026_01_01.
    let env = Env::new();
    let version = env.path("..2026_01_01");
    fs::create_dir(&version).unwrap();
    fs::write(version.join("tokens"), b"# real file\n").unwrap();
    symlink("..2026_01_01", env.path("..data")).unwrap();
    symlink("..data/tokens", &env.file).unwrap();

    let token = env.mint(&["--scope", "read"]);
    assert!(
        fs::symlink_metadata(&env.file)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&env.file).unwrap(),
        Path::new("..data/tokens")
    );
    assert!(
        fs::symlink_metadata(env.path("..data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let real = fs::read(version.join("tokens")).unwrap();
    assert!(real.starts_with(b"# real file\n"));
    assert!(
        String::from_utf8_lossy(&real).contains(&hashed(token.as_bytes())),
        "the new record is in the real file"
    );
    assert_eq!(env.check(&token, &["read"]), OK);
    assert!(leftovers_in(&version).is_empty());

    // An absolute link too; every path to the file shares one lock.
    let link = env.path("abs-link");
    symlink(version.join("tokens"), &link).unwrap();
    let held = hold_lock(&version.join("tokens.lock"));
    for path in [&env.file, &link, &version.join("tokens")] {
        let out = run(
            env.command(&[
                "--file",
                &path.display().to_string(),
                "--lock-timeout",
                "200ms",
                "mint",
                "--scope",
                "x",
            ]),
            None,
        );
        assert_eq!(out.code, IO, "{out:?}");
    }
    drop(held);
    let out = run(
        env.command(&[
            "--file",
            &link.display().to_string(),
            "mint",
            "--scope",
            "y",
        ]),
        None,
    )
    .ok();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(env.check(out.out().trim_end(), &["y"]), OK);
}

#[test]
fn a_dangling_symlink_is_an_io_error() {
    let env = Env::new();
    symlink("nowhere", &env.file).unwrap();
    let out = env.tokenfile(&["mint", "--scope", "read"]).code(IO);
    assert!(out.err().contains(&env.file_str()), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(!env.path("nowhere").exists());
}

#[test]
fn a_held_lock_times_out_with_a_message_naming_it() {
    let env = Env::init();
    let before = env.read();
    let lock = env.path("tokens.lock");
    let held = hold_lock(&lock);
    let audit_before = env.audit_lines().len();
    for args in [
        &["--lock-timeout", "300ms", "mint", "--scope", "read"][..],
        &["mint", "--lock-timeout", "300ms", "--scope", "read"],
        &["--lock-timeout", "0.3", "hash"],
        &["--lock-timeout", "300ms", "revoke", "abcd"],
    ] {
        let out = env.tokenfile(args).code(IO);
        assert!(out.err().contains(&lock.display().to_string()), "{out:?}");
        assert!(
            out.stdout.is_empty(),
            "no token for a mint that did not land: {out:?}"
        );
    }
    assert_eq!(env.read(), before);
    assert_eq!(env.audit_lines().len(), audit_before);
    // Readers do not take the lock.
    env.tokenfile(&["list"]).ok();
    env.tokenfile(&["lint"]).ok();
    assert_eq!(env.check("nope", &["read"]), UNAUTHORIZED);
    drop(held);
    env.mint(&["--scope", "read"]);
    assert!(lock.exists(), "the lock file is never deleted");
}

#[test]
fn a_waiting_writer_proceeds_once_the_lock_is_released() {
    let env = Env::init();
    let before = env.read();
    let held = hold_lock(&env.path("tokens.lock"));
    let mut waiting = spawn(
        env.command(&["--lock-timeout", "60s", "mint", "--scope", "read"]),
        None,
    );
    // Give it time to reach the lock; it must still be waiting, the file untouched.
    thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.has_exited(),
        "the writer did not wait for the lock"
    );
    assert_eq!(env.read(), before);
    drop(held);
    let out = waiting.wait().ok();
    assert_eq!(env.check(out.out().trim_end(), &["read"]), OK);
}

#[test]
fn an_admin_script_holding_the_lock_with_flock_1_is_waited_for() {
    let env = Env::init();
    let lock = env.path("tokens.lock");
    // flock(1) takes the lock, then the shell holds it until its stdin closes.
    let mut admin = Command::new("flock")
        .args(["-w", "30", "-x"])
        .arg(&lock)
        .args(["sh", "-c", "echo locked; read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("flock(1) is installed");
    let mut line = String::new();
    BufReader::new(admin.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");

    let out = env
        .tokenfile(&["--lock-timeout", "300ms", "mint", "--scope", "read"])
        .code(IO);
    assert!(out.err().contains("tokens.lock"), "{out:?}");
    let mut waiting = spawn(
        env.command(&["--lock-timeout", "60s", "mint", "--scope", "read"]),
        None,
    );
    thread::sleep(Duration::from_millis(300));
    assert!(!waiting.has_exited());

    let mut stdin = admin.stdin.take().unwrap();
    stdin.write_all(b"done\n").unwrap();
    drop(stdin);
    assert!(admin.wait().unwrap().success());
    let out = waiting.wait().ok();
    assert_eq!(env.check(out.out().trim_end(), &["read"]), OK);
    assert_eq!(env.ids().len(), 1);
}

#[test]
fn the_lock_of_a_killed_holder_is_free() {
    let env = Env::init();
    let lock = env.path("tokens.lock");
    // A writer that dies (SIGKILL) while holding the lock: the kernel releases it.
    let status = Command::new("sh")
        .args(["-c", "exec 9>>\"$1\"; flock -x 9; kill -9 $$", "sh"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(!status.success());
    let token = env.mint(&["--lock-timeout", "5s", "--scope", "read"]);
    assert_eq!(env.check(&token, &["read"]), OK);
    assert!(lock.exists());
}
