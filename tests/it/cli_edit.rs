//! `tokenfile edit` (docs/exit-codes.md): validate on save, install atomically, never install invalid
//! lines without an explicit confirmation, never lose a concurrent change. The editor is a
//! small shell script written into the test's temp dir.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::support::*;

const ORIGINAL: &[u8] = b"# tokens\nalpha-token\tread\talpha\nbeta-token\twrite\tbeta\n";

/// An env holding [`ORIGINAL`] and an editor script with `body` (`$1` is the file to edit;
/// `$DIR` the temp dir, `$TF` the binary).
fn setup(body: &str) -> (Env, PathBuf) {
    let env = Env::with_bytes(ORIGINAL);
    let editor = env.path("editor.sh");
    write_script(&editor, body);
    (env, editor)
}

fn edit(env: &Env, editor: &PathBuf, stdin: Option<&[u8]>) -> Out {
    let mut cmd = env.command(&["edit"]);
    cmd.env("EDITOR", editor)
        .env("DIR", env.dir.path())
        .env("TF", BIN);
    run(cmd, stdin)
}

/// stderr names a kept copy of the edit beside the file; it holds `expected` and is private.
#[track_caller]
fn assert_saved_copy(env: &Env, out: &Out, expected: &[u8]) {
    let err = out.err();
    let dir = env.dir.path().canonicalize().unwrap().display().to_string();
    let start = err
        .find(&format!("{dir}/.tokens.edit-"))
        .unwrap_or_else(|| panic!("no saved copy named: {out:?}"));
    let saved: String = err[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert_eq!(fs::read(&saved).unwrap(), expected, "{saved}");
    assert_eq!(
        fs::metadata(&saved).unwrap().mode() & 0o777,
        0o600,
        "the saved copy stays private"
    );
    // It holds every credential: `lint` keeps reminding the admin until it is gone.
    let lint = env.tokenfile(&["lint", "--json"]).json();
    assert!(
        has_finding(&lint, |f| f["kind"] == "saved-edit-copy"
            && f["message"].as_str().unwrap().contains(&saved)),
        "{lint}"
    );
}

#[test]
fn a_valid_change_is_installed_keeping_the_mode_and_logged() {
    let (env, editor) = setup(
        "stat -c %a \"$1\" >\"$DIR/copy-mode\"\n\
         dirname \"$1\" >\"$DIR/copy-dir\"\n\
         printf 'gamma-token\\tread,write\\tgamma\\n' >>\"$1\"",
    );
    env.chmod(0o640);
    let out = edit(&env, &editor, None).ok();
    assert!(out.stdout.is_empty(), "{out:?}");
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"gamma-token\tread,write\tgamma\n");
    assert_eq!(env.read(), expected);
    assert_eq!(env.mode(), 0o640);
    assert_eq!(env.check("gamma-token", &["write"]), OK);
    // The editor got a private copy beside the file, whatever the file's own mode.
    assert_eq!(fs::read_to_string(env.path("copy-mode")).unwrap(), "600\n");
    assert_eq!(
        PathBuf::from(fs::read_to_string(env.path("copy-dir")).unwrap().trim_end()),
        env.dir.path().canonicalize().unwrap()
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let line = env.audit_lines().pop().expect("an audit line");
    assert_eq!(line["event"], "edit");
    assert_eq!(line["ids"], serde_json::json!([id_of(b"gamma-token")]));
}

#[test]
fn edits_in_the_middle_change_only_those_lines() {
    // Change beta's scopes, delete alpha: both land as written.
    let (env, editor) = setup("printf '# tokens\\nbeta-token\\twrite,admin\\tbeta\\n' >\"$1\"");
    edit(&env, &editor, None).ok();
    assert_eq!(env.read(), b"# tokens\nbeta-token\twrite,admin\tbeta\n");
    assert_eq!(env.check("alpha-token", &["read"]), UNAUTHORIZED);
    assert_eq!(env.check("beta-token", &["admin"]), OK);
    let line = env.audit_lines().pop().unwrap();
    assert_eq!(line["removed"], serde_json::json!([id_of(b"alpha-token")]));
    assert_eq!(line["changed"], serde_json::json!([id_of(b"beta-token")]));
}

#[test]
fn an_invalid_line_asks_and_quitting_leaves_the_file_alone() {
    let (env, editor) = setup("printf 'broken-line\\t\\n' >>\"$1\"");
    for answer in [&b"q\n"[..], b"quit\n", b""] {
        let out = edit(&env, &editor, Some(answer)).code(PROBLEMS);
        assert!(
            out.err().contains("(w)rite anyway"),
            "prompt on stderr: {out:?}"
        );
        assert!(
            out.err().contains(&format!("{}:4", env.file_str())),
            "line number: {out:?}"
        );
        assert!(
            !out.err().contains("broken-line"),
            "never the credential: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_eq!(env.read(), ORIGINAL);
        assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    }
    assert!(env.audit_lines().is_empty());
    // Duplicates are problems too.
    let (env, editor) = setup("printf 'alpha-token\\t*\\n' >>\"$1\"");
    edit(&env, &editor, Some(b"q\n")).code(PROBLEMS);
    assert_eq!(env.read(), ORIGINAL);
}

#[test]
fn an_invalid_line_is_installed_when_the_admin_says_write() {
    let (env, editor) = setup("printf 'broken-line\\t\\n' >>\"$1\"");
    edit(&env, &editor, Some(b"w\n")).ok();
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"broken-line\t\n");
    assert_eq!(env.read(), expected);
    assert_eq!(env.check("broken-line", &["read"]), UNAUTHORIZED);
    env.tokenfile(&["lint"]).code(PROBLEMS);
}

#[test]
fn edit_again_reopens_the_editor_with_the_broken_copy() {
    // First round breaks the file; the second sees that copy and fixes it.
    let (env, editor) = setup(
        "if [ ! -e \"$DIR/round1\" ]; then\n\
           : >\"$DIR/round1\"\n\
           printf 'fixme\\t\\n' >>\"$1\"\n\
         else\n\
           cp \"$1\" \"$DIR/seen-in-round2\"\n\
           sed -i 's/^fixme\\t$/fixme\\tread/' \"$1\"\n\
         fi",
    );
    let out = edit(&env, &editor, Some(b"e\n")).ok();
    assert_eq!(out.err().matches("(w)rite anyway").count(), 1, "{out:?}");
    let mut broken = ORIGINAL.to_vec();
    broken.extend_from_slice(b"fixme\t\n");
    assert_eq!(fs::read(env.path("seen-in-round2")).unwrap(), broken);
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"fixme\tread\n");
    assert_eq!(env.read(), expected);
}

#[test]
fn no_change_leaves_the_file_untouched() {
    let (env, editor) = setup("exit 0");
    let inode = fs::metadata(&env.file).unwrap().ino();
    let out = edit(&env, &editor, None).ok();
    assert!(out.err().contains("no changes"), "{out:?}");
    assert_eq!(env.read(), ORIGINAL);
    assert_eq!(
        fs::metadata(&env.file).unwrap().ino(),
        inode,
        "not even rewritten"
    );
    assert!(env.audit_lines().is_empty());
    assert!(env.leftovers().is_empty());
}

#[test]
fn a_failing_editor_installs_nothing() {
    let (env, editor) = setup("printf 'x\\tread\\n' >>\"$1\"; exit 3");
    let out = edit(&env, &editor, None);
    assert_ne!(out.code, OK, "{out:?}");
    assert_eq!(env.read(), ORIGINAL);
    assert!(env.leftovers().is_empty());
}

#[test]
fn visual_wins_over_editor_and_may_carry_arguments() {
    let (env, editor) = setup("printf 'from-editor\\tread\\n' >>\"$1\"");
    // Run through the shell like git and visudo do: `$VISUAL` may hold arguments, and the
    // file comes last.
    let visual = env.path("visual.sh");
    write_script(&visual, "printf '%s\\tread\\n' \"$1\" >>\"$2\"");
    let mut cmd = env.command(&["edit"]);
    cmd.env("EDITOR", &editor)
        .env("VISUAL", format!("{} from-visual", visual.display()));
    run(cmd, None).ok();
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"from-visual\tread\n");
    assert_eq!(env.read(), expected);
}

#[test]
fn a_record_minted_while_editing_is_kept() {
    let (env, editor) = setup(
        "\"$TF\" mint --scope appended >\"$DIR/appended-token\" || exit 9\n\
         printf 'by-editor\\tread\\n' >>\"$1\"",
    );
    let out = edit(&env, &editor, None).ok();
    let token = fs::read_to_string(env.path("appended-token")).unwrap();
    let token = token.trim_end();
    assert!(is_minted_shape(token));
    let bytes = env.read();
    let mut expected_start = ORIGINAL.to_vec();
    expected_start.extend_from_slice(b"by-editor\tread\n");
    assert!(
        bytes.starts_with(&expected_start),
        "{out:?}\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let (_, rest) = split_lines(&bytes[expected_start.len()..]);
    assert_eq!(rest.len(), 1, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        rest[0]
            .content
            .starts_with(hashed(token.as_bytes()).as_bytes())
    );
    assert_eq!(env.check(token, &["appended"]), OK);
    assert_eq!(env.check("by-editor", &["read"]), OK);
    assert_eq!(env.check("alpha-token", &["read"]), OK);
    // The edit's audit line names the edit's own change, not the concurrent mint.
    let audit = env.audit_lines();
    let events: Vec<&str> = audit.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["mint", "edit"]);
    assert_eq!(audit[1]["added"], serde_json::json!([id_of(b"by-editor")]));
}

#[test]
fn an_edit_racing_a_non_append_change_is_refused_and_saved() {
    let (env, editor) = setup(&format!(
        "\"$TF\" revoke {} || exit 9\n\
         printf 'by-editor\\tread\\n' >>\"$1\"",
        id_of(b"alpha-token")
    ));
    let out = edit(&env, &editor, None);
    assert_ne!(out.code, OK, "{out:?}");
    // The concurrent revoke stays; the edit was not installed.
    assert_eq!(env.read(), b"# tokens\nbeta-token\twrite\tbeta\n");
    assert_eq!(env.check("by-editor", &["read"]), UNAUTHORIZED);
    // stderr names the saved copy, which holds the edit.
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"by-editor\tread\n");
    assert_saved_copy(&env, &out, &expected);
    let events: Vec<String> = env
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["revoke"]);
}

#[test]
fn an_edit_that_cannot_take_the_lock_is_saved_not_lost() {
    let (env, editor) = setup("printf 'by-editor\\tread\\n' >>\"$1\"");
    // Another writer holds the lock for longer than the edit waits.
    let lock = hold_lock(&env.path("tokens.lock"));
    let mut cmd = env.command(&["--lock-timeout", "300ms", "edit"]);
    cmd.env("EDITOR", &editor);
    let out = run(cmd, None).code(IO);
    assert!(out.err().contains("tokens.lock"), "{out:?}");
    assert_eq!(env.read(), ORIGINAL);
    let mut expected = ORIGINAL.to_vec();
    expected.extend_from_slice(b"by-editor\tread\n");
    assert_saved_copy(&env, &out, &expected);
    drop(lock);
    assert!(env.audit_lines().is_empty());
}
