//! `sniroute upgrade`: asks a running sniroute for a binary upgrade
//! (`SIGUSR2`, see [`crate::upgrade`]) and waits for the outcome, which it
//! reads from the admin endpoint: the PID that `/status` reports changes
//! when the new process took over; `sniroute_upgrades_total{result="failure"}`
//! of the old process goes up when the upgrade failed (and the old process
//! serves on).
//!
//! Plain blocking HTTP/1.0 on loopback: one short request at a time, no
//! runtime needed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use config::Config;

/// How often the admin endpoint is asked while the upgrade runs.
const POLL: Duration = Duration::from_millis(200);
/// Bound on one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest admin answer read.
const MAX_ANSWER: usize = 16 << 20;

/// A successful upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The process that was asked.
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
    /// Its `sniroute_build_info` version.
    pub version: String,
}

/// The admin address of `config`, to pass to [`request_upgrade`].
///
/// # Errors
/// The config has no admin endpoint.
pub fn admin_address(config: &Config) -> Result<SocketAddr, String> {
    config.admin.as_ref().map(|a| a.address).ok_or_else(|| {
        format!(
            "{}: no `admin` endpoint, so the outcome cannot be followed: send `kill -USR2 PID` \
             and read the log instead",
            config.source.display_name()
        )
    })
}

/// Asks the sniroute whose admin endpoint listens on `admin` (a wildcard
/// address is reached on loopback) to upgrade its binary, and waits up to
/// `timeout` for the outcome. `pid`: the process the caller means; the
/// upgrade is refused when the admin endpoint is served by another one.
///
/// # Errors
/// A message: the endpoint cannot be reached or is served by another PID,
/// the signal cannot be sent, the upgrade failed (the old process serves
/// on), or no outcome in time.
pub fn request_upgrade(
    admin: SocketAddr,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<Upgraded, String> {
    let addr = reachable(admin);
    let status = get_json(addr, "/status")?;
    let old_pid = status_pid(&status)?;
    if let Some(pid) = pid {
        if pid != old_pid {
            return Err(format!(
                "the admin endpoint {addr} is served by PID {old_pid}, not by PID {pid}: \
                 nothing sent (check --pid and --config)"
            ));
        }
    }
    let failures_before = failures(addr)?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(old_pid as i32)
            .ok_or_else(|| format!("{old_pid} is not a PID"))?,
        rustix::process::Signal::USR2,
    )
    .map_err(|e| format!("cannot signal PID {old_pid}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    while Instant::now() < deadline {
        std::thread::sleep(POLL);
        match get_json(addr, "/status").and_then(|s| Ok((status_pid(&s)?, s))) {
            Ok((now, status)) if now != old_pid => {
                return Ok(Upgraded {
                    old_pid,
                    new_pid: now,
                    version: status["version"].as_str().unwrap_or("?").to_owned(),
                })
            }
            Ok(_) => match failures(addr) {
                Ok(n) if n > failures_before => {
                    return Err(format!(
                        "the upgrade failed; PID {old_pid} keeps serving (its log says why)"
                    ))
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            },
            // The old process may stop answering before the new one
            // answers on the same socket: try again.
            Err(e) => last_error = Some(e),
        }
    }
    Err(format!(
        "no outcome within {}s (PID {old_pid} was signalled){}",
        timeout.as_secs(),
        last_error.map_or(String::new(), |e| format!("; last error: {e}"))
    ))
}

/// Where to reach a listening address from this host: a wildcard address
/// is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn status_pid(status: &serde_json::Value) -> Result<u32, String> {
    status["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| "the admin endpoint's /status has no `pid`: is it sniroute?".to_owned())
}

/// `sniroute_upgrades_total{result="failure"}` of the process that answers.
fn failures(addr: SocketAddr) -> Result<u64, String> {
    let text = get(addr, "/metrics")?;
    let line = "sniroute_upgrades_total{result=\"failure\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("{addr}/metrics has no {}", line.trim_end()))
}

fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let body = get(addr, path)?;
    serde_json::from_str(&body).map_err(|e| format!("{addr}{path}: not JSON: {e}"))
}

/// `GET path` over HTTP/1.0; the body of a 200.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("admin endpoint {addr}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(fail)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(fail)?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(fail)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(fail)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        format!("admin endpoint {addr}: no HTTP answer (refused by its allow_sources?)")
    })?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("admin endpoint {addr}{path} answered {status}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_admin_addresses_are_reached_on_loopback() {
        let r = |s: &str| reachable(s.parse().unwrap()).to_string();
        assert_eq!(r("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(r("[::]:9090"), "[::1]:9090");
        assert_eq!(r("10.0.0.5:9090"), "10.0.0.5:9090");
    }
}
