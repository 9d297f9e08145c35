//! The one HTTP server every role opens — the webhooks of ingest (local and in a cluster) and
//! `/healthz`, `/readyz`, `/metrics` of every role — under [`ServerLimits`], so that no client
//! can hold a socket for long without sending a request.
//!
//! ```text
//!  accept ─▶ at the connection cap? ─yes─▶ close the connection that has waited longest with
//!    │                                     no request in flight (none: wait until one ends;
//!    │                                     further connections wait in the listen backlog)
//!    ▼
//!  one task per connection: hyper HTTP/1
//!    ├─ the head of a request (first or next) not read within the header-read timeout ─▶ closed
//!    ├─ a body not read within the request timeout ─▶ 408 (intake), then closed
//!    ├─ keep-alive with no request for the idle timeout ─▶ closed
//!    └─ shutdown ─▶ requests in flight are answered, then closed (the server ends after them)
//! ```
//!
//! Why close an idle connection at the cap instead of refusing the new one: a probe or a
//! sender that arrives while slow clients hold every slot is answered at once, and nothing
//! answered is lost: a request in flight is never cut, a connection that never had a request
//! is dropped, and a keep-alive one between requests is closed gracefully (its last answer is
//! written out first, within a second).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::RoleError;
use crate::metrics::Metrics;

/// How long a keep-alive connection closed at the cap may take to write out its last answer.
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// Limits of the HTTP server; the defaults hold on a small machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a client may take to send the head (request line and headers) of a request,
    /// counted from when the connection starts waiting for it; past it the connection is
    /// closed. Also bounds a keep-alive connection's wait for its next request.
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive once its head was read; past it the
    /// webhook is answered `408`.
    pub request_timeout: Duration,
    /// How long a keep-alive connection may stay open with no request after its last answer.
    pub idle_timeout: Duration,
    /// Most connections open at once. At the cap, the connection idle the longest (no request
    /// in flight) is closed for a new one; when every connection has a request in flight, new
    /// connections wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Binds `listen`; returns the listener and the address it got (for port 0).
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), RoleError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| RoleError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RoleError::Listen {
        addr: listen,
        source,
    })?;
    Ok((listener, addr))
}

/// Serves `router` on `listener` under `limits` until `stop` fires; the task then stops
/// accepting, lets every request in flight be answered, and ends once all connections closed.
pub fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ServerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let server = Server {
        router,
        limits: limits.clone(),
        metrics,
        table: Arc::new(Table::default()),
        epoch: Instant::now(),
    };
    tokio::spawn(server.run(listener, stop))
}

struct Server {
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    table: Arc<Table>,
    /// Instants are kept as milliseconds since this one, in atomics.
    epoch: Instant,
}

/// The open connections.
#[derive(Default)]
struct Table {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Fired when a connection ends or its request finished: room may be made for the next.
    changed: Notify,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // Every critical section leaves the map consistent: a poisoned lock is still usable.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes the connection with no request in flight that has been idle the longest;
    /// false when every connection has a request in flight.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.lock();
        let oldest = open
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(conn) => {
                conn.close.cancel();
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_one();
    }
}

/// One open connection, as the accept loop and its requests see it.
struct Conn {
    /// Requests whose answer is not fully handed to hyper yet.
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened), in ms since the epoch.
    idle_since: AtomicU64,
    /// Requests answered so far (the idle timeout applies after the first).
    served: AtomicU64,
    /// Closes the connection at once (the cap needs its slot).
    close: CancellationToken,
}

/// Why a connection was closed by the server (the `reason` label of
/// `inputbot_http_connections_closed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    HeaderTimeout,
    Idle,
    Evicted,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
        }
    }
}

impl Server {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(self, listener: TcpListener, stop: CancellationToken) {
        let this = Arc::new(self);
        // Every connection task holds a receiver; the sender is closed once all have ended.
        let (all_closed, holder) = tokio::sync::watch::channel(());
        let mut next_id = 0u64;
        'accept: loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            // Room for it: close the longest-idle connection, or wait until one ends or goes
            // idle (the next connections wait in the listen backlog meanwhile).
            while this.table.len() >= this.limits.max_connections.max(1) {
                if this.table.evict_oldest_idle() {
                    this.closed(Closed::Evicted);
                    break;
                }
                tokio::select! {
                    () = this.table.changed.notified() => {}
                    () = stop.cancelled() => break 'accept,
                }
            }
            next_id += 1;
            let conn = Arc::new(Conn {
                in_flight: AtomicUsize::new(0),
                idle_since: AtomicU64::new(this.now_ms()),
                served: AtomicU64::new(0),
                close: CancellationToken::new(),
            });
            this.table.lock().insert(next_id, conn.clone());
            this.metrics.http_connections.inc();
            tokio::spawn(this.clone().connection(
                next_id,
                conn,
                stream,
                stop.clone(),
                holder.clone(),
            ));
        }
        // Refuse new connections while the open ones finish what they answer.
        drop(listener);
        drop(holder);
        all_closed.closed().await;
    }

    fn closed(&self, why: Closed) {
        self.metrics
            .http_connections_closed
            .get_or_create(&crate::metrics::ConnectionLabels {
                reason: why.label().to_owned(),
            })
            .inc();
    }

    async fn connection(
        self: Arc<Self>,
        id: u64,
        conn: Arc<Conn>,
        stream: tokio::net::TcpStream,
        stop: CancellationToken,
        _holder: tokio::sync::watch::Receiver<()>,
    ) {
        let service = {
            let this = self.clone();
            let conn = conn.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let guard = InFlight::start(this.clone(), conn.clone());
                let router = this.router.clone();
                async move {
                    let response = router.oneshot(request.map(Body::new)).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        inner: body,
                        _guard: guard,
                    }))
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let mut http = pin!(builder.serve_connection(TokioIo::new(stream), service));
        let mut stopping = false;
        // Set once evicted with an answer possibly still being written: when to stop waiting.
        let mut evicted: Option<tokio::time::Instant> = None;
        let why = loop {
            let deadline = evicted.unwrap_or_else(|| self.idle_deadline(&conn));
            tokio::select! {
                served = http.as_mut() => break match served {
                    Err(e) if e.is_timeout() => Some(Closed::HeaderTimeout),
                    _ => None,
                },
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    http.as_mut().graceful_shutdown();
                }
                // Removed from the table (and counted) by the accept loop. A connection that
                // never had a request is dropped at once; one that had, is closed gracefully
                // so that its last answer is written out, within EVICTION_GRACE.
                () = conn.close.cancelled(), if evicted.is_none() => {
                    if conn.served.load(Ordering::Acquire) == 0 {
                        break None;
                    }
                    http.as_mut().graceful_shutdown();
                    evicted = Some(tokio::time::Instant::now() + EVICTION_GRACE);
                }
                () = tokio::time::sleep_until(deadline) => {
                    if evicted.is_some() {
                        break None;
                    }
                    if self.idle_deadline(&conn) <= tokio::time::Instant::now() {
                        break Some(Closed::Idle);
                    }
                }
            }
        };
        if let Some(why) = why {
            self.closed(why);
        }
        self.metrics.http_connections.dec();
        self.table.remove(id);
    }

    /// When the connection has been idle too long: never while a request is in flight or
    /// before its first request (the header-read timeout covers that wait).
    fn idle_deadline(&self, conn: &Conn) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if conn.in_flight.load(Ordering::Acquire) > 0 || conn.served.load(Ordering::Acquire) == 0 {
            return now + self.limits.idle_timeout.max(Duration::from_millis(10));
        }
        let idle_for = Duration::from_millis(
            self.now_ms()
                .saturating_sub(conn.idle_since.load(Ordering::Acquire)),
        );
        now + self.limits.idle_timeout.saturating_sub(idle_for)
    }
}

/// A request in flight on its connection, until its answer's body was handed over.
struct InFlight {
    server: Arc<Server>,
    conn: Arc<Conn>,
}

impl InFlight {
    fn start(server: Arc<Server>, conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { server, conn }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.server.now_ms(), Ordering::Release);
        self.conn.served.fetch_add(1, Ordering::AcqRel);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        // An accept waiting at the cap may now close this connection for its own.
        self.server.table.changed.notify_one();
    }
}

/// An answer's body that keeps its request counted as in flight until hyper is done with it.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An accept error: a connection reset before it was accepted is nothing; anything else (out
/// of file descriptors, most likely) is logged and the loop pauses, as hyper 0.14 did.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(target: "inputbot::run", "cannot accept a connection (pausing 1 s): {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// `/healthz` at once, `/slow` after 600 ms, served under `limits`.
    async fn start(
        limits: ServerLimits,
    ) -> (
        SocketAddr,
        Arc<Metrics>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "slow\n"
                }),
            );
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let server = serve(listener, router, &limits, metrics.clone(), stop.clone());
        (addr, metrics, stop, server)
    }

    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s
    }

    /// Reads one answer whose body ends with `end`, or until EOF; `None` on EOF before it.
    async fn answer(s: &mut TcpStream, end: &str) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("no answer within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.ends_with(end) {
                return Some(text.into_owned());
            }
        }
    }

    /// Whether the server closed the socket within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    fn closed(metrics: &Metrics, reason: &str) -> bool {
        metrics.encode().contains(&format!(
            "inputbot_http_connections_closed_total{{reason=\"{reason}\"}} 1"
        ))
    }

    #[tokio::test]
    async fn a_keep_alive_connection_with_no_next_request_is_closed_after_the_idle_timeout() {
        let limits = ServerLimits {
            idle_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let (addr, metrics, _stop, _server) = start(limits).await;
        let mut s = send(addr, "/healthz").await;
        assert!(
            answer(&mut s, "ok\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        let answered = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        let idle = answered.elapsed();
        assert!(idle >= Duration::from_millis(250), "closed after {idle:?}");
        assert!(closed(&metrics, "idle"), "{}", metrics.encode());
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let (addr, metrics, _stop, _server) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        assert!(closed(&metrics, "header_timeout"), "{}", metrics.encode());
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_takes_the_place_of_an_idle_one_never_of_a_request_in_flight()
     {
        let limits = ServerLimits {
            max_connections: 2,
            ..ServerLimits::default()
        };
        let (addr, metrics, _stop, _server) = start(limits).await;
        let mut busy = send(addr, "/slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The cap is reached: the probe gets in, the idle connection makes room.
        let mut probe = send(addr, "/healthz").await;
        assert!(
            answer(&mut probe, "ok\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
        assert!(closed(&metrics, "evicted"), "{}", metrics.encode());
        // The request in flight was not cut.
        assert!(
            answer(&mut busy, "slow\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn at_the_cap_with_every_request_in_flight_a_new_connection_waits_until_one_is_answered()
    {
        let limits = ServerLimits {
            max_connections: 1,
            ..ServerLimits::default()
        };
        let (addr, _metrics, _stop, _server) = start(limits).await;
        let mut busy = send(addr, "/slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let mut next = send(addr, "/healthz").await;
        // The busy connection is answered and, kept alive, idle: it makes room then.
        assert!(
            answer(&mut busy, "slow\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            answer(&mut next, "ok\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "answered after {waited:?}"
        );
        assert!(closed_within(&mut busy, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn shutdown_answers_the_request_in_flight_then_the_server_ends() {
        let (addr, _metrics, stop, server) = start(ServerLimits::default()).await;
        let mut busy = send(addr, "/slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        assert!(
            answer(&mut busy, "slow\n")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the server ended")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
