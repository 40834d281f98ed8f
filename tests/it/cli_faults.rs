//! docs/writing.md: no space left, a read-only file system, a directory the user
//! cannot write — the original file stays byte for byte, no temp file is left, the command
//! names what failed and exits 10. And a crashed writer's leftovers do not get in the way.
//!
//! Tests run as root, where `chmod` stops nothing, so the first two use a tiny tmpfs in a
//! private user + mount namespace (`unshare -r -m`), and the third drops to `nobody` with
//! `setpriv` when it runs as root. Each is skipped, with the reason printed, where the
//! system does not allow that.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const ORIGINAL: &[u8] = b"# a file that must survive\nvictim-token\tread\tvictim\nkeep\t*\n";

/// Whether this system lets us make private mounts as an unprivileged namespace root.
fn namespaces_work() -> bool {
    match mount_namespaces_work() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIP: {why}");
            false
        }
    }
}

/// What one `tokenfile` run inside the namespace left behind, collected by the script.
struct Outcome {
    name: String,
    code: i32,
    stdout: String,
    stderr: String,
    after: Vec<u8>,
    listing: Vec<String>,
}

/// Runs `setup` then each of `commands` (tokenfile arguments after `--file $D/tokens`) inside
/// a new user + mount namespace, with `$D` a fresh mount point and `$OUT` a directory outside
/// it that survives the namespace.
fn in_namespace(env: &Env, setup: &str, commands: &[(&str, &str)]) -> Vec<Outcome> {
    let mount_point = env.path("mnt");
    let out_dir = env.path("out");
    fs::create_dir(&mount_point).unwrap();
    fs::create_dir(&out_dir).unwrap();
    fs::write(out_dir.join("original"), ORIGINAL).unwrap();
    let mut script = format!("set -e\n{setup}\nset +e\n");
    for (name, args) in commands {
        script.push_str(&format!(
            "\"$BIN\" --file \"$D/tokens\" {args} >\"$OUT/{name}.stdout\" 2>\"$OUT/{name}.stderr\"\n\
             echo $? >\"$OUT/{name}.rc\"\n\
             cat \"$D/tokens\" >\"$OUT/{name}.after\"\n\
             ls -A \"$D\" >\"$OUT/{name}.ls\"\n"
        ));
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-r", "-m", "sh", "-c", &script])
        .env("BIN", BIN)
        .env("D", &mount_point)
        .env("OUT", &out_dir)
        .env_remove("TOKENFILE")
        .env_remove("TOKENFILE_AUDIT_LOG");
    let ran = run(cmd, None);
    assert_eq!(ran.code, 0, "namespace script failed: {ran:?}");
    commands
        .iter()
        .map(|(name, _)| {
            let read = |ext: &str| fs::read(out_dir.join(format!("{name}.{ext}"))).unwrap();
            let text = |ext: &str| String::from_utf8_lossy(&read(ext)).into_owned();
            Outcome {
                name: name.to_string(),
                code: text("rc").trim().parse().unwrap(),
                stdout: text("stdout"),
                stderr: text("stderr"),
                after: read("after"),
                listing: text("ls").lines().map(str::to_string).collect(),
            }
        })
        .collect()
}

#[track_caller]
fn assert_failed_cleanly(o: &Outcome, file: &str, cause: &str) {
    let shown = format!(
        "{}: exit {}\nstdout: {}\nstderr: {}\nfiles: {:?}",
        o.name, o.code, o.stdout, o.stderr, o.listing
    );
    assert_eq!(o.code, IO, "{shown}");
    assert_eq!(
        o.after, ORIGINAL,
        "the original file must be unchanged: {shown}"
    );
    assert!(
        o.stderr.contains(file),
        "the message names the file: {shown}"
    );
    assert!(
        o.stderr.contains(cause),
        "the message says what failed: {shown}"
    );
    assert!(
        o.stdout.is_empty(),
        "no token for a change that did not land: {shown}"
    );
    assert!(
        !o.listing.iter().any(|n| n.contains(".tmp-")),
        "a temp file was left behind: {shown}"
    );
}

fn change_commands() -> Vec<(&'static str, String)> {
    vec![
        ("mint", "mint --scope read".to_string()),
        ("revoke", format!("revoke {}", id_of(b"victim-token"))),
        ("rotate", format!("rotate {}", id_of(b"victim-token"))),
        ("hash", "hash".to_string()),
    ]
}

#[test]
fn no_space_left_keeps_the_original_file() {
    if !namespaces_work() {
        return;
    }
    let env = Env::new();
    let commands = change_commands();
    let commands: Vec<(&str, &str)> = commands.iter().map(|(n, a)| (*n, a.as_str())).collect();
    // The file and its lock exist; then a filler takes every free block of the tmpfs.
    let setup = "mount -t tmpfs -o size=64k tmpfs \"$D\"\n\
                 cp \"$OUT/original\" \"$D/tokens\"\n\
                 chmod 600 \"$D/tokens\"\n\
                 : >\"$D/tokens.lock\"\n\
                 dd if=/dev/zero of=\"$D/filler\" bs=4096 count=64 2>/dev/null || true";
    let file = format!("{}/tokens", env.path("mnt").display());
    for outcome in in_namespace(&env, setup, &commands) {
        assert_failed_cleanly(&outcome, &file, "No space left on device");
    }
}

#[test]
fn a_read_only_file_system_keeps_the_original_file() {
    if !namespaces_work() {
        return;
    }
    let env = Env::new();
    let commands = change_commands();
    let commands: Vec<(&str, &str)> = commands.iter().map(|(n, a)| (*n, a.as_str())).collect();
    // Lock file present (the file has been written before), then remounted read-only.
    let setup = "mount -t tmpfs -o size=1m tmpfs \"$D\"\n\
                 cp \"$OUT/original\" \"$D/tokens\"\n\
                 chmod 600 \"$D/tokens\"\n\
                 : >\"$D/tokens.lock\"\n\
                 mount -o remount,ro \"$D\"";
    let file = format!("{}/tokens", env.path("mnt").display());
    for outcome in in_namespace(&env, setup, &commands) {
        assert_failed_cleanly(&outcome, &file, "Read-only file system");
    }

    // Never written before: no lock file either.
    let fresh = Env::new();
    let setup = "mount -t tmpfs -o size=1m tmpfs \"$D\"\n\
                 cp \"$OUT/original\" \"$D/tokens\"\n\
                 mount -o remount,ro \"$D\"";
    let file = format!("{}/tokens", fresh.path("mnt").display());
    for outcome in in_namespace(&fresh, setup, &[("mint", "mint --scope read")]) {
        assert_failed_cleanly(&outcome, &file, "Read-only file system");
    }
}

#[test]
fn a_directory_the_user_cannot_write_keeps_the_original_file() {
    // Root ignores permission bits; drop to `nobody` when running as root.
    let drop_privileges = is_root();
    if drop_privileges
        && !Command::new("setpriv")
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIP: running as root and setpriv is not available to drop privileges");
        return;
    }
    const NOBODY: u32 = 65534;
    let env = Env::new();
    let dir = env.path("locked-dir");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("tokens");
    fs::write(&file, ORIGINAL).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let lock = dir.join("tokens.lock");
    fs::write(&lock, b"").unwrap();
    if drop_privileges {
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        for path in [&dir, &file, &lock] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();

    let tokenfile = |args: &str| {
        let mut cmd = if drop_privileges {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                BIN,
            ]);
            cmd
        } else {
            Command::new(BIN)
        };
        clear_env(&mut cmd)
            .arg("--file")
            .arg(&file)
            .args(args.split(' '))
            .current_dir("/");
        run(cmd, None)
    };
    // Readable: a check works.
    assert_eq!(
        tokenfile("list").code,
        OK,
        "the unprivileged user must be able to read the file"
    );
    for (name, args) in change_commands() {
        let out = tokenfile(&args);
        assert_eq!(out.code, IO, "{name}: {out:?}");
        assert!(
            out.err().contains(&file.display().to_string()),
            "{name}: {out:?}"
        );
        assert!(out.err().contains("Permission denied"), "{name}: {out:?}");
        assert!(out.stdout.is_empty(), "{name}: {out:?}");
        assert_eq!(fs::read(&file).unwrap(), ORIGINAL, "{name}");
        assert!(leftovers_in(&dir).is_empty(), "{name}");
    }
    // Without even a lock file to open.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(&lock).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    let out = tokenfile("mint --scope read");
    assert_eq!(out.code, IO, "{out:?}");
    assert!(out.err().contains(&file.display().to_string()), "{out:?}");
    assert_eq!(fs::read(&file).unwrap(), ORIGINAL);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_crashed_writers_temp_file_is_cleaned_up_by_the_next_write() {
    let env = Env::with_bytes(ORIGINAL);
    for name in [".tokens.tmp-AbC123", ".tokens.tmp-x"] {
        fs::write(env.path(name), b"half a fi").unwrap();
        fs::set_permissions(env.path(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Not ours: another file's temp file and a kept editing copy stay.
    fs::write(env.path(".other.tmp-keep"), b"x").unwrap();
    fs::write(env.path(".tokens.edit-saved"), b"an admin's saved edit").unwrap();

    let token = env.mint(&["--scope", "read"]);
    assert_eq!(env.check(&token, &["read"]), OK);
    assert!(env.read().starts_with(ORIGINAL));
    assert_eq!(
        env.leftovers(),
        vec![".other.tmp-keep", ".tokens.edit-saved"]
    );
    assert_eq!(
        fs::read(env.path(".tokens.edit-saved")).unwrap(),
        b"an admin's saved edit"
    );
    assert!(Path::new(&env.path("tokens.lock")).exists());
}
