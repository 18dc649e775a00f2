//! The raw serde view of `corral.toml`: every key optional, unknown keys refused, and a span
//! kept (`toml::Spanned`) wherever a later semantic check must point at the text.
//!
//! `[defaults]` and `[agents.NAME]` share one struct, [`Settings`]; `resolve` refuses
//! `command` in `[defaults]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{Count, Dur, Limit, Real, Size};
use super::Namespace;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a config file")]
pub(super) struct File {
    pub supervisor: Option<Supervisor>,
    pub defaults: Option<Settings>,
    pub agents: Option<BTreeMap<Spanned<String>, Settings>>,
    pub tools: Option<BTreeMap<Spanned<String>, super::tools::ToolTable>>,
}

/// `[supervisor]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [supervisor] table")]
pub(super) struct Supervisor {
    pub state_dir: Option<Spanned<String>>,
    pub max_frame: Option<Spanned<Size>>,
    pub uid_range: Option<Spanned<[u32; 2]>>,
    pub journal: Option<bool>,
    pub journal_keep: Option<Spanned<Dur>>,
    pub journal_sync: Option<Spanned<String>>,
    pub max_agents: Option<Spanned<u32>>,
    pub control_socket: Option<Spanned<String>>,
    pub control_group: Option<Spanned<String>>,
    pub admins: Option<Vec<Spanned<String>>>,
    pub metrics_listen: Option<Spanned<String>>,
}

/// `restart = …`, mapped onto [`crate::policy::RestartPolicy`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Restart {
    Never,
    OnFailure,
    Always,
}

/// `netns = …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Netns {
    /// One loopback-only namespace shared by all agents without network (cheap to join, but
    /// agents can reach each other's sockets on 127.0.0.1 and abstract Unix sockets).
    Shared,
    /// A loopback-only namespace of its own per attempt (agents cannot reach each other); the
    /// default.
    Private,
}

/// One layer of agent settings: `[defaults]` or `[agents.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of agent settings")]
pub(super) struct Settings {
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub cwd: Option<Spanned<String>>,
    // sandbox
    pub memory: Option<Spanned<Limit<Size>>>,
    pub cpu_time: Option<Spanned<Limit<Dur>>>,
    pub cpu_quota: Option<Spanned<Limit<Real>>>,
    pub pids: Option<Spanned<Limit<Count>>>,
    pub open_files: Option<Spanned<Limit<Count>>>,
    pub file_size: Option<Limit<Size>>,
    pub network: Option<bool>,
    pub netns: Option<Netns>,
    pub namespaces: Option<Vec<Spanned<Namespace>>>,
    pub user: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub allow_root: Option<bool>,
    pub disk: Option<Spanned<Limit<Size>>>,
    pub readonly_paths: Option<Vec<Spanned<String>>>,
    pub writable_paths: Option<Vec<Spanned<String>>>,
    pub env_pass: Option<Vec<Spanned<String>>>,
    pub keep_workspace: Option<bool>,
    pub prewarm: Option<bool>,
    pub seccomp: Option<bool>,
    pub landlock: Option<bool>,
    pub strict: Option<bool>,
    // supervision
    pub heartbeat_interval: Option<Spanned<Dur>>,
    pub heartbeat_timeout: Option<Spanned<Dur>>,
    pub stall_timeout: Option<Spanned<Dur>>,
    pub startup_timeout: Option<Spanned<Dur>>,
    pub wall_time: Option<Spanned<Dur>>,
    pub kill_grace: Option<Dur>,
    pub sample_interval: Option<Spanned<Dur>>,
    pub log_limit: Option<Size>,
    pub restart: Option<Restart>,
    pub max_retries: Option<u32>,
    pub no_retry_exit_codes: Option<Vec<Spanned<i32>>>,
    pub backoff: Option<Backoff>,
    pub intensity: Option<Intensity>,
    pub breaker: Option<Breaker>,
    pub quarantine_after: Option<Spanned<u32>>,
    pub max_instances: Option<Spanned<u32>>,
    pub max_depth: Option<u32>,
    pub max_children: Option<u32>,
    // tools
    pub tools: Option<Vec<Spanned<super::tools::Grant>>>,
    pub deny_tools: Option<Vec<Spanned<String>>>,
    pub service: Option<bool>,
    pub instances: Option<Spanned<u32>>,
}

/// `backoff = { … }`, each key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { initial = \"100ms\", factor = 2.0 }"
)]
pub(super) struct Backoff {
    pub initial: Option<Spanned<Dur>>,
    pub max: Option<Spanned<Dur>>,
    pub factor: Option<Spanned<Real>>,
    pub jitter: Option<Spanned<Real>>,
    pub reset_after: Option<Dur>,
}

/// `intensity = { … }`, each key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { max = 10, period = \"60s\" }"
)]
pub(super) struct Intensity {
    pub max: Option<u32>,
    pub period: Option<Spanned<Dur>>,
    pub fatal_cooldown: Option<Dur>,
}

/// `breaker = { … }`, each key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { failures = 5, open_for = \"30s\" }"
)]
pub(super) struct Breaker {
    pub failures: Option<Spanned<u32>>,
    pub open_for: Option<Dur>,
}
