//! The beat pipe: heartbeats that cost the supervisor no wake-up.
//!
//! Besides fds 3 and 4, corral hands an agent fd [`BEAT_FD`], the write end of a pipe that
//! corral does not watch for readiness: it reads it only when a watchdog is due and when the
//! attempt ends. A beat is one fixed-size record of [`BEAT_LEN`] bytes (not a frame):
//!
//! ```text
//! +--------------------+-----------------------------------+
//! | progress: u64 LE   | at: u64 LE, CLOCK_MONOTONIC in ns |
//! +--------------------+-----------------------------------+
//! ```
//!
//! `at` is when the agent wrote the beat (corral clamps it to the time it reads it, so a beat
//! from the future counts as "now", no later). The write end is non-blocking; when a write does
//! not fit (the pipe is full), the agent sends a `Heartbeat` frame on fd 4 instead (corral
//! drains the pipe at its next check, within a `heartbeat_timeout`). A record is less than
//! `PIPE_BUF` bytes, so a write is all or nothing and concurrent writers never interleave.
//! Agents that only send `Heartbeat` frames never need the beat pipe.

/// The agent's end of the beat pipe.
pub const BEAT_FD: i32 = 6;

/// Bytes in one beat record.
pub const BEAT_LEN: usize = 16;

/// Encode one beat.
pub fn encode(progress: u64, at_ns: u64) -> [u8; BEAT_LEN] {
    let mut b = [0u8; BEAT_LEN];
    b[..8].copy_from_slice(&progress.to_le_bytes());
    b[8..].copy_from_slice(&at_ns.to_le_bytes());
    b
}

/// Decode one beat record: `(progress, at_ns)`.
pub fn decode(record: &[u8; BEAT_LEN]) -> (u64, u64) {
    let mut p = [0u8; 8];
    let mut t = [0u8; 8];
    p.copy_from_slice(&record[..8]);
    t.copy_from_slice(&record[8..]);
    (u64::from_le_bytes(p), u64::from_le_bytes(t))
}

/// The system-wide monotonic clock (`CLOCK_MONOTONIC`, the clock of `std::time::Instant` on
/// Linux and of a beat's `at`), in nanoseconds. `None` where it cannot be read.
///
/// Both sides read it: the agent to date its beats (and to beat in step with other agents), the
/// supervisor to read those dates and to put its own wake-ups on the same grid. Called through
/// the C library that `std` links already, so that this crate needs no dependency for it.
pub fn monotonic_ns() -> Option<u64> {
    clock::monotonic()
}

#[cfg(all(
    target_os = "linux",
    any(target_pointer_width = "64", target_env = "gnu")
))]
mod clock {
    use std::ffi::{c_int, c_long};

    /// `struct timespec` where `time_t` is a `long` (every 64-bit Linux, and 32-bit glibc's
    /// `clock_gettime` symbol).
    #[repr(C)]
    struct Timespec {
        tv_sec: c_long,
        tv_nsec: c_long,
    }

    const CLOCK_MONOTONIC: c_int = 1;

    extern "C" {
        fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
    }

    pub(super) fn monotonic() -> Option<u64> {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime(2) only writes a `struct timespec`, laid out as `Timespec`
        // above, into memory we own for the duration of the call.
        if unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) } != 0 {
            return None;
        }
        Some(
            (ts.tv_sec.max(0) as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec.max(0) as u64),
        )
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_pointer_width = "64", target_env = "gnu")
)))]
mod clock {
    pub(super) fn monotonic() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_is_instants_clock() {
        let before = std::time::Instant::now();
        let a = monotonic_ns().expect("CLOCK_MONOTONIC");
        let b = monotonic_ns().expect("CLOCK_MONOTONIC");
        let elapsed = before.elapsed();
        assert!(b >= a, "monotonic: {a} then {b}");
        // Same clock as Instant: two readings within one Instant interval are at most that far
        // apart (a different clock, e.g. boot time or wall time, would disagree by far more).
        assert!(b - a <= elapsed.as_nanos() as u64);
        assert!(a > 0);
    }

    #[test]
    fn round_trip_and_layout() {
        let b = encode(5, 0x0102_0304_0506_0708);
        assert_eq!(
            b,
            [5, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1],
            "progress then time, both little-endian"
        );
        assert_eq!(decode(&b), (5, 0x0102_0304_0506_0708));
        assert_eq!(decode(&encode(u64::MAX, 0)), (u64::MAX, 0));
    }
}
