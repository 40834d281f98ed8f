//! One function per command (README.md "Commands"; exit codes: docs/exit-codes.md).

use std::io::{self, IsTerminal};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use clap::CommandFactory;

use super::Context;
use super::args::{
    CheckArgs, Cli, Command, LintArgs, ListArgs, MintArgs, PruneArgs, RotateArgs, RoutesCommand,
    ServeArgs,
};
use super::json::{
    CheckReport, Issued, LintReport, ListedRecord, Listing, PruneReport, PrunedRecord,
    RouteFinding, RouteMatch, RoutesReport, RuleMatch,
};
use super::last_used;
use super::output::{self, Stdout, note, printable};
use crate::audit::{AuditRecord, Change, Commit, Event};
use crate::decision::{self, Decision, Unauthorized};
use crate::error::{Error, Exit, Result};
use crate::format::{self, Classified, Credential, Document, Record, Unresolved};
use crate::lint::{self, Severity};
use crate::routes::{self, Rules};
use crate::scan;
use crate::scope::{RequiredScopes, ScopeArgError, ScopeSet};
use crate::token::{self, Id, IdPrefix, Secret, Shape};
use crate::when::{self, Timestamp, When, format_timestamp};

pub(super) fn dispatch(ctx: &Context, command: Command) -> Result<Exit> {
    match command {
        Command::Init => init(ctx),
        Command::Mint(args) => mint(ctx, args),
        Command::List(args) => list(ctx, args),
        Command::Prune(args) => prune(ctx, args),
        Command::Revoke { ids } => revoke(ctx, &ids),
        Command::Rotate(args) => rotate(ctx, args),
        Command::Check(args) => check(ctx, args),
        Command::Id => id(ctx),
        Command::Lint(args) => lint(ctx, args),
        Command::Hash => hash(ctx),
        Command::Edit => super::edit::edit(&ctx.store, &ctx.audit()?),
        Command::Serve(args) => serve(ctx, args),
        Command::Routes(RoutesCommand::Check { file, output }) => routes_check(&file, output.json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tokenfile", &mut out);
            let printed = output::print(&String::from_utf8_lossy(&out));
            output::conclude(Exit::Success, printed, Stdout::Job)
        }
        Command::Man { dir: None } => {
            let printed = output::print(&String::from_utf8_lossy(&super::man::tool_page()?));
            output::conclude(Exit::Success, printed, Stdout::Job)
        }
        Command::Man { dir: Some(dir) } => {
            for path in super::man::write_pages(&dir)? {
                note(&format!("wrote {path}"));
            }
            Ok(Exit::Success)
        }
    }
}

const HEADER: &str = "\
# tokenfile token file: one record per line, fields separated by a single TAB:
#   credential  scopes  name  created  expires
# credential is sha256:<hex> (or a plaintext token); scopes is `*` or a comma list.
# Add tokens with `tokenfile mint`, edit safely with `tokenfile edit`.
";

fn init(ctx: &Context) -> Result<Exit> {
    let audit = ctx.audit()?;
    let locked = ctx.store.lock()?;
    locked.create_new(
        HEADER.as_bytes(),
        &mut Commit::new(&audit, Event::new(Change::Init, Vec::new())),
    )?;
    note(&format!("created {}", ctx.store.path().display()));
    // The new file is there either way; an unsafe place is said now rather than by the
    // first command that refuses it.
    if let Err(crate::trust::Refusal::Unsafe(why)) = crate::trust::open(ctx.store.path()) {
        note(&format!(
            "warning: every command will refuse it until this is fixed: {why}"
        ));
    }
    Ok(Exit::Success)
}

fn check_name(name: &str) -> Result<()> {
    if name.contains(['\t', '\n', '\r']) {
        return Err(Error::usage(
            "--name must not contain a TAB or a line break",
        ));
    }
    Ok(token::refuse_token_in("--name", name)?)
}

/// The shortest plaintext credential of the file that `mint` looks for in a new name or
/// scope. Shorter ones are not checked: a legacy `vm` or `ci` would block every name that
/// holds those letters, and a credential that short is guessed sooner than found in a name.
const PLAINTEXT_CHECKED_FROM: usize = 16;

/// Refuses a name or scopes that hold a plaintext credential of the file (a legacy token
/// pasted in the wrong place): it has no shape that [`token::redact`] could recognize, and
/// would be stored, audited and shown by `list`. Only the credential field of each line is
/// looked at, with no record built: this runs under the lock.
fn refuse_plaintext_in(doc: &Document, name: &str, scopes: &str, file: &Path) -> Result<()> {
    let values: [&[u8]; 2] = [name.as_bytes(), scopes.as_bytes()];
    // A word of the name or a scope that is, whole, the token of a hashed record.
    let words: Vec<(usize, &str)> = name
        .split_whitespace()
        .map(|word| (0, word))
        .chain(scopes.split(',').map(|scope| (1, scope.trim())))
        .filter(|(_, word)| !word.is_empty())
        .collect();
    let digests: Vec<token::Digest> = words
        .iter()
        .map(|(_, word)| token::Digest::of(word.as_bytes()))
        .collect();
    let found = doc
        .credential_inside(&values, PLAINTEXT_CHECKED_FROM)
        .or_else(|| {
            doc.hashed_credential_of(&digests)
                .map(|(line, at)| (line, words[at].0))
        });
    let Some((line, value)) = found else {
        return Ok(());
    };
    let flag = ["--name", "--scope"][value];
    Err(Error::usage(format!(
        "{flag}: the value holds the plaintext credential of line {line} of {} (not \
         shown); a token never goes into a {}",
        file.display(),
        flag.trim_start_matches('-')
    )))
}

fn future_expiry(given: Option<&When>, now: Timestamp) -> Result<Option<Timestamp>> {
    let Some(given) = given else { return Ok(None) };
    let expires = given
        .resolve(now)
        .map_err(|e| Error::usage(format!("--expires: {e}")))?;
    // The file stores whole seconds: `--expires 1ms` would be written as the creation time,
    // a token dead at birth.
    if expires < now + time::Duration::SECOND {
        return Err(Error::usage(format!(
            "--expires {} is not in the future (expiries count whole seconds)",
            given.text()
        )));
    }
    Ok(Some(expires))
}

/// Shows the new token (alone, or in the JSON document) on stdout, flushed. Runs before the
/// rename: when it fails, the change is cancelled, so no token is stored that nobody saw.
fn reveal(issued: &Issued, json: bool) -> Result<()> {
    let shown = match json {
        true => output::print_json_revealing(issued, issued.token),
        false => output::print_token(issued.token),
    };
    // Not an `Error::Io`: a closed pipe here is a failed change, never a quiet success.
    shown.map_err(|e| match e {
        Error::Io { source, .. } => Error::TokenNotShown(source),
        other => other,
    })
}

/// The human context about a token that [`reveal`] showed and that has landed.
fn announce(issued: &Issued, json: bool, file: &std::path::Path) {
    if json {
        return;
    }
    let mut context = format!(
        "{} token {} with scopes {} in {}",
        if issued.replaces.is_some() {
            "rotated: new"
        } else {
            "minted"
        },
        issued.id,
        issued.scopes.join(","),
        file.display()
    );
    if !issued.name.is_empty() {
        context.push_str(&format!(" (name: {})", printable(&issued.name)));
    }
    if let Some(expires) = &issued.expires {
        context.push_str(&format!(", expires {expires}"));
    }
    note(&context);
    if let (Some(old), until) = (&issued.replaces, &issued.old_valid_until) {
        match until {
            Some(until) => note(&format!("old token {old} stays valid until {until}")),
            None => note(&format!("old token {old} removed")),
        }
    }
    if issued.stored == "plaintext" {
        note("stored in plaintext (--plaintext)");
    }
    note("this is the only time the token is shown; store it now");
}

fn new_credential(token: &Secret, plaintext: bool) -> Credential {
    match plaintext {
        true => Credential::Plain(token.clone()),
        false => Credential::Hashed(token.digest()),
    }
}

fn stored_form(plaintext: bool) -> &'static str {
    if plaintext { "plaintext" } else { "hashed" }
}

fn mint(ctx: &Context, args: MintArgs) -> Result<Exit> {
    let scopes = ScopeSet::from_args(&args.scopes)?;
    check_name(&args.name)?;
    let now = when::now();
    let expires = future_expiry(args.expires.as_ref(), now)?;
    let token = token::mint()?;
    let record = Record {
        credential: new_credential(&token, args.plaintext),
        scopes,
        name: args.name.clone().into_bytes(),
        created: Some(now),
        expires,
    };
    let event = Event::new(
        Change::Mint {
            stored: stored_form(args.plaintext),
        },
        vec![AuditRecord::from(&record)],
    );
    let issued = issued(&token, &record, now, None);
    let audit = ctx.audit()?;
    let ((), invalid) = ctx.store.update_and(
        |doc| {
            refuse_plaintext_in(doc, &args.name, &record.scopes.to_field(), ctx.store.path())?;
            doc.push_record(&record);
            Ok(())
        },
        |_| Commit::new(&audit, event).revealing(|| reveal(&issued, args.output.json)),
        |doc| doc.invalid_lines(),
    )?;
    announce(&issued, args.output.json, ctx.store.path());
    warn_about_file(ctx, &invalid);
    Ok(Exit::Success)
}

/// Warnings owed to a person whose command worked on a file that is not fine: invalid lines
/// silently grant nothing. (An unsafe file never gets this far: every reader refuses it.)
fn warn_about_file(ctx: &Context, invalid: &[usize]) {
    let path = ctx.store.path();
    if !invalid.is_empty() {
        note(&format!(
            "warning: {} has {} invalid line(s) that grant nothing (lines {}); \
             `tokenfile lint` says why",
            path.display(),
            invalid.len(),
            join_numbers(invalid)
        ));
    }
}

/// Resolves user-given IDs or prefixes against the records of a document, in the order
/// given (a repeated one once).
fn resolve_ids(doc: &Document, given: &[String], file: &Path) -> Result<Vec<Id>> {
    let ids = doc.ids();
    let mut resolved = Vec::new();
    for text in given {
        let id = ids
            .resolve(&IdPrefix::parse(text)?)
            .map_err(|unresolved| match unresolved {
                Unresolved::NoMatch => Error::NoSuchId {
                    id: text.clone(),
                    file: file.to_path_buf(),
                },
                Unresolved::Ambiguous(candidates) => Error::AmbiguousId {
                    prefix: text.clone(),
                    candidates: candidates
                        .iter()
                        .map(|(id, name)| match name.as_str() {
                            "" => id.to_string(),
                            name => format!("{id} ({})", printable(name)),
                        })
                        .collect(),
                    file: file.to_path_buf(),
                },
            })?;
        if !resolved.contains(&id) {
            resolved.push(id);
        }
    }
    Ok(resolved)
}

fn revoke(ctx: &Context, given: &[String]) -> Result<Exit> {
    let audit = ctx.audit()?;
    let records = ctx.store.update(
        |doc| {
            let ids = resolve_ids(doc, given, ctx.store.path())?;
            let removed: Vec<AuditRecord> = ids
                .iter()
                .filter_map(|id| doc.record_of(*id))
                .map(|record| AuditRecord::from(&record))
                .collect();
            doc.remove_records(&ids);
            Ok(removed)
        },
        |records| Commit::new(&audit, Event::new(Change::Revoke, records.clone())),
    )?;
    for r in &records {
        match r.name.as_str() {
            "" => note(&format!("revoked {}", r.id)),
            name => note(&format!("revoked {} ({})", r.id, printable(name))),
        }
    }
    Ok(Exit::Success)
}

fn rotate(ctx: &Context, args: RotateArgs) -> Result<Exit> {
    let now = when::now();
    let grace_until = args
        .grace
        .map(|g| {
            time::Duration::try_from(g)
                .ok()
                .and_then(|g| now.checked_add(g))
                .ok_or_else(|| Error::usage("--grace is too long"))
        })
        .transpose()?;
    let explicit_expiry = future_expiry(args.expires.as_ref(), now)?;
    let token = token::mint()?;
    let audit = ctx.audit()?;
    let ((old, new_record), invalid) = ctx.store.update_and(
        |doc| {
            let ids = resolve_ids(doc, std::slice::from_ref(&args.id), ctx.store.path())?;
            let old = ids
                .first()
                .and_then(|id| doc.record_of(*id))
                .ok_or_else(|| Error::NoSuchId {
                    id: args.id.clone(),
                    file: ctx.store.path().to_path_buf(),
                })?;
            let expires = match explicit_expiry {
                Some(e) => Some(e),
                None if old.is_expired(now) => {
                    return Err(Error::usage(format!(
                        "record {} already expired; give the new token a lifetime with --expires",
                        old.id()
                    )));
                }
                None => old.expires,
            };
            let new = Record {
                credential: new_credential(&token, old.credential.is_plaintext()),
                scopes: old.scopes.clone(),
                name: old.name.clone(),
                created: Some(now),
                expires,
            };
            doc.replace_record(old.id(), &new, grace_until);
            Ok((old, new))
        },
        |(old, new)| {
            let issued = issued(&token, new, now, Some((old, grace_until)));
            let event = Event::new(
                Change::Rotate {
                    replaces: old.id().to_string(),
                    old_valid_until: issued.old_valid_until.clone(),
                },
                vec![AuditRecord::from(new)],
            );
            Commit::new(&audit, event).revealing(move || reveal(&issued, args.output.json))
        },
        |doc| doc.invalid_lines(),
    )?;
    announce(
        &issued(&token, &new_record, now, Some((&old, grace_until))),
        args.output.json,
        ctx.store.path(),
    );
    warn_about_file(ctx, &invalid);
    Ok(Exit::Success)
}

/// What `mint` and `rotate` report about a new record; for `rotate`, the record it replaces
/// and the grace period's end. The old token's real end is the grace period's or its own
/// expiry, whichever comes first.
fn issued<'a>(
    token: &'a Secret,
    new: &Record,
    now: Timestamp,
    replaced: Option<(&Record, Option<Timestamp>)>,
) -> Issued<'a> {
    Issued {
        token,
        id: new.id().to_string(),
        name: new.name_lossy(),
        scopes: new.scopes.items().iter().map(ToString::to_string).collect(),
        created: format_timestamp(now),
        expires: new.expires.map(format_timestamp),
        stored: stored_form(new.credential.is_plaintext()),
        replaces: replaced.map(|(old, _)| old.id().to_string()),
        old_valid_until: replaced
            .and_then(|(old, grace_until)| {
                grace_until.map(|until| old.expires.map_or(until, |own| own.min(until)))
            })
            .map(format_timestamp),
    }
}

/// The presented token: `--token-env VAR`, else the first line of stdin.
fn presented_token(token_env: Option<&str>) -> Result<Secret> {
    if let Some(var) = token_env {
        let mut value = std::env::var_os(var)
            .map(OsStringExt::into_vec)
            .unwrap_or_default();
        while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            value.pop();
        }
        if value.len() > token::MAX_TOKEN_LEN {
            value.clear();
        }
        return Ok(Secret::new(value));
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        note("reading the token from the terminal (first line; it is echoed)");
    }
    Secret::read_first_line(stdin.lock()).map_err(|e| {
        Error::io(
            "read the token from",
            std::path::Path::new("standard input"),
            e,
        )
    })
}

use crate::decision::{DAMAGED_HINT, WHITESPACE_HINT};

/// The record of the file that has `token` (the first one: it counts), for `check` and
/// `id`: the file is judged (docs/trust.md) and scanned in chunks, never read whole, so a
/// large file costs no more memory than a small one.
fn find_record(ctx: &Context, token: &Secret) -> Result<Option<decision::Grant>> {
    let mut trusted = ctx.store.open()?;
    trusted.ensure_content_safe()?;
    scan::find_record(&trusted.file, token).map_err(|e| Error::io("read", ctx.store.path(), e))
}

/// Teaches redaction the required scopes that are a credential of the file: a legacy token of
/// no recognizable shape pasted where a scope goes would otherwise be echoed by the messages
/// and documents that name the scopes. One more pass over the file, so only done before
/// printing them.
fn learn_pasted_credentials(ctx: &Context, required: &RequiredScopes) -> Result<()> {
    let words: Vec<&str> = required.iter().collect();
    if words.is_empty() {
        return Ok(());
    }
    let candidates: Vec<Secret> = words
        .iter()
        .map(|word| Secret::new(word.as_bytes().to_vec()))
        .collect();
    let trusted = ctx.store.open()?;
    let found = scan::credentials_among(&trusted.file, &candidates)
        .map_err(|e| Error::io("read", ctx.store.path(), e))?;
    for (word, is_credential) in words.iter().zip(found) {
        if is_credential {
            token::also_secret(word.as_bytes());
        }
    }
    Ok(())
}

/// Every valid record of the file that has `token`, in file order (the first counts), for
/// `check --explain`. Compared by digest, as the index does: never the stored string itself.
fn records_of(ctx: &Context, token: &Secret) -> Result<Vec<decision::Grant>> {
    if token.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = ctx.store.read()?;
    let digest = token.digest();
    // Every record of the token in file order: no map of the whole file's tokens needed.
    Ok(Document::parse(&bytes)
        .entries()
        .filter_map(|(line, entry)| match entry {
            format::Entry::Record(r) if r.digest() == digest => {
                Some(decision::Grant::from_record(&r, line))
            }
            _ => None,
        })
        .collect())
}

/// `check --explain` for a person, one line each; names records by ID, line and name, never
/// the token.
fn render_explanation(e: &decision::Explanation, file: &Path) -> Vec<String> {
    let file = file.display();
    let mut lines = Vec::new();
    match &e.matched {
        Some(m) => {
            let name = match m.name.as_str() {
                "" => String::new(),
                name => format!(" (name: {})", printable(name)),
            };
            lines.push(format!(
                "line {} of {file} matched: record {}{name}, granting {}",
                m.line,
                m.id,
                m.granted.join(",")
            ));
        }
        None if e.reason == Some("no token") => lines.push("no token was presented".into()),
        None => {
            let mut text = format!("no valid record of {file} has this token");
            if let Some(hint) = e.hint {
                text.push_str(&format!(" ({hint})"));
            }
            lines.push(text);
        }
    }
    for cover in &e.scopes {
        lines.push(match &cover.granted_by {
            Some(by) => format!("scope {}: granted by {by}", cover.required),
            None => format!(
                "scope {}: not granted (no scope of the record covers it)",
                cover.required
            ),
        });
    }
    if let Some(at) = &e.expired_at {
        lines.push(format!("the record expired at {at} and grants nothing"));
    }
    for s in &e.shadowed {
        lines.push(format!(
            "line {} has the same token (granting {}{}) but is a duplicate of line {}: only \
             line {} counts; remove the duplicate with `tokenfile edit`",
            s.line,
            s.granted.join(","),
            s.expires
                .as_ref()
                .map(|at| format!(", expires {at}"))
                .unwrap_or_default(),
            s.duplicate_of_line,
            s.duplicate_of_line
        ));
    }
    lines.push(match e.reason {
        None => "granted".into(),
        Some(reason) => format!("{}: {reason}", e.result),
    });
    lines
}

/// How long `check` waits for a change in progress to land before it reads the file anyway
/// (an admin's `flock tokens.lock …` must not stall every check for long).
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn check(ctx: &Context, args: CheckArgs) -> Result<Exit> {
    // Scopes first: a malformed scope is a usage error before anything else happens.
    for scope in &args.scopes {
        token::refuse_token_in("--scope", scope)?;
    }
    let asked = (!args.scopes.is_empty())
        .then(|| RequiredScopes::parse(&args.scopes))
        .transpose()?;
    let (required, route) = match &args.routes {
        Some(file) => {
            let route = route_of(file, args.method.as_deref(), args.path.as_deref())?;
            let required = match (&route.rule, &asked) {
                (Some(rule), Some(asked)) => asked.and(&rule.scopes),
                (Some(rule), None) => rule.scopes.clone(),
                (None, _) => RequiredScopes::unsatisfiable(),
            };
            (required, Some(route))
        }
        None => (asked.ok_or(Error::Scope(ScopeArgError::NoRequired))?, None),
    };
    let token = presented_token(args.token_env.as_deref())?;
    // `mint … | check`: the token arrives before mint's rename (docs/writing.md), so wait
    // for that writer to finish.
    ctx.store.wait_for_writer(WRITER_WAIT);
    let now = when::now();
    // `--explain` reads the whole file, for the duplicates the one-shot scan stops before;
    // the decision is then the first of those records, as the scan's would be.
    let (grant, mut explanation) = if args.explain {
        let matches = records_of(ctx, &token)?;
        let explanation = decision::explain(token.expose(), &matches, &required, now);
        (matches.into_iter().next(), Some(explanation))
    } else {
        (find_record(ctx, &token)?, None)
    };
    let decision = decision::decide(
        !token.is_empty(),
        grant.as_ref().map(decision::Grant::view),
        &required,
        now,
    );
    // Scripts match `reason` against the four documented words, so the checksum finding
    // goes in a separate hint.
    let unknown = matches!(decision, Decision::Unauthorized(Unauthorized::Unknown));
    let hint = unknown
        .then(|| decision::unknown_hint(token.expose()))
        .flatten();
    // What follows may name the required scopes: a credential of the file among them (a
    // legacy token pasted as a scope) must not be echoed. A plain grant prints none.
    if (args.output.json || args.explain || !matches!(decision, Decision::Granted { .. }))
        && learn_pasted_credentials(ctx, &required).is_err()
    {
        // The file could not be read again: take no chance with any of them.
        for scope in required.iter() {
            token::also_secret(scope.as_bytes());
        }
    }
    // A request no rule of --routes covers is refused for that, not for a scope.
    let uncovered = route.as_ref().is_some_and(|route| route.rule.is_none());
    if let (true, Some(explanation)) = (uncovered, explanation.as_mut()) {
        explanation.reason = Some(NO_RULE);
    }
    let report = match &decision {
        Decision::Granted { id, name } => ("granted", Some(id), Some(name), None),
        Decision::Forbidden { id, name } if uncovered => {
            ("forbidden", Some(id), Some(name), Some(NO_RULE))
        }
        Decision::Forbidden { id, name } => {
            ("forbidden", Some(id), Some(name), Some("missing scope"))
        }
        Decision::Unauthorized(why) => {
            let id = match why {
                Unauthorized::Expired(id) => Some(id),
                _ => None,
            };
            ("unauthorized", id, None, Some(why.reason()))
        }
    };
    let printed = if args.output.json {
        output::print_json(&CheckReport {
            result: report.0,
            id: report.1.map(ToString::to_string),
            name: report.2.map(|name| name.to_string()),
            reason: report.3,
            hint,
            required: required.iter().collect(),
            route: route.as_ref(),
            explain: explanation,
        })
    } else {
        let why = match (&route, &decision) {
            (Some(route), Decision::Forbidden { .. }) if route.rule.is_none() => {
                Some(route.uncovered())
            }
            _ => denial(ctx, &decision, grant.as_ref(), &required, &args, hint),
        };
        if let Some(why) = why {
            note(&format!("denied: {why}"));
        }
        if let Some(explanation) = &explanation {
            if let Some(route) = &route {
                note(&format!("explain: {}", route.describe()));
            }
            for line in render_explanation(explanation, ctx.store.path()) {
                note(&format!("explain: {line}"));
            }
        }
        Ok(())
    };
    let exit = match decision {
        Decision::Granted { .. } => Exit::Success,
        Decision::Forbidden { .. } => Exit::Forbidden,
        Decision::Unauthorized(_) => Exit::Unauthorized,
    };
    // The decision is the answer, whatever happens to its report (`check --json | true`).
    output::conclude(exit, printed, Stdout::Report)
}

/// Why a check was denied, for a person: which record and file, and what to try next.
/// Never the token; a record's scopes are no secret (`list` shows them).
fn denial(
    ctx: &Context,
    decision: &Decision,
    grant: Option<&decision::Grant>,
    required: &RequiredScopes,
    args: &CheckArgs,
    hint: Option<&str>,
) -> Option<String> {
    let file = ctx.store.path().display();
    Some(match decision {
        Decision::Granted { .. } => return None,
        Decision::Forbidden { id, .. } => {
            let grant = grant?;
            let missing: Vec<&str> = required
                .iter()
                .filter(|s| {
                    RequiredScopes::parse(&[*s]).is_ok_and(|one| !grant.scopes.grants(&one))
                })
                .collect();
            format!(
                "token {id} (line {} of {file}) lacks scope {}; it grants {}. Scopes match \
                 exactly and case-sensitively: check the spelling, or mint a token that has \
                 it (`tokenfile mint --scope {}`)",
                grant.line,
                missing.join(", "),
                grant.scopes.to_field(),
                missing.join(",")
            )
        }
        Decision::Unauthorized(Unauthorized::NoToken) => match &args.token_env {
            Some(var) => format!("no token: the environment variable {var} is empty or unset"),
            None => "no token on stdin: pipe it in, e.g. `printf '%s\\n' \"$TOKEN\" | \
                     tokenfile check --scope ...`, or use --token-env VAR"
                .to_string(),
        },
        Decision::Unauthorized(Unauthorized::Expired(id)) => format!(
            "token {id} (line {} of {file}) expired at {}; issue a new one with \
             `tokenfile rotate {id} --expires 90d`",
            grant.map_or(0, |g| g.line),
            grant
                .and_then(|g| g.expires)
                .map(format_timestamp)
                .unwrap_or_default()
        ),
        Decision::Unauthorized(Unauthorized::Unknown) if hint == Some(DAMAGED_HINT) => format!(
            "unknown token: it looks like a tokenfile token that was {DAMAGED_HINT}; \
             copy it again in full"
        ),
        Decision::Unauthorized(Unauthorized::Unknown) if hint == Some(WHITESPACE_HINT) => {
            format!(
                "unknown token: {WHITESPACE_HINT}; pass it exactly, e.g. `printf '%s\\n' \"$T\"`"
            )
        }
        Decision::Unauthorized(Unauthorized::Unknown) => format!(
            "unknown token: no valid record in {file} has it (is this the right --file? \
             `tokenfile lint` reports lines that were ignored as invalid)"
        ),
    })
}

/// The ID of the token on stdin, and whether the file has it (docs/exit-codes.md): exit 4 when the
/// file exists and no record in it has the token; no file, no verdict.
fn id(ctx: &Context) -> Result<Exit> {
    let token = presented_token(None)?;
    if token.is_empty() {
        return Err(Error::usage(
            "no token on stdin: pipe the token in, e.g. `printf '%s\\n' \"$T\" | tokenfile id`",
        ));
    }
    if token::shape(token.expose()) == Shape::DamagedMinted {
        note(
            "warning: this looks like a tokenfile token with a typo or cut short (its checksum does not match)",
        );
    }
    let id = token.digest().id();
    let path = ctx.store.path();
    let found = match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        _ => Some(find_record(ctx, &token)?),
    };
    let printed = output::print(&format!("{id}\n"));
    let file = path.display();
    let exit = match found {
        None => {
            note(&format!("(no file at {file}; not looked up)"));
            Exit::Success
        }
        Some(None) => {
            note(&format!(
                "no record in {file} has this token (`tokenfile list` shows the records; \
                 is this the right --file?)"
            ));
            Exit::NoSuchId
        }
        Some(Some(grant)) => {
            let mut found = format!("line {} of {file} has this token", grant.line);
            if !grant.name.is_empty() {
                found.push_str(&format!(" (name: {})", printable(&grant.name)));
            }
            if let Some(expires) = grant.expires.filter(|e| *e <= when::now()) {
                let at = format_timestamp(expires);
                found.push_str(&format!("; it expired at {at} and grants nothing"));
            }
            note(&found);
            Exit::Success
        }
    };
    output::conclude(exit, printed, Stdout::Job)
}

fn list(ctx: &Context, args: ListArgs) -> Result<Exit> {
    let bytes = ctx.store.read()?;
    let doc = Document::parse(&bytes);
    let now = when::now();
    let figures = last_used::load(ctx, &doc, &args.seen.files)?;
    if args.unused.is_some() && !figures.any {
        note(&format!(
            "warning: no last-used figures (no usable sidecar at {} and no --seen): every \
             record counts as never used",
            figures.default.display()
        ));
    }
    let replaced_by = doc.replacements();
    let mut listing = Listing {
        file: ctx.store.path().display().to_string(),
        records: Vec::new(),
        invalid_lines: Vec::new(),
    };
    let mut last_used_at = Vec::new();
    for (line, classified) in doc.classify() {
        let (r, duplicate_of_line) = match classified {
            Classified::Record(r) => (r, None),
            Classified::Duplicate(r, duplicate) => (r, Some(duplicate.first)),
            Classified::Invalid(_) => {
                listing.invalid_lines.push(line);
                continue;
            }
            Classified::Blank | Classified::Comment => continue,
        };
        // A repeat grants nothing whatever its expiry: only the first counts.
        let status = if duplicate_of_line.is_some() {
            "duplicate"
        } else if r.is_expired(now) {
            "expired"
        } else {
            "active"
        };
        let seen = figures.of(&r);
        if args.unused.is_some_and(|window| {
            !last_used::unused_for(&r, seen, window, now, figures.observed_since)
        }) || args.expiring.is_some_and(|window| {
            // A record kept by `rotate --grace` is meant to expire: nothing to act on.
            status != "active"
                || replaced_by.contains_key(r.id().as_str())
                || !r.expires_within(window, now)
        }) {
            continue;
        }
        last_used_at.push(seen.map(|s| s.last_used));
        listing.records.push(ListedRecord {
            id: r.id().to_string(),
            line,
            status,
            stored: stored_form(r.credential.is_plaintext()),
            scopes: r.scopes.items().iter().map(ToString::to_string).collect(),
            name: r.name_lossy(),
            created: r.created.map(format_timestamp),
            expires: r.expires.map(format_timestamp),
            duplicate_of_line,
            replaced_by: replaced_by.get(r.id().as_str()).map(ToString::to_string),
            last_used: seen.map(|s| format_timestamp(s.last_used)),
            uses: seen.map_or(0, |s| s.uses),
            last_client: seen.and_then(|s| s.last_client.clone()),
        });
    }
    let printed = if args.output.json {
        output::print_json(&listing)
    } else {
        let rows: Vec<Vec<String>> = listing
            .records
            .iter()
            .zip(&last_used_at)
            .map(|(r, last_used)| {
                vec![
                    r.id.clone(),
                    match &r.replaced_by {
                        Some(new) => format!("{} (replaced by {new})", r.status),
                        None => r.status.to_string(),
                    },
                    r.stored.to_string(),
                    r.scopes.join(","),
                    if r.name.is_empty() {
                        "-".into()
                    } else {
                        printable(&r.name)
                    },
                    r.created.clone().unwrap_or_else(|| "-".into()),
                    r.expires.clone().unwrap_or_else(|| "-".into()),
                    last_used.map_or_else(|| "never".into(), |at| last_used::ago(at, now)),
                    r.uses.to_string(),
                ]
            })
            .collect();
        output::print(&output::table(
            &[
                "ID",
                "STATUS",
                "STORED",
                "SCOPES",
                "NAME",
                "CREATED",
                "EXPIRES",
                "LAST USED",
                "USES",
            ],
            &rows,
        ))
    };
    let duplicates = listing
        .records
        .iter()
        .filter(|r| r.duplicate_of_line.is_some())
        .count();
    if duplicates > 0 {
        note(&format!(
            "{duplicates} record(s) repeat an earlier token and grant nothing; see `tokenfile lint`"
        ));
    }
    // Invalid lines get their own note below, saying they are not listed.
    warn_about_file(ctx, &[]);
    if !listing.invalid_lines.is_empty() {
        note(&format!(
            "{} invalid line(s) of {} not listed (lines {}); `tokenfile lint` says why",
            listing.invalid_lines.len(),
            ctx.store.path().display(),
            join_numbers(&listing.invalid_lines)
        ));
    }
    output::conclude(Exit::Success, printed, Stdout::Job)
}

/// The records `prune` removes from `doc`: every expired record that counts and, with
/// `unused`, every one not used for that long — by ID, with why.
fn doomed(
    doc: &Document,
    unused: Option<std::time::Duration>,
    figures: &last_used::Figures,
    now: Timestamp,
) -> Vec<(Id, PrunedRecord)> {
    // `remove_records` takes every line of a token: say so, line by line.
    let mut duplicates: std::collections::HashMap<Id, Vec<usize>> =
        std::collections::HashMap::new();
    for (line, classified) in doc.classify() {
        if let Classified::Duplicate(r, _) = classified {
            duplicates.entry(r.id()).or_default().push(line);
        }
    }
    doc.counted_records()
        .filter_map(|(line, r)| {
            let seen = figures.of(&r);
            let reason = if r.is_expired(now) {
                "expired"
            } else if unused.is_some_and(|window| {
                last_used::unused_for(&r, seen, window, now, figures.observed_since)
            }) {
                "unused"
            } else {
                return None;
            };
            let pruned = PrunedRecord {
                id: r.id().to_string(),
                line,
                duplicate_lines: duplicates.remove(&r.id()).unwrap_or_default(),
                name: r.name_lossy(),
                scopes: r.scopes.items().iter().map(ToString::to_string).collect(),
                reason,
                expires: r.expires.map(format_timestamp),
                last_used: seen.map(|s| format_timestamp(s.last_used)),
            };
            Some((r.id(), pruned))
        })
        .collect()
}

fn prune(ctx: &Context, args: PruneArgs) -> Result<Exit> {
    let now = when::now();
    // The records as they are now, to tell whether a --seen sidecar is this file's; the
    // change itself reads the file again under the lock.
    let bytes = ctx.store.read()?;
    let figures = last_used::load(ctx, &Document::parse(&bytes), &args.seen.files)?;
    if args.unused.is_some()
        && let Some(unusable) = figures.unusable.first()
    {
        // A sidecar asked for is evidence of use on some host: without it, tokens used
        // only there would look unused.
        return Err(Error::usage(format!(
            "--unused: the last-used sidecar {} given with --seen cannot be used (see the \
             warning above); fix it or leave it out, nothing was removed",
            unusable.display()
        )));
    }
    if args.unused.is_some() && !figures.any {
        // With no figures every record would look unused: removing tokens on no evidence
        // (serve on another host, a sidecar not copied yet) is not what anyone asked for.
        return Err(Error::usage(format!(
            "--unused: no last-used figures to go by (no usable sidecar at {}, and no --seen \
             FILE); `serve` writes it, or copy other hosts' sidecars here and pass them with --seen",
            figures.default.display()
        )));
    }
    let removed = if args.dry_run {
        let doomed = doomed(&Document::parse(&bytes), args.unused, &figures, now);
        doomed.into_iter().map(|(_, pruned)| pruned).collect()
    } else {
        let audit = ctx.audit()?;
        ctx.store.update(
            |doc| {
                let (ids, removed): (Vec<Id>, Vec<PrunedRecord>) =
                    doomed(doc, args.unused, &figures, now).into_iter().unzip();
                doc.remove_records(&ids);
                Ok(removed)
            },
            |removed| {
                let ids_by = |reason: &str| {
                    removed
                        .iter()
                        .filter(|p| p.reason == reason)
                        .map(|p| p.id.clone())
                        .collect()
                };
                let records = removed
                    .iter()
                    .map(|p| AuditRecord {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        scopes: p.scopes.join(","),
                        expires: p.expires.clone(),
                    })
                    .collect();
                let change = Change::Prune {
                    expired: ids_by("expired"),
                    unused: ids_by("unused"),
                };
                Commit::new(&audit, Event::new(change, records))
            },
        )?
    };
    let file = ctx.store.path().display();
    if args.output.json {
        let printed = output::print_json(&PruneReport {
            file: file.to_string(),
            dry_run: args.dry_run,
            removed,
        });
        // A dry run's output is its job; after a real prune the change is, and has landed.
        let stdout = if args.dry_run {
            Stdout::Job
        } else {
            Stdout::Report
        };
        return output::conclude(Exit::Success, printed, stdout);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for p in &removed {
        let mut text = format!("{verb} {} ({}", p.id, p.reason);
        match (p.reason, &p.expires, &p.last_used) {
            ("expired", Some(at), _) => text.push_str(&format!(" at {at}")),
            (_, _, Some(at)) => text.push_str(&format!(", last used {at}")),
            (_, _, None) => text.push_str(", never used"),
        }
        text.push(')');
        if !p.name.is_empty() {
            text.push_str(&format!(" {}", printable(&p.name)));
        }
        if !p.duplicate_lines.is_empty() {
            text.push_str(&format!(
                ", with its duplicate line(s) {}",
                join_numbers(&p.duplicate_lines)
            ));
        }
        note(&text);
    }
    if removed.is_empty() {
        note(&format!("nothing to prune in {file}"));
    } else if args.dry_run {
        note(&format!(
            "dry run: {} record(s) would be removed from {file}; nothing changed",
            removed.len()
        ));
    }
    Ok(Exit::Success)
}

fn join_numbers(numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn lint(ctx: &Context, args: LintArgs) -> Result<Exit> {
    let path = ctx.store.path();
    // An unsafe file is reported, not read: it may be a FIFO, and what it says is not to be
    // believed anyway until it is fixed.
    let findings = match crate::trust::open(path) {
        Ok(mut trusted) => {
            let bytes = trusted.read_all()?;
            let doc = Document::parse(&bytes);
            let mut findings = lint::lint_file(&trusted, &doc, ctx.audit()?.path());
            findings.extend(lint::lint_document(&doc, when::now()));
            if let Some(window) = args.expiring {
                findings.extend(lint::lint_expiring(&doc, when::now(), window));
            }
            findings
        }
        Err(crate::trust::Refusal::Unsafe(why)) => lint::lint_refusal(&why),
        Err(refusal) => return Err(refusal.into_error(path)),
    };
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    // `--expiring` is asked for by a cron job: a token about to expire is the failure it
    // watches for, strict or not.
    let expiring = findings.iter().any(|f| f.kind == "expiring");
    let printed = if args.output.json {
        output::print_json(&LintReport {
            file: path.display().to_string(),
            errors,
            warnings,
            findings,
        })
    } else {
        let mut text = String::new();
        for f in &findings {
            let place = match f.line {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            };
            let severity = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            text.push_str(&format!(
                "{place}: {severity}: {} [{}]\n",
                f.message, f.kind
            ));
        }
        let printed = output::print(&text);
        // `edit` fixes lines; a file's mode or a directory is fixed as its message says.
        let line_errors = findings
            .iter()
            .any(|f| matches!(f.severity, Severity::Error) && f.line.is_some());
        let next = if line_errors {
            "; fix the lines with `tokenfile edit` (it shows each line and checks your fix)"
        } else if errors > 0 {
            "; each message above says how to fix it"
        } else {
            ""
        };
        note(&format!(
            "{}: {errors} error(s), {warnings} warning(s){next}",
            path.display()
        ));
        printed
    };
    let failed = errors > 0 || (args.strict && warnings > 0) || expiring;
    let exit = if failed {
        Exit::Problems
    } else {
        Exit::Success
    };
    output::conclude(exit, printed, Stdout::Job)
}

/// `check --json`'s `reason` when `--routes` has no rule for the request.
const NO_RULE: &str = "no rule";

/// `check --routes FILE --method M --path P`: the rule that decides what the request
/// needs, as `serve --routes` finds it.
fn route_of(file: &Path, method: Option<&str>, path: Option<&str>) -> Result<RouteMatch> {
    // clap makes --method and --path come with --routes.
    let (Some(method), Some(path)) = (method, path) else {
        return Err(Error::usage("--routes needs --method and --path"));
    };
    if !routes::is_method(method) {
        return Err(Error::usage(format!(
            "--method {}: not an HTTP method (e.g. GET, POST)",
            printable(method)
        )));
    }
    let normalized = routes::normalize_path(path.as_bytes())
        .map_err(|e| Error::usage(format!("--path: {e}")))?;
    let rules = routes::read_file(file)?.rules;
    let rule = rules.find(method, &normalized).map(|rule| RuleMatch {
        line: rule.line,
        methods: rule.methods(),
        path: rule.glob().to_owned(),
        scopes: rule.scopes().clone(),
    });
    Ok(RouteMatch {
        file: file.display().to_string(),
        method: method.to_owned(),
        path: String::from_utf8_lossy(normalized.as_bytes()).into_owned(),
        rule,
    })
}

impl RouteMatch {
    fn describe(&self) -> String {
        match &self.rule {
            Some(rule) => format!(
                "{} {} is covered by line {} of {} ({} {}), which requires {}",
                self.method, self.path, rule.line, self.file, rule.methods, rule.path, rule.scopes
            ),
            None => self.uncovered(),
        }
    }

    fn uncovered(&self) -> String {
        format!(
            "no rule of {} covers {} {}, and a request no rule covers is refused; add one \
             (`tokenfile routes check {}` shows the rules)",
            self.file, self.method, self.path, self.file
        )
    }
}

/// `routes check FILE`: every problem of a rules file, by line; exit 5 if there is one.
fn routes_check(file: &Path, json: bool) -> Result<Exit> {
    let (rules, errors) = match routes::read_file(file) {
        Ok(file) => (Some(file.rules), Vec::new()),
        Err(Error::Rules { errors, .. }) => (None, errors),
        Err(e) => return Err(e),
    };
    let mut findings: Vec<RouteFinding> = errors
        .iter()
        .map(|e| RouteFinding {
            line: e.line,
            severity: "error",
            message: e.message.clone(),
        })
        .collect();
    if let Some(rules) = &rules {
        if rules.is_empty() {
            findings.push(RouteFinding {
                line: 0,
                severity: "warning",
                message: "no rule: every request matched against this file is refused".into(),
            });
        }
        if rules.len() > routes::UNREACHABLE_CHECKED {
            findings.push(RouteFinding {
                line: 0,
                severity: "warning",
                message: format!(
                    "only the first {} rules were compared for rules that never match",
                    routes::UNREACHABLE_CHECKED
                ),
            });
        }
        for (line, by) in rules.unreachable() {
            findings.push(RouteFinding {
                line,
                severity: "warning",
                message: format!(
                    "never used: line {by} comes first and matches every request this rule \
                     does (the first matching rule wins)"
                ),
            });
        }
    }
    let printed = if json {
        output::print_json(&RoutesReport {
            file: file.display().to_string(),
            rules: rules.as_ref().map_or(0, Rules::len),
            findings: &findings,
        })
    } else {
        let mut text = String::new();
        for f in &findings {
            let place = match f.line {
                0 => file.display().to_string(),
                line => format!("{}:{line}", file.display()),
            };
            text.push_str(&format!("{place}: {}: {}\n", f.severity, f.message));
        }
        let printed = output::print(&text);
        match &rules {
            Some(rules) => note(&format!(
                "{}: {} rule(s), {} warning(s)",
                file.display(),
                rules.len(),
                findings.len()
            )),
            None => note(&format!(
                "{}: {} error(s); serve would not start with it, and a running serve keeps \
                 its last good rules",
                file.display(),
                errors.len()
            )),
        }
        printed
    };
    let exit = if errors.is_empty() {
        Exit::Success
    } else {
        Exit::Problems
    };
    output::conclude(exit, printed, Stdout::Job)
}

fn hash(ctx: &Context) -> Result<Exit> {
    let audit = ctx.audit()?;
    // A file that others can read is refused for its plaintext by every other reader;
    // hashing is the fix, so `hash` alone may read it (the path must still be safe).
    let (hashed, invalid) = ctx.store.update_fixing_exposure(
        |doc| {
            let hashed = doc.hash_plaintext();
            Ok((hashed, doc.invalid_lines().len()))
        },
        |(hashed, _)| {
            let records = hashed.iter().map(AuditRecord::from).collect();
            Commit::new(&audit, Event::new(Change::Hash, records))
        },
    )?;
    note(&format!(
        "hashed {} plaintext credential(s) in {}",
        hashed.len(),
        ctx.store.path().display()
    ));
    if invalid > 0 {
        note(&format!(
            "warning: {invalid} invalid line(s) left as they are (they may hold plaintext); fix them with `tokenfile edit`"
        ));
    }
    Ok(Exit::Success)
}

fn serve(ctx: &Context, args: ServeArgs) -> Result<Exit> {
    crate::serve::run(crate::serve::ServeOptions {
        file: ctx.store.path().to_path_buf(),
        socket: args.listeners.socket,
        http: args.listeners.http,
        accept: args.accept,
        routes: args.routes,
        seen: args.seen,
        seen_interval: args.seen_interval,
    })
}
