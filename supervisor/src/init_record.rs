//! The record `corral-init` writes on its fd 5 when the agent under it ends (or could not be
//! started), 29 bytes, little-endian:
//!
//! ```text
//! +---------+------------+--------------+--------------+---------------+
//! | kind u8 | status i32 | utime_ms u64 | stime_ms u64 | maxrss_kb u64 |
//! +---------+------------+--------------+--------------+---------------+
//! ```
//!
//! `kind` 0: the agent ended, `status` is its raw wait status; `kind` 1: the agent could not be
//! started, `status` is the errno (the counters are then zero).
//!
//! `corral-init` writes it and the library reads it, so both compile this one file: the library
//! as a module (re-exported by `exit_status`), `corral-init` through `#[path]`. It is `core`
//! alone: that program links neither `std` nor `libc`.

/// Bytes in a record.
pub const RECORD_LEN: usize = 29;

/// What `corral-init` reports about its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitRecord {
    /// The agent ended.
    Ended {
        /// Its raw wait status (see `exit_status::WaitStatus::decode`).
        status: i32,
        /// User CPU, ms, its reaped descendants included.
        utime_ms: u64,
        /// System CPU, ms, its reaped descendants included.
        stime_ms: u64,
        /// Peak resident set, KiB.
        maxrss_kb: u64,
    },
    /// The agent could not be started.
    NotStarted {
        /// Why (an errno).
        errno: i32,
    },
}

impl InitRecord {
    /// The bytes written on fd 5.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let (kind, status, counters) = match *self {
            InitRecord::Ended {
                status,
                utime_ms,
                stime_ms,
                maxrss_kb,
            } => (0u8, status, [utime_ms, stime_ms, maxrss_kb]),
            InitRecord::NotStarted { errno } => (1u8, errno, [0; 3]),
        };
        let mut b = [0u8; RECORD_LEN];
        b[0] = kind;
        b[1..5].copy_from_slice(&status.to_le_bytes());
        for (i, v) in counters.iter().enumerate() {
            b[5 + 8 * i..13 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Read a record back. `None` for a kind this file does not know.
    pub fn decode(b: &[u8; RECORD_LEN]) -> Option<InitRecord> {
        let status = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        match b[0] {
            0 => Some(InitRecord::Ended {
                status,
                utime_ms: u64_at(5),
                stime_ms: u64_at(13),
                maxrss_kb: u64_at(21),
            }),
            1 => Some(InitRecord::NotStarted { errno: status }),
            _ => None,
        }
    }
}
