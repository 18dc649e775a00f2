//! Stopping a call from outside it: a [`StopHandle`] kept by whoever may stop the call, and the
//! [`Stop`] the call watches.
//!
//! A stop ends the running attempt with escalation (the agent's `Shutdown`, then SIGTERM, then
//! SIGKILL of its whole group after `kill_grace`), records the reason given in its exit record,
//! and starts no further attempt. One handle may stop any number of calls: give each a clone of
//! the same [`Stop`]. Dropping the handle without stopping stops nothing.
//!
//! ```
//! use corral::{ExitReason, Stop};
//!
//! let (handle, stop) = Stop::new();
//! assert_eq!(stop.reason(), None);
//! handle.stop(ExitReason::Cancelled);
//! assert_eq!(stop.reason(), Some(ExitReason::Cancelled));
//! ```

use crate::record::ExitReason;
use std::sync::Arc;
use tokio::sync::watch;

/// Stops the calls watching its [`Stop`]. Cheap to clone; every clone stops the same calls.
#[derive(Debug, Clone)]
pub struct StopHandle {
    tx: Arc<watch::Sender<Option<ExitReason>>>,
}

/// What a call watches to know it must stop (see [`crate::CallOptions`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: watch::Receiver<Option<ExitReason>>,
}

impl Stop {
    /// A new pair: the handle that stops, and what the calls watch.
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(None);
        (StopHandle { tx: Arc::new(tx) }, Stop { rx })
    }

    /// The reason given, once stopped.
    pub fn reason(&self) -> Option<ExitReason> {
        *self.rx.borrow()
    }

    /// Wait until stopped, and say why. Never returns when every handle is dropped without
    /// stopping.
    pub async fn stopped(&mut self) -> ExitReason {
        loop {
            if let Some(reason) = *self.rx.borrow_and_update() {
                return reason;
            }
            if self.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The channel underneath, as the call path takes it.
    pub fn into_receiver(self) -> watch::Receiver<Option<ExitReason>> {
        self.rx
    }
}

impl StopHandle {
    /// Stop the calls watching this handle's [`Stop`], recording `reason` (usually
    /// [`ExitReason::Cancelled`] or [`ExitReason::Shutdown`]). The first reason given stays.
    pub fn stop(&self, reason: ExitReason) {
        self.tx.send_if_modified(|now| {
            if now.is_some() {
                return false;
            }
            *now = Some(reason);
            true
        });
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.tx.borrow().is_some()
    }
}

impl From<Stop> for watch::Receiver<Option<ExitReason>> {
    fn from(stop: Stop) -> Self {
        stop.into_receiver()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_reaches_every_clone_and_the_first_reason_stays() {
        let (handle, stop) = Stop::new();
        let mut waiting = stop.clone();
        let waiter = tokio::spawn(async move { waiting.stopped().await });
        assert!(!handle.is_stopped());
        handle.clone().stop(ExitReason::Shutdown);
        handle.stop(ExitReason::Cancelled);
        assert!(handle.is_stopped());
        assert_eq!(waiter.await.ok(), Some(ExitReason::Shutdown));
        assert_eq!(stop.reason(), Some(ExitReason::Shutdown));
        let rx: watch::Receiver<Option<ExitReason>> = stop.into();
        assert_eq!(*rx.borrow(), Some(ExitReason::Shutdown));
    }

    #[tokio::test]
    async fn a_stop_made_after_the_watcher_was_cloned_is_seen() {
        let (handle, stop) = Stop::new();
        let mut late = stop.clone();
        drop(stop);
        handle.stop(ExitReason::Cancelled);
        assert_eq!(late.stopped().await, ExitReason::Cancelled);
    }
}
