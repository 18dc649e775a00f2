//! How a process ended, in the two forms the supervisor reads: the kernel's raw wait status
//! ([`WaitStatus`]) and the record `corral-init` writes on its fd 5 when the agent under it
//! ends ([`InitRecord`], 29 bytes).
//!
//! The record's layout and codec are in `init_record` (re-exported here), which `corral-init`
//! compiles too.

pub use crate::init_record::{InitRecord, RECORD_LEN};

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
