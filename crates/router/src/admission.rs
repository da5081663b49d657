//! Admission at accept: who may take a place, and the place itself.
//!
//! A public port must survive cheap attacks, so every connection is counted
//! against three limits before any byte of it is read:
//! - `limits.max_connections`: open connections, in every phase;
//! - `limits.max_pending_hellos`: connections whose ClientHello is not
//!   complete yet. This, with `max_client_hello_bytes`, bounds the memory
//!   that hellos can pin, whatever `max_connections` is;
//! - per source (an IPv4 address, or an IPv6 /64, which one subscriber
//!   usually holds whole): `limits.max_pending_hellos_per_source` and
//!   `limits.max_connections_per_source`, so that one address cannot take
//!   every place.
//!
//! A [`Slot`] holds the places of one connection and gives them back when
//! dropped, however the connection ends; [`Slot::hello_done`] gives back the
//! pending-hello places as soon as the hello is read.
//!
//! A front load balancer that sends the PROXY protocol (a peer in a
//! listener's `accept_proxy_protocol.from`) carries many clients: its
//! connections are admitted by [`admit_deferred`], exempt from the
//! per-source limits, until the header is read; [`Slot::count_source`] then
//! counts them under the header's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use config::Limits;

use crate::metrics::Outcome;
use crate::state::Shared;

/// Where a connection comes from, for per-source limits: an IPv4 address,
/// or the /64 prefix of an IPv6 address. IPv4 addresses are tagged with
/// `ffff:ffff::/32` in the top bits, a prefix no IPv6 address is allocated
/// from, so the two never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Source(u64);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(0xffff_ffff_0000_0000 | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => Self((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    pending: usize,
    connections: usize,
}

/// Counts per source, sharded so that two cores rarely wait on each other.
#[derive(Debug)]
pub(crate) struct Sources {
    shards: [Mutex<HashMap<Source, Counts>>; SHARDS],
}

const SHARDS: usize = 16;

impl Default for Sources {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl Sources {
    fn shard(&self, source: Source) -> std::sync::MutexGuard<'_, HashMap<Source, Counts>> {
        // The low bits of an address spread well; mix in the high ones for
        // IPv6 prefixes that differ only there.
        let i = (source.0 ^ (source.0 >> 32)) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a connection place, and a pending-hello place when `pending`,
    /// for `source`, or says no when a limit is reached.
    fn admit(&self, source: Source, limits: &Limits, pending: bool) -> bool {
        let mut shard = self.shard(source);
        let counts = shard.entry(source).or_default();
        let over_connections = limits
            .max_connections_per_source
            .is_some_and(|max| counts.connections >= max);
        let over_pending = pending && counts.pending >= limits.max_pending_hellos_per_source;
        if over_connections || over_pending {
            if counts.connections == 0 {
                shard.remove(&source);
            }
            return false;
        }
        counts.pending += usize::from(pending);
        counts.connections += 1;
        true
    }

    fn release(&self, source: Source, pending: bool, connection: bool) {
        let mut shard = self.shard(source);
        let Some(counts) = shard.get_mut(&source) else {
            return;
        };
        if pending {
            counts.pending = counts.pending.saturating_sub(1);
        }
        if connection {
            counts.connections = counts.connections.saturating_sub(1);
        }
        if counts.connections == 0 {
            shard.remove(&source);
        }
    }

    /// Sources with at least one connection now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The places of one admitted connection; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
    /// The source counted, once `counted` is set (from the start but for
    /// [`admit_deferred`]).
    source: AtomicU64,
    counted: AtomicBool,
    /// Still holding pending-hello places (global and per source).
    pending: AtomicBool,
}

impl Slot {
    /// The state the connection was counted in.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The source this connection is counted under, if any.
    fn counted_source(&self) -> Option<Source> {
        self.counted
            .load(Ordering::Acquire)
            .then(|| Source(self.source.load(Ordering::Acquire)))
    }

    /// Whether the per-source limits wait for a PROXY header
    /// ([`admit_deferred`]) and the slot is not counted under a source yet.
    pub(crate) fn source_deferred(&self) -> bool {
        !self.counted.load(Ordering::Acquire)
    }

    /// Counts a slot from [`admit_deferred`] under `ip` (the address in the
    /// PROXY header), with its pending-hello place if it still holds one.
    /// Does nothing for a slot counted already.
    ///
    /// # Errors
    /// [`Refusal::Source`] when `ip` is at a per-source limit; the slot
    /// stays uncounted then.
    pub(crate) fn count_source(&self, ip: IpAddr, limits: &Limits) -> Result<(), Refusal> {
        if !self.source_deferred() {
            return Ok(());
        }
        let source = Source::of(ip);
        let pending = self.pending.load(Ordering::Acquire);
        if !self.shared.sources.admit(source, limits, pending) {
            return Err(Refusal::Source);
        }
        self.source.store(source.0, Ordering::Release);
        self.counted.store(true, Ordering::Release);
        Ok(())
    }

    /// The ClientHello is read (or the connection refused before it was):
    /// gives back the pending-hello places. Idempotent.
    pub(crate) fn hello_done(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.shared.pending_hellos.fetch_sub(1, Ordering::AcqRel);
            if let Some(source) = self.counted_source() {
                self.shared.sources.release(source, true, false);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let pending = self.pending.swap(false, Ordering::AcqRel);
        if pending {
            self.shared.pending_hellos.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(source) = self.counted_source() {
            self.shared.sources.release(source, pending, true);
        }
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` open already.
    Connections,
    /// `max_pending_hellos` hellos pending already.
    PendingHellos,
    /// The source is at one of its limits.
    Source,
}

impl Refusal {
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Self::Connections | Self::PendingHellos => Outcome::OverLimit,
            Self::Source => Outcome::SourceLimit,
        }
    }

    /// For the access log's `error` field.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Connections => "max_connections reached",
            Self::PendingHellos => "max_pending_hellos reached",
            Self::Source => "a per-source limit reached (max_pending_hellos_per_source or max_connections_per_source)",
        }
    }
}

/// Counts a new connection from `ip` against every limit; on success the
/// connection holds its places in the returned [`Slot`].
///
/// # Errors
/// The first limit that is reached; nothing is counted then.
pub(crate) fn admit(shared: &Arc<Shared>, ip: IpAddr, limits: &Limits) -> Result<Slot, Refusal> {
    admit_from(shared, Some(ip), limits)
}

/// [`admit`] for a peer that will send a PROXY header: counted against
/// the global limits only, until [`Slot::count_source`].
///
/// # Errors
/// The first global limit that is reached; nothing is counted then.
pub(crate) fn admit_deferred(shared: &Arc<Shared>, limits: &Limits) -> Result<Slot, Refusal> {
    admit_from(shared, None, limits)
}

fn admit_from(shared: &Arc<Shared>, ip: Option<IpAddr>, limits: &Limits) -> Result<Slot, Refusal> {
    let before = shared.connections.fetch_add(1, Ordering::AcqRel);
    if before >= limits.max_connections {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return Err(Refusal::Connections);
    }
    let pending = shared.pending_hellos.fetch_add(1, Ordering::AcqRel);
    let undo = |refusal| {
        shared.pending_hellos.fetch_sub(1, Ordering::AcqRel);
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        Err(refusal)
    };
    if pending >= limits.max_pending_hellos {
        return undo(Refusal::PendingHellos);
    }
    let source = ip.map(Source::of);
    if let Some(source) = source {
        if !shared.sources.admit(source, limits, true) {
            return undo(Refusal::Source);
        }
    }
    Ok(Slot {
        shared: shared.clone(),
        source: AtomicU64::new(source.map_or(0, |s| s.0)),
        counted: AtomicBool::new(source.is_some()),
        pending: AtomicBool::new(true),
    })
}

/// Pending hellos now (for `/status`).
pub(crate) fn pending_hellos(shared: &Shared) -> usize {
    shared.pending_hellos.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn sources_key_ipv4_by_address_and_ipv6_by_prefix() {
        let v4 = |s: &str| Source::of(s.parse().unwrap());
        assert_eq!(v4("10.0.0.1"), v4("10.0.0.1"));
        assert_ne!(v4("10.0.0.1"), v4("10.0.0.2"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:2:ffff::9"));
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
        assert_eq!(v4("::ffff:10.0.0.1"), v4("10.0.0.1"), "v4-mapped is v4");
        assert_ne!(
            Source::of(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Source::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        );
    }

    fn limits(per_source_pending: usize, per_source_connections: Option<usize>) -> Limits {
        Limits {
            max_connections: 100,
            max_pending_hellos: 10,
            max_pending_hellos_per_source: per_source_pending,
            max_connections_per_source: per_source_connections,
            ..Limits::default()
        }
    }

    fn shared() -> Arc<Shared> {
        let config = config::Config::from_yaml_str(
            "listeners: [\"127.0.0.1:0\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"127.0.0.1:1\"]}]\n",
            "test.yaml",
        )
        .unwrap();
        Shared::new(crate::state::Generation::build(1, config, &[]))
    }

    #[tokio::test]
    async fn limits_hold_and_places_come_back() {
        let shared = shared();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let l = limits(2, Some(3));
        let a1 = admit(&shared, a, &l).unwrap();
        let a2 = admit(&shared, a, &l).unwrap();
        assert_eq!(admit(&shared, a, &l).unwrap_err(), Refusal::Source);
        let _b1 = admit(&shared, b, &l).expect("another source is served");
        a1.hello_done();
        a1.hello_done(); // idempotent
        let a3 = admit(&shared, a, &l).expect("a pending place came back");
        assert_eq!(
            admit(&shared, a, &l).unwrap_err(),
            Refusal::Source,
            "three connections from a: its connection limit"
        );
        drop((a1, a2, a3));
        assert_eq!(shared.sources.len(), 1, "only b is left");
        assert_eq!(pending_hellos(&shared), 1);

        // The global pending cap.
        let l = limits(100, None);
        let held: Vec<_> = (0..9).map(|_| admit(&shared, a, &l).unwrap()).collect();
        assert_eq!(admit(&shared, a, &l).unwrap_err(), Refusal::PendingHellos);
        for s in &held {
            s.hello_done();
        }
        let more: Vec<_> = (0..9).map(|_| admit(&shared, a, &l).unwrap()).collect();
        drop((held, more));
        assert_eq!(pending_hellos(&shared), 1);
        assert_eq!(shared.connections.load(Ordering::Acquire), 1);
    }

    /// Worker threads admit at the same time: the global and per-source
    /// limits stay exact (never one connection over, none refused under).
    #[tokio::test]
    async fn limits_are_exact_across_threads() {
        const THREADS: usize = 4;
        const TRIES: usize = 400;
        let shared = shared();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        for round in 0..20 {
            let (l, per_source) = if round % 2 == 0 {
                // The global cap: every thread from its own source.
                (
                    Limits {
                        max_connections: 333,
                        max_pending_hellos: 10_000,
                        max_pending_hellos_per_source: 10_000,
                        max_connections_per_source: None,
                        ..Limits::default()
                    },
                    false,
                )
            } else {
                // One source's cap, from every thread.
                (
                    Limits {
                        max_connections: 10_000,
                        max_pending_hellos: 10_000,
                        max_pending_hellos_per_source: 10_000,
                        max_connections_per_source: Some(77),
                        ..Limits::default()
                    },
                    true,
                )
            };
            let start = std::sync::Barrier::new(THREADS);
            let held: Vec<Vec<Slot>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (shared, l, start) = (&shared, &l, &start);
                        scope.spawn(move || {
                            let ip = if per_source {
                                a
                            } else {
                                IpAddr::V4(Ipv4Addr::new(10, 0, 0, t as u8))
                            };
                            start.wait();
                            let mut mine = Vec::new();
                            for i in 0..TRIES {
                                if let Ok(slot) = admit(shared, ip, l) {
                                    if i % 3 == 0 {
                                        slot.hello_done();
                                    }
                                    mine.push(slot);
                                }
                                let open = shared.connections.load(Ordering::Acquire);
                                // A refusal in flight may count one more
                                // per thread for a moment, never more.
                                assert!(open <= l.max_connections + THREADS, "{open}");
                            }
                            mine
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let admitted: usize = held.iter().map(Vec::len).sum();
            let want = if per_source { 77 } else { 333 };
            assert_eq!(admitted, want, "round {round}");
            assert_eq!(shared.connections.load(Ordering::Acquire), want);
            drop(held);
            assert_eq!(shared.connections.load(Ordering::Acquire), 0);
            assert_eq!(pending_hellos(&shared), 0);
            assert_eq!(shared.sources.len(), 0);
        }
    }

    #[tokio::test]
    async fn a_load_balancer_is_counted_under_its_clients() {
        let shared = shared();
        let lb: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "192.0.2.9".parse().unwrap();
        let l = limits(2, Some(3));
        // The balancer's own connections: no per-source limit.
        let deferred: Vec<_> = (0..5)
            .map(|_| admit_deferred(&shared, &l).unwrap())
            .collect();
        assert_eq!(shared.sources.len(), 0);
        assert!(deferred[0].source_deferred());
        // Headers read: counted under the client's address.
        deferred[0].count_source(c, &l).unwrap();
        deferred[0].count_source(c, &l).unwrap(); // counted once
        deferred[1].count_source(c, &l).unwrap();
        assert_eq!(
            deferred[2].count_source(c, &l),
            Err(Refusal::Source),
            "2 pending"
        );
        deferred[0].hello_done();
        deferred[2].count_source(c, &l).unwrap();
        deferred[1].hello_done();
        deferred[2].hello_done();
        assert_eq!(
            deferred[3].count_source(c, &l),
            Err(Refusal::Source),
            "3 connections"
        );
        deferred[4].count_source(lb, &l).unwrap();
        assert_eq!(shared.sources.len(), 2);
        assert!(!deferred[0].source_deferred());
        drop(deferred);
        assert_eq!(shared.sources.len(), 0);
        assert_eq!(pending_hellos(&shared), 0);
        assert_eq!(shared.connections.load(Ordering::Acquire), 0);
        let _ = admit(&shared, c, &l).expect("places came back");
    }
}
