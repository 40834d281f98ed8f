//! The command line (README "Commands"), as clap definitions. Behaviour lives in `cli::commands`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub(crate) use crate::serve::{Credential, HttpAddr};
use crate::when::{When, parse_duration, parse_lock_timeout};

/// The token file when neither `--file` nor `$TOKENFILE` names one.
pub(super) const DEFAULT_FILE: &str = "/etc/tokenfile/tokens";

/// Also the man page's EXIT STATUS and SECURITY sections (split at the blank line).
pub(super) const AFTER_HELP: &str = "\
Exit codes:
  0   success; for `check`: granted
  1   check: the token is valid but lacks a required scope
  2   usage error (bad flag, malformed or empty required scope)
  3   check: no token, unknown token or expired token
  4   no record has that ID, or the ID prefix is ambiguous
  5   lint/edit: the file has problems; or the file is unsafe to use: writable by others
      (itself or a directory on the way), owned by another user, a plaintext credential
      readable by others, or not a regular file
  10  I/O failure: cannot read or write the file, lock timeout, `init` on an existing file;
      mint/rotate: the new token could not be shown (nothing was changed); edit: the file
      changed while you edited (your copy is kept)

Tokens are never taken from the command line: `check` and `id` read the first line of
stdin (or `check --token-env VAR`). A minted token is printed once, alone, on stdout.";

/// `check --help`: every exit code `check` can give (docs/exit-codes.md), so that a script knows what
/// each one means without the manual.
const CHECK_HELP: &str = "\
Exit codes of check:
  0   granted: the token is valid and has every required scope
  1   forbidden: the token is valid but lacks a required scope (HTTP 403); with --routes,
      also when no rule covers --method and --path
  2   usage error: a bad flag, an empty or malformed required scope, a scope with `*`, or a
      token where a scope goes (refused, never echoed); with --routes, a --path that cannot
      be normalized (an encoded slash, a `;`, `..` above the root, ...)
  3   unauthorized: no token, an unknown token or an expired one (HTTP 401)
  5   the file is unsafe to use: writable by others, a plaintext credential readable by
      others, or not a regular file (`check` refuses it rather than trust it); with
      --routes, the rules file has an error or is unsafe
  10  I/O failure: the file is missing or cannot be read
(4, no such record ID, does not apply to check.) The code is the decision whatever happens
to the output: `check --json | true` or `> /dev/full` still exits 1 or 3 for a denial.";

/// How `DURATION` and `WHEN` are written, for every command that takes one (a macro: the text
/// is part of several help texts, and `concat!` takes literals only).
macro_rules! durations_help {
    () => {
        "DURATION: a number and a unit - s, m, h, d (days), w (weeks) or ms - or several in a
row, as 1h30m; there are no months or years (use 30d, 365d). WHEN: an RFC 3339 time
(2026-05-05T14:23:00Z) or a DURATION from now."
    };
}

/// `list --help`.
const LIST_HELP: &str = concat!(
    "Only `serve` counts uses: a token used only through `tokenfile check` shows \"never\".
With `serve --seen PATH`, give list the same --seen PATH.

Exit codes of list:
  0   listed (also when a reader such as `head` stops early)
  5   the file is unsafe to use
  10  the file is missing or cannot be read

",
    durations_help!()
);

/// `prune --help`.
const PRUNE_HELP: &str = concat!(
    "What is (or would be) removed is listed on stderr; --json puts it on stdout. Only `serve`
counts uses: a token used only through `tokenfile check` looks unused, and --unused removes
it. With `serve --seen PATH`, give prune the same --seen PATH.

Exit codes of prune:
  0   done, or nothing to prune
  2   usage error; --unused without any usable last-used sidecar (nothing to go by)
  5   the file is unsafe to use
  10  I/O failure: cannot read or write the file, lock timeout

",
    durations_help!()
);

/// `lint --help`: the finding kinds a script may match on.
const LINT_HELP: &str = concat!(
    "Findings (the kind in brackets, and `kind` in --json):
  errors:   invalid, duplicate, unsafe-permissions, unsafe-sidecar, stale-edit-copy
  warnings: expired, plaintext, dead-scope, world-readable, group-writable, bom,
            network-fs, saved-edit-copy, expiring (with --expiring)
Findings go to stdout, the summary to stderr.

Exit codes of lint:
  0   no error (warnings alone exit 0 unless --strict)
  5   an error; with --strict, a warning; with --expiring, a record that expires within it
  10  the file is missing or cannot be read

",
    durations_help!()
);

/// `id --help`.
const ID_HELP: &str = "\
Exit codes of id:
  0   the ID is printed, and the file has the token (or there is no file)
  2   no token on stdin
  4   the file exists and no record in it has the token
  5   the file is unsafe to use
  10  the file cannot be read";

/// `rotate --help` and `mint --help`: how times are written.
const WHEN_HELP: &str = durations_help!();

/// `serve --help`: what a proxy and an operator talk to.
const SERVE_HELP: &str = "\
HTTP endpoints (--http HOST:PORT or --http unix:/PATH, any number of them):
  /check       any method; required scopes from ?scope=a,b, the X-Required-Scope header and/or
               --routes; the token from `Authorization: Bearer <token>` (with --accept: also
               Basic's password, X-Api-Key). Answers:
                 204  granted (X-Token-Id, X-Token-Name, X-Token-Expires if it expires)
                 401  no, unknown or expired token (WWW-Authenticate: Bearer realm=\"tokenfile\")
                 403  the token lacks a required scope, or no rule of --routes covers the request
                 400  no valid required scope; with --routes, a path that cannot be normalized
  /ext_authz/  Envoy's ext_authz: as /check, but 200 on a grant and scopes only from
               X-Required-Scope; --routes matches Envoy's own method and path
  /healthz     GET: 200 and a JSON status while a loaded file is in use; 503 with the same
               JSON (status missing, refused, ...) while serve fails closed
  /metrics     GET: Prometheus text format (checks by outcome, reloads, reload failures,
               records loaded, last reload time, the soonest expiry, records expiring within
               7 days; with --routes, the rules' figures)
Unix socket (--socket, mode 0660), one request per line, answers in order:
  CHECK <scope>[,<scope>...] <token>   ->  OK <id> | FORBIDDEN <id> | UNAUTHORIZED | ERROR <reason>
  PING                                 ->  PONG
The file is reloaded on every change (in place, by rename, through a symlink); a missing or
unsafe file means no tokens (fail closed). The rules of --routes are reloaded the same way; a
change that cannot be used keeps the last good rules. Uses are counted per record and written
to <file>.seen (or --seen PATH) at most once a minute and at shutdown; `list` and `prune`
read it (give them the same --seen PATH).
Signals:
  SIGHUP           reload the file (and the rules) now
  SIGTERM, SIGINT  stop: finish the requests in flight, remove the socket files, exit 0";

/// `completions --help`: which shells, and how to install the script.
const COMPLETIONS_HELP: &str = "\
Shells: bash, zsh, fish, elvish, powershell. Install the script where your shell looks:
  bash:  tokenfile completions bash > ~/.local/share/bash-completion/completions/tokenfile
         (needs the bash-completion package: apt install bash-completion, brew install
         bash-completion@2)
  zsh:   tokenfile completions zsh > ~/.zfunc/_tokenfile  (with fpath+=(~/.zfunc) before
         compinit in ~/.zshrc)
  fish:  tokenfile completions fish > ~/.config/fish/completions/tokenfile.fish";

/// Manage a TAB-delimited bearer-token file and answer scope checks.
#[derive(Debug, Parser)]
#[command(name = "tokenfile", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The token file [default: $TOKENFILE, else /etc/tokenfile/tokens]
    #[arg(
        long,
        short = 'f',
        global = true,
        env = "TOKENFILE",
        value_name = "PATH"
    )]
    pub(crate) file: Option<PathBuf>,

    /// How long to wait for the lock held by another writer (e.g. 10s, 500ms, 2m)
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_lock_timeout
    )]
    pub(crate) lock_timeout: Duration,

    /// Where changes are logged [default: $TOKENFILE_AUDIT_LOG, else <file>.audit.jsonl]
    #[arg(long, global = true, env = "TOKENFILE_AUDIT_LOG", value_name = "PATH")]
    pub(crate) audit_log: Option<PathBuf>,

    /// The command to run, with its own arguments.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands, one variant each; the docs of the variants are their `--help`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an empty token file (mode 0600) with a header comment; refuses if it exists
    Init,

    /// Add a new token and print it once on stdout (only its SHA-256 is stored)
    ///
    /// Example: T=$(tokenfile mint --scope deploy --name ci --expires 90d). Without
    /// --expires the token never expires.
    #[command(after_help = WHEN_HELP)]
    Mint(MintArgs),

    /// Show the records: ID, status, stored form, scopes, name, created, expires, last used,
    /// uses (never a secret)
    ///
    /// Last used comes from the sidecar `<file>.seen` that `serve` writes, and from every
    /// --seen FILE (e.g. copied from other hosts): per record, the latest use wins. A record
    /// never seen is "never"; for --unused it counts as unused since it was created.
    #[command(after_help = LIST_HELP)]
    List(ListArgs),

    /// Remove the records with these IDs (all or nothing)
    Revoke {
        /// Record IDs or unique prefixes of at least 4 hex digits, as shown by `list`
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },

    /// Replace a token with a new one with the same scopes and name
    #[command(after_help = WHEN_HELP)]
    Rotate(RotateArgs),

    /// Remove every expired record and, with --unused, every record not used for that long
    ///
    /// Expired records are always removed (--expired says so explicitly); --unused adds the
    /// records that the last-used sidecars show unused for DURATION (a record never seen counts
    /// from its creation). One atomic change and one audit line; --dry-run only lists them.
    #[command(after_help = PRUNE_HELP)]
    Prune(PruneArgs),

    /// Decide whether a token has the required scopes (exit 0 granted, 1 forbidden, 3 unknown)
    ///
    /// The token is the first line of stdin, or the value of --token-env VAR; never an argument.
    /// Example: printf '%s\n' "$T" | tokenfile check --scope deploy && ./deploy.sh
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),

    /// Print the record ID of the token read from stdin, and say whether the file has it
    ///
    /// The ID goes to stdout; when the file exists, stderr says which line (and name) has
    /// the token, and the exit code is 4 when no record has it. Without a file: just the ID.
    #[command(after_help = ID_HELP)]
    Id,

    /// Report invalid lines, duplicates, expired and plaintext records, unsafe permissions
    #[command(after_help = LINT_HELP)]
    Lint(LintArgs),

    /// Store every plaintext credential as its sha256: digest (IDs, order, comments kept)
    Hash,

    /// Edit the file in $VISUAL/$EDITOR; validated on save and installed atomically
    Edit,

    /// Serve checks over a Unix socket and/or HTTP, reloading the file on every change
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),

    /// Work with a rules file of `serve --routes` (method + path glob -> scopes)
    #[command(subcommand)]
    Routes(RoutesCommand),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to write the script for.
        // `help = None`: the possible values and the shells list below say it already, and
        // `--help` (which README and the man pages repeat) stays as it is.
        #[arg(value_enum, help = None)]
        shell: clap_complete::Shell,
    },

    /// Print the man page tokenfile(1) (roff) on stdout, or write it and one page per
    /// command (tokenfile-mint(1), …) into a directory
    // Hidden from --help: a packager runs it once (`tokenfile man --dir …/man1`), while
    // --help is the first screen every user reads. It stays a stable, documented command
    // (README "Man page and shell completions"); a hidden subcommand also keeps the pages
    // from listing it.
    #[command(hide = true)]
    Man {
        /// Write tokenfile.1 and tokenfile-<command>.1 into DIR (e.g. ~/.cargo/share/man/man1)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `tokenfile routes …`.
#[derive(Debug, Subcommand)]
pub(crate) enum RoutesCommand {
    /// Check a rules file: every problem with its line (exit 5 if there is one), and rules
    /// that an earlier rule makes unreachable (warnings)
    ///
    /// One rule a line: METHODS PATH-GLOB SCOPES, e.g. `GET /api/** app:read` or
    /// `POST,PUT,DELETE /api/** app:write`; `*` for any method; in the glob `*` matches
    /// within a segment and `**` any number of segments; `#` starts a comment line. See
    /// docs/routes.md.
    Check {
        /// The rules file
        #[arg(value_name = "FILE")]
        file: PathBuf,

        #[command(flatten)]
        output: JsonArg,
    },
}

/// `--json`, for every command that has it. A command whose document says more than its
/// listing gives the flag its own help (`mut_arg`), so that `--help` tells what is printed.
#[derive(Debug, Args)]
pub(crate) struct JsonArg {
    /// Print one JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

const JSON_WITH_TOKEN: &str = "Print one JSON document (with the token) on stdout";
const JSON_WITH_DECISION: &str = "Print one JSON document with the decision on stdout";

#[derive(Debug, Args)]
#[command(mut_arg("json", |json| json.help(JSON_WITH_TOKEN)))]
pub(crate) struct MintArgs {
    /// Scope the token grants; repeat or comma-separate for several (`*` = everything,
    /// `kafka:*` = every scope under `kafka:`)
    #[arg(long = "scope", short = 's', required = true, value_name = "SCOPE")]
    pub scopes: Vec<String>,

    /// Free-text name shown by `list` and in the audit log (no TAB or newline)
    #[arg(long, default_value = "")]
    pub name: String,

    /// Expiry: an RFC 3339 time or a duration from now (90d, 12h, 30m)
    #[arg(long, value_name = "WHEN", value_parser = When::parse)]
    pub expires: Option<When>,

    /// Store the token itself instead of its SHA-256 (for files an older reader also uses)
    #[arg(long)]
    pub plaintext: bool,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
#[command(mut_arg("json", |json| json.help(JSON_WITH_TOKEN)))]
pub(crate) struct RotateArgs {
    /// The record ID (or a unique prefix of at least 4 hex digits)
    #[arg(value_name = "ID")]
    pub id: String,

    /// Keep the old token valid for this long (e.g. 24h) instead of removing it now
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// Expiry of the new token: RFC 3339 time or duration [default: the old record's]
    #[arg(long, value_name = "WHEN", value_parser = When::parse)]
    pub expires: Option<When>,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
#[command(mut_arg("json", |json| json.help(JSON_WITH_DECISION)))]
pub(crate) struct CheckArgs {
    /// Required scope; repeat or comma-separate for several (all must be granted)
    #[arg(
        long = "scope",
        short = 's',
        required_unless_present = "routes",
        value_name = "SCOPE"
    )]
    pub scopes: Vec<String>,

    /// Take the required scopes from this rules file, as `serve --routes` does: those of the
    /// first rule for --method and --path (any --scope must be granted as well); a request
    /// no rule covers is refused (exit 1)
    #[arg(long, value_name = "FILE", requires_all = ["method", "path"])]
    pub routes: Option<PathBuf>,

    /// The method of the request to decide, for --routes (e.g. GET)
    #[arg(long, value_name = "METHOD", requires = "routes")]
    pub method: Option<String>,

    /// The path of the request to decide, for --routes (e.g. /api/items/7); normalized as
    /// serve does (percent-decoded, dot segments and duplicate slashes resolved, query cut)
    #[arg(long, value_name = "PATH", requires = "routes")]
    pub path: Option<String>,

    /// Read the token from this environment variable instead of stdin
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,

    /// Say on stderr (with --json: in an `explain` object) which line and record matched,
    /// which scope granted each required one, or why the token was refused; never the token
    #[arg(long)]
    pub explain: bool,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct LintArgs {
    /// Also fail (exit 5) on warnings: expired or plaintext records, loose permissions
    #[arg(long)]
    pub strict: bool,

    /// Report each active record that expires within DURATION (e.g. 14d) and exit 5 when
    /// there is one, even without --strict (for cron)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expiring: Option<Duration>,

    #[command(flatten)]
    pub output: JsonArg,
}

/// The last-used sidecars to read besides the file's own `<file>.seen`.
#[derive(Debug, Args)]
pub(crate) struct SeenArgs {
    /// Also read this last-used sidecar (e.g. another host's `tokens.seen`); repeat or give
    /// several: per record, the latest use wins
    #[arg(long = "seen", value_name = "FILE", num_args = 1..)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only records not used for DURATION (e.g. 90d), or never used
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub unused: Option<Duration>,

    /// Only active records that expire within DURATION (e.g. 14d)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expiring: Option<Duration>,

    #[command(flatten)]
    pub seen: SeenArgs,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Remove the expired records (what prune always does; say it for clarity)
    #[arg(long)]
    pub expired: bool,

    /// Also remove the records not used for DURATION (e.g. 90d) by the last-used sidecars
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub unused: Option<Duration>,

    /// Only list what would be removed; change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub seen: SeenArgs,

    #[command(flatten)]
    pub output: JsonArg,
}

/// At least one listener: a `serve` with neither would answer nobody (a usage error that
/// names both flags).
#[derive(Debug, Args)]
#[group(id = "listener", required = true, multiple = true)]
pub(crate) struct Listeners {
    /// Unix socket to listen on (mode 0660), line protocol: `CHECK scope[,scope] TOKEN`
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// HTTP listener for forward auth (/check, /ext_authz/, /healthz, /metrics): an address
    /// such as 127.0.0.1:9180, or unix:/PATH for HTTP over a Unix socket (mode 0660, as nginx's
    /// `proxy_pass http://unix:/PATH:/check` reaches it); repeat for several
    #[arg(long, value_name = "ADDR")]
    pub http: Vec<HttpAddr>,
}

/// `serve`'s options: its listeners, and where it keeps when each token was last used.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The listeners (at least one).
    #[command(flatten)]
    pub listeners: Listeners,

    /// Where to keep when each token was last used [default: <file>.seen beside the file]
    #[arg(long = "seen", value_name = "PATH")]
    pub seen: Option<PathBuf>,

    /// Also take the token from `Authorization: Basic` (as the password, any user name) and/or
    /// the `X-Api-Key` header, for clients that cannot send a bearer token (git, docker,
    /// webhooks, monitors); comma-separate or repeat
    #[arg(long, value_name = "WHERE", value_delimiter = ',')]
    pub accept: Vec<Credential>,

    /// Rules mapping the original request's method and path to the scopes it needs (one
    /// `METHODS PATH-GLOB SCOPES` a line, first match wins, no match is 403; see
    /// docs/routes.md); reloaded when it changes, a broken change keeps the last good rules
    #[arg(long, value_name = "FILE")]
    pub routes: Option<PathBuf>,

    /// How often the last-used sidecar is written when something changed (for tests)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, hide = true)]
    pub seen_interval: Duration,
}
