//! `tokenfile serve` (docs/protocols.md): a long-running checker on a Unix socket and/or HTTP that
//! follows every change of the token file.
//!
//! - [`load`]: reading the file consistently;
//! - [`state`]: the snapshot in use, swapped whole, and the shared check and its log line;
//! - [`policy`]: when to read the file and whether to install what was read (a pure state
//!   machine, tested on a fake clock);
//! - [`watch`]: the reloader thread that drives it (inotify on the names that lead to the
//!   file, periodic stat, SIGHUP);
//! - [`socket`]: the Unix socket line protocol;
//! - [`http`]: forward auth (`/check`, Envoy's `/ext_authz/`), `/healthz`, `/metrics`;
//! - [`routes`]: the rules of `--routes` in use, and the thread that follows their file;
//! - [`metrics`]: counters and their Prometheus text.
//!
//! Order at start matters: the file is read and the listeners bound before any thread
//! exists (the socket's mode is set through the process-wide umask), so that a bad path or
//! a busy port fails right away with its exit code, before anything is served.

mod http;
mod last_used;
mod load;
mod metrics;
mod policy;
mod routes;
mod socket;
mod state;
mod usage;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch as signal_watch;
use tracing::{info, warn};

use crate::error::{Error, Exit, Result};

pub(crate) use http::{Credential, HttpAddr};
use state::Shared;

#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    /// The token file as the user named it (may be a symlink, e.g. a Kubernetes `..data` link).
    pub file: PathBuf,
    /// The listeners: with neither, nothing is served (the command line requires one).
    pub socket: Option<PathBuf>,
    pub http: Vec<HttpAddr>,
    /// Where else than `Authorization: Bearer` a token is taken from.
    pub accept: Vec<Credential>,
    /// `--routes`: the rules file mapping the original request to scopes.
    pub routes: Option<PathBuf>,
    /// The last-used sidecar; `None`: `<file>.seen` beside the real file.
    pub seen: Option<PathBuf>,
    /// How often the sidecar is written when something changed.
    pub seen_interval: std::time::Duration,
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully and returns success.
pub(crate) fn run(options: ServeOptions) -> Result<Exit> {
    init_logging();
    raise_open_files_limit();
    early_signals()?;
    map_large_blocks();
    let (snapshot, fingerprint, recheck) = load::initial(&options.file)?;
    let sidecar = last_used::Sidecar::of(&options)?;
    let shared = Arc::new(Shared::new(options.file.clone(), snapshot));
    sidecar.load_into(&shared);
    // A rules file that cannot be used stops the start: there are no good rules to keep.
    let (routes, routes_watch) = match options.routes.as_deref().map(routes::Routes::load) {
        Some(loaded) => {
            let (routes, watch) = loaded?;
            (Some(routes), Some(watch))
        }
        None => (None, None),
    };
    refuse_a_socket_path_twice(&options)?;
    // Bind before any thread exists; see the module comment.
    let socket = options.socket.as_deref().map(socket::bind).transpose()?;
    let http = options
        .http
        .iter()
        .map(http::Bound::bind)
        .collect::<Result<Vec<_>>>()?;

    let reloader =
        watch::Reloader::start(shared.clone(), fingerprint, recheck).map_err(|source| {
            Error::Start {
                what: "the reloader thread",
                source,
            }
        })?;
    let routes_follower = routes_watch
        .map(routes::Watch::start)
        .transpose()
        .map_err(|source| Error::Start {
            what: "the routes thread",
            source,
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokenfile-serve")
        .enable_all()
        .build()
        .map_err(|source| Error::Start {
            what: "the async runtime",
            source,
        })?;
    let (socket_listener, socket_file) = match socket {
        Some((listener, file)) => (Some(listener), Some(file)),
        None => (None, None),
    };
    let (http, http_files): (Vec<_>, Vec<_>) = http.into_iter().map(http::Bound::split).unzip();
    let listeners = options.http.len() + usize::from(options.socket.is_some());
    let max_connections = connection_limit(listeners);
    let config = Arc::new(http::Config::new(&options.accept, routes, max_connections));
    let served = runtime.block_on(serve(
        shared.clone(),
        socket_listener,
        http,
        Reload {
            file: reloader.trigger(),
            routes: routes_follower.as_ref(),
        },
        &options,
        &sidecar,
        config,
    ));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    reloader.stop();
    drop(routes_follower);
    // Every check has been answered: what they changed is kept.
    sidecar.write(&shared, true);
    // Removes the socket files (if they are still ours).
    drop(socket_file);
    drop(http_files);
    served?;
    info!("stopped");
    Ok(Exit::Success)
}

/// What SIGHUP reads again.
struct Reload<'a> {
    file: watch::Trigger,
    routes: Option<&'a routes::Follower>,
}

impl Reload<'_> {
    fn reload(&self) {
        self.file.reload();
        if let Some(routes) = self.routes {
            routes.reload();
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    socket: Option<std::os::unix::net::UnixListener>,
    http: Vec<http::Listener>,
    reload: Reload<'_>,
    options: &ServeOptions,
    sidecar: &last_used::Sidecar,
    config: Arc<http::Config>,
) -> Result<()> {
    let signals = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::Signals {
            what: format!("handle {name}"),
            source: Box::new(e),
        })
    };
    let mut hangup = signals(SignalKind::hangup(), "SIGHUP")?;
    let mut terminate = signals(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = signals(SignalKind::interrupt(), "SIGINT")?;
    // Handled from here on: one that came during start-up is delivered now.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&stop_signals()),
        None,
    )
    .map_err(|e| Error::Signals {
        what: "unblock SIGTERM and SIGINT".into(),
        source: Box::new(e),
    })?;

    let (stop, stopping) = signal_watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = socket {
        let path = options.socket.clone().unwrap_or_default();
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io("listen on the socket", &path, e))?;
        servers.spawn(socket::serve(
            listener,
            shared.clone(),
            config.max_connections(),
            stopping.clone(),
        ));
        info!(socket = %path.display(), "listening");
    }
    for listener in http {
        let shown = listener.to_string();
        listener.spawn(
            &mut servers,
            shared.clone(),
            config.clone(),
            stopping.clone(),
        )?;
        info!(http = %shown, "listening");
    }
    info!(file = %shared.file().display(), "serving checks");
    servers.spawn(sidecar.clone().keep(shared.clone(), stopping.clone()));

    loop {
        tokio::select! {
            _ = hangup.recv() => reload.reload(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("shutting down: finishing requests in flight");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(
        http::DRAIN_TIMEOUT + std::time::Duration::from_secs(1),
        async { while servers.join_next().await.is_some() {} },
    )
    .await;
    if drained.is_err() {
        warn!("some connections did not finish in time; closing them");
    }
    Ok(())
}

/// One path for two listeners would have the second find the first "in use": say what is
/// wrong instead.
fn refuse_a_socket_path_twice(options: &ServeOptions) -> Result<()> {
    let unix_http = options.http.iter().filter_map(|addr| match addr {
        HttpAddr::Unix(path) => Some(path),
        HttpAddr::Tcp(_) => None,
    });
    let mut seen = std::collections::HashSet::new();
    for path in options.socket.iter().chain(unix_http) {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if !seen.insert(absolute) {
            return Err(Error::usage(format!(
                "{} is given for two listeners (--socket, --http unix:): each needs a path of \
                 its own",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Resolves once `shutdown` says stop (or its sender is gone).
async fn stopped(shutdown: &mut signal_watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The next accepted connection of either listener, with its connection slot: waits for a
/// free slot first (backpressure at the connection limit), then for a client; a failed
/// accept is retried (see [`AcceptFailures`]). `None` once shutdown is asked for.
async fn next_connection<T, F>(
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
    stop: &mut signal_watch::Receiver<bool>,
    failures: &mut AcceptFailures,
    mut accept: impl FnMut() -> F,
) -> Option<(tokio::sync::OwnedSemaphorePermit, T)>
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.ok()?,
            () = stopped(stop) => return None,
        };
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            () = stopped(stop) => return None,
        };
        match accepted {
            Ok(connection) => {
                failures.ok();
                return Some((permit, connection));
            }
            Err(e) => failures.failed(&e).await,
        }
    }
}

/// How many connections each of `listeners` holds at once: the open-files limit (raised at
/// start) shared between them, less what the reloader and the rest need — at least 1024, at
/// most 65536. A local client that opens more than that makes the next ones wait in the
/// backlog; a higher limit (`LimitNOFILE=` in systemd) raises this one.
fn connection_limit(listeners: usize) -> usize {
    const SPARE: u64 = 256;
    let files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(4096, |(soft, _)| soft);
    let each = files.saturating_sub(SPARE) / listeners.max(1) as u64;
    usize::try_from(each.clamp(1024, 65536)).unwrap_or(1024)
}

/// Raises the soft limit on open files to the hard one: each client connection holds a
/// descriptor, and the reloader must still be able to open the file (it also keeps a few
/// in reserve, see `watch.rs`).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!("cannot read the open files limit: {e}"),
    }
}

/// Makes every large block (an index's entries, names, table: tens of MiB for a million
/// records) a mapping of its own, given back to the system the moment it is freed.
///
/// glibc's default is to raise that threshold after the first such block is freed, up to
/// 32 MiB, and to serve later ones from its heaps, which it keeps: with the default, RSS
/// after each reload of a 1M-record file wandered between 94 and 127 MiB and the peak during
/// one grew reload after reload (211 → 270 MiB); with a fixed 1 MiB threshold RSS stays at
/// 94 MiB and the peak at 203 MiB — the index in use plus the one being built (see
/// BENCHMARKS.md). Called once, before the first load.
fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; no memory is passed.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the memory of a dropped state back to the system: what is left of it in glibc's
/// heaps after [`map_large_blocks`] (the scope sets, small blocks of the loaders' threads).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own to the kernel.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Failed accepts in a row on one listener. Out of descriptors, the client waits in the
/// backlog and the accept fails again until one is free: pause rather than spin, and say
/// so once per streak rather than ten times a second.
struct AcceptFailures {
    /// The listener, as the warning names it.
    listener: &'static str,
    streak: u64,
}

impl AcceptFailures {
    fn new(listener: &'static str) -> Self {
        AcceptFailures {
            listener,
            streak: 0,
        }
    }

    async fn failed(&mut self, e: &std::io::Error) {
        if self.streak == 0 {
            warn!(
                "{} accept failed: {e}; retrying every 100 ms",
                self.listener
            );
        }
        self.streak += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    fn ok(&mut self) {
        if self.streak > 0 {
            info!(
                "accepting connections again after {} failed attempts",
                self.streak
            );
            self.streak = 0;
        }
    }
}

/// Signal dispositions needed before any thread starts:
/// - SIGIO ignored: the reloader holds a read lease on the file while reading it (see
///   `load.rs`), and a writer opening the file then makes the kernel send SIGIO, whose
///   default action would kill us;
/// - SIGHUP ignored until the runtime's handler replaces it, so that a reload request
///   during start-up does not kill us either (the file is being read then anyway).
/// - SIGTERM and SIGINT blocked until the runtime handles them ([`stop_signals`]): one that
///   arrives during start-up (a supervisor giving up, a test stopping us as soon as the
///   socket appears) waits and then stops us gracefully, socket file removed, instead of
///   killing us by its default action. Every thread started later inherits the block, so
///   only the thread that unblocks them receives them.
fn early_signals() -> Result<()> {
    use nix::sys::signal::{SigHandler, SigmaskHow, Signal, pthread_sigmask, signal};
    for sig in [Signal::SIGIO, Signal::SIGHUP] {
        // SAFETY: installs SIG_IGN, so no handler code ever runs.
        unsafe { signal(sig, SigHandler::SigIgn) }.map_err(|e| Error::Signals {
            what: format!("set up {sig}"),
            source: Box::new(e),
        })?;
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), None).map_err(|e| {
        Error::Signals {
            what: "block SIGTERM and SIGINT during start-up".into(),
            source: Box::new(e),
        }
    })
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`; `debug` shows every
/// decision, by record ID). A token never reaches a log line.
fn init_logging() {
    let asked = std::env::var("RUST_LOG").ok();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // notify's inotify thread warns "Unable to remove the path from the watches:
    // WatchNotFound" whenever a watched directory vanishes (it sees the parent's DELETE and
    // the directory's own DELETE_SELF, and removes the watch twice): every Kubernetes
    // `..data` swap deletes the old `..<timestamp>` directory we watch, and nothing is
    // wrong then. Its real errors come to us as events; its own logs only when asked for.
    if !asked.is_some_and(|a| a.contains("notify"))
        && let Ok(quiet) = "notify=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // Someone (a test, an embedding program) may have set a subscriber already: keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
