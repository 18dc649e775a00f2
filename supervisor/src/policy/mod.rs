//! Restart, backoff, intensity, circuit breaker and quarantine: pure decisions over an injected
//! clock.
//!
//! Everything here decides; nothing here acts. No function in this module (or its submodules)
//! spawns a process, starts a thread, reads the real clock, sleeps, or does I/O: the caller passes
//! `now` (an [`Instant`]) or a [`Duration`] explicitly, and randomness (backoff jitter) is passed in
//! as a sample in `[0, 1)` — [`SplitMix64`] is a small seeded generator the caller may use to make
//! those samples reproducibly. That keeps every decision testable against a fake clock.
//!
//! - [`backoff`]: how long to wait before the next attempt ([`Backoff`]).
//! - [`intensity`]: Erlang/OTP restart intensity per agent type ([`Intensity`]).
//! - [`breaker`]: circuit breaker per agent type ([`Breaker`]).
//! - [`quarantine`]: poison-input detection ([`Quarantine`], [`input_key`]).
//! - [`restart`]: whether a finished attempt is retried ([`decide`] on a [`FinishedAttempt`],
//!   giving a [`RetryVerdict`]; [`restart::counts_for_breaker`]).
//! - [`rng`]: the injected jitter source ([`SplitMix64`]).

use std::time::{Duration, Instant};

pub mod backoff;
pub mod breaker;
pub mod intensity;
pub mod quarantine;
pub mod restart;
pub mod rng;

pub use backoff::Backoff;
pub use breaker::{Admission, Breaker};
pub use intensity::{Intensity, IntensityState, IntensityVerdict};
pub use quarantine::{input_key, Fingerprint, Quarantine};
pub use restart::{decide, FinishedAttempt, RetryRules, RetryVerdict};

pub use rng::SplitMix64;

/// `now + d`, or the latest representable instant on the way there: never panics, whatever `d`.
///
/// `Instant + Duration` panics on overflow, and a configured cooldown of `u64::MAX` seconds is
/// caller-controlled input; halving the step until it fits lands at least half-way to the
/// representable limit, which for any wait is "forever".
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    let mut step = d;
    loop {
        if let Some(t) = now.checked_add(step) {
            return t;
        }
        // Terminates: `step` halves towards zero, and `now + 0` always fits.
        step /= 2;
    }
}

/// Exponential backoff settings (`backoff = { … }`).
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per retry.
    pub factor: f64,
    /// Fraction of random spread, 0.0..=1.0.
    pub jitter: f64,
    /// Healthy run time after which the backoff starts over.
    pub reset_after: Duration,
}

/// Restart intensity settings (`intensity = { … }`), after Erlang/OTP.
#[derive(Debug, Clone, PartialEq)]
pub struct IntensityConfig {
    /// More than this many restarts within `period` makes the agent type fatal.
    pub max: u32,
    /// The sliding window.
    pub period: Duration,
    /// How long fatal lasts before the type recovers by itself.
    pub fatal_cooldown: Duration,
}

/// Circuit breaker settings (`breaker = { … }`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before a half-open probe.
    pub open_for: Duration,
}

/// `restart = "never" | "on-failure" | "always"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Retry a failed task while it is retryable and under `max_retries`.
    OnFailure,
    /// Keep the agent running (a service): restart after any exit.
    Always,
}
