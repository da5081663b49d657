//! `sniroute run`: start-up, live reload and graceful drain.
//!
//! - Start: load the config, raise `RLIMIT_NOFILE` to the hard limit, bind
//!   every listener and the admin endpoint, then report ready.
//! - `SIGHUP` (or, with `watch_config: true`, a changed file or config URL
//!   document, see [`crate::config_source`]): load the config again. An invalid file changes nothing (the error is logged with file,
//!   line and key, and counted); a valid one applies to new connections at
//!   once, binds added listeners and closes removed ones. Open tunnels keep
//!   the generation they started with.
//! - `SIGTERM`/`SIGINT`: `/readyz` turns 503, listeners close, open tunnels
//!   may finish for `timeouts.drain`, then the rest are closed and counted.
//!   A second signal ends at once.
//! - Under systemd: listening sockets it passes (socket activation) are
//!   used instead of binding (see [`crate::activation`]), and it is told
//!   `READY=1`, `RELOADING=1`, `STOPPING=1` and watchdog pings (see
//!   [`crate::notify`]).
//! - `SIGUSR2`: binary upgrade ([`crate::upgrade`]): a new process takes
//!   the listening sockets over; once it is ready this one stops
//!   accepting, drains and exits. A failed upgrade changes nothing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::activation::{ActivationError, Inherited, Target};
use crate::config_source::Source;
use crate::listener::{self, Group, Sockets};
use crate::metrics::{DiscoveryMetrics, DiscoverySource, ReloadResult, UpgradeResult};
use crate::notify::{self, Notifier};
use crate::state::{Generation, Shared};
use crate::workers::Workers;
use config::{Config, ConfigSource};

/// Why `run` could not start.
#[derive(Debug)]
pub enum StartError {
    /// The config did not load (message includes file, line and key).
    Config(config::ConfigError),
    /// A listener or the admin endpoint could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// The signal handlers could not be installed.
    Signals(std::io::Error),
    /// Sockets inherited from systemd (or from the process a binary
    /// upgrade replaces) do not fit the config.
    Activation(ActivationError),
    /// The worker threads could not be started.
    Workers(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Signals(e) => write!(f, "cannot handle signals: {e}"),
            Self::Activation(e) => write!(f, "{e}"),
            Self::Workers(e) => write!(f, "cannot start the worker threads: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Bind(_, e) | Self::Signals(e) | Self::Workers(e) => Some(e),
            Self::Activation(e) => Some(e),
        }
    }
}

/// How often a `READY=1` owed to systemd is checked for: it waits for a
/// required discovery source's first sync, as `/readyz` does.
const READY_POLL: Duration = Duration::from_millis(50);

/// Runs the router until it is told to stop and has drained. `inherited`:
/// listening sockets from systemd or an upgrading process
/// ([`Inherited::from_env`]), used instead of binding the listeners they
/// match. `upgrade_binary`: what `SIGUSR2` starts (default: this binary).
///
/// # Errors
/// [`StartError`] when it cannot start; once running it only stops on a
/// signal.
pub async fn run(
    source: ConfigSource,
    mut inherited: Inherited,
    upgrade_binary: Option<PathBuf>,
) -> Result<(), StartError> {
    // Signal handlers first: a SIGHUP (a reload sent by a too eager
    // supervisor) or SIGTERM during start-up must not kill the process with
    // the default action; they are handled once the loop below runs.
    let signal_err = StartError::Signals;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(signal_err)?;
    tracing::info!(source = %source.display_name(), "sniroute starting");
    // From a binary upgrade: tell the old process once ready.
    let upgrade_pipe = inherited.ready_pipe.take();
    let notifier = Arc::new(Notifier::from_env());
    // A file's stamp is taken before it is read: a change made while it is
    // being read (or until the watch loop starts) is then seen as a change.
    let mut source = Source::new(source).map_err(StartError::Config)?;
    let config = source.load_first().await.map_err(StartError::Config)?;
    let wanted: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let mut inherited = inherited
        .assign(&wanted, config.admin.as_ref().map(|a| a.address))
        .map_err(StartError::Activation)?;
    raise_nofile_limit();
    let workers = Workers::start(config.workers.resolve(crate::workers::cpus))
        .map_err(StartError::Workers)?;
    tracing::info!(workers = workers.len(), configured = %config.workers, "worker threads started");
    let watchdog = notify::spawn_watchdog(&notifier, workers.handles());
    let shared = Shared::new(Generation::build(1, config, &[]));
    if upgrade_pipe.is_some() {
        shared.metrics.upgrade(UpgradeResult::Success);
    }
    // Made now, so its counter is exported at 0 from the start.
    crate::log_limit::limit();
    let log_summaries = tokio::spawn(crate::log_limit::summaries());
    let generation = shared.current();
    let mut discovery = Discovery::default();
    discovery.update(&generation.config, &shared);

    let mut listeners = Listeners::new(workers);
    for l in &generation.config.listeners {
        let addr = l.address;
        let mut sockets = inherited
            .remove(&Target::Listener(addr))
            .unwrap_or_default();
        let from: Vec<String> = sockets.iter().map(ToString::to_string).collect();
        let sockets = match sockets.pop() {
            None => Sockets::Bind,
            // Alone: `assign` refuses two for a listener unless both come
            // from an upgrade and not from systemd.
            Some(one) if one.from_systemd => {
                listeners.inherited.insert(addr);
                Sockets::Shared(one.socket)
            }
            Some(last) => {
                sockets.push(last);
                Sockets::HandedOver(sockets.into_iter().map(|s| s.socket).collect())
            }
        };
        listeners
            .start(addr, sockets, &shared, &from.join(", "), "listening")
            .map_err(|e| StartError::Bind(addr, e))?;
    }
    let mut admin = match &generation.config.admin {
        Some(admin) => {
            let addr = admin.address;
            let admin_socket = inherited
                .remove(&Target::Admin)
                .and_then(|v| v.into_iter().next());
            let (bound, from) = match admin_socket {
                Some(socket) => {
                    let from = socket.to_string();
                    (crate::admin::adopt(socket.socket), Some(from))
                }
                None => (crate::admin::bind(addr), None),
            };
            let bound = bound.map_err(|e| StartError::Bind(addr, e))?;
            if let Some(from) = from {
                tracing::info!(admin = %addr, inherited = %from, "admin endpoint: socket inherited");
            }
            let local = bound.local_addr().unwrap_or(addr);
            let allow: Vec<String> = admin
                .allow_sources
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(admin = %addr, local = %local, allow_sources = %allow.join(", "),
                "admin endpoint listening");
            // A copy, for the binary upgrade to hand over.
            let handle = socket2::SockRef::from(&bound).try_clone().ok();
            Some((
                crate::admin::spawn(bound, shared.clone(), admin.clone()),
                handle,
            ))
        }
        None => None,
    };
    shared.ready.store(true, Ordering::Release);
    tracing::info!(
        generation = generation.id,
        routes = generation.routes.len(),
        source = %source.source().display_name(),
        "sniroute is ready"
    );
    drop(generation);

    // READY=1 is owed to systemd until the router is ready as `/readyz`
    // sees it: at start, and after each reload (RELOADING=1).
    let mut ready_owed = Readiness::owed(&notifier, upgrade_pipe);
    let mut upgraded = None;
    let mut ready_poll = tokio::time::interval(READY_POLL);
    let mut watch_tick = tokio::time::interval(source.watch_every());
    loop {
        tokio::select! {
            _ = ready_poll.tick(), if ready_owed.is_some() => {
                ready_owed = ready_owed.and_then(|r| r.check(&shared, &notifier));
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                notifier.reloading();
                reload(&mut source, &shared, &mut listeners, &mut discovery).await;
                ready_owed = Readiness::owed(&notifier, None).and_then(|r| r.check(&shared, &notifier));
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading the binary");
                let admin_handle = admin.as_ref().and_then(|(_, h)| h.as_ref());
                if let Some(pid) = upgrade(&shared, &listeners, admin_handle, upgrade_binary.as_ref()).await {
                    upgraded = Some(pid);
                    break;
                }
            }
            _ = watch_tick.tick() => {
                if shared.current().config.watch_config && source.changed().await {
                    tracing::info!(source = %source.source().display_name(), "config changed: reloading");
                    notifier.reloading();
                    reload(&mut source, &shared, &mut listeners, &mut discovery).await;
                    ready_owed = Readiness::owed(&notifier, None).and_then(|r| r.check(&shared, &notifier));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    match upgraded {
        // The new process is systemd's main process now (MAINPID=), and it
        // owns the admin endpoint: stop answering there at once.
        Some(pid) => {
            if let Some((task, _)) = admin.take() {
                task.abort();
            }
            tracing::info!(
                new_pid = pid,
                open_connections = shared.connections.load(Ordering::Acquire),
                "upgrade: the new process is ready; this one stops accepting and drains"
            );
        }
        None => notifier.stopping(&format!(
            "draining: {} connections open",
            shared.connections.load(Ordering::Acquire)
        )),
    }
    // After an upgrade the new process accepts on the same sockets: no
    // grace is needed before this one stops.
    let grace = match upgraded {
        Some(_) => Duration::ZERO,
        None => shared.current().config.timeouts.accept_grace,
    };
    drain(&shared, listeners, grace, &mut term, &mut int).await;
    if let Some(pid) = upgraded {
        tracing::info!(
            new_pid = pid,
            drain_closed = shared.drain_closed.load(Ordering::Relaxed),
            "upgrade: drained; the old process exits"
        );
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    log_summaries.abort();
    crate::log_limit::limit().flush();
    if let Some((task, _)) = admin {
        task.abort();
    }
    Ok(())
}

/// Starts the binary upgrade: hands the TLS listeners and the admin socket
/// to a new process and waits until it is ready. Returns its PID, or
/// `None` when it failed (logged and counted; this process goes on).
async fn upgrade(
    shared: &Shared,
    listeners: &Listeners,
    admin: Option<&socket2::Socket>,
    binary: Option<&PathBuf>,
) -> Option<u32> {
    let mut sockets = listeners.handover();
    if let Some(admin) = admin {
        sockets.push(("admin".to_owned(), socket2::SockRef::from(admin)));
    }
    let result = match crate::upgrade::binary(binary) {
        Ok(binary) => crate::upgrade::start(binary, &sockets).await,
        Err(e) => Err(crate::upgrade::UpgradeError::Io(e)),
    };
    match result {
        Ok(pid) => Some(pid),
        Err(e) => {
            shared.metrics.upgrade(UpgradeResult::Failure);
            tracing::error!(error = %e, "upgrade failed; this process keeps serving");
            None
        }
    }
}

/// A `READY=1` owed to systemd, or to the old process of a binary upgrade.
#[derive(Debug)]
struct Readiness {
    /// Whether systemd was told what is awaited (`STATUS=`).
    told_waiting: bool,
    /// The old process's readiness pipe (see [`crate::upgrade`]).
    upgrade_pipe: Option<OwnedFd>,
}

impl Readiness {
    /// One owed, when systemd or an old process listens.
    fn owed(notifier: &Notifier, upgrade_pipe: Option<OwnedFd>) -> Option<Self> {
        (notifier.enabled() || upgrade_pipe.is_some()).then_some(Self {
            told_waiting: false,
            upgrade_pipe,
        })
    }

    /// Sends `READY=1` if the router is ready (`/readyz`'s condition) and
    /// returns `None`; else what is still owed.
    fn check(mut self, shared: &Shared, notifier: &Notifier) -> Option<Self> {
        if shared.ready.load(Ordering::Acquire) && shared.discovery_ready() {
            let generation = shared.current();
            let status = format!(
                "serving: config generation {}, {} routes",
                generation.id,
                generation.routes.len()
            );
            match self.upgrade_pipe.take() {
                Some(pipe) => {
                    crate::upgrade::tell_ready(pipe);
                    notifier.ready_as_main(&status);
                    tracing::info!(
                        generation = generation.id,
                        "upgrade: ready; the old process stops accepting"
                    );
                }
                None => notifier.ready(&status),
            }
            if notifier.enabled() {
                tracing::info!(generation = generation.id, "systemd notified: ready");
            }
            return None;
        }
        if !self.told_waiting {
            self.told_waiting = true;
            notifier.status("waiting for the first discovery sync");
        }
        Some(self)
    }
}

/// The TLS listeners and the worker threads that accept on them.
#[derive(Debug)]
struct Listeners {
    /// The worker threads; they end when this is dropped, after the drain.
    workers: Workers,
    /// Accepting, by configured address: one group of sockets each, at
    /// least one per worker.
    groups: HashMap<SocketAddr, Group>,
    /// The configured addresses whose socket systemd holds too (socket
    /// activation, directly or through an upgrade).
    inherited: HashSet<SocketAddr>,
    /// Inherited sockets a reload removed: kept open, not accepting, for a
    /// reload that adds the address back. (Closing one would not free
    /// the port: systemd holds the socket too, so sniroute could not bind
    /// it again.)
    parked: HashMap<SocketAddr, std::net::TcpListener>,
}

impl Listeners {
    fn new(workers: Workers) -> Self {
        Self {
            workers,
            groups: HashMap::new(),
            inherited: HashSet::new(),
            parked: HashMap::new(),
        }
    }

    /// Starts accepting on `addr` on every worker, on `sockets`; logs
    /// `what` with where the sockets came from (`from`, empty when bound).
    fn start(
        &mut self,
        addr: SocketAddr,
        sockets: Sockets,
        shared: &Arc<Shared>,
        from: &str,
        what: &str,
    ) -> std::io::Result<()> {
        let group = Group::start(addr, sockets, &self.workers, shared)?;
        let workers = format!("{:?}", group.workers());
        if from.is_empty() {
            tracing::info!(listener = %addr, local = %group.local, sockets = group.len(), workers = %workers, "{what}");
        } else {
            tracing::info!(listener = %addr, local = %group.local, sockets = group.len(), workers = %workers, inherited = %from, "{what}");
        }
        self.groups.insert(addr, group);
        Ok(())
    }

    /// Stops accepting on `addr` on every worker; its sockets close, but
    /// one systemd holds too, which is parked.
    async fn stop(&mut self, addr: SocketAddr) {
        let Some(group) = self.groups.remove(&addr) else {
            return;
        };
        match group.stop().await {
            Some(socket) if self.inherited.contains(&addr) => {
                self.parked.insert(addr, socket);
                tracing::warn!(listener = %addr,
                    "stopped accepting (removed by reload); the socket came from systemd and stays \
                     open for a reload that adds it back: remove it from the socket unit to close it");
            }
            _ => tracing::info!(listener = %addr, "stopped listening (removed by reload)"),
        }
    }

    /// Stops every accept loop and closes every listening socket (parked
    /// ones too); returns the workers, which keep serving open tunnels
    /// until dropped.
    async fn stop_all(self) -> Workers {
        for (_, group) in self.groups {
            drop(group.stop().await);
        }
        drop(self.parked);
        self.workers
    }

    /// The sockets a binary upgrade hands over, named as
    /// `$SNIROUTE_UPGRADE_FDS` names them: every socket of every group.
    fn handover(&self) -> Vec<(String, socket2::SockRef<'_>)> {
        let mut out = Vec::new();
        for (addr, group) in &self.groups {
            let mark = if self.inherited.contains(addr) {
                crate::activation::SYSTEMD_MARK
            } else {
                ""
            };
            for socket in group.handover() {
                out.push((format!("{addr}{mark}"), socket));
            }
        }
        out
    }
}

/// Loads the config again and puts it in force if it is valid.
async fn reload(
    source: &mut Source,
    shared: &Arc<Shared>,
    listeners: &mut Listeners,
    discovery: &mut Discovery,
) {
    let config = match source.load().await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.reload(ReloadResult::Failure);
            tracing::error!(error = %e, "config reload failed; the previous config stays in force");
            return;
        }
    };
    // Bind added listeners first: if one cannot be bound, nothing changes.
    let wanted: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let mut added = Vec::new();
    let new =
        |a: &&SocketAddr| !listeners.groups.contains_key(a) && !listeners.parked.contains_key(a);
    for addr in wanted.iter().filter(new) {
        let count = listeners.workers.len();
        match listener::bind_all(*addr, config.timeouts.tcp_user_timeout, count) {
            Ok(l) => added.push((*addr, Sockets::Bound(l))),
            Err(e) => {
                shared.metrics.reload(ReloadResult::Failure);
                tracing::error!(listener = %addr, error = %e,
                    "config reload failed: cannot listen on a new address; the previous config stays in force");
                return;
            }
        }
    }
    let admin_address = |c: &Config| c.admin.as_ref().map(|a| a.address);
    if admin_address(&config) != admin_address(&shared.current().config) {
        tracing::warn!("the admin address changed; it takes effect at the next restart");
    }
    let was = shared.current().config.workers;
    if config.workers != was {
        tracing::warn!(workers = listeners.workers.len(), configured = %was, new = %config.workers,
            "`workers` changed; it takes effect at the next start or binary upgrade (SIGUSR2); \
             the running worker threads stay");
    }
    // Inherited sockets a previous reload removed come back.
    for addr in &wanted {
        if let Some(l) = listeners.parked.remove(addr) {
            added.push((*addr, Sockets::Shared(socket2::Socket::from(l))));
        }
    }
    let generation = shared.install(config);
    discovery.update(&generation.config, shared);
    for (addr, sockets) in added {
        if let Err(e) = listeners.start(addr, sockets, shared, "", "listening (added by reload)") {
            tracing::error!(listener = %addr, error = %e, "cannot start accepting on a listener added by reload");
        }
    }
    let removed: Vec<SocketAddr> = listeners
        .groups
        .keys()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    for addr in removed {
        listeners.stop(addr).await;
    }
    shared.metrics.reload(ReloadResult::Success);
    tracing::info!(
        generation = generation.id,
        routes = generation.routes.len(),
        "config reloaded"
    );
}

/// Stops: `/readyz` turns 503; the listeners keep accepting for `grace`
/// (`timeouts.accept_grace`, so that a load balancer checking `/readyz`
/// stops sending first), then close; open tunnels may finish for
/// `timeouts.drain`; the rest are closed. A second signal cuts the grace
/// and the drain short.
async fn drain(
    shared: &Arc<Shared>,
    listeners: Listeners,
    grace: Duration,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let drain_for = shared.current().config.timeouts.drain;
    shared.ready.store(false, Ordering::Release);
    shared.draining.store(true, Ordering::Release);
    let mut cut_short = false;
    if !grace.is_zero() {
        tracing::info!(
            accept_grace_seconds = grace.as_secs_f64(),
            "stopping: /readyz answers 503; still accepting until the accept grace is over"
        );
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = term.recv() => cut_short = true,
            _ = int.recv() => cut_short = true,
        }
        if cut_short {
            tracing::warn!("second signal: closing now");
        }
    }
    // The workers serve the open tunnels until the end of the drain.
    let _workers = listeners.stop_all().await;
    let open = shared.connections.load(Ordering::Acquire);
    tracing::info!(
        open_connections = open,
        drain_seconds = drain_for.as_secs_f64(),
        "draining: listeners closed, waiting for open tunnels"
    );
    let deadline = Instant::now() + drain_for;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    while !cut_short {
        if shared.connections.load(Ordering::Acquire) == 0 {
            tracing::info!("drained: every tunnel finished");
            return;
        }
        tokio::select! {
            _ = poll.tick() => {}
            _ = tokio::time::sleep_until(deadline.into()) => break,
            _ = term.recv() => cut_short = true,
            _ = int.recv() => cut_short = true,
        }
        if cut_short {
            tracing::warn!("second signal: closing now");
        }
    }
    shared.close_tunnels();
    // Give the tunnels a moment to count and log their end.
    let until = Instant::now() + Duration::from_secs(2);
    while shared.connections.load(Ordering::Acquire) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        closed = shared.drain_closed.load(Ordering::Relaxed),
        "drain time over: remaining tunnels closed"
    );
}

/// The running discovery sources, each with the task that feeds what it
/// finds into the pools (no new config generation: see
/// [`Shared::apply_discovered`]).
#[derive(Debug, Default)]
struct Discovery {
    marathon: Option<(discovery::Marathon, tokio::task::JoinHandle<()>)>,
    mesos: Option<(discovery::Mesos, tokio::task::JoinHandle<()>)>,
}

/// The parsed `urls` of a source; one that does not parse (validation
/// makes that impossible) is logged and left out.
fn source_urls(urls: &[String], what: &str) -> Vec<discovery::Url> {
    urls.iter()
        .filter_map(|u| match discovery::Url::parse(u) {
            Ok(url) => Some(url),
            Err(e) => {
                tracing::error!(url = %u, error = %e, "{what} URL left out");
                None
            }
        })
        .collect()
}

/// A source's `auth` as discovery takes it; a login URL that does not
/// parse (validation makes that impossible) is logged and left out.
fn source_auth(auth: Option<&config::DiscoveryAuth>) -> Option<discovery::AuthSettings> {
    match auth? {
        config::DiscoveryAuth::TokenFile(f) => Some(discovery::AuthSettings::TokenFile(f.clone())),
        config::DiscoveryAuth::ServiceAccount {
            uid,
            private_key_file,
            login_url,
        } => match discovery::Url::parse(login_url) {
            Ok(login_url) => Some(discovery::AuthSettings::ServiceAccount {
                uid: uid.clone(),
                private_key_file: private_key_file.clone(),
                login_url,
            }),
            Err(e) => {
                tracing::error!(url = %login_url, error = %e, "DC/OS login URL left out");
                None
            }
        },
    }
}

/// The app ports the `marathon_app` routes of `config` follow (used by
/// `run` and `sniroute discover`).
pub(crate) fn marathon_selectors(config: &Config) -> Vec<discovery::AppSelector> {
    config
        .routes
        .iter()
        .filter_map(|r| {
            let app = r.marathon_app.as_ref()?;
            Some(discovery::AppSelector {
                route: r.name.clone(),
                app_id: app.id.clone(),
                port: match &app.port {
                    config::MarathonPort::Index(i) => discovery::PortSelector::Index(*i),
                    config::MarathonPort::Name(n) => discovery::PortSelector::Name(n.clone()),
                },
            })
        })
        .collect()
}

/// How the Marathon source of `config` runs, if one is configured (its
/// `urls` may be empty when none parsed: then it cannot start).
pub(crate) fn marathon_settings(config: &Config) -> Option<discovery::MarathonSettings> {
    config
        .discovery
        .marathon
        .as_ref()
        .map(|m| discovery::MarathonSettings {
            resync: m.resync,
            stall_timeout: m.stall_timeout,
            labels: m.labels.as_ref().map(|l| discovery::LabelSettings {
                group: l.group.clone(),
                allowed: l.server_names_allowed.clone(),
                marathon_lb: l.marathon_lb,
            }),
            ca_file: m.ca_file.clone(),
            auth: source_auth(m.auth.as_ref()),
            ..discovery::MarathonSettings::new(source_urls(&m.urls, "Marathon"))
        })
}

/// The tasks the `mesos_tasks` routes of `config` follow (used by `run`
/// and `sniroute discover`).
pub(crate) fn mesos_selectors(config: &Config) -> Vec<discovery::TaskSelector> {
    config
        .routes
        .iter()
        .filter_map(|r| {
            let tasks = r.mesos_tasks.as_ref()?;
            Some(discovery::TaskSelector {
                route: r.name.clone(),
                framework: tasks.framework.clone(),
                task_name_pattern: tasks.task_name_pattern.clone(),
                port_name: tasks.port_name.clone(),
            })
        })
        .collect()
}

/// How the Mesos source of `config` runs, if one is configured (its
/// `urls` may be empty when none parsed: then it cannot start).
pub(crate) fn mesos_settings(config: &Config) -> Option<discovery::MesosSettings> {
    config
        .discovery
        .mesos
        .as_ref()
        .map(|m| discovery::MesosSettings {
            resync: m.resync,
            ca_file: m.ca_file.clone(),
            auth: source_auth(m.auth.as_ref()),
            ..discovery::MesosSettings::new(source_urls(&m.urls, "Mesos"))
        })
}

/// Feeds what a source finds into the pools until the source stops.
fn feeder(
    source: DiscoverySource,
    mut found: tokio::sync::watch::Receiver<discovery::Discovered>,
    shared: &Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    let shared = shared.clone();
    let mut metrics = DiscoveryMetrics::new(source);
    tokio::spawn(async move {
        let mut synced = false;
        loop {
            let mut now = found.borrow_and_update().clone();
            metrics.record(&now);
            if !now.synced {
                // A new source knows nothing yet: stale beats empty.
                let last = shared.discovered(source);
                now.routes = last.routes;
                now.labels = last.labels;
            } else if !synced {
                synced = true;
                match source {
                    DiscoverySource::Marathon => {
                        tracing::info!("Marathon discovery: first sync done");
                    }
                    DiscoverySource::Mesos => tracing::info!("Mesos discovery: first sync done"),
                }
            }
            shared.apply_discovered(source, now);
            if found.changed().await.is_err() {
                return;
            }
        }
    })
}

impl Discovery {
    /// Starts, changes or stops the sources to match `config`: the same
    /// settings keep a running source (only what it follows changes);
    /// other settings start a new one.
    fn update(&mut self, config: &Config, shared: &Arc<Shared>) {
        self.update_marathon(config, shared);
        self.update_mesos(config, shared);
    }

    fn update_marathon(&mut self, config: &Config, shared: &Arc<Shared>) {
        let selectors = marathon_selectors(config);
        let settings = marathon_settings(config);
        if let (Some((running, _)), Some(settings)) = (&self.marathon, &settings) {
            if running.settings() == settings {
                running.set_selectors(selectors);
                return;
            }
        }
        if let Some((_, feeder)) = self.marathon.take() {
            feeder.abort();
            tracing::info!("Marathon discovery stopped (its settings changed)");
        }
        let Some(settings) = settings.filter(|s| !s.urls.is_empty()) else {
            return;
        };
        let urls: Vec<String> = settings.urls.iter().map(ToString::to_string).collect();
        tracing::info!(urls = %urls.join(", "), apps = selectors.len(), "Marathon discovery starting");
        let marathon = discovery::Marathon::start(settings, selectors);
        let feeder = feeder(DiscoverySource::Marathon, marathon.subscribe(), shared);
        self.marathon = Some((marathon, feeder));
    }

    fn update_mesos(&mut self, config: &Config, shared: &Arc<Shared>) {
        let selectors = mesos_selectors(config);
        let settings = mesos_settings(config);
        if let (Some((running, _)), Some(settings)) = (&self.mesos, &settings) {
            if running.settings() == settings {
                running.set_selectors(selectors);
                return;
            }
        }
        if let Some((_, feeder)) = self.mesos.take() {
            feeder.abort();
            tracing::info!("Mesos discovery stopped (its settings changed)");
        }
        let Some(settings) = settings.filter(|s| !s.urls.is_empty()) else {
            return;
        };
        let urls: Vec<String> = settings.urls.iter().map(ToString::to_string).collect();
        tracing::info!(urls = %urls.join(", "), routes = selectors.len(), "Mesos discovery starting");
        let mesos = discovery::Mesos::start(settings, selectors);
        let feeder = feeder(DiscoverySource::Mesos, mesos.subscribe(), shared);
        self.mesos = Some((mesos, feeder));
    }
}

/// Raises the soft open-files limit to the hard limit: every tunnel costs
/// two descriptors, and the distribution default (1024) would cap sniroute
/// at about 500 tunnels.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(from = before, to = limit.current, "raised RLIMIT_NOFILE"),
            Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
    }
}
