//! From the raw file to a [`Config`]: semantic checks located at the offending key or value,
//! path resolution against the config file's directory, and the per-key merge
//! built-in ← `[defaults]` ← `[agents.NAME]` (nested tables `backoff`, `intensity`, `breaker`
//! merge per key; `env` merges per variable; lists replace).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::layer::{check_layer, check_path};
use super::schema::{File, Restart, Settings};
use super::units::{Count, Dur, Real, Size};
use super::{
    AgentSpec, Config, ConfigError, Location, Namespace, SupervisorConfig, DEFAULT_STATE_DIR,
    DEFAULT_UID_RANGE, MAX_MAX_FRAME, MIN_MAX_FRAME,
};
use crate::policy::RestartPolicy;
use corral_proto::DEFAULT_MAX_FRAME;

/// Largest `cpu_quota`, in cores: the kernel refuses a CFS quota above 2^44 - 1 us per
/// period (`cpu.cfs_quota_us`, `cpu.max`); with corral's 100 ms period that is ~1.7e8 cores.
/// Kept far below, at a number no host reaches, so that the quota always fits.
pub(super) const MAX_CPU_QUOTA: f64 = 1_000_000.0;

/// What every check needs: the text (for locations), the file name and the base directory.
pub(super) struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    base: PathBuf,
}

impl Ctx<'_> {
    /// An error at byte `offset`.
    pub(super) fn at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            location: Some(Location::from_offset(self.text, offset)),
            message: message.into(),
        }
    }

    /// The place of byte `offset`.
    pub(super) fn location(&self, offset: usize) -> Location {
        Location::from_offset(self.text, offset)
    }

    /// The span starting at the key of the value spanned by `span` (the value's own if no key
    /// is found in front of it).
    pub(super) fn key_span(&self, span: Range<usize>) -> Range<usize> {
        key_start(self.text, span.start).unwrap_or(span.start)..span.end
    }

    /// An error at the value spanned by `span`.
    pub(super) fn at_value(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        self.at(span.start, message)
    }

    /// An error at the key whose value is spanned by `span` (the value itself if the key cannot
    /// be found in front of it).
    pub(super) fn at_key(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let offset = key_start(self.text, span.start).unwrap_or(span.start);
        self.at(offset, message)
    }

    /// `text` as a path: absolute as is, relative joined to the config directory.
    pub(super) fn resolve_path(&self, text: &str) -> PathBuf {
        normalize(&self.base.join(text))
    }
}

/// The start of the key in `key = value` given the value's start, scanning backwards over
/// `=`, blanks and a bare or quoted key.
fn key_start(text: &str, value_start: usize) -> Option<usize> {
    let before = text.get(..value_start)?;
    let before = before.trim_end_matches([' ', '\t']).strip_suffix('=')?;
    let before = before.trim_end_matches([' ', '\t']);
    match before.chars().last()? {
        quote @ ('"' | '\'') => before[..before.len() - 1].rfind(quote),
        _ => {
            let start = before
                .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                .len();
            (start < before.len()).then_some(start)
        }
    }
}

/// The key in `key = value` given the value's start (unquoted), if the text has one there.
pub(super) fn key_before(text: &str, value_start: usize) -> Option<&str> {
    let start = key_start(text, value_start)?;
    let rest = text.get(start..value_start)?;
    let key = rest.split('=').next()?.trim().trim_matches(['"', '\'']);
    (!key.is_empty()).then_some(key)
}

/// Drops `.` components and repeated separators (never `..`: that would change meaning across
/// symbolic links).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect::<PathBuf>()
}

/// The directory relative paths are resolved against: the config file's directory, made
/// absolute against the current directory.
fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    normalize(&dir)
}

/// Valid agent names: `[A-Za-z0-9_-]+`.
fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Why `name` cannot be an environment variable name, if it cannot.
pub(super) fn env_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') {
        Some("contains '='")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    }
}

pub(super) fn resolve(file: File, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let (config, errs) = resolve_partial(file, text, path);
    match ConfigError::from_all(errs) {
        Some(e) => Err(e),
        None => Ok(config),
    }
}

/// What resolves of `file` (agents with problems left out), and every problem found.
pub(super) fn resolve_partial(file: File, text: &str, path: &Path) -> (Config, Vec<ConfigError>) {
    let ctx = Ctx {
        text,
        path,
        base: base_dir(path),
    };
    // Every problem is collected and reported at once, in file order.
    let mut errs = Vec::new();
    let supervisor = supervisor(&ctx, file.supervisor).unwrap_or_else(|e| {
        errs.push(e);
        let mut out = default_supervisor(&ctx);
        super::daemon::defaults(&mut out);
        out
    });
    let defaults = file.defaults.unwrap_or_default();
    if let Some(command) = &defaults.command {
        errs.push(ctx.at_key(
            command.span(),
            "`command` cannot be set in [defaults]; give it in each [agents.NAME]",
        ));
    }
    errs.extend(check_layer(&ctx, &defaults));
    let mut agents = BTreeMap::new();
    let mut places = BTreeMap::new();
    for (name, settings) in file.agents.unwrap_or_default() {
        let name_span = name.span();
        let name = name.into_inner();
        if !valid_agent_name(&name) {
            let shown = if name.is_empty() {
                "an empty agent name".to_string()
            } else {
                format!("agent name {name:?}")
            };
            errs.push(ctx.at(
                name_span.start,
                format!("{shown} is not allowed: use letters, digits, '_' and '-'"),
            ));
            continue;
        }
        let layer = check_layer(&ctx, &settings);
        let layer_ok = layer.is_empty();
        errs.extend(layer);
        let Some(command) = &settings.command else {
            errs.push(ctx.at(name_span.start, format!("agent `{name}` has no `command`")));
            continue;
        };
        if !layer_ok {
            continue;
        }
        if let Some(spec) = agent_into(&ctx, &name, command, &defaults, &settings, &mut errs) {
            places.insert(
                name.clone(),
                super::check::Places::of(&ctx, name_span.start, &defaults, &settings),
            );
            agents.insert(name, spec);
        }
    }
    let tools = super::tools::resolve(&ctx, file.tools.unwrap_or_default(), &defaults)
        .unwrap_or_else(|e| {
            errs.push(e);
            BTreeMap::new()
        });
    let config = Config {
        path: path.to_path_buf(),
        supervisor,
        agents,
        digest: String::new(),
        tools,
        places,
    };
    (config, errs)
}

/// `[supervisor]` with every key at its default (the daemon's defaults, which depend on
/// `state_dir`, still to be filled in).
fn default_supervisor(ctx: &Ctx<'_>) -> SupervisorConfig {
    SupervisorConfig {
        state_dir: ctx.resolve_path(DEFAULT_STATE_DIR),
        max_frame: DEFAULT_MAX_FRAME,
        uid_range: DEFAULT_UID_RANGE,
        journal: true,
        journal_keep: None,
        journal_sync_full: true,
        max_agents: None,
        control_socket: PathBuf::new(),
        control_group: None,
        admins: Default::default(),
        metrics_listen: None,
    }
}

fn supervisor(
    ctx: &Ctx<'_>,
    raw: Option<super::schema::Supervisor>,
) -> Result<SupervisorConfig, ConfigError> {
    let mut out = default_supervisor(ctx);
    let Some(raw) = raw else {
        super::daemon::defaults(&mut out);
        return Ok(out);
    };
    if let Some(dir) = &raw.state_dir {
        check_path(ctx, dir, "state_dir")?;
        out.state_dir = ctx.resolve_path(dir.get_ref());
    }
    if let Some(size) = &raw.max_frame {
        let Size(bytes) = *size.get_ref();
        match u32::try_from(bytes) {
            Ok(b) if (MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&b) => out.max_frame = b,
            _ => {
                return Err(ctx.at_value(
                    size.span(),
                    format!("max_frame must be between 1KiB and 1GiB, found {bytes} bytes"),
                ))
            }
        }
    }
    if let Some(range) = &raw.uid_range {
        let [lo, hi] = *range.get_ref();
        if lo == 0 || hi < lo || hi >= 0xFFFF_FFFE {
            return Err(ctx.at_value(
                range.span(),
                format!(
                    "uid_range must be [FIRST, LAST] with 0 < FIRST <= LAST < 4294967294 \
                     (uid 0 is root), found [{lo}, {hi}]"
                ),
            ));
        }
        out.uid_range = (lo, hi);
    }
    if let Some(on) = raw.journal {
        out.journal = on;
    }
    if let Some(keep) = &raw.journal_keep {
        let Dur(d) = *keep.get_ref();
        if d.is_zero() {
            return Err(ctx.at_value(
                keep.span(),
                "journal_keep must be longer than 0s (leave it out to keep every run)",
            ));
        }
        out.journal_keep = Some(d);
    }
    if let Some(sync) = &raw.journal_sync {
        out.journal_sync_full = match sync.get_ref().as_str() {
            "full" => true,
            "normal" => false,
            other => {
                return Err(ctx.at_value(
                    sync.span(),
                    format!("journal_sync must be \"full\" or \"normal\", found {other:?}"),
                ))
            }
        };
    }
    super::daemon::resolve(
        &mut out,
        &raw,
        |span, m| ctx.at_value(span, m),
        |p| ctx.resolve_path(p),
    )?;
    Ok(out)
}

/// [`agent`], its problems added to `errs`.
fn agent_into(
    ctx: &Ctx<'_>,
    name: &str,
    command: &Spanned<Vec<Spanned<String>>>,
    defaults: &Settings,
    own: &Settings,
    errs: &mut Vec<ConfigError>,
) -> Option<AgentSpec> {
    match agent(ctx, name, command, defaults, own) {
        Ok(spec) => Some(spec),
        Err(e) => {
            errs.push(e);
            None
        }
    }
}

/// Builds one agent: built-ins, then `[defaults]`, then its own table; then the checks that
/// involve more than one key (all of them: several problems come as [`ConfigError::Many`]).
pub(super) fn agent(
    ctx: &Ctx<'_>,
    name: &str,
    command: &Spanned<Vec<Spanned<String>>>,
    defaults: &Settings,
    own: &Settings,
) -> Result<AgentSpec, ConfigError> {
    let mut args: Vec<String> = command
        .get_ref()
        .iter()
        .map(|a| a.get_ref().clone())
        .collect();
    if let Some(program) = args.first_mut() {
        if program.contains('/') {
            let resolved = ctx.resolve_path(program);
            *program = resolved.into_os_string().into_string().map_err(|_| {
                ctx.at_value(
                    command.span(),
                    "the program's path is not valid UTF-8 once resolved against the \
                     config directory",
                )
            })?;
        }
    }
    let mut spec = AgentSpec::builtin(name, args);
    apply(ctx, &mut spec, defaults);
    apply(ctx, &mut spec, own);
    let mut errs = Vec::new();
    if spec.network {
        spec.namespaces.retain(|n| *n != Namespace::Net);
    }
    // Root only when asked for by name: `user = "root"` or `"0"` needs `allow_root = true`.
    if let Some(user) = &spec.user {
        if (user == "root" || user == "0") && !spec.allow_root {
            let span = own
                .user
                .as_ref()
                .or(defaults.user.as_ref())
                .map(Spanned::span);
            errs.push(blame(
                ctx,
                &[span],
                format!(
                    "agent `{name}`: user {user:?} is host uid 0, which owns the host's files; \
                     set allow_root = true on this agent to run it as root anyway"
                ),
            ));
        }
    }

    // The most specific key involved is the one that makes the pair wrong.
    let dur_span = |d: &Option<Spanned<Dur>>| d.as_ref().map(Spanned::span);
    if spec.heartbeat_timeout <= spec.heartbeat_interval {
        let culprit = [
            dur_span(&own.heartbeat_timeout),
            dur_span(&own.heartbeat_interval),
            dur_span(&defaults.heartbeat_timeout),
            dur_span(&defaults.heartbeat_interval),
        ];
        let message = format!(
            "agent `{name}`: heartbeat_timeout ({}) must be greater than heartbeat_interval ({})",
            show(spec.heartbeat_timeout),
            show(spec.heartbeat_interval),
        );
        errs.push(blame(ctx, &culprit, message));
    }
    if spec.backoff.max < spec.backoff.initial {
        let initial = |s: &Settings| s.backoff.as_ref().and_then(|b| dur_span(&b.initial));
        let max = |s: &Settings| s.backoff.as_ref().and_then(|b| dur_span(&b.max));
        let culprit = [max(own), initial(own), max(defaults), initial(defaults)];
        let message = format!(
            "agent `{name}`: backoff.max ({}) must not be less than backoff.initial ({})",
            show(spec.backoff.max),
            show(spec.backoff.initial),
        );
        errs.push(blame(ctx, &culprit, message));
    }
    match ConfigError::from_all(errs) {
        Some(e) => Err(e),
        None => Ok(spec),
    }
}

/// The error at the first key that was set, in order of preference.
fn blame(ctx: &Ctx<'_>, culprits: &[Option<Range<usize>>], message: String) -> ConfigError {
    match culprits.iter().find_map(Clone::clone) {
        Some(span) => ctx.at_key(span, message),
        None => ConfigError::Invalid {
            path: ctx.path.to_path_buf(),
            location: None,
            message,
        },
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Overlays one layer on `spec`, key by key.
fn apply(ctx: &Ctx<'_>, spec: &mut AgentSpec, s: &Settings) {
    fn set<T: Clone>(target: &mut T, v: &Option<T>) {
        if let Some(v) = v {
            *target = v.clone();
        }
    }
    fn strings(v: &[Spanned<String>]) -> impl Iterator<Item = &String> {
        v.iter().map(Spanned::get_ref)
    }
    let dur = |v: &Option<Spanned<Dur>>| v.as_ref().map(|d| d.get_ref().0);
    let plain_dur = |v: &Option<Dur>| v.map(|d| d.0);

    for (k, v) in s.env.iter().flatten() {
        spec.env.insert(k.get_ref().clone(), v.get_ref().clone());
    }
    if let Some(cwd) = &s.cwd {
        spec.cwd = Some(ctx.resolve_path(cwd.get_ref()));
    }
    if let Some(v) = &s.memory {
        spec.memory = v.get_ref().0.map(|Size(b)| b);
    }
    if let Some(v) = &s.cpu_time {
        spec.cpu_time = v.get_ref().0.map(|Dur(d)| d);
    }
    if let Some(v) = &s.cpu_quota {
        spec.cpu_quota = v.get_ref().0.map(|Real(x)| x);
    }
    if let Some(v) = &s.pids {
        spec.pids = v.get_ref().0.map(|Count(n)| n);
    }
    if let Some(v) = &s.open_files {
        spec.open_files = v.get_ref().0.map(|Count(n)| n);
    }
    if let Some(v) = &s.file_size {
        spec.file_size = v.0.map(|Size(b)| b);
    }
    set(&mut spec.network, &s.network);
    set(&mut spec.netns, &s.netns);
    if let Some(v) = &s.namespaces {
        spec.namespaces = v.iter().map(|n| *n.get_ref()).collect();
    }
    if let Some(v) = &s.user {
        spec.user = Some(v.get_ref().clone());
    }
    if let Some(v) = &s.group {
        spec.group = Some(v.get_ref().clone());
    }
    if let Some(v) = &s.readonly_paths {
        spec.readonly_paths = strings(v).map(|p| ctx.resolve_path(p)).collect();
    }
    if let Some(v) = &s.writable_paths {
        spec.writable_paths = strings(v).map(|p| ctx.resolve_path(p)).collect();
    }
    if let Some(v) = &s.env_pass {
        spec.env_pass = strings(v).cloned().collect();
    }
    set(&mut spec.keep_workspace, &s.keep_workspace);
    set(&mut spec.prewarm, &s.prewarm);
    set(&mut spec.seccomp, &s.seccomp);
    set(&mut spec.landlock, &s.landlock);
    set(&mut spec.allow_root, &s.allow_root);
    if let Some(v) = &s.disk {
        spec.disk = v.get_ref().0.map(|Size(b)| b);
    }
    set(&mut spec.strict, &s.strict);

    set(&mut spec.heartbeat_interval, &dur(&s.heartbeat_interval));
    set(&mut spec.heartbeat_timeout, &dur(&s.heartbeat_timeout));
    set(&mut spec.stall_timeout, &dur(&s.stall_timeout));
    set(&mut spec.startup_timeout, &dur(&s.startup_timeout));
    set(&mut spec.wall_time, &dur(&s.wall_time));
    set(&mut spec.kill_grace, &plain_dur(&s.kill_grace));
    set(&mut spec.sample_interval, &dur(&s.sample_interval));
    set(&mut spec.log_limit, &s.log_limit.map(|Size(b)| b));
    if let Some(r) = s.restart {
        spec.restart = match r {
            Restart::Never => RestartPolicy::Never,
            Restart::OnFailure => RestartPolicy::OnFailure,
            Restart::Always => RestartPolicy::Always,
        };
    }
    set(&mut spec.max_retries, &s.max_retries);
    if let Some(v) = &s.no_retry_exit_codes {
        spec.no_retry_exit_codes = v.iter().map(|c| *c.get_ref()).collect();
    }
    if let Some(b) = &s.backoff {
        set(&mut spec.backoff.initial, &dur(&b.initial));
        set(&mut spec.backoff.max, &dur(&b.max));
        set(
            &mut spec.backoff.factor,
            &b.factor.as_ref().map(|f| f.get_ref().0),
        );
        set(
            &mut spec.backoff.jitter,
            &b.jitter.as_ref().map(|j| j.get_ref().0),
        );
        set(&mut spec.backoff.reset_after, &plain_dur(&b.reset_after));
    }
    if let Some(i) = &s.intensity {
        set(&mut spec.intensity.max, &i.max);
        set(&mut spec.intensity.period, &dur(&i.period));
        set(
            &mut spec.intensity.fatal_cooldown,
            &plain_dur(&i.fatal_cooldown),
        );
    }
    if let Some(b) = &s.breaker {
        set(
            &mut spec.breaker.failures,
            &b.failures.as_ref().map(|f| *f.get_ref()),
        );
        set(&mut spec.breaker.open_for, &plain_dur(&b.open_for));
    }
    set(
        &mut spec.quarantine_after,
        &s.quarantine_after.as_ref().map(|q| *q.get_ref()),
    );
    if let Some(m) = &s.max_instances {
        spec.max_instances = Some(*m.get_ref());
    }
    set(&mut spec.max_depth, &s.max_depth);
    set(&mut spec.max_children, &s.max_children);
    super::tools::apply_grants(spec, s);
    set(&mut spec.service, &s.service);
    set(
        &mut spec.instances,
        &s.instances.as_ref().map(|n| *n.get_ref()),
    );
}
