//! The daemon's health as the host sees it: the systemd notify protocol ([`Notifier`]), the
//! open-files limit raised at start-up ([`raise_nofile`]), and Prometheus metrics
//! ([`Metrics`], served by [`serve_metrics`]).
//!
//! Nothing here decides anything about agents: the daemon tells these what happened.

mod metrics;
mod notify;

pub use metrics::{serve_metrics, Metrics};
pub use notify::Notifier;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (a thousand agents need thousands of fds;
/// systemd's default soft limit is 1024). Returns (old soft, new soft).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok((soft, hard))
}
