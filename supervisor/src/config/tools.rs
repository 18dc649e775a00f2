//! `[tools.NAME]` and the grants of `[agents.NAME]` (`tools`, `deny_tools`): the shape of a
//! tool in the file, its checks with `file:line:col`, and its resolution into a [`ToolSpec`].
//!
//! The built-ins `fs.read`, `fs.list` and `fs.write` exist without a table; a table of that name
//! changes their settings (`effect`, `timeout`, `approve`, …). A `kind = "command"` tool takes
//! the sandbox keys of an agent (merged over `[defaults]` like an agent's) and is resolved into
//! an [`AgentSpec`] of its own, so that it runs in the same sandbox. Nothing here runs a tool:
//! that is the broker's (`crate::tools`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::resolve::{self, Ctx};
use super::schema::{Breaker, Settings};
use super::units::{Count, Dur, Limit, Size};
use super::{AgentSpec, BreakerConfig, ConfigError, Namespace, Netns};

/// Default `timeout` of a tool call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `approve_timeout`: how long an approval is waited for before the call is denied.
pub const DEFAULT_APPROVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_response`: the largest result a tool may return, in bytes.
pub const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;
/// Largest `max_response` accepted (a result is sent to the agent in one frame).
pub const MAX_MAX_RESPONSE: u64 = 64 << 20;

/// What a tool does to the world (`effect`), which decides what a repeated call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Effect {
    /// Changes nothing: a repeat within a run is answered from the trace.
    ReadOnly,
    /// A repeat has no further effect: also answered from the trace.
    Idempotent,
    /// Each execution has an effect (the default): executed at most once per idempotency key
    /// (run, task, sequence number of the call within the task).
    Destructive,
}

impl Effect {
    /// The name used in the config file.
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

/// One grant of `[agents.X] tools`: a tool's name, or `{ name = "…", approve = "ask" }` to
/// make this agent's calls of it wait for an approval (whatever the tool itself says).
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a tool name, or { name = \"…\", approve = \"ask\" } with no other key"
)]
pub(super) enum Grant {
    /// The tool, as the tool says.
    Name(String),
    /// The tool, with this agent's own approval.
    With(GrantWith),
}

/// `{ name = "…", approve = "ask" }`: no other key (a misspelt or unsupported one, such as an
/// `approve_timeout` of the grant's own, is an error, not silently dropped).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantWith {
    /// The tool.
    name: String,
    /// Whether this agent's calls of it ask.
    approve: Approve,
}

/// `approve = "ask"`: whether a call waits for someone's yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approve {
    /// Calls run without asking (the default; written `approve = "never"`).
    Never,
    /// Each call waits for an answer, or `approve_timeout`, which denies it.
    Ask,
}

/// A built-in tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `fs.read {path}` → `{content}`.
    FsRead,
    /// `fs.list {path}` → `{entries}`.
    FsList,
    /// `fs.write {path, content}` → `{bytes}`.
    FsWrite,
}

impl Builtin {
    /// Every built-in, with its name and default effect.
    pub const ALL: [(&'static str, Builtin, Effect); 3] = [
        ("fs.read", Builtin::FsRead, Effect::ReadOnly),
        ("fs.list", Builtin::FsList, Effect::ReadOnly),
        ("fs.write", Builtin::FsWrite, Effect::Destructive),
    ];

    fn named(name: &str) -> Option<(Builtin, Effect)> {
        Builtin::ALL
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, b, e)| (b, e))
    }
}

/// `kind = "http"`: where to POST and with which headers.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// The URL, fixed by config (`url`).
    pub url: String,
    /// Headers sent as written (`headers`).
    pub headers: BTreeMap<String, String>,
    /// Headers whose value is read from the supervisor's environment at each call
    /// (`header_env = { Authorization = "VAR" }`): header name → variable name. The value is
    /// never traced nor recorded.
    pub header_env: BTreeMap<String, String>,
}

/// How a tool is carried out.
#[derive(Debug, Clone)]
pub enum ToolKind {
    /// Done by the supervisor itself.
    Builtin(Builtin),
    /// A program run in the sandbox of an agent (its settings resolved as an agent's, named
    /// `tool.NAME`): args as JSON on stdin, its result as JSON on stdout.
    Command(Box<AgentSpec>),
    /// A JSON POST to a URL.
    Http(HttpSpec),
}

impl ToolKind {
    /// `builtin`, `command` or `http`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ToolKind::Builtin(_) => "builtin",
            ToolKind::Command(_) => "command",
            ToolKind::Http(_) => "http",
        }
    }
}

/// One tool, fully resolved.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// Its name (`[tools.NAME]`, or a built-in's).
    pub name: String,
    /// How it is carried out.
    pub kind: ToolKind,
    /// `effect`; default `destructive` (`read_only` for `fs.read` and `fs.list`).
    pub effect: Effect,
    /// Longest a call may run (`timeout`); default 30 s.
    pub timeout: Duration,
    /// Calls run at once at most (`max_concurrency`); more wait their turn. `None`: no limit.
    pub max_concurrency: Option<u32>,
    /// Its circuit breaker (`breaker = { failures, open_for }`); `None`: none.
    pub breaker: Option<BreakerConfig>,
    /// Whether a repeated call within a run is answered from the trace (`dedup`); default true
    /// for `read_only` and `idempotent`, and never for `destructive`.
    pub dedup: bool,
    /// `approve`.
    pub approve: Approve,
    /// `approve_timeout`; default 60 s.
    pub approve_timeout: Duration,
    /// `max_response`: the largest result, in bytes (JSON for `http` and `command`, encoded
    /// for the built-ins); default 1 MiB.
    pub max_response: u64,
}

/// `kind = …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum KindName {
    Builtin,
    Command,
    Http,
}

/// `[tools.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of tool settings")]
pub(super) struct ToolTable {
    pub kind: Option<Spanned<KindName>>,
    pub effect: Option<Effect>,
    pub timeout: Option<Spanned<Dur>>,
    pub max_concurrency: Option<Spanned<u32>>,
    pub breaker: Option<Breaker>,
    pub dedup: Option<Spanned<bool>>,
    pub approve: Option<Approve>,
    pub approve_timeout: Option<Spanned<Dur>>,
    pub max_response: Option<Spanned<Size>>,
    // http
    pub url: Option<Spanned<String>>,
    pub headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub header_env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    // command: the sandbox keys of an agent
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub cwd: Option<Spanned<String>>,
    pub memory: Option<Spanned<Limit<Size>>>,
    pub cpu_time: Option<Spanned<Limit<Dur>>>,
    pub pids: Option<Spanned<Limit<Count>>>,
    pub open_files: Option<Spanned<Limit<Count>>>,
    pub file_size: Option<Limit<Size>>,
    pub network: Option<bool>,
    pub netns: Option<Netns>,
    pub namespaces: Option<Vec<Spanned<Namespace>>>,
    pub user: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub disk: Option<Spanned<Limit<Size>>>,
    pub readonly_paths: Option<Vec<Spanned<String>>>,
    pub writable_paths: Option<Vec<Spanned<String>>>,
    pub env_pass: Option<Vec<Spanned<String>>>,
    pub seccomp: Option<bool>,
    pub landlock: Option<bool>,
}

impl ToolTable {
    /// The sandbox keys, as an agent's layer (the rest left unset).
    fn sandbox(&mut self) -> Settings {
        Settings {
            command: self.command.take(),
            env: self.env.take(),
            cwd: self.cwd.take(),
            memory: self.memory.take(),
            cpu_time: self.cpu_time.take(),
            pids: self.pids.take(),
            open_files: self.open_files.take(),
            file_size: self.file_size.take(),
            network: self.network.take(),
            netns: self.netns.take(),
            namespaces: self.namespaces.take(),
            user: self.user.take(),
            group: self.group.take(),
            disk: self.disk.take(),
            readonly_paths: self.readonly_paths.take(),
            writable_paths: self.writable_paths.take(),
            env_pass: self.env_pass.take(),
            seccomp: self.seccomp.take(),
            landlock: self.landlock.take(),
            ..Settings::default()
        }
    }
}

/// Valid tool names: `[A-Za-z0-9_.-]+`, at most the protocol's tool name length.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= corral_proto::message::MAX_TOOL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Every tool: the built-ins with their defaults, then each `[tools.NAME]`.
pub(super) fn resolve(
    ctx: &Ctx<'_>,
    tables: BTreeMap<Spanned<String>, ToolTable>,
    defaults: &Settings,
) -> Result<BTreeMap<String, ToolSpec>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, builtin, effect) in Builtin::ALL {
        out.insert(
            name.to_string(),
            plain(name, ToolKind::Builtin(builtin), effect),
        );
    }
    for (name, table) in tables {
        let at = name.span().start;
        let name = name.into_inner();
        if !valid_tool_name(&name) {
            return Err(ctx.at(
                at,
                format!("tool name {name:?} is not allowed: use letters, digits, '_', '-' and '.'"),
            ));
        }
        let spec = tool(ctx, &name, at, table, defaults)?;
        out.insert(name, spec);
    }
    Ok(out)
}

/// A tool with every default.
fn plain(name: &str, kind: ToolKind, effect: Effect) -> ToolSpec {
    ToolSpec {
        name: name.to_string(),
        kind,
        effect,
        timeout: DEFAULT_TIMEOUT,
        max_concurrency: None,
        breaker: None,
        dedup: effect != Effect::Destructive,
        approve: Approve::Never,
        approve_timeout: DEFAULT_APPROVE_TIMEOUT,
        max_response: DEFAULT_MAX_RESPONSE,
    }
}

fn tool(
    ctx: &Ctx<'_>,
    name: &str,
    at: usize,
    mut t: ToolTable,
    defaults: &Settings,
) -> Result<ToolSpec, ConfigError> {
    let kind_at = t.kind.as_ref().map_or(at, |k| k.span().start);
    let builtin = Builtin::named(name);
    let kind_name = match (&t.kind, builtin) {
        (Some(k), _) => *k.get_ref(),
        (None, Some(_)) => KindName::Builtin,
        (None, None) => {
            return Err(ctx.at(
                at,
                format!("tool `{name}` has no `kind` (\"command\" or \"http\")"),
            ))
        }
    };
    let url = t.url.take();
    let http_keys = url.is_some() || t.headers.is_some() || t.header_env.is_some();
    let sandbox = t.sandbox();
    let has_sandbox = sandbox.command.is_some() || sandbox_set(&sandbox);
    let (kind, effect) = match kind_name {
        KindName::Builtin => {
            let Some((b, effect)) = builtin else {
                let names: Vec<_> = Builtin::ALL.iter().map(|(n, _, _)| *n).collect();
                return Err(ctx.at(
                    kind_at,
                    format!(
                        "tool `{name}`: there is no built-in tool of that name (built-ins: {})",
                        names.join(", ")
                    ),
                ));
            };
            if http_keys || has_sandbox {
                return Err(ctx.at(
                    at,
                    format!("tool `{name}` is built in: it takes no url, headers or command"),
                ));
            }
            (ToolKind::Builtin(b), effect)
        }
        KindName::Command => {
            if http_keys {
                return Err(ctx.at(
                    at,
                    format!("tool `{name}` is a command: url and headers are for kind = \"http\""),
                ));
            }
            if let Some(e) = ConfigError::from_all(super::layer::check_layer(ctx, &sandbox)) {
                return Err(e);
            }
            let Some(command) = &sandbox.command else {
                return Err(ctx.at(at, format!("tool `{name}` has no `command`")));
            };
            let mut spec =
                resolve::agent(ctx, &format!("tool.{name}"), command, defaults, &sandbox)?;
            spec.prewarm = false;
            spec.keep_workspace = false;
            spec.tools.clear();
            (ToolKind::Command(Box::new(spec)), Effect::Destructive)
        }
        KindName::Http => {
            if has_sandbox {
                return Err(ctx.at(
                    at,
                    format!(
                        "tool `{name}` is http: command and sandbox keys are for kind = \"command\""
                    ),
                ));
            }
            (
                ToolKind::Http(http(ctx, name, at, url, &mut t)?),
                Effect::Destructive,
            )
        }
    };
    let mut spec = plain(name, kind, t.effect.unwrap_or(effect));
    super::layer::check_positive(ctx, &t.timeout, "timeout")?;
    super::layer::check_positive(ctx, &t.approve_timeout, "approve_timeout")?;
    if let Some(d) = &t.timeout {
        spec.timeout = d.get_ref().0;
    }
    if let Some(d) = &t.approve_timeout {
        spec.approve_timeout = d.get_ref().0;
    }
    if let Some(n) = &t.max_concurrency {
        if *n.get_ref() == 0 {
            return Err(ctx.at_value(n.span(), "max_concurrency must be at least 1"));
        }
        spec.max_concurrency = Some(*n.get_ref());
    }
    if let Some(b) = &t.breaker {
        let failures = match &b.failures {
            Some(f) if *f.get_ref() == 0 => {
                return Err(ctx.at_value(f.span(), "breaker.failures must be at least 1"))
            }
            Some(f) => *f.get_ref(),
            None => 5,
        };
        spec.breaker = Some(BreakerConfig {
            failures,
            open_for: b.open_for.map_or(Duration::from_secs(30), |d| d.0),
        });
    }
    spec.dedup = spec.effect != Effect::Destructive;
    if let Some(d) = &t.dedup {
        if *d.get_ref() && spec.effect == Effect::Destructive {
            return Err(ctx.at_value(
                d.span(),
                format!(
                    "tool `{name}`: dedup = true needs effect = \"read_only\" or \"idempotent\" \
                     (a destructive call is never answered from another call's result)"
                ),
            ));
        }
        spec.dedup = *d.get_ref();
    }
    if let Some(a) = t.approve {
        spec.approve = a;
    }
    if let Some(m) = &t.max_response {
        let Size(bytes) = *m.get_ref();
        if bytes == 0 || bytes > MAX_MAX_RESPONSE {
            return Err(ctx.at_value(
                m.span(),
                format!("max_response must be between 1 byte and 64MiB, found {bytes} bytes"),
            ));
        }
        spec.max_response = bytes;
    }
    Ok(spec)
}

/// Whether any sandbox key but `command` is set.
fn sandbox_set(s: &Settings) -> bool {
    s.env.is_some()
        || s.cwd.is_some()
        || s.memory.is_some()
        || s.cpu_time.is_some()
        || s.pids.is_some()
        || s.open_files.is_some()
        || s.file_size.is_some()
        || s.network.is_some()
        || s.netns.is_some()
        || s.namespaces.is_some()
        || s.user.is_some()
        || s.group.is_some()
        || s.disk.is_some()
        || s.readonly_paths.is_some()
        || s.writable_paths.is_some()
        || s.env_pass.is_some()
        || s.seccomp.is_some()
        || s.landlock.is_some()
}

fn http(
    ctx: &Ctx<'_>,
    name: &str,
    at: usize,
    url: Option<Spanned<String>>,
    t: &mut ToolTable,
) -> Result<HttpSpec, ConfigError> {
    let Some(url) = url else {
        return Err(ctx.at(at, format!("tool `{name}` (http) has no `url`")));
    };
    let text = url.get_ref();
    if !(text.starts_with("http://") || text.starts_with("https://")) || text.len() <= 8 {
        return Err(ctx.at_value(
            url.span(),
            format!("url must start with http:// or https://, found {text:?}"),
        ));
    }
    match text.parse::<ureq::http::Uri>() {
        Err(e) => {
            return Err(ctx.at_value(url.span(), format!("url {text:?} is not a valid URL: {e}")))
        }
        // Credentials in the URL would be shown in its errors and journalled with them.
        Ok(u) if u.authority().is_some_and(|a| a.as_str().contains('@')) => {
            return Err(ctx.at_value(
                url.span(),
                "url holds a user or password: give credentials in `headers` or \
                 `header_env`, which are never journalled",
            ))
        }
        Ok(_) => {}
    }
    let header_name = |k: &Spanned<String>| -> Result<String, ConfigError> {
        let ok = !k.get_ref().is_empty()
            && k.get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if ok {
            Ok(k.get_ref().clone())
        } else {
            Err(ctx.at(
                k.span().start,
                format!("{:?} is not a valid HTTP header name", k.get_ref()),
            ))
        }
    };
    let mut headers = BTreeMap::new();
    for (k, v) in t.headers.take().unwrap_or_default() {
        let key = header_name(&k)?;
        if v.get_ref()
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(ctx.at_value(v.span(), "a header value cannot hold CR, LF or NUL"));
        }
        headers.insert(key, v.into_inner());
    }
    let mut header_env = BTreeMap::new();
    for (k, v) in t.header_env.take().unwrap_or_default() {
        let key = header_name(&k)?;
        let var = v.get_ref();
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            return Err(ctx.at_value(
                v.span(),
                format!("header_env: {var:?} is not an environment variable name"),
            ));
        }
        header_env.insert(key, v.into_inner());
    }
    Ok(HttpSpec {
        url: url.into_inner(),
        headers,
        header_env,
    })
}

/// `tools` and `deny_tools` of one layer onto an agent (lists replace).
pub(super) fn apply_grants(spec: &mut AgentSpec, s: &Settings) {
    let names = |v: &Vec<Spanned<String>>| v.iter().map(|n| n.get_ref().clone()).collect();
    if let Some(v) = &s.tools {
        spec.tools = v
            .iter()
            .map(|g| match g.get_ref() {
                Grant::Name(n) | Grant::With(GrantWith { name: n, .. }) => n.clone(),
            })
            .collect();
        spec.approve_tools = v
            .iter()
            .filter_map(|g| match g.get_ref() {
                Grant::With(GrantWith {
                    name,
                    approve: Approve::Ask,
                }) => Some(name.clone()),
                _ => None,
            })
            .collect();
    }
    if let Some(v) = &s.deny_tools {
        spec.deny_tools = names(v);
    }
}

impl super::Config {
    /// Grants that name no tool (in `tools` or `deny_tools` of an agent): one line each, for
    /// `corral validate` and the start-up report. Such a grant gives nothing.
    pub fn tool_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (agent, spec) in &self.agents {
            for (key, list) in [("tools", &spec.tools), ("deny_tools", &spec.deny_tools)] {
                for name in list {
                    if !self.tools.contains_key(name) {
                        out.push(format!(
                            "agent `{agent}`: {key} names `{name}`, which is not a tool \
                             (configured: {})",
                            self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
        out
    }
}
