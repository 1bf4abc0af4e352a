//! The HTTP/1.1 server over a `Hub`: routing, the control endpoints'
//! token, the SSE alert stream, and the limits on connections, header size
//! and stream clients. hyper parses the requests (a malformed request gets
//! 400, oversized headers 431, a silent client is closed after
//! `header_read_timeout`), so nothing here reads raw bytes.

use super::hub::{Control, Hub, StoredAlert};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

/// The dashboard page, embedded in the binary (no CDN, no external fonts).
const DASHBOARD: &str = include_str!("dashboard.html");

/// The server's settings and limits.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// The bearer token of `POST /checkpoint` and `POST /reload`, read by
    /// the daemon from the token file the config names; `None`: those
    /// endpoints are off (403).
    pub token: Option<String>,
    /// Request line and headers together, in bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// Header lines per request (beyond: 431).
    pub max_headers: usize,
    /// Open connections; one more is closed at once and counted.
    pub max_connections: usize,
    /// `GET /alerts/stream` clients; one more gets 503 and is counted.
    pub max_sse_clients: usize,
    /// A connection that has not sent its request headers in this time is
    /// closed (a client that connects and sends nothing).
    pub header_read_timeout: Duration,
    /// A comment line on idle SSE streams, so proxies and clients see the
    /// stream is alive.
    pub heartbeat: Duration,
    /// An SSE stream is ended after this long; the client reconnects with
    /// `Last-Event-ID` and loses nothing. It bounds how long one client
    /// holds a slot, and lets proxies and load balancers recycle it.
    pub max_stream: Duration,
    /// Most alerts one `GET /alerts` answers (`limit` is capped to it).
    pub max_page: usize,
    /// How long shutdown waits for open connections before closing them.
    pub shutdown_grace: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_connections: 256,
            max_sse_clients: 32,
            header_read_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            max_stream: Duration::from_secs(600),
            max_page: 10_000,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token for `HttpOptions::token`, read from the file the config
/// names: one line (surrounding whitespace ignored), at least
/// `MIN_TOKEN_LEN` characters, no inner whitespace, and on Unix readable by
/// its owner only (as ssh insists of a private key). The error names the
/// file and what to do.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {shown}: cannot read it: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| format!("token file {shown}: {e}"))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "token file {shown}: readable or writable by other users (mode {:o}); chmod 600 it",
                mode & 0o777
            ));
        }
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {shown}: empty"));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(format!("token file {shown}: the token must be one line without spaces"));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("token file {shown}: the token is shorter than {MIN_TOKEN_LEN} characters"));
    }
    Ok(token.to_string())
}

type ResponseBody = BoxBody<Bytes, Infallible>;

impl HttpOptions {
    /// The options with values that would make the server misbehave
    /// raised to the least that works: a zero heartbeat (a busy loop; tokio
    /// refuses it), a zero page, a header limit below a request line.
    fn usable(mut self) -> HttpOptions {
        self.heartbeat = self.heartbeat.max(Duration::from_millis(100));
        self.max_page = self.max_page.max(1);
        self.max_header_bytes = self.max_header_bytes.max(1024);
        self.max_headers = self.max_headers.max(8);
        self
    }
}

/// Serves `hub` on `listener` until `shutdown` turns true (or its sender
/// is dropped): then stops accepting, ends the SSE streams, lets requests in
/// flight finish for `shutdown_grace`, and returns.
pub async fn serve_http(
    listener: TcpListener,
    hub: Arc<Hub>,
    opts: HttpOptions,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let opts = Arc::new(opts.usable());
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_header_size(opts.max_header_bytes)
        .max_headers(opts.max_headers);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    // Out of descriptors or a connection reset before accept:
                    // the listener itself is fine; wait a little, go on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= opts.max_connections {
                    hub.edge.connections_refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), {
                    let (hub, opts, shutdown) = (hub.clone(), opts.clone(), shutdown.clone());
                    service_fn(move |req| {
                        let (hub, opts, shutdown) = (hub.clone(), opts.clone(), shutdown.clone());
                        async move { Ok::<_, Infallible>(route(req, &hub, &opts, shutdown)) }
                    })
                });
                let mut stop = shutdown.clone();
                connections.spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(opts.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    connections.shutdown().await;
    Ok(())
}

/// Resolves once shutdown is asked for (or its sender is gone); the guard
/// `wait_for` returns is dropped here so callers' futures stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn route(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    opts: &HttpOptions,
    shutdown: watch::Receiver<bool>,
) -> Response<ResponseBody> {
    hub.edge.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let get = |f: &dyn Fn() -> Response<ResponseBody>| {
        if req.method() == Method::GET || req.method() == Method::HEAD { f() } else { method_not_allowed(hub, "GET") }
    };
    let response = match path {
        "/" | "/index.html" => get(&|| respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD)),
        "/metrics" => get(&|| respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", hub.metrics_text())),
        "/health" => get(&|| respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")),
        "/ready" => get(&|| {
            if hub.is_ready() {
                respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "not ready: recovering or not yet accepting the feed\n",
                )
            }
        }),
        "/api/status" => get(&|| respond(StatusCode::OK, "application/json", hub.status_json().to_string())),
        "/alerts" => get(&|| alerts_page(hub, opts, query)),
        "/alerts/stream" => get(&|| alert_stream(hub, opts, &req, query, shutdown.clone())),
        "/checkpoint" => control(hub, opts, &req, Control::Checkpoint),
        "/reload" => control(hub, opts, &req, Control::Reload),
        _ => {
            hub.edge.bad_requests.fetch_add(1, Ordering::Relaxed);
            respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                format!(
                    "no such endpoint: {path}\nendpoints: GET / /metrics /health /ready /api/status /alerts?since=ID[&limit=N] /alerts/stream; POST /checkpoint /reload\n"
                ),
            )
        }
    };
    if req.method() == Method::HEAD {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    response
}

fn empty() -> ResponseBody {
    Full::new(Bytes::new()).boxed()
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn bad_request(hub: &Hub, message: String) -> Response<ResponseBody> {
    hub.edge.bad_requests.fetch_add(1, Ordering::Relaxed);
    respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", message + "\n")
}

fn method_not_allowed(hub: &Hub, allow: &'static str) -> Response<ResponseBody> {
    hub.edge.bad_requests.fetch_add(1, Ordering::Relaxed);
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        format!("method not allowed here; use {allow}\n"),
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// `key=value` pairs of a query string (no percent-decoding: the values
/// read here are numbers).
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// A number parameter: absent is `None`, malformed is an error naming it.
fn number_param(query: &str, key: &str) -> Result<Option<u64>, String> {
    match query_param(query, key) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| format!("{key}={v:?} is not a non-negative integer")),
    }
}

/// `GET /alerts?since=ID[&limit=N]`: the alerts after `since`, oldest
/// first, as `{"alerts": [...], "next_since": ID, "more": bool, "lost": ...}`.
fn alerts_page(hub: &Hub, opts: &HttpOptions, query: &str) -> Response<ResponseBody> {
    let since = match number_param(query, "since") {
        Ok(v) => v.unwrap_or(0),
        Err(e) => return bad_request(hub, e),
    };
    let limit = match number_param(query, "limit") {
        Ok(v) => v.map_or(opts.max_page, |n| (n as usize).clamp(1, opts.max_page)),
        Err(e) => return bad_request(hub, e),
    };
    // One more than asked says whether there are more.
    let (lost, mut page) = hub.page_after(since, limit + 1);
    let more = page.len() > limit;
    page.truncate(limit);
    let next = page.last().map_or(lost.unwrap_or(since), |a| a.id);
    let mut body = String::with_capacity(64 + page.iter().map(|a| a.json.len() + 16).sum::<usize>());
    body.push_str("{\"alerts\":[");
    for (i, a) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // The stored line is the alerts file's JSON object; the id goes
        // in front of its fields.
        match a.json.strip_prefix('{') {
            Some(rest) if rest.trim_start().starts_with('}') => body.push_str(&format!("{{\"id\":{}}}", a.id)),
            Some(rest) => body.push_str(&format!("{{\"id\":{},{rest}", a.id)),
            None => body.push_str(&format!("{{\"id\":{},\"raw\":{}}}", a.id, serde_json::Value::from(&*a.json))),
        }
    }
    body.push_str(&format!(
        "],\"next_since\":{next},\"more\":{more},\"lost\":{}}}",
        match lost {
            Some(through) => format!("{{\"after\":{since},\"through\":{through}}}"),
            None => "null".into(),
        }
    ));
    respond(StatusCode::OK, "application/json", body)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte
/// from response times.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn control(hub: &Hub, opts: &HttpOptions, req: &Request<Incoming>, what: Control) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        return method_not_allowed(hub, "POST");
    }
    let Some(token) = opts.token.as_deref() else {
        hub.edge.unauthorized.fetch_add(1, Ordering::Relaxed);
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "control endpoints are off: no token file is configured (set http.token_file in the config)\n",
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !given.is_some_and(|g| same_token(g.as_bytes(), token.as_bytes())) {
        hub.edge.unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut r = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            if given.is_some() { "wrong bearer token\n" } else { "missing header: Authorization: Bearer <token>\n" },
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let name = match what {
        Control::Checkpoint => "checkpoint",
        Control::Reload => "reload",
    };
    match hub.request(what) {
        Ok(()) => respond(StatusCode::ACCEPTED, "text/plain; charset=utf-8", format!("{name} requested\n")),
        Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", e + "\n"),
    }
}

/// Counts an SSE client for as long as its stream lives.
struct SseClient(Arc<Hub>);

impl Drop for SseClient {
    fn drop(&mut self) {
        self.0.edge.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body fed by a task through a bounded channel; it ends when
/// the task drops the sender, and dropping it (the client left) tells the
/// task to stop.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET /alerts/stream`: each alert after `Last-Event-ID` (or `?since=`)
/// once, in id order, then live ones.
fn alert_stream(
    hub: &Arc<Hub>,
    opts: &HttpOptions,
    req: &Request<Incoming>,
    query: &str,
    shutdown: watch::Receiver<bool>,
) -> Response<ResponseBody> {
    let since = match req.headers().get("last-event-id") {
        Some(v) => match v.to_str().ok().map(str::trim).and_then(|s| s.parse::<u64>().ok()) {
            Some(id) => id,
            None => return bad_request(hub, format!("Last-Event-ID {v:?} is not an alert id")),
        },
        None => match number_param(query, "since") {
            Ok(v) => v.unwrap_or(0),
            Err(e) => return bad_request(hub, e),
        },
    };
    let clients = &hub.edge.sse_clients;
    if clients.fetch_add(1, Ordering::Relaxed) >= opts.max_sse_clients as u64 {
        clients.fetch_sub(1, Ordering::Relaxed);
        hub.edge.sse_refused.fetch_add(1, Ordering::Relaxed);
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("too many alert stream clients (at most {})\n", opts.max_sse_clients),
        );
    }
    let client = SseClient(hub.clone());
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(stream_alerts(client, since, opts.clone(), tx, shutdown));
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn alert_event(a: &StoredAlert) -> Bytes {
    Bytes::from(format!("id: {}\nevent: alert\ndata: {}\n\n", a.id, a.json))
}

/// Why an SSE stream ended early.
struct Gone;

/// Sends what the stream owes after `*last`: an `event: lost` if some of
/// it fell off the log, then the log from there, in chunks.
async fn catch_up(hub: &Hub, last: &mut u64, chunk: usize, tx: &mpsc::Sender<Bytes>) -> Result<(), Gone> {
    loop {
        // The log may evict while this client is sent a page: each page
        // says afresh what fell off before it.
        let (lost, page) = hub.page_after(*last, chunk);
        if let Some(through) = lost {
            hub.edge.sse_lost.fetch_add(1, Ordering::Relaxed);
            let event = format!(
                "id: {through}\nevent: lost\ndata: {{\"after\":{},\"through\":{through},\"reason\":\"alerts after {} up to {through} fell off the alert log; read them from the alerts file\"}}\n\n",
                *last, *last
            );
            tx.send(Bytes::from(event)).await.map_err(|_| Gone)?;
            *last = through;
        }
        for a in &page {
            tx.send(alert_event(a)).await.map_err(|_| Gone)?;
            *last = a.id;
        }
        if page.len() < chunk {
            return Ok(());
        }
    }
}

async fn stream_alerts(
    client: SseClient,
    since: u64,
    opts: HttpOptions,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hub = client.0.clone();
    let (heartbeat, chunk) = (opts.heartbeat, opts.max_page);
    let end = tokio::time::sleep(opts.max_stream);
    tokio::pin!(end);
    // Subscribed before reading the log: every alert after `since` is in
    // one or the other; ids already sent are skipped.
    let mut live = hub.subscribe();
    let mut last = since;
    if tx.send(Bytes::from_static(b"retry: 2000\n: tapewatch alert stream\n\n")).await.is_err() {
        return;
    }
    if catch_up(&hub, &mut last, chunk, &tx).await.is_err() {
        return;
    }
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(a) => {
                    if a.id > last {
                        if tx.send(alert_event(&a)).await.is_err() {
                            return;
                        }
                        last = a.id;
                    }
                }
                // Fell behind the broadcast: the log has what was missed
                // (or says it is lost).
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    hub.edge.sse_lagged.fetch_add(1, Ordering::Relaxed);
                    live = live.resubscribe();
                    if catch_up(&hub, &mut last, chunk, &tx).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = beat.tick() => {
                if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = &mut end => return,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_only_when_it_is_private_and_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            path
        };
        let good = write("good", "  0123456789abcdef-token\n", 0o600);
        assert_eq!(read_token_file(&good).unwrap(), "0123456789abcdef-token");
        let cases = [
            (write("empty", "\n", 0o600), "empty"),
            (write("short", "abc\n", 0o600), "shorter than 16"),
            (write("two", "0123456789abcdef\nsecond-line-here\n", 0o600), "one line without spaces"),
            (dir.path().join("missing"), "cannot read it"),
        ];
        for (path, says) in cases {
            let e = read_token_file(&path).unwrap_err();
            assert!(e.contains(says) && e.contains(&path.display().to_string()), "{e}");
        }
        #[cfg(unix)]
        {
            let open = write("open", "0123456789abcdef-token\n", 0o644);
            assert!(read_token_file(&open).unwrap_err().contains("mode 644); chmod 600"));
        }
    }

    #[test]
    fn options_that_would_break_the_server_are_raised_to_what_works() {
        let zero = HttpOptions {
            heartbeat: Duration::ZERO,
            max_page: 0,
            max_header_bytes: 0,
            max_headers: 0,
            ..HttpOptions::default()
        }
        .usable();
        assert_eq!(zero.heartbeat, Duration::from_millis(100));
        assert_eq!((zero.max_page, zero.max_header_bytes, zero.max_headers), (1, 1024, 8));
        let defaults = HttpOptions::default();
        let kept = defaults.clone().usable();
        assert_eq!((kept.heartbeat, kept.max_page), (defaults.heartbeat, defaults.max_page));
    }

    #[test]
    fn query_numbers_are_parsed_or_named() {
        assert_eq!(number_param("since=5&limit=2", "limit"), Ok(Some(2)));
        assert_eq!(number_param("since=5", "limit"), Ok(None));
        assert!(number_param("since=x", "since").unwrap_err().contains("since=\"x\""));
        assert!(same_token(b"abc", b"abc") && !same_token(b"abc", b"abd") && !same_token(b"abc", b"abcd"));
    }
}
