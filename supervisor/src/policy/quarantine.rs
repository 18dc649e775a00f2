//! Quarantine of poison inputs: an input that crashes its agent the same way again and again.
//!
//! Decides whether an input is quarantined, from the failures the caller reports per input. It
//! must not look at inputs themselves (the caller passes a key, normally [`input_key`] of the
//! encoded input), store anything on disk or read the clock: persistence and expiry, if any, are
//! the caller's.
//!
//! Rules:
//!
//! - An input is quarantined when it has failed `after` times **in a row with the same
//!   [`Fingerprint`]**. A failure with a different fingerprint starts that input's count over at
//!   1 (a different crash suggests the input is not what kills the agent); a success clears it.
//! - Quarantine is lifted only by [`Quarantine::release`]: a success or further failures of a
//!   quarantined input (which should not have run) do not lift it.
//! - `after = 0` disables quarantine (it is "off", not "quarantine everything").
//! - Counts are kept only for inputs whose last outcome was a failure; the caller decides how
//!   long a `Quarantine` lives.

use std::collections::{HashMap, HashSet};

use crate::record::ExitReason;

/// How an attempt failed, compared exactly between failures of the same input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Why the attempt ended.
    pub reason: ExitReason,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Its exit code, if it exited by itself.
    pub exit_code: Option<i32>,
    /// The agent's error message or the last stderr line, if any. Compared byte for byte: the
    /// caller should strip parts that vary between runs (pids, addresses, times).
    pub last_message: Option<String>,
}

#[derive(Debug, Clone)]
struct Streak {
    fingerprint: Fingerprint,
    count: u32,
}

/// Failure streaks and quarantined inputs of one agent type.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    after: u32,
    streaks: HashMap<String, Streak>,
    quarantined: HashSet<String>,
}

impl Quarantine {
    /// Quarantine an input after `after` identical failures in a row (0: never).
    pub fn new(after: u32) -> Self {
        Quarantine {
            after,
            streaks: HashMap::new(),
            quarantined: HashSet::new(),
        }
    }

    /// The threshold.
    pub fn after(&self) -> u32 {
        self.after
    }

    /// Report that `input_key` failed with `fp`. Returns whether the input is quarantined after
    /// this failure: true when this failure made `after` identical ones in a row (and on every
    /// later report until [`Quarantine::release`]).
    pub fn record_failure(&mut self, input_key: &str, fp: &Fingerprint) -> bool {
        let count = match self.streaks.get_mut(input_key) {
            Some(streak) if streak.fingerprint == *fp => {
                streak.count = streak.count.saturating_add(1);
                streak.count
            }
            Some(streak) => {
                streak.fingerprint = fp.clone();
                streak.count = 1;
                1
            }
            None => {
                self.streaks.insert(
                    input_key.to_owned(),
                    Streak {
                        fingerprint: fp.clone(),
                        count: 1,
                    },
                );
                1
            }
        };
        if self.after > 0 && count >= self.after {
            self.quarantined.insert(input_key.to_owned());
        }
        self.is_quarantined(input_key)
    }

    /// Whether `input_key` is quarantined (must not be run).
    pub fn is_quarantined(&self, input_key: &str) -> bool {
        self.quarantined.contains(input_key)
    }

    /// Identical failures in a row so far for `input_key` (0 if none or after a success).
    #[cfg(test)]
    pub fn failure_count(&self, input_key: &str) -> u32 {
        self.streaks.get(input_key).map_or(0, |s| s.count)
    }

    /// The quarantined keys, in no particular order.
    #[cfg(test)]
    pub fn quarantined(&self) -> impl Iterator<Item = &str> {
        self.quarantined.iter().map(String::as_str)
    }

    /// Lift the quarantine of `input_key` (an operator's decision) and forget its streak.
    /// Returns whether it was quarantined.
    #[cfg(test)]
    pub fn release(&mut self, input_key: &str) -> bool {
        self.streaks.remove(input_key);
        self.quarantined.remove(input_key)
    }

    /// `input_key` succeeded: its streak is cleared (a quarantine stays until released).
    pub fn record_success(&mut self, input_key: &str) {
        self.streaks.remove(input_key);
    }
}

/// A stable key for an input: FNV-1a 64 of `bytes`, as 16 lowercase hex digits.
///
/// Stable across runs, builds and platforms (unlike `std`'s `DefaultHasher`), so it can be
/// stored and compared later. Not collision-resistant against an adversary; callers hash the
/// encoded input, which they produce themselves.
pub fn input_key(bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(reason: ExitReason, signal: Option<i32>, msg: &str) -> Fingerprint {
        Fingerprint {
            reason,
            signal,
            exit_code: None,
            last_message: Some(msg.to_owned()),
        }
    }

    fn segv() -> Fingerprint {
        fp(ExitReason::Signal, Some(11), "segfault at 0")
    }

    #[test]
    fn same_fingerprint_n_times_quarantines() {
        let mut q = Quarantine::new(3);
        assert!(!q.record_failure("a", &segv()));
        assert!(!q.record_failure("a", &segv()));
        assert!(!q.is_quarantined("a"));
        assert_eq!(q.failure_count("a"), 2);
        assert!(q.record_failure("a", &segv()));
        assert!(q.is_quarantined("a"));
        assert_eq!(q.quarantined().collect::<Vec<_>>(), vec!["a"]);
        // Stays quarantined on later reports, whatever they are.
        assert!(q.record_failure("a", &fp(ExitReason::Hung, None, "")));
    }

    #[test]
    fn different_fingerprint_restarts_the_count() {
        let mut q = Quarantine::new(3);
        q.record_failure("a", &segv());
        q.record_failure("a", &segv());
        // Each field matters.
        let variants = [
            fp(ExitReason::OomKilled, Some(11), "segfault at 0"),
            fp(ExitReason::Signal, Some(6), "segfault at 0"),
            fp(ExitReason::Signal, Some(11), "segfault at 8"),
            Fingerprint {
                exit_code: Some(139),
                ..segv()
            },
            Fingerprint {
                last_message: None,
                ..segv()
            },
        ];
        for v in &variants {
            assert!(!q.record_failure("a", v));
            assert_eq!(q.failure_count("a"), 1);
            assert!(!q.record_failure("a", &segv()));
            assert!(!q.record_failure("a", &segv()));
            assert_eq!(q.failure_count("a"), 2);
        }
        assert!(q.record_failure("a", &segv()));
    }

    #[test]
    fn other_inputs_are_unaffected() {
        let mut q = Quarantine::new(2);
        q.record_failure("a", &segv());
        q.record_failure("b", &segv());
        assert!(q.record_failure("a", &segv()));
        assert!(!q.is_quarantined("b"));
        assert_eq!(q.failure_count("b"), 1);
        assert!(!q.is_quarantined("c"));
        assert!(q.record_failure("b", &segv()));
    }

    #[test]
    fn success_clears_and_release_lifts() {
        let mut q = Quarantine::new(2);
        q.record_failure("a", &segv());
        q.record_success("a");
        assert_eq!(q.failure_count("a"), 0);
        assert!(!q.record_failure("a", &segv()));
        assert!(q.record_failure("a", &segv()));
        // A success does not lift a quarantine.
        q.record_success("a");
        assert!(q.is_quarantined("a"));
        assert!(q.release("a"));
        assert!(!q.is_quarantined("a"));
        assert!(!q.release("a"));
        // Released with a fresh count.
        assert!(!q.record_failure("a", &segv()));
        assert!(q.record_failure("a", &segv()));
    }

    #[test]
    fn thresholds_zero_and_one() {
        let mut off = Quarantine::new(0);
        for _ in 0..10 {
            assert!(!off.record_failure("a", &segv()));
        }
        let mut one = Quarantine::new(1);
        assert!(one.record_failure("a", &segv()));
        assert_eq!(one.after(), 1);
    }

    #[test]
    fn input_key_is_fnv1a_64() {
        // FNV-1a 64 reference vectors.
        assert_eq!(input_key(b""), "cbf29ce484222325");
        assert_eq!(input_key(b"a"), "af63dc4c8601ec8c");
        assert_eq!(input_key(b"foobar"), "85944171f73967e8");
        assert_eq!(input_key(b"foobar"), input_key(b"foobar"));
        assert_ne!(input_key(b"foobar"), input_key(b"foobaz"));
        assert_eq!(input_key(&[0xff; 1000]).len(), 16);
    }
}
