//! Restart, backoff, intensity, circuit breaker and quarantine: pure decisions over an injected
//! clock (in progress).

use std::time::Duration;

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
