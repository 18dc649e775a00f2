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

#[cfg(test)]
mod tests {
    use super::*;

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
