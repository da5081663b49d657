//! What the connection pipeline reads: the config generation in force and
//! the process-wide counters.
//!
//! A [`Generation`] is immutable and shared through an `Arc`: a connection
//! takes the current one when it is accepted and keeps it to the end, so a
//! reload never changes the route, pool or timeouts of an open tunnel.
//!
//! Label-driven routes change with Marathon, not with the config: each
//! generation holds them in a [`LabelOverlay`] that discovery updates swap
//! as a whole (no new generation). A connection clones the `Arc` of its
//! route once, at lookup, so a route that disappears keeps its open
//! tunnels.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use crate::activity::Rates;
use crate::admission::Sources;
use crate::metrics::{self as m, Counter, EndLabel, Gauge, Histogram, Outcome, ProcessMetrics};
use crate::recent::Recent;
use crate::table::{Layer, MatchKind, RouteId, RouteTable};
use crate::upstream::{Pool, PoolKey};
use config::{Config, IpNet, MarathonApp, MarathonPort, NamePattern, ProxyProtocol, RouteConfig};
use discovery::{LabelIssue, LabelRoute, LabelRoutes};

/// A route as the pipeline uses it.
#[derive(Debug)]
pub(crate) struct Route {
    /// The configured name (a metric label).
    pub(crate) name: String,
    /// Its index in [`Config::routes`]; `None` for a label route.
    pub(crate) static_id: Option<RouteId>,
    /// Its endpoints.
    pub(crate) pool: Arc<Pool>,
    /// Who may use it; empty means everyone.
    pub(crate) allow_sources: Vec<IpNet>,
    /// Header to send upstream before the ClientHello.
    pub(crate) proxy_protocol: ProxyProtocol,
    /// Live byte counters, client to upstream.
    pub(crate) bytes_up: Counter,
    /// Live byte counters, upstream to client.
    pub(crate) bytes_down: Counter,
    /// `sniroute_active_tunnels{route}`.
    pub(crate) active_tunnels: Gauge,
    /// `sniroute_upstream_connect_seconds{route}`.
    pub(crate) connect_seconds: Histogram,
    /// `sniroute_tunnel_duration_seconds{route}`.
    pub(crate) tunnel_seconds: Histogram,
    /// `sniroute_tunnels_ended_total{route, end}`, by [`EndLabel::index`].
    pub(crate) tunnels_ended: [Counter; EndLabel::ALL.len()],
    /// A label route's `sniroute_connections_total` handles, by listener
    /// index × outcomes + outcome (those with a route only); empty for a
    /// static route, whose handles the generation holds. Held here so the
    /// series live as long as the route does (or its last tunnel).
    connections: Vec<Option<Counter>>,
}

impl Route {
    /// The route of `rc` with `pool`; `static_id` as in [`Route::static_id`].
    fn new(rc: &RouteConfig, pool: Arc<Pool>, static_id: Option<RouteId>) -> Self {
        let r = m::registry();
        let route = [("route", rc.name.as_str())];
        let bytes = |d: m::Direction| {
            r.counter(
                &m::BYTES_TOTAL,
                &[("route", rc.name.as_str()), ("direction", d.as_str())],
            )
        };
        let [bytes_up, bytes_down] = std::array::from_fn(|i| bytes(m::Direction::ALL[i]));
        Route {
            name: rc.name.clone(),
            static_id,
            pool,
            allow_sources: rc.allow_sources.clone(),
            proxy_protocol: rc.proxy_protocol.clone(),
            bytes_up,
            bytes_down,
            active_tunnels: r.gauge(&m::ACTIVE_TUNNELS, &route),
            connect_seconds: r.histogram(&m::UPSTREAM_CONNECT_SECONDS, &route),
            tunnel_seconds: r.histogram(&m::TUNNEL_DURATION_SECONDS, &route),
            tunnels_ended: std::array::from_fn(|i| {
                r.counter(
                    &m::TUNNELS_ENDED_TOTAL,
                    &[
                        ("route", rc.name.as_str()),
                        ("end", EndLabel::ALL[i].as_str()),
                    ],
                )
            }),
            connections: Vec::new(),
        }
    }

    /// Whether `ip` may use this route.
    pub(crate) fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_sources.is_empty() || self.allow_sources.iter().any(|net| net.contains(ip))
    }
}

/// One loaded config with everything derived from it.
#[derive(Debug)]
pub(crate) struct Generation {
    /// 1 for the config loaded at start, +1 per successful reload.
    pub(crate) id: u64,
    /// The config itself.
    pub(crate) config: Arc<Config>,
    /// Server name lookup.
    pub(crate) table: RouteTable,
    /// Routes by [`RouteId`].
    pub(crate) routes: Vec<Arc<Route>>,
    /// The label-driven routes in force now, swapped as a whole by
    /// [`Generation::set_labels`].
    labels: RwLock<Arc<LabelOverlay>>,
    /// The configured listener addresses, in config order: a listener's
    /// index here is its index in the routing table's defaults.
    pub(crate) listeners: Vec<SocketAddr>,
    /// `sniroute_connections_total{listener, route, result}` for every
    /// combination that can occur, by listener: see [`Generation::count`].
    connections: Vec<Vec<Option<Counter>>>,
    /// Tunnels routed by this generation, open now.
    pub(crate) tunnels: AtomicUsize,
    /// How this generation's tunnels move bytes (timeouts and forwarding
    /// from the config); built once, borrowed by every pump.
    pub(crate) pump: splice::Options,
}

impl Generation {
    /// Builds generation `id` from `config`, reusing the pools of `live`
    /// generations whose routes have the same upstream settings, so health
    /// state and connection counts carry over (also when a config comes
    /// back: A → B → A finds A's pools still used by A's open tunnels).
    pub(crate) fn build(id: u64, config: Config, live: &[Arc<Generation>]) -> Self {
        let table = RouteTable::new(&config);
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(id, rc)| Arc::new(Route::new(rc, reuse_pool(PoolKey::of(rc), live), Some(id))))
            .collect();
        let listeners: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        let connections = listeners
            .iter()
            .map(|addr| connection_counters(&addr.to_string(), &routes))
            .collect();
        let pump = splice::Options {
            idle_timeout: config.timeouts.idle,
            force_copy: matches!(config.forwarding, config::Forwarding::Copy),
            // `pipeline::serve` closes both sockets as soon as the pump
            // returns.
            close_passes_last_eof: true,
            ..splice::Options::default()
        };
        Self {
            id,
            pump,
            config: Arc::new(config),
            table,
            routes,
            labels: RwLock::new(Arc::new(LabelOverlay::default())),
            listeners,
            connections,
            tunnels: AtomicUsize::new(0),
        }
    }

    /// The route for `server_name` on the listener with index `listener`:
    /// static exact names, label exact names, wildcards (longest suffix,
    /// static first), defaults; see [`RouteTable::lookup_layered`]. One
    /// read lock and one `Arc` clone, nothing held across an await.
    pub(crate) fn lookup(
        &self,
        server_name: Option<&str>,
        listener: Option<usize>,
    ) -> Option<(Arc<Route>, MatchKind)> {
        let labels = self.labels.read().unwrap_or_else(|e| e.into_inner());
        let (layer, id, kind) = self
            .table
            .lookup_layered(&labels.table, server_name, listener)?;
        let route = match layer {
            Layer::Static => self.routes.get(id),
            Layer::Label => labels.routes.get(id),
        };
        route.map(|r| (r.clone(), kind))
    }

    /// The label routes in force now.
    pub(crate) fn labels(&self) -> Arc<LabelOverlay> {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `found` in force as this generation's label routes, unless it
    /// already is: conflicts with the static routes decided, pools reused
    /// by key (from `live` generations, this one included), endpoints set.
    pub(crate) fn set_labels(&self, found: &Arc<LabelRoutes>, live: &[Arc<Generation>]) {
        if Arc::ptr_eq(&self.labels().source, found) {
            return;
        }
        let (kept, conflicts) = crate::table::settle(&self.config, &found.routes);
        let existing: Vec<Arc<Route>> = live
            .iter()
            .rev()
            .flat_map(|g| g.labels().routes.clone())
            .collect();
        let mut routes = Vec::new();
        let mut info = Vec::new();
        for (label, names) in found.routes.iter().zip(kept) {
            if names.is_empty() {
                continue;
            }
            let rc = label_route_config(label, names);
            let key = PoolKey::of(&rc);
            let pool = existing
                .iter()
                .find(|r| r.pool.key() == &key)
                .map(|r| r.pool.clone())
                .unwrap_or_else(|| reuse_pool(key, live));
            pool.set_discovered(&label.endpoints);
            let name = rc.name.as_str();
            let connections = self
                .listeners
                .iter()
                .flat_map(|l| {
                    let listener = l.to_string();
                    Outcome::ALL.iter().map(move |o| {
                        o.has_route().then(|| {
                            m::registry().counter(
                                &m::CONNECTIONS_TOTAL,
                                &[
                                    ("listener", listener.as_str()),
                                    ("route", name),
                                    ("result", o.as_str()),
                                ],
                            )
                        })
                    })
                })
                .collect();
            routes.push(Arc::new(Route {
                connections,
                ..Route::new(&rc, pool, None)
            }));
            info.push(LabelRoute {
                server_names: rc.server_names,
                ..label.clone()
            });
        }
        let table = RouteTable::of_labels(info.iter().map(|l| l.server_names.as_slice()));
        let overlay = LabelOverlay {
            source: found.clone(),
            table,
            routes,
            info,
            conflicts,
        };
        *self.labels.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(overlay);
    }

    /// The index of the listener configured as `addr`, if this generation
    /// has it.
    pub(crate) fn listener_index(&self, addr: SocketAddr) -> Option<usize> {
        self.listeners.iter().position(|&a| a == addr)
    }

    /// Counts one connection on the listener configured as `listener` in
    /// `sniroute_connections_total`. `route` is `None` for fates decided
    /// before a route is known (see [`Outcome::has_route`]).
    pub(crate) fn count(&self, listener: SocketAddr, route: Option<&Route>, outcome: Outcome) {
        let counter = match route {
            // A label route holds its own.
            Some(
                r @ Route {
                    static_id: None, ..
                },
            ) => self.listener_index(listener).and_then(|i| {
                r.connections
                    .get(i * Outcome::ALL.len() + outcome.index())?
                    .as_ref()
            }),
            _ => {
                let id = route.and_then(|r| r.static_id);
                let slot = id.map_or(0, |id| id + 1) * Outcome::ALL.len() + outcome.index();
                self.listener_index(listener)
                    .and_then(|i| self.connections[i].get(slot))
                    .and_then(Option::as_ref)
            }
        };
        match counter {
            Some(c) => c.increment(1),
            // A listener a reload removed, a label route, or a combination
            // the table does not expect: counted all the same, through the
            // registry.
            None => {
                let route = route.map_or("none", |r| r.name.as_str());
                m::registry()
                    .counter(
                        &m::CONNECTIONS_TOTAL,
                        &[
                            ("listener", &listener.to_string()),
                            ("route", route),
                            ("result", outcome.as_str()),
                        ],
                    )
                    .increment(1);
            }
        }
    }

    /// `sniroute_connections_total` for `route` (`None`: decided before a
    /// route was known) and `outcome`, summed over this generation's
    /// listeners: what [`Generation::count`] counted, for `/status`.
    pub(crate) fn connections_of(&self, route: Option<RouteId>, outcome: Outcome) -> u64 {
        let slot = route.map_or(0, |id| id + 1) * Outcome::ALL.len() + outcome.index();
        self.connections
            .iter()
            .filter_map(|listener| listener.get(slot)?.as_ref())
            .map(Counter::get)
            .sum()
    }
}

/// The `connections_total` handles of one listener, indexed by
/// `(route id + 1, or 0 for none) × outcomes + outcome`: every combination
/// that can occur, at 0 from the start.
fn connection_counters(listener: &str, routes: &[Arc<Route>]) -> Vec<Option<Counter>> {
    let r = m::registry();
    let names = std::iter::once(None).chain(routes.iter().map(|r| Some(r.name.as_str())));
    let mut out = Vec::with_capacity((routes.len() + 1) * Outcome::ALL.len());
    for route in names {
        for &outcome in Outcome::ALL {
            let possible = outcome.has_route() == route.is_some();
            out.push(possible.then(|| {
                r.counter(
                    &m::CONNECTIONS_TOTAL,
                    &[
                        ("listener", listener),
                        ("route", route.unwrap_or("none")),
                        ("result", outcome.as_str()),
                    ],
                )
            }));
        }
    }
    out
}

/// A pool for `key`: the one a `live` generation's static route uses, else
/// a new one.
fn reuse_pool(key: PoolKey, live: &[Arc<Generation>]) -> Arc<Pool> {
    live.iter()
        .rev()
        .flat_map(|g| g.routes.iter())
        .find(|r| r.pool.key() == &key)
        .map(|r| r.pool.clone())
        .unwrap_or_else(|| Pool::start(key))
}

/// A label route as a route config with `names` (those it keeps), so that
/// its pool is keyed, balanced and health-checked like a configured
/// `marathon_app` route's.
fn label_route_config(label: &LabelRoute, names: Vec<NamePattern>) -> RouteConfig {
    RouteConfig {
        name: label.name.clone(),
        server_names: names,
        upstreams: Vec::new(),
        balance: label.balance.clone(),
        health_check: label.health_check.clone(),
        proxy_protocol: label.proxy_protocol.clone(),
        allow_sources: label.allow_sources.clone(),
        dcos_service: None,
        marathon_app: Some(MarathonApp {
            id: label.app_id.clone(),
            port: MarathonPort::Index(label.port_index),
        }),
        mesos_tasks: None,
        outlier_detection: Some(config::OutlierDetection::default()),
    }
}

/// The label-driven routes of one generation, as discovery last found
/// them, after the conflicts with its static routes.
#[derive(Debug, Default)]
pub(crate) struct LabelOverlay {
    /// What discovery sent (to skip an update that changes nothing).
    source: Arc<LabelRoutes>,
    /// Their names.
    table: RouteTable,
    /// The routes, by the ids of `table`.
    pub(crate) routes: Vec<Arc<Route>>,
    /// Each route as discovered, with the names it keeps, by the same ids.
    pub(crate) info: Vec<LabelRoute>,
    /// Conflicts with the static routes (see [`crate::table::settle`]).
    pub(crate) conflicts: Vec<LabelIssue>,
}

/// Process-wide state shared by listeners, connections and the admin
/// endpoint.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Generation>>,
    /// Every generation still referenced (by open tunnels), for the
    /// `tunnels_on_old_config` gauge.
    generations: Mutex<Vec<Weak<Generation>>>,
    /// Connections being handled (ClientHello phase and tunnels); see
    /// [`crate::admission`].
    pub(crate) connections: AtomicUsize,
    /// Connections whose ClientHello is not complete yet.
    pub(crate) pending_hellos: AtomicUsize,
    /// Connections and pending hellos per source.
    pub(crate) sources: Sources,
    /// Set once listeners are bound; cleared when draining starts.
    pub(crate) ready: AtomicBool,
    /// Set when draining starts.
    pub(crate) draining: AtomicBool,
    /// Set, then notified, when the drain time is over: open tunnels must
    /// close (see [`Shared::close_tunnels`]).
    forced: AtomicBool,
    force_close: tokio::sync::Notify,
    /// When the process started.
    pub(crate) started: Instant,
    /// Tunnels closed because the drain time ran out.
    pub(crate) drain_closed: AtomicU64,
    /// The series that live as long as the process.
    pub(crate) metrics: ProcessMetrics,
    /// The last refusals, for the admin endpoint.
    pub(crate) recent: Recent,
    /// Per-route samples for the rates the admin endpoint shows.
    pub(crate) rates: Rates,
    /// What Marathon discovery knows now (see [`Shared::apply_discovered`]).
    discovered: RwLock<discovery::Discovered>,
    /// What Mesos discovery knows now.
    mesos_discovered: RwLock<discovery::Discovered>,
    /// The label errors and conflicts logged and counted already, so each
    /// is logged and counted once, when it appears.
    reported_issues: Mutex<HashSet<LabelIssue>>,
}

pub(crate) use crate::metrics::DiscoverySource;

impl Shared {
    /// State for the first generation.
    pub(crate) fn new(first: Generation) -> Arc<Self> {
        let first = Arc::new(first);
        let metrics = ProcessMetrics::new();
        metrics.generation.set(first.id as i64);
        let rates = Rates::starting(&first);
        Arc::new(Self {
            generations: Mutex::new(vec![Arc::downgrade(&first)]),
            current: RwLock::new(first),
            connections: AtomicUsize::new(0),
            pending_hellos: AtomicUsize::new(0),
            sources: Sources::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            force_close: tokio::sync::Notify::new(),
            started: Instant::now(),
            drain_closed: AtomicU64::new(0),
            metrics,
            recent: Recent::default(),
            rates,
            discovered: RwLock::new(discovery::Discovered::default()),
            mesos_discovered: RwLock::new(discovery::Discovered::default()),
            reported_issues: Mutex::new(HashSet::new()),
        })
    }

    fn discovered_lock(&self, source: DiscoverySource) -> &RwLock<discovery::Discovered> {
        match source {
            DiscoverySource::Marathon => &self.discovered,
            DiscoverySource::Mesos => &self.mesos_discovered,
        }
    }

    /// What `source` knows now.
    pub(crate) fn discovered(&self, source: DiscoverySource) -> discovery::Discovered {
        self.discovered_lock(source)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether discovery lets the router be ready: every `required`
    /// source has done its first sync.
    pub(crate) fn discovery_ready(&self) -> bool {
        let generation = self.current();
        let d = &generation.config.discovery;
        let synced = |source| {
            self.discovered_lock(source)
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .synced
        };
        let marathon =
            !d.marathon.as_ref().is_some_and(|m| m.required) || synced(DiscoverySource::Marathon);
        let mesos = !d.mesos.as_ref().is_some_and(|m| m.required) || synced(DiscoverySource::Mesos);
        marathon && mesos
    }

    /// Puts what `source` found in force: the discovered pools of every
    /// live generation take their route's endpoints. Under the same lock
    /// as [`Shared::install`], so a generation being installed cannot miss
    /// an update. No new generation: the routes and pools stay.
    pub(crate) fn apply_discovered(&self, source: DiscoverySource, found: discovery::Discovered) {
        let gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        *self
            .discovered_lock(source)
            .write()
            .unwrap_or_else(|e| e.into_inner()) = found;
        let live: Vec<Arc<Generation>> = gens.iter().filter_map(Weak::upgrade).collect();
        for g in &live {
            self.feed(g, &live);
        }
        drop(live);
        self.report_label_issues();
    }

    /// The label errors and conflicts in force now: discovery's, then the
    /// current generation's conflicts with its static routes.
    pub(crate) fn label_issues(&self) -> Vec<LabelIssue> {
        let mut all = self
            .discovered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .labels
            .issues
            .clone();
        all.extend(self.current().labels().conflicts.iter().cloned());
        all
    }

    /// Logs and counts the label errors and conflicts that were not there
    /// at the last update: once per change, not once per sync.
    fn report_label_issues(&self) {
        let now = self.label_issues();
        let mut reported = self
            .reported_issues
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for issue in &now {
            if reported.contains(issue) {
                continue;
            }
            self.metrics.label_issue(issue.kind);
            let route = issue.route.as_deref().unwrap_or("-");
            match issue.kind {
                discovery::IssueKind::Conflict(_) => tracing::warn!(
                    kind = issue.kind.as_str(), app = %issue.app_id, route, problem = %issue.message,
                    "label route conflict"
                ),
                _ => tracing::warn!(
                    kind = issue.kind.as_str(), app = %issue.app_id, route, problem = %issue.message,
                    "label route refused"
                ),
            }
        }
        *reported = now.into_iter().collect();
    }

    /// Gives `generation`'s discovered pools their endpoints as known now,
    /// each from its own source, and puts Marathon's label routes in force
    /// (pools reused from `live`).
    fn feed(&self, generation: &Generation, live: &[Arc<Generation>]) {
        let marathon = self.discovered.read().unwrap_or_else(|e| e.into_inner());
        let mesos = self
            .mesos_discovered
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for route in &generation.routes {
            if route.pool.discovered().is_some() {
                let found = if route.pool.is_mesos_tasks() {
                    &mesos
                } else {
                    &marathon
                };
                let addrs = found.routes.get(&route.name).map_or(&[][..], Vec::as_slice);
                route.pool.set_discovered(addrs);
            }
        }
        let labels = marathon.labels.clone();
        drop((marathon, mesos));
        generation.set_labels(&labels, live);
    }

    /// Closes every open tunnel, and any opened from now on (the drain
    /// time is over).
    pub(crate) fn close_tunnels(&self) {
        self.forced.store(true, Ordering::SeqCst);
        self.force_close.notify_waiters();
    }

    /// Completes once [`Shared::close_tunnels`] has been called (at once if
    /// it was already). Cheaper than a `watch` receiver: a tunnel holds this
    /// future for its whole life.
    pub(crate) async fn tunnels_closed(&self) {
        // Registered before the flag is read, so a call in between is seen.
        let notified = self.force_close.notified();
        if self.forced.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// The generation in force.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a new config in force for new connections.
    pub(crate) fn install(&self, config: Config) -> Arc<Generation> {
        let previous = self.current();
        let mut gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.retain(|g| g.strong_count() > 0);
        let mut live: Vec<Arc<Generation>> = gens.iter().filter_map(Weak::upgrade).collect();
        let next = Arc::new(Generation::build(previous.id + 1, config, &live));
        live.push(next.clone());
        self.feed(&next, &live);
        drop(live);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        gens.push(Arc::downgrade(&next));
        drop(gens);
        self.report_label_issues();
        self.metrics.generation.set(next.id as i64);
        self.publish_old_tunnels();
        next
    }

    /// Tunnels open on generations older than the current one.
    pub(crate) fn tunnels_on_old_config(&self) -> usize {
        let current = self.current().id;
        let gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.iter()
            .filter_map(Weak::upgrade)
            .filter(|g| g.id < current)
            .map(|g| g.tunnels.load(Ordering::Relaxed))
            .sum()
    }

    /// Updates the `tunnels_on_old_config` gauge (before each scrape).
    pub(crate) fn publish_old_tunnels(&self) {
        self.metrics
            .tunnels_on_old_config
            .set(self.tunnels_on_old_config() as i64);
    }

    /// Open tunnels across all generations.
    pub(crate) fn open_tunnels(&self) -> usize {
        let gens = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        gens.iter()
            .filter_map(Weak::upgrade)
            .map(|g| g.tunnels.load(Ordering::Relaxed))
            .sum()
    }
}
