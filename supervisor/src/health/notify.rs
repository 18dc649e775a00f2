//! The systemd notify protocol through the `sd-notify` crate: `READY=1`, `STATUS=`,
//! `WATCHDOG=1` (when `WATCHDOG_USEC` asks for it), `RELOADING=1` with `MONOTONIC_USEC`,
//! `STOPPING=1` and `EXTEND_TIMEOUT_USEC`. Without `NOTIFY_SOCKET` every call does nothing.

use sd_notify::NotifyState;
use std::time::Duration;

/// Says the daemon's state to the service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment: `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        // As libsystemd's sd_watchdog_enabled: WATCHDOG_USEC, for this process when
        // WATCHDOG_PID names it or is unset.
        let var = |k| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let ours = var("WATCHDOG_PID").is_none_or(|p| p == u64::from(std::process::id()));
        let watchdog = var("WATCHDOG_USEC")
            .filter(|_| ours)
            .map(Duration::from_micros)
            .filter(|d| !d.is_zero());
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog,
        }
    }

    /// The watchdog interval systemd expects pings within, when it wants them.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("sd_notify: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=…`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(m) => self.send(&[NotifyState::Reloading, m]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1` with `EXTEND_TIMEOUT_USEC` (how long the drain may take).
    pub fn stopping(&self, drain: Duration) {
        let usec = u32::try_from(drain.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::Stopping,
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status("draining"),
        ]);
    }
}
