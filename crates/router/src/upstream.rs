//! Upstream pools: a route's upstreams resolved into endpoints, with health
//! state, balancing and the connect loop.
//!
//! A pool outlives config generations when its route's upstream settings do
//! not change, so health state and connection counts survive a reload.
//! Its maintenance task (DNS refresh, health checks) holds only a `Weak`
//! reference and ends by itself once the last generation using the pool is
//! gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use crate::metrics::{self as m, Counter, Gauge};
use config::{Balance, HealthCheck, Host, MarathonApp, MesosTasks, RouteConfig, UpstreamAddr};

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
    healthy: AtomicBool,
    /// `sniroute_upstream_healthy{route, upstream}`; leaves `/metrics`
    /// with the endpoint.
    healthy_gauge: Gauge,
    /// `sniroute_upstream_connect_failures_total{route, upstream}`.
    connect_failures: Counter,
    /// The last failed connect: when, and the error (for `/status`).
    last_error: Mutex<Option<(SystemTime, String)>>,
    active: AtomicUsize,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Endpoint {
    fn new(addr: SocketAddr, upstream: String, route: &str) -> Self {
        let label = addr.to_string();
        let labels = [("route", route), ("upstream", label.as_str())];
        let r = m::registry();
        let healthy_gauge = r.gauge(&m::UPSTREAM_HEALTHY, &labels);
        healthy_gauge.set(1);
        Self {
            addr,
            upstream,
            connect_failures: r.counter(&m::UPSTREAM_CONNECT_FAILURES_TOTAL, &labels),
            healthy_gauge,
            last_error: Mutex::new(None),
            label,
            healthy: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Whether the endpoint passes its health checks (true without checks).
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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
}

/// A route whose names have not resolved looks them up again for a
/// connection at most this often; the periodic refresh keeps going.
const ON_DEMAND_LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

/// Why no upstream connection could be made.
#[derive(Debug)]
pub(crate) struct Unavailable {
    /// Endpoints tried, each with its error.
    pub(crate) attempts: Vec<(SocketAddr, std::io::Error)>,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str(
                "no upstream endpoint (names did not resolve, or discovery found no task)",
            );
        }
        for (i, (addr, e)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {e}")?;
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

fn out_of_descriptors(e: &std::io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

impl Pool {
    /// A pool for `key`; literal IP upstreams become endpoints at once, host
    /// names on the first [`Pool::refresh`]. Starts its maintenance task.
    pub(crate) fn start(key: PoolKey) -> Arc<Self> {
        let endpoints = key
            .upstreams
            .iter()
            .filter_map(|u| match &u.host {
                Host::Ip(ip) => Some(Arc::new(Endpoint::new(
                    SocketAddr::new(*ip, u.port),
                    u.to_string(),
                    &key.route,
                ))),
                Host::Name(_) => None,
            })
            .collect();
        let discovered = key.marathon_app.is_some() || key.mesos_tasks.is_some();
        let discovered_count = discovered.then(|| {
            m::registry().gauge(&m::DISCOVERY_ENDPOINTS, &[("route", key.route.as_str())])
        });
        let pool = Arc::new(Self {
            key,
            endpoints: RwLock::new(Arc::new(endpoints)),
            next: AtomicUsize::new(0),
            on_demand: tokio::sync::Mutex::new(None),
            discovered_count,
        });
        pool.publish_health();
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
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
                        Arc::new(Endpoint::new(addr, u.to_string(), &self.key.route))
                    });
                new.push(ep);
            }
        }
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.publish_health();
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
    /// endpoint still listed keeps its health state and counters, a new one
    /// starts healthy, one no longer listed leaves the pool (its tunnels
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
                    .unwrap_or_else(|| Arc::new(Endpoint::new(addr, from.clone(), &self.key.route)))
            })
            .collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.publish_health();
    }

    fn publish_health(&self) {
        for ep in self.endpoints().iter() {
            ep.healthy_gauge.set(i64::from(ep.is_healthy()));
        }
    }

    /// Endpoints in the order to try them: healthy ones first, by the
    /// route's balancing rule, then the unhealthy ones (with none healthy,
    /// every endpoint is still tried).
    pub(crate) fn candidates(&self) -> Vec<Arc<Endpoint>> {
        let all = self.endpoints();
        let n = all.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<Arc<Endpoint>> =
            all[start..].iter().chain(&all[..start]).cloned().collect();
        match self.key.balance {
            Balance::RoundRobin => order.sort_by_key(|ep| !ep.is_healthy()),
            // Stable sort: among equals, the round-robin rotation decides.
            Balance::LeastConnections => order.sort_by_key(|ep| (!ep.is_healthy(), ep.active())),
        }
        order
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
        let mut candidates = self.candidates();
        if candidates.is_empty() && self.has_names() {
            // Names not resolved yet (first connection after start) or not
            // resolving: look up once for everyone waiting, at most once a
            // second, and never longer than the connect timeout, so a slow
            // or dead resolver cannot hold clients or be flooded.
            let _ = tokio::time::timeout(timeout, self.refresh_on_demand()).await;
            candidates = self.candidates();
        }
        let mut attempts = Vec::new();
        for ep in candidates.into_iter().take(MAX_CONNECT_ATTEMPTS) {
            let started = Instant::now();
            match connect_once(ep.addr, timeout).await {
                Ok(stream) => {
                    ep.active.fetch_add(1, Ordering::Relaxed);
                    return Ok((stream, EndpointGuard(ep), started.elapsed()));
                }
                Err(e) => {
                    ep.connect_failures.increment(1);
                    *ep.last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((SystemTime::now(), e.to_string()));
                    attempts.push((ep.addr, e));
                }
            }
        }
        Err(Unavailable { attempts })
    }

    /// One round of active health checks: a TCP connect to every endpoint.
    async fn check_health(&self, hc: &HealthCheck) {
        let endpoints = self.endpoints();
        let mut set = tokio::task::JoinSet::new();
        for ep in endpoints.iter().cloned() {
            let timeout = hc.timeout;
            set.spawn(async move {
                let ok = match tokio::time::timeout(timeout, TcpStream::connect(ep.addr)).await {
                    Ok(Ok(_)) => Some(true),
                    // No socket for the probe: the router's state, which
                    // says nothing about the endpoint.
                    Ok(Err(e)) if out_of_descriptors(&e) => None,
                    _ => Some(false),
                };
                (ep, ok)
            });
        }
        while let Some(Ok((ep, ok))) = set.join_next().await {
            let Some(ok) = ok else {
                tracing::info!(route = %self.key.route, upstream = %ep.label,
                    "health check skipped: no file descriptor for the probe");
                continue;
            };
            let was = ep.is_healthy();
            if ok {
                ep.failures.store(0, Ordering::Relaxed);
                let n = ep.successes.fetch_add(1, Ordering::Relaxed) + 1;
                if !was && n >= hc.healthy_after {
                    ep.healthy.store(true, Ordering::Relaxed);
                    tracing::info!(route = %self.key.route, upstream = %ep.label, "upstream is healthy again");
                }
            } else {
                ep.successes.store(0, Ordering::Relaxed);
                let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if was && n >= hc.unhealthy_after {
                    ep.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(route = %self.key.route, upstream = %ep.label,
                        failures = n, "upstream failed its health checks; marked down");
                }
            }
        }
        self.publish_health();
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
        let config = config::Config::from_yaml_str(
            &format!("listeners: [\"127.0.0.1:0\"]\nroutes:\n  - name: r\n    server_names: [r.test]\n{route}"),
            "test.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        PoolKey::of(&config.routes[0])
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
        pool.endpoints()[1].healthy.store(false, Ordering::Relaxed);
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
        eps[0].healthy.store(false, Ordering::Relaxed);
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
            )),
            Arc::new(Endpoint::new(
                "127.0.0.2:6443".parse().unwrap(),
                upstream.to_string(),
                "r",
            )),
        ];
        let pool = Pool {
            key,
            endpoints: RwLock::new(Arc::new(known)),
            next: AtomicUsize::new(0),
            on_demand: tokio::sync::Mutex::new(None),
            discovered_count: None,
        };
        pool.refresh().await;
        let mut kept: Vec<String> = pool
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["127.0.0.1:6443", "127.0.0.2:6443"]);

        // Without any known address a connect fails at once, naming why.
        let empty = Pool {
            key: pool.key.clone(),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            on_demand: tokio::sync::Mutex::new(None),
            discovered_count: None,
        };
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
        first[1].healthy.store(false, Ordering::Relaxed);
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
}
