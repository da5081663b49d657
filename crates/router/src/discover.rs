//! `sniroute discover`: asks the configured discovery sources once and
//! reports the routing table that would result, without changing anything.
//!
//! The sources start exactly as `sniroute run` starts them (the same
//! settings and selectors, from [`crate::server`]), and nothing else does:
//! no listener, no admin endpoint, no health check. Once every source has
//! done its first full sync, or the deadline has passed, the report holds:
//! - per `marathon_app` and `mesos_tasks` route (in config order): its
//!   endpoints and what its source left out, and why;
//! - the label routes (Marathon-LB style), with the names they keep after
//!   the conflicts with the static routes are settled as `run` settles
//!   them ([`crate::table::settle`]), and their endpoints;
//! - the label issues: refused names, malformed labels, conflicts;
//! - per source: whether it synced, and its last error.
//!
//! The sources stop when [`discover`] returns.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use config::Config;
use discovery::{Discovered, LabelIssue};

/// Why [`discover`] has nothing to ask.
#[derive(Debug)]
pub enum DiscoverError {
    /// Neither `discovery.marathon` nor `discovery.mesos` is configured.
    NoSources,
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSources => f.write_str(
                "no discovery source is configured (`discovery.marathon` or `discovery.mesos`)",
            ),
        }
    }
}

impl std::error::Error for DiscoverError {}

/// What the sources said, as [`discover`] found it: print it with
/// `Display` (plain text for people) or [`DiscoverReport::to_json`].
#[derive(Debug)]
pub struct DiscoverReport {
    timeout: Duration,
    sources: Vec<SourceReport>,
    routes: Vec<RouteReport>,
    labels: Vec<LabelReport>,
    issues: Vec<LabelIssue>,
}

/// One source: its URLs, whether it synced, its last error, and left-out
/// lines that name no route shown.
#[derive(Debug)]
struct SourceReport {
    name: &'static str,
    key: &'static str,
    urls: Vec<String>,
    synced: bool,
    last_error: Option<String>,
    other: Vec<String>,
}

/// One `marathon_app` or `mesos_tasks` route.
#[derive(Debug)]
struct RouteReport {
    name: String,
    kind: &'static str,
    server_names: Vec<String>,
    /// What it follows, for people.
    follows: String,
    /// The source's name (`Marathon`, `Mesos`).
    source: &'static str,
    /// `None`: the source did not sync, so the endpoints are unknown.
    endpoints: Option<Vec<SocketAddr>>,
    left_out: Vec<String>,
}

/// One label route.
#[derive(Debug)]
struct LabelReport {
    name: String,
    app_id: String,
    port_index: usize,
    marathon_lb: bool,
    /// The names it keeps (after conflicts); empty: it is left out.
    server_names: Vec<String>,
    endpoints: Vec<SocketAddr>,
    left_out: Vec<String>,
}

impl DiscoverReport {
    /// Whether every configured source did its first full sync in time
    /// (`sniroute discover` exits with status 1 otherwise).
    pub fn complete(&self) -> bool {
        self.sources.iter().all(|s| s.synced)
    }

    /// The report as JSON: `sources`, `routes` (static then label routes,
    /// each with `kind`), `label_issues`.
    pub fn to_json(&self) -> Value {
        let sources: Vec<Value> = self
            .sources
            .iter()
            .map(|s| {
                json!({
                    "source": s.key,
                    "urls": s.urls,
                    "synced": s.synced,
                    "last_error": s.last_error,
                    "left_out": s.other,
                })
            })
            .collect();
        let addrs = |e: &[SocketAddr]| e.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "kind": r.kind,
                    "server_names": r.server_names,
                    "follows": r.follows,
                    "endpoints": r.endpoints.as_deref().map(addrs),
                    "left_out": r.left_out,
                })
            })
            .collect();
        routes.extend(self.labels.iter().map(|l| {
            json!({
                "name": l.name,
                "kind": "label",
                "app_id": l.app_id,
                "port_index": l.port_index,
                "marathon_lb": l.marathon_lb,
                "server_names": l.server_names,
                "endpoints": addrs(&l.endpoints),
                "left_out": l.left_out,
            })
        }));
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|i| {
                json!({
                    "kind": i.kind.as_str(),
                    "app_id": i.app_id,
                    "route": i.route,
                    "message": i.message,
                })
            })
            .collect();
        json!({"sources": sources, "routes": routes, "label_issues": issues})
    }
}

impl fmt::Display for DiscoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.sources {
            let urls = s.urls.join(", ");
            if s.synced {
                writeln!(f, "{} ({urls}): synced", s.name)?;
            } else {
                let why = s.last_error.as_deref().unwrap_or("no answer yet");
                writeln!(
                    f,
                    "{} ({urls}): NOT synced within {}: {why}",
                    s.name,
                    config::format_duration(self.timeout)
                )?;
            }
            for line in &s.other {
                writeln!(f, "  left out: {line}")?;
            }
        }
        let endpoints = |f: &mut fmt::Formatter<'_>, e: &[SocketAddr]| {
            if e.is_empty() {
                return writeln!(f, "  no endpoints");
            }
            e.iter().try_for_each(|a| writeln!(f, "  endpoint {a}"))
        };
        for r in &self.routes {
            writeln!(
                f,
                "\nroute {} [{}] ({})",
                r.name,
                r.server_names.join(", "),
                r.follows
            )?;
            match &r.endpoints {
                Some(e) => endpoints(f, e)?,
                None => writeln!(f, "  endpoints unknown: {} did not sync", r.source)?,
            }
            for line in &r.left_out {
                writeln!(f, "  left out: {line}")?;
            }
        }
        for l in &self.labels {
            let from = if l.marathon_lb {
                ", Marathon-LB labels"
            } else {
                ""
            };
            writeln!(
                f,
                "\nlabel route {} [{}] (Marathon app {}, port index {}{from})",
                l.name,
                l.server_names.join(", "),
                l.app_id,
                l.port_index
            )?;
            if l.server_names.is_empty() {
                writeln!(f, "  left out: it keeps no server name")?;
            }
            endpoints(f, &l.endpoints)?;
            for line in &l.left_out {
                writeln!(f, "  left out: {line}")?;
            }
        }
        if !self.issues.is_empty() {
            writeln!(f, "\nlabel issues:")?;
        }
        for i in &self.issues {
            let route = i
                .route
                .as_deref()
                .map(|r| format!(", route {r}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {} (app {}{route}): {}",
                i.kind.as_str(),
                i.app_id,
                i.message
            )?;
        }
        Ok(())
    }
}

/// Starts the discovery sources of `config` as `sniroute run` would, waits
/// until each has done its first full sync or `timeout` has passed, and
/// reports what they found. Changes nothing; the sources stop on return.
pub async fn discover(config: &Config, timeout: Duration) -> Result<DiscoverReport, DiscoverError> {
    let marathon_settings = crate::server::marathon_settings(config);
    let mesos_settings = crate::server::mesos_settings(config);
    if marathon_settings.is_none() && mesos_settings.is_none() {
        return Err(DiscoverError::NoSources);
    }
    let deadline = Instant::now() + timeout;
    let urls = |u: &[discovery::Url]| u.iter().map(ToString::to_string).collect::<Vec<_>>();
    // Started even when a source has nothing to follow: label routes, and
    // whether it answers, are worth knowing.
    let marathon = marathon_settings.map(|s| {
        let u = urls(&s.urls);
        let running = (!s.urls.is_empty())
            .then(|| discovery::Marathon::start(s, crate::server::marathon_selectors(config)));
        (u, running)
    });
    let mesos = mesos_settings.map(|s| {
        let u = urls(&s.urls);
        let running = (!s.urls.is_empty())
            .then(|| discovery::Mesos::start(s, crate::server::mesos_selectors(config)));
        (u, running)
    });
    let (marathon_found, mesos_found) = tokio::join!(
        first_sync(
            marathon
                .as_ref()
                .and_then(|(_, m)| m.as_ref().map(discovery::Marathon::subscribe)),
            deadline
        ),
        first_sync(
            mesos
                .as_ref()
                .and_then(|(_, m)| m.as_ref().map(discovery::Mesos::subscribe)),
            deadline
        ),
    );
    // Stop the sources now: what follows is computation only.
    let marathon_urls = marathon.map(|(u, _)| u);
    let mesos_urls = mesos.map(|(u, _)| u);

    let mut sources = Vec::new();
    let mut found: HashMap<&'static str, &Discovered> = HashMap::new();
    for (name, key, urls, d) in [
        ("Marathon", "marathon", marathon_urls, &marathon_found),
        ("Mesos", "mesos", mesos_urls, &mesos_found),
    ] {
        let Some(urls) = urls else { continue };
        let last_error = match (&d.last_error, urls.is_empty()) {
            (Some(e), _) => Some(e.clone()),
            (None, true) => Some("no URL parses".to_owned()),
            (None, false) => None,
        };
        sources.push(SourceReport {
            name,
            key,
            urls,
            synced: d.synced,
            last_error,
            other: Vec::new(),
        });
        found.insert(name, d);
    }

    let mut routes = Vec::new();
    for r in &config.routes {
        let (kind, source, follows) = if let Some(app) = &r.marathon_app {
            let port = match &app.port {
                config::MarathonPort::Index(i) => format!("port index {i}"),
                config::MarathonPort::Name(n) => format!("port {n}"),
            };
            (
                "marathon_app",
                "Marathon",
                format!("Marathon app {}, {port}", app.id),
            )
        } else if let Some(t) = &r.mesos_tasks {
            (
                "mesos_tasks",
                "Mesos",
                format!(
                    "Mesos framework {}, tasks matching {:?}, port {}",
                    t.framework, t.task_name_pattern, t.port_name
                ),
            )
        } else {
            continue;
        };
        let endpoints = found
            .get(source)
            .filter(|d| d.synced)
            .map(|d| d.routes.get(&r.name).cloned().unwrap_or_default());
        routes.push(RouteReport {
            name: r.name.clone(),
            kind,
            server_names: r.server_names.iter().map(ToString::to_string).collect(),
            follows,
            source,
            endpoints,
            left_out: Vec::new(),
        });
    }

    let (kept, conflicts) = crate::table::settle(config, &marathon_found.labels.routes);
    let mut labels: Vec<LabelReport> = marathon_found
        .labels
        .routes
        .iter()
        .zip(kept)
        .map(|(l, names)| LabelReport {
            name: l.name.clone(),
            app_id: l.app_id.clone(),
            port_index: l.port_index,
            marathon_lb: l.marathon_lb,
            server_names: names.iter().map(ToString::to_string).collect(),
            endpoints: l.endpoints.clone(),
            left_out: Vec::new(),
        })
        .collect();
    let mut issues = marathon_found.labels.issues.clone();
    issues.extend(conflicts);

    // Left-out lines (`route NAME: why`) go under their route; the rest
    // under their source.
    for s in &mut sources {
        let Some(d) = found.get(s.name) else { continue };
        for line in d.left_out.iter() {
            let (route, why) = split_route(line);
            let slot = route.and_then(|name| {
                routes
                    .iter_mut()
                    .find(|r| r.name == name && r.source == s.name)
                    .map(|r| &mut r.left_out)
                    .or_else(|| {
                        labels
                            .iter_mut()
                            .find(|l| l.name == name && s.name == "Marathon")
                            .map(|l| &mut l.left_out)
                    })
            });
            match slot {
                Some(slot) => slot.push(why.to_owned()),
                None => s.other.push(line.clone()),
            }
        }
    }

    Ok(DiscoverReport {
        timeout,
        sources,
        routes,
        labels,
        issues,
    })
}

/// What a source knows once it has synced, or at `deadline`; a source
/// that is not there (none configured, no URL) knows nothing.
async fn first_sync(found: Option<watch::Receiver<Discovered>>, deadline: Instant) -> Discovered {
    let Some(mut found) = found else {
        return Discovered::default();
    };
    // An error only when the source's task is gone: what it had is all
    // there is.
    let _ = tokio::time::timeout_at(deadline, found.wait_for(|d| d.synced)).await;
    let now = found.borrow().clone();
    now
}

/// `route web: task x: not healthy` → (`Some("web")`, `task x: not
/// healthy`); a line of another form → (`None`, the line).
fn split_route(line: &str) -> (Option<&str>, &str) {
    line.strip_prefix("route ")
        .and_then(|rest| rest.split_once(": "))
        .map_or((None, line), |(route, why)| (Some(route), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_out_lines_split_at_their_route() {
        assert_eq!(
            split_route("route web: task prod_web.1: not healthy"),
            (Some("web"), "task prod_web.1: not healthy")
        );
        assert_eq!(split_route("no route here"), (None, "no route here"));
        assert_eq!(split_route("route web"), (None, "route web"));
    }

    #[tokio::test]
    async fn no_source_is_an_error() {
        let config = Config::from_yaml_str(
            "listeners: [\"127.0.0.1:0\"]\nroutes:\n  - {name: a, server_names: [a.test], upstreams: [\"127.0.0.1:9\"]}\n",
            "test.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = discover(&config, Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("no discovery source"), "{err}");
    }
}
