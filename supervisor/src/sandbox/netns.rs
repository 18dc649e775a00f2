//! The shared empty network namespace: loopback only, made once per supervisor and joined by
//! every agent that has `network = false` (with `setns`, in the spawn child).
//!
//! Joining a ready namespace costs a system call; making a new one per agent costs a
//! namespace creation and a teardown in the kernel per spawn. The trade-off: agents without
//! network share one loopback interface, so they can reach each other's listening sockets on
//! 127.0.0.1, but nothing of the host's network.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

/// Making the namespace failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared network namespace: {0}")]
pub struct NetnsError(String);

/// The shared namespace's fd (made on first use).
pub fn shared() -> Result<&'static OwnedFd, NetnsError> {
    static NS: OnceLock<Result<OwnedFd, NetnsError>> = OnceLock::new();
    NS.get_or_init(make).as_ref().map_err(Clone::clone)
}

fn make() -> Result<OwnedFd, NetnsError> {
    // A thread of its own: unshare(CLONE_NEWNET) changes the namespace of the calling thread.
    std::thread::Builder::new()
        .name("corral-netns".into())
        .spawn(make_here)
        .map_err(|e| NetnsError(format!("spawn thread: {e}")))?
        .join()
        .map_err(|_| NetnsError("thread panicked".into()))?
}

/// Move the calling thread into a new network namespace with `lo` up, and return its fd (the
/// namespace lives as long as the fd or a process in it). For a thread of its own.
pub(crate) fn make_here() -> Result<OwnedFd, NetnsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetnsError(format!("unshare(CLONE_NEWNET): {e}")))?;
    loopback_up().map_err(|e| NetnsError(format!("bring up lo: {e}")))?;
    std::fs::File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| NetnsError(format!("open /proc/thread-self/ns/net: {e}")))
}

/// Set IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: zeroed ifreq is valid; the name fits; the ioctls read/write that struct only.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
