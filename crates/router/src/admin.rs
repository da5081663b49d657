//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`
//! and a small HTML status page at `/`.
//!
//! Hand-written HTTP/1.1 for `GET` only: one request per connection, a
//! bounded request size and read time, `Connection: close`. Nothing secret
//! is ever shown: routes, server names, upstream addresses, health,
//! counters, and the last refusals (with the server names clients asked
//! for, sanitised: see [`crate::recent`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::activity::{self, Totals};
use crate::state::Shared;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONCURRENT: usize = 64;

/// Serves the admin endpoint on `listener` until the task is aborted, and
/// meanwhile samples the per-route totals for the rates `/status` shows.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    tokio::select! {
        () = activity::sample(shared.clone()) => {}
        () = accept_loop(listener, shared) => {}
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle(stream, &shared)).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
                return true;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if !matches!(head, Ok(true)) {
        return;
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (405, "text/plain", "only GET is supported\n".to_owned())
    } else {
        route(path, shared)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn route(path: &str, shared: &Shared) -> (u16, &'static str, String) {
    match path {
        "/metrics" => {
            shared.publish_old_tunnels();
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::registry().render(),
            )
        }
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            if shared.ready.load(Ordering::Acquire) && !shared.discovery_ready() {
                (
                    503,
                    "text/plain",
                    "waiting for the first discovery sync\n".to_owned(),
                )
            } else if shared.ready.load(Ordering::Acquire) {
                (200, "text/plain", "ready\n".to_owned())
            } else if shared.draining.load(Ordering::Acquire) {
                (503, "text/plain", "draining\n".to_owned())
            } else {
                (503, "text/plain", "starting\n".to_owned())
            }
        }
        "/status" => (
            200,
            "application/json",
            serde_json::to_string_pretty(&status(shared)).unwrap_or_default() + "\n",
        ),
        "/" => (
            200,
            "text/html; charset=utf-8",
            crate::status_page::PAGE.to_owned(),
        ),
        _ => (
            404,
            "text/plain",
            "not found; try /, /status, /metrics, /healthz, /readyz\n".to_owned(),
        ),
    }
}

/// The `/status` document.
pub(crate) fn status(shared: &Shared) -> serde_json::Value {
    let generation = shared.current();
    let config = &generation.config;
    let now = Instant::now();
    let routes: Vec<_> = generation
        .routes
        .iter()
        .enumerate()
        .zip(&config.routes)
        .map(|((id, route), rc)| {
            let endpoints: Vec<_> = route
                .pool
                .endpoints()
                .iter()
                .map(|ep| {
                    json!({
                        "address": ep.addr.to_string(),
                        "upstream": ep.upstream,
                        "healthy": ep.is_healthy(),
                        "state": if ep.is_healthy() { "healthy" } else { "unhealthy" },
                        "active_tunnels": ep.active(),
                        "connect_failures": ep.connect_failures(),
                        "last_error": ep.last_error().map(|(at, error)| json!({
                            "time": crate::recent::rfc3339(at),
                            "error": error,
                        })),
                    })
                })
                .collect();
            let totals = Totals::of(&generation, Some(id));
            json!({
                "name": route.name,
                "server_names": rc.server_names.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "upstreams": rc.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "discovered_from": rc.marathon_app.as_ref().map(ToString::to_string),
                "health_checked": route.pool.health_checked(),
                "endpoints": endpoints,
                "active_tunnels": route.pool.endpoints().iter().map(|ep| ep.active()).sum::<usize>(),
                "connections": activity::connections_json(&generation, Some(id)),
                "bytes": {
                    "client_to_upstream": totals.client_to_upstream,
                    "upstream_to_client": totals.upstream_to_client,
                },
                "rates": shared.rates.json(Some(&route.name), totals, now),
            })
        })
        .collect();
    let unrouted = json!({
        "connections": activity::connections_json(&generation, None),
        "rates": shared.rates.json(None, Totals::of(&generation, None), now),
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_generation": generation.id,
        "config_source": config.source.display_name(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "ready": shared.ready.load(Ordering::Acquire),
        "draining": shared.draining.load(Ordering::Acquire),
        "open_connections": shared.connections.load(Ordering::Acquire),
        "pending_hellos": crate::admission::pending_hellos(shared),
        "open_tunnels": shared.open_tunnels(),
        "tunnels_on_old_config": shared.tunnels_on_old_config(),
        "listeners": config.listeners.iter().map(|l| json!({
            "address": l.address.to_string(),
            "default_route": l.default_route,
        })).collect::<Vec<_>>(),
        "default_route": config.default_route,
        "routes": routes,
        "unrouted": unrouted,
        "recent_refusals": shared.recent.to_json(),
        "discovery": discovery_json(shared),
    })
}

/// The discovery source's state for `/status` (`null` without one).
fn discovery_json(shared: &Shared) -> serde_json::Value {
    let generation = shared.current();
    let Some(m) = &generation.config.discovery.marathon else {
        return serde_json::Value::Null;
    };
    let d = shared.discovered();
    json!({
        "marathon": {
            "urls": m.urls,
            "required": m.required,
            "synced": d.synced,
            "following": d.following,
            "last_success": d.last_success.map(crate::recent::rfc3339),
            "last_error": d.last_error,
            "syncs": d.syncs,
            "sync_failures": d.sync_failures,
            "stream_reconnects": d.stream_reconnects,
        }
    })
}

