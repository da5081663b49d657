//! One connection, top to bottom:
//! accept → read ClientHello → route → connect → forward hello → splice.
//!
//! Each step is a small function with its own timeout and typed error; the
//! error decides the `result` label, what the client is told (a TLS alert,
//! an HTTP 400 or nothing) and the access log line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clienthello::{ClientHello, Limits, Progress};
use splice::{Direction, End, Side};
use tokio::net::TcpStream;

use crate::alert::{Alert, HTTP_400};
use crate::config::ProxyProtocol;
use crate::metrics as m;
use crate::state::{Generation, Route, Shared};
use crate::table::RouteId;
use crate::upstream::{EndpointGuard, Unavailable};

/// A connection fresh from `accept`.
#[derive(Debug)]
pub struct Accepted {
    /// The client's socket.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address (config key and metric label).
    pub listener: SocketAddr,
    /// When it was accepted.
    pub at: Instant,
}

/// Why a connection was not (or no longer) forwarded. `as_str` is the
/// `result` label.
#[derive(Debug)]
enum Refused {
    HelloTimeout,
    ClientClosed,
    BadHello(clienthello::Error),
    NoRoute,
    Denied,
    Unavailable(Unavailable),
}

impl Refused {
    fn as_str(&self) -> &'static str {
        match self {
            Self::HelloTimeout => "client_hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::BadHello(clienthello::Error::NotTls { .. }) => "not_tls",
            Self::BadHello(clienthello::Error::TooLarge { .. }) => "client_hello_too_large",
            Self::BadHello(_) => "bad_client_hello",
            Self::NoRoute => "no_route",
            Self::Denied => "denied",
            Self::Unavailable(_) => "upstream_unavailable",
        }
    }

    /// What to send the client before closing.
    fn reply(&self) -> Option<&'static [u8]> {
        const UNRECOGNIZED: [u8; 7] = Alert::UnrecognizedName.record();
        const DENIED: [u8; 7] = Alert::AccessDenied.record();
        const INTERNAL: [u8; 7] = Alert::InternalError.record();
        const DECODE: [u8; 7] = Alert::DecodeError.record();
        match self {
            Self::HelloTimeout | Self::ClientClosed => None,
            Self::BadHello(clienthello::Error::NotTls {
                looks_like_http: true,
            }) => Some(HTTP_400),
            // Not TLS, or TLS records that are no handshake (an alert, for
            // instance): just close. An SSLv2-style hello gets decode_error
            // like any hello we cannot use: a client that sends one for
            // compatibility reads TLS records, and a true SSLv2 peer just
            // sees the connection close.
            Self::BadHello(
                clienthello::Error::NotTls { .. } | clienthello::Error::NotHandshake { .. },
            ) => None,
            Self::BadHello(_) => Some(&DECODE),
            Self::NoRoute => Some(&UNRECOGNIZED),
            Self::Denied => Some(&DENIED),
            Self::Unavailable(_) => Some(&INTERNAL),
        }
    }
}

/// Everything the access log line says about a connection.
#[derive(Debug, Default)]
struct Record {
    sni: Option<String>,
    alpn: Vec<String>,
    route: Option<String>,
    upstream: Option<String>,
    hello: Option<Duration>,
    hello_bytes: usize,
    /// Bytes read with the hello and forwarded before the pump: the hello
    /// and whatever the client pipelined after it in the same reads.
    first_bytes: usize,
    connect: Option<Duration>,
    tunnel: Option<TunnelEnd>,
    error: Option<String>,
}

/// Serves one accepted connection to the end. Never panics on client input;
/// every path ends with exactly one `connections_total` increment and one
/// access log line.
pub async fn serve(conn: Accepted, shared: Arc<Shared>) {
    let generation = shared.current();
    let mut record = Record::default();
    let result = match forward(&conn, &generation, &shared, &mut record).await {
        Ok(()) => "forwarded",
        Err(refused) => {
            if let Some(reply) = refused.reply() {
                // Best effort, bounded: the client may be gone already.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), write_all(&conn.stream, reply))
                        .await;
                linger_close(&conn.stream).await;
            }
            if let Refused::BadHello(e) = &refused {
                record.error = Some(e.to_string());
            } else if let Refused::Unavailable(e) = &refused {
                record.error = Some(e.to_string());
            }
            refused.as_str()
        }
    };
    let route = record.route.clone().unwrap_or_else(|| "none".to_owned());
    metrics::counter!(m::CONNECTIONS_TOTAL,
        "listener" => conn.listener.to_string(), "route" => route.clone(), "result" => result)
    .increment(1);
    access_log(&conn, &record, &route, result);
}

/// The pipeline proper; returns once the tunnel is over.
async fn forward(
    conn: &Accepted,
    generation: &Arc<Generation>,
    shared: &Shared,
    record: &mut Record,
) -> Result<(), Refused> {
    let config = &generation.config;
    let (buf, hello) = read_client_hello(
        &conn.stream,
        &Limits {
            max_client_hello_bytes: config.limits.max_client_hello_bytes,
        },
        config.timeouts.client_hello,
    )
    .await?;
    record.hello = Some(conn.at.elapsed());
    record.hello_bytes = hello.client_hello_bytes;
    record.sni = hello.server_name.as_ref().map(|n| n.as_str().to_owned());
    record.alpn = hello.alpn_lossy();
    metrics::histogram!(m::CLIENT_HELLO_SECONDS).record(conn.at.elapsed().as_secs_f64());
    metrics::histogram!(m::CLIENT_HELLO_BYTES).record(hello.client_hello_bytes as f64);

    let (route_id, route) = pick_route(generation, &hello, conn)?;
    record.route = Some(route.name.clone());
    if !route.allows(conn.peer.ip()) {
        return Err(Refused::Denied);
    }

    let (upstream, endpoint, took) = route
        .pool
        .connect(config.timeouts.connect)
        .await
        .map_err(Refused::Unavailable)?;
    record.connect = Some(took);
    record.upstream = Some(endpoint.endpoint().label().to_owned());
    metrics::histogram!(m::UPSTREAM_CONNECT_SECONDS, "route" => route.name.clone())
        .record(took.as_secs_f64());
    tune(&upstream);

    forward_hello(&upstream, route, conn, &hello, &buf)
        .await
        .map_err(|e| {
            Refused::Unavailable(Unavailable {
                attempts: vec![(endpoint.endpoint().addr, e)],
            })
        })?;
    record.first_bytes = buf.len();
    drop(buf);
    record.tunnel = Some(tunnel(conn, upstream, endpoint, generation, route_id, shared).await);
    Ok(())
}

/// Reads until the ClientHello is complete, bounded in time and size.
/// Returns every byte read (the hello and anything the client pipelined
/// after it), to be forwarded as is.
async fn read_client_hello(
    stream: &TcpStream,
    limits: &Limits,
    timeout: Duration,
) -> Result<(Vec<u8>, ClientHello), Refused> {
    let read = async {
        // Most hellos are under 2 KiB; the buffer grows to the limit at most.
        let mut buf = Vec::with_capacity(2048);
        loop {
            let at_least = match clienthello::parse(&buf, limits) {
                Ok(Progress::Complete(hello)) => return Ok((buf, hello)),
                Ok(Progress::NeedMore { at_least }) => at_least,
                Err(e) => return Err(Refused::BadHello(e)),
            };
            // Read what is needed and what may already be there, but never
            // past the limit (the parser refuses a hello that needs more).
            let room = limits.max_client_hello_bytes.saturating_sub(buf.len());
            let want = at_least.max(2048).min(room).max(1);
            let filled = buf.len();
            buf.resize(filled + want, 0);
            let n = loop {
                if stream.readable().await.is_err() {
                    return Err(Refused::ClientClosed);
                }
                match stream.try_read(&mut buf[filled..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(Refused::ClientClosed),
                }
            };
            buf.truncate(filled + n);
            if n == 0 {
                return Err(Refused::ClientClosed);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Refused::HelloTimeout))
}

fn pick_route<'g>(
    generation: &'g Generation,
    hello: &ClientHello,
    conn: &Accepted,
) -> Result<(RouteId, &'g Route), Refused> {
    let listener_default = generation
        .listener_defaults
        .get(&conn.listener)
        .copied()
        .flatten();
    let (id, _kind) = generation
        .table
        .lookup(
            hello.server_name.as_ref().map(|n| n.as_str()),
            listener_default,
        )
        .ok_or(Refused::NoRoute)?;
    Ok((id, &generation.routes[id]))
}

async fn forward_hello(
    upstream: &TcpStream,
    route: &Route,
    conn: &Accepted,
    hello: &ClientHello,
    buf: &[u8],
) -> std::io::Result<()> {
    let sni = hello.server_name.as_ref().map(|n| n.as_str());
    // The address the client actually connected to: a listener bound to
    // 0.0.0.0 (or port 0) is not an address the upstream can use.
    let local = || conn.stream.local_addr().unwrap_or(conn.listener);
    let header = match route.proxy_protocol {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(crate::proxy_protocol::v1(conn.peer, local())),
        ProxyProtocol::V2 => Some(crate::proxy_protocol::v2(conn.peer, local(), sni)),
    };
    match header {
        Some(mut h) => {
            h.extend_from_slice(buf);
            write_all(upstream, &h).await?;
        }
        None => write_all(upstream, buf).await?,
    }
    route.bytes_up.increment(buf.len() as u64);
    Ok(())
}

/// How a tunnel ended, for the access log.
#[derive(Debug)]
struct TunnelEnd {
    /// Bytes moved by the pump (the ClientHello not included).
    client_to_upstream: u64,
    upstream_to_client: u64,
    first_eof: Option<Side>,
    /// `finished`, `idle_timeout`, `client_error`, `upstream_error`, `drain`.
    end: &'static str,
    error: Option<String>,
}

/// Moves bytes until the tunnel ends, or until a drain runs out of time.
async fn tunnel(
    conn: &Accepted,
    upstream: TcpStream,
    endpoint: EndpointGuard,
    generation: &Generation,
    route_id: RouteId,
    shared: &Shared,
) -> TunnelEnd {
    let route = &generation.routes[route_id];
    let config = &generation.config;
    let _tunnel = TunnelGauge::open(generation, &route.name);
    let options = splice::Options {
        idle_timeout: config.timeouts.idle,
        force_copy: matches!(config.forwarding, crate::config::Forwarding::Copy),
        ..splice::Options::default()
    };
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let on_bytes = |dir: Direction, n: u64| match dir {
        Direction::ClientToUpstream => {
            route.bytes_up.increment(n);
            up.fetch_add(n, Ordering::Relaxed);
        }
        Direction::UpstreamToClient => {
            route.bytes_down.increment(n);
            down.fetch_add(n, Ordering::Relaxed);
        }
    };
    let started = Instant::now();
    let mut force = shared.force_close.subscribe();
    let outcome = tokio::select! {
        outcome = splice::pump(&conn.stream, &upstream, &options, &on_bytes) => Some(outcome),
        _ = force.wait_for(|&f| f) => None,
    };
    drop(endpoint);
    let (end, first_eof, error) = match outcome {
        None => {
            shared.drain_closed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::DRAIN_CLOSED_TUNNELS_TOTAL).increment(1);
            ("drain", None, None)
        }
        Some(o) => match o.end {
            End::Finished => ("finished", o.first_eof, None),
            End::IdleTimeout => ("idle_timeout", o.first_eof, None),
            End::Error { side, error } => (
                match side {
                    Side::Client => "client_error",
                    Side::Upstream => "upstream_error",
                },
                o.first_eof,
                Some(format!("{}: {error}", side.as_str())),
            ),
        },
    };
    metrics::histogram!(m::TUNNEL_DURATION_SECONDS, "route" => route.name.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(m::TUNNELS_ENDED_TOTAL, "route" => route.name.clone(), "end" => end)
        .increment(1);
    TunnelEnd {
        client_to_upstream: up.into_inner(),
        upstream_to_client: down.into_inner(),
        first_eof,
        end,
        error,
    }
}

/// Keeps `active_tunnels{route}` and the generation's count right, even if
/// the tunnel future is dropped.
struct TunnelGauge<'g> {
    generation: &'g Generation,
    gauge: metrics::Gauge,
}

impl<'g> TunnelGauge<'g> {
    fn open(generation: &'g Generation, route: &str) -> Self {
        let gauge = metrics::gauge!(m::ACTIVE_TUNNELS, "route" => route.to_owned());
        gauge.increment(1.0);
        generation.tunnels.fetch_add(1, Ordering::Relaxed);
        Self { generation, gauge }
    }
}

impl Drop for TunnelGauge<'_> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.generation.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes all of `bytes` to a shared socket reference.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends FIN, then reads and discards what the client still sends for a
/// moment. Closing a socket with unread data makes the kernel answer with a
/// reset, which can overtake the alert we just wrote; the client would then
/// print "connection reset" instead of the alert's meaning.
async fn linger_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut sink = vec![0u8; 4096];
        let mut budget = 64 * 1024usize;
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Socket options for both sides: no Nagle delay (the hello and small
/// kubectl frames go out at once) and keepalive, so a peer that vanished
/// without a FIN is noticed within minutes instead of at the idle timeout.
pub fn tune(stream: &TcpStream) {
    let _ = tune_socket(socket2::SockRef::from(stream));
}

/// [`tune`] on any socket, e.g. a listening one whose accepted sockets
/// inherit the options (Linux).
///
/// # Errors
/// The first `setsockopt` that fails.
pub fn tune_socket<'a>(socket: impl Into<socket2::SockRef<'a>>) -> std::io::Result<()> {
    let socket = socket.into();
    socket.set_tcp_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    socket.set_tcp_keepalive(&keepalive)
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

fn access_log(conn: &Accepted, r: &Record, route: &str, result: &str) {
    let t = r.tunnel.as_ref();
    let first = r.first_bytes as u64;
    tracing::info!(
        target: "sniroute::access",
        listener = %conn.listener,
        client = %conn.peer,
        sni = r.sni.as_deref(),
        alpn = (!r.alpn.is_empty()).then(|| r.alpn.join(",")),
        route,
        upstream = r.upstream.as_deref(),
        result,
        bytes_client_to_upstream = t.map_or(0, |t| t.client_to_upstream + first),
        bytes_upstream_to_client = t.map_or(0, |t| t.upstream_to_client),
        client_hello_bytes = r.hello_bytes,
        client_hello_ms = ms(r.hello),
        connect_ms = ms(r.connect),
        duration_ms = ms(Some(conn.at.elapsed())),
        closed_first = t.and_then(|t| t.first_eof).map(|s| s.as_str()),
        end = t.map(|t| t.end),
        error = r.error.as_deref().or(t.and_then(|t| t.error.as_deref())),
        "connection",
    );
}
