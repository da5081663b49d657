//! What happened per route, for `/status`: connections by result and bytes
//! each way, read from the metric handles (nothing is counted twice), and
//! rates over the last minute from a small ring of samples per route.
//!
//! The first sample is taken when the process state is made, before any
//! listener accepts (every count is 0 then); the admin endpoint then runs
//! [`sample`] while it serves: every [`INTERVAL`] it notes the totals of
//! each route of the generation in force, keeping the last [`SLOTS`]
//! samples, so a page gets a rate as soon as it loads.
//! A rate is the change from the oldest sample kept to now, over the time
//! between them: 60 to 70 s once the router has run that long, since start
//! before. Memory is bounded by the routes configured: a route a reload
//! removed is dropped at the next sample.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::metrics::Outcome;
use crate::state::{Generation, Shared};
use crate::table::RouteId;

/// Time between samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept per route: the oldest is 60 to 70 s old.
pub(crate) const SLOTS: usize = 7;

/// A route's totals since its counters were made (they carry across
/// reloads while the route stays).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Connections with this route, or refused before one was known.
    pub(crate) connections: u64,
    /// Those of them not forwarded.
    pub(crate) refusals: u64,
    pub(crate) client_to_upstream: u64,
    pub(crate) upstream_to_client: u64,
}

impl Totals {
    /// The totals of route `route` of `generation`; `None`: the
    /// connections refused before a route was known.
    pub(crate) fn of(generation: &Generation, route: Option<RouteId>) -> Self {
        let mut t = Self::default();
        for outcome in results(route) {
            let n = generation.connections_of(route, outcome);
            t.connections += n;
            if outcome != Outcome::Forwarded {
                t.refusals += n;
            }
        }
        if let Some(r) = route.and_then(|id| generation.routes.get(id)) {
            t.client_to_upstream = r.bytes_up.get();
            t.upstream_to_client = r.bytes_down.get();
        }
        t
    }
}

/// The results a connection with (or without) a route can have, in label
/// order.
fn results(route: Option<RouteId>) -> impl Iterator<Item = Outcome> {
    Outcome::ALL
        .iter()
        .copied()
        .filter(move |o| o.has_route() == route.is_some())
}

/// `connections` of `/status`: the total, forwarded, refused, and each
/// possible result (0 included).
pub(crate) fn connections_json(generation: &Generation, route: Option<RouteId>) -> Value {
    let mut by_result = Map::new();
    let (mut total, mut forwarded) = (0, 0);
    for outcome in results(route) {
        let n = generation.connections_of(route, outcome);
        total += n;
        if outcome == Outcome::Forwarded {
            forwarded = n;
        }
        by_result.insert(outcome.as_str().to_owned(), n.into());
    }
    json!({
        "total": total,
        "forwarded": forwarded,
        "refused": total - forwarded,
        "by_result": by_result,
    })
}

type Ring = VecDeque<(Instant, Totals)>;

/// The samples: per route name, and for connections refused before
/// routing.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    rings: Mutex<Rings>,
}

#[derive(Debug, Default)]
struct Rings {
    unrouted: Ring,
    routes: HashMap<String, Ring>,
}

fn push(ring: &mut Ring, at: Instant, totals: Totals) {
    if ring.len() == SLOTS {
        ring.pop_front();
    }
    ring.push_back((at, totals));
}

impl Rates {
    /// Samples with the first taken now, from `first` (the generation the
    /// process starts with).
    pub(crate) fn starting(first: &Generation) -> Self {
        let rates = Self::default();
        rates.sample(first, Instant::now());
        rates
    }

    /// Notes the totals of every route of `generation` at `now`, and
    /// forgets routes it no longer has.
    pub(crate) fn sample(&self, generation: &Generation, now: Instant) {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        push(&mut rings.unrouted, now, Totals::of(generation, None));
        rings
            .routes
            .retain(|name, _| generation.routes.iter().any(|r| &r.name == name));
        for (id, route) in generation.routes.iter().enumerate() {
            let totals = Totals::of(generation, Some(id));
            let ring = rings.routes.entry(route.name.clone()).or_default();
            push(ring, now, totals);
        }
    }

    /// Rates from the oldest sample of `route` (`None`: unrouted) to `now`
    /// with totals `now_totals`; `null` before the first sample.
    pub(crate) fn json(&self, route: Option<&str>, now_totals: Totals, now: Instant) -> Value {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = match route {
            None => Some(&rings.unrouted),
            Some(name) => rings.routes.get(name),
        };
        let Some(&(at, then)) = ring.and_then(VecDeque::front) else {
            return Value::Null;
        };
        let window = now.saturating_duration_since(at).as_secs_f64();
        // A page loaded right after start: no rate over less than a second.
        let per_second = |now: u64, then: u64| {
            let rate = now.saturating_sub(then) as f64 / window.max(1.0);
            (rate * 1000.0).round() / 1000.0
        };
        json!({
            "window_seconds": (window * 10.0).round() / 10.0,
            "connections_per_second": per_second(now_totals.connections, then.connections),
            "refusals_per_second": per_second(now_totals.refusals, then.refusals),
            "client_to_upstream_bytes_per_second":
                per_second(now_totals.client_to_upstream, then.client_to_upstream),
            "upstream_to_client_bytes_per_second":
                per_second(now_totals.upstream_to_client, then.upstream_to_client),
        })
    }
}

/// Samples every [`INTERVAL`] from now on (the first sample is
/// [`Rates::starting`]'s), until the task is dropped.
pub(crate) async fn sample(shared: Arc<Shared>) {
    let start = tokio::time::Instant::now() + INTERVAL;
    let mut tick = tokio::time::interval_at(start, INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.rates.sample(&shared.current(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_split_every_outcome_once() {
        let routed: Vec<_> = results(Some(0)).collect();
        assert_eq!(routed[0], Outcome::Forwarded);
        for &o in Outcome::ALL {
            let unrouted = results(None).any(|u| u == o);
            assert!(routed.contains(&o) != unrouted, "{o:?}");
        }
    }

    #[test]
    fn rates_over_the_ring() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let totals = |c: u64, b: u64| Totals {
            connections: c,
            refusals: c / 2,
            client_to_upstream: b,
            upstream_to_client: 2 * b,
        };
        assert_eq!(rates.json(Some("a"), totals(0, 0), t0), Value::Null);
        {
            let mut rings = rates.rings.lock().unwrap();
            for i in 0..10u32 {
                let ring = rings.routes.entry("a".to_owned()).or_default();
                push(ring, t0 + INTERVAL * i, totals(u64::from(i) * 100, 0));
            }
            assert_eq!(rings.routes["a"].len(), SLOTS, "bounded");
        }
        // Oldest kept: sample 3 (300 connections) at 30 s; now 95 s, 1,000.
        let now = t0 + Duration::from_secs(95);
        let r = rates.json(Some("a"), totals(1000, 6500), now);
        assert_eq!(r["window_seconds"], 65.0);
        assert_eq!(r["connections_per_second"], 10.769, "700 in 65 s");
        assert_eq!(r["client_to_upstream_bytes_per_second"], 100.0);
        assert_eq!(r["upstream_to_client_bytes_per_second"], 200.0);
        // Just after the first sample: per second over at least a second.
        let rates = Rates::default();
        rates
            .rings
            .lock()
            .unwrap()
            .unrouted
            .push_back((t0, totals(0, 0)));
        let r = rates.json(None, totals(4, 0), t0 + Duration::from_millis(100));
        assert_eq!(r["connections_per_second"], 4.0);
        assert_eq!(r["refusals_per_second"], 2.0);
        // Counters made again (a route removed, then added back): no
        // negative rate.
        let r = rates.json(None, totals(0, 0), t0 + Duration::from_secs(5));
        assert_eq!(r["connections_per_second"], 0.0);
    }
}
