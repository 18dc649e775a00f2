//! How a process ended, in the two forms the supervisor reads: the kernel's raw wait status
//! ([`WaitStatus`]) and the record `corral-init` writes on its fd 5 when the agent under it
//! ends ([`InitRecord`], 29 bytes).
//!
//! `corral-init` writes the record and the child reads it, so both compile this one file: the
//! library as a module, `corral-init` through `#[path]`. That binary enters at the C `main`
//! with no Rust runtime set-up; including the file keeps it free of everything else the
//! library links (tokio, tracing, the config parser), and keeps this file to `std` and `libc`
//! with no `crate::` path.
//!
//! The record, little-endian:
//!
//! ```text
//! +---------+------------+--------------+--------------+---------------+
//! | kind u8 | status i32 | utime_ms u64 | stime_ms u64 | maxrss_kb u64 |
//! +---------+------------+--------------+--------------+---------------+
//! ```
//!
//! `kind` 0: the agent ended, `status` is its raw wait status; `kind` 1: the agent could not be
//! started, `status` is the errno (the counters are then zero).

/// Bytes in a record.
pub const RECORD_LEN: usize = 29;

/// What `corral-init` reports about its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitRecord {
    /// The agent ended.
    Ended {
        /// Its raw wait status (see [`WaitStatus::decode`]).
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
    /// The record of an ended agent, from what `wait4` returned.
    pub fn ended(status: i32, ru: &libc::rusage) -> InitRecord {
        InitRecord::Ended {
            status,
            utime_ms: timeval_ms(ru.ru_utime),
            stime_ms: timeval_ms(ru.ru_stime),
            maxrss_kb: ru.ru_maxrss.max(0) as u64,
        }
    }

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

/// A raw wait status, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitStatus {
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

impl WaitStatus {
    /// Decode what `wait4` stored in its status argument.
    pub fn decode(status: i32) -> WaitStatus {
        if libc::WIFEXITED(status) {
            WaitStatus {
                exit_code: Some(libc::WEXITSTATUS(status)),
                ..WaitStatus::default()
            }
        } else if libc::WIFSIGNALED(status) {
            WaitStatus {
                exit_code: None,
                signal: Some(libc::WTERMSIG(status)),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            WaitStatus::default()
        }
    }
}

/// A `timeval` of rusage in milliseconds.
pub fn timeval_ms(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1000 + (tv.tv_usec.max(0) as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let ended = InitRecord::Ended {
            status: 0x0b00,
            utime_ms: 1,
            stime_ms: u64::MAX,
            maxrss_kb: 0x0102_0304_0506_0708,
        };
        for r in [
            ended,
            InitRecord::NotStarted {
                errno: libc::ENOENT,
            },
            InitRecord::NotStarted { errno: -1 },
        ] {
            assert_eq!(InitRecord::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn layout_is_the_documented_one() {
        let b = InitRecord::Ended {
            status: 0x0102_0304,
            utime_ms: 5,
            stime_ms: 6,
            maxrss_kb: 7,
        }
        .encode();
        assert_eq!(b[0], 0);
        assert_eq!(b[1..5], [4, 3, 2, 1]);
        assert_eq!(b[5], 5);
        assert_eq!(b[13], 6);
        assert_eq!(b[21], 7);
        let n = InitRecord::NotStarted { errno: 2 }.encode();
        assert_eq!(n[0], 1);
        assert_eq!(n[1..5], [2, 0, 0, 0]);
        assert!(
            n[5..].iter().all(|&b| b == 0),
            "no counters when not started"
        );
        let mut bad = n;
        bad[0] = 2;
        assert_eq!(InitRecord::decode(&bad), None);
    }

    #[test]
    fn cpu_times_are_taken_in_ms() {
        let tv = |tv_sec, tv_usec| libc::timeval { tv_sec, tv_usec };
        assert_eq!(timeval_ms(tv(2, 345_678)), 2345);
        assert_eq!(timeval_ms(tv(0, 999)), 0);
        assert_eq!(timeval_ms(tv(-1, -1)), 0, "nonsense counts as nothing");
    }

    #[test]
    fn wait_statuses_decode() {
        // Built the way the kernel builds them: exit code << 8; signal in the low 7 bits, 0x80
        // for a core.
        assert_eq!(
            WaitStatus::decode(3 << 8),
            WaitStatus {
                exit_code: Some(3),
                ..Default::default()
            }
        );
        assert_eq!(
            WaitStatus::decode(libc::SIGKILL),
            WaitStatus {
                signal: Some(libc::SIGKILL),
                ..Default::default()
            }
        );
        assert_eq!(
            WaitStatus::decode(libc::SIGSEGV | 0x80),
            WaitStatus {
                signal: Some(libc::SIGSEGV),
                core_dumped: true,
                ..Default::default()
            }
        );
        // Stopped (0x7f): neither exited nor signalled.
        assert_eq!(WaitStatus::decode(0x137f), WaitStatus::default());
    }
}
