//! Upstream pools: a route's upstreams resolved into endpoints, with their
//! states, balancing and the connect loop.
//!
//! Each endpoint is in one of five states ([`EndpointState`]): `unknown`
//! before its first check, `healthy`, `unhealthy` (its checks fail: tried
//! only when nothing healthy or unknown is left), `ejected` (outlier
//! detection took it out after connect failures in a row on live traffic,
//! for an ejection that doubles each time in a row, up to 5 minutes) and
//! `misrouted` (its certificate is not the route's cluster's: it never gets
//! traffic). Every change is logged once and shown in
//! `sniroute_upstream_state`; open tunnels are never cut by one.
//!
//! A pool outlives config generations when its route's upstream settings do
//! not change, so health state and connection counts survive a reload.
//! Its maintenance task (DNS refresh, health checks) holds only a `Weak`
//! reference and ends by itself once the last generation using the pool is
//! gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use crate::health::{Checker, Outcome};
use crate::metrics::{self as m, CheckResult, Counter, EndpointState, Gauge, MapRef as _};
use config::{
    Balance, HealthCheck, Host, MarathonApp, MesosTasks, OutlierDetection, RouteConfig,
    UpstreamAddr, MAX_EJECTION,
};

/// How often upstream host names are resolved again.
pub(crate) const DNS_REFRESH: Duration = Duration::from_secs(30);
/// The most endpoints one connection tries before giving up.
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 4;

/// One address to connect to.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The resolved address.
    pub(crate) addr: SocketAddr,
    /// The configured upstream it came from (`host:port`).
    pub(crate) upstream: String,
    /// The `upstream` metric label: the address as `ip:port`.
    label: String,
    /// The route's name, for logs.
    route: String,
    /// The [`EndpointState`] now, as its index (read on every connection
    /// without a lock).
    state: AtomicU8,
    /// Everything else about the state, changed under this lock only.
    status: Mutex<Status>,
    /// `sniroute_upstream_healthy{route, upstream}`; leaves `/metrics`
    /// with the endpoint.
    healthy_gauge: Gauge,
    /// `sniroute_upstream_state{route, upstream, state}`, one per state.
    state_gauges: [Gauge; EndpointState::ALL.len()],
    /// `sniroute_upstream_connect_failures_total{route, upstream}`.
    connect_failures: Counter,
    /// The last failed connect: when, and the error (for `/status`).
    last_error: Mutex<Option<(SystemTime, String)>>,
    active: AtomicUsize,
    successes: AtomicU32,
    failures: AtomicU32,
}

/// The parts of an endpoint's state that change together.
#[derive(Debug, Default)]
struct Status {
    /// Why it is in its state, in words (empty when healthy or unknown).
    reason: String,
    /// When its ejection ends (while ejected).
    ejected_until: Option<tokio::time::Instant>,
    /// Ejections since it last took a connection: each doubles the next.
    ejections_in_a_row: u32,
    /// Failed connects on client connections since the last success.
    connect_failures_in_a_row: u32,
    /// The last active check.
    last_check: Option<LastCheck>,
}

/// The last active check of an endpoint, for `/status`.
#[derive(Clone, Debug)]
pub(crate) struct LastCheck {
    /// When it ended.
    pub(crate) time: SystemTime,
    /// How it ended.
    pub(crate) result: CheckResult,
    /// How long it took.
    pub(crate) latency: Duration,
    /// Why it failed (empty when it passed).
    pub(crate) reason: String,
}

impl Endpoint {
    /// A new endpoint: `unknown` until its first check when `checked`,
    /// else `healthy`.
    fn new(addr: SocketAddr, upstream: String, route: &str, checked: bool) -> Self {
        let label = addr.to_string();
        let labels = [("route", route), ("upstream", label.as_str())];
        let r = m::registry();
        let healthy_gauge = r.gauge(&m::UPSTREAM_HEALTHY, &labels);
        let state_gauges = EndpointState::ALL.map_ref(|s| {
            r.gauge(
                &m::UPSTREAM_STATE,
                &[
                    ("route", route),
                    ("upstream", label.as_str()),
                    ("state", s.as_str()),
                ],
            )
        });
        let state = if checked {
            EndpointState::Unknown
        } else {
            EndpointState::Healthy
        };
        let ep = Self {
            addr,
            upstream,
            connect_failures: r.counter(&m::UPSTREAM_CONNECT_FAILURES_TOTAL, &labels),
            healthy_gauge,
            state_gauges,
            last_error: Mutex::new(None),
            label,
            route: route.to_owned(),
            state: AtomicU8::new(state.index() as u8),
            status: Mutex::new(Status::default()),
            active: AtomicUsize::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        };
        ep.publish();
        ep
    }

    /// The endpoint's state now.
    pub(crate) fn state(&self) -> EndpointState {
        EndpointState::ALL[usize::from(self.state.load(Ordering::Relaxed))]
    }

    /// Whether the endpoint passes its health checks (true without checks,
    /// unless ejected).
    pub(crate) fn is_healthy(&self) -> bool {
        self.state() == EndpointState::Healthy
    }

    /// Why the endpoint is in its state (empty when healthy or unknown).
    pub(crate) fn reason(&self) -> String {
        self.lock().reason.clone()
    }

    /// The last active check.
    pub(crate) fn last_check(&self) -> Option<LastCheck> {
        self.lock().last_check.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the endpoint in `state` for `reason`; logs the change once
    /// (warnings for the states that take traffic away).
    fn set_state(&self, status: &mut Status, state: EndpointState, reason: String) {
        let was = self.state();
        status.reason = reason;
        if was == state {
            return;
        }
        self.state.store(state.index() as u8, Ordering::Relaxed);
        self.publish();
        let (route, upstream, reason) = (&self.route, &self.label, &status.reason);
        let (from, to) = (was.as_str(), state.as_str());
        // The messages are an interface (tests and log alerts match them).
        match (was, state) {
            (EndpointState::Unknown, EndpointState::Healthy) => tracing::info!(
                route = %route, upstream = %upstream, from, state = to, "upstream is healthy"
            ),
            (_, EndpointState::Healthy) => tracing::info!(
                route = %route, upstream = %upstream, from, state = to, "upstream is healthy again"
            ),
            (_, EndpointState::Unknown) => {}
            (_, EndpointState::Unhealthy) => tracing::warn!(
                route = %route, upstream = %upstream, from, state = to, reason = %reason,
                "upstream failed its health checks; marked down"
            ),
            (_, EndpointState::Ejected) => tracing::warn!(
                route = %route, upstream = %upstream, from, state = to, reason = %reason,
                "upstream ejected by outlier detection"
            ),
            (_, EndpointState::Misrouted) => tracing::warn!(
                route = %route, upstream = %upstream, from, state = to, reason = %reason,
                "upstream is misrouted: its certificate is not the route's cluster's; it gets no traffic"
            ),
        }
    }

    fn publish(&self) {
        let state = self.state();
        self.healthy_gauge
            .set(i64::from(state == EndpointState::Healthy));
        for (s, g) in EndpointState::ALL.iter().zip(&self.state_gauges) {
            g.set(i64::from(*s == state));
        }
    }

    /// Tunnels open to this endpoint now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The metric label of the endpoint.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Failed connect attempts (`sniroute_upstream_connect_failures_total`).
    pub(crate) fn connect_failures(&self) -> u64 {
        self.connect_failures.get()
    }

    /// The last failed connect attempt: when, and why.
    pub(crate) fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends an ejection whose time is over, where no check has to pass
    /// first (`checked` false). Returns whether it may take connections.
    fn usable(&self, checked: bool) -> bool {
        match self.state() {
            EndpointState::Misrouted => false,
            EndpointState::Ejected => {
                let mut status = self.lock();
                let over = status
                    .ejected_until
                    .is_none_or(|until| tokio::time::Instant::now() >= until);
                if over && !checked && self.state() == EndpointState::Ejected {
                    status.ejected_until = None;
                    self.set_state(&mut status, EndpointState::Healthy, String::new());
                    return true;
                }
                false
            }
            _ => true,
        }
    }
}

/// Counts a tunnel against its endpoint while it lives.
#[derive(Debug)]
pub(crate) struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What makes two routes' pools interchangeable across a reload.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PoolKey {
    route: String,
    upstreams: Vec<UpstreamAddr>,
    balance: Balance,
    health_check: Option<HealthCheck>,
    outlier_detection: Option<OutlierDetection>,
    /// The Marathon app port whose tasks are the endpoints (then
    /// `upstreams` is empty and [`Pool::set_discovered`] sets them).
    marathon_app: Option<MarathonApp>,
    /// The Mesos tasks that are the endpoints (likewise).
    mesos_tasks: Option<MesosTasks>,
}

impl PoolKey {
    /// The key of a configured route.
    pub(crate) fn of(route: &RouteConfig) -> Self {
        Self {
            route: route.name.clone(),
            upstreams: route.upstreams.clone(),
            balance: route.balance.clone(),
            health_check: route.health_check.clone(),
            outlier_detection: route.outlier_detection.clone(),
            marathon_app: route.marathon_app.clone(),
            mesos_tasks: route.mesos_tasks.clone(),
        }
    }
}

/// A route's endpoints.
#[derive(Debug)]
pub(crate) struct Pool {
    key: PoolKey,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    next: AtomicUsize,
    /// When a connection last triggered a lookup (see [`Pool::connect`]);
    /// held during that lookup so concurrent connections share it.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    /// Discovered pools: how many endpoints discovery gives the route.
    discovered_count: Option<Gauge>,
    /// The active checks (`None` without checks).
    checker: Option<Arc<Checker>>,
    /// `sniroute_upstream_checks_total{route, result}`, every result at 0
    /// from the start (empty without checks).
    checks: Vec<Counter>,
    /// `sniroute_upstream_ejections_total{route}`.
    ejections: Counter,
    /// Held while deciding an ejection, so the share ejected is counted
    /// once per decision.
    eject_lock: Mutex<()>,
}

/// A route whose names have not resolved looks them up again for a
/// connection at most this often; the periodic refresh keeps going.
const ON_DEMAND_LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

/// Why no upstream connection could be made.
#[derive(Debug)]
pub(crate) struct Unavailable {
    /// Endpoints tried, each with its error.
    pub(crate) attempts: Vec<(SocketAddr, std::io::Error)>,
    /// Endpoints not tried: misrouted or ejected.
    pub(crate) excluded: Vec<(SocketAddr, EndpointState)>,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() && self.excluded.is_empty() {
            return f.write_str(
                "no upstream endpoint (names did not resolve, or discovery found no task)",
            );
        }
        if self.attempts.is_empty() {
            f.write_str("no endpoint may take connections:")?;
            for (i, (addr, state)) in self.excluded.iter().enumerate() {
                let sep = if i > 0 { "," } else { "" };
                write!(f, "{sep} {addr} is {}", state.as_str())?;
            }
            return Ok(());
        }
        for (i, (addr, e)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {e}")?;
        }
        for (i, (addr, state)) in self.excluded.iter().enumerate() {
            let sep = if i == 0 { "; not tried:" } else { "," };
            write!(f, "{sep} {addr} is {}", state.as_str())?;
        }
        Ok(())
    }
}

/// One connect attempt, bounded by `timeout`. Running out of descriptors
/// (`EMFILE`/`ENFILE` from `socket(2)`) is the router's state, not the
/// endpoint's: wait for one to free up within the same timeout instead of
/// failing the client at once or blaming the next endpoint.
async fn connect_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut starved = false;
    let attempt = async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if out_of_descriptors(&e) => {
                    starved = true;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    };
    let result = tokio::time::timeout(timeout, attempt).await;
    result.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            if starved {
                format!("no file descriptor became free within {timeout:?} (EMFILE)")
            } else {
                format!("connect timed out after {timeout:?}")
            },
        ))
    })
}

/// Whether `e` says the process or the system ran out of descriptors.
pub(crate) fn out_of_descriptors(e: &std::io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

impl Pool {
    /// A pool for `key`; literal IP upstreams become endpoints at once, host
    /// names on the first [`Pool::refresh`]. Starts its maintenance task.
    pub(crate) fn start(key: PoolKey) -> Arc<Self> {
        let checked = key.health_check.is_some();
        let endpoints = key
            .upstreams
            .iter()
            .filter_map(|u| match &u.host {
                Host::Ip(ip) => Some(Arc::new(Endpoint::new(
                    SocketAddr::new(*ip, u.port),
                    u.to_string(),
                    &key.route,
                    checked,
                ))),
                Host::Name(_) => None,
            })
            .collect();
        let pool = Arc::new(Self::new(key, endpoints));
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    /// The pool without its maintenance task.
    fn new(key: PoolKey, endpoints: Vec<Arc<Endpoint>>) -> Self {
        let r = m::registry();
        let route = [("route", key.route.as_str())];
        let checks = match &key.health_check {
            None => Vec::new(),
            Some(_) => CheckResult::ALL
                .iter()
                .map(|res| {
                    r.counter(
                        &m::UPSTREAM_CHECKS_TOTAL,
                        &[("route", key.route.as_str()), ("result", res.as_str())],
                    )
                })
                .collect(),
        };
        let discovered = key.marathon_app.is_some() || key.mesos_tasks.is_some();
        let discovered_count = discovered.then(|| r.gauge(&m::DISCOVERY_ENDPOINTS, &route));
        Self {
            discovered_count,
            checker: key
                .health_check
                .as_ref()
                .map(|hc| Arc::new(Checker::new(&key.route, hc))),
            checks,
            ejections: r.counter(&m::UPSTREAM_EJECTIONS_TOTAL, &route),
            eject_lock: Mutex::new(()),
            key,
            endpoints: RwLock::new(Arc::new(endpoints)),
            next: AtomicUsize::new(0),
            on_demand: tokio::sync::Mutex::new(None),
        }
    }

    /// The key this pool was built for.
    pub(crate) fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Whether its endpoints are health-checked (without checks, every
    /// endpoint counts as healthy).
    pub(crate) fn health_checked(&self) -> bool {
        self.key.health_check.is_some()
    }

    /// The endpoints now.
    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn has_names(&self) -> bool {
        self.key
            .upstreams
            .iter()
            .any(|u| matches!(u.host, Host::Name(_)))
    }

    /// [`Pool::refresh`] for a connection that found no endpoint: one at a
    /// time, and skipped when one ran in the last
    /// [`ON_DEMAND_LOOKUP_INTERVAL`].
    async fn refresh_on_demand(&self) {
        let mut last = self.on_demand.lock().await;
        if last.is_some_and(|at| at.elapsed() < ON_DEMAND_LOOKUP_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh().await;
    }

    /// Resolves host names again. An endpoint whose address is still
    /// returned keeps its health and counters; a name that fails to resolve
    /// keeps its previous addresses.
    pub(crate) async fn refresh(&self) {
        if !self.has_names() {
            return;
        }
        let old = self.endpoints();
        let mut new: Vec<Arc<Endpoint>> = Vec::new();
        for u in &self.key.upstreams {
            let addrs: Vec<SocketAddr> = match &u.host {
                Host::Ip(ip) => vec![SocketAddr::new(*ip, u.port)],
                Host::Name(name) => match tokio::net::lookup_host((name.as_str(), u.port)).await {
                    Ok(addrs) => addrs.collect(),
                    Err(e) => {
                        tracing::warn!(route = %self.key.route, upstream = %u, error = %e,
                                "upstream name did not resolve; keeping its last known addresses");
                        old.iter()
                            .filter(|ep| ep.upstream == u.to_string())
                            .map(|ep| ep.addr)
                            .collect()
                    }
                },
            };
            for addr in addrs {
                if new.iter().any(|ep| ep.addr == addr) {
                    continue;
                }
                let ep = old
                    .iter()
                    .find(|ep| ep.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::new(
                            addr,
                            u.to_string(),
                            &self.key.route,
                            self.health_checked(),
                        ))
                    });
                new.push(ep);
            }
        }
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    }

    /// What the endpoints are discovered from (a `marathon_app` or
    /// `mesos_tasks` route), as shown for each endpoint.
    pub(crate) fn discovered(&self) -> Option<String> {
        match (&self.key.marathon_app, &self.key.mesos_tasks) {
            (Some(app), _) => Some(app.to_string()),
            (None, Some(tasks)) => Some(tasks.to_string()),
            (None, None) => None,
        }
    }

    /// Whether the endpoints are Mesos tasks (else, when discovered,
    /// Marathon's).
    pub(crate) fn is_mesos_tasks(&self) -> bool {
        self.key.mesos_tasks.is_some()
    }

    /// Puts the discovered `addrs` in force (discovered pools only): an
    /// endpoint still listed keeps its state and counters, a new one
    /// starts unknown (healthy without checks), one no longer listed leaves the pool (its tunnels
    /// stay open, and its metric series go once the last one ends).
    pub(crate) fn set_discovered(&self, addrs: &[SocketAddr]) {
        let Some(from) = self.discovered() else {
            return;
        };
        if let Some(count) = &self.discovered_count {
            count.set(i64::try_from(addrs.len()).unwrap_or(i64::MAX));
        }
        let old = self.endpoints();
        if old.len() == addrs.len() && old.iter().zip(addrs).all(|(ep, a)| ep.addr == *a) {
            return;
        }
        let new: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|&addr| {
                old.iter()
                    .find(|ep| ep.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::new(
                            addr,
                            from.clone(),
                            &self.key.route,
                            self.health_checked(),
                        ))
                    })
            })
            .collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    }

    /// Endpoints in the order to try them: healthy and unknown ones first,
    /// by the route's balancing rule, then the unhealthy ones (with none
    /// healthy, they are still tried). Ejected and misrouted endpoints are
    /// left out: the second list.
    fn candidates_and_excluded(&self) -> (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>) {
        let all = self.endpoints();
        let n = all.len();
        if n == 0 {
            return (Vec::new(), Vec::new());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let checked = self.health_checked();
        let (mut order, excluded): (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>) = all[start..]
            .iter()
            .chain(&all[..start])
            .cloned()
            .partition(|ep| ep.usable(checked));
        let unhealthy = |ep: &Arc<Endpoint>| ep.state() == EndpointState::Unhealthy;
        match self.key.balance {
            Balance::RoundRobin => order.sort_by_key(unhealthy),
            // Stable sort: among equals, the round-robin rotation decides.
            Balance::LeastConnections => order.sort_by_key(|ep| (unhealthy(ep), ep.active())),
        }
        (order, excluded)
    }

    /// The endpoints that may take a connection, in the order to try them
    /// (see [`Pool::connect`]).
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> Vec<Arc<Endpoint>> {
        self.candidates_and_excluded().0
    }

    /// Connects to the first endpoint that answers, each attempt bounded
    /// by `timeout`. Nothing has been sent upstream before a connect
    /// succeeds, so moving on to the next endpoint is always safe.
    ///
    /// # Errors
    /// [`Unavailable`] when every attempt failed.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(TcpStream, EndpointGuard, Duration), Unavailable> {
        let (mut candidates, mut excluded) = self.candidates_and_excluded();
        if candidates.is_empty() && excluded.is_empty() && self.has_names() {
            // Names not resolved yet (first connection after start) or not
            // resolving: look up once for everyone waiting, at most once a
            // second, and never longer than the connect timeout, so a slow
            // or dead resolver cannot hold clients or be flooded.
            let _ = tokio::time::timeout(timeout, self.refresh_on_demand()).await;
            (candidates, excluded) = self.candidates_and_excluded();
        }
        let mut attempts = Vec::new();
        for ep in candidates.into_iter().take(MAX_CONNECT_ATTEMPTS) {
            let started = Instant::now();
            match connect_once(ep.addr, timeout).await {
                Ok(stream) => {
                    ep.active.fetch_add(1, Ordering::Relaxed);
                    self.connected(&ep);
                    return Ok((stream, EndpointGuard(ep), started.elapsed()));
                }
                Err(e) => {
                    ep.connect_failures.increment(1);
                    *ep.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((SystemTime::now(), e.to_string()));
                    self.connect_failed(&ep, &e);
                    attempts.push((ep.addr, e));
                }
            }
        }
        Err(Unavailable {
            attempts,
            excluded: excluded.iter().map(|ep| (ep.addr, ep.state())).collect(),
        })
    }

    /// A client connection reached `ep`: its run of failures (and of
    /// ejections) is over.
    fn connected(&self, ep: &Endpoint) {
        let mut status = ep.lock();
        status.connect_failures_in_a_row = 0;
        status.ejections_in_a_row = 0;
    }

    /// A client connection failed to connect to `ep`: outlier detection
    /// ejects it after `consecutive_failures` in a row, unless that would
    /// eject more than `max_ejected_percent` of the endpoints or leave none
    /// that may take connections.
    fn connect_failed(&self, ep: &Endpoint, error: &std::io::Error) {
        let Some(od) = &self.key.outlier_detection else {
            return;
        };
        if out_of_descriptors(error) {
            return; // the router's state, not the endpoint's
        }
        let _decision = self
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut status = ep.lock();
        status.connect_failures_in_a_row += 1;
        let failures = status.connect_failures_in_a_row;
        if failures < od.consecutive_failures
            || matches!(
                ep.state(),
                EndpointState::Ejected | EndpointState::Misrouted
            )
        {
            return;
        }
        // The others' states: no lock of theirs is held (ours is, but `ep`
        // is skipped by address).
        let all = self.endpoints();
        let others = all.iter().filter(|o| o.addr != ep.addr);
        let (mut ejected, mut usable) = (0usize, 0usize);
        for o in others {
            match o.state() {
                EndpointState::Ejected => ejected += 1,
                EndpointState::Misrouted => {}
                _ => usable += 1,
            }
        }
        let allowed = (ejected + 1) * 100 <= od.max_ejected_percent as usize * all.len();
        if !allowed || usable == 0 {
            tracing::debug!(route = %self.key.route, upstream = %ep.label, failures,
                "not ejected: the route keeps at least one endpoint and ejects at most max_ejected_percent");
            return;
        }
        let doubling = status.ejections_in_a_row.min(16);
        let length = od
            .base_ejection
            .saturating_mul(1 << doubling)
            .min(MAX_EJECTION);
        status.ejections_in_a_row += 1;
        let in_a_row = status.ejections_in_a_row;
        status.connect_failures_in_a_row = 0;
        status.ejected_until = Some(tokio::time::Instant::now() + length);
        ep.successes.store(0, Ordering::Relaxed);
        self.ejections.increment(1);
        ep.set_state(
            &mut status,
            EndpointState::Ejected,
            format!(
                "ejected for {} after {failures} connect failures in a row (ejection {} in a row): {error}",
                config::format_duration(length),
                in_a_row
            ),
        );
    }

    /// One round of active health checks, every endpoint at once. The
    /// CA and credentials of HTTPS checks are read again first.
    async fn check_health(&self, hc: &HealthCheck) {
        let Some(checker) = &self.checker else {
            return;
        };
        checker.reload();
        let mut set = tokio::task::JoinSet::new();
        for ep in self.endpoints().iter().cloned() {
            let checker = checker.clone();
            set.spawn(async move {
                let outcome = checker.check(ep.addr).await;
                (ep, outcome)
            });
        }
        while let Some(Ok((ep, outcome))) = set.join_next().await {
            let Some(outcome) = outcome else {
                tracing::info!(route = %self.key.route, upstream = %ep.label,
                    "health check skipped: no file descriptor for the probe");
                continue;
            };
            self.apply_check(&ep, hc, outcome);
        }
    }

    /// Moves `ep` on from one check's outcome.
    fn apply_check(&self, ep: &Endpoint, hc: &HealthCheck, outcome: Outcome) {
        if let Some(c) = self.checks.get(outcome.result.index()) {
            c.increment(1);
        }
        let mut status = ep.lock();
        status.last_check = Some(LastCheck {
            time: SystemTime::now(),
            result: outcome.result,
            latency: outcome.latency,
            reason: outcome.reason.clone(),
        });
        let state = ep.state();
        match outcome.result {
            CheckResult::CertificateMismatch => {
                ep.successes.store(0, Ordering::Relaxed);
                ep.failures.fetch_add(1, Ordering::Relaxed);
                status.ejected_until = None;
                ep.set_state(&mut status, EndpointState::Misrouted, outcome.reason);
            }
            CheckResult::Ok => {
                ep.failures.store(0, Ordering::Relaxed);
                let n = ep.successes.fetch_add(1, Ordering::Relaxed) + 1;
                let back = match state {
                    EndpointState::Unknown => true,
                    EndpointState::Healthy => false,
                    EndpointState::Unhealthy | EndpointState::Misrouted => n >= hc.healthy_after,
                    EndpointState::Ejected => status
                        .ejected_until
                        .is_none_or(|until| tokio::time::Instant::now() >= until),
                };
                if back {
                    status.ejected_until = None;
                    ep.set_state(&mut status, EndpointState::Healthy, String::new());
                }
            }
            _ => {
                ep.successes.store(0, Ordering::Relaxed);
                let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
                match state {
                    // The first check decides.
                    EndpointState::Unknown => {
                        ep.set_state(&mut status, EndpointState::Unhealthy, outcome.reason)
                    }
                    EndpointState::Healthy if n >= hc.unhealthy_after => ep.set_state(
                        &mut status,
                        EndpointState::Unhealthy,
                        format!("{n} health checks failed in a row: {}", outcome.reason),
                    ),
                    EndpointState::Unhealthy => {
                        status.reason =
                            format!("{n} health checks failed in a row: {}", outcome.reason);
                    }
                    // A misrouted endpoint stays so until its certificate
                    // verifies; an ejected one until a check passes.
                    _ => {}
                }
            }
        }
    }
}

/// DNS refresh and health checks, for as long as the pool is in use.
async fn maintain(pool: Weak<Pool>) {
    let (hc, has_names) = match pool.upgrade() {
        Some(p) => (p.key.health_check.clone(), p.has_names()),
        None => return,
    };
    if let Some(p) = pool.upgrade() {
        p.refresh().await;
        // The first checks run at once: endpoints are `unknown` until then.
        if let Some(hc) = &hc {
            p.check_health(hc).await;
        }
    }
    let tick = match &hc {
        Some(hc) => hc.interval,
        None if has_names => DNS_REFRESH,
        None => return,
    };
    // tokio's clock, so tests can pause and advance it.
    let mut last_dns = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(p) = pool.upgrade() else { return };
        if has_names && last_dns.elapsed() >= DNS_REFRESH {
            p.refresh().await;
            last_dns = tokio::time::Instant::now();
        }
        if let Some(hc) = &hc {
            p.check_health(hc).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool key of the route in `yaml` (one route, named `r`).
    fn key(route: &str) -> PoolKey {
        key_named("r", route)
    }

    /// The same with another route name (the route's metric series are
    /// shared by every pool of that name alive at once).
    fn key_named(name: &str, route: &str) -> PoolKey {
        let config = config::Config::from_yaml_str(
            &format!("listeners: [\"127.0.0.1:0\"]\nroutes:\n  - name: {name}\n    server_names: [r.test]\n{route}"),
            "test.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        PoolKey::of(&config.routes[0])
    }

    /// Puts `ep` in `state` (as checks or outlier detection would).
    fn force(ep: &Endpoint, state: EndpointState) {
        let mut status = ep.lock();
        ep.set_state(&mut status, state, "test".into());
    }

    fn addrs(list: &[Arc<Endpoint>]) -> Vec<u16> {
        list.iter().map(|ep| ep.addr.port()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_rotates_and_puts_unhealthy_endpoints_last() {
        let pool = Pool::start(key(
            "    upstreams: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n    balance: round_robin\n    health_check: false\n",
        ));
        assert_eq!(addrs(&pool.candidates()), [1, 2, 3]);
        assert_eq!(addrs(&pool.candidates()), [2, 3, 1]);
        assert_eq!(addrs(&pool.candidates()), [3, 1, 2]);
        force(&pool.endpoints()[1], EndpointState::Unhealthy);
        assert_eq!(
            addrs(&pool.candidates()),
            [1, 3, 2],
            "unhealthy last, still tried"
        );
        assert_eq!(addrs(&pool.candidates()), [3, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn least_connections_prefers_the_idle_endpoint() {
        let pool = Pool::start(key(
            "    upstreams: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n    health_check: false\n",
        ));
        let eps = pool.endpoints();
        eps[0].active.store(5, Ordering::Relaxed);
        eps[1].active.store(1, Ordering::Relaxed);
        eps[2].active.store(3, Ordering::Relaxed);
        assert_eq!(addrs(&pool.candidates()), [2, 3, 1]);
        // Equal counts: the rotation decides.
        eps[0].active.store(0, Ordering::Relaxed);
        eps[1].active.store(0, Ordering::Relaxed);
        eps[2].active.store(0, Ordering::Relaxed);
        let first: Vec<u16> = (0..3).map(|_| pool.candidates()[0].addr.port()).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3], "each is first once: {first:?}");
        // An unhealthy idle endpoint comes after a busy healthy one.
        force(&eps[0], EndpointState::Unhealthy);
        eps[1].active.store(9, Ordering::Relaxed);
        eps[2].active.store(9, Ordering::Relaxed);
        assert_eq!(pool.candidates().last().unwrap().addr.port(), 1);
    }

    /// Lets the pool's maintenance task run its due check (loopback
    /// connects complete without the clock moving).
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_thresholds_on_the_check_schedule() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::start(key(&format!(
            "    upstreams: [\"{addr}\"]\n    health_check: {{interval: 5s, timeout: 1s, unhealthy_after: 3, healthy_after: 2}}\n"
        )));
        settle().await; // the maintenance task starts its schedule
        let ep = pool.endpoints()[0].clone();
        let failures = |n| {
            let ep = ep.clone();
            move || ep.failures.load(Ordering::Relaxed) == n
        };
        assert!(ep.is_healthy(), "healthy until checks say otherwise");
        drop(listener); // now the port refuses
        for round in 1..=3u32 {
            tokio::time::advance(Duration::from_secs(5)).await;
            settle().await;
            assert!(failures(round)(), "check {round} ran at {}s", 5 * round);
            assert_eq!(ep.is_healthy(), round < 3, "after {round} failures");
        }
        // Back: healthy again after two passing checks, not one.
        let _listener = std::net::TcpListener::bind(addr).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(ep.successes.load(Ordering::Relaxed), 1);
        assert!(!ep.is_healthy(), "one success is not enough");
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert!(ep.is_healthy(), "two successes bring it back");
        // Nothing runs between ticks.
        tokio::time::advance(Duration::from_secs(4)).await;
        settle().await;
        assert_eq!(ep.successes.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        // A name that never resolves here (RFC 6761 `.invalid`), with the
        // endpoints a previous lookup had found.
        let key =
            key("    upstreams: [\"api.sniroute-test.invalid:6443\"]\n    health_check: false\n");
        let upstream = key.upstreams[0].clone();
        let known = vec![
            Arc::new(Endpoint::new(
                "127.0.0.1:6443".parse().unwrap(),
                upstream.to_string(),
                "r",
                false,
            )),
            Arc::new(Endpoint::new(
                "127.0.0.2:6443".parse().unwrap(),
                upstream.to_string(),
                "r",
                false,
            )),
        ];
        let pool = Pool::new(key, known);
        pool.refresh().await;
        let mut kept: Vec<String> = pool
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["127.0.0.1:6443", "127.0.0.2:6443"]);

        // Without any known address a connect fails at once, naming why.
        let empty = Pool::new(pool.key.clone(), Vec::new());
        let err = empty.connect(Duration::from_secs(1)).await.unwrap_err();
        assert!(err.attempts.is_empty());
        assert!(err.to_string().contains("did not resolve"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn discovered_endpoints_keep_their_state_while_listed() {
        let config = config::Config::from_yaml_str(
            "listeners: [\"127.0.0.1:0\"]\ndiscovery: {marathon: {urls: [\"http://m:8080\"]}}\n\
             routes: [{name: r, server_names: [r.test], marathon_app: {id: /web, port_index: 0}, health_check: false}]\n",
            "test.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::start(PoolKey::of(&config.routes[0]));
        assert!(pool.discovered().is_some());
        assert!(pool.endpoints().is_empty(), "nothing before the first sync");
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        pool.set_discovered(&[a, b]);
        let first = pool.endpoints();
        assert_eq!(addrs(&first), [1, 2]);
        assert_eq!(first[0].upstream, "Marathon app /web, port index 0");
        force(&first[1], EndpointState::Unhealthy);
        first[1].active.store(2, Ordering::Relaxed);
        pool.set_discovered(&[b, c]);
        let second = pool.endpoints();
        assert_eq!(addrs(&second), [2, 3]);
        assert!(
            Arc::ptr_eq(&first[1], &second[0]),
            "b stays the same endpoint"
        );
        assert!(!second[0].is_healthy() && second[0].active() == 2);
        assert!(second[1].is_healthy(), "c is new");
        pool.set_discovered(&[]);
        assert!(pool.endpoints().is_empty());
        // A static pool ignores discovered addresses.
        let fixed = Pool::start(key(
            "    upstreams: [\"127.0.0.1:9\"]\n    health_check: false\n",
        ));
        fixed.set_discovered(&[a]);
        assert_eq!(addrs(&fixed.endpoints()), [9]);
    }

    /// A port on loopback that refuses connections (bound, then closed).
    fn refusing_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn state_of(pool: &Pool, addr: SocketAddr) -> EndpointState {
        pool.endpoints()
            .iter()
            .find(|ep| ep.addr == addr)
            .unwrap()
            .state()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_check_runs_at_once_and_decides() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (up_addr, down) = (up.local_addr().unwrap(), refusing_port());
        let pool = Pool::start(key_named(
            "first-check",
            &format!("    upstreams: [\"{up_addr}\", \"{down}\"]\n    health_check: {{interval: 5s, timeout: 1s}}\n"),
        ));
        assert!(pool
            .endpoints()
            .iter()
            .all(|ep| ep.state() == EndpointState::Unknown));
        settle().await;
        assert_eq!(state_of(&pool, up_addr), EndpointState::Healthy);
        assert_eq!(state_of(&pool, down), EndpointState::Unhealthy);
        let check = pool.endpoints()[1].last_check().unwrap();
        assert_eq!(check.result, CheckResult::ConnectError);
        assert!(check.reason.contains("refused"), "{}", check.reason);
        assert_eq!(pool.checks[CheckResult::Ok.index()].get(), 1);
        assert_eq!(pool.checks[CheckResult::ConnectError.index()].get(), 1);
    }

    /// Connects through the pool `n` times, each bounded by 1 s.
    async fn connect_n(pool: &Pool, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if pool.connect(Duration::from_secs(1)).await.is_ok() {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_in_a_row_eject_and_ejections_double() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (up_addr, down) = (up.local_addr().unwrap(), refusing_port());
        // Round robin, checks off: every other connection tries `down` first.
        let pool = Pool::start(key_named(
            "doubling",
            &format!("    upstreams: [\"{down}\", \"{up_addr}\"]\n    balance: round_robin\n    health_check: false\n"),
        ));
        let ep = pool.endpoints()[0].clone();
        // Two failures: not yet (and one failure never ejects).
        while ep.connect_failures() < 2 {
            assert_eq!(connect_n(&pool, 1).await, 1, "the other endpoint takes it");
        }
        assert_eq!(ep.state(), EndpointState::Healthy);
        while ep.connect_failures() < 3 {
            connect_n(&pool, 1).await;
        }
        assert_eq!(ep.state(), EndpointState::Ejected);
        assert_eq!(pool.ejections.get(), 1);
        assert!(ep.reason().contains("ejected for 10s"), "{}", ep.reason());
        // While ejected it gets no connection attempt.
        connect_n(&pool, 6).await;
        assert_eq!(ep.connect_failures(), 3);
        // The ejection ends after 10 s (no checks: nothing else to pass).
        tokio::time::advance(Duration::from_millis(9_900)).await;
        connect_n(&pool, 1).await;
        assert_eq!(ep.state(), EndpointState::Ejected);
        tokio::time::advance(Duration::from_millis(200)).await;
        let (candidates, _) = pool.candidates_and_excluded();
        assert_eq!(candidates.len(), 2, "back after 10 s");
        assert_eq!(ep.state(), EndpointState::Healthy);
        // Still refusing: ejected again, now for 20 s, then 40 s.
        for (n, secs) in [(2u64, 20u64), (3, 40)] {
            while ep.state() != EndpointState::Ejected {
                connect_n(&pool, 1).await;
            }
            assert_eq!(pool.ejections.get(), n);
            assert!(
                ep.reason().contains(&format!("ejected for {secs}s")),
                "{}",
                ep.reason()
            );
            tokio::time::advance(Duration::from_secs(secs) - Duration::from_millis(100)).await;
            let _ = pool.candidates_and_excluded();
            assert_eq!(
                ep.state(),
                EndpointState::Ejected,
                "still out just before {secs}s"
            );
            tokio::time::advance(Duration::from_millis(200)).await;
            let _ = pool.candidates_and_excluded();
            assert_eq!(ep.state(), EndpointState::Healthy);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_stay_within_the_limits() {
        // Every endpoint refuses: at most 50 % ejected, one always stays.
        let ports: Vec<SocketAddr> = (0..4).map(|_| refusing_port()).collect();
        let list: Vec<String> = ports.iter().map(|a| format!("\"{a}\"")).collect();
        let pool = Pool::start(key_named(
            "limits",
            &format!(
                "    upstreams: [{}]\n    health_check: false\n",
                list.join(", ")
            ),
        ));
        assert_eq!(connect_n(&pool, 40).await, 0);
        let ejected = |pool: &Pool| {
            pool.endpoints()
                .iter()
                .filter(|ep| ep.state() == EndpointState::Ejected)
                .count()
        };
        assert_eq!(ejected(&pool), 2, "50 % of 4");
        assert_eq!(pool.ejections.get(), 2);
        // A single endpoint is never ejected, whatever it does.
        let alone = Pool::start(key(&format!(
            "    upstreams: [\"{}\"]\n    health_check: false\n    outlier_detection: {{max_ejected_percent: 100}}\n",
            ports[0]
        )));
        assert_eq!(connect_n(&alone, 10).await, 0);
        assert_eq!(ejected(&alone), 0);
        // 100 %: all but one.
        let all = Pool::start(key(&format!(
            "    upstreams: [{}]\n    health_check: false\n    outlier_detection: {{max_ejected_percent: 100}}\n",
            list.join(", ")
        )));
        assert_eq!(connect_n(&all, 40).await, 0);
        assert_eq!(ejected(&all), 3);
        // Off: never.
        let off = Pool::start(key(&format!(
            "    upstreams: [{}]\n    health_check: false\n    outlier_detection: false\n",
            list.join(", ")
        )));
        assert_eq!(connect_n(&off, 40).await, 0);
        assert_eq!(ejected(&off), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_between_failures_keeps_a_healthy_endpoint_in() {
        let flaky = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = flaky.local_addr().unwrap();
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pool = Pool::start(key_named(
            "flaky",
            &format!(
                "    upstreams: [\"{addr}\", \"{}\"]\n    balance: round_robin\n    health_check: false\n",
                up.local_addr().unwrap()
            ),
        ));
        let ep = pool.endpoints()[0].clone();
        drop(flaky);
        for round in 0..3 {
            // Two failures, then a success: never three in a row.
            let before = ep.connect_failures();
            while ep.connect_failures() < before + 2 {
                connect_n(&pool, 1).await;
            }
            let back = std::net::TcpListener::bind(addr).unwrap();
            loop {
                match pool.connect(Duration::from_secs(1)).await {
                    Ok((_, guard, _)) if Arc::ptr_eq(guard.endpoint(), &ep) => break,
                    _ => {}
                }
            }
            drop(back);
            assert_eq!(ep.state(), EndpointState::Healthy, "round {round}");
        }
        assert_eq!(pool.ejections.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_checks_an_ejected_endpoint_returns_on_a_passing_check() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pool = Pool::start(key(&format!(
            "    upstreams: [\"{addr}\", \"{}\"]\n    balance: round_robin\n    health_check: {{interval: 5s, timeout: 1s}}\n",
            up.local_addr().unwrap()
        )));
        settle().await;
        let ep = pool.endpoints()[0].clone();
        assert_eq!(ep.state(), EndpointState::Healthy);
        drop(listener);
        while ep.state() != EndpointState::Ejected {
            connect_n(&pool, 1).await;
        }
        // The port accepts again, but checks within the ejection do not
        // end it, and its end alone does not either: a check must pass.
        let _back = std::net::TcpListener::bind(addr).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(
            ep.state(),
            EndpointState::Ejected,
            "a check within the 10 s"
        );
        tokio::time::advance(Duration::from_millis(5_100)).await;
        let _ = pool.candidates_and_excluded();
        assert_eq!(ep.state(), EndpointState::Ejected, "over, but no check yet");
        tokio::time::advance(Duration::from_millis(4_900)).await;
        settle().await;
        assert_eq!(ep.state(), EndpointState::Healthy, "the next check passed");
    }
}
