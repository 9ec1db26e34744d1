//! The live view (`--live-view ADDR`): the partial results of a running acquisition over
//! HTTP, for a browser beside the microscope.
//!
//! Where the data comes from: the processing engine publishes a merged snapshot every
//! `--snapshot-interval-ms` (an `Arc<LiveSnapshot>` on a watch channel); the orchestrator
//! copies the latest one into [`InstrumentStatus::snapshot`] with the state and the frame
//! counts, and at the end of a run replaces it with the final merged results. The server
//! follows that status channel: a request clones the latest status (an `Arc`, taken under
//! the channel's read lock only for the clone) and PNG images are rendered when asked for,
//! on the blocking pool, so the data path never waits for a browser.
//!
//! Routes:
//! - `GET /`: a self-contained HTML page (no external assets) with every 2-D nav result
//!   of the latest snapshot as an image, the frame counts and the run state; a few lines of
//!   inline JS poll `/status.json` every 500 ms and reload the images of a new snapshot
//!   (passing the token on every request when the view has one).
//! - `GET /status.json`: `{"frames_processed", "frames_expected", "state", "snapshot",
//!   "results": [{"udf", "buffer", "shape", "unit", "finite", "image"}]}`;
//!   `frames_processed` is the latest snapshot's, `snapshot`
//!   counts the snapshots seen (0: none yet), `finite` the finite values of the buffer
//!   (positions processed so far, for a nav buffer), `image` the URL of its PNG or null.
//! - `GET /result/<udf>/<buffer>.png`: that 2-D nav result as an 8-bit greyscale PNG of
//!   `nav_cols × nav_rows` pixels, scaled as the final `<udf>_<buffer>_raw.png` outputs are
//!   (signed maps symmetric about zero, NaN black); 404 listing the images that exist.
//!
//! Under abuse (a flood of connections, slow or hostile clients) the server must never take
//! what the acquisition needs (file descriptors, memory, CPU):
//! - at most [`MAX_CONNECTIONS`] connections are open at once; a connection beyond them
//!   closes the oldest one that has not yet sent a request (a half-open flood evicts
//!   itself), or, when every connection is inside a request, is closed at once. Nothing
//!   queues in the process: what is not accepted waits in the kernel's listen backlog.
//! - a client has [`HEAD_TIMEOUT`] to send a request head (counted from the connection or
//!   the end of its previous response; [`HEAD_TIMEOUT_ENV`] overrides it), at most
//!   [`MAX_HEAD_BYTES`] of it, and [`EXCHANGE_TIMEOUT`] from a request head to the next one
//!   (its response written, a keep-alive connection idle again); past either, the
//!   connection is closed and its memory and descriptor released.
//! - bound to loopback, a request must name a loopback host (`Host: localhost`,
//!   `127.0.0.1` or `[::1]`, with the bound port or none), else 421: a web page that
//!   rebinds its own DNS name to 127.0.0.1 cannot read the view.
//! - bound beyond loopback, the view is reachable from the network: a warning is printed,
//!   and every request needs a token (`--live-view-token`, else a random one printed once
//!   in the `live view:` line), as `?token=` or `Authorization: Bearer`, else 401. On
//!   loopback a token is needed only when one is given.
//! - responses never repeat the request (path, query, headers): errors are fixed texts.

use crate::options::LiveViewOptions;
use anyhow::{Context, Result, bail};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stemflow_actors::orchestrator::InstrumentStatus;
use stemflow_actors::processing::LiveSnapshot;
use stemflow_core::result::{BufferKind, ResultBuffer};
use stemflow_recording::png::to_grey8;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Most connections the live view holds open at once (a browser needs a handful). Each
/// costs a file descriptor and up to about 2 × [`MAX_HEAD_BYTES`] of buffers, so a flood
/// takes at most this many descriptors from the acquisition (which needs them for its
/// recording, sockets and logs). See the module documentation for who is closed when more
/// connect.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest a client may take to send a complete request head, counted from its connection
/// or from the end of its previous response (an idle keep-alive connection); then the
/// connection is closed. A browser sends its head at once, a half-open or slowloris client
/// loses its connection.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment variable that replaces [`HEAD_TIMEOUT`], in milliseconds (at least 1), e.g.
/// for tests that watch idle connections being closed.
pub const HEAD_TIMEOUT_ENV: &str = "STEMFLOW_LIVE_VIEW_HEAD_TIMEOUT_MS";

/// Longest one request/response exchange may take: from a request head to the next one on
/// the same connection or to the connection's end. A client that stops reading its response
/// (or trickles a request body) loses its connection then.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) read, bytes; a larger one is answered 431
/// (a browser's head is 1–2 kB). It is hyper's buffer limit, so it also bounds what a
/// connection buffers for reading and, beyond one response chunk, for writing.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Connections the kernel completes and holds for the accept loop (no descriptor of ours
/// until accepted): deep enough that a burst does not drop a browser's connection attempt
/// (retried only after 1 s) while the accept loop catches up.
const LISTEN_BACKLOG: u32 = 1024;

/// Fewest characters of a token given with `--live-view-token`.
pub const MIN_TOKEN_LEN: usize = 16;

/// Most characters of a token.
const MAX_TOKEN_LEN: usize = 256;

/// Random bytes of a generated token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 16;

/// Pause after an accept that failed for want of a resource (descriptors, memory), so that
/// a process out of descriptors is not spun on.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Longest the accept loop waits for an evicted connection to release its slot.
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// The latest status with the number of the snapshot it carries.
#[derive(Clone, Debug)]
struct View {
    /// Snapshots seen so far (a new `Arc` in the status counts as one); 0 before the first.
    snapshot: u64,
    /// State, frame counts and the latest snapshot.
    status: InstrumentStatus,
}

/// The state of the routes: the latest view and the token the page passes on.
#[derive(Clone)]
struct Shared {
    /// The latest status, numbered.
    view: watch::Receiver<View>,
    /// The token every request carries, if the view has one (the page's JS needs it).
    token: Option<Arc<str>>,
}

/// Who may ask: checked before any route, for every request.
#[derive(Clone)]
struct Guard {
    /// Bound to loopback: the port a `Host` may name (besides none); `None` beyond it.
    loopback_port: Option<u16>,
    /// The token every request must carry, if any.
    token: Option<Arc<str>>,
}

/// The limits one connection is served under.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// [`HEAD_TIMEOUT`] or its [`HEAD_TIMEOUT_ENV`] replacement.
    head: Duration,
    /// [`EXCHANGE_TIMEOUT`].
    exchange: Duration,
}

impl Limits {
    /// The defaults, with the head timeout from [`HEAD_TIMEOUT_ENV`] when set (a value that
    /// is no positive integer is reported and ignored).
    fn from_env() -> Self {
        let mut head = HEAD_TIMEOUT;
        if let Ok(text) = std::env::var(HEAD_TIMEOUT_ENV) {
            match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => head = Duration::from_millis(ms),
                _ => tracing::warn!(
                    "{HEAD_TIMEOUT_ENV} is no positive number of milliseconds; \
                     the live view's head timeout stays {} s",
                    HEAD_TIMEOUT.as_secs()
                ),
            }
        }
        Self {
            head,
            exchange: EXCHANGE_TIMEOUT,
        }
    }
}

/// The live view's listening socket, bound before the instrument starts so that a busy or
/// invalid address fails the command before anything moves.
pub struct LiveView {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    /// The token every request must carry (given, or generated beyond loopback).
    token: Option<Arc<str>>,
    /// The token was generated here (so it is printed by [`LiveView::announce`]).
    generated: bool,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

impl LiveView {
    /// Binds `opts.addr` (e.g. `127.0.0.1:8080`; port 0 picks a free port) with the token of
    /// `opts`, or a random one when none is given and the address is not loopback. Must be
    /// called on a tokio runtime with I/O enabled.
    ///
    /// # Errors
    /// The token is shorter than [`MIN_TOKEN_LEN`], longer than 256 characters or has a
    /// character other than `A–Z a–z 0–9 - . _ ~`; the address cannot be bound (in use, not
    /// local, no permission); the message names it.
    pub async fn bind(opts: &LiveViewOptions) -> Result<Self> {
        let addr = opts.addr;
        if let Some(t) = &opts.token {
            check_token(t)?;
        }
        let listener = listen(addr).with_context(|| format!("live view: binding {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("live view: the address bound for {addr}"))?;
        let (token, generated) = token_for(addr.ip(), opts.token.as_deref());
        Ok(Self {
            listener,
            addr,
            token,
            generated,
        })
    }

    /// The bound address (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when the view is reachable beyond this machine (not bound to loopback).
    pub fn is_public(&self) -> bool {
        !is_loopback(self.addr.ip())
    }

    /// Prints the view's address on stderr as `live view: http://ADDR/` — with
    /// `?token=TOKEN` when the token was generated (the only time it is shown), with a note
    /// when it was given — after a warning when the view is reachable from the network.
    pub fn announce(&self) {
        if self.is_public() {
            eprintln!(
                "warning: the live view on {} is reachable from the network (not bound to \
                 loopback); every request needs its token",
                self.addr
            );
        }
        match (&self.token, self.generated) {
            (Some(t), true) => eprintln!("live view: http://{}/?token={t}", self.addr),
            (Some(_), false) => eprintln!(
                "live view: http://{}/ (append ?token= and the --live-view-token given)",
                self.addr
            ),
            (None, _) => eprintln!("live view: http://{}/", self.addr),
        }
    }

    /// Serves the routes of the module documentation from `status` on the current tokio
    /// runtime, under the limits of the module documentation, until the runtime shuts down
    /// (i.e. the command exits: the final results stay visible while the outputs are
    /// written). After the instrument's status channel closes, the last status is served.
    /// The returned task can be aborted to stop early (its connections end with it);
    /// dropping it does not stop the server.
    pub fn serve(self, status: watch::Receiver<InstrumentStatus>) -> tokio::task::JoinHandle<()> {
        let first = View {
            snapshot: 0,
            status: status.borrow().clone(),
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(follow(status, tx));
        let guard = Guard {
            loopback_port: is_loopback(self.addr.ip()).then_some(self.addr.port()),
            token: self.token.clone(),
        };
        let app = router(
            Shared {
                view: rx,
                token: self.token,
            },
            guard,
        );
        tokio::spawn(accept_loop(
            self.listener,
            self.addr,
            app,
            Limits::from_env(),
        ))
    }
}

/// The routes of the module documentation behind the [`Guard`].
fn router(shared: Shared, guard: Guard) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/status.json", axum::routing::get(status_json))
        .route("/result/{udf}/{file}", axum::routing::get(result_png))
        .fallback(not_found)
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(guard, check_request))
}

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`] (`SO_REUSEADDR` set on
/// Unix, as `TcpListener::bind` does).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The token a view bound to `ip` requires: the one `given`, else a random one beyond
/// loopback (true: generated), else none.
fn token_for(ip: IpAddr, given: Option<&str>) -> (Option<Arc<str>>, bool) {
    match given {
        Some(t) => (Some(Arc::from(t)), false),
        None if !is_loopback(ip) => (Some(Arc::from(random_token().as_str())), true),
        None => (None, false),
    }
}

/// True for an address only this machine reaches (IPv4-mapped loopback included).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Checks a token given by the user: [`MIN_TOKEN_LEN`] to 256 URL-safe characters (RFC 3986
/// unreserved, so that it travels in a query unencoded).
///
/// # Errors
/// Too short, too long or another character; the message does not repeat the token.
pub fn check_token(token: &str) -> Result<()> {
    let n = token.chars().count();
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&n) {
        bail!(
            "live view: the token has {n} characters; it needs {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}"
        );
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        bail!("live view: the token may hold only A–Z, a–z, 0–9, `-`, `.`, `_` and `~`");
    }
    Ok(())
}

/// A token of [`TOKEN_BYTES`] random bytes from the operating system's generator (through
/// the thread's CSPRNG), as lower-case hex.
fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(2 * TOKEN_BYTES);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Equality of two byte strings in a time that depends on their lengths only (the lengths
/// are not secret: a generated token's is fixed, a given one's is at least
/// [`MIN_TOKEN_LEN`]).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// True when `host` (a `Host` header or a request target's authority) names this machine
/// through loopback: `localhost`, an IPv4 loopback address or `[::1]`, with `port` or no
/// port. A DNS name (which a rebinding attacker controls) is never accepted.
fn loopback_host(host: &str, port: u16) -> bool {
    let (name_ok, rest) = if let Some(inner) = host.strip_prefix('[') {
        let Some((ip6, rest)) = inner.split_once(']') else {
            return false;
        };
        let ok = ip6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| is_loopback(IpAddr::V6(ip)));
        (ok, rest)
    } else {
        let (name, rest) = host.find(':').map_or((host, ""), |i| host.split_at(i));
        let ok = name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        (ok, rest)
    };
    let port_ok =
        rest.is_empty() || rest.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) == Some(port);
    name_ok && port_ok
}

/// True when a request carries `token`: as a `token` query parameter or as
/// `Authorization: Bearer`.
fn has_token(uri: &Uri, headers: &HeaderMap, token: &str) -> bool {
    let mut ok = false;
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                ok |= same_secret(v.as_bytes(), token.as_bytes());
            }
        }
    }
    for v in headers.get_all(header::AUTHORIZATION) {
        let Ok(v) = v.to_str() else { continue };
        let Some((scheme, cred)) = v.trim().split_once(' ') else {
            continue;
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            ok |= same_secret(cred.trim().as_bytes(), token.as_bytes());
        }
    }
    ok
}

/// A plain-text response with a fixed message.
fn plain(code: StatusCode, text: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The [`Guard`] in front of every route: a loopback view answers loopback host names only
/// (421), a view with a token answers requests with it only (401); every response is kept
/// out of other sites' referrers and content sniffing.
async fn check_request(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if let Some(port) = guard.loopback_port {
        let host_ok = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| loopback_host(h, port));
        let target_ok = req
            .uri()
            .authority()
            .is_none_or(|a| loopback_host(a.as_str(), port));
        if !(host_ok && target_ok) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this live view answers only requests for localhost, 127.0.0.1 or [::1]\n",
            );
        }
    }
    if let Some(token) = &guard.token
        && !has_token(req.uri(), req.headers(), token)
    {
        let mut r = plain(
            StatusCode::UNAUTHORIZED,
            "this live view needs its token: ?token=TOKEN or Authorization: Bearer TOKEN\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"stemflow live view\""),
        );
        return r;
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The connections that have not yet sent a request, oldest first: those a new connection
/// may close when [`MAX_CONNECTIONS`] are open.
#[derive(Default)]
struct Unproven(Mutex<VecDeque<(u64, Arc<Notify>)>>);

impl Unproven {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Notify>)>> {
        // Nothing panics while holding it; a poisoned queue is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds connection `id`; the returned notify closes it.
    fn add(&self, id: u64) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        self.lock().push_back((id, Arc::clone(&n)));
        n
    }

    /// Removes connection `id` (it sent a request, or ended).
    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    /// Closes the oldest connection without a request; false when there is none.
    fn evict_oldest(&self) -> bool {
        match self.lock().pop_front() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Accepts connections on `listener` and serves each with `app` under `limits`, at most
/// [`MAX_CONNECTIONS`] at once, until aborted (its connections with it).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unproven = Arc::new(Unproven::default());
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    let mut warned = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Reap finished connections (their results are nothing).
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) {
                    // Out of descriptors or memory: wait for some to be released.
                    if !warned {
                        tracing::warn!("live view on {addr}: accepting a connection: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
                continue;
            }
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            // Full: close the oldest connection that has not asked anything, and take its
            // slot once it is released; when all are busy, refuse this one (dropped).
            Err(_) if unproven.evict_oldest() => {
                match tokio::time::timeout(EVICT_WAIT, Arc::clone(&slots).acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
            Err(_) => continue,
        };
        let id = next_id;
        next_id += 1;
        let evict = unproven.add(id);
        let unproven = Arc::clone(&unproven);
        let app = app.clone();
        connections.spawn(async move {
            serve_connection(stream, app, limits, id, &unproven, &evict).await;
            unproven.remove(id);
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it, a limit of `limits` is
/// passed or `evict` is notified.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    limits: Limits,
    id: u64,
    unproven: &Arc<Unproven>,
    evict: &Notify,
) {
    let _ = stream.set_nodelay(true);
    // When the latest request head arrived (None: none yet).
    let (began_tx, mut began) = watch::channel(None::<Instant>);
    let svc = {
        let unproven = Arc::clone(unproven);
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            began_tx.send_replace(Some(Instant::now()));
            unproven.remove(id);
            let mut app = app.clone();
            async move { tower::Service::call(&mut app, req.map(axum::body::Body::new)).await }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut conn = pin!(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
    let mut evicted = pin!(evict.notified());
    loop {
        let deadline = (*began.borrow_and_update()).map(|t| t + limits.exchange);
        let expiry = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("live view connection: {e}");
                }
                return;
            }
            Ok(()) = began.changed() => {}
            () = expiry => {
                tracing::debug!("live view connection: no exchange within {:?}", limits.exchange);
                return;
            }
            () = &mut evicted => return,
        }
    }
}

/// Copies every status update into `tx`, numbering the snapshots, until the instrument's
/// status channel closes (the last view stays readable from `tx`'s receivers).
async fn follow(mut status: watch::Receiver<InstrumentStatus>, tx: watch::Sender<View>) {
    let mut seen = status.borrow().snapshot.clone();
    let mut number = 0u64;
    while status.changed().await.is_ok() {
        let s = status.borrow_and_update().clone();
        if !Arc::ptr_eq(&s.snapshot, &seen) {
            seen = Arc::clone(&s.snapshot);
            number += 1;
        }
        tx.send_replace(View {
            snapshot: number,
            status: s,
        });
    }
}

/// True for a buffer shown as an image: one value per scan position of a 2-D scan.
fn is_image(b: &ResultBuffer) -> bool {
    b.kind == BufferKind::Nav
        && b.shape.len() == 2
        && b.shape[0] > 0
        && b.shape[1] > 0
        && b.shape[0].checked_mul(b.shape[1]) == Some(b.data.len())
}

/// The 2-D nav results of `snap`: (UDF name, buffer).
fn images(snap: &LiveSnapshot) -> impl Iterator<Item = (&str, &ResultBuffer)> {
    snap.results.iter().flat_map(|r| {
        r.buffers
            .iter()
            .filter(|b| is_image(b))
            .map(move |b| (r.udf.as_str(), b))
    })
}

/// The URL of a result's PNG, names percent-encoded.
fn image_url(udf: &str, buffer: &str) -> String {
    format!("/result/{}/{}.png", percent(udf), percent(buffer))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attributes.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Renders `data` (row-major, `rows × cols`) as an 8-bit greyscale PNG (`cols` wide,
/// `rows` high), scaled as the final image outputs are: symmetric about zero when a value is
/// negative (CoM x/y), else between the 0.5 and 99.5 percentiles; NaN black.
///
/// # Errors
/// The PNG encoder failed (a dimension above `u32::MAX`, or `data.len() != rows * cols`).
pub fn render_png(data: &[f64], rows: usize, cols: usize) -> Result<Vec<u8>> {
    // The same scaling as the final files.
    let (grey, _) = to_grey8(data, crate::output::scaling_for(data));
    let (w, h) = (
        u32::try_from(cols).context("image wider than u32::MAX")?,
        u32::try_from(rows).context("image higher than u32::MAX")?,
    );
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("encoding the PNG header")?;
    writer.write_image_data(&grey).with_context(|| {
        format!(
            "encoding {rows}×{cols} PNG pixels from {} values",
            data.len()
        )
    })?;
    writer.finish().context("finishing the PNG")?;
    Ok(bytes)
}

/// A response that no cache keeps (every poll must see the latest snapshot).
fn fresh(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A plain-text 404 of `text` (never the request's path: the names that exist).
fn missing(text: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "not found; the live view serves /, /status.json and /result/<udf>/<buffer>.png\n",
    )
}

async fn status_json(State(shared): State<Shared>) -> Response {
    let v = shared.view.borrow().clone();
    fresh("application/json", status_body(&v))
}

/// The `/status.json` document of `v`.
fn status_body(v: &View) -> String {
    let s = &v.status;
    // The same entries as `run.json`'s results, plus each 2-D nav result's image URL.
    let mut results = crate::output::results_index(&s.snapshot.results);
    if let Some(entries) = results.as_array_mut() {
        let buffers = s.snapshot.results.iter().flat_map(|r| {
            r.buffers
                .iter()
                .map(move |b| is_image(b).then(|| image_url(&r.udf, &b.name)))
        });
        for (e, image) in entries.iter_mut().zip(buffers) {
            e["image"] = serde_json::json!(image);
        }
    }
    serde_json::json!({
        // The snapshot's own count, consistent with its results (the status count lags the
        // final snapshot by up to one orchestrator tick).
        "frames_processed": s.snapshot.frames_processed,
        "frames_expected": s.frames_expected,
        "state": s.state.to_string(),
        "snapshot": v.snapshot,
        "results": results,
    })
    .to_string()
}

async fn index(State(shared): State<Shared>) -> Response {
    let v = shared.view.borrow().clone();
    fresh(
        "text/html; charset=utf-8",
        page(&v, shared.token.as_deref()),
    )
}

/// The HTML page of `v`; with `token`, every URL the page asks for carries it (the page is
/// served only to a request that carried it).
fn page(v: &View, token: Option<&str>) -> String {
    let s = &v.status;
    let urls: Vec<String> = images(&s.snapshot)
        .map(|(udf, b)| image_url(udf, &b.name))
        .collect();
    // Tokens are URL-safe (`check_token`, hex when generated); encoded all the same.
    let auth = token
        .map(|t| format!("&token={}", percent(t)))
        .unwrap_or_default();
    let mut figures = String::new();
    for ((udf, b), url) in images(&s.snapshot).zip(&urls) {
        let _ = writeln!(
            figures,
            "<figure><img src=\"{src}\" data-src=\"{url}\" alt=\"{name}\">\
             <figcaption>{name} ({rows}×{cols}, {unit})</figcaption></figure>",
            src = html(&format!("{url}?s={}{auth}", v.snapshot)),
            name = html(&format!("{udf} / {}", b.name)),
            rows = b.shape[0],
            cols = b.shape[1],
            unit = html(&b.unit),
        );
    }
    if urls.is_empty() {
        figures.push_str("<p>No 2-D result yet.</p>\n");
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>stemflow live view</title>\n\
         <style>body{{font-family:sans-serif;background:#202020;color:#e0e0e0}}\
         figure{{display:inline-block;margin:8px}}\
         img{{width:256px;image-rendering:pixelated;background:#000}}\
         figcaption{{text-align:center}}</style></head>\n<body>\n\
         <h1>stemflow live view</h1>\n\
         <p id=\"progress\">state {state}: {done} / {expected} frames (snapshot {n})</p>\n\
         <div id=\"images\" data-key=\"{key}\" data-auth=\"{auth_attr}\">\n{figures}</div>\n\
         <script>\n\
         const key = document.getElementById('images').dataset.key;\n\
         const auth = document.getElementById('images').dataset.auth;\n\
         async function tick() {{\n\
         \x20 try {{\n\
         \x20   const q = auth ? '?' + auth.slice(1) : '';\n\
         \x20   const s = await (await fetch('/status.json' + q, {{cache: 'no-store'}})).json();\n\
         \x20   document.getElementById('progress').textContent =\n\
         \x20     `state ${{s.state}}: ${{s.frames_processed}} / ${{s.frames_expected}} frames (snapshot ${{s.snapshot}})`;\n\
         \x20   const k = s.results.filter(r => r.image).map(r => r.image).join(' ');\n\
         \x20   if (k !== key) {{ location.reload(); return; }}\n\
         \x20   for (const img of document.querySelectorAll('img[data-src]')) {{\n\
         \x20     const src = img.dataset.src + '?s=' + s.snapshot + auth;\n\
         \x20     if (!img.src.endsWith(src)) img.src = src;\n\
         \x20   }}\n\
         \x20 }} catch (e) {{}}\n\
         \x20 setTimeout(tick, 500);\n\
         }}\n\
         setTimeout(tick, 500);\n\
         </script>\n</body></html>\n",
        state = html(&s.state.to_string()),
        done = s.snapshot.frames_processed,
        expected = s.frames_expected,
        n = v.snapshot,
        key = html(&urls.join(" ")),
        auth_attr = html(&auth),
    )
}

/// The 404 of an image that is not in `snap`: the images that exist, never the one asked
/// for.
fn no_such_image(snap: &LiveSnapshot) -> Response {
    let names: Vec<String> = images(snap).map(|(u, b)| image_url(u, &b.name)).collect();
    let known = if names.is_empty() {
        "none yet".to_string()
    } else {
        names.join(", ")
    };
    missing(format!(
        "no such 2-D nav result in the latest snapshot ({} frames); images: {known}\n",
        snap.frames_processed
    ))
}

async fn result_png(
    State(shared): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let snap = Arc::clone(&shared.view.borrow().status.snapshot);
    // A path that does not decode (its rejection would quote it) is no image either.
    let Ok(Path((udf, file))) = names else {
        return no_such_image(&snap);
    };
    let found = file.strip_suffix(".png").and_then(|buffer| {
        snap.results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.udf == udf)
            .flat_map(|(i, r)| {
                r.buffers
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.name == buffer && is_image(b))
                    .map(move |(j, _)| (i, j))
            })
            .next()
    });
    let Some((i, j)) = found else {
        return no_such_image(&snap);
    };
    // Rendering sorts the values (percentiles): off the async workers that drive the run.
    let rendered = tokio::task::spawn_blocking(move || {
        let b = &snap.results[i].buffers[j];
        render_png(&b.data, b.shape[0], b.shape[1])
    })
    .await;
    match rendered {
        Ok(Ok(bytes)) => fresh("image/png", bytes),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the image failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_core::result::UdfResults;
    use stemflow_core::state::AcqState;

    fn buffer(name: &str, kind: BufferKind, shape: Vec<usize>, data: Vec<f64>) -> ResultBuffer {
        ResultBuffer {
            name: name.into(),
            kind,
            shape,
            data,
            unit: "counts".into(),
            dtype: Default::default(),
        }
    }

    fn view() -> View {
        let snapshot = Arc::new(LiveSnapshot {
            frames_processed: 3,
            results: vec![
                UdfResults {
                    udf: "virtual bf".into(),
                    params: String::new(),
                    buffers: vec![buffer(
                        "intensity",
                        BufferKind::Nav,
                        vec![2, 3],
                        vec![1.0, 2.0, 3.0, f64::NAN, f64::NAN, f64::NAN],
                    )],
                },
                UdfResults {
                    udf: "sum".into(),
                    params: String::new(),
                    buffers: vec![buffer("frame", BufferKind::Sig, vec![2, 2], vec![0.0; 4])],
                },
            ],
        });
        View {
            snapshot: 4,
            status: InstrumentStatus {
                state: AcqState::Running,
                frames_expected: 6,
                frames_processed: 3,
                bytes_per_frame: 8,
                frames_lost: 0,
                snapshot,
            },
        }
    }

    #[test]
    fn status_lists_every_buffer_with_its_finite_count_and_image() {
        let v: serde_json::Value = serde_json::from_str(&status_body(&view())).unwrap();
        assert_eq!(v["frames_processed"], 3);
        assert_eq!(v["frames_expected"], 6);
        assert_eq!(v["snapshot"], 4);
        assert_eq!(v["state"], AcqState::Running.to_string());
        let r = v["results"].as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["udf"], "virtual bf");
        assert_eq!(r[0]["shape"], serde_json::json!([2, 3]));
        assert_eq!(r[0]["finite"], 3);
        assert_eq!(r[0]["image"], "/result/virtual%20bf/intensity.png");
        // A detector-plane buffer is no nav image.
        assert!(r[1]["image"].is_null());
    }

    #[test]
    fn page_shows_the_nav_images_only_escaped() {
        let p = page(&view(), None);
        assert!(p.contains("src=\"/result/virtual%20bf/intensity.png?s=4\""));
        assert!(!p.contains("/result/sum/"));
        assert!(p.contains("3 / 6 frames"));
        assert!(
            !p.contains("http://") && !p.contains("https://"),
            "external asset"
        );
    }

    #[test]
    fn png_is_cols_wide_and_rows_high_with_nan_black() {
        let bytes = render_png(&[1.0, 2.0, 3.0, f64::NAN, 5.0, 6.0], 2, 3).unwrap();
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let info = dec.info();
        assert_eq!((info.width, info.height), (3, 2));
        let mut px = vec![0; dec.output_buffer_size().unwrap()];
        dec.next_frame(&mut px).unwrap();
        assert_eq!(px[3], 0, "NaN is black");
        assert!(px[5] > px[0], "brighter for larger values");
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent("com_x-1.~"), "com_x-1.~");
        assert_eq!(percent("a/b c"), "a%2Fb%20c");
    }

    const TOKEN: &str = "unit-test-token-0123456789";

    /// The router of `view()` on loopback port 8080, with `token`.
    fn app(token: Option<&str>) -> axum::Router {
        let token: Option<Arc<str>> = token.map(Arc::from);
        let (_tx, rx) = watch::channel(view());
        router(
            Shared {
                view: rx,
                token: token.clone(),
            },
            Guard {
                loopback_port: Some(8080),
                token,
            },
        )
    }

    /// Status and body of `GET uri` with `headers` through `app`.
    fn ask(app: axum::Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        use tower::ServiceExt as _;
        let mut req = axum::http::Request::builder().uri(uri);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = app.oneshot(req).await.unwrap();
            let code = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (code, String::from_utf8_lossy(&body).into_owned())
        })
    }

    #[test]
    fn loopback_hosts_only_with_the_bound_port_or_none() {
        for ok in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:8080",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(loopback_host(ok, 8080), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "localhost:8081",
            "localhost:",
            "127.0.0.1:80800",
            "10.0.0.1:8080",
            "0.0.0.0:8080",
            "::1",
            "[::1",
            "[::2]:8080",
            "[::1]8080",
            "localhost:8080:8080",
        ] {
            assert!(!loopback_host(bad, 8080), "{bad}");
        }
    }

    #[test]
    fn tokens_from_query_or_bearer_compared_whole() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        let none = HeaderMap::new();
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(has_token(&uri(&format!("/?token={TOKEN}")), &none, TOKEN));
        assert!(has_token(
            &uri(&format!("/x?s=3&token={TOKEN}")),
            &none,
            TOKEN
        ));
        assert!(has_token(&uri("/"), &h(&format!("Bearer {TOKEN}")), TOKEN));
        assert!(has_token(
            &uri("/"),
            &h(&format!("bearer  {TOKEN} ")),
            TOKEN
        ));
        assert!(!has_token(&uri("/"), &none, TOKEN));
        assert!(!has_token(&uri("/?token="), &none, TOKEN));
        assert!(!has_token(&uri(&format!("/?token={TOKEN}x")), &none, TOKEN));
        assert!(!has_token(&uri(&format!("/?xtoken={TOKEN}")), &none, TOKEN));
        assert!(!has_token(&uri("/"), &h(&format!("Basic {TOKEN}")), TOKEN));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"ab", b"abc"));
    }

    #[test]
    fn given_tokens_are_checked_and_generated_ones_only_beyond_loopback() {
        assert!(check_token(TOKEN).is_ok());
        let short = check_token("short").unwrap_err().to_string();
        assert!(!short.contains("short"), "the token is repeated: {short}");
        assert!(check_token("has a space in it, long enough").is_err());
        assert!(check_token("tok%20en-long-enough-0123").is_err());
        assert!(check_token(&"x".repeat(257)).is_err());
        let local = IpAddr::from([127, 0, 0, 1]);
        assert!(token_for(local, None).0.is_none());
        assert_eq!(token_for(local, Some(TOKEN)).0.as_deref(), Some(TOKEN));
        let (t, generated) = token_for(IpAddr::from([0, 0, 0, 0]), None);
        let t = t.unwrap();
        assert!(generated);
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token_for(IpAddr::from([0, 0, 0, 0]), None).0.unwrap(), t);
        assert!(
            token_for("::ffff:127.0.0.1".parse().unwrap(), None)
                .0
                .is_none()
        );
        assert!(token_for("::".parse().unwrap(), None).1);
    }

    #[test]
    fn foreign_hosts_are_misdirected_without_echo() {
        let (code, body) = ask(app(None), "/status.json", &[("host", "evil.example")]);
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST);
        assert!(!body.contains("evil"), "{body}");
        let (code, _) = ask(app(None), "/status.json", &[]);
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "no Host");
        let (code, _) = ask(
            app(None),
            "http://evil.example/status.json",
            &[("host", "localhost")],
        );
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "absolute target");
        let (code, _) = ask(app(None), "/status.json", &[("host", "localhost:8080")]);
        assert_eq!(code, StatusCode::OK);
    }

    #[test]
    fn a_token_is_required_when_given() {
        let host = ("host", "127.0.0.1:8080");
        let (code, body) = ask(app(Some(TOKEN)), "/status.json", &[host]);
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(!body.contains(TOKEN));
        let (code, _) = ask(app(Some(TOKEN)), "/status.json?token=wrong", &[host]);
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, _) = ask(
            app(Some(TOKEN)),
            &format!("/status.json?token={TOKEN}"),
            &[host],
        );
        assert_eq!(code, StatusCode::OK);
        let bearer = format!("Bearer {TOKEN}");
        let (code, page) = ask(
            app(Some(TOKEN)),
            "/",
            &[host, ("authorization", bearer.as_str())],
        );
        assert_eq!(code, StatusCode::OK);
        // The page passes the token on its polls and image URLs.
        assert!(
            page.contains(&format!("data-auth=\"&amp;token={TOKEN}\"")),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "src=\"/result/virtual%20bf/intensity.png?s=4&amp;token={TOKEN}\""
            )),
            "{page}"
        );
        // The host is checked first, also with the right token.
        let (code, _) = ask(
            app(Some(TOKEN)),
            &format!("/?token={TOKEN}"),
            &[("host", "evil.example:8080")],
        );
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn not_found_names_what_exists_never_what_was_asked() {
        let host = ("host", "localhost");
        let (code, body) = ask(app(None), "/nothing-here-QX7", &[host]);
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(!body.contains("QX7"), "{body}");
        let (code, body) = ask(app(None), "/result/virtual%20bf/QX7%3Cb%3E.png", &[host]);
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(!body.contains("QX7") && !body.contains('<'), "{body}");
        assert!(
            body.contains("/result/virtual%20bf/intensity.png"),
            "{body}"
        );
        // A path that is no UTF-8 once decoded: the rejection would quote it.
        let (code, body) = ask(app(None), "/result/%FF%FEQX7/x.png", &[host]);
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(!body.contains("QX7"), "{body}");
        let (code, body) = ask(app(None), "/result/virtual%20bf/intensity.png", &[host]);
        assert_eq!(code, StatusCode::OK, "{body}");
    }

    #[test]
    fn a_full_house_evicts_the_oldest_connection_without_a_request() {
        let u = Unproven::default();
        let a = u.add(1);
        let _b = u.add(2);
        u.remove(2);
        assert!(u.evict_oldest());
        assert!(!u.evict_oldest(), "2 sent a request: not evicted");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // 1 was notified (the permit is kept for a waiter that comes later).
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), a.notified())
                .await
                .unwrap();
        });
    }
}
