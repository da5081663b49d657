//! Refusal log lines that cannot flood the disk.
//!
//! Every connection writes one access log line, but a flood of bad clients
//! (port scanners, floods of garbage) would then fill the log, and on
//! Marathon the sandbox's disk with it. Refusal lines are therefore limited
//! to [`REFUSAL_LINES_PER_SECOND`]; past that they are counted instead of
//! written, and once a second one summary line says how many were left out
//! (`sniroute_access_log_suppressed_total` counts them too). Lines of
//! forwarded connections are never dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::metrics::{self as m, Counter};

/// Refusal lines written per second at most.
pub(crate) const REFUSAL_LINES_PER_SECOND: u64 = 100;

/// The process's limiter.
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// When the process started; windows are whole seconds since.
    epoch: Instant,
    /// The current window (seconds since `epoch`) in the high 32 bits, the
    /// lines written in it in the low 32.
    window: AtomicU64,
    /// Lines left out since the last summary.
    suppressed: AtomicU64,
    suppressed_total: Counter,
}

pub(crate) fn limit() -> &'static LogLimit {
    static LIMIT: OnceLock<LogLimit> = OnceLock::new();
    LIMIT.get_or_init(|| LogLimit {
        epoch: Instant::now(),
        window: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
        suppressed_total: m::registry().counter(&m::ACCESS_LOG_SUPPRESSED_TOTAL, &[]),
    })
}

impl LogLimit {
    /// Whether a refusal line may be written now; if not, it is counted.
    pub(crate) fn allow(&self) -> bool {
        let now = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window, written) = (current >> 32, current & 0xffff_ffff);
            let next = if window == now {
                if written >= REFUSAL_LINES_PER_SECOND {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    self.suppressed_total.increment(1);
                    return false;
                }
                current + 1
            } else {
                (now << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Writes the summary line for what was left out since the last one.
    pub(crate) fn flush(&self) {
        let n = self.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                target: "sniroute::access",
                suppressed = n,
                limit_per_second = REFUSAL_LINES_PER_SECOND,
                "refusal log lines suppressed"
            );
        }
    }
}

/// Flushes the summary once a second, for as long as the process runs.
pub(crate) async fn summaries() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        limit().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_per_second_then_counted() {
        let l = LogLimit {
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            suppressed_total: m::registry().counter(&m::ACCESS_LOG_SUPPRESSED_TOTAL, &[]),
        };
        let allowed = (0..REFUSAL_LINES_PER_SECOND * 3)
            .filter(|_| l.allow())
            .count() as u64;
        // The loop may straddle a second boundary, once.
        assert!(
            (REFUSAL_LINES_PER_SECOND..=2 * REFUSAL_LINES_PER_SECOND).contains(&allowed),
            "{allowed}"
        );
        let suppressed = l.suppressed.load(Ordering::Relaxed);
        assert_eq!(allowed + suppressed, REFUSAL_LINES_PER_SECOND * 3);
        l.flush();
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 0);
    }
}
