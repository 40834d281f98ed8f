//! The rules of `--routes` from the command line (docs/routes.md): `routes check FILE` and
//! `check --routes FILE --method M --path P`, through the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

const RULES: &str = "\
# METHODS          PATH              SCOPES
GET                /api/**           app:read
POST,PUT,DELETE    /api/**           app:write
*                  /admin/**         admin
";

fn env_with_rules(rules: &str) -> Env {
    let env = Env::init();
    fs::write(env.path("routes"), rules).unwrap();
    fs::set_permissions(env.path("routes"), fs::Permissions::from_mode(0o644)).unwrap();
    env
}

#[test]
fn routes_check_reports_every_bad_line_and_exits_5() {
    let env = env_with_rules(
        "GET /ok app:read\nget /x app:read\nGET api/** app:read\nGET /x app:read, app:write\n\
         GET /x tf_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA\n",
    );
    let out = env.tokenfile(&["routes", "check", "routes"]).code(PROBLEMS);
    let stdout = out.out();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.out());
    for (line, number) in lines.iter().zip([2, 3, 4, 5]) {
        assert!(
            line.starts_with(&format!("routes:{number}: error: ")),
            "{line}"
        );
    }
    assert!(out.out().contains("`GET`, not `get`"), "{}", out.out());
    assert!(!out.out().contains("tf_Zm9v") && !out.err().contains("tf_Zm9v"));
    assert!(out.err().contains("4 error(s)"), "{}", out.err());
    let json = env
        .tokenfile(&["routes", "check", "routes", "--json"])
        .code(PROBLEMS)
        .json();
    assert_eq!(json["rules"], 0);
    assert_eq!(json["findings"].as_array().unwrap().len(), 4);
    assert_eq!(json["findings"][0]["line"], 2);
    assert_eq!(json["findings"][0]["severity"], "error");
}

#[test]
fn routes_check_warns_about_rules_that_never_match() {
    let env = env_with_rules(&format!("{RULES}GET /api/items app:read\n"));
    let out = env.tokenfile(&["routes", "check", "routes"]).ok();
    assert!(
        out.out().contains("routes:5: warning: never used: line 2"),
        "{}",
        out.out()
    );
    let empty = env_with_rules("# nothing yet\n");
    let out = empty.tokenfile(&["routes", "check", "routes"]).ok();
    assert!(out.out().contains("no rule"), "{}", out.out());
}

#[test]
fn routes_check_refuses_a_file_others_may_write() {
    let env = env_with_rules(RULES);
    fs::set_permissions(env.path("routes"), fs::Permissions::from_mode(0o666)).unwrap();
    let out = env.tokenfile(&["routes", "check", "routes"]).code(PROBLEMS);
    assert!(out.err().contains("chmod o-w"), "{}", out.err());
    env.tokenfile(&["routes", "check", "missing"]).code(IO);
}

/// `check --routes` with the token on stdin; returns the exit code and stderr.
fn decide(env: &Env, token: &str, method: &str, path: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "check", "--routes", "routes", "--method", method, "--path", path,
    ];
    args.extend_from_slice(extra);
    env.tokenfile_stdin(&args, format!("{token}\n").as_bytes())
}

#[test]
fn check_with_routes_decides_as_serve_does() {
    let env = env_with_rules(RULES);
    let reader = env.mint(&["--scope", "app:read"]);
    let root = env.mint(&["--scope", "*"]);
    assert_eq!(decide(&env, &reader, "GET", "/api/items", &[]).code, 0);
    assert_eq!(decide(&env, &reader, "HEAD", "/api/items", &[]).code, 0);
    assert_eq!(
        decide(&env, &reader, "DELETE", "/api/items/7", &[]).code,
        FORBIDDEN
    );
    assert_eq!(
        decide(&env, &reader, "GET", "/api/../admin/x", &[]).code,
        FORBIDDEN
    );
    assert_eq!(
        decide(&env, &reader, "GET", "/api/items", &["--scope", "admin"]).code,
        FORBIDDEN
    );
    assert_eq!(
        decide(&env, "tf_unknown", "GET", "/api/items", &[]).code,
        UNAUTHORIZED
    );
    // No rule: refused whatever the token grants, and the message says why.
    let out = decide(&env, &root, "GET", "/other", &[]).code(FORBIDDEN);
    assert!(
        out.err().contains("no rule of routes covers GET /other"),
        "{}",
        out.err()
    );
    // A path that does not normalize is a usage error, and never repeated.
    for path in [
        "/api%2F..%2Fadmin",
        "/../x",
        "api",
        "/a%zz",
        "/api/..;/admin",
    ] {
        let out = decide(&env, &root, "GET", path, &[]).code(USAGE);
        assert!(!out.err().contains(path), "{}", out.err());
    }
    decide(&env, &root, "G ET", "/api", &[]).code(USAGE);
    // --explain names the rule; --json carries it.
    let out = decide(&env, &reader, "POST", "/api/x", &["--explain"]).code(FORBIDDEN);
    assert!(
        out.err().contains("covered by line 3 of routes"),
        "{}",
        out.err()
    );
    let json = decide(&env, &reader, "GET", "//api//x", &["--json"])
        .ok()
        .json();
    assert_eq!(json["route"]["path"], "/api/x");
    assert_eq!(json["route"]["rule"]["line"], 2);
    assert_eq!(
        json["route"]["rule"]["scopes"],
        serde_json::json!(["app:read"])
    );
    let json = decide(&env, &root, "GET", "/other", &["--json"])
        .code(FORBIDDEN)
        .json();
    assert!(json["route"]["rule"].is_null());
    assert_eq!(json["reason"], "no rule");
    // --method and --path come with --routes, and --routes with both.
    env.tokenfile_stdin(&["check", "--routes", "routes", "--method", "GET"], b"x\n")
        .code(USAGE);
    env.tokenfile_stdin(&["check", "--scope", "a", "--path", "/x"], b"x\n")
        .code(USAGE);
}
