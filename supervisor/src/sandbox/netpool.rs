//! Private network namespaces made ahead: each agent without network gets a loopback of its
//! own (`netns = "private"`, the default), and making a network namespace is the dearest part
//! of a cold isolated spawn (a few hundred microseconds, more while the kernel tears older ones
//! down). So a background thread keeps a few ready, each with `lo` up, and a spawn joins one
//! with a single `setns`. Each is used once: it dies with its agent. When none is ready (a
//! burst), the child makes its own as before.
//!
//! Root supervisors only: joining a namespace made here needs privilege over its user
//! namespace, which an unprivileged supervisor's agents (in a user namespace of their own) do
//! not have.

use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, OnceLock};

/// How many namespaces are kept ready.
const SPARES: usize = 4;

struct Pool {
    ready: Mutex<Vec<OwnedFd>>,
    /// Signalled when one is taken.
    wanted: Condvar,
    /// Signalled when one is made.
    made: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("corral-netns-pool".into())
            .spawn(refill);
        if let Err(e) = started {
            tracing::warn!("cannot start the network namespace pool: {e}");
        }
        Pool {
            ready: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
            made: Condvar::new(),
        }
    })
}

/// A fresh private network namespace with `lo` up, if one is ready. The caller tops the
/// pool up ([`top_up`]) once its spawn is done, so that making the next one does not compete
/// with the spawn for the CPU.
pub fn take() -> Option<OwnedFd> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    pool().ready.lock().ok()?.pop()
}

/// Have the pool make namespaces again if it is short (in the background).
pub fn top_up() {
    if nix::unistd::geteuid().is_root() {
        pool().wanted.notify_one();
    }
}

/// The pool's thread: make namespaces while fewer than [`SPARES`] are ready, then wait to be
/// told one was taken. Each `unshare` moves this thread into a new namespace; the previous one
/// lives on through its fd.
fn refill() {
    crate::sandbox::background_thread();
    let p = pool();
    loop {
        let short = p.ready.lock().map(|r| r.len() < SPARES).unwrap_or(false);
        if short {
            match crate::sandbox::netns::make_here() {
                Ok(fd) => {
                    if let Ok(mut r) = p.ready.lock() {
                        r.push(fd);
                    }
                    p.made.notify_all();
                }
                Err(e) => {
                    tracing::warn!("making a network namespace ahead: {e}; the pool stops");
                    return;
                }
            }
            continue;
        }
        let Ok(guard) = p.ready.lock() else { return };
        // Woken when a namespace is taken.
        let _unused = p.wanted.wait_while(guard, |r| r.len() >= SPARES);
    }
}

/// Wait until a namespace is ready, then take it (tests).
#[cfg(test)]
fn take_when_ready() -> Option<OwnedFd> {
    let p = pool();
    let guard = p.ready.lock().ok()?;
    let mut ready = p.made.wait_while(guard, |r| r.is_empty()).ok()?;
    let fd = ready.pop();
    p.wanted.notify_one();
    fd
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: &std::os::fd::OwnedFd) -> u64 {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        std::fs::metadata(path).expect("pooled netns").ino()
    }

    #[test]
    fn namespaces_made_ahead_are_new_and_never_handed_out_twice() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let a = super::take_when_ready().expect("a namespace was made ahead");
        let b = super::take_when_ready().expect("another one");
        let host = std::fs::metadata("/proc/self/ns/net")
            .expect("own netns")
            .ino();
        assert_ne!(ino(&a), host, "a namespace of its own");
        assert_ne!(ino(&a), ino(&b), "never handed out twice");
    }
}
