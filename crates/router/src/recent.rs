//! The last [`KEEP`] refusals, for the admin endpoint (`/status` and the
//! page at `/`): when, who, why, what the client was told, and the server
//! name it asked for.
//!
//! This list is the only place a client's string is kept: metric labels
//! never carry one, and the access log carries only validated names. A
//! name is kept as sent (a refused invalid name too, see
//! [`clienthello::raw_server_name`]), made safe first by [`sanitize`]:
//! printable ASCII stays, `\` and every other byte are escaped, and at most
//! [`MAX_NAME_CHARS`] characters are kept. The page escapes it again for
//! HTML.
//!
//! Only refusals pay: one short lock and a few small allocations each. A
//! client that closed before its hello was complete (`client_closed`) is
//! not listed: nothing was refused, and TCP health checks and port scans
//! would push out the refusals an operator is looking for. The counts by
//! result (in `/status` and `/metrics`) still have it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::alert::{Alert, HTTP_400};
use crate::metrics::Outcome;

/// How many refusals are kept.
pub(crate) const KEEP: usize = 50;
/// The most characters of a name kept, escapes included; a longer one is
/// cut (never inside an escape) and ends with [`TRUNCATED`].
pub(crate) const MAX_NAME_CHARS: usize = 255;
/// Ends a name that was cut. Not ASCII, so no client can send it: a
/// client's non-ASCII bytes are escaped.
pub(crate) const TRUNCATED: char = '…';

/// One refused connection.
#[derive(Debug)]
struct Refusal {
    at: SystemTime,
    client: SocketAddr,
    listener: SocketAddr,
    result: Outcome,
    /// What the client was told: see [`reply_label`].
    reply: &'static str,
    /// The route, for refusals decided after routing.
    route: Option<Box<str>>,
    /// The server name, sanitised; `None` when the client sent none (or it
    /// could not be read).
    sni: Option<Box<str>>,
}

/// The last [`KEEP`] refusals, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    list: Mutex<VecDeque<Refusal>>,
}

impl Recent {
    /// Remembers a refusal, forgetting the oldest beyond [`KEEP`]. `reply`
    /// is what was sent (`Refused::reply`), `sni` the name as the client
    /// sent it, or as validated.
    pub(crate) fn record(
        &self,
        client: SocketAddr,
        listener: SocketAddr,
        result: Outcome,
        reply: Option<&[u8]>,
        route: Option<&str>,
        sni: Option<&[u8]>,
    ) {
        if result == Outcome::ClientClosed {
            return;
        }
        let refusal = Refusal {
            at: SystemTime::now(),
            client,
            listener,
            result,
            reply: reply_label(reply),
            route: route.map(Box::from),
            sni: sni.map(|s| sanitize(s).into_boxed_str()),
        };
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() == KEEP {
            list.pop_front();
        }
        list.push_back(refusal);
    }

    /// The list for `/status`, newest first.
    pub(crate) fn to_json(&self) -> Vec<Value> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .rev()
            .map(|r| {
                json!({
                    "time": rfc3339(r.at),
                    "client": r.client.to_string(),
                    "listener": r.listener.to_string(),
                    "result": r.result.as_str(),
                    "alert": r.reply,
                    "route": r.route,
                    "sni": r.sni,
                })
            })
            .collect()
    }
}

/// A copy of at most the bytes [`sanitize`] can show, for a name kept
/// until the refusal is recorded.
pub(crate) fn keep_name(raw: &[u8]) -> Box<[u8]> {
    Box::from(&raw[..raw.len().min(MAX_NAME_CHARS + 1)])
}

/// A client's bytes as safe text: printable ASCII as is, `\` as `\\`, any
/// other byte as `\xNN`; cut to [`MAX_NAME_CHARS`] characters plus
/// [`TRUNCATED`] when longer. Never splits an escape.
pub(crate) fn sanitize(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_NAME_CHARS) + 3);
    for &b in raw {
        let width = match b {
            b'\\' => 2,
            0x20..=0x7e => 1,
            _ => 4,
        };
        if out.len() + width > MAX_NAME_CHARS {
            out.push(TRUNCATED);
            return out;
        }
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\x");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

/// What a refusal told the client, from the bytes sent: the alert's name
/// (`unrecognized_name`, `access_denied`, `internal_error`,
/// `decode_error`), `HTTP 400`, or `none` when the connection was just
/// closed.
pub(crate) fn reply_label(reply: Option<&[u8]>) -> &'static str {
    let Some(reply) = reply else { return "none" };
    if reply == HTTP_400 {
        return "HTTP 400";
    }
    [
        (Alert::UnrecognizedName, "unrecognized_name"),
        (Alert::AccessDenied, "access_denied"),
        (Alert::InternalError, "internal_error"),
        (Alert::DecodeError, "decode_error"),
    ]
    .into_iter()
    .find(|(alert, _)| reply == alert.record())
    .map_or("alert", |(_, name)| name)
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T23:59:58.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sanitize_escapes_and_caps() {
        assert_eq!(sanitize(b"api.example.com"), "api.example.com");
        assert_eq!(
            sanitize(b"<script>alert(1)</script>"),
            "<script>alert(1)</script>",
            "HTML is the page's to escape"
        );
        assert_eq!(
            sanitize(b"a\0b\\c\xff\n\x7f"),
            "a\\x00b\\\\c\\xff\\x0a\\x7f"
        );
        assert_eq!(sanitize("bü".as_bytes()), "b\\xc3\\xbc");
        assert_eq!(sanitize(b""), "");

        let exact = vec![b'a'; MAX_NAME_CHARS];
        assert_eq!(sanitize(&exact), "a".repeat(MAX_NAME_CHARS));
        let long = vec![b'a'; 10_000];
        let cut = sanitize(&long);
        assert_eq!(cut, format!("{}{TRUNCATED}", "a".repeat(MAX_NAME_CHARS)));
        // Escapes are never split: 63 of them fill 252 characters, the
        // 64th does not fit.
        let cut = sanitize(&[0u8; 100]);
        assert_eq!(cut, format!("{}{TRUNCATED}", "\\x00".repeat(63)));
        assert!(cut.chars().count() <= MAX_NAME_CHARS + 1);
        // What keep_name keeps is enough to tell a cut name.
        assert_eq!(sanitize(&keep_name(&long)), sanitize(&long));
        assert_eq!(keep_name(&long).len(), MAX_NAME_CHARS + 1);
    }

    #[test]
    fn replies_are_named() {
        let alert = |a: Alert| Some(a.record().to_vec());
        assert_eq!(reply_label(None), "none");
        assert_eq!(reply_label(Some(HTTP_400)), "HTTP 400");
        assert_eq!(
            reply_label(alert(Alert::UnrecognizedName).as_deref()),
            "unrecognized_name"
        );
        assert_eq!(
            reply_label(alert(Alert::AccessDenied).as_deref()),
            "access_denied"
        );
        assert_eq!(
            reply_label(alert(Alert::InternalError).as_deref()),
            "internal_error"
        );
        assert_eq!(
            reply_label(alert(Alert::DecodeError).as_deref()),
            "decode_error"
        );
    }

    #[test]
    fn keeps_the_last_refusals_newest_first() {
        let recent = Recent::default();
        let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let listener: SocketAddr = "0.0.0.0:6443".parse().unwrap();
        for i in 0..KEEP + 10 {
            let name = format!("n{i}.example");
            recent.record(
                client,
                listener,
                Outcome::NoRoute,
                None,
                None,
                Some(name.as_bytes()),
            );
        }
        recent.record(client, listener, Outcome::ClientClosed, None, None, None);
        recent.record(
            client,
            listener,
            Outcome::Denied,
            Some(&Alert::AccessDenied.record()),
            Some("alpha"),
            Some(b"x\x01"),
        );
        let list = recent.to_json();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0]["result"], "denied");
        assert_eq!(list[0]["alert"], "access_denied");
        assert_eq!(list[0]["route"], "alpha");
        assert_eq!(list[0]["sni"], "x\\x01");
        assert_eq!(list[0]["client"], "192.0.2.1:40000");
        assert_eq!(list[1]["sni"], format!("n{}.example", KEEP + 9));
        assert_eq!(list[1]["route"], Value::Null);
        assert_eq!(list[KEEP - 1]["sni"], "n11.example", "the oldest kept");
        assert!(
            list.iter().all(|r| r["result"] != "client_closed"),
            "client_closed is not listed"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_735_689_599, 999)), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
    }
}
