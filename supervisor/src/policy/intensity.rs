//! Restart intensity per agent type, after Erlang/OTP's supervisor `intensity`/`period`.
//!
//! Decides whether one more restart of an agent type is still reasonable: more than `max`
//! restarts within a sliding window of `period` make the type *fatal* for `fatal_cooldown`.
//! It must not read the clock, sleep or restart anything: the caller reports each restart with
//! its `now`, and asks [`Intensity::state`] before starting the next one.
//!
//! Two departures from the classics, both deliberate:
//!
//! - OTP's supervisor gives up for good (it exits, escalating to its parent) and systemd's
//!   `start-limit-hit` sticks until an operator's `reset-failed`. Here fatal **recovers by
//!   itself** once `now >= until`, and the window is cleared on recovery, so the type gets a
//!   full `max` restarts again. An operator can still recover it early with [`Intensity::reset`].
//! - While fatal, [`Intensity::record_restart`] does not record anything or extend the cooldown:
//!   a restart that should not have happened (the caller skipped [`Intensity::state`]) is
//!   answered with the same `Fatal` verdict.
//!
//! `max = 0` allows no restart at all (the first one is fatal), as in OTP. A `period` of zero
//! keeps nothing in the window, so only `max = 0` can ever be fatal. The window never holds more
//! than `max + 1` timestamps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{instant_after, IntensityConfig};

/// The answer to one reported restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntensityVerdict {
    /// Within limits.
    Allowed {
        /// Restarts within the window, this one included.
        restart_count: u32,
    },
    /// Too many: the type is fatal until `until`.
    Fatal {
        /// When the type recovers by itself.
        until: Instant,
        /// Restarts within the window, this one included (`max + 1` when it just went fatal).
        restart_count: u32,
    },
}

/// Where the type stands, for the status display and the spawn gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntensityState {
    /// Restarts are allowed.
    Healthy,
    /// No restarts until `until`.
    Fatal {
        /// When the type recovers by itself.
        until: Instant,
    },
}

/// The restart window of one agent type.
#[derive(Debug, Clone)]
pub struct Intensity {
    cfg: IntensityConfig,
    /// Restart times within the window, oldest first (as reported; not assumed sorted).
    restarts: VecDeque<Instant>,
    fatal_until: Option<Instant>,
}

impl Intensity {
    /// A healthy type with an empty window.
    pub fn new(cfg: IntensityConfig) -> Self {
        Intensity {
            cfg,
            restarts: VecDeque::new(),
            fatal_until: None,
        }
    }

    /// Report a restart happening at `now` and learn whether it is allowed.
    ///
    /// A fatal period that has elapsed (`now >= until`) is recovered from first, with an empty
    /// window. Then timestamps older than `period` are dropped, `now` is added, and if the window
    /// holds more than `max` the type goes fatal until `now + fatal_cooldown` and the window is
    /// kept (for display) until recovery.
    pub fn record_restart(&mut self, now: Instant) -> IntensityVerdict {
        self.recover_if_due(now);
        if let Some(until) = self.fatal_until {
            return IntensityVerdict::Fatal {
                until,
                restart_count: self.len(),
            };
        }
        self.prune(now);
        self.restarts.push_back(now);
        let restart_count = self.len();
        if restart_count > self.cfg.max {
            let until = instant_after(now, self.cfg.fatal_cooldown);
            self.fatal_until = Some(until);
            IntensityVerdict::Fatal {
                until,
                restart_count,
            }
        } else {
            IntensityVerdict::Allowed { restart_count }
        }
    }

    /// Whether restarts are allowed at `now`. Pure: recovery is observed here as soon as
    /// `now >= until`, and applied to the window on the next [`Intensity::record_restart`].
    pub fn state(&self, now: Instant) -> IntensityState {
        match self.fatal_until {
            Some(until) if now < until => IntensityState::Fatal { until },
            _ => IntensityState::Healthy,
        }
    }

    /// Restarts within the window at `now` (what the exit record's `restart_count` shows):
    /// 0 once a fatal period has elapsed, since recovery clears the window.
    #[cfg(test)]
    pub fn restart_count(&self, now: Instant) -> u32 {
        match self.fatal_until {
            Some(until) if now >= until => 0,
            Some(_) => self.len(),
            None => {
                let n = self
                    .restarts
                    .iter()
                    .filter(|&&t| in_window(now, t, self.cfg.period))
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    /// An operator's explicit restart: healthy again, with an empty window.
    pub fn reset(&mut self) {
        self.restarts.clear();
        self.fatal_until = None;
    }

    fn recover_if_due(&mut self, now: Instant) {
        if matches!(self.fatal_until, Some(until) if now >= until) {
            self.reset();
        }
    }

    fn prune(&mut self, now: Instant) {
        let period = self.cfg.period;
        self.restarts.retain(|&t| in_window(now, t, period));
    }

    fn len(&self) -> u32 {
        u32::try_from(self.restarts.len()).unwrap_or(u32::MAX)
    }
}

/// Whether a restart at `t` still counts at `now`: less than `period` ago. A `t` after `now`
/// (the caller's clock went backwards between reports) counts.
fn in_window(now: Instant, t: Instant, period: Duration) -> bool {
    now.saturating_duration_since(t) < period
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cfg(max: u32, period: u64, cooldown: u64) -> IntensityConfig {
        IntensityConfig {
            max,
            period: s(period),
            fatal_cooldown: s(cooldown),
        }
    }

    #[test]
    fn max_restarts_allowed_then_fatal() {
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(3, 10, 60));
        for n in 1..=3 {
            assert_eq!(
                i.record_restart(t0 + s(n)),
                IntensityVerdict::Allowed {
                    restart_count: n as u32
                }
            );
            assert_eq!(i.state(t0 + s(n)), IntensityState::Healthy);
        }
        let now = t0 + s(4);
        assert_eq!(
            i.record_restart(now),
            IntensityVerdict::Fatal {
                until: now + s(60),
                restart_count: 4
            }
        );
        assert_eq!(i.state(now), IntensityState::Fatal { until: now + s(60) });
        assert_eq!(i.restart_count(now), 4);
    }

    #[test]
    fn restarts_while_fatal_do_not_extend_it() {
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(1, 10, 60));
        i.record_restart(t0);
        let until = t0 + s(61);
        assert_eq!(
            i.record_restart(t0 + s(1)),
            IntensityVerdict::Fatal {
                until,
                restart_count: 2
            }
        );
        assert_eq!(
            i.record_restart(t0 + s(30)),
            IntensityVerdict::Fatal {
                until,
                restart_count: 2
            }
        );
        assert_eq!(i.state(t0 + s(60)), IntensityState::Fatal { until });
    }

    #[test]
    fn window_slides_so_old_restarts_expire() {
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(3, 10, 60));
        // Restarts at 0, 4, 8: three in the window.
        for n in [0, 4, 8] {
            assert!(matches!(
                i.record_restart(t0 + s(n)),
                IntensityVerdict::Allowed { .. }
            ));
        }
        // At 10 the one at 0 is exactly `period` old: gone. Window = {4, 8, 10}.
        assert_eq!(
            i.record_restart(t0 + s(10)),
            IntensityVerdict::Allowed { restart_count: 3 }
        );
        assert_eq!(i.restart_count(t0 + s(10)), 3);
        // At 15: 4 has left (11 s old), 8 and 10 remain; at 19 only 10 does.
        assert_eq!(i.restart_count(t0 + s(15)), 2);
        assert_eq!(i.restart_count(t0 + s(19)), 1);
        // At 13 the one at 4 is still in (9 s old): {4, 8, 10, 13} = 4 > 3.
        assert!(matches!(
            i.record_restart(t0 + s(13)),
            IntensityVerdict::Fatal {
                restart_count: 4,
                ..
            }
        ));
    }

    #[test]
    fn steady_slow_restarts_never_go_fatal() {
        // One restart every 5 s against 2 per 10 s: the one 10 s back has always just left.
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(2, 10, 60));
        for n in 0..1_000u64 {
            assert!(matches!(
                i.record_restart(t0 + s(n * 5)),
                IntensityVerdict::Allowed { restart_count } if restart_count <= 2
            ));
        }
    }

    #[test]
    fn recovers_by_itself_after_cooldown_with_a_clear_window() {
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(2, 100, 30));
        i.record_restart(t0);
        i.record_restart(t0 + s(1));
        let v = i.record_restart(t0 + s(2));
        let until = t0 + s(32);
        assert_eq!(
            v,
            IntensityVerdict::Fatal {
                until,
                restart_count: 3
            }
        );
        assert_eq!(
            i.state(until - Duration::from_nanos(1)),
            IntensityState::Fatal { until }
        );
        assert_eq!(i.state(until), IntensityState::Healthy);
        assert_eq!(i.restart_count(until), 0);
        // Window cleared on recovery although the old restarts are < period old.
        assert_eq!(
            i.record_restart(until),
            IntensityVerdict::Allowed { restart_count: 1 }
        );
        assert_eq!(
            i.record_restart(until + s(1)),
            IntensityVerdict::Allowed { restart_count: 2 }
        );
        assert!(matches!(
            i.record_restart(until + s(2)),
            IntensityVerdict::Fatal { .. }
        ));
    }

    #[test]
    fn operator_reset() {
        let t0 = Instant::now();
        let mut i = Intensity::new(cfg(1, 100, 3_600));
        i.record_restart(t0);
        assert!(matches!(
            i.record_restart(t0),
            IntensityVerdict::Fatal { .. }
        ));
        i.reset();
        assert_eq!(i.state(t0 + s(1)), IntensityState::Healthy);
        assert_eq!(i.restart_count(t0 + s(1)), 0);
        assert_eq!(
            i.record_restart(t0 + s(1)),
            IntensityVerdict::Allowed { restart_count: 1 }
        );
    }

    #[test]
    fn edge_settings() {
        let t0 = Instant::now();
        // max = 0: no restart at all.
        let mut none = Intensity::new(cfg(0, 10, 5));
        assert!(matches!(
            none.record_restart(t0),
            IntensityVerdict::Fatal {
                restart_count: 1,
                ..
            }
        ));
        // period = 0: nothing accumulates.
        let mut zero = Intensity::new(cfg(1, 0, 5));
        for _ in 0..10 {
            assert_eq!(
                zero.record_restart(t0),
                IntensityVerdict::Allowed { restart_count: 1 }
            );
        }
        // A cooldown that cannot be represented does not panic and means "a very long time".
        let mut forever = Intensity::new(IntensityConfig {
            max: 0,
            period: Duration::MAX,
            fatal_cooldown: Duration::MAX,
        });
        match forever.record_restart(t0) {
            IntensityVerdict::Fatal { until, .. } => {
                assert!(until > t0 + s(100 * 365 * 24 * 3600));
                assert_eq!(
                    forever.state(t0 + s(1_000_000)),
                    IntensityState::Fatal { until }
                );
            }
            v => panic!("{v:?}"),
        }
        // The clock going backwards between reports does not panic; the future one counts.
        let mut back = Intensity::new(cfg(5, 10, 5));
        back.record_restart(t0 + s(100));
        assert_eq!(
            back.record_restart(t0 + s(50)),
            IntensityVerdict::Allowed { restart_count: 2 }
        );
    }
}
