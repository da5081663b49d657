//! The Marathon source's task.
//!
//! 1. Open the event stream on the current URL (following redirects: a
//!    non-leader redirects `/v2/events` to the leader with a 302). A 503
//!    (no leader), another status or a network error moves on to the next
//!    URL; after a whole round of failures, wait (jittered exponential
//!    back-off, 250 ms up to 30 s).
//! 2. Once it is open, do a full sync, so nothing that happened while no
//!    stream was open is missed.
//! 3. Follow it: a relevant event schedules a full sync, at most one a
//!    second; `resync` forces one; a failed sync is retried a second
//!    later, keeping the last good endpoints meanwhile.
//! 4. When the stream ends, breaks, or stays silent for the stall timeout
//!    (keep-alive comments count as traffic), go back to 1 on the same URL
//!    after a short jittered wait.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::apps::{self, Apps, Target};
use crate::http::{Client, ClientSettings, Method, Response, Url};
use crate::labels::{self, LabelRoutes};
use crate::log_left_out;
use crate::sse::{Event, Parser};
use crate::{AppSelector, Discovered, MarathonSettings};

/// The event types asked for (`event_type` query parameters) and acted on.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "status_update_event",
    "instance_changed_event",
    "health_status_changed_event",
    "unhealthy_task_kill_event",
    "unhealthy_instance_kill_event",
    "app_terminated_event",
    "api_post_event",
    "deployment_success",
    "deployment_failed",
    "deployment_step_success",
    "deployment_step_failure",
];

/// Full syncs triggered by events are at least this far apart.
pub(crate) const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// The largest app list accepted.
const MAX_APPS_BYTES: usize = 256 * 1024 * 1024;
/// The largest event-stream line or event accepted.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential back-off with "equal jitter": half the step fixed, half
/// random, so routers restarted together do not knock on Marathon in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { step: 0 }
    }

    pub(crate) fn reset(&mut self) {
        self.step = 0;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let full = BACKOFF_MIN
            .saturating_mul(1u32 << self.step.min(16))
            .min(BACKOFF_MAX);
        self.step = self.step.saturating_add(1);
        let half = full / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A number in `[0, 1)` from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

struct Worker {
    settings: MarathonSettings,
    client: Client,
    selectors: watch::Receiver<Vec<AppSelector>>,
    out: watch::Sender<Discovered>,
    /// The last app list that parsed.
    apps: Option<Apps>,
    /// The problems last logged, so each set is logged once.
    problems: Vec<String>,
}

/// The source's HTTP client. The files it reads (`ca_file`, a key) were
/// fine when the config was checked; they may come back (a secret being
/// written): tried again with back-off, each failure counted.
pub(crate) async fn build_client(
    settings: ClientSettings,
    out: &watch::Sender<Discovered>,
    backoff: &mut Backoff,
    source: &str,
) -> Client {
    loop {
        match Client::new(&settings) {
            Ok(client) => {
                backoff.reset();
                return client;
            }
            Err(e) => {
                tracing::error!(error = %e, "{source} discovery cannot build its HTTP client");
                out.send_modify(|d| {
                    d.sync_failures += 1;
                    d.last_error = Some(e);
                });
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Runs the source until its handle is dropped.
pub(crate) async fn run(
    settings: MarathonSettings,
    selectors: watch::Receiver<Vec<AppSelector>>,
    out: watch::Sender<Discovered>,
) {
    let mut backoff = Backoff::new();
    let client = build_client(
        ClientSettings {
            ca_file: settings.ca_file.clone(),
            auth: settings.auth.clone(),
            request_timeout: settings.request_timeout,
        },
        &out,
        &mut backoff,
        "Marathon",
    )
    .await;
    backoff.reset();
    let mut w = Worker {
        settings,
        client,
        selectors,
        out,
        apps: None,
        problems: Vec::new(),
    };
    let mut index = 0;
    loop {
        let url = w.settings.urls[index].clone();
        match w.open_events(&url).await {
            Ok((stream, at)) => {
                tracing::info!(marathon = %url, events = %at, "following Marathon's event stream");
                w.update(|d| d.following = Some(at.clone()));
                backoff.reset();
                let synced = w.sync(&url).await;
                let why = w.follow(&url, stream, synced).await;
                tracing::warn!(marathon = %url, reason = %why,
                    "Marathon event stream lost; opening it again (then a full sync)");
                w.update(|d| {
                    d.following = None;
                    d.stream_reconnects += 1;
                    d.last_error = Some(format!("{at}: event stream: {why}"));
                });
                let wait = backoff.next();
                w.pause(wait).await;
            }
            Err(e) => {
                tracing::warn!(marathon = %url, error = %e, "cannot open Marathon's event stream");
                w.update(|d| d.last_error = Some(format!("{url}: {e}")));
                index = (index + 1) % w.settings.urls.len();
                if index == 0 {
                    let wait = backoff.next();
                    w.pause(wait).await;
                }
            }
        }
    }
}

impl Worker {
    fn update(&self, f: impl FnOnce(&mut Discovered)) {
        self.out.send_modify(f);
    }

    /// Waits `d`, applying selector changes meanwhile.
    async fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                r = self.selectors.changed() => {
                    if r.is_err() {
                        // The handle is gone; its drop aborts this task.
                        std::future::pending::<()>().await;
                    }
                    self.publish().await;
                }
            }
        }
    }

    /// `GET path` on `url`, following redirects.
    async fn get(&self, url: &Url, path: &str, accept: &str) -> Result<(Response, String), String> {
        let mut url = url.clone();
        let mut path = path.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .client
                .open(Method::Get, &url, &path, &[("Accept", accept)], None)
                .await
                .map_err(|e| e.to_string())?;
            let shown = format!("{url}{path}");
            match resp.status {
                200 => return Ok((resp, shown)),
                301 | 302 | 303 | 307 | 308 => {
                    let location = resp
                        .header("location")
                        .ok_or_else(|| format!("{shown}: redirect without Location"))?;
                    let (to, to_path) = url.redirect(location).ok_or_else(|| {
                        format!("{shown}: cannot follow a redirect to `{location}`")
                    })?;
                    tracing::debug!(from = %shown, to = %location, "following a redirect (not the leader)");
                    url = to;
                    path = to_path;
                }
                503 => return Err(format!("{shown}: 503 Service Unavailable (no leader?)")),
                401 | 403 => {
                    return Err(format!(
                    "{shown}: {} {}: check discovery.marathon.auth and the account's permissions",
                    resp.status,
                    if resp.status == 401 {
                        "Unauthorized"
                    } else {
                        "Forbidden"
                    }
                ))
                }
                s => return Err(format!("{shown}: unexpected status {s}")),
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    async fn open_events(&self, url: &Url) -> Result<(Response, String), String> {
        let query: Vec<String> = EVENT_TYPES
            .iter()
            .map(|t| format!("event_type={t}"))
            .collect();
        let path = format!("/v2/events?{}", query.join("&"));
        self.get(url, &path, "text/event-stream").await
    }

    /// One full sync; on failure the last good endpoints stay.
    async fn sync(&mut self, url: &Url) -> bool {
        let fetch = async {
            let (resp, _) = self
                .get(
                    url,
                    "/v2/apps?embed=apps.tasks&embed=apps.readiness",
                    "application/json",
                )
                .await?;
            let body =
                tokio::time::timeout(self.settings.request_timeout, resp.body(MAX_APPS_BYTES))
                    .await
                    .map_err(|_| "the app list took too long".to_owned())?
                    .map_err(|e| e.to_string())?;
            apps::parse(&body).map_err(|e| format!("the app list is not what Marathon sends: {e}"))
        };
        match fetch.await {
            Ok(apps) => {
                self.apps = Some(apps);
                // Endpoints first: once `synced` shows, they are in place
                // (`/readyz`, `sniroute discover`).
                self.publish().await;
                self.update(|d| {
                    d.synced = true;
                    d.syncs += 1;
                    d.last_success = Some(SystemTime::now());
                    d.last_error = None;
                });
                true
            }
            Err(e) => {
                tracing::warn!(marathon = %url, error = %e,
                    "Marathon full sync failed; the last known endpoints stay");
                self.update(|d| {
                    d.sync_failures += 1;
                    d.last_error = Some(format!("{url}: sync: {e}"));
                });
                false
            }
        }
    }

    /// Follows an open stream until it ends; returns why it ended.
    async fn follow(&mut self, url: &Url, mut stream: Response, synced: bool) -> String {
        let mut parser = Parser::new(MAX_EVENT_BYTES);
        let mut last_sync = Instant::now();
        let mut pending = (!synced).then(|| last_sync + MIN_SYNC_INTERVAL);
        let mut next_resync = last_sync + self.settings.resync;
        let mut last_bytes = Instant::now();
        let mut events = Vec::new();
        loop {
            let far = Instant::now() + Duration::from_secs(86400);
            tokio::select! {
                r = stream.next() => match r {
                    Err(e) => return e.to_string(),
                    Ok(None) => return "the server ended it".to_owned(),
                    Ok(Some(bytes)) => {
                        last_bytes = Instant::now();
                        events.clear();
                        if let Err(e) = parser.push(&bytes, &mut events) {
                            return e.to_string();
                        }
                        if pending.is_none() && events.iter().any(|e| self.relevant(e)) {
                            pending = Some((last_sync + MIN_SYNC_INTERVAL).max(Instant::now()));
                        }
                    }
                },
                _ = tokio::time::sleep_until(last_bytes + self.settings.stall_timeout) => {
                    return format!("no byte for {:?} (stalled)", self.settings.stall_timeout);
                }
                _ = tokio::time::sleep_until(pending.unwrap_or(far)), if pending.is_some() => {
                    last_sync = Instant::now();
                    pending = (!self.sync(url).await).then(|| last_sync + MIN_SYNC_INTERVAL);
                    next_resync = last_sync + self.settings.resync;
                }
                _ = tokio::time::sleep_until(next_resync) => {
                    last_sync = Instant::now();
                    pending = (!self.sync(url).await).then(|| last_sync + MIN_SYNC_INTERVAL);
                    next_resync = last_sync + self.settings.resync;
                }
                r = self.selectors.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                    self.publish().await;
                }
            }
        }
    }

    /// Whether `event` may change a followed app's endpoints: one of
    /// [`EVENT_TYPES`], about a followed app when it names one.
    fn relevant(&self, event: &Event) -> bool {
        if !EVENT_TYPES.contains(&event.name.as_str()) {
            return false;
        }
        let app = serde_json::from_str::<serde_json::Value>(&event.data)
            .ok()
            .and_then(|v| v.get("appId")?.as_str().map(apps::normalise));
        // Any app may gain or lose labels.
        if self.settings.labels.is_some() {
            return true;
        }
        match app {
            Some(app) => self
                .selectors
                .borrow()
                .iter()
                .any(|s| apps::normalise(&s.app_id) == app),
            None => true,
        }
    }

    /// Computes the endpoints from the last app list and publishes them
    /// if they changed.
    async fn publish(&mut self) {
        let Some(apps) = &self.apps else { return };
        let selectors = self.selectors.borrow().clone();
        let (targets, mut problems) = apps::targets(apps, &selectors);
        let (candidates, issues) = match &self.settings.labels {
            Some(s) => labels::candidates(apps, s, &mut problems),
            None => (Vec::new(), Vec::new()),
        };
        let mut resolved: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        let mut cache: HashMap<String, Option<IpAddr>> = HashMap::new();
        let timeout = self.settings.request_timeout;
        for (route, list) in targets {
            let addrs = resolve_all(list, &mut cache, &mut problems, timeout).await;
            resolved.insert(route, addrs);
        }
        let mut label_routes = LabelRoutes {
            routes: Vec::with_capacity(candidates.len()),
            issues,
        };
        for c in candidates {
            let mut route = c.route;
            route.endpoints = resolve_all(c.targets, &mut cache, &mut problems, timeout).await;
            label_routes.routes.push(route);
        }
        log_left_out(
            &mut self.problems,
            problems,
            "Marathon discovery: a task or app is left out",
        );
        self.out.send_if_modified(|d| {
            let left_out = d.set_left_out(&self.problems);
            let labels = *d.labels != label_routes;
            if labels {
                for r in &label_routes.routes {
                    if d.labels.routes.iter().all(|old| old != r) {
                        let list: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
                        tracing::info!(route = %r.name, app = %r.app_id, endpoints = %list.join(", "),
                            "label route found or changed");
                    }
                }
                for old in &d.labels.routes {
                    if label_routes.routes.iter().all(|r| r.name != old.name) {
                        tracing::info!(route = %old.name, app = %old.app_id, "label route gone");
                    }
                }
                d.labels = Arc::new(label_routes);
            }
            d.set_routes(resolved) || labels || left_out
        });
    }
}

/// The addresses of `targets`, sorted, host names resolved through `cache`
/// (a name that does not resolve is left out, with a problem).
pub(crate) async fn resolve_all(
    targets: Vec<Target>,
    cache: &mut HashMap<String, Option<IpAddr>>,
    problems: &mut Vec<String>,
    timeout: Duration,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::with_capacity(targets.len());
    for Target { host, port } in targets {
        let ip = match cache.get(&host) {
            Some(ip) => *ip,
            None => {
                let ip = resolve(&host, timeout).await;
                if ip.is_none() {
                    problems.push(format!("agent host {host} does not resolve"));
                }
                cache.insert(host.clone(), ip);
                ip
            }
        };
        if let Some(ip) = ip {
            addrs.push(SocketAddr::new(ip, port));
        }
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// An agent's address: an IP as written, else the first address its name
/// resolves to.
pub(crate) async fn resolve(host: &str, timeout: Duration) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let lookup = tokio::net::lookup_host((host, 0));
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        let second = b.next();
        assert!(
            second >= BACKOFF_MIN && second <= BACKOFF_MIN * 2,
            "{second:?}"
        );
        for _ in 0..40 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
        let samples: Vec<Duration> = (0..8)
            .map(|_| {
                let mut b = Backoff::new();
                b.next()
            })
            .collect();
        assert!(
            samples.iter().any(|s| *s != samples[0]),
            "jittered: {samples:?}"
        );
    }
}
