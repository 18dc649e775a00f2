//! One readiness registration per agent: an epoll instance of the attempt's own holding the
//! agent's fds (its pidfd, the up pipe, stdout and stderr, and the down pipe while a write
//! waits), registered once with the runtime.
//!
//! Each fd registered with the runtime costs a cache-line-aligned allocation of its own, and
//! each task a task of its own: an agent watched through five registrations and a second task
//! for its output kept several KiB more while it idled. Here a wake-up of the attempt asks its
//! epoll which of its fds are ready (one `epoll_wait` that does not block) and handles them by
//! priority; the epoll is level-triggered, so what is left unread stays ready, and the
//! runtime's readiness of the epoll is cleared only when it reports nothing.
//!
//! An fd that must not wake the attempt (the up pipe while the agent does not read its own, a
//! stream at its end, the pidfd once the exit is known) is taken out of the set: hang-ups and
//! errors are reported whatever the interest, so leaving it in would keep the attempt awake.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::task::{Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Which of an agent's fds are ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Ready(u8);

impl Ready {
    /// The process exited (its pidfd).
    pub(super) const EXIT: Ready = Ready(1);
    /// Frames (or the end) on the up pipe.
    pub(super) const UP: Ready = Ready(2);
    /// Room on the down pipe.
    pub(super) const DOWN: Ready = Ready(4);
    /// Bytes (or the end) on stdout.
    pub(super) const STDOUT: Ready = Ready(8);
    /// Bytes (or the end) on stderr.
    pub(super) const STDERR: Ready = Ready(16);

    /// Whether `what` is ready.
    pub(super) fn has(self, what: Ready) -> bool {
        self.0 & what.0 != 0
    }

    /// Nothing is.
    pub(super) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Ready {
    type Output = Ready;
    fn bitor(self, other: Ready) -> Ready {
        Ready(self.0 | other.0)
    }
}

struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// The attempt's epoll. See the module docs.
pub(super) struct Poller {
    ep: AsyncFd<EpollFd>,
    /// Not looked at yet: the first look asks the set itself (see [`Poller::poll`]).
    first: std::sync::atomic::AtomicBool,
}

impl Poller {
    /// An empty set, registered with the runtime.
    pub(super) fn new() -> std::io::Result<Poller> {
        let ep = EpollFd(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        // SAFETY: `EpollFd` owns the epoll fd (the `OwnedFd` in nix's `Epoll`), which stays
        // open for as long as the `AsyncFd` owns the `EpollFd`, and its `as_raw_fd` always
        // returns that fd.
        let ep = unsafe { AsyncFd::register_with_interest(ep, Interest::READABLE) }?;
        Ok(Poller {
            ep,
            first: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn epoll(&self) -> &Epoll {
        &self.ep.get_ref().0
    }

    /// Watch `fd` for `what`: readable, or writable for [`Ready::DOWN`].
    pub(super) fn add(&self, fd: BorrowedFd<'_>, what: Ready) -> std::io::Result<()> {
        let flags = if what == Ready::DOWN {
            EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        self.epoll()
            .add(fd, EpollEvent::new(flags, u64::from(what.0)))?;
        Ok(())
    }

    /// Stop watching `fd` (nothing if it was not watched).
    pub(super) fn remove(&self, fd: BorrowedFd<'_>) {
        let _ = self.epoll().delete(fd);
    }

    /// What is ready now, without waiting: the set's current state.
    fn ready_now(&self) -> std::io::Result<Ready> {
        let mut events = [EpollEvent::empty(); 8];
        loop {
            match self.epoll().wait(&mut events, 0u16) {
                Ok(n) => {
                    let mut ready = Ready::default();
                    for e in &events[..n] {
                        ready = ready | Ready(e.data() as u8);
                    }
                    return Ok(ready);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What is ready; `Pending` (the task woken when that changes) while nothing is.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Ready>> {
        loop {
            let mut guard = match self.ep.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // What was ready before the runtime's reactor could say so (an agent that
                // wrote its first frame before its watch began, as one that finds its `Hello`
                // waiting does) is seen at the first look, not after a turn of the reactor:
                // one system call, once per attempt.
                Poll::Pending if self.first.swap(false, std::sync::atomic::Ordering::Relaxed) => {
                    return match self.ready_now() {
                        Ok(r) if r.is_empty() => Poll::Pending,
                        other => Poll::Ready(other),
                    };
                }
                Poll::Pending => return Poll::Pending,
            };
            match self.ready_now() {
                Ok(r) if r.is_empty() => guard.clear_ready(),
                other => return Poll::Ready(other),
            }
        }
    }

    /// Wait until something is ready.
    pub(super) async fn ready(&self) -> std::io::Result<Ready> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll().0.as_fd()
    }
}

/// Make `fd` non-blocking (the attempt's ends of its pipes are read and written so).
pub(super) fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_fds_are_reported_until_read_and_removed_ones_never() {
        let p = Poller::new().expect("epoll");
        let (r1, w1) = nix::unistd::pipe().expect("pipe");
        let (r2, w2) = nix::unistd::pipe().expect("pipe");
        p.add(r1.as_fd(), Ready::UP).expect("add");
        p.add(r2.as_fd(), Ready::STDERR).expect("add");
        nix::unistd::write(&w1, b"x").expect("write");
        let ready = p.ready().await.expect("ready");
        assert!(
            ready.has(Ready::UP) && !ready.has(Ready::STDERR),
            "{ready:?}"
        );
        // Level-triggered: still ready until read.
        assert_eq!(p.ready().await.expect("ready"), Ready::UP);
        let mut b = [0u8; 4];
        assert_eq!(nix::unistd::read(r1.as_raw_fd(), &mut b), Ok(1));
        nix::unistd::write(&w2, b"y").expect("write");
        assert_eq!(p.ready().await.expect("ready"), Ready::STDERR);
        // A hang-up is reported whatever the interest: a removed fd is not.
        p.remove(r2.as_fd());
        drop(w1);
        assert_eq!(p.ready().await.expect("ready"), Ready::UP);
        drop(w2);
        p.remove(r1.as_fd());
        assert!(p.ready_now().expect("now").is_empty());
        // Room on a pipe.
        let (_r3, w3) = nix::unistd::pipe().expect("pipe");
        p.add(w3.as_fd(), Ready::DOWN).expect("add");
        assert_eq!(p.ready().await.expect("ready"), Ready::DOWN);
    }
}
