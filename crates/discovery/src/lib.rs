//! Endpoints discovered from Marathon and Mesos for sniroute's routes.
//!
//! The router asks a source for app ports ([`AppSelector`]: a route name, a
//! Marathon app id, a port index or name) or for Mesos tasks
//! ([`TaskSelector`]: a route name, a framework name, a task-name pattern,
//! a port name) and reads back, per route name, the current list of
//! endpoint addresses ([`Discovered`], through a `tokio::sync::watch`
//! receiver), with a flag saying whether the first full sync is done. Each
//! source ([`Marathon`], [`Mesos`]) runs on its own. Nothing else crosses:
//! balancing, health checks and metrics stay the router's. This crate does
//! not know the router or its config.
//!
//! Modules:
//! - `marathon`: the source's task: full syncs
//!   (`GET /v2/apps?embed=apps.tasks&embed=apps.readiness`) at start, after
//!   relevant events (at most one a second) and every `resync`; the event
//!   stream (`GET /v2/events`, filtered by `event_type`) with its stall
//!   timeout, jittered back-off, redirects from non-leaders (302), 503s
//!   without a leader, and failover along the URLs in order;
//! - `apps`: the app list's JSON into endpoints (which tasks count, host,
//!   bridge or container networking, port index or name), without I/O;
//! - `mesos`: the Mesos source's task: a full sync (`GET_STATE` on the
//!   operator API, `POST /api/v1`), then the `SUBSCRIBE` event stream,
//!   with its heartbeat-based stall timeout, 307 redirects from
//!   non-leading masters, jittered back-off and failover along the URLs;
//! - `mesos_state`: the master's task table kept from `GET_STATE` and the
//!   stream's events, and the endpoints of each selector, without I/O;
//! - `recordio`: Mesos' RecordIO framing (`<length>\n<record>`, records
//!   split anywhere);
//! - `labels`: label-driven routes (Marathon-LB style): which apps'
//!   labels ask for routes, their names, the allow-list, malformed labels
//!   and conflicts between label routes, without I/O;
//! - `sse`: the `text/event-stream` framing (comment keep-alives,
//!   multi-line `data:`, records split anywhere), with a bound on a line
//!   and on an event's data;
//! - `http`: the HTTP client the sources share ([`Url`], `Client`):
//!   reqwest (hyper, HTTP/1.1 only) over rustls with `ring`; https trusts
//!   only the source's `ca_file`; redirects are left to the sources, which
//!   log them; every wait and size is bounded;
//! - `auth`: DC/OS credentials ([`AuthSettings`]): a token file read on
//!   each request, or a service-account login (an RS256 JWT signed with
//!   the account's key, via `jsonwebtoken` on `ring`) whose token is
//!   renewed at half its lifetime and after a 401;
//! - `fetch`: one document fetched by URL again and again with
//!   conditional requests ([`Fetcher`]): the router's config when
//!   `--config` is a URL. Not discovery, but it shares this crate's HTTP
//!   client set-up (rustls with `ring`, only a given CA file trusted), and
//!   the router already depends on this crate for the network.
//!
//! Why reqwest: https through Admin Router with the cluster's CA, a login
//! that POSTs JSON, and Mesos' streamed operator API all need a real
//! client; reqwest with `default-features = false` brings hyper,
//! hyper-util and hyper-rustls without HTTP/2, proxies, cookies or
//! decompression, and takes our own rustls config (ring, `ca_file` roots).
//!
//! Why `sse.rs` and not the `eventsource-stream` crate (0.2.3, the
//! candidate): it was weighed and does not fit here.
//! - It has no bound: a line without an end, or an event's `data:` lines,
//!   grow its buffers without limit. Bounding it from outside means a
//!   second scanner in front of it that finds line ends and blank lines,
//!   which is half of the parser again.
//! - It parses the buffered, incomplete line again from its start on every
//!   chunk that arrives (nom streaming parsers, `Incomplete` until the line
//!   ends). Marathon's `deployment_info` and `api_post_event` carry whole
//!   app and group definitions, megabytes on large clusters; a 2 MiB
//!   line read in 16 KiB pieces is scanned about 128 times. `sse.rs` looks
//!   at each byte once.
//! - It fails the stream on bytes that are not UTF-8; `sse.rs` reads them
//!   lossily (the JSON parse of that event then decides).
//! - It would add nom, futures-util and reqwest's `stream` feature for what
//!   is 120 lines here, tested for comment keep-alives, multi-line data,
//!   every CR/LF form and records split at every byte (and end to end
//!   through the real client in `tests/e2e/marathon.rs`).
//!
//! Stale is better than empty: a sync that fails (the source unreachable,
//! an error status, JSON that does not parse) keeps the last good endpoints
//! and is recorded in [`Discovered::last_error`] and the counters.

mod apps;
mod auth;
mod fetch;
mod http;
mod labels;
mod marathon;
mod mesos;
mod mesos_state;
mod recordio;
mod sse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use auth::AuthSettings;
pub use fetch::{Fetched, Fetcher};
pub use http::{Scheme, Url};
pub use labels::{
    allowed_by, route_name, ConflictKind, IssueKind, LabelIssue, LabelRoute, LabelRoutes,
    LabelSettings,
};

/// One route's app port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppSelector {
    /// The route the endpoints are for.
    pub route: String,
    /// The Marathon app id (`/prod/web`; a missing leading slash or a
    /// trailing one is tolerated).
    pub app_id: String,
    /// Which of the app's ports.
    pub port: PortSelector,
}

/// Which port of an app.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSelector {
    /// By position (`portIndex`, as Marathon counts).
    Index(usize),
    /// By name, in `portDefinitions` or `container.portMappings`.
    Name(String),
}

/// What a source knows now.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    /// Per route name, the endpoints (sorted; empty when no task counts,
    /// or the app or framework is absent).
    pub routes: Arc<HashMap<String, Vec<SocketAddr>>>,
    /// The label-driven routes with their endpoints, and what was refused
    /// (empty without label settings).
    pub labels: Arc<LabelRoutes>,
    /// Whether a full sync has succeeded yet.
    pub synced: bool,
    /// When the last full sync succeeded.
    pub last_success: Option<SystemTime>,
    /// The last failure (sync or event stream), cleared by a successful
    /// sync.
    pub last_error: Option<String>,
    /// Full syncs that succeeded.
    pub syncs: u64,
    /// Full syncs that failed (the previous endpoints stayed).
    pub sync_failures: u64,
    /// Times the event stream was opened again after it had been open.
    pub stream_reconnects: u64,
    /// The URL whose event stream is followed now, if one is.
    pub following: Option<String>,
    /// What the last computation left out, and why, one line each
    /// (`route web: task prod_web.1: not healthy`, `route k8s: no Mesos
    /// framework named dev/kubernetes03`).
    pub left_out: Arc<Vec<String>>,
}

impl Discovered {
    /// Puts `left_out` in force; whether it changed.
    pub(crate) fn set_left_out(&mut self, left_out: &[String]) -> bool {
        let changed = *self.left_out != left_out;
        if changed {
            self.left_out = Arc::new(left_out.to_vec());
        }
        changed
    }

    /// Puts the routes' endpoints in force, logging each route whose
    /// endpoints changed; whether any did.
    pub(crate) fn set_routes(&mut self, routes: HashMap<String, Vec<SocketAddr>>) -> bool {
        if *self.routes == routes {
            return false;
        }
        for (route, addrs) in &routes {
            if self.routes.get(route) != Some(addrs) {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                tracing::info!(route = %route, endpoints = %list.join(", "), "discovered endpoints changed");
            }
        }
        self.routes = Arc::new(routes);
        true
    }
}

/// Logs `now` (what a computation left out) once per change: each line when
/// the set differs from `last`, which then takes it.
pub(crate) fn log_left_out(last: &mut Vec<String>, now: Vec<String>, message: &'static str) {
    if now != *last {
        for p in &now {
            tracing::warn!(problem = %p, "{message}");
        }
        *last = now;
    }
}

/// How a Marathon source runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarathonSettings {
    /// Tried in order; the next one on failure.
    pub urls: Vec<Url>,
    /// Full re-read period.
    pub resync: Duration,
    /// An event stream without a byte (event or keep-alive) for this long
    /// is dropped and opened again.
    pub stall_timeout: Duration,
    /// Bound on one request: connect and head, and a whole app list.
    pub request_timeout: Duration,
    /// Label-driven routes, if asked for.
    pub labels: Option<LabelSettings>,
    /// PEM file of the CA certificates trusted for `https://` URLs (and
    /// the login URL); only they are trusted, not the system's roots.
    /// Read when the source starts.
    pub ca_file: Option<PathBuf>,
    /// Credentials sent with each request.
    pub auth: Option<AuthSettings>,
}

impl MarathonSettings {
    /// `urls` with the defaults: resync 5m, stall timeout 2m, requests 30s.
    pub fn new(urls: Vec<Url>) -> Self {
        Self {
            urls,
            resync: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            labels: None,
            ca_file: None,
            auth: None,
        }
    }
}

/// A running Marathon source; its task stops when this is dropped.
#[derive(Debug)]
pub struct Marathon {
    settings: MarathonSettings,
    selectors: watch::Sender<Vec<AppSelector>>,
    discovered: watch::Receiver<Discovered>,
    task: tokio::task::JoinHandle<()>,
}

impl Marathon {
    /// Starts following Marathon for `selectors` (inside a tokio runtime).
    ///
    /// # Panics
    /// When `settings.urls` is empty.
    pub fn start(settings: MarathonSettings, selectors: Vec<AppSelector>) -> Self {
        assert!(!settings.urls.is_empty(), "Marathon needs at least one URL");
        let (selectors_tx, selectors_rx) = watch::channel(selectors);
        let (tx, rx) = watch::channel(Discovered::default());
        let task = tokio::spawn(marathon::run(settings.clone(), selectors_rx, tx));
        Self {
            settings,
            selectors: selectors_tx,
            discovered: rx,
            task,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &MarathonSettings {
        &self.settings
    }

    /// Changes which app ports are followed; the endpoints are computed
    /// again from the last app list at once, without a request.
    pub fn set_selectors(&self, selectors: Vec<AppSelector>) {
        self.selectors.send_if_modified(|old| {
            let changed = *old != selectors;
            *old = selectors;
            changed
        });
    }

    /// What it knows, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Discovered> {
        self.discovered.clone()
    }
}

impl Drop for Marathon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One route's Mesos tasks, chosen as Edge-LB pools chose them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskSelector {
    /// The route the endpoints are for.
    pub route: String,
    /// The framework's name (`framework_info.name`, such as
    /// `dev/kubernetes01`).
    pub framework: String,
    /// A regular expression searched in the task's name (not anchored).
    pub task_name_pattern: String,
    /// The port's name in the task's `discovery.ports.ports[]`.
    pub port_name: String,
}

/// How a Mesos source runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MesosSettings {
    /// Masters, tried in order; the next one on failure.
    pub urls: Vec<Url>,
    /// The event stream is opened again (with a full sync) this often.
    pub resync: Duration,
    /// An event stream without a record for this long is dropped and
    /// opened again, until the master says its heartbeat interval (then
    /// three intervals).
    pub stall_timeout: Duration,
    /// Bound on one request: connect and head, and a whole state.
    pub request_timeout: Duration,
    /// PEM file of the CA certificates trusted for `https://` URLs (and
    /// the login URL); only they are trusted. Read when the source starts.
    pub ca_file: Option<PathBuf>,
    /// Credentials sent with each request.
    pub auth: Option<AuthSettings>,
}

impl MesosSettings {
    /// `urls` with the defaults: resync 5m, stall timeout 1m, requests 30s.
    pub fn new(urls: Vec<Url>) -> Self {
        Self {
            urls,
            resync: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
            auth: None,
        }
    }
}

/// A running Mesos source; its task stops when this is dropped.
#[derive(Debug)]
pub struct Mesos {
    settings: MesosSettings,
    selectors: watch::Sender<Vec<TaskSelector>>,
    discovered: watch::Receiver<Discovered>,
    task: tokio::task::JoinHandle<()>,
}

impl Mesos {
    /// Starts following the Mesos master for `selectors` (inside a tokio
    /// runtime).
    ///
    /// # Panics
    /// When `settings.urls` is empty.
    pub fn start(settings: MesosSettings, selectors: Vec<TaskSelector>) -> Self {
        assert!(!settings.urls.is_empty(), "Mesos needs at least one URL");
        let (selectors_tx, selectors_rx) = watch::channel(selectors);
        let (tx, rx) = watch::channel(Discovered::default());
        let task = tokio::spawn(mesos::run(settings.clone(), selectors_rx, tx));
        Self {
            settings,
            selectors: selectors_tx,
            discovered: rx,
            task,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &MesosSettings {
        &self.settings
    }

    /// Changes which tasks are followed; the endpoints are computed again
    /// from the last task table at once, without a request.
    pub fn set_selectors(&self, selectors: Vec<TaskSelector>) {
        self.selectors.send_if_modified(|old| {
            let changed = *old != selectors;
            *old = selectors;
            changed
        });
    }

    /// What it knows, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Discovered> {
        self.discovered.clone()
    }
}

impl Drop for Mesos {
    fn drop(&mut self) {
        self.task.abort();
    }
}
