//! Whether a finished attempt is tried again, and whether it says anything about the agent's
//! health.
//!
//! Decides from the attempt's outcome, the task's rules and the retries so far; nothing else. It
//! must not wait (the delay is [`super::Backoff`]'s), consult the breaker, intensity or
//! quarantine (the caller does, before starting the retry), or look at the clock.
//!
//! [`decide`] under each [`RestartPolicy`]:
//!
//! | reason | `never` | `on-failure` | `always` |
//! |---|---|---|---|
//! | `completed` | done | done | done |
//! | `cancelled`, `shutdown`, `circuit_open`, `quarantined`, `contract_violation` | give up | give up | give up |
//! | `spawn_failed` | give up | give up | retry |
//! | `agent_error` with `retryable: false` | give up | give up | retry |
//! | `exit_code` listed in `no_retry_exit_codes` | give up | give up | retry |
//! | any other failure (crashes, hangs, limits, `lost`, …) | give up | retry | retry |
//!
//! and every "retry" becomes "give up" once `retries_so_far >= max_retries`. Why:
//!
//! - `completed` is never repeated: `always` is about keeping a service's *failures* from
//!   ending it, not about running a finished task twice.
//! - `cancelled` and `shutdown` are someone's decision to stop; retrying would overrule it.
//!   `circuit_open` and `quarantined` were refused before starting, by the breaker or the
//!   quarantine, and retrying would just be refused again. `contract_violation` is mostly a bad
//!   input (the caller's), and the same input fails the same way every time.
//! - `spawn_failed` under `on-failure`: a command that cannot be executed or a sandbox that cannot
//!   be set up does not fix itself. `always` (a service that should keep running) retries it
//!   anyway, paced by the backoff and bounded by `max_retries`, for the transient causes (an
//!   executable being replaced, a momentary resource shortage).
//! - `agent_error` with `retryable: false` and listed exit codes are the agent saying "trying
//!   again will not help"; `on-failure` listens, `always` does not. An agent error whose
//!   `retryable` is unknown (`None`) is retried.
//! - `lost` (the supervisor died during the attempt) is retried: the outcome is unknown, and
//!   at-least-once is the promise a retry policy makes.
//! - `max_retries = 0` means no retries, under `always` too.
//!
//! [`counts_for_breaker`] says which reasons are evidence about the agent type's health (and so
//! are reported to [`super::Breaker::on_failure`]); see its docs.

use crate::record::ExitReason;

use super::RestartPolicy;

/// What the caller knows about a finished attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedAttempt {
    /// Why it ended.
    pub reason: ExitReason,
    /// The agent error's `retryable` flag, when the agent sent one.
    pub retryable: Option<bool>,
    /// The exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
}

impl FinishedAttempt {
    /// [`counts_for_breaker`] refined by what the outcome knows: an agent error the agent itself
    /// marks `retryable: false` is a healthy agent refusing a task, not a sick one, so it does not
    /// count.
    pub fn counts_for_breaker(&self) -> bool {
        match self.reason {
            ExitReason::AgentError => self.retryable != Some(false),
            reason => counts_for_breaker(reason),
        }
    }
}

/// The task's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRules<'a> {
    /// `restart = …`.
    pub policy: RestartPolicy,
    /// Retries after the first attempt, at most.
    pub max_retries: u32,
    /// Exit codes that mean "do not try again" (honoured under `on-failure`).
    pub no_retry_exit_codes: &'a [i32],
}

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryVerdict {
    /// It succeeded; nothing more to do.
    Done,
    /// Try again (after the backoff, if the breaker, intensity and quarantine allow).
    Retry,
    /// No further attempt.
    GiveUp {
        /// Why, in words for the exit record and the user.
        why: String,
    },
}

/// Decide what follows an attempt. See the module docs for the table and the reasons.
pub fn decide(rules: &RetryRules, outcome: &FinishedAttempt, retries_so_far: u32) -> RetryVerdict {
    let give_up = |why: String| RetryVerdict::GiveUp { why };
    let on_failure = match rules.policy {
        RestartPolicy::Never => {
            return if outcome.reason == ExitReason::Completed {
                RetryVerdict::Done
            } else {
                give_up(format!(
                    "restart policy is \"never\" (attempt ended: {})",
                    outcome.reason
                ))
            };
        }
        RestartPolicy::OnFailure => true,
        RestartPolicy::Always => false,
    };

    // Exhaustive on purpose: a new exit reason must be placed here by someone deciding.
    let final_reason: Option<&str> = match outcome.reason {
        ExitReason::Completed => return RetryVerdict::Done,
        ExitReason::Cancelled => Some("the task was cancelled"),
        ExitReason::Shutdown => Some("the supervisor is shutting down"),
        ExitReason::CircuitOpen => Some("the agent type's circuit breaker is open"),
        ExitReason::Quarantined => Some("the input is quarantined"),
        ExitReason::ContractViolation => {
            Some("contract violation: the same input or output would fail the same way again")
        }
        ExitReason::SpawnFailed if on_failure => {
            Some("the agent could not be started (spawn failures are not retried under on-failure)")
        }
        ExitReason::SpawnFailed
        | ExitReason::AgentError
        | ExitReason::ExitCode
        | ExitReason::Signal
        | ExitReason::Hung
        | ExitReason::Stalled
        | ExitReason::Deadline
        | ExitReason::StartupTimeout
        | ExitReason::OomKilled
        | ExitReason::CpuLimit
        | ExitReason::PidsLimit
        | ExitReason::DiskLimit
        | ExitReason::ProtocolViolation
        | ExitReason::Lost => None,
    };
    if let Some(why) = final_reason {
        return give_up(why.to_owned());
    }

    if on_failure {
        if outcome.reason == ExitReason::AgentError && outcome.retryable == Some(false) {
            return give_up("agent error is not retryable".to_owned());
        }
        if outcome.reason == ExitReason::ExitCode {
            if let Some(code) = outcome.exit_code {
                if rules.no_retry_exit_codes.contains(&code) {
                    return give_up(format!("exit code {code} is in no_retry_exit_codes"));
                }
            }
        }
    }

    if retries_so_far >= rules.max_retries {
        return give_up(format!(
            "max_retries ({}) reached (last attempt: {})",
            rules.max_retries, outcome.reason
        ));
    }
    RetryVerdict::Retry
}

/// Whether an attempt that ended for `reason` is evidence about the agent type's health, and so
/// is reported to its circuit breaker as a failure.
///
/// Counts (true): `agent_error`, `exit_code`, `signal`, `hung`, `stalled`, `deadline`,
/// `startup_timeout`, `oom_killed`, `cpu_limit`, `pids_limit`, `spawn_failed`,
/// `protocol_violation`: the agent crashed, hung, ran away or could not run at all. (A deadline
/// or limit may be the task's size rather than the agent's fault, but an agent type that keeps
/// hitting them is not serving; `spawn_failed` is the clearest sign of a broken type.)
///
/// Does not count (false):
/// - `completed`: a success (report it with `on_success`).
/// - `cancelled`, `shutdown`: someone stopped it; nothing was learnt.
/// - `circuit_open`, `quarantined`: never started; counting them would keep the breaker open by
///   its own rejections.
/// - `contract_violation`: the reason does not say which side broke the contract, and an input
///   that does not match would otherwise let one bad caller open the breaker for everyone.
/// - `lost`: the supervisor died, not the agent.
///
/// [`FinishedAttempt::counts_for_breaker`] refines this for agent errors marked not retryable.
pub fn counts_for_breaker(reason: ExitReason) -> bool {
    match reason {
        ExitReason::AgentError
        | ExitReason::ExitCode
        | ExitReason::Signal
        | ExitReason::Hung
        | ExitReason::Stalled
        | ExitReason::Deadline
        | ExitReason::StartupTimeout
        | ExitReason::OomKilled
        | ExitReason::CpuLimit
        | ExitReason::PidsLimit
        | ExitReason::DiskLimit
        | ExitReason::SpawnFailed
        | ExitReason::ProtocolViolation => true,
        ExitReason::Completed
        | ExitReason::ContractViolation
        | ExitReason::Cancelled
        | ExitReason::CircuitOpen
        | ExitReason::Quarantined
        | ExitReason::Shutdown
        | ExitReason::Lost => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ExitReason as R;

    const ALL: [ExitReason; 19] = [
        R::Completed,
        R::AgentError,
        R::ExitCode,
        R::Signal,
        R::Hung,
        R::Stalled,
        R::Deadline,
        R::StartupTimeout,
        R::OomKilled,
        R::CpuLimit,
        R::PidsLimit,
        R::SpawnFailed,
        R::ProtocolViolation,
        R::ContractViolation,
        R::Cancelled,
        R::CircuitOpen,
        R::Quarantined,
        R::Shutdown,
        R::Lost,
    ];

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum K {
        Done,
        Retry,
        GiveUp,
    }

    fn kind(v: &RetryVerdict) -> K {
        match v {
            RetryVerdict::Done => K::Done,
            RetryVerdict::Retry => K::Retry,
            RetryVerdict::GiveUp { .. } => K::GiveUp,
        }
    }

    /// Expected (never, on-failure, always) with retries left, `retryable` unknown and no exit
    /// code. Exhaustive: a new reason fails to compile here until someone decides.
    fn table(r: ExitReason) -> (K, K, K, bool) {
        use K::*;
        match r {
            R::Completed => (Done, Done, Done, false),
            R::AgentError => (GiveUp, Retry, Retry, true),
            R::ExitCode => (GiveUp, Retry, Retry, true),
            R::Signal => (GiveUp, Retry, Retry, true),
            R::Hung => (GiveUp, Retry, Retry, true),
            R::Stalled => (GiveUp, Retry, Retry, true),
            R::Deadline => (GiveUp, Retry, Retry, true),
            R::StartupTimeout => (GiveUp, Retry, Retry, true),
            R::OomKilled => (GiveUp, Retry, Retry, true),
            R::CpuLimit => (GiveUp, Retry, Retry, true),
            R::PidsLimit => (GiveUp, Retry, Retry, true),
            R::DiskLimit => (GiveUp, Retry, Retry, true),
            R::SpawnFailed => (GiveUp, GiveUp, Retry, true),
            R::ProtocolViolation => (GiveUp, Retry, Retry, true),
            R::ContractViolation => (GiveUp, GiveUp, GiveUp, false),
            R::Cancelled => (GiveUp, GiveUp, GiveUp, false),
            R::CircuitOpen => (GiveUp, GiveUp, GiveUp, false),
            R::Quarantined => (GiveUp, GiveUp, GiveUp, false),
            R::Shutdown => (GiveUp, GiveUp, GiveUp, false),
            R::Lost => (GiveUp, Retry, Retry, false),
        }
    }

    fn rules(policy: RestartPolicy, max_retries: u32) -> RetryRules<'static> {
        RetryRules {
            policy,
            max_retries,
            no_retry_exit_codes: &[3, 64],
        }
    }

    fn out(reason: ExitReason) -> FinishedAttempt {
        FinishedAttempt {
            reason,
            retryable: None,
            exit_code: None,
        }
    }

    fn why(v: RetryVerdict) -> String {
        match v {
            RetryVerdict::GiveUp { why } => why,
            other => panic!("expected GiveUp, got {other:?}"),
        }
    }

    const POLICIES: [RestartPolicy; 3] = [
        RestartPolicy::Never,
        RestartPolicy::OnFailure,
        RestartPolicy::Always,
    ];

    #[test]
    fn every_reason_under_every_policy() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(seen.insert(r), "{r} listed twice");
            let (never, on_failure, always, breaker) = table(r);
            for (policy, want) in POLICIES.into_iter().zip([never, on_failure, always]) {
                for retries in [0, 1, 2] {
                    let v = decide(&rules(policy, 3), &out(r), retries);
                    assert_eq!(kind(&v), want, "{r} under {policy:?} after {retries}");
                    if let RetryVerdict::GiveUp { why } = &v {
                        assert!(!why.is_empty());
                    }
                }
                // Out of retries: every retry becomes a give-up, nothing else changes.
                let v = decide(&rules(policy, 3), &out(r), 3);
                let want_at_max = if want == K::Retry { K::GiveUp } else { want };
                assert_eq!(kind(&v), want_at_max, "{r} under {policy:?} at max");
                if want == K::Retry {
                    assert_eq!(
                        why(v),
                        format!("max_retries (3) reached (last attempt: {r})")
                    );
                }
            }
            assert_eq!(counts_for_breaker(r), breaker, "{r}");
            assert_eq!(out(r).counts_for_breaker(), breaker, "{r}");
        }
    }

    #[test]
    fn agent_error_retryable_flag() {
        let not = FinishedAttempt {
            reason: R::AgentError,
            retryable: Some(false),
            exit_code: None,
        };
        let yes = FinishedAttempt {
            retryable: Some(true),
            ..not.clone()
        };
        assert_eq!(
            why(decide(&rules(RestartPolicy::OnFailure, 3), &not, 0)),
            "agent error is not retryable"
        );
        assert_eq!(
            decide(&rules(RestartPolicy::OnFailure, 3), &yes, 0),
            RetryVerdict::Retry
        );
        assert_eq!(
            decide(&rules(RestartPolicy::Always, 3), &not, 0),
            RetryVerdict::Retry
        );
        assert!(!not.counts_for_breaker());
        assert!(yes.counts_for_breaker());
        // The flag matters only for agent errors.
        let hung = FinishedAttempt {
            reason: R::Hung,
            retryable: Some(false),
            exit_code: None,
        };
        assert_eq!(
            decide(&rules(RestartPolicy::OnFailure, 3), &hung, 0),
            RetryVerdict::Retry
        );
        assert!(hung.counts_for_breaker());
    }

    #[test]
    fn no_retry_exit_codes() {
        let code = |c| FinishedAttempt {
            reason: R::ExitCode,
            retryable: None,
            exit_code: Some(c),
        };
        let on_failure = rules(RestartPolicy::OnFailure, 3);
        assert_eq!(
            why(decide(&on_failure, &code(3), 0)),
            "exit code 3 is in no_retry_exit_codes"
        );
        assert_eq!(
            why(decide(&on_failure, &code(64), 2)),
            "exit code 64 is in no_retry_exit_codes"
        );
        assert_eq!(decide(&on_failure, &code(1), 0), RetryVerdict::Retry);
        assert_eq!(
            decide(&rules(RestartPolicy::Always, 3), &code(3), 0),
            RetryVerdict::Retry
        );
        // Only for the exit_code reason: a signal death that also carries a code is retried.
        let signal = FinishedAttempt {
            reason: R::Signal,
            retryable: None,
            exit_code: Some(3),
        };
        assert_eq!(decide(&on_failure, &signal, 0), RetryVerdict::Retry);
        // An empty list stops nothing.
        let open = RetryRules {
            no_retry_exit_codes: &[],
            ..on_failure
        };
        assert_eq!(decide(&open, &code(3), 0), RetryVerdict::Retry);
    }

    #[test]
    fn reasons_beat_the_retry_count_in_the_message() {
        let on_failure = rules(RestartPolicy::OnFailure, 0);
        assert_eq!(
            why(decide(&on_failure, &out(R::Cancelled), 5)),
            "the task was cancelled"
        );
        assert_eq!(
            why(decide(&on_failure, &out(R::Hung), 0)),
            "max_retries (0) reached (last attempt: hung)"
        );
        assert_eq!(
            why(decide(&rules(RestartPolicy::Always, 0), &out(R::Hung), 0)),
            "max_retries (0) reached (last attempt: hung)"
        );
        assert!(
            why(decide(&rules(RestartPolicy::Never, 9), &out(R::Hung), 0)).contains("\"never\"")
        );
        assert!(why(decide(&on_failure, &out(R::SpawnFailed), 0)).contains("could not be started"));
        assert_eq!(
            decide(&on_failure, &out(R::Completed), u32::MAX),
            RetryVerdict::Done
        );
        assert_eq!(
            decide(
                &rules(RestartPolicy::Always, u32::MAX),
                &out(R::Hung),
                u32::MAX - 1
            ),
            RetryVerdict::Retry
        );
    }
}
