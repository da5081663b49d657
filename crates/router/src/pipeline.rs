//! One connection, top to bottom:
//! accept → read ClientHello (after a PROXY header, on a listener with
//! `accept_proxy_protocol`) → route → connect → forward hello → splice.
//!
//! Each step is a small function with its own timeout and typed error; the
//! error decides the `result` label, what the client is told (a TLS alert,
//! an HTTP 400 or nothing) and the access log line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clienthello::{ClientHello, Limits, Progress};
use splice::{Direction, End, Side};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use crate::admission::{Refusal, Slot};
use crate::alert::{Alert, HTTP_400};
use crate::metrics::{EndLabel, Outcome};
use crate::state::{Generation, Route};
use crate::upstream::{Endpoint, EndpointGuard, Unavailable};
use config::{AcceptProxyProtocol, ProxyProtocol};
use proxy_protocol::read as proxy_header;

/// A connection fresh from `accept`.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The client's socket.
    pub(crate) stream: TcpStream,
    /// The client's address: the peer's, until a PROXY header from a
    /// trusted load balancer names the client.
    pub(crate) peer: SocketAddr,
    /// The listener it came from.
    pub(crate) listener: Arc<Listener>,
    /// When it was accepted.
    pub(crate) at: Instant,
    /// Its places under the limits, held until the connection is over
    /// (the pending-hello ones until its hello is read).
    pub(crate) slot: Slot,
    /// The config generation in force when it was accepted: it routes the
    /// connection for its whole life, whatever reloads come.
    pub(crate) generation: Arc<Generation>,
}

/// A configured listener, shared by its connections.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The configured address (config key).
    pub(crate) addr: SocketAddr,
    /// The same as text, the `listener` label of metrics and logs
    /// (formatted once, not per connection).
    pub(crate) label: String,
}

impl Listener {
    /// The listener configured as `addr`.
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            label: addr.to_string(),
        }
    }
}

/// Why a connection was not (or no longer) forwarded; [`Refused::outcome`]
/// is its `result` label.
#[derive(Debug)]
enum Refused {
    HelloTimeout,
    ClientClosed,
    BadHello(clienthello::Error),
    /// A hello refused for its server name (`InvalidServerName`), with the
    /// name as sent when it could be read (capped by
    /// [`crate::recent::keep_name`]): for the list of recent refusals only,
    /// never logged or used as a label.
    BadName(clienthello::Error, Option<Box<[u8]>>),
    NoRoute,
    Denied,
    Unavailable(Unavailable),
    /// A PROXY header that is not one, or not one sniroute takes.
    ProxyHeader(proxy_header::Error),
    /// A PROXY header refused for where it is or who sent it, and why.
    BadProxyHeader(&'static str),
    /// The address in a PROXY header is at a per-source limit.
    SourceLimit,
}

impl Refused {
    fn outcome(&self) -> Outcome {
        match self {
            Self::HelloTimeout => Outcome::ClientHelloTimeout,
            Self::ClientClosed => Outcome::ClientClosed,
            Self::BadHello(clienthello::Error::NotTls { .. }) => Outcome::NotTls,
            Self::BadHello(clienthello::Error::TooLarge { .. }) => Outcome::ClientHelloTooLarge,
            Self::BadHello(_) | Self::BadName(..) => Outcome::BadClientHello,
            Self::NoRoute => Outcome::NoRoute,
            Self::Denied => Outcome::Denied,
            Self::Unavailable(_) => Outcome::UpstreamUnavailable,
            Self::ProxyHeader(_) | Self::BadProxyHeader(_) => Outcome::BadProxyHeader,
            Self::SourceLimit => Outcome::SourceLimit,
        }
    }

    /// What to send the client before closing.
    fn reply(&self) -> Option<&'static [u8]> {
        const UNRECOGNIZED: [u8; 7] = Alert::UnrecognizedName.record();
        const DENIED: [u8; 7] = Alert::AccessDenied.record();
        const INTERNAL: [u8; 7] = Alert::InternalError.record();
        const DECODE: [u8; 7] = Alert::DecodeError.record();
        match self {
            Self::HelloTimeout
            | Self::ClientClosed
            | Self::ProxyHeader(_)
            | Self::BadProxyHeader(_)
            | Self::SourceLimit => None,
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
            Self::BadHello(_) | Self::BadName(..) => Some(&DECODE),
            Self::NoRoute => Some(&UNRECOGNIZED),
            Self::Denied => Some(&DENIED),
            Self::Unavailable(_) => Some(&INTERNAL),
        }
    }

    /// The server name for the list of recent refusals: as sent when it was
    /// refused as invalid, else as validated.
    fn server_name<'a>(&'a self, record: &'a Record) -> Option<&'a [u8]> {
        match self {
            Self::BadName(_, raw) => raw.as_deref(),
            _ => record.sni().map(str::as_bytes),
        }
    }
}

/// What the access log line says about a connection, gathered on the way.
/// Kept small: it lives as long as the tunnel (see [`serve`]).
#[derive(Debug, Default)]
struct Record {
    /// The SNI name followed by the ALPN protocols (comma-separated), in
    /// one allocation; see [`Record::sni`] and [`Record::alpn`].
    names: Box<str>,
    /// Length of the SNI name in `names` (0: no SNI; a name is never empty).
    sni_len: u16,
    /// The route, once known (a label route may leave the table while
    /// its tunnels stay open: the connection holds it).
    route: Option<Arc<Route>>,
    upstream: Option<Arc<Endpoint>>,
    /// From accept to the complete ClientHello.
    hello: Micros,
    /// The successful upstream connect (retries included).
    connect: Micros,
    hello_bytes: u32,
    /// Bytes read with the hello and forwarded before the pump: the hello
    /// and whatever the client pipelined after it in the same reads (at
    /// most `max_client_hello_bytes`).
    first_bytes: u32,
}

impl Record {
    /// Keeps the SNI and the ALPN text (capped, see [`ALPN_LOG_NAMES`]) in
    /// one allocation, sized exactly: the text is measured, then written.
    fn set_names(&mut self, sni: Option<&str>, alpn: &clienthello::Alpn) {
        /// A `fmt::Write` that only counts bytes.
        struct Len(usize);
        impl std::fmt::Write for Len {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        let sni = sni.unwrap_or("");
        let mut len = Len(0);
        let _ = alpn.write_capped(&mut len, ALPN_LOG_NAMES, ALPN_LOG_BYTES);
        let mut names = String::with_capacity(sni.len() + len.0);
        names.push_str(sni);
        // Writing to a String cannot fail.
        let _ = alpn.write_capped(&mut names, ALPN_LOG_NAMES, ALPN_LOG_BYTES);
        // SNI names are at most 253 bytes, far below u16::MAX.
        self.sni_len = u16::try_from(sni.len()).unwrap_or(0);
        self.names = names.into_boxed_str();
    }

    fn sni(&self) -> Option<&str> {
        let sni = self.names.get(..usize::from(self.sni_len))?;
        (!sni.is_empty()).then_some(sni)
    }

    fn alpn(&self) -> Option<&str> {
        let alpn = self.names.get(usize::from(self.sni_len)..)?;
        (!alpn.is_empty()).then_some(alpn)
    }
}

/// An optional duration in whole microseconds, in four bytes (saturating
/// at 71 minutes; `u32::MAX` means "none").
#[derive(Clone, Copy, Debug)]
struct Micros(u32);

impl Default for Micros {
    fn default() -> Self {
        Self(u32::MAX)
    }
}

impl From<Duration> for Micros {
    fn from(d: Duration) -> Self {
        Self(
            u32::try_from(d.as_micros())
                .unwrap_or(u32::MAX - 1)
                .min(u32::MAX - 1),
        )
    }
}

impl Micros {
    /// Milliseconds with microsecond precision, for the access log.
    fn ms(self) -> Option<f64> {
        (self.0 != u32::MAX).then(|| f64::from(self.0) / 1e3)
    }
}

/// A connection ready for its tunnel: connected upstream, hello forwarded.
struct Open {
    upstream: TcpStream,
    /// Counts the tunnel on its endpoint (least connections) until dropped.
    _endpoint: EndpointGuard,
    /// The route (also in the record, for the log line).
    route: Arc<Route>,
}

/// Serves one accepted connection to the end. Never panics on client input;
/// every path ends with exactly one `connections_total` increment and one
/// access log line.
///
/// Setting a tunnel up (the hello, the routing, the connect with its
/// retries) needs several times the state an open tunnel does, and an async
/// function's future is as large as its largest state. So the set-up and
/// the refusal run in boxed futures of their own, freed before the tunnel
/// starts: the task of an idle tunnel holds only the sockets, the pump and
/// this record (benches/README.md, idle tunnels).
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps a second copy of its by-value arguments.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve(mut conn: Accepted) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut record = Record::default();
        // The set-up reads as one story in a debug log; the span lives in
        // the boxed set-up future, so an open tunnel does not carry it.
        let span = tracing::debug_span!("connection", client = %conn.peer, listener = %conn.listener.label);
        let opened = Box::pin(open(&mut conn, &mut record).instrument(span)).await;
        let (outcome, end, error) = match &opened {
            Ok(open) => {
                let end = tunnel(&conn, open).await;
                (Outcome::Forwarded, Some(end), None)
            }
            Err(refused) => {
                conn.slot.shared().recent.record(
                    conn.peer,
                    conn.listener.addr,
                    refused.outcome(),
                    refused.reply(),
                    record.route.as_deref().map(|r| r.name.as_str()),
                    refused.server_name(&record),
                );
                Box::pin(refuse(&conn.stream, refused)).await;
                let error = match refused {
                    Refused::BadHello(e) | Refused::BadName(e, _) => Some(e.to_string()),
                    Refused::Unavailable(e) => Some(e.to_string()),
                    Refused::ProxyHeader(proxy_header::Error::NotProxy) => Some(
                        "no PROXY protocol header from a peer in accept_proxy_protocol.from (required)"
                            .to_owned(),
                    ),
                    Refused::ProxyHeader(e) => Some(e.to_string()),
                    Refused::BadProxyHeader(why) => Some((*why).to_owned()),
                    Refused::SourceLimit => Some(crate::admission::Refusal::Source.reason().to_owned()),
                    _ => None,
                };
                (refused.outcome(), None, error)
            }
        };
        drop(opened); // the upstream socket and the endpoint's count
        let route = record.route.as_deref();
        conn.generation.count(conn.listener.addr, route, outcome);
        let route = route.map_or("none", |r| r.name.as_str());
        access_log(
            &conn.listener,
            conn.peer,
            conn.at,
            &record,
            route,
            outcome,
            end.as_ref(),
            error,
        );
    }
}

/// A connection refused at accept (see [`crate::admission`]): counted and
/// logged like every other connection, then reset at once (nothing lingers
/// in TIME_WAIT on our side, and the accept queue keeps moving).
pub(crate) fn refuse_at_accept(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    generation: &Generation,
    at: Instant,
    refusal: Refusal,
) {
    let outcome = refusal.outcome();
    generation.count(listener.addr, None, outcome);
    access_log(
        listener,
        peer,
        at,
        &Record::default(),
        "none",
        outcome,
        None,
        Some(refusal.reason().to_owned()),
    );
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The listener's `accept_proxy_protocol` in `generation`, if any.
pub(crate) fn accept_proxy_protocol(
    generation: &Generation,
    listener: SocketAddr,
) -> Option<&AcceptProxyProtocol> {
    generation
        .config
        .listeners
        .iter()
        .find(|l| l.address == listener)?
        .accept_proxy_protocol
        .as_ref()
}

/// Whether a connection may, must or must not start with a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderMode {
    /// The listener takes no headers: the bytes are the client's.
    Never,
    /// The listener takes headers, but not from this peer: one is refused.
    Refused,
    /// A trusted load balancer: a header first (`required`: it must).
    Expected { required: bool },
}

/// Accept → read ClientHello → route → connect → forward hello; the tunnel
/// is then ready for the pump. A PROXY header's client becomes
/// `conn.peer`.
async fn open(conn: &mut Accepted, record: &mut Record) -> Result<Open, Refused> {
    let mode = match accept_proxy_protocol(&conn.generation, conn.listener.addr) {
        None => HeaderMode::Never,
        Some(p) if p.trusts(conn.peer.ip()) => HeaderMode::Expected {
            required: p.required,
        },
        Some(_) => HeaderMode::Refused,
    };
    let read = read_client_hello(
        &conn.stream,
        &conn.generation.config,
        mode,
        &conn.slot,
        &mut conn.peer,
    )
    .await;
    conn.slot.hello_done();
    let conn = &*conn;
    let generation = &conn.generation;
    let config = &generation.config;
    let (buf, hello) = read?;
    let hello_time = conn.at.elapsed();
    record.hello = hello_time.into();
    record.hello_bytes = u32::try_from(hello.client_hello_bytes).unwrap_or(u32::MAX);
    record.set_names(hello.server_name.as_ref().map(|n| n.as_str()), &hello.alpn);
    let process = &conn.slot.shared().metrics;
    process.hello_seconds.record(hello_time.as_secs_f64());
    process.hello_bytes.record(hello.client_hello_bytes as f64);
    tracing::debug!(
        sni = record.sni(),
        alpn = record.alpn(),
        bytes = hello.client_hello_bytes,
        "client hello"
    );

    let route = pick_route(generation, &hello, conn)?;
    // From here on the record has all the hello said that is needed; the
    // parsed hello (its ALPN list may be as large as the hello) is not
    // kept while the upstream connect waits.
    drop(hello);
    record.route = Some(route.clone());
    if !route.allows(conn.peer.ip()) {
        tracing::debug!(route = %route.name, "source not allowed");
        return Err(Refused::Denied);
    }

    let (upstream, endpoint, took) = route
        .pool
        .connect(config.timeouts.connect)
        .await
        .map_err(Refused::Unavailable)?;
    record.connect = took.into();
    tracing::debug!(upstream = %endpoint.endpoint().label(), connect_us = took.as_micros() as u64, "connected");
    record.upstream = Some(endpoint.endpoint().clone());
    route.connect_seconds.record(took.as_secs_f64());
    tune(&upstream, config.timeouts.tcp_user_timeout);

    // An upstream that accepts but does not read cannot hold the
    // connection: the hello (and PROXY header) must be written within the
    // connect timeout too.
    let written = tokio::time::timeout(
        config.timeouts.connect,
        forward_hello(&upstream, &route, conn, record.sni(), &buf),
    )
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the upstream did not take the ClientHello within the connect timeout",
        ))
    });
    written.map_err(|e| {
        Refused::Unavailable(Unavailable {
            attempts: vec![(endpoint.endpoint().addr, e)],
            excluded: Vec::new(),
        })
    })?;
    record.first_bytes = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    Ok(Open {
        upstream,
        _endpoint: endpoint,
        route,
    })
}

/// Tells the client why, when there is something to tell, and closes.
async fn refuse(stream: &TcpStream, refused: &Refused) {
    if let Some(reply) = refused.reply() {
        // Best effort, bounded: the client may be gone already.
        let _ = tokio::time::timeout(Duration::from_secs(1), write_all(stream, reply)).await;
        linger_close(stream).await;
    }
}

/// Bytes read from a client per `recv` while its hello is incomplete.
const READ_CHUNK: usize = 4096;

/// How many ALPN names, and about how many bytes of them, an access log
/// line shows; a longer list ends in a `...(+N more)` marker.
const ALPN_LOG_NAMES: usize = 16;
const ALPN_LOG_BYTES: usize = 256;

/// Reads until the ClientHello is complete, bounded in time
/// (`timeouts.client_hello`) and size (`max_client_hello_bytes`), a PROXY
/// header first when `mode` expects one (it counts against both bounds;
/// its client address goes to `peer`, and the connection is counted under
/// it, see [`crate::admission::Slot::count_source`]). Returns every byte
/// read after the PROXY header (the hello and anything the client
/// pipelined after it), to be forwarded as is.
async fn read_client_hello(
    stream: &TcpStream,
    config: &config::Config,
    mode: HeaderMode,
    slot: &Slot,
    peer: &mut SocketAddr,
) -> Result<(Vec<u8>, ClientHello), Refused> {
    let max = config.limits.max_client_hello_bytes;
    let timeout = config.timeouts.client_hello;
    // Set while a PROXY header has begun but is incomplete: a timeout then
    // refuses the header.
    let mut header_partial = false;
    let read = async {
        // The buffer grows with the bytes that arrive, never with what a
        // record header promises: a header announcing 16 KiB and nothing
        // after it costs 5 bytes, not 16 KiB.
        let mut buf = Vec::new();
        // Where the hello starts: after the PROXY header, once read.
        let mut start = 0;
        let mut header_next = matches!(mode, HeaderMode::Expected { .. });
        let balancer = *peer;
        loop {
            let at_least = if header_next {
                match proxy_header::parse(&buf) {
                    Ok(proxy_header::Progress::NeedMore { at_least }) => {
                        header_partial = !buf.is_empty();
                        at_least
                    }
                    Ok(proxy_header::Progress::Complete { header, consumed }) => {
                        start = consumed;
                        header_next = false;
                        header_partial = false;
                        // LOCAL (a health check), UNKNOWN, AF_UNSPEC: the
                        // peer is its own client.
                        if let (proxy_header::Command::Proxy, Some(client)) =
                            (header.command, header.source)
                        {
                            *peer = client;
                        }
                        tracing::debug!(client = %peer, "PROXY header");
                        slot.count_source(peer.ip(), &config.limits)
                            .map_err(|_| Refused::SourceLimit)?;
                        continue;
                    }
                    Err(proxy_header::Error::NotProxy)
                        if mode == (HeaderMode::Expected { required: false }) =>
                    {
                        header_next = false;
                        slot.count_source(peer.ip(), &config.limits)
                            .map_err(|_| Refused::SourceLimit)?;
                        continue;
                    }
                    Err(e) => return Err(Refused::ProxyHeader(e)),
                }
            } else {
                let limits = Limits {
                    max_client_hello_bytes: max.saturating_sub(start),
                };
                match clienthello::parse(&buf[start..], &limits) {
                    Ok(Progress::Complete(hello)) => {
                        buf.drain(..start);
                        return Ok((buf, hello));
                    }
                    Ok(Progress::NeedMore { at_least }) => at_least,
                    // Not TLS, but a (second) PROXY header.
                    Err(_)
                        if mode != HeaderMode::Never
                            && proxy_header::starts_like_header(&buf[start..]) =>
                    {
                        // A refused header names no client: the peer is
                        // logged.
                        *peer = balancer;
                        return Err(Refused::BadProxyHeader(if start > 0 {
                            "a second PROXY protocol header (stacked)"
                        } else {
                            "a PROXY protocol header from a peer outside accept_proxy_protocol.from"
                        }));
                    }
                    Err(e @ clienthello::Error::InvalidServerName(_)) => {
                        let raw = clienthello::raw_server_name(&buf[start..])
                            .map(crate::recent::keep_name);
                        return Err(Refused::BadName(e, raw));
                    }
                    Err(e) => return Err(Refused::BadHello(e)),
                }
            };
            // Read what is needed and what may already be there, but never
            // past the limit (the hello parser refuses a hello that needs
            // more; a PROXY header that needs more is refused here).
            let room = max.saturating_sub(buf.len());
            if room == 0 {
                return Err(Refused::BadProxyHeader(
                    "a PROXY protocol header longer than max_client_hello_bytes",
                ));
            }
            let want = at_least.max(READ_CHUNK).min(room).clamp(1, READ_CHUNK);
            let n = loop {
                if stream.readable().await.is_err() {
                    return Err(closed(header_next, &buf));
                }
                // Read into the stack (this block holds no await, so the
                // chunk is not part of the connection's future), then keep
                // exactly what came.
                let mut chunk = [0u8; READ_CHUNK];
                // A short read clears readiness: the pump's first poll
                // then waits for new bytes instead of reading `EAGAIN`.
                match splice::try_read_drained(stream, &mut chunk[..want]) {
                    Ok(n) => {
                        buf.reserve_exact(n);
                        buf.extend_from_slice(&chunk[..n]);
                        break n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(closed(header_next, &buf)),
                }
            };
            if n == 0 {
                return Err(closed(header_next, &buf));
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) if header_partial => Err(Refused::BadProxyHeader(
            "a PROXY protocol header cut short (timeouts.client_hello)",
        )),
        Err(_) => Err(Refused::HelloTimeout),
    }
}

/// A client gone before its hello: a PROXY header it left incomplete is
/// refused as such.
fn closed(header_next: bool, buf: &[u8]) -> Refused {
    if header_next && !buf.is_empty() {
        Refused::BadProxyHeader("a PROXY protocol header cut short")
    } else {
        Refused::ClientClosed
    }
}

/// The route for the hello's server name: static and label routes (see
/// [`Generation::lookup`]).
fn pick_route(
    generation: &Generation,
    hello: &ClientHello,
    conn: &Accepted,
) -> Result<Arc<Route>, Refused> {
    let sni = hello.server_name.as_ref().map(|n| n.as_str());
    let listener = generation.listener_index(conn.listener.addr);
    let Some((route, kind)) = generation.lookup(sni, listener) else {
        tracing::debug!("no route");
        return Err(Refused::NoRoute);
    };
    tracing::debug!(route = %route.name, matched = kind.as_str(), "routed");
    Ok(route)
}

async fn forward_hello(
    upstream: &TcpStream,
    route: &Route,
    conn: &Accepted,
    sni: Option<&str>,
    buf: &[u8],
) -> std::io::Result<()> {
    // The address the client actually connected to: a listener bound to
    // 0.0.0.0 (or port 0) is not an address the upstream can use.
    let local = || conn.stream.local_addr().unwrap_or(conn.listener.addr);
    let header = match route.proxy_protocol {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(proxy_protocol::v1(conn.peer, local())),
        ProxyProtocol::V2 => Some(proxy_protocol::v2(conn.peer, local(), sni)),
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
    end: EndLabel,
    error: Option<String>,
}

/// Moves bytes until the tunnel ends, or until a drain runs out of time.
async fn tunnel(conn: &Accepted, open: &Open) -> TunnelEnd {
    let generation = &conn.generation;
    let route = &open.route;
    let _tunnel = TunnelGauge::open(generation, route);
    let on_bytes = |dir: Direction, n: u64| match dir {
        Direction::ClientToUpstream => route.bytes_up.increment(n),
        Direction::UpstreamToClient => route.bytes_down.increment(n),
    };
    let shared = conn.slot.shared();
    let started = Instant::now();
    let drain_over = std::pin::pin!(shared.tunnels_closed());
    let o = splice::pump_until(
        &conn.stream,
        &open.upstream,
        &generation.pump,
        &on_bytes,
        drain_over,
    )
    .await;
    let end = end_label(&o.end);
    if end == EndLabel::Drain {
        shared.drain_closed.fetch_add(1, Ordering::Relaxed);
        shared.metrics.drain_closed.increment(1);
    }
    let error = o
        .error
        .as_ref()
        .map(|(side, e)| format!("{}: {e}", side.as_str()));
    route.tunnel_seconds.record(started.elapsed().as_secs_f64());
    route.tunnels_ended[end.index()].increment(1);
    TunnelEnd {
        client_to_upstream: o.client_to_upstream,
        upstream_to_client: o.upstream_to_client,
        first_eof: o.first_eof,
        end,
        error,
    }
}

/// Keeps `active_tunnels{route}` and the generation's count right, even if
/// the tunnel future is dropped.
struct TunnelGauge<'g> {
    generation: &'g Generation,
    route: &'g Route,
}

impl<'g> TunnelGauge<'g> {
    fn open(generation: &'g Generation, route: &'g Route) -> Self {
        route.active_tunnels.increment();
        generation.tunnels.fetch_add(1, Ordering::Relaxed);
        Self { generation, route }
    }
}

impl Drop for TunnelGauge<'_> {
    fn drop(&mut self) {
        self.route.active_tunnels.decrement();
        self.generation.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `end` label of a pump's end. A peer's reset (`ECONNRESET`, `EPIPE`,
/// `ENOTCONN`) is told apart from other I/O errors: clients such as curl
/// often reset or shut down abruptly once they have what they wanted, which
/// is no error of the tunnel's.
fn end_label(end: &End) -> EndLabel {
    match end {
        End::Finished => EndLabel::Finished,
        End::IdleTimeout => EndLabel::IdleTimeout,
        End::Stopped => EndLabel::Drain,
        End::ClientReset => EndLabel::ClientReset,
        End::UpstreamReset => EndLabel::UpstreamReset,
        End::ClientError => EndLabel::ClientError,
        End::UpstreamError => EndLabel::UpstreamError,
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
/// kubectl frames go out at once), keepalive, so a peer that vanished
/// without a FIN is noticed within minutes instead of at the idle timeout,
/// and `TCP_USER_TIMEOUT` (see [`set_user_timeout`]).
pub(crate) fn tune(stream: &TcpStream, user_timeout: Duration) {
    let _ = tune_socket(socket2::SockRef::from(stream), user_timeout);
}

/// [`tune`] on any socket, e.g. a listening one whose accepted sockets
/// inherit the options (Linux).
///
/// # Errors
/// The first `setsockopt` that fails.
pub(crate) fn tune_socket<'a>(
    socket: impl Into<socket2::SockRef<'a>>,
    user_timeout: Duration,
) -> std::io::Result<()> {
    let socket = socket.into();
    socket.set_tcp_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    socket.set_tcp_keepalive(&keepalive)?;
    set_user_timeout(socket, user_timeout)
}

/// `TCP_USER_TIMEOUT` (`timeouts.tcp_user_timeout`): data unacknowledged
/// for this long ends the connection. Keepalive notices a peer that
/// vanished while the tunnel was idle; this one notices it while data is in
/// flight, which keepalive does not probe.
pub(crate) fn set_user_timeout(
    socket: socket2::SockRef<'_>,
    user_timeout: Duration,
) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(user_timeout))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (socket, user_timeout);
    Ok(())
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The access log line of one connection: every connection writes exactly
/// one, whatever its fate, except refusals past the rate limit
/// ([`crate::log_limit`]), which are counted instead.
#[allow(clippy::too_many_arguments)]
fn access_log(
    listener: &Listener,
    peer: SocketAddr,
    at: Instant,
    r: &Record,
    route: &str,
    outcome: Outcome,
    t: Option<&TunnelEnd>,
    error: Option<String>,
) {
    if outcome != Outcome::Forwarded && !crate::log_limit::limit().allow() {
        return;
    }
    let first = r.first_bytes as u64;
    tracing::info!(
        target: "sniroute::access",
        listener = %listener.label,
        client = %peer,
        sni = r.sni(),
        alpn = r.alpn(),
        route,
        upstream = r.upstream.as_ref().map(|e| e.label()),
        result = outcome.as_str(),
        bytes_client_to_upstream = t.map_or(0, |t| t.client_to_upstream + first),
        bytes_upstream_to_client = t.map_or(0, |t| t.upstream_to_client),
        client_hello_bytes = r.hello_bytes,
        client_hello_ms = r.hello.ms(),
        connect_ms = r.connect.ms(),
        duration_ms = ms(Some(at.elapsed())),
        closed_first = t.and_then(|t| t.first_eof).map(|s| s.as_str()),
        end = t.map(|t| t.end.as_str()),
        error = error.as_deref().or(t.and_then(|t| t.error.as_deref())),
        "connection",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle tunnel costs its task (this future in a 128-byte aligned
    /// cell, plus about 100 bytes of header and trailer) and two tokio I/O
    /// registrations; see benches/README.md. Measured 760 bytes in the test
    /// profile (about the same in release: a 896-byte task cell); past 792
    /// the cell grows to 1,024 bytes.
    #[test]
    fn connection_future_stays_small() {
        let size = future_size(serve);
        eprintln!("serve future: {size} bytes");
        assert!(size <= 792, "the connection future grew to {size} bytes");
    }

    /// A pending hello costs its task (the `serve` future above), this
    /// boxed set-up future and the bytes that arrived: the memory test in
    /// tests/e2e/limits.rs allows 3 KiB for all of it.
    #[tokio::test]
    async fn setup_future_stays_small() {
        let config = config::Config::from_yaml_str(
            "listeners: [\"127.0.0.1:0\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"127.0.0.1:1\"]}]\n",
            "test.yaml",
        )
        .unwrap();
        let shared = crate::state::Shared::new(Generation::build(1, config, &[]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let generation = shared.current();
        let slot = crate::admission::admit(&shared, peer.ip(), &generation.config.limits).unwrap();
        let conn = Accepted {
            stream,
            peer,
            listener: Arc::new(Listener::new(peer)),
            at: Instant::now(),
            slot,
            generation,
        };
        let mut conn = conn;
        let mut record = Record::default();
        let setup = open(&mut conn, &mut record);
        let size = std::mem::size_of_val(&setup);
        eprintln!("set-up future: {size} bytes");
        assert!(size <= 1024, "the set-up future grew to {size} bytes");
    }

    #[test]
    fn record_names() {
        let mut r = Record::default();
        assert_eq!((r.sni(), r.alpn()), (None, None));
        let alpn =
            |names: &[&str]| clienthello::Alpn::from_names(names.iter().map(|n| n.as_bytes()));
        r.set_names(Some("a.example"), &alpn(&["h2", "http/1.1"]));
        assert_eq!(
            (r.sni(), r.alpn()),
            (Some("a.example"), Some("h2,http/1.1"))
        );
        assert_eq!(r.names.len(), "a.example".len() + "h2,http/1.1".len());
        r.set_names(None, &alpn(&["h2"]));
        assert_eq!((r.sni(), r.alpn()), (None, Some("h2")));
        r.set_names(Some("b.example"), &alpn(&[]));
        assert_eq!((r.sni(), r.alpn()), (Some("b.example"), None));
        // A long list is capped, with its marker.
        let many: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        r.set_names(Some("c.example"), &alpn(&many));
        assert_eq!(
            r.alpn(),
            Some("p0,p1,p2,p3,p4,p5,p6,p7,p8,p9,p10,p11,p12,p13,p14,p15,...(+24 more)")
        );
    }

    #[test]
    fn micros() {
        assert_eq!(Micros::default().ms(), None);
        assert_eq!(Micros::from(Duration::from_micros(1_500)).ms(), Some(1.5));
        let long = Micros::from(Duration::from_secs(10 * 3600));
        assert_eq!(long.ms(), Some(f64::from(u32::MAX - 1) / 1e3), "saturates");
    }
}
