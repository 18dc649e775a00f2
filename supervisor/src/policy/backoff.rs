//! Exponential backoff: how long to wait before the next attempt.
//!
//! Decides only a [`Duration`]. It must not sleep, read the clock or draw random numbers: the
//! caller waits, tells it how long the last run was healthy for, and hands in the jitter sample
//! (`rand01` in `[0, 1)`, e.g. from [`super::SplitMix64`]).
//!
//! Retry `k` (0-based, counted since the last reset) waits `initial * factor^k`, capped at `max`;
//! then jitter multiplies that by `1 + jitter * (2 * rand01 - 1)` (a spread of ±`jitter` around
//! the nominal delay) and the result is capped at `max` again. With `jitter = 0` the sequence is
//! exact: 100 ms, 200 ms, 400 ms, … up to `max`.
//!
//! Unlike systemd's `RestartSec`/`RestartSteps`, which never forgets, a run that stayed up for at
//! least `reset_after` starts the sequence over ([`Backoff::on_healthy_run`]).
//!
//! All arithmetic saturates: `factor^k` for a huge `k` or `factor`, a `max` near
//! [`Duration::MAX`], NaN or out-of-range `jitter`/`rand01` never panic and never produce a delay
//! above `max`. The config refuses nonsense settings up front (with their place in the file);
//! [`Backoff`] itself copes with any.

use std::borrow::Borrow;
use std::time::Duration;

use super::BackoffConfig;

/// The backoff state of one task (or one agent's restart loop). It holds its settings (`C`
/// = [`BackoffConfig`]) or borrows them (`&BackoffConfig`: a loop that keeps its agent's spec
/// anyway keeps 16 bytes instead of 72).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff<C: Borrow<BackoffConfig> = BackoffConfig> {
    cfg: C,
    attempts: u32,
}

impl<C: Borrow<BackoffConfig>> Backoff<C> {
    /// A fresh sequence: the next delay is `initial` (give or take jitter).
    pub fn new(cfg: C) -> Self {
        Backoff { cfg, attempts: 0 }
    }

    /// How many delays have been handed out since the last reset (saturates at `u32::MAX`).
    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt, and count it. `rand01` is the jitter sample in
    /// `[0, 1)`: values outside are clamped to `[0, 1]`, NaN counts as 0.5 (no jitter).
    pub fn next_delay(&mut self, rand01: f64) -> Duration {
        let d = self.delay_for(self.attempts, rand01);
        self.attempts = self.attempts.saturating_add(1);
        d
    }

    /// The delay retry `k` (0-based) would get with jitter sample `rand01`, without counting it.
    /// Pure; [`Backoff::next_delay`] is this with `k` the delays handed out so far.
    pub fn delay_for(&self, k: u32, rand01: f64) -> Duration {
        let cfg = self.cfg.borrow();
        let max = cfg.max;
        // u128 -> f64 is lossy only past 2^53 ns (~104 days), and rounds, never panics.
        let max_ns = max.as_nanos() as f64;
        let initial_ns = cfg.initial.as_nanos() as f64;

        // A NaN or negative factor has no meaning: grow by 1 (constant delays). A factor in
        // [0, 1) shrinks the delays; the config refuses it, but it is well defined.
        let factor = if cfg.factor.is_nan() || cfg.factor < 0.0 {
            1.0
        } else {
            cfg.factor
        };
        // powf saturates to +inf rather than overflowing; 0^0 = inf^0 = 1.
        let growth = factor.powf(f64::from(k));
        let nominal = if initial_ns == 0.0 {
            0.0 // and not 0 * inf = NaN
        } else {
            initial_ns * growth
        };
        let nominal = if nominal < max_ns { nominal } else { max_ns };

        let jitter = if cfg.jitter.is_nan() {
            0.0
        } else {
            cfg.jitter.clamp(0.0, 1.0)
        };
        let r = if rand01.is_nan() {
            0.5
        } else {
            rand01.clamp(0.0, 1.0)
        };
        // In [0, 2]; exactly 1.0 when jitter is 0, so the unjittered sequence is exact.
        let spread = 1.0 + jitter * (2.0 * r - 1.0);
        let jittered = nominal * spread;

        if jittered.is_nan() || jittered >= max_ns {
            return max;
        }
        if jittered <= 0.0 {
            return Duration::ZERO;
        }
        // `as` from f64 to u128 saturates; `jittered < max_ns` keeps it near `max` anyway.
        let ns = jittered.round() as u128;
        let secs = ns / 1_000_000_000;
        // The remainder is < 1e9 so it fits u32.
        let sub = (ns % 1_000_000_000) as u32;
        match u64::try_from(secs) {
            // Rounding `max` through f64 may overshoot by a few ns: cap once more.
            Ok(s) => Duration::new(s, sub).min(max),
            Err(_) => max,
        }
    }

    /// Tell it the last attempt ran for `ran_for` before failing. A run of at least
    /// `reset_after` counts as healthy and starts the sequence over (so `reset_after = 0` resets
    /// after every run). Returns whether it started over.
    pub fn on_healthy_run(&mut self, ran_for: Duration) -> bool {
        if ran_for >= self.cfg.borrow().reset_after {
            self.reset();
            true
        } else {
            false
        }
    }

    /// Start the sequence over: the next delay is `initial` again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(initial: u64, max: u64, factor: f64, jitter: f64) -> BackoffConfig {
        BackoffConfig {
            initial: ms(initial),
            max: ms(max),
            factor,
            jitter,
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn exact_sequence_without_jitter() {
        let mut b = Backoff::new(cfg(100, 5_000, 2.0, 0.0));
        let got: Vec<Duration> = (0..9).map(|_| b.next_delay(0.123)).collect();
        let want: Vec<Duration> = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(got, want);
        assert_eq!(b.attempts(), 9);
    }

    #[test]
    fn fractional_factor_is_exact_enough() {
        let mut b = Backoff::new(cfg(100, 1_000, 1.5, 0.0));
        let got: Vec<Duration> = (0..7).map(|_| b.next_delay(0.0)).collect();
        // 337.5 ms, 506.25 ms and 759.375 ms are exact in nanoseconds.
        let want_ns = [
            100_000_000u128,
            150_000_000,
            225_000_000,
            337_500_000,
            506_250_000,
            759_375_000,
            1_000_000_000,
        ];
        assert_eq!(
            got.iter().map(|d| d.as_nanos()).collect::<Vec<_>>(),
            want_ns
        );
    }

    #[test]
    fn factor_one_is_constant() {
        let mut b = Backoff::new(cfg(250, 10_000, 1.0, 0.0));
        for _ in 0..100 {
            assert_eq!(b.next_delay(0.9), ms(250));
        }
    }

    #[test]
    fn jitter_bounds_hold() {
        let jitter = 0.2;
        for k in 0..12u32 {
            let b = Backoff::new(cfg(100, 5_000, 2.0, jitter));
            let nominal = b.delay_for(k, 0.5);
            assert_eq!(
                nominal,
                Backoff::new(cfg(100, 5_000, 2.0, 0.0)).delay_for(k, 0.0)
            );
            let lo = nominal.mul_f64(1.0 - jitter);
            let hi = nominal.mul_f64(1.0 + jitter).min(ms(5_000));
            for r in [0.0, 0.5, 0.999] {
                let d = b.delay_for(k, r);
                assert!(
                    d >= lo && d <= hi,
                    "k={k} r={r}: {d:?} not in [{lo:?}, {hi:?}]"
                );
                assert!(d <= ms(5_000));
            }
            // The low end is hit exactly at r = 0.
            assert_eq!(b.delay_for(k, 0.0), lo);
        }
    }

    #[test]
    fn jitter_at_the_cap_stays_at_or_below_max() {
        let b = Backoff::new(cfg(100, 1_000, 2.0, 0.5));
        assert_eq!(b.delay_for(20, 0.999), ms(1_000));
        assert_eq!(b.delay_for(20, 0.5), ms(1_000));
        assert_eq!(b.delay_for(20, 0.0), ms(500));
    }

    #[test]
    fn out_of_range_samples_are_clamped() {
        let b = Backoff::new(cfg(100, 5_000, 2.0, 0.5));
        assert_eq!(b.delay_for(0, -3.0), ms(50));
        assert_eq!(b.delay_for(0, 7.0), ms(150));
        assert_eq!(b.delay_for(0, f64::NAN), ms(100));
        assert_eq!(b.delay_for(0, f64::INFINITY), ms(150));
        let wild = Backoff::new(cfg(100, 5_000, 2.0, f64::NAN));
        assert_eq!(wild.delay_for(0, 0.0), ms(100));
        let wide = Backoff::new(cfg(100, 5_000, 2.0, 9.0));
        assert_eq!(wide.delay_for(0, 0.0), Duration::ZERO);
    }

    #[test]
    fn healthy_run_resets() {
        let mut b = Backoff::new(cfg(100, 5_000, 2.0, 0.0));
        b.next_delay(0.0);
        b.next_delay(0.0);
        assert_eq!(b.next_delay(0.0), ms(400));
        // Short run: keeps growing.
        assert!(!b.on_healthy_run(Duration::from_secs(59)));
        assert_eq!(b.next_delay(0.0), ms(800));
        // Long enough run: starts over.
        assert!(b.on_healthy_run(Duration::from_secs(60)));
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(0.0), ms(100));
        assert_eq!(b.next_delay(0.0), ms(200));
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(100));
    }

    #[test]
    fn no_panic_for_huge_k_or_factor() {
        let b = Backoff::new(cfg(100, 5_000, 2.0, 0.3));
        assert!(b.delay_for(10_000, 0.999) <= ms(5_000));
        assert_eq!(b.delay_for(u32::MAX, 0.5), ms(5_000));
        let huge = Backoff::new(cfg(100, 5_000, 1e300, 0.0));
        assert_eq!(huge.delay_for(0, 0.0), ms(100));
        assert_eq!(huge.delay_for(1, 0.0), ms(5_000));
        assert_eq!(huge.delay_for(10_000, 0.0), ms(5_000));
        let inf = Backoff::new(cfg(100, 5_000, f64::INFINITY, 0.0));
        assert_eq!(inf.delay_for(0, 0.0), ms(100));
        assert_eq!(inf.delay_for(3, 0.0), ms(5_000));
        let zero_initial = Backoff::new(cfg(0, 5_000, f64::INFINITY, 0.0));
        assert_eq!(zero_initial.delay_for(9, 0.0), Duration::ZERO);
        let nan = Backoff::new(cfg(100, 5_000, f64::NAN, 0.0));
        assert_eq!(nan.delay_for(9, 0.0), ms(100));
        let neg = Backoff::new(cfg(100, 5_000, -2.0, 0.0));
        assert_eq!(neg.delay_for(3, 0.0), ms(100));
        // A cap at Duration::MAX.
        let top = Backoff::new(BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            factor: 10.0,
            jitter: 1.0,
            reset_after: Duration::MAX,
        });
        assert_eq!(top.delay_for(1_000, 0.999), Duration::MAX);
        assert!(top.delay_for(1_000, 0.2) < Duration::MAX);
        // Counting past u32::MAX saturates.
        let mut b = Backoff {
            cfg: cfg(100, 5_000, 2.0, 0.0),
            attempts: u32::MAX - 1,
        };
        b.next_delay(0.0);
        b.next_delay(0.0);
        assert_eq!(b.attempts(), u32::MAX);
    }

    #[test]
    fn max_below_initial_caps_everything() {
        let b = Backoff::new(cfg(1_000, 300, 2.0, 0.0));
        assert_eq!(b.delay_for(0, 0.0), ms(300));
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            0.0..1.0f64,
            0.0..100.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(1e300),
        ]
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..10_000_000).prop_map(Duration::from_micros),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::MAX),
            Just(Duration::ZERO),
        ]
    }

    proptest! {
        #[test]
        fn never_exceeds_max_never_panics(
            initial in any_duration(),
            max in any_duration(),
            factor in any_f64(),
            jitter in any_f64(),
            rand01 in any_f64(),
            k in prop_oneof![0u32..64, any::<u32>()],
        ) {
            let b = Backoff::new(BackoffConfig {
                initial, max, factor, jitter, reset_after: Duration::ZERO,
            });
            let d = b.delay_for(k, rand01);
            prop_assert!(d <= max, "{d:?} > {max:?}");
        }

        #[test]
        fn valid_configs_grow_monotonically_without_jitter(
            initial_ms in 0u64..10_000,
            extra_ms in 0u64..1_000_000,
            factor in 1.5..10.0f64,
        ) {
            let max = Duration::from_millis(initial_ms + extra_ms);
            let mut b = Backoff::new(BackoffConfig {
                initial: Duration::from_millis(initial_ms),
                max,
                factor,
                jitter: 0.0,
                reset_after: Duration::ZERO,
            });
            let mut prev = Duration::ZERO;
            for _ in 0..80 {
                let d = b.next_delay(0.5);
                prop_assert!(d >= prev && d <= max);
                prev = d;
            }
            prop_assert_eq!(prev, if initial_ms == 0 { Duration::ZERO } else { max });
        }

        #[test]
        fn jitter_stays_within_its_band(
            k in 0u32..40,
            jitter in 0.0..=1.0f64,
            rand01 in 0.0..1.0f64,
        ) {
            let c = BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                factor: 2.0,
                jitter,
                reset_after: Duration::ZERO,
            };
            let nominal = Backoff::new(BackoffConfig { jitter: 0.0, ..c.clone() }).delay_for(k, 0.0);
            let d = Backoff::new(c).delay_for(k, rand01).as_secs_f64();
            let n = nominal.as_secs_f64();
            let slack = 1e-9;
            prop_assert!(d >= n * (1.0 - jitter) - slack);
            prop_assert!(d <= (n * (1.0 + jitter)).min(30.0) + slack);
        }
    }
}
