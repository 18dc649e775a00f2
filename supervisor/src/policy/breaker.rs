//! Circuit breaker per agent type: stop starting an agent type that keeps failing, then probe.
//!
//! Decides whether a call may start ([`Breaker::admit`]) from the outcomes it was told about. It
//! must not read the clock, time anything out or start anything; and it does not judge outcomes:
//! the caller reports only the failures that say something about the agent's health
//! ([`super::counts_for_breaker`] is the rule the caller uses), and reports outcomes that count
//! for nothing (cancelled, shut down) with [`Breaker::on_uncounted`].
//!
//! The states:
//!
//! - **Closed**: every call goes. `failures` consecutive counted failures open it; a success
//!   resets the count.
//! - **Open** until `now + open_for`: every call is rejected with the time left.
//! - **Half-open** once that has passed: the next call is *the probe*; while it is in flight
//!   every other call is rejected. Its success closes the breaker; its failure opens it for
//!   another `open_for`. A probe that ends uncounted (cancelled) frees the slot for a new probe.
//!
//! Choices worth knowing:
//!
//! - `failures = 0` disables the breaker: it never opens (it is "off", not "open on nothing").
//! - Results arriving while **open** come from calls admitted before it opened; they are ignored
//!   (a late success does not close it, a late failure does not extend it).
//! - Results arriving while **half-open** are taken as the probe's: without a ticket per call the
//!   breaker cannot tell a straggler from the probe, and a success is a success either way.
//! - While a probe is in flight, `retry_after` is `open_for`: the probe's duration is unknown,
//!   and that is the interval the breaker itself would wait if the probe failed.

use std::time::{Duration, Instant};

use super::{instant_after, BreakerConfig};

/// Whether a call may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: go.
    Closed,
    /// Half-open: go, and this call is the probe whose outcome decides.
    Probe,
    /// Do not start the call (record it as `circuit_open`).
    Rejected {
        /// How long until asking again may succeed.
        retry_after: Duration,
    },
}

/// The breaker's state, as its tests observe it.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go.
    Closed {
        /// Counted failures in a row so far.
        consecutive_failures: u32,
    },
    /// Calls are rejected until `until`.
    Open {
        /// When the next call becomes the probe.
        until: Instant,
    },
    /// The next call is (or the current call is) the probe.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// The circuit breaker of one agent type.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    /// A closed breaker with no failures counted.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Inner::Closed { failures: 0 },
        }
    }

    /// May a call start at `now`? An open breaker whose time is up turns half-open here and
    /// hands out the probe.
    /// The state's name for status displays: `closed`, `open` or `half_open` (an open
    /// breaker whose time is up shows `half_open`: the next call is the probe).
    pub fn label(&self, now: Instant) -> &'static str {
        match self.inner {
            Inner::Closed { .. } => "closed",
            Inner::Open { until } if now < until => "open",
            _ => "half_open",
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.inner {
            Inner::Closed { .. } => Admission::Closed,
            Inner::Open { until } if now < until => Admission::Rejected {
                retry_after: until.saturating_duration_since(now),
            },
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                Admission::Probe
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => Admission::Rejected {
                retry_after: self.cfg.open_for,
            },
        }
    }

    /// An admitted call succeeded: close and forget the failures (ignored while open).
    pub fn on_success(&mut self, _now: Instant) {
        match self.inner {
            Inner::Open { .. } => {}
            Inner::Closed { .. } | Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed { failures: 0 };
            }
        }
    }

    /// An admitted call failed in a way that counts. Closed: one more in a row, opening at
    /// `failures`. Half-open: the probe failed, open again for `open_for`. Open: ignored.
    pub fn on_failure(&mut self, now: Instant) {
        match self.inner {
            Inner::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if self.cfg.failures > 0 && failures >= self.cfg.failures {
                    self.open(now);
                } else {
                    self.inner = Inner::Closed { failures };
                }
            }
            Inner::HalfOpen { .. } => self.open(now),
            Inner::Open { .. } => {}
        }
    }

    /// An admitted call ended in a way that counts for nothing (cancelled, shutdown, a bad input).
    /// The consecutive count is left as it is; if the call was the probe, the next call may probe.
    pub fn on_uncounted(&mut self) {
        if let Inner::HalfOpen {
            probe_in_flight: true,
        } = self.inner
        {
            self.inner = Inner::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// The state at `now`. An open breaker whose time is up shows as half-open (the next call
    /// probes).
    #[cfg(test)]
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            Inner::Open { until } if now < until => BreakerState::Open { until },
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn open(&mut self, now: Instant) {
        self.inner = Inner::Open {
            until: instant_after(now, self.cfg.open_for),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn breaker(failures: u32, open_for: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            failures,
            open_for: s(open_for),
        })
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = breaker(3, 30);
        for n in 1..=2u32 {
            assert_eq!(b.admit(t0), Admission::Closed);
            b.on_failure(t0);
            assert_eq!(
                b.state(t0),
                BreakerState::Closed {
                    consecutive_failures: n
                }
            );
        }
        assert_eq!(b.admit(t0 + s(1)), Admission::Closed);
        b.on_failure(t0 + s(1));
        assert_eq!(b.state(t0 + s(1)), BreakerState::Open { until: t0 + s(31) });
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker(3, 30);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.admit(t0), Admission::Closed);
        b.on_failure(t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
    }

    #[test]
    fn rejects_while_open_with_correct_retry_after() {
        let t0 = Instant::now();
        let mut b = breaker(1, 30);
        b.on_failure(t0);
        assert_eq!(b.admit(t0), Admission::Rejected { retry_after: s(30) });
        assert_eq!(
            b.admit(t0 + s(12)),
            Admission::Rejected { retry_after: s(18) }
        );
        assert_eq!(
            b.admit(t0 + s(30) - Duration::from_millis(1)),
            Admission::Rejected {
                retry_after: Duration::from_millis(1)
            }
        );
        // Rejections change nothing.
        assert_eq!(
            b.state(t0 + s(29)),
            BreakerState::Open { until: t0 + s(30) }
        );
        assert_eq!(b.state(t0 + s(30)), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let t0 = Instant::now();
        let mut b = breaker(1, 30);
        b.on_failure(t0);
        let t = t0 + s(30);
        assert_eq!(b.admit(t), Admission::Probe);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        for k in 0..5 {
            assert_eq!(
                b.admit(t + s(k)),
                Admission::Rejected { retry_after: s(30) }
            );
        }
    }

    #[test]
    fn probe_success_closes() {
        let t0 = Instant::now();
        let mut b = breaker(2, 30);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.admit(t0 + s(31)), Admission::Probe);
        b.on_success(t0 + s(32));
        assert_eq!(
            b.state(t0 + s(32)),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert_eq!(b.admit(t0 + s(32)), Admission::Closed);
        assert_eq!(b.admit(t0 + s(32)), Admission::Closed);
        // And it takes `failures` fresh failures to open again.
        b.on_failure(t0 + s(33));
        assert_eq!(b.admit(t0 + s(33)), Admission::Closed);
    }

    #[test]
    fn probe_failure_reopens_for_another_period() {
        let t0 = Instant::now();
        let mut b = breaker(2, 30);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.admit(t0 + s(40)), Admission::Probe);
        b.on_failure(t0 + s(45));
        assert_eq!(
            b.state(t0 + s(45)),
            BreakerState::Open { until: t0 + s(75) }
        );
        assert_eq!(
            b.admit(t0 + s(50)),
            Admission::Rejected { retry_after: s(25) }
        );
        assert_eq!(b.admit(t0 + s(75)), Admission::Probe);
    }

    #[test]
    fn uncounted_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = breaker(1, 10);
        b.on_failure(t0);
        assert_eq!(b.admit(t0 + s(10)), Admission::Probe);
        b.on_uncounted();
        assert_eq!(b.state(t0 + s(10)), BreakerState::HalfOpen);
        assert_eq!(b.admit(t0 + s(11)), Admission::Probe);
        assert!(matches!(b.admit(t0 + s(11)), Admission::Rejected { .. }));
        // Uncounted outcomes while closed leave the count alone.
        let mut c = breaker(3, 10);
        c.on_failure(t0);
        c.on_uncounted();
        assert_eq!(
            c.state(t0),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
    }

    #[test]
    fn late_results_while_open_are_ignored() {
        let t0 = Instant::now();
        let mut b = breaker(1, 10);
        b.on_failure(t0);
        b.on_success(t0 + s(1));
        assert_eq!(b.state(t0 + s(1)), BreakerState::Open { until: t0 + s(10) });
        b.on_failure(t0 + s(5));
        assert_eq!(b.state(t0 + s(5)), BreakerState::Open { until: t0 + s(10) });
    }

    #[test]
    fn zero_failures_disables_and_huge_or_zero_open_for_holds() {
        let t0 = Instant::now();
        let mut off = breaker(0, 10);
        for _ in 0..100 {
            off.on_failure(t0);
            assert_eq!(off.admit(t0), Admission::Closed);
        }
        assert_eq!(
            off.state(t0),
            BreakerState::Closed {
                consecutive_failures: 100
            }
        );
        // open_for that cannot be represented does not panic.
        let mut huge = Breaker::new(BreakerConfig {
            failures: 1,
            open_for: Duration::MAX,
        });
        huge.on_failure(t0);
        assert!(matches!(
            huge.admit(t0 + s(1_000_000)),
            Admission::Rejected { .. }
        ));
        // Zero open_for: straight to the probe.
        let mut quick = breaker(1, 0);
        quick.on_failure(t0);
        assert_eq!(quick.admit(t0), Admission::Probe);
    }
}
