//! # corral: a process-isolating supervisor for AI agents
//!
//! Every agent is a separate OS process made inside limits and isolation, spoken to through
//! the typed contract of [`corral_proto`] over two pipes, watched for health, killed when it
//! hangs, restarted by policy, and accounted for by an [`record::ExitRecord`] per attempt.
//!
//! Rooms, with arrows pointing down (nothing low imports anything high):
//!
//! - [`cli`]: the `corral` binary's verbs, thin faces over the library.
//! - [`run`]: runs a task on an agent with retries (owner of children; applies policy).
//! - [`child`]: one supervised process: handshake, frames, watchdog, kill escalation, exit
//!   record. Knows nothing of plans, tools or the journal.
//! - [`sandbox`]: how a child is made: fds, rlimits, namespaces, cgroups, privileges.
//! - [`policy`]: restart, backoff, intensity, circuit breaker, quarantine: pure logic over an
//!   injected clock.
//! - [`clock`]: the time the policy runs on: the system's, or a manual one tests drive.
//! - [`config`]: `corral.toml` schema, validation with `file:line:col`, resolution per agent.
//! - [`record`]: the exit record and the names users script against.
//! - [`exit_status`]: how a process ended: wait statuses and `corral-init`'s status record
//!   (std and libc only: `corral-init` compiles it too).

pub mod child;
pub mod cli;
pub mod clock;
pub mod config;
pub mod exit_status;
pub mod policy;
pub mod record;
pub mod run;
pub mod sandbox;
