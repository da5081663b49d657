//! `sniroute run`: start-up, live reload and graceful drain.
//!
//! - Start: load the config, raise `RLIMIT_NOFILE` to the hard limit, bind
//!   every listener and the admin endpoint, then report ready.
//! - `SIGHUP` (or a changed file with `watch_config: true`): load the config
//!   again. An invalid file changes nothing (the error is logged with file,
//!   line and key, and counted); a valid one applies to new connections at
//!   once, binds added listeners and closes removed ones. Open tunnels keep
//!   the generation they started with.
//! - `SIGTERM`/`SIGINT`: `/readyz` turns 503, listeners close, open tunnels
//!   may finish for `timeouts.drain`, then the rest are closed and counted.
//!   A second signal ends at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::listener::{self, Running};
use crate::metrics::{DiscoveryMetrics, DiscoverySource, ReloadResult};
use crate::state::{Generation, Shared};
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
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Signals(e) => write!(f, "cannot handle signals: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Bind(_, e) | Self::Signals(e) => Some(e),
        }
    }
}

/// Runs the router until it is told to stop and has drained.
///
/// # Errors
/// [`StartError`] when it cannot start; once running it only stops on a
/// signal.
pub async fn run(source: ConfigSource) -> Result<(), StartError> {
    // Signal handlers first: a SIGHUP (a reload sent by a too eager
    // supervisor) or SIGTERM during start-up must not kill the process with
    // the default action; they are handled once the loop below runs.
    let signal_err = StartError::Signals;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    tracing::info!(source = %source.display_name(), "sniroute starting");
    // The file's stamp before it is read: a change made while it is being
    // read (or until the watch loop starts) is then seen as a change.
    let mut watched = file_stamp(&source);
    let config = Config::load(&source).map_err(StartError::Config)?;
    raise_nofile_limit();
    let shared = Shared::new(Generation::build(1, config, &[]));
    // Made now, so its counter is exported at 0 from the start.
    crate::log_limit::limit();
    let log_summaries = tokio::spawn(crate::log_limit::summaries());
    let generation = shared.current();
    let mut discovery = Discovery::default();
    discovery.update(&generation.config, &shared);

    let mut listeners: HashMap<SocketAddr, Running> = HashMap::new();
    for l in &generation.config.listeners {
        let bound = listener::bind(l.address, generation.config.timeouts.tcp_user_timeout)
            .map_err(|e| StartError::Bind(l.address, e))?;
        let running = listener::spawn(bound, l.address, shared.clone());
        tracing::info!(listener = %l.address, local = %running.local, "listening");
        listeners.insert(l.address, running);
    }
    let admin = match &generation.config.admin {
        Some(admin) => {
            let addr = admin.address;
            let bound = crate::admin::bind(addr).map_err(|e| StartError::Bind(addr, e))?;
            let local = bound.local_addr().unwrap_or(addr);
            let allow: Vec<String> = admin
                .allow_sources
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(admin = %addr, local = %local, allow_sources = %allow.join(", "),
                "admin endpoint listening");
            Some(crate::admin::spawn(bound, shared.clone(), admin.clone()))
        }
        None => None,
    };
    shared.ready.store(true, Ordering::Release);
    tracing::info!(
        generation = generation.id,
        routes = generation.routes.len(),
        source = %source.display_name(),
        "sniroute is ready"
    );
    drop(generation);

    let mut watch_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                watched = file_stamp(&source);
                reload(&source, &shared, &mut listeners, &mut discovery).await;
            }
            _ = watch_tick.tick() => {
                if shared.current().config.watch_config {
                    let now = file_stamp(&source);
                    if now != watched {
                        tracing::info!("config file changed: reloading");
                        watched = now;
                        reload(&source, &shared, &mut listeners, &mut discovery).await;
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    drain(&shared, listeners, &mut term, &mut int).await;
    log_summaries.abort();
    crate::log_limit::limit().flush();
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

/// Loads the config again and puts it in force if it is valid.
async fn reload(
    source: &ConfigSource,
    shared: &Arc<Shared>,
    listeners: &mut HashMap<SocketAddr, Running>,
    discovery: &mut Discovery,
) {
    let config = match Config::load(source) {
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
    for addr in wanted.iter().filter(|a| !listeners.contains_key(a)) {
        match listener::bind(*addr, config.timeouts.tcp_user_timeout) {
            Ok(l) => added.push((*addr, l)),
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
    let generation = shared.install(config);
    discovery.update(&generation.config, shared);
    for (addr, l) in added {
        let running = listener::spawn(l, addr, shared.clone());
        tracing::info!(listener = %addr, local = %running.local, "listening (added by reload)");
        listeners.insert(addr, running);
    }
    let removed: Vec<SocketAddr> = listeners
        .keys()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    for addr in removed {
        if let Some(running) = listeners.remove(&addr) {
            running.stop().await;
            tracing::info!(listener = %addr, "stopped listening (removed by reload)");
        }
    }
    shared.metrics.reload(ReloadResult::Success);
    tracing::info!(
        generation = generation.id,
        routes = generation.routes.len(),
        "config reloaded"
    );
}

async fn drain(
    shared: &Arc<Shared>,
    listeners: HashMap<SocketAddr, Running>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let drain_for = shared.current().config.timeouts.drain;
    shared.ready.store(false, Ordering::Release);
    shared.draining.store(true, Ordering::Release);
    for (_, running) in listeners {
        running.stop().await;
    }
    let open = shared.connections.load(Ordering::Acquire);
    tracing::info!(
        open_connections = open,
        drain_seconds = drain_for.as_secs_f64(),
        "draining: listeners closed, waiting for open tunnels"
    );
    let deadline = Instant::now() + drain_for;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        if shared.connections.load(Ordering::Acquire) == 0 {
            tracing::info!("drained: every tunnel finished");
            return;
        }
        tokio::select! {
            _ = poll.tick() => {}
            _ = tokio::time::sleep_until(deadline.into()) => break,
            _ = term.recv() => { tracing::warn!("second signal: closing now"); break }
            _ = int.recv() => { tracing::warn!("second signal: closing now"); break }
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
        let selectors: Vec<discovery::AppSelector> = config
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
            .collect();
        let settings = config
            .discovery
            .marathon
            .as_ref()
            .map(|m| discovery::MarathonSettings {
                resync: m.resync,
                labels: m.labels.as_ref().map(|l| discovery::LabelSettings {
                    group: l.group.clone(),
                    allowed: l.server_names_allowed.clone(),
                    marathon_lb: l.marathon_lb,
                }),
                ca_file: m.ca_file.clone(),
                auth: source_auth(m.auth.as_ref()),
                ..discovery::MarathonSettings::new(source_urls(&m.urls, "Marathon"))
            });
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
        let selectors: Vec<discovery::TaskSelector> = config
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
            .collect();
        let settings = config
            .discovery
            .mesos
            .as_ref()
            .map(|m| discovery::MesosSettings {
                resync: m.resync,
                ca_file: m.ca_file.clone(),
                auth: source_auth(m.auth.as_ref()),
                ..discovery::MesosSettings::new(source_urls(&m.urls, "Mesos"))
            });
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

/// What identifies the config file's content for `watch_config`.
fn file_stamp(source: &ConfigSource) -> Option<(SystemTime, u64)> {
    match source {
        ConfigSource::File(path) => std::fs::metadata(path)
            .ok()
            .and_then(|md| Some((md.modified().ok()?, md.len()))),
        ConfigSource::EnvYaml(_) => None,
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
