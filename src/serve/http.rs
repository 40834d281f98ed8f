//! The HTTP listeners for reverse-proxy forward auth (nginx `auth_request`, Caddy
//! `forward_auth`, Traefik `ForwardAuth`, Envoy `ext_authz`), plus `/healthz` and `/metrics`
//! (docs/protocols.md). Each listens on TCP or, as `unix:/PATH`, on a Unix socket.
//!
//! `/check`, any method: required scopes from `?scope=a,b` (repeatable) and/or the
//! `X-Required-Scope` header — all of them must be granted; the token from
//! `Authorization: Bearer …` (and, when serve accepts them, Basic's password or `X-Api-Key`).
//! `/ext_authz/…` is the same check for Envoy, whose path is the client's: scopes only from
//! `X-Required-Scope`, and a grant is 200, the one status Envoy takes as one.
//!
//! | answer | when |
//! |---|---|
//! | 204 (`/ext_authz/`: 200) + `X-Token-Id`, `X-Token-Name` | granted |
//! | 400 | no scope asked for, or a malformed one (fail closed) |
//! | 401 + `WWW-Authenticate: Bearer realm="tokenfile"` | no, unknown or expired token |
//! | 403 + `X-Token-Id` | valid token without (all) the scopes |
//!
//! Every answer carries `Cache-Control: no-store`: a proxy must never reuse a decision.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::routes;
use crate::scope::RequiredScopes;
use crate::token::Secret;
use crate::when::{self, format_timestamp};

use super::routes::Routes;
use super::socket::{self, SocketFile};
use super::state::{Shared, log_decision};
use super::usage::Client;
use super::{AcceptFailures, next_connection};

/// Against slowloris: the whole request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request head limit (hyper answers 431 beyond it); a bearer token is at most 4 KiB.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// In-flight requests get this long to finish at shutdown.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `X-Token-Name` sent; names are for logs, not for storage.
const MAX_NAME_HEADER: usize = 256;

type Body = Full<Bytes>;

/// Header names as constants: looking a header up by `&str` parses the name every time, and
/// the check path looks up several per request (measured: BENCHMARKS.md "Forward auth").
mod names {
    use hyper::header::HeaderName;
    pub(super) const X_REQUIRED_SCOPE: HeaderName = HeaderName::from_static("x-required-scope");
    pub(super) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub(super) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    pub(super) const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
    pub(super) const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
    pub(super) const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
    pub(super) const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
    pub(super) const X_TOKEN_ID: HeaderName = HeaderName::from_static("x-token-id");
    pub(super) const X_TOKEN_NAME: HeaderName = HeaderName::from_static("x-token-name");
    pub(super) const X_TOKEN_EXPIRES: HeaderName = HeaderName::from_static("x-token-expires");
}

/// Where an HTTP listener listens: `HOST:PORT`, or `unix:PATH` for HTTP over a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for HttpAddr {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/tokenfile/http.sock".into());
            }
            return Ok(HttpAddr::Unix(PathBuf::from(path)));
        }
        text.parse().map(HttpAddr::Tcp).map_err(|_| {
            "expected an address such as 127.0.0.1:9180, or unix:/PATH for a Unix socket".into()
        })
    }
}

impl fmt::Display for HttpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAddr::Tcp(addr) => write!(f, "{addr}"),
            HttpAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where a token may come from besides `Authorization: Bearer` (`serve --accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Credential {
    /// `Authorization: Basic`, the token as the password (any user name).
    Basic,
    /// The `X-Api-Key` header.
    ApiKey,
}

/// What every HTTP listener of one `serve` answers with.
#[derive(Debug, Default)]
pub(super) struct Config {
    basic: bool,
    api_key: bool,
    /// `--routes`: scopes from the original request's method and path.
    routes: Option<Arc<Routes>>,
    /// Connections each listener holds at once; more wait in the kernel's backlog.
    max_connections: usize,
}

impl Config {
    pub(super) fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub(super) fn new(
        accept: &[Credential],
        routes: Option<Arc<Routes>>,
        max_connections: usize,
    ) -> Self {
        Config {
            basic: accept.contains(&Credential::Basic),
            api_key: accept.contains(&Credential::ApiKey),
            routes,
            max_connections,
        }
    }
}

/// A bound HTTP listener, and for a Unix socket the file to remove at exit.
pub(super) struct Bound {
    listener: Listener,
    file: Option<SocketFile>,
}

/// A bound listener, not yet handed to the runtime, and where it listens (for a TCP port 0,
/// the port it got).
pub(super) struct Listener {
    socket: StdListener,
    addr: HttpAddr,
}

enum StdListener {
    Tcp(StdTcpListener),
    Unix(StdUnixListener),
}

impl Bound {
    /// Binds before any thread exists: a Unix socket's mode comes from the process umask
    /// (see `socket::bind`, which also replaces a stale socket and refuses anything else).
    pub(super) fn bind(addr: &HttpAddr) -> Result<Bound> {
        match addr {
            HttpAddr::Tcp(addr) => {
                let listener = bind_tcp(*addr)?;
                // Port 0 asks for any free port: the log says which one it got.
                let bound = listener.local_addr().unwrap_or(*addr);
                Ok(Bound {
                    listener: Listener {
                        socket: StdListener::Tcp(listener),
                        addr: HttpAddr::Tcp(bound),
                    },
                    file: None,
                })
            }
            HttpAddr::Unix(path) => {
                let (listener, file) = socket::bind(path)?;
                Ok(Bound {
                    listener: Listener {
                        socket: StdListener::Unix(listener),
                        addr: HttpAddr::Unix(path.clone()),
                    },
                    file: Some(file),
                })
            }
        }
    }

    pub(super) fn split(self) -> (Listener, Option<SocketFile>) {
        (self.listener, self.file)
    }
}

impl Listener {
    /// Hands the listener to the runtime and serves it in `servers` until `shutdown`.
    pub(super) fn spawn(
        self,
        servers: &mut tokio::task::JoinSet<()>,
        shared: Arc<Shared>,
        config: Arc<Config>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let shown = self.addr.to_string();
        match self.socket {
            StdListener::Tcp(listener) => {
                let listener = TcpListener::from_std(listener).map_err(|source| Error::Listen {
                    addr: shown,
                    source,
                })?;
                servers.spawn(serve(listener, shared, config, shutdown));
            }
            StdListener::Unix(listener) => {
                let path = match &self.addr {
                    HttpAddr::Unix(path) => path.as_path(),
                    HttpAddr::Tcp(_) => Path::new(&shown),
                };
                let listener = UnixListener::from_std(listener)
                    .map_err(|e| Error::io("listen on the socket", path, e))?;
                servers.spawn(serve(listener, shared, config, shutdown));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<StdTcpListener> {
    let shown = addr.to_string();
    let listener =
        StdTcpListener::bind(addr).map_err(|e| Error::io("listen on", Path::new(&shown), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configure", Path::new(&shown), e))?;
    if !addr.ip().is_loopback() {
        warn!(
            %addr,
            "listening on a non-loopback address: anyone who can reach it can test tokens; \
             prefer 127.0.0.1 or a Unix socket behind the proxy"
        );
    }
    Ok(listener)
}

/// A listener's next connection, with the client as the kernel knows it (for last used,
/// when no proxy header names one).
pub(super) trait Accept: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next(&self) -> impl Future<Output = io::Result<(Self::Stream, Client)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<(Self::Stream, Client)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Client::Addr(peer.ip())))
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> io::Result<(Self::Stream, Client)> {
        let (stream, _) = self.accept().await?;
        let client = stream
            .peer_cred()
            .map_or(Client::Unknown, |cred| Client::Uid(cred.uid()));
        Ok((stream, client))
    }
}

/// Accepts until `shutdown`, then lets in-flight requests finish (bounded).
pub(super) async fn serve<L: Accept>(
    listener: L,
    shared: Arc<Shared>,
    config: Arc<Config>,
    shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut stop = shutdown;
    let mut failures = AcceptFailures::new("HTTP");
    while let Some((permit, (stream, peer))) =
        next_connection(&slots, &mut stop, &mut failures, || listener.next()).await
    {
        let shared = shared.clone();
        let config = config.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = route(&shared, &config, &request, peer);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful
            .watch(builder.serve_connection(TokioIo::new(NoStoreErrors::new(stream)), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("HTTP connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("HTTP requests still open after the shutdown grace period; closing them");
    }
}

/// Which forward-auth endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/check`: nginx, Caddy, Traefik.
    Check,
    /// `/ext_authz/<the client's path>`: Envoy.
    ExtAuthz,
}

/// Envoy's `path_prefix`; the client's own path follows it.
const EXT_AUTHZ: &str = "/ext_authz";

fn route(
    shared: &Shared,
    config: &Config,
    request: &Request<Incoming>,
    peer: Client,
) -> Response<Body> {
    let path = request.uri().path();
    let mut response = match path {
        "/check" => check(shared, config, request, peer, Endpoint::Check),
        _ if path
            .strip_prefix(EXT_AUTHZ)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) =>
        {
            check(shared, config, request, peer, Endpoint::ExtAuthz)
        }
        "/healthz" => only_get(request.method()).unwrap_or_else(|| healthz(shared, config)),
        "/metrics" => only_get(request.method()).unwrap_or_else(|| metrics(shared, config)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Never the path, the query or a header value: a client may put a token in any.
    // An extension method is the client's text too: only the standard ones are named.
    let method = standard_method(request.method().as_str());
    debug!(method, status = response.status().as_u16(), "http");
    response
}

fn only_get(method: &Method) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The client a proxy says it forwards, else the peer — for last used only, never for a
/// decision. From `X-Forwarded-For` the *last* address counts: the one the nearest proxy
/// appended, which the client cannot choose (everything before it may be the client's own
/// text); else `X-Real-IP`. A value that is not an address is ignored.
fn client_of(headers: &HeaderMap, peer: Client) -> Client {
    let address = |name: &HeaderName| {
        let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
        value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    };
    address(&names::X_FORWARDED_FOR)
        .or_else(|| address(&names::X_REAL_IP))
        .map_or(peer, Client::Addr)
}

fn check(
    shared: &Shared,
    config: &Config,
    request: &Request<Incoming>,
    peer: Client,
    endpoint: Endpoint,
) -> Response<Body> {
    // The rules in use, held for the check: the rule's scopes are borrowed from them.
    let rules = config.routes.as_ref().map(|routes| routes.rules());
    let required = match required_scopes(request, rules.as_deref().map(|r| &**r), endpoint) {
        Ok(required) => required,
        Err(reason) => {
            shared.count_invalid();
            let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return response;
        }
    };
    let token = presented_token(request.headers(), config);
    let client = client_of(request.headers(), peer);
    shared.check(&token, &required, client, |decision, expires| {
        log_decision("http", &decision);
        // A valid token refused because no rule covers the request (a request no rule covers
        // with no valid token is a 401, counted as such).
        if let (Decision::Forbidden { .. }, true, Some(routes)) = (
            decision,
            required.is_unsatisfiable(),
            config.routes.as_ref(),
        ) {
            routes.count_miss();
        }
        let mut response = decision_response(decision, config, endpoint);
        // On every grant, empty for a record that never expires: a proxy that copies the
        // header then overwrites a client's own copy instead of letting it through.
        if let Decision::Granted { .. } = decision {
            let value = match expires {
                Some(expires) => header_value(&format_timestamp(expires)),
                None => HeaderValue::from_static(""),
            };
            response.headers_mut().insert(names::X_TOKEN_EXPIRES, value);
        }
        response
    })
}

fn decision_response(
    decision: Decision<'_>,
    config: &Config,
    endpoint: Endpoint,
) -> Response<Body> {
    match decision {
        Decision::Granted { id, name } => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = match endpoint {
                Endpoint::Check => StatusCode::NO_CONTENT,
                Endpoint::ExtAuthz => StatusCode::OK,
            };
            let headers = response.headers_mut();
            headers.insert(names::X_TOKEN_ID, header_value(id.as_str()));
            headers.insert(names::X_TOKEN_NAME, header_value(&header_safe(name)));
            response
        }
        Decision::Forbidden { id, .. } => {
            let mut response = text(StatusCode::FORBIDDEN, "forbidden: missing scope\n");
            response
                .headers_mut()
                .insert(names::X_TOKEN_ID, header_value(id.as_str()));
            response
        }
        Decision::Unauthorized(_) => {
            // The body does not say unknown from expired; the log does (at debug).
            let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            let headers = response.headers_mut();
            // Basic first: nginx before 1.23 passes only the first challenge on, and a
            // client that speaks only Basic (git, docker) needs to be offered it.
            if config.basic {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tokenfile\""),
                );
            }
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tokenfile\""),
            );
            response
        }
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A name as a header value: printable ASCII kept, everything else (UTF-8, control bytes)
/// and `%` percent-encoded — so it is lossless for a reader who decodes it, and can never
/// split or inject a header. Capped at [`MAX_NAME_HEADER`] bytes.
pub(super) fn header_safe(name: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len().min(MAX_NAME_HEADER));
    for b in name.bytes() {
        let plain = (0x20..0x7f).contains(&b) && b != b'%';
        if out.len() + if plain { 1 } else { 3 } > MAX_NAME_HEADER {
            break;
        }
        if plain {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What the request needs: the scopes asked for (`?scope=`, `X-Required-Scope`) and, with
/// `--routes`, those of the first rule for the original request — all of them; no rule for
/// it needs what no token has. The error is the 400 body: no scope asked for, a malformed
/// one, an original request that is ambiguous or whose path does not normalize.
fn required_scopes<'r>(
    request: &Request<Incoming>,
    rules: Option<&'r routes::Rules>,
    endpoint: Endpoint,
) -> std::result::Result<Cow<'r, RequiredScopes>, String> {
    let asked = asked_scopes(request, endpoint)?;
    let Some(rules) = rules else {
        return asked.map(Cow::Owned).ok_or_else(|| NO_SCOPE.into());
    };
    let Some((method, target)) = original_request(request, endpoint)? else {
        return asked.map(Cow::Owned).ok_or_else(|| {
            format!(
                "{NO_SCOPE}, or send the original request's X-Forwarded-Method and \
                 X-Forwarded-Uri (or X-Original-Method and X-Original-URI) for --routes"
            )
        });
    };
    let path = routes::normalize_path(target).map_err(|e| e.to_string())?;
    Ok(match (rules.find(method, &path), asked) {
        (Some(rule), Some(asked)) => Cow::Owned(asked.and(rule.scopes())),
        (Some(rule), None) => Cow::Borrowed(rule.scopes()),
        (None, _) => {
            debug!(
                method = standard_method(method),
                "no rule matches the request"
            );
            Cow::Owned(RequiredScopes::unsatisfiable())
        }
    })
}

const NO_SCOPE: &str = "no required scope: ask with ?scope=a,b or the X-Required-Scope header";

/// The scopes asked for in the query (`scope=`, repeatable, comma-separated) and the
/// `X-Required-Scope` header(s); `None` when none is. For Envoy the query is the client's,
/// so only the header counts there.
fn asked_scopes(
    request: &Request<Incoming>,
    endpoint: Endpoint,
) -> std::result::Result<Option<RequiredScopes>, String> {
    let mut asked: Vec<Cow<'_, str>> = Vec::new();
    let query = match endpoint {
        Endpoint::Check => request.uri().query().unwrap_or(""),
        Endpoint::ExtAuthz => "",
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).ok_or("malformed query string")?;
        if key == "scope" {
            asked.push(percent_decode(value).ok_or("malformed percent-encoding in scope")?);
        }
    }
    for value in request.headers().get_all(names::X_REQUIRED_SCOPE) {
        let value = value
            .to_str()
            .map_err(|_| "X-Required-Scope is not ASCII")?;
        asked.push(Cow::Borrowed(value));
    }
    if asked.is_empty() {
        return Ok(None);
    }
    RequiredScopes::parse(&asked)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The method and target of the request the proxy protects: Envoy's own (the check *is*
/// that request, under [`EXT_AUTHZ`]), else `X-Forwarded-Method` + `X-Forwarded-Uri`
/// (Traefik, Caddy) or `X-Original-Method` + `X-Original-URI` (the nginx recipe). Either
/// pair alone, or both saying the same; anything else — half a pair, a header given twice,
/// two pairs that disagree — is refused rather than guessed at. `None` when there is none.
fn original_request(
    request: &Request<Incoming>,
    endpoint: Endpoint,
) -> std::result::Result<Option<(&str, &[u8])>, String> {
    if endpoint == Endpoint::ExtAuthz {
        let path = request.uri().path();
        let rest = path.strip_prefix(EXT_AUTHZ).unwrap_or(path);
        return Ok(Some((request.method().as_str(), rest.as_bytes())));
    }
    let headers = request.headers();
    let forwarded = header_pair(
        headers,
        (&names::X_FORWARDED_METHOD, "X-Forwarded-Method"),
        (&names::X_FORWARDED_URI, "X-Forwarded-Uri"),
    )?;
    let original = header_pair(
        headers,
        (&names::X_ORIGINAL_METHOD, "X-Original-Method"),
        (&names::X_ORIGINAL_URI, "X-Original-URI"),
    )?;
    match (forwarded, original) {
        (Some(a), Some(b)) if a == b => Ok(Some(a)),
        (Some(_), Some(_)) => Err(
            "X-Forwarded-Method/X-Forwarded-Uri and X-Original-Method/X-Original-URI \
             disagree: the proxy should set one pair and clear the other"
                .into(),
        ),
        (one, None) | (None, one) => Ok(one),
    }
}

/// A header, and its name as messages spell it.
type Named<'n> = (&'n HeaderName, &'static str);

fn header_pair<'h>(
    headers: &'h HeaderMap,
    (method, method_name): Named<'_>,
    (uri, uri_name): Named<'_>,
) -> std::result::Result<Option<(&'h str, &'h [u8])>, String> {
    let once = |(name, shown): Named<'_>| {
        single(headers, name).ok_or_else(|| format!("{shown} given twice"))
    };
    match (once((method, method_name))?, once((uri, uri_name))?) {
        (None, None) => Ok(None),
        (Some(method), Some(uri)) => {
            let method = method
                .to_str()
                .ok()
                .filter(|m| routes::is_method(m))
                .ok_or_else(|| format!("{method_name} is not an HTTP method"))?;
            Ok(Some((method, uri.as_bytes())))
        }
        _ => Err(format!(
            "{method_name} and {uri_name} go together: one without the other"
        )),
    }
}

/// A method as a log may show it: the standard ones by name, any other as `other` (it is
/// the client's text, and might be anything).
fn standard_method(method: &str) -> &'static str {
    routes::STANDARD_METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for space. `None` for a bad
/// escape or a result that is not UTF-8. Borrowed when there is nothing to decode, as in
/// almost every request.
fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains(['%', '+']) {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(crate::routes::escaped_byte(&bytes[i + 1..])?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The token the request presents: `Authorization: Bearer`, and where serve accepts them,
/// the password of `Authorization: Basic` and `X-Api-Key`. Empty (no token) when there is
/// none, or when the request is ambiguous — several `Authorization` or `X-Api-Key`
/// headers, or two places holding different tokens: fail closed rather than pick one.
fn presented_token(headers: &HeaderMap, config: &Config) -> Secret {
    let none = || Secret::new(Vec::new());
    let Some(authorization) = single(headers, &header::AUTHORIZATION) else {
        return none();
    };
    let from_authorization = authorization.and_then(|value| authorization_token(value, config));
    let api_key = if config.api_key {
        match single(headers, &names::X_API_KEY) {
            Some(value) => value,
            None => return none(),
        }
    } else {
        None
    };
    let from_api_key = api_key
        .map(|value| Zeroizing::new(value.as_bytes().trim_ascii().to_vec()))
        .filter(|key| !key.is_empty());
    match (from_authorization, from_api_key) {
        (Some(a), Some(b)) if a.ct_eq(&b).into() => Secret::new(a.to_vec()),
        (Some(_), Some(_)) => none(),
        (Some(token), None) | (None, Some(token)) => Secret::new(token.to_vec()),
        (None, None) => none(),
    }
}

/// The one value of header `name`: `Some(None)` if there is none, `None` if there are
/// several.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Option<&'h HeaderValue>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (value, None) => Some(value),
        (_, Some(_)) => None,
    }
}

/// The token of an `Authorization` value: a bearer token, or (when accepted) the password
/// of Basic credentials, whatever the user name.
fn authorization_token(value: &HeaderValue, config: &Config) -> Option<Zeroizing<Vec<u8>>> {
    let value = value.as_bytes().trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = (&value[..space], value[space + 1..].trim_ascii());
    let token = if scheme.eq_ignore_ascii_case(b"bearer") {
        Zeroizing::new(rest.to_vec())
    } else if config.basic && scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = Zeroizing::new(BASIC.decode(rest).ok()?);
        let colon = decoded.iter().position(|&b| b == b':')?;
        Zeroizing::new(decoded[colon + 1..].to_vec())
    } else {
        return None;
    };
    (!token.is_empty()).then_some(token)
}

/// Basic credentials are standard base64; some clients leave the padding out.
const BASIC: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn healthz(shared: &Shared, config: &Config) -> Response<Body> {
    let snapshot = shared.snapshot();
    let mut status = serde_json::json!({
        "status": snapshot.status.word(),
        "file": shared.file().display().to_string(),
        "file_present": snapshot.status.is_loaded(),
        "records": snapshot.index.records,
        "tokens": snapshot.index.len(),
        "invalid_lines": snapshot.invalid_lines,
        "last_reload": when::format_timestamp(snapshot.installed.into()),
        "reloads": shared.metrics.reloads(),
        "reload_failures": shared.metrics.reload_failures(),
    });
    if let crate::serve::state::FileStatus::Refused(reason) = &snapshot.status {
        status["reason"] = serde_json::Value::String(reason.clone());
    }
    if let Some(routes) = &config.routes {
        // Stale rules are still the last good ones, in use: reported, not a failure.
        let routes = routes.status();
        status["routes"] = serde_json::json!({
            "status": if routes.problem.is_some() { "stale" } else { "ok" },
            "rules": routes.rules,
            "problem": routes.problem,
        });
    }
    let mut body = status.to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if !snapshot.status.is_loaded() {
        // Failing closed: a readiness probe or a load balancer must see it.
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The connection as hyper sees it, with `Cache-Control: no-store` added to the answers
/// hyper makes itself (400 for a request it cannot parse, 414, 431 for an oversized head):
/// hyper has no hook for those, and every answer must carry it (docs/protocols.md). Each buffer hyper
/// writes is taken whole, so a response head is never split between two writes here.
struct NoStoreErrors<T> {
    inner: T,
    /// A rewritten buffer still to be sent, and how much of it was.
    pending: Vec<u8>,
    sent: usize,
}

impl<T> NoStoreErrors<T> {
    fn new(inner: T) -> Self {
        NoStoreErrors {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> NoStoreErrors<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NoStoreErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoStoreErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        match with_no_store(buf) {
            Some(fixed) => {
                self.pending = fixed;
                // Taken whole; what is left is sent before anything else.
                if let Poll::Ready(Err(e)) = self.drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `bytes` with `Cache-Control: no-store` added to every 4xx response head in it that lacks
/// the header (only hyper's own answers do); `None` if there is none.
fn with_no_store(bytes: &[u8]) -> Option<Vec<u8>> {
    const STATUS: &[u8] = b"HTTP/1.1 4";
    const HEADER: &[u8] = b"cache-control: no-store\r\n";
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut from = 0;
    while let Some(at) = memchr::memmem::find(&bytes[from..], STATUS).map(|i| from + i) {
        from = at + STATUS.len();
        if at > 0 && bytes[at - 1] != b'\n' {
            continue;
        }
        let head = &bytes[at..];
        let head = &head[..memchr::memmem::find(head, b"\r\n\r\n").map_or(head.len(), |e| e + 2)];
        if head
            .windows(14)
            .any(|w| w.eq_ignore_ascii_case(b"cache-control:"))
        {
            continue;
        }
        let Some(line_end) = memchr::memmem::find(head, b"\r\n").map(|e| at + e + 2) else {
            continue;
        };
        let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len() + HEADER.len()));
        out.extend_from_slice(&bytes[copied..line_end]);
        out.extend_from_slice(HEADER);
        copied = line_end;
    }
    let mut out = out?;
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

fn metrics(shared: &Shared, config: &Config) -> Response<Body> {
    let routes = config.routes.as_ref().map(|routes| routes.status());
    let body = shared
        .metrics
        .render(&shared.snapshot().gauges(), routes.as_ref());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_errors_get_no_store() {
        let error = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let fixed = with_no_store(error).unwrap();
        assert!(fixed.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncache-control: no-store\r\ncontent-length: 0\r\n\r\n"));
        let ours = b"HTTP/1.1 401 Unauthorized\r\ncache-control: no-store\r\ncontent-length: 13\r\n\r\nunauthorized\n";
        assert_eq!(with_no_store(ours), None);
        let both = [&ours[..], &error[..]].concat();
        let fixed = with_no_store(&both).unwrap();
        assert_eq!(fixed.len(), both.len() + 25);
        assert!(fixed.starts_with(ours));
        assert_eq!(with_no_store(b"HTTP/1.1 204 No Content\r\n\r\n"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("kafka%3Aread%2Cwrite").unwrap(),
            "kafka:read,write"
        );
        assert_eq!(percent_decode("a+b").unwrap(), "a b");
        assert!(percent_decode("%4").is_none());
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%ff").is_none());
        assert!(percent_decode("%+1").is_none());
        assert!(percent_decode("%-1").is_none());
    }

    #[test]
    fn names_are_header_safe() {
        assert_eq!(header_safe("ci bot"), "ci bot");
        assert_eq!(header_safe("Jürgen"), "J%C3%BCrgen");
        assert_eq!(header_safe("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(header_safe("100%"), "100%25");
        assert!(header_safe(&"é".repeat(500)).len() <= MAX_NAME_HEADER);
        assert!(HeaderValue::from_str(&header_safe("\u{0}\u{7f}x")).is_ok());
    }

    fn token_of(config: &Config, headers: &[(&'static str, &'static str)]) -> Vec<u8> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        presented_token(&map, config).expose().to_vec()
    }

    #[test]
    fn bearer_tokens() {
        let bearer_only = Config::default();
        assert!(token_of(&bearer_only, &[]).is_empty());
        assert_eq!(
            token_of(&bearer_only, &[("authorization", "Bearer  tok ")]),
            b"tok"
        );
        assert_eq!(
            token_of(&bearer_only, &[("authorization", "bearer tok")]),
            b"tok"
        );
        assert!(token_of(&bearer_only, &[("authorization", "Bearer")]).is_empty());
        assert!(token_of(&bearer_only, &[("authorization", "Bearer   ")]).is_empty());
        // Basic and X-Api-Key only when accepted.
        assert!(token_of(&bearer_only, &[("authorization", "Basic dTp0b2s=")]).is_empty());
        assert!(token_of(&bearer_only, &[("x-api-key", "tok")]).is_empty());
        let two = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert!(token_of(&bearer_only, &two).is_empty());
    }

    #[test]
    fn basic_and_api_key_tokens() {
        let all = Config::new(&[Credential::Basic, Credential::ApiKey], None, 1);
        // "u:tok", "git:tok" without padding, ":tok" (no user name), "u:a:b" (password "a:b").
        assert_eq!(
            token_of(&all, &[("authorization", "Basic dTp0b2s=")]),
            b"tok"
        );
        assert_eq!(
            token_of(&all, &[("authorization", "basic Z2l0OnRvaw")]),
            b"tok"
        );
        assert_eq!(
            token_of(&all, &[("authorization", "Basic OnRvaw==")]),
            b"tok"
        );
        assert_eq!(
            token_of(&all, &[("authorization", "Basic dTphOmI=")]),
            b"a:b"
        );
        // No colon, an empty password, not base64: no token.
        assert!(token_of(&all, &[("authorization", "Basic dG9r")]).is_empty());
        assert!(token_of(&all, &[("authorization", "Basic dTo=")]).is_empty());
        assert!(token_of(&all, &[("authorization", "Basic !!!")]).is_empty());
        assert_eq!(token_of(&all, &[("x-api-key", " tok ")]), b"tok");
        // The same token twice is fine; two different ones, or two keys, are ambiguous.
        let same = [("authorization", "Bearer tok"), ("x-api-key", "tok")];
        assert_eq!(token_of(&all, &same), b"tok");
        let different = [("authorization", "Bearer tok"), ("x-api-key", "other")];
        assert!(token_of(&all, &different).is_empty());
        let keys = [("x-api-key", "tok"), ("x-api-key", "tok")];
        assert!(token_of(&all, &keys).is_empty());
        // An Authorization header serve cannot read leaves the key alone.
        let digest = [("authorization", "Digest x"), ("x-api-key", "tok")];
        assert_eq!(token_of(&all, &digest), b"tok");
        let basic_only = Config::new(&[Credential::Basic], None, 1);
        assert!(token_of(&basic_only, &[("x-api-key", "tok")]).is_empty());
    }
}
