//! Why an attempt ended: the verdict its watch reached, and the reason the exit record gives
//! once the process is reaped and the kernel's counters are read. Pure: evidence in, reason and
//! error out.
//!
//! The order of evidence: what the watch decided (a completion, a watchdog, a violation, a
//! stop) stands, except that a watchdog gives way to a limit the kernel says was hit first (a
//! fork bomb stopped by its deadline is a `pids_limit`); a process that ended on its own is
//! classified from its status and the counters ([`classify`]); and a failure with the disk
//! quota used up is a `disk_limit`.

use crate::config::AgentSpec;
use crate::record::{ExitReason, RecordedError};
use crate::sandbox::process::Reaped;

/// What the watch decided, before the process is reaped.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Verdict {
    /// `None`: the process ended by itself; the evidence decides.
    pub(super) reason: Option<ExitReason>,
    pub(super) error: Option<RecordedError>,
    /// Ask the agent to stop (Shutdown, then SIGTERM after nothing) rather than SIGTERM at once.
    pub(super) graceful: bool,
}

impl Verdict {
    /// The process ended by itself.
    pub(super) fn exited() -> Verdict {
        Verdict {
            reason: None,
            error: None,
            graceful: false,
        }
    }

    /// The attempt ends for `reason` with an error of that kind.
    pub(super) fn ended(
        reason: ExitReason,
        message: impl Into<String>,
        retryable: bool,
        graceful: bool,
    ) -> Verdict {
        Verdict {
            reason: Some(reason),
            error: err(reason.as_str(), message, retryable),
            graceful,
        }
    }

    /// The agent completed its task.
    pub(super) fn completed() -> Verdict {
        Verdict {
            reason: Some(ExitReason::Completed),
            error: None,
            graceful: true,
        }
    }

    /// A protocol violation: the attempt ends at once.
    pub(super) fn violation(message: impl Into<String>) -> Verdict {
        Verdict::ended(ExitReason::ProtocolViolation, message, false, false)
    }

    /// A contract violation: the agent is asked to stop.
    pub(super) fn contract(message: impl Into<String>) -> Verdict {
        Verdict::ended(ExitReason::ContractViolation, message, false, true)
    }

    /// Put what ended the attempt in the supervisor's log, when it is a fault of the agent's
    /// that the log should show (a violation, a watchdog).
    pub(super) fn log(&self, agent: &str) {
        let (Some(reason), Some(e)) = (self.reason, &self.error) else {
            return;
        };
        match reason {
            ExitReason::ProtocolViolation => {
                tracing::warn!(agent = %agent, "protocol violation: {}", e.message)
            }
            ExitReason::StartupTimeout
            | ExitReason::Hung
            | ExitReason::Stalled
            | ExitReason::Deadline => {
                tracing::warn!(agent = %agent, reason = %reason, "{}", e.message)
            }
            _ => {}
        }
    }
}

/// A recorded error.
pub(super) fn err(
    kind: &str,
    message: impl Into<String>,
    retryable: bool,
) -> Option<RecordedError> {
    Some(RecordedError {
        kind: kind.to_string(),
        message: message.into(),
        retryable,
    })
}

/// `SIGKILL` for 9, `SIG77` for a number without a name.
pub(crate) fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

/// What the kernel says about the attempt once it is over.
#[derive(Debug, Clone, Default)]
pub(super) struct Evidence {
    /// How the process ended.
    pub(super) reaped: Reaped,
    /// The cgroup's OOM killer killed a process of it.
    pub(super) oom: bool,
    /// Forks the cgroup's pids limit refused.
    pub(super) pids_hits: u64,
    /// The workspace's disk quota was used up.
    pub(super) disk_full: bool,
    /// The agent's frames ended mid-frame (its writer died while writing): why.
    pub(super) truncated: Option<String>,
}

/// The reason and error of the exit record, from the watch's verdict and the evidence.
pub(super) fn decide(
    verdict: Verdict,
    ev: &Evidence,
    agent: &AgentSpec,
) -> (ExitReason, Option<RecordedError>) {
    let (reason, error) = match verdict.reason {
        // A watchdog fired, but the kernel's counters say a limit was hit first: that is the
        // cause.
        Some(watchdog @ (ExitReason::Hung | ExitReason::Stalled | ExitReason::Deadline))
            if ev.oom || ev.pids_hits > 0 =>
        {
            let (reason, what) = if ev.oom {
                (
                    ExitReason::OomKilled,
                    "the kernel OOM-killed a process of the agent".to_string(),
                )
            } else {
                (
                    ExitReason::PidsLimit,
                    format!("the pids limit refused {} fork(s)", ev.pids_hits),
                )
            };
            let message = format!("{what}; then the {} watchdog ended it", watchdog.as_str());
            (reason, err(reason.as_str(), message, false))
        }
        Some(reason) => (reason, verdict.error),
        None => classify(ev, agent),
    };
    // The agent failed with its disk quota used up: that is the likely cause (its writes were
    // failing with ENOSPC).
    match reason {
        ExitReason::ExitCode | ExitReason::Signal | ExitReason::AgentError if ev.disk_full => {
            let was = error
                .as_ref()
                .map(|e| format!(" ({}: {})", e.kind, e.message))
                .unwrap_or_default();
            let message = format!(
                "the agent failed with its disk quota ({} bytes of workspace and /tmp) used up{was}",
                agent.disk.unwrap_or(0)
            );
            (ExitReason::DiskLimit, err("disk_limit", message, false))
        }
        _ => (reason, error),
    }
}

/// What an interpreter or the dynamic loader writes when it cannot load the program at all
/// (whatever exit code follows): such an exit before `Ready` is a start failure.
const CANNOT_LOAD: [&str; 5] = [
    "Fatal Python error",
    "ModuleNotFoundError",
    "ImportError",
    "error while loading shared libraries",
    "cannot execute binary file",
];

/// A process that ended before `Ready` with 126 or 127, or after saying it could not load (see
/// [`CANNOT_LOAD`]), never started as the agent (a program or an interpreter that cannot be
/// executed or loaded, a shim that cannot find its target, a module missing): a
/// `spawn_failed`, not retried, saying the program and the last line it wrote on stderr.
pub(super) fn start_failure(
    decided: (ExitReason, Option<RecordedError>),
    phase: crate::record::Phase,
    exit_code: Option<i32>,
    stderr_tail: &str,
    agent: &AgentSpec,
) -> (ExitReason, Option<RecordedError>) {
    let cannot_load = CANNOT_LOAD.iter().any(|m| stderr_tail.contains(m));
    let code = match (decided.0, phase, exit_code) {
        (ExitReason::ExitCode, crate::record::Phase::Starting, Some(c @ (126 | 127))) => c,
        (ExitReason::ExitCode, crate::record::Phase::Starting, Some(c)) if cannot_load => c,
        _ => return decided,
    };
    let what = match code {
        126 => "found but could not be executed",
        127 => "not found, or an interpreter or library it needs could not be loaded",
        _ => "it could not load what it needs",
    };
    let program = agent.command.first().map(String::as_str).unwrap_or("");
    let last = stderr_tail
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    let message = format!(
        "agent `{}`: command `{program}` exited with code {code} before Ready ({what}){last}",
        agent.name
    );
    (ExitReason::SpawnFailed, err("spawn_failed", message, false))
}

/// Why a process that ended on its own ended, from evidence.
fn classify(ev: &Evidence, agent: &AgentSpec) -> (ExitReason, Option<RecordedError>) {
    let r = &ev.reaped;
    let cpu_ms = r.cpu_user_ms + r.cpu_sys_ms;
    let cpu_limit_ms = agent.cpu_time.map(|d| d.as_millis() as u64);
    let trunc = ev
        .truncated
        .as_ref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    if ev.oom {
        let message = format!("the kernel OOM-killed the agent at its memory limit{trunc}");
        return (ExitReason::OomKilled, err("oom_killed", message, true));
    }
    if r.signal == Some(libc::SIGXCPU)
        || (r.signal == Some(libc::SIGKILL) && cpu_limit_ms.is_some_and(|lim| cpu_ms + 50 >= lim))
    {
        let message = format!("CPU time limit reached after {cpu_ms} ms of CPU{trunc}");
        return (ExitReason::CpuLimit, err("cpu_limit", message, false));
    }
    if ev.pids_hits > 0 {
        let message = format!("the pids limit refused {} fork(s){trunc}", ev.pids_hits);
        return (ExitReason::PidsLimit, err("pids_limit", message, false));
    }
    if let Some(sig) = r.signal {
        let core = if r.core_dumped { " (core dumped)" } else { "" };
        let message = format!("killed by {}{core}{trunc}", signal_name(sig));
        return (ExitReason::Signal, err("signal", message, true));
    }
    let code = r.exit_code.unwrap_or(-1);
    let message = format!("exited with code {code} before finishing its task{trunc}");
    (ExitReason::ExitCode, err("exit_code", message, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentSpec {
        AgentSpec {
            cpu_time: Some(std::time::Duration::from_secs(1)),
            disk: Some(1 << 20),
            ..AgentSpec::builtin("a", vec!["/bin/true".into()])
        }
    }

    fn exited(code: i32) -> Evidence {
        Evidence {
            reaped: Reaped {
                exit_code: Some(code),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn killed(sig: i32, cpu_ms: u64) -> Evidence {
        Evidence {
            reaped: Reaped {
                signal: Some(sig),
                cpu_user_ms: cpu_ms,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_process_that_ended_by_itself_is_classified_from_its_status() {
        let a = agent();
        let (r, e) = decide(Verdict::exited(), &exited(3), &a);
        assert_eq!(r, ExitReason::ExitCode);
        assert_eq!(
            e.map(|e| e.message),
            Some("exited with code 3 before finishing its task".into())
        );
        let (r, e) = decide(Verdict::exited(), &killed(libc::SIGSEGV, 0), &a);
        assert_eq!(r, ExitReason::Signal);
        assert_eq!(e.map(|e| e.message), Some("killed by SIGSEGV".into()));
        // SIGKILL at the CPU limit (give or take 50 ms) is the limit; well below it is a kill.
        assert_eq!(
            decide(Verdict::exited(), &killed(libc::SIGKILL, 960), &a).0,
            ExitReason::CpuLimit
        );
        assert_eq!(
            decide(Verdict::exited(), &killed(libc::SIGKILL, 100), &a).0,
            ExitReason::Signal
        );
        assert_eq!(
            decide(Verdict::exited(), &killed(libc::SIGXCPU, 0), &a).0,
            ExitReason::CpuLimit
        );
    }

    #[test]
    fn kernel_counters_come_before_the_status() {
        let a = agent();
        let oom = Evidence {
            oom: true,
            ..killed(libc::SIGKILL, 0)
        };
        assert_eq!(decide(Verdict::exited(), &oom, &a).0, ExitReason::OomKilled);
        let pids = Evidence {
            pids_hits: 2,
            truncated: Some("stream ended mid-frame".into()),
            ..exited(1)
        };
        let (r, e) = decide(Verdict::exited(), &pids, &a);
        assert_eq!(r, ExitReason::PidsLimit);
        assert_eq!(
            e.map(|e| e.message),
            Some("the pids limit refused 2 fork(s) (stream ended mid-frame)".into())
        );
    }

    #[test]
    fn a_watchdog_gives_way_to_a_limit_hit_first() {
        let a = agent();
        let hung = Verdict::ended(ExitReason::Deadline, "past wall_time", true, false);
        let pids = Evidence {
            pids_hits: 5,
            ..killed(libc::SIGKILL, 0)
        };
        let (r, e) = decide(hung.clone(), &pids, &a);
        assert_eq!(r, ExitReason::PidsLimit);
        let e = e.expect("error");
        assert_eq!(
            e.message,
            "the pids limit refused 5 fork(s); then the deadline watchdog ended it"
        );
        assert!(!e.retryable);
        // Without counters, the watchdog stands; other verdicts stand whatever the counters.
        assert_eq!(
            decide(hung, &killed(libc::SIGKILL, 0), &a),
            (
                ExitReason::Deadline,
                err("deadline", "past wall_time", true)
            )
        );
        let done = Verdict::completed();
        assert_eq!(decide(done, &pids, &a).0, ExitReason::Completed);
    }

    #[test]
    fn exit_126_or_127_before_ready_is_a_start_failure_with_the_last_stderr_line() {
        use crate::record::Phase;
        let a = agent();
        let decided = decide(Verdict::exited(), &exited(127), &a);
        let tail = "pyenv: python3: command not found\n\nThe `python3' command exists in these\n";
        let (r, e) = start_failure(decided.clone(), Phase::Starting, Some(127), tail, &a);
        assert_eq!(r, ExitReason::SpawnFailed);
        let e = e.expect("error");
        assert!(!e.retryable);
        assert_eq!(
            e.message,
            "agent `a`: command `/bin/true` exited with code 127 before Ready (not found, or an \
             interpreter or library it needs could not be loaded): The `python3' command exists \
             in these"
        );
        // After Ready, or another code, it is what the agent did.
        assert_eq!(
            start_failure(decided.clone(), Phase::Busy, Some(127), tail, &a),
            decided
        );
        let three = decide(Verdict::exited(), &exited(3), &a);
        assert_eq!(
            start_failure(three.clone(), Phase::Starting, Some(3), "", &a),
            three
        );
        // An interpreter that says it cannot load, whatever its code.
        let one = decide(Verdict::exited(), &exited(1), &a);
        let tail = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'corral_agent'\n";
        let (r, e) = start_failure(one.clone(), Phase::Starting, Some(1), tail, &a);
        assert_eq!(r, ExitReason::SpawnFailed);
        let e = e.expect("an error");
        assert!(!e.retryable);
        assert!(
            e.message.contains("No module named 'corral_agent'"),
            "{}",
            e.message
        );
        // The same line after Ready is the agent's own failure.
        assert_eq!(
            start_failure(one.clone(), Phase::Busy, Some(1), tail, &a),
            one
        );
    }

    #[test]
    fn a_failure_with_the_disk_full_is_a_disk_limit() {
        let a = agent();
        let full = Evidence {
            disk_full: true,
            ..exited(1)
        };
        let (r, e) = decide(Verdict::exited(), &full, &a);
        assert_eq!(r, ExitReason::DiskLimit);
        assert_eq!(
            e.map(|e| e.message),
            Some(
                "the agent failed with its disk quota (1048576 bytes of workspace and /tmp) \
                 used up (exit_code: exited with code 1 before finishing its task)"
                    .into()
            )
        );
        // A completion or a watchdog is not blamed on the disk.
        let done = Verdict::completed();
        assert_eq!(decide(done, &full, &a).0, ExitReason::Completed);
        let hung = Verdict::ended(ExitReason::Hung, "", true, false);
        assert_eq!(decide(hung, &full, &a).0, ExitReason::Hung);
    }
}
