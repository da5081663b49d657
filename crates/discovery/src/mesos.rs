//! The Mesos source's task, on the master's operator API (v1, JSON).
//!
//! 1. Full sync: `POST /api/v1` `{"type":"GET_STATE"}` on the current URL,
//!    following redirects (a non-leading master answers 307 with a
//!    scheme-relative `Location`, `//host:5050/api/v1`). It replaces the
//!    task table and publishes the endpoints.
//! 2. `POST /api/v1` `{"type":"SUBSCRIBE"}` (`Accept: application/json`:
//!    the master answers 406 to anything that does not allow JSON or
//!    protobuf, `Message-Accept` is for the agent's streaming calls only):
//!    a chunked stream of RecordIO-framed JSON events.
//!    Its first event, `SUBSCRIBED`, carries the full state again (the
//!    snapshot the events that follow apply to) and the heartbeat interval.
//! 3. Apply the events as they come; publish when endpoints change.
//! 4. The stream ends, breaks, or goes without a record for three heartbeat
//!    intervals (the stall timeout before `SUBSCRIBED` says one): go back
//!    to 1 on the same URL after a short jittered wait. Every `resync` the
//!    stream is also opened again: the stream cannot resume, and only a
//!    `SUBSCRIBED` snapshot is consistent with the events after it.
//! 5. A failure in 1 or 2 (network, a status other than 200 after
//!    redirects, a 503 without a leader, JSON that is not what Mesos
//!    sends) moves on to the next URL; after a whole round, wait (jittered
//!    exponential back-off). A malformed event counts as a failed sync
//!    and drops the stream. Each time, the last good endpoints stay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::{Client, ClientSettings, Method, Response, Url};
use crate::marathon::{resolve_all, Backoff};
use crate::mesos_state::{self, Applied, Table};
use crate::recordio::Decoder;
use crate::{log_left_out, Discovered, MesosSettings, TaskSelector};

/// The largest `GET_STATE` response, or `SUBSCRIBE` record, accepted.
const MAX_STATE_BYTES: usize = 256 * 1024 * 1024;
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 3;
/// Heartbeats that may be missed before the stream counts as stalled.
const MISSED_HEARTBEATS: u32 = 3;
/// Bounds on the stall timeout derived from the heartbeat interval.
const MIN_STALL: Duration = Duration::from_millis(300);
const MAX_STALL: Duration = Duration::from_secs(600);
/// The operator API's path.
const API: &str = "/api/v1";

/// How a followed stream ended.
enum End {
    /// `resync` elapsed: open it again, not a failure.
    Resync,
    /// Lost, for this reason.
    Lost(String),
}

struct Worker {
    settings: MesosSettings,
    client: Client,
    selectors: watch::Receiver<Vec<TaskSelector>>,
    out: watch::Sender<Discovered>,
    /// The table as last synced and updated.
    table: Option<Table>,
    /// The problems last logged, so each set is logged once.
    problems: Vec<String>,
}

/// Runs the source until its handle is dropped.
pub(crate) async fn run(
    settings: MesosSettings,
    selectors: watch::Receiver<Vec<TaskSelector>>,
    out: watch::Sender<Discovered>,
) {
    let mut backoff = Backoff::new();
    let client = crate::marathon::build_client(
        ClientSettings {
            ca_file: settings.ca_file.clone(),
            auth: settings.auth.clone(),
            request_timeout: settings.request_timeout,
        },
        &out,
        &mut backoff,
        "Mesos",
    )
    .await;
    let mut w = Worker {
        settings,
        client,
        selectors,
        out,
        table: None,
        problems: Vec::new(),
    };
    let mut index = 0;
    loop {
        let url = w.settings.urls[index].clone();
        match w.session(&url, &mut backoff).await {
            Ok(End::Resync) => {
                tracing::debug!(mesos = %url, "periodic resync: subscribing again");
                w.update(|d| d.following = None);
            }
            Ok(End::Lost(why)) => {
                tracing::warn!(mesos = %url, reason = %why,
                    "Mesos event stream lost; subscribing again (from the full state)");
                w.update(|d| {
                    d.following = None;
                    d.stream_reconnects += 1;
                    d.last_error = Some(format!("{url}: event stream: {why}"));
                });
                let wait = backoff.next();
                w.pause(wait).await;
            }
            Err(e) => {
                tracing::warn!(mesos = %url, error = %e, "cannot follow the Mesos master");
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

    /// `POST /api/v1` with the call `call` on `url`, following redirects;
    /// the response (status 200) and the URL that answered. The one place
    /// this source does HTTP.
    async fn call(
        &self,
        url: &Url,
        call: &str,
        accept: &[(&str, &str)],
    ) -> Result<(Response, String), String> {
        let body = format!("{{\"type\":\"{call}\"}}");
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(accept);
        let mut url = url.clone();
        let mut path = API.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .client
                .open(
                    Method::Post,
                    &url,
                    &path,
                    &headers,
                    Some(body.clone().into_bytes()),
                )
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
                    tracing::debug!(from = %shown, to = %location, "following a redirect (not the leading master)");
                    url = to;
                    path = to_path;
                }
                503 => return Err(format!("{shown}: 503 Service Unavailable (no leader?)")),
                s => return Err(format!("{shown}: unexpected status {s} to {call}")),
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    /// A full sync, then the event stream followed until it ends.
    async fn session(&mut self, url: &Url, backoff: &mut Backoff) -> Result<End, String> {
        self.sync(url).await?;
        let (stream, at) = self
            .call(url, "SUBSCRIBE", &[("Accept", "application/json")])
            .await?;
        tracing::info!(mesos = %url, events = %at, "following the Mesos master's event stream");
        self.update(|d| d.following = Some(at.clone()));
        backoff.reset();
        Ok(self.follow(url, stream).await)
    }

    /// `GET_STATE`; on failure the last good endpoints stay.
    async fn sync(&mut self, url: &Url) -> Result<(), String> {
        let fetch = async {
            let (resp, _) = self
                .call(url, "GET_STATE", &[("Accept", "application/json")])
                .await?;
            let body =
                tokio::time::timeout(self.settings.request_timeout, resp.body(MAX_STATE_BYTES))
                    .await
                    .map_err(|_| "the state took too long".to_owned())?
                    .map_err(|e| e.to_string())?;
            mesos_state::parse_state(&body)
                .map_err(|e| format!("the state is not what Mesos sends: {e}"))
        };
        match fetch.await {
            Ok(table) => {
                tracing::debug!(mesos = %url, tasks = table.tasks(), "Mesos full sync done");
                self.table = Some(table);
                // Endpoints first: once `synced` shows, they are in place.
                self.publish().await;
                self.synced();
                Ok(())
            }
            Err(e) => {
                self.failed(url, &format!("sync: {e}"));
                Err(format!("sync: {e}"))
            }
        }
    }

    fn synced(&self) {
        self.update(|d| {
            d.synced = true;
            d.syncs += 1;
            d.last_success = Some(SystemTime::now());
            d.last_error = None;
        });
    }

    fn failed(&self, url: &Url, e: &str) {
        tracing::warn!(mesos = %url, error = %e,
            "Mesos sync failed; the last known endpoints stay");
        self.update(|d| {
            d.sync_failures += 1;
            d.last_error = Some(format!("{url}: {e}"));
        });
    }

    /// Follows an open stream until it ends.
    async fn follow(&mut self, url: &Url, mut stream: Response) -> End {
        let mut decoder = Decoder::new(MAX_STATE_BYTES);
        let mut stall = self.settings.stall_timeout;
        let mut subscribed = false;
        let mut last_record = Instant::now();
        let resync_at = Instant::now() + self.settings.resync;
        let mut records = Vec::new();
        loop {
            tokio::select! {
                r = stream.next() => match r {
                    Err(e) => return End::Lost(e.to_string()),
                    Ok(None) if decoder.at_boundary() => return End::Lost("the master ended it".to_owned()),
                    Ok(None) => return End::Lost("the master ended it inside a record".to_owned()),
                    Ok(Some(bytes)) => {
                        records.clear();
                        if let Err(e) = decoder.push(&bytes, &mut records) {
                            return End::Lost(e.to_string());
                        }
                        if !records.is_empty() {
                            last_record = Instant::now();
                        }
                        let mut changed = false;
                        let mut snapshot = false;
                        for record in &records {
                            let applied = match &mut self.table {
                                Some(t) if subscribed => t.apply(record),
                                _ => {
                                    // The first event must be SUBSCRIBED.
                                    let mut t = Table::default();
                                    match t.apply(record) {
                                        Ok(a @ Applied::Subscribed(_)) => {
                                            self.table = Some(t);
                                            Ok(a)
                                        }
                                        Ok(_) => Err("the first event is not SUBSCRIBED".to_owned()),
                                        Err(e) => Err(e),
                                    }
                                }
                            };
                            match applied {
                                Ok(Applied::Subscribed(interval)) => {
                                    subscribed = true;
                                    if let Some(s) = interval.filter(|s| s.is_finite() && *s > 0.0) {
                                        stall = Duration::from_secs_f64(s.min(3600.0))
                                            .saturating_mul(MISSED_HEARTBEATS)
                                            .clamp(MIN_STALL, MAX_STALL);
                                    }
                                    snapshot = true;
                                    changed = true;
                                }
                                Ok(Applied::Changed) => changed = true,
                                Ok(Applied::Heartbeat | Applied::Ignored) => {}
                                Err(e) => {
                                    let e = format!("an event is not what Mesos sends: {e}");
                                    if changed {
                                        self.publish().await;
                                    }
                                    if snapshot {
                                        self.synced();
                                    }
                                    self.failed(url, &e);
                                    return End::Lost(e);
                                }
                            }
                        }
                        if changed {
                            self.publish().await;
                        }
                        if snapshot {
                            self.synced();
                        }
                    }
                },
                _ = tokio::time::sleep_until(last_record + stall) => {
                    return End::Lost(format!("no event or heartbeat for {stall:?} (stalled)"));
                }
                _ = tokio::time::sleep_until(resync_at) => return End::Resync,
                r = self.selectors.changed() => {
                    if r.is_err() {
                        std::future::pending::<()>().await;
                    }
                    self.publish().await;
                }
            }
        }
    }

    /// Computes the endpoints from the table and publishes them if they
    /// changed.
    async fn publish(&mut self) {
        let Some(table) = &self.table else { return };
        let selectors = self.selectors.borrow().clone();
        let (targets, mut problems) = mesos_state::targets(table, &selectors);
        let mut resolved: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        let mut cache: HashMap<String, Option<IpAddr>> = HashMap::new();
        let timeout = self.settings.request_timeout;
        for (route, list) in targets {
            let addrs = resolve_all(list, &mut cache, &mut problems, timeout).await;
            resolved.insert(route, addrs);
        }
        log_left_out(
            &mut self.problems,
            problems,
            "Mesos discovery: a task is left out",
        );
        self.out.send_if_modified(|d| {
            let left_out = d.set_left_out(&self.problems);
            d.set_routes(resolved) || left_out
        });
    }
}
