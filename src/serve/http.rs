//! The HTTP listener for reverse-proxy forward auth (nginx `auth_request`, Caddy
//! `forward_auth`, Traefik `ForwardAuth`), plus `/healthz` and `/metrics` (docs/protocols.md).
//!
//! `/check`, any method: required scopes from `?scope=a,b` (repeatable) and/or the
//! `X-Required-Scope` header — all of them must be granted; the token from
//! `Authorization: Bearer …`.
//!
//! | answer | when |
//! |---|---|
//! | 204 + `X-Token-Id`, `X-Token-Name` | granted |
//! | 400 | no scope asked for, or a malformed one (fail closed) |
//! | 401 + `WWW-Authenticate: Bearer realm="tokenfile"` | no, unknown or expired token |
//! | 403 + `X-Token-Id` | valid token without (all) the scopes |
//!
//! Every answer carries `Cache-Control: no-store`: a proxy must never reuse a decision.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::scope::RequiredScopes;
use crate::token::Secret;
use crate::when::{self, format_timestamp};

use super::state::{Shared, log_decision};
use super::usage::Client;
use super::{AcceptFailures, next_connection};

const MAX_CONNECTIONS: usize = 1024;
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

pub(super) fn bind(addr: SocketAddr) -> Result<StdTcpListener> {
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
             prefer 127.0.0.1 behind the proxy"
        );
    }
    Ok(listener)
}

/// Accepts until `shutdown`, then lets in-flight requests finish (bounded).
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        next_connection(&slots, &mut stop, &mut failures, || listener.accept()).await
    {
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = route(&shared, &request, peer.ip());
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

fn route(shared: &Shared, request: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let mut response = match request.uri().path() {
        "/check" => check(shared, request, peer),
        "/healthz" => only_get(request.method()).unwrap_or_else(|| healthz(shared)),
        "/metrics" => only_get(request.method()).unwrap_or_else(|| metrics(shared)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Never the path, the query or a header value: a client may put a token in any.
    // An extension method is the client's text too: only the standard ones are named.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
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

/// The client a proxy says it forwards (the first address of `X-Forwarded-For`, else
/// `X-Real-IP`), else the peer — for last used only, never for a decision. A value that is
/// not an address is ignored.
fn client_of(headers: &HeaderMap, peer: IpAddr) -> Client {
    let first_address = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        value.split(',').next()?.trim().parse::<IpAddr>().ok()
    };
    Client::Addr(
        first_address("x-forwarded-for")
            .or_else(|| first_address("x-real-ip"))
            .unwrap_or(peer),
    )
}

fn check(shared: &Shared, request: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let required = match required_scopes(request) {
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
    let token = bearer(request.headers());
    let client = client_of(request.headers(), peer);
    shared.check(&token, &required, client, |decision, expires| {
        log_decision("http", &decision);
        let mut response = decision_response(decision);
        if let (Decision::Granted { .. }, Some(expires)) = (decision, expires) {
            response
                .headers_mut()
                .insert("x-token-expires", header_value(&format_timestamp(expires)));
        }
        response
    })
}

fn decision_response(decision: Decision<'_>) -> Response<Body> {
    match decision {
        Decision::Granted { id, name } => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            let headers = response.headers_mut();
            headers.insert("x-token-id", header_value(id.as_str()));
            headers.insert("x-token-name", header_value(&header_safe(name)));
            response
        }
        Decision::Forbidden { id, .. } => {
            let mut response = text(StatusCode::FORBIDDEN, "forbidden: missing scope\n");
            response
                .headers_mut()
                .insert("x-token-id", header_value(id.as_str()));
            response
        }
        Decision::Unauthorized(_) => {
            // The body does not say unknown from expired; the log does (at debug).
            let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            response.headers_mut().insert(
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

/// All scopes asked for, from the query (`scope=`, repeatable, comma-separated) and the
/// `X-Required-Scope` header(s). The error is the 400 body.
fn required_scopes(request: &Request<Incoming>) -> std::result::Result<RequiredScopes, String> {
    let mut asked: Vec<Cow<'_, str>> = Vec::new();
    for pair in request.uri().query().unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).ok_or("malformed query string")?;
        if key == "scope" {
            asked.push(percent_decode(value).ok_or("malformed percent-encoding in scope")?);
        }
    }
    for value in request.headers().get_all("x-required-scope") {
        let value = value
            .to_str()
            .map_err(|_| "X-Required-Scope is not ASCII")?;
        asked.push(Cow::Borrowed(value));
    }
    if asked.is_empty() {
        return Err("no required scope: ask with ?scope=a,b or the X-Required-Scope header".into());
    }
    RequiredScopes::parse(&asked).map_err(|e| e.to_string())
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
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
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

/// The token of the one `Authorization: Bearer <token>` header; empty (no token) if there
/// is none, it uses another scheme, or there are several (ambiguous: fail closed).
fn bearer(headers: &HeaderMap) -> Secret {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Secret::new(Vec::new());
    };
    let value = value.as_bytes().trim_ascii();
    let token = match value.iter().position(|&b| b == b' ') {
        Some(space) if value[..space].eq_ignore_ascii_case(b"bearer") => {
            value[space + 1..].trim_ascii()
        }
        _ => &[][..],
    };
    Secret::new(token.to_vec())
}

fn healthz(shared: &Shared) -> Response<Body> {
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
            .to_ascii_lowercase()
            .windows(14)
            .any(|w| w == b"cache-control:")
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

fn metrics(shared: &Shared) -> Response<Body> {
    let body = shared.metrics.render(&shared.snapshot().gauges());
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

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_empty());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(bearer(&headers).expose(), b"tok");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer tok"),
        );
        assert_eq!(bearer(&headers).expose(), b"tok");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dG9rOg=="),
        );
        assert!(bearer(&headers).is_empty());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer(&headers).is_empty());
    }
}
