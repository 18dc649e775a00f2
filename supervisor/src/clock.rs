//! The time the supervisor's policy runs on: when a backoff ends, and the `now` that restart
//! intensity and the circuit breaker decide with (the policy room takes it as an argument).
//!
//! A [`Supervisor`](crate::run::Supervisor) reads the [`SystemClock`] unless it is given
//! another ([`Supervisor::with_clock`](crate::run::Supervisor::with_clock)). A
//! [`ManualClock`] moves only when told to: a test (or a simulation) runs real agents and
//! drives the policy's time itself, so that no backoff or breaker is waited out in real time.
//! The watchdogs of a running agent are not on this clock: they watch real processes, on the
//! runtime's timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A wait on a [`Clock`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of `now` and of waits.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;

    /// A wait of `d` on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// The system's monotonic clock, and the runtime's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only by [`ManualClock::advance`]. Its waits end when it is advanced to
/// their end; [`ManualClock::run`] advances it whenever something waits on it. Clones are the
/// same clock.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Told when a wait starts.
    waiting: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    base: Instant,
    offset: Duration,
    /// Waits not over yet: id, end, waker.
    sleepers: Vec<(u64, Instant, Option<Waker>)>,
    next_id: u64,
    /// Every wait asked for, in order.
    slept: Vec<Duration>,
}

impl State {
    fn now(&self) -> Instant {
        crate::policy::instant_after(self.base, self.offset)
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock standing at the present instant.
    pub fn new() -> ManualClock {
        ManualClock {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    base: Instant::now(),
                    offset: Duration::ZERO,
                    sleepers: Vec::new(),
                    next_id: 0,
                    slept: Vec::new(),
                }),
                waiting: tokio::sync::Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move the clock `d` forward; the waits that end by then are over.
    pub fn advance(&self, d: Duration) {
        let mut st = self.state();
        st.offset = st.offset.saturating_add(d);
        let now = st.now();
        for (_, end, waker) in st.sleepers.iter_mut() {
            if *end <= now {
                if let Some(w) = waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Every wait asked of this clock so far, in order (a zero wait is none: not asked).
    pub fn slept(&self) -> Vec<Duration> {
        self.state().slept.clone()
    }

    /// How long until the first wait not over yet ends, once there is one.
    pub async fn next_wait(&self) -> Duration {
        loop {
            let notified = self.inner.waiting.notified();
            {
                let st = self.state();
                let now = st.now();
                let first = st
                    .sleepers
                    .iter()
                    .map(|(_, end, _)| *end)
                    .filter(|end| *end > now)
                    .min();
                if let Some(end) = first {
                    return end - now;
                }
            }
            notified.await;
        }
    }

    /// Run `fut` to its end, moving the clock to the end of each wait as soon as something
    /// waits on it: time spent waiting on this clock costs no real time, and everything else
    /// (real processes, their watchdogs) runs as it would.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                d = self.next_wait() => self.advance(d),
            }
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.state().now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let id = {
            let mut st = self.state();
            st.slept.push(d);
            let id = st.next_id;
            st.next_id += 1;
            let end = crate::policy::instant_after(st.now(), d);
            st.sleepers.push((id, end, None));
            id
        };
        self.inner.waiting.notify_one();
        Box::pin(ManualSleep {
            clock: self.clone(),
            id,
        })
    }
}

/// A wait on a [`ManualClock`].
struct ManualSleep {
    clock: ManualClock,
    id: u64,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.clock.state();
        let now = st.now();
        let Some(i) = st.sleepers.iter().position(|(id, _, _)| *id == self.id) else {
            return Poll::Ready(());
        };
        if st.sleepers[i].1 <= now {
            st.sleepers.swap_remove(i);
            return Poll::Ready(());
        }
        st.sleepers[i].2 = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        let id = self.id;
        self.clock.state().sleepers.retain(|(i, _, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), t0 + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn waits_end_when_the_clock_reaches_them() {
        let clock = ManualClock::new();
        let mut sleep = clock.sleep(Duration::from_millis(30));
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(clock.next_wait().await, Duration::from_millis(30));
        clock.advance(Duration::from_millis(29));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance(Duration::from_millis(1));
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        assert_eq!(clock.slept(), [Duration::from_millis(30)]);
    }

    #[tokio::test]
    async fn run_advances_through_every_wait() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let c = clock.clone();
        let waited = clock
            .run(async move {
                for ms in [10, 20, 40] {
                    c.sleep(Duration::from_millis(ms)).await;
                }
                c.now()
            })
            .await;
        assert_eq!(waited, t0 + Duration::from_millis(70));
        assert_eq!(
            clock.slept(),
            [10, 20, 40].map(Duration::from_millis).to_vec()
        );
    }

    #[tokio::test]
    async fn a_dropped_wait_is_no_longer_waited_for() {
        let clock = ManualClock::new();
        drop(clock.sleep(Duration::from_secs(1)));
        assert!(clock.state().sleepers.is_empty());
    }

    fn futures_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }
}
