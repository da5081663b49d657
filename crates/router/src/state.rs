//! What the connection pipeline reads: the config generation in force and
//! the process-wide counters.
//!
//! A [`Generation`] is immutable and shared through an `Arc`: a connection
//! takes the current one when it is accepted and keeps it to the end, so a
//! reload never changes the route, pool or timeouts of an open tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};

use crate::metrics as m;
use crate::table::{RouteId, RouteTable};
use crate::upstream::{Pool, PoolKey};
use config::{Config, IpNet, ProxyProtocol};

/// A route as the pipeline uses it.
#[derive(Debug)]
pub struct Route {
    /// The configured name (a metric label).
    pub name: String,
    /// Its endpoints.
    pub pool: Arc<Pool>,
    /// Who may use it; empty means everyone.
    pub allow_sources: Vec<IpNet>,
    /// Header to send upstream before the ClientHello.
    pub proxy_protocol: ProxyProtocol,
    /// Live byte counters, client to upstream.
    pub bytes_up: Counter,
    /// Live byte counters, upstream to client.
    pub bytes_down: Counter,
    /// `sniroute_active_tunnels{route}`.
    pub active_tunnels: Gauge,
    /// `sniroute_upstream_connect_seconds{route}`.
    pub connect_seconds: Histogram,
    /// `sniroute_tunnel_duration_seconds{route}`.
    pub tunnel_seconds: Histogram,
}

impl Route {
    /// Whether `ip` may use this route.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_sources.is_empty() || self.allow_sources.iter().any(|net| net.contains(ip))
    }
}

/// One loaded config with everything derived from it.
#[derive(Debug)]
pub struct Generation {
    /// 1 for the config loaded at start, +1 per successful reload.
    pub id: u64,
    /// The config itself.
    pub config: Arc<Config>,
    /// Server name lookup.
    pub table: RouteTable,
    /// Routes by [`RouteId`].
    pub routes: Vec<Route>,
    /// Each listener's default route, by address.
    pub listener_defaults: HashMap<SocketAddr, Option<RouteId>>,
    /// Tunnels routed by this generation, open now.
    pub tunnels: AtomicUsize,
    /// How this generation's tunnels move bytes (timeouts and forwarding
    /// from the config); built once, borrowed by every pump.
    pub pump: splice::Options,
    /// `sniroute_client_hello_seconds`.
    pub hello_seconds: Histogram,
    /// `sniroute_client_hello_bytes`.
    pub hello_bytes: Histogram,
}

impl Generation {
    /// Builds generation `id` from `config`, reusing pools from `previous`
    /// whose routes kept the same upstream settings.
    pub fn build(id: u64, config: Config, previous: Option<&Generation>) -> Self {
        let table = RouteTable::new(&config);
        let routes = config
            .routes
            .iter()
            .map(|rc| {
                let key = PoolKey::of(rc);
                let pool = previous
                    .and_then(|g| g.routes.iter().find(|r| r.pool.key() == &key))
                    .map(|r| r.pool.clone())
                    .unwrap_or_else(|| Pool::start(key));
                Route {
                    name: rc.name.clone(),
                    pool,
                    allow_sources: rc.allow_sources.clone(),
                    proxy_protocol: rc.proxy_protocol.clone(),
                    bytes_up: metrics::counter!(m::BYTES_TOTAL, "route" => rc.name.clone(), "direction" => "client_to_upstream"),
                    bytes_down: metrics::counter!(m::BYTES_TOTAL, "route" => rc.name.clone(), "direction" => "upstream_to_client"),
                    active_tunnels: metrics::gauge!(m::ACTIVE_TUNNELS, "route" => rc.name.clone()),
                    connect_seconds: metrics::histogram!(m::UPSTREAM_CONNECT_SECONDS, "route" => rc.name.clone()),
                    tunnel_seconds: metrics::histogram!(m::TUNNEL_DURATION_SECONDS, "route" => rc.name.clone()),
                }
            })
            .collect();
        let listener_defaults = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.address, table.listener_default(i)))
            .collect();
        let pump = splice::Options {
            idle_timeout: config.timeouts.idle,
            force_copy: matches!(config.forwarding, config::Forwarding::Copy),
            ..splice::Options::default()
        };
        Self {
            id,
            pump,
            hello_seconds: metrics::histogram!(m::CLIENT_HELLO_SECONDS),
            hello_bytes: metrics::histogram!(m::CLIENT_HELLO_BYTES),
            config: Arc::new(config),
            table,
            routes,
            listener_defaults,
            tunnels: AtomicUsize::new(0),
        }
    }
}

/// One connection counted in [`Shared::connections`] (see
/// [`Shared::try_admit`]); uncounted when dropped, however the connection
/// ends.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    /// The state the connection was counted in.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Process-wide state shared by listeners, connections and the admin
/// endpoint.
#[derive(Debug)]
pub struct Shared {
    current: RwLock<Arc<Generation>>,
    /// Every generation still referenced (by open tunnels), for the
    /// `tunnels_on_old_config` gauge.
    generations: Mutex<Vec<Weak<Generation>>>,
    /// Connections being handled (ClientHello phase and tunnels).
    pub connections: AtomicUsize,
    /// Set once listeners are bound; cleared when draining starts.
    pub ready: AtomicBool,
    /// Set when draining starts.
    pub draining: AtomicBool,
    /// Set, then notified, when the drain time is over: open tunnels must
    /// close (see [`Shared::close_tunnels`]).
    forced: AtomicBool,
    force_close: tokio::sync::Notify,
    /// When the process started.
    pub started: Instant,
    /// Tunnels closed because the drain time ran out.
    pub drain_closed: AtomicU64,
}

impl Shared {
    /// State for the first generation.
    pub fn new(first: Generation) -> Arc<Self> {
        let first = Arc::new(first);
        metrics::gauge!(m::CONFIG_GENERATION).set(first.id as f64);
        Arc::new(Self {
            generations: Mutex::new(vec![Arc::downgrade(&first)]),
            current: RwLock::new(first),
            connections: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            force_close: tokio::sync::Notify::new(),
            started: Instant::now(),
            drain_closed: AtomicU64::new(0),
        })
    }

    /// Counts a new connection against `max` (`limits.max_connections`);
    /// `None`, and nothing counted, when `max` are open already.
    pub fn try_admit(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }

    /// Closes every open tunnel, and any opened from now on (the drain
    /// time is over).
    pub fn close_tunnels(&self) {
        self.forced.store(true, Ordering::SeqCst);
        self.force_close.notify_waiters();
    }

    /// Completes once [`Shared::close_tunnels`] has been called (at once if
    /// it was already). Cheaper than a `watch` receiver: a tunnel holds this
    /// future for its whole life.
    pub async fn tunnels_closed(&self) {
        // Registered before the flag is read, so a call in between is seen.
        let notified = self.force_close.notified();
        if self.forced.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new config in force for new connections.
    pub fn install(&self, config: Config) -> Arc<Generation> {
        let previous = self.current();
        let next = Arc::new(Generation::build(previous.id + 1, config, Some(&previous)));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        let mut gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.retain(|g| g.strong_count() > 0);
        gens.push(Arc::downgrade(&next));
        drop(gens);
        metrics::gauge!(m::CONFIG_GENERATION).set(next.id as f64);
        self.publish_old_tunnels();
        next
    }

    /// Tunnels open on generations older than the current one.
    pub fn tunnels_on_old_config(&self) -> usize {
        let current = self.current().id;
        let gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.iter()
            .filter_map(Weak::upgrade)
            .filter(|g| g.id < current)
            .map(|g| g.tunnels.load(Ordering::Relaxed))
            .sum()
    }

    /// Updates the `tunnels_on_old_config` gauge (before each scrape).
    pub fn publish_old_tunnels(&self) {
        metrics::gauge!(m::TUNNELS_ON_OLD_CONFIG).set(self.tunnels_on_old_config() as f64);
    }

    /// Open tunnels across all generations.
    pub fn open_tunnels(&self) -> usize {
        let gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.iter()
            .filter_map(Weak::upgrade)
            .map(|g| g.tunnels.load(Ordering::Relaxed))
            .sum()
    }
}
