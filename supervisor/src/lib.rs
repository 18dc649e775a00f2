//! # corral: a process-isolating supervisor for AI agents
//!
//! Every agent is a separate OS process made inside limits and isolation (its own uid,
//! namespaces, cgroup, seccomp filter and landlock rules), spoken to through the typed
//! contract of [`corral_proto`] over two pipes, watched for health (heartbeats, progress,
//! deadlines), killed with escalation when it hangs, restarted by policy (backoff, restart
//! intensity, circuit breaker, quarantine of poison inputs), and accounted for by an
//! [`ExitRecord`] per attempt, whatever happened to it.
//!
//! This crate is the library; the `corral` command (`corral call`, `validate`, `demo`) is a
//! thin face over it in the `corral-cli` package. Agents are written with `corral-sdk`, or in
//! any language that speaks the protocol (`docs/protocol.md`).
//!
//! ## Embedding
//!
//! A [`Config`] (from a `corral.toml`, see `docs/config.md`) names the agents; a
//! [`Supervisor`] owns their processes and runs tasks on them with [`Supervisor::call`],
//! which returns the output and the [`ExitRecord`] of every attempt. [`CallOptions`] add a
//! [`Stop`] to end a call from outside, where the agent's tool calls go ([`ToolSink`]: a
//! broker, or a channel of [`ToolRequest`]s), and a channel for the attempts' life events
//! ([`AttemptEvent`]).
//!
//! ```
//! use corral::{CallOptions, Config, ExitReason, Stop, Supervisor, Value};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The example agent `echo` (it answers with its input), as built in this workspace.
//! let Some(echo) = example_agent("echo") else {
//!     return Ok(()); // not built here: nothing to run
//! };
//! let dir = tempfile::tempdir()?;
//! let toml = format!("[agents.echo]\ncommand = [{:?}]\n", echo.display().to_string());
//! let config = Config::parse(&toml, &dir.path().join("corral.toml"))?;
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let supervisor = Supervisor::new(config)?;
//!     // Keep `handle` to stop the call from elsewhere: `handle.stop(ExitReason::Cancelled)`.
//!     let (handle, stop) = Stop::new();
//!     let options = CallOptions {
//!         stop: Some(stop),
//!         ..Default::default()
//!     };
//!     let input = Value::from_json(&serde_json::json!({"hello": "world"}));
//!     let outcome = supervisor.call("echo", input.clone(), options).await?;
//!
//!     assert_eq!(outcome.output, Some(input));
//!     let attempt = &outcome.attempts[0];
//!     assert_eq!(attempt.reason, ExitReason::Completed);
//!     println!("{}", serde_json::to_string_pretty(attempt)?);
//!     # drop(handle);
//!     // A finished attempt's workspace and cgroup are removed on a reaper thread: a program
//!     // about to exit waits for it.
//!     drop(supervisor);
//!     corral::sandbox::process::settled().await;
//!     Ok(())
//! })
//! # }
//! #
//! # /// An example agent built next to `corral-init` in the workspace's target directory,
//! # /// which is also where the supervisor then finds `corral-init`.
//! # fn example_agent(name: &str) -> Option<std::path::PathBuf> {
//! #     let target = std::env::var_os("CARGO_TARGET_DIR")
//! #         .map(std::path::PathBuf::from)
//! #         .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
//! #     let dir = target.join(if cfg!(debug_assertions) { "debug" } else { "release" });
//! #     let (agent, init) = (dir.join(name), dir.join("corral-init"));
//! #     if !agent.is_file() || !init.is_file() {
//! #         return None;
//! #     }
//! #     std::env::set_var("CORRAL_INIT", init);
//! #     Some(agent)
//! # }
//! ```
//!
//! ## What is here
//!
//! The root holds what embedding needs: [`Supervisor`], [`Config`] and [`AgentSpec`],
//! [`CallOptions`] and [`CallOutcome`], [`Stop`] and [`StopHandle`], [`ExitRecord`] and
//! [`ExitReason`], [`AttemptEvent`], [`ToolRequest`], the errors [`ConfigError`] and
//! [`RunError`], and the protocol's [`Value`]. Four rooms are public besides:
//!
//! - [`config`]: `corral.toml`: its schema, validation with `file:line:col`, resolution of
//!   every agent into an [`AgentSpec`], and what each agent's settings give away
//!   ([`config::exposure`]).
//! - [`record`]: the exit record and the names users script against (`corral call --json`).
//! - [`sandbox`]: what this host can enforce (cgroups, landlock).
//! - [`journal`]: the durable record of runs, calls, attempts, events and tool calls (SQLite).
//!
//! Inside, with arrows pointing down (nothing low imports anything high): `run` runs a task
//! on an agent with retries (the owner of children, applying the policy); `child` is one
//! supervised process (handshake, frames, watchdog, kill escalation, exit record) and knows
//! nothing of retries; `sandbox` makes the process (fds, rlimits, namespaces, cgroups,
//! privileges); `policy` decides restarts, backoff, restart intensity, the circuit breaker and
//! quarantine, as pure logic over an injected clock ([`clock`]: the system's, or a manual one
//! tests drive); `exit_status` decodes how a process ended (wait statuses and `corral-init`'s
//! status record); `config` and `record` are at the bottom.

mod child;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit_status;
pub mod health;
mod init_record;
pub mod journal;
pub mod plan;
mod policy;
pub mod record;
pub mod replay;
mod run;
pub mod sandbox;
mod stop;
pub mod tools;

pub use child::{AttemptEvent, CallNote, LogLine, Note, Notes, ToolNote, ToolRequest, ToolSink};
pub use config::{AgentSpec, Config, ConfigError};
pub use corral_proto::Value;
pub use record::{ExitReason, ExitRecord};
pub use run::{
    CallOptions, CallOutcome, JournalCall, Probe, RunError, RunShare, Supervisor, AGENT_TOOL,
    MAX_RUN_AGENTS,
};
pub use stop::{Stop, StopHandle};
