//! `corral.toml`: the schema, its validation with `file:line:col` messages, and resolution of
//! every agent into a complete [`AgentSpec`] (built-in defaults, then `[defaults]`, then
//! `[agents.NAME]`, per key).
//!
//! The room is pure apart from [`Config::load`] reading the file: nothing here spawns, sandboxes or
//! decides. Relative paths are resolved against the config file's directory so that the rest of
//! corral only ever sees absolute paths (and bare command names, looked up in `PATH` at spawn).
//!
//! Layout: `units` reads sizes and durations; `schema` is the raw serde view of the file
//! with spans kept where a later check needs a location; `resolve` merges the layers and runs
//! the semantic checks. The key reference for users is `docs/config.md`.
//!
//! Past ~600 lines on purpose: [`AgentSpec`] and [`SupervisorConfig`] carry one documented
//! field per key and are the resolved reference; they stay together.

pub mod check;
mod daemon;
pub mod exposure;
mod layer;
mod print;
pub mod reach;
#[cfg(test)]
mod report_tests;
mod resolve;
mod schema;
#[cfg(test)]
mod tests;
pub mod tools;
pub(crate) mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

// The policy settings of an agent, named here with the rest of its config (the policy room
// itself is internal).
pub use crate::policy::{BackoffConfig, BreakerConfig, IntensityConfig, RestartPolicy};
pub use daemon::control_socket_of;
pub use schema::Netns;
pub use tools::{Approve, Builtin, Effect, HttpSpec, ToolKind, ToolSpec};

/// Smallest accepted `max_frame`: 1 KiB.
pub(crate) const MIN_MAX_FRAME: u32 = 1 << 10;
/// Largest accepted `max_frame`: 1 GiB.
pub(crate) const MAX_MAX_FRAME: u32 = 1 << 30;
/// Default `state_dir`, relative to the config file's directory.
pub(crate) const DEFAULT_STATE_DIR: &str = ".corral-state";

/// A 1-based position in the config file (`column` counts characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// The position of byte `offset` in `text` (clamped to the text; a leading byte-order mark
    /// does not count as a column).
    pub fn from_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_text = &before[line_start..];
        let line_text = line_text.strip_prefix('\u{feff}').unwrap_or(line_text);
        Location {
            line: before.matches('\n').count() + 1,
            column: line_text.chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a config could not be loaded. Renders as `FILE:LINE:COL: message` when the place is
/// known, else `FILE: message`; the CLI prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read {what}: {source}", .path.display())]
    Read {
        /// `config` or `plan`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or does not fit the schema (unknown key, wrong type, bad
    /// size or duration).
    #[error("{}", located(.path, .location, .message))]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// Where, when known.
        location: Option<Location>,
        /// What is wrong, on one line.
        message: String,
    },
    /// The file fits the schema but a value is not acceptable (empty command, timeouts in the
    /// wrong order, out-of-range numbers, bad names).
    #[error("{}", located(.path, .location, .message))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Where, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
    },
    /// Several problems, in file order: one per line, each `FILE:LINE:COL: message`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// The config file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::Invalid { path, .. } => path,
            ConfigError::Many(all) => all.first().map_or(Path::new(""), ConfigError::path),
        }
    }

    /// Where in the file, when known (the first problem's place for [`ConfigError::Many`]).
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { location, .. } | ConfigError::Invalid { location, .. } => {
                *location
            }
            ConfigError::Many(all) => all.first().and_then(ConfigError::location),
        }
    }

    /// Every problem, one by one (a single error is a list of one).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many(all) => all.iter().flat_map(ConfigError::problems).collect(),
            one => vec![one],
        }
    }

    /// The problems as one error, in file order (those without a place last); `None` when
    /// there are none.
    pub fn from_all(all: Vec<ConfigError>) -> Option<ConfigError> {
        let mut flat: Vec<ConfigError> = Vec::new();
        for e in all {
            match e {
                ConfigError::Many(inner) => flat.extend(inner),
                one => flat.push(one),
            }
        }
        flat.sort_by_key(|e| {
            e.location()
                .map_or((usize::MAX, usize::MAX), |l| (l.line, l.column))
        });
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(ConfigError::Many(flat)),
        }
    }
}

fn located(path: &Path, location: &Option<Location>, message: &str) -> String {
    match location {
        Some(at) => format!("{}:{at}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

/// A loaded `corral.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, as given.
    pub path: PathBuf,
    /// `[supervisor]`.
    pub supervisor: SupervisorConfig,
    /// Every `[agents.NAME]`, fully resolved (defaults merged in), by name.
    pub agents: BTreeMap<String, AgentSpec>,
    /// The SHA-256 of the config's text, hex: which config a journalled run ran under.
    pub digest: String,
    /// Every tool: the built-ins (`fs.read`, `fs.list`, `fs.write`) and each `[tools.NAME]`.
    pub tools: BTreeMap<String, ToolSpec>,
    /// Where each agent's keys are set in the file, by agent (for [`check::host`]).
    pub places: BTreeMap<String, check::Places>,
}

/// `[supervisor]`: settings of corral itself.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Where corral keeps its journal and workspaces (`state_dir`); default
    /// `<config dir>/.corral-state`.
    pub state_dir: PathBuf,
    /// Largest frame accepted from an agent, in bytes (`max_frame`); default the protocol's
    /// [`corral_proto::DEFAULT_MAX_FRAME`] (16 MiB).
    pub max_frame: u32,
    /// Host uids (and gids of the same number) handed out to agents with `user = "dynamic"`,
    /// inclusive (`uid_range`); default [`DEFAULT_UID_RANGE`].
    pub uid_range: (u32, u32),
    /// Whether runs are recorded in the journal, `<state_dir>/corral.db` (`journal`); default
    /// true.
    pub journal: bool,
    /// How long finished runs are kept in the journal (`journal_keep`, e.g. `"30d"`); `None`
    /// (the default): kept for ever.
    pub journal_keep: Option<std::time::Duration>,
    /// Whether each journal commit syncs to the disk (`journal_sync = "full"`, the default) or
    /// only reaches the kernel (`"normal"`: survives a crash of corral, not a power loss).
    pub journal_sync_full: bool,
    /// Most agent processes the daemon keeps alive at once, service instances and task
    /// attempts together (`max_agents`); `None`: no cap.
    pub max_agents: Option<u32>,
    /// The daemon's control socket (`control_socket`); default `<state_dir>/control.sock`.
    pub control_socket: PathBuf,
    /// The group owning the control socket (`control_group`, a name or a gid); `None`: the
    /// daemon's own group.
    pub control_group: Option<u32>,
    /// Who may use the control socket (`admins`), besides root and the daemon's own uid.
    pub admins: Admins,
    /// Where the daemon serves Prometheus metrics (`metrics_listen`); `None`: no metrics.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `admins = ["alice", "1001", "group:ops"]`: users and groups, resolved to ids when the
/// config is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admins {
    /// Admitted uids.
    pub uids: Vec<u32>,
    /// Admitted gids (primary or supplementary group of the peer).
    pub gids: Vec<u32>,
}

/// Default `uid_range`: systemd's DynamicUser range.
pub const DEFAULT_UID_RANGE: (u32, u32) = (61184, 65519);

/// A Linux namespace an agent is put in (`namespaces = ["pid", …]`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Namespace {
    /// Own process-id space; the agent is pid 1 of it.
    Pid,
    /// Own System V IPC and POSIX message queues.
    Ipc,
    /// Own host name.
    Uts,
    /// Own mount table.
    Mount,
    /// Own network stack (loopback only).
    Net,
    /// Own user and group ids.
    User,
}

impl Namespace {
    /// The name used in the config file (derived in serde's spelling; a test checks that
    /// the two agree).
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

/// Everything corral needs to run one agent type, fully resolved. Keys are documented in
/// `docs/config.md`.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The name (`[agents.NAME]`).
    pub name: String,
    /// Program and arguments; a program containing `/` is an absolute path, a bare name is
    /// looked up in `PATH` at spawn time.
    pub command: Vec<String>,
    /// Environment set for the agent (`[defaults]` env merged with the agent's, per key).
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute), if any.
    pub cwd: Option<PathBuf>,
    // --- sandbox (limits and isolation) ---
    /// Memory limit in bytes; `None` is unlimited.
    pub memory: Option<u64>,
    /// CPU time limit (RLIMIT_CPU); `None` is unlimited.
    pub cpu_time: Option<Duration>,
    /// CPU bandwidth as a fraction of one core; `None` is unlimited.
    pub cpu_quota: Option<f64>,
    /// Most processes and threads; `None` is unlimited.
    pub pids: Option<u64>,
    /// Most open file descriptors; `None` is unlimited.
    pub open_files: Option<u64>,
    /// Largest file the agent may write, in bytes; `None` is unlimited.
    pub file_size: Option<u64>,
    /// Whether the agent shares the host's network. When true, [`Namespace::Net`] is never in
    /// `namespaces`.
    pub network: bool,
    /// Without network: share one loopback-only namespace, or have one per attempt.
    pub netns: Netns,
    /// Namespaces the agent is put in, without duplicates.
    pub namespaces: Vec<Namespace>,
    /// User to run as: `None` (or `"dynamic"`) is a host uid of its own per live attempt,
    /// taken from `uid_range`; else a name or number.
    pub user: Option<String>,
    /// Group to run as.
    pub group: Option<String>,
    /// Whether the agent may run as host uid 0 (`allow_root`; off by default).
    pub allow_root: bool,
    /// Total bytes the agent may write in its workspace and `/tmp` (`disk`); `None` is
    /// unlimited.
    pub disk: Option<u64>,
    /// Paths (absolute) visible read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// Paths (absolute) visible and writable.
    pub writable_paths: Vec<PathBuf>,
    /// Names of supervisor environment variables passed through to the agent.
    pub env_pass: Vec<String>,
    /// Keep the per-attempt workspace after the attempt ends.
    pub keep_workspace: bool,
    /// Keep one warm sandbox of this agent type ready (with a pid namespace only): its
    /// namespaces, cgroup, mounts and restrictions made ahead, so that a call pays only for the
    /// agent's own start.
    pub prewarm: bool,
    /// Deny dangerous system calls (ptrace, mount, kexec, bpf, …) with a seccomp filter.
    pub seccomp: bool,
    /// Confine file-system access with landlock (where the kernel has it).
    pub landlock: bool,
    /// Fail the spawn when an isolation feature is unavailable instead of degrading.
    pub strict: bool,
    // --- supervision ---
    /// How often the agent is expected to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// No frame for this long means `hung`; always greater than `heartbeat_interval`.
    pub heartbeat_timeout: Duration,
    /// Progress unchanged for this long means `stalled`.
    pub stall_timeout: Duration,
    /// No `Ready` within this long of the spawn means `startup_timeout`.
    pub startup_timeout: Duration,
    /// Longest a task may run (`deadline`).
    pub wall_time: Duration,
    /// Time between the polite stop and SIGKILL.
    pub kill_grace: Duration,
    /// How often resource use is sampled.
    pub sample_interval: Duration,
    /// Bytes of stderr kept per attempt.
    pub log_limit: u64,
    /// When to restart.
    pub restart: RestartPolicy,
    /// Retries of one task after its first attempt.
    pub max_retries: u32,
    /// Exit codes that mean "do not retry".
    pub no_retry_exit_codes: Vec<i32>,
    /// Delays between retries.
    pub backoff: BackoffConfig,
    /// Restart intensity (too many restarts make the type fatal).
    pub intensity: IntensityConfig,
    /// Circuit breaker per agent type.
    pub breaker: BreakerConfig,
    /// Identical crashes on one input before that input is quarantined.
    pub quarantine_after: u32,
    /// Most live instances of this agent type at once in a plan run (`max_instances`);
    /// `None` is no cap beyond the plan's own.
    pub max_instances: Option<u32>,
    /// How deep agents called by this one (`call_agent`) may nest (`max_depth`, default 2).
    pub max_depth: u32,
    /// Most agents this one may call in one task (`max_children`, default 8).
    pub max_children: u32,
    // --- tools ---
    /// Tools granted (`tools`); a call needs the tool in the contract and here.
    pub tools: Vec<String>,
    /// Tools refused whatever else says (`deny_tools`).
    pub deny_tools: Vec<String>,
    /// Tools whose calls by this agent wait for an approval (a grant written
    /// `{ name = "…", approve = "ask" }`).
    pub approve_tools: Vec<String>,
    /// A service agent (`service = true`): the daemon keeps `instances` long-lived processes
    /// that take tasks one after another.
    pub service: bool,
    /// How many processes of a service agent the daemon keeps (`instances`, default 1).
    pub instances: u32,
}

impl AgentSpec {
    /// Whether the agent runs as a dynamic uid (`user` unset or `"dynamic"`).
    pub fn dynamic_user(&self) -> bool {
        self.user.as_deref().is_none_or(|u| u == "dynamic")
    }

    /// An agent with every built-in default, for tests and embedding. `command` is taken as
    /// is (not resolved against any directory).
    pub fn builtin(name: &str, command: Vec<String>) -> AgentSpec {
        AgentSpec {
            name: name.to_string(),
            command,
            env: BTreeMap::new(),
            cwd: None,
            memory: Some(512 << 20),
            cpu_time: Some(Duration::from_secs(60)),
            cpu_quota: Some(1.0),
            pids: Some(64),
            open_files: Some(256),
            file_size: Some(1 << 30),
            network: false,
            netns: Netns::Private,
            namespaces: vec![
                Namespace::Pid,
                Namespace::Ipc,
                Namespace::Uts,
                Namespace::Mount,
                Namespace::Net,
            ],
            user: None,
            group: None,
            allow_root: false,
            disk: Some(1 << 30),
            readonly_paths: Vec::new(),
            writable_paths: Vec::new(),
            env_pass: vec!["RUST_LOG".to_string()],
            keep_workspace: false,
            prewarm: true,
            seccomp: true,
            landlock: true,
            strict: false,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(10),
            wall_time: Duration::from_secs(600),
            kill_grace: Duration::from_secs(2),
            sample_interval: Duration::from_secs(5),
            log_limit: 1 << 20,
            restart: RestartPolicy::OnFailure,
            max_retries: 3,
            no_retry_exit_codes: Vec::new(),
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                factor: 2.0,
                jitter: 0.1,
                reset_after: Duration::from_secs(60),
            },
            intensity: IntensityConfig {
                max: 10,
                period: Duration::from_secs(60),
                fatal_cooldown: Duration::from_secs(300),
            },
            breaker: BreakerConfig {
                failures: 5,
                open_for: Duration::from_secs(30),
            },
            quarantine_after: 2,
            max_instances: None,
            max_depth: 2,
            max_children: 8,
            tools: Vec::new(),
            deny_tools: Vec::new(),
            approve_tools: Vec::new(),
            service: false,
            instances: 1,
        }
    }
}

impl Config {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "config",
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses config `text`. `path` names the file in messages, and its directory is the base
    /// for relative paths (made absolute against the current directory if it is relative).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: schema::File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            location: e.span().map(|span| Location::from_offset(text, span.start)),
            message: explain(text, e.span().map(|s| s.start), &one_line(e.message())),
        })?;
        let mut config = resolve::resolve(file, text, path)?;
        config.digest = digest(text.as_bytes());
        Ok(config)
    }

    /// Every problem of the config at `path`, in file order, for `corral validate`: the
    /// schema's (which stop there), then the values' and the host's together (the host's for
    /// the agents whose values resolved). `Ok` with the config when there are none.
    pub fn check_all(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "config",
            path: path.to_path_buf(),
            source,
        })?;
        Config::check_text(&text, path)
    }

    /// [`Config::check_all`] of config `text`. A schema error on one `key = value` line (an
    /// unknown key, a value of the wrong type) is noted and that line blanked, so that the
    /// rest of the file is checked too (line and column numbers stay those of the file).
    pub fn check_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        let mut text = text.to_string();
        let file: schema::File = loop {
            let e = match toml::from_str(&text) {
                Ok(file) => break file,
                Err(e) => e,
            };
            let error = ConfigError::Syntax {
                path: path.to_path_buf(),
                location: e
                    .span()
                    .map(|span| Location::from_offset(&text, span.start)),
                message: explain(&text, e.span().map(|s| s.start), &one_line(e.message())),
            };
            // The line of the error, if blanking it leaves a file to go on with.
            let line = e.span().and_then(|span| {
                let start = text[..span.start.min(text.len())]
                    .rfind('\n')
                    .map_or(0, |i| i + 1);
                let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
                let l = &text[start..end];
                let simple = l.contains('=') && !l.trim_start().starts_with('[');
                (simple && errs.len() < 100).then_some((start, end))
            });
            errs.push(error);
            match line {
                Some((start, end)) => text.replace_range(start..end, &" ".repeat(end - start)),
                None => {
                    return Err(
                        ConfigError::from_all(errs).unwrap_or_else(|| unreachable_none(path))
                    )
                }
            }
        };
        let (mut config, more) = resolve::resolve_partial(file, &text, path);
        // An agent left out for a value's problem is checked on the host too, with the lines
        // of those values blanked.
        let blanked = blank_lines(&text, &more);
        errs.extend(more);
        if let Some(again) = blanked
            .as_deref()
            .and_then(|t| toml::from_str::<schema::File>(t).ok().map(|f| (t, f)))
        {
            let (fuller, _) = resolve::resolve_partial(again.1, again.0, path);
            errs.extend(check::host(&fuller).problems);
        } else {
            errs.extend(check::host(&config).problems);
        }
        config.digest = digest(text.as_bytes());
        match ConfigError::from_all(errs) {
            Some(e) => Err(e),
            None => Ok(config),
        }
    }
}

/// `text` with the `key = value` lines of `errs` blanked (same lines and columns); `None`
/// when there are none to blank.
fn blank_lines(text: &str, errs: &[ConfigError]) -> Option<String> {
    let mut out = text.to_string();
    let mut any = false;
    for e in errs.iter().flat_map(|e| e.problems()) {
        let Some(at) = e.location() else { continue };
        let Some((start, line)) = text
            .split_inclusive('\n')
            .scan(0usize, |off, l| {
                let s = *off;
                *off += l.len();
                Some((s, l))
            })
            .nth(at.line.saturating_sub(1))
        else {
            continue;
        };
        let body = line.trim_end_matches('\n');
        if body.contains('=') && !body.trim_start().starts_with('[') && !body.contains("command") {
            out.replace_range(start..start + body.len(), &" ".repeat(body.len()));
            any = true;
        }
    }
    any.then_some(out)
}

/// A stand-in error that is never made (a list of problems is never empty where it is used).
fn unreachable_none(path: &Path) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        location: None,
        message: "the config could not be checked".to_string(),
    }
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A schema error made helpful: the key named when the error is about its value (`max_retries:
/// invalid value: integer `99999999999`, expected u32`), and the nearest valid key offered for
/// an unknown one (`did you mean `heartbeat_interval`?`).
fn explain(text: &str, offset: Option<usize>, message: &str) -> String {
    let mut out = message.to_string();
    if let Some(unknown) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        let expected = message
            .split_once("expected ")
            .map(|(_, list)| list)
            .unwrap_or("");
        let nearest = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|k| (strsim::jaro_winkler(unknown, k), k))
            .filter(|(score, _)| *score >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, key)) = nearest {
            out = format!("unknown key `{unknown}`: did you mean `{key}`?");
        }
        return out;
    }
    if let Some(key) = offset.and_then(|o| resolve::key_before(text, o)) {
        if !message.starts_with(key) {
            out = format!("{key}: {message}");
        }
    }
    out
}

/// Joins a multi-line toml message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
