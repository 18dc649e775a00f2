//! The resolved config as TOML (`corral validate --print`): every key of `[supervisor]` and
//! of each agent with the value in force, built-in defaults included, so that what a file
//! leaves out can be read rather than guessed. The text parses back as a config.

use super::{AgentSpec, Config};
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

fn q(s: &str) -> String {
    // A TOML basic string: JSON's escaping is a subset TOML reads.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn p(path: &Path) -> String {
    q(&path.display().to_string())
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
}

fn dur(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("\"{}s\"", d.as_secs())
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

fn limit<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "\"unlimited\"".into())
}

fn real(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

impl Config {
    /// The config in force, as TOML: `[supervisor]`, then each `[agents.NAME]` with every key
    /// (`"unlimited"` where there is no limit; `user` and `group` left out when unset).
    pub fn render_resolved(&self) -> String {
        let s = &self.supervisor;
        let mut out = String::new();
        let _ = writeln!(out, "# {}, resolved", self.path.display());
        let _ = writeln!(out, "[supervisor]");
        let _ = writeln!(out, "state_dir = {}", p(&s.state_dir));
        let _ = writeln!(out, "max_frame = {}", s.max_frame);
        let _ = writeln!(out, "uid_range = [{}, {}]", s.uid_range.0, s.uid_range.1);
        let _ = writeln!(out, "journal = {}", s.journal);
        if let Some(keep) = s.journal_keep {
            let _ = writeln!(out, "journal_keep = {}", dur(keep));
        }
        for spec in self.agents.values() {
            out.push('\n');
            render_agent(&mut out, spec);
        }
        out
    }
}

fn render_agent(out: &mut String, a: &AgentSpec) {
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k} = {v}");
    };
    kv(
        &format!("[agents.{}]\ncommand", a.name),
        list(&a.command, |c| q(c)),
    );
    let env = a
        .env
        .iter()
        .map(|(k, v)| format!("{} = {}", q(k), q(v)))
        .collect::<Vec<_>>()
        .join(", ");
    kv("env", format!("{{ {env} }}"));
    if let Some(cwd) = &a.cwd {
        kv("cwd", p(cwd));
    }
    kv("memory", limit(a.memory, |b| b.to_string()));
    kv("cpu_time", limit(a.cpu_time, dur));
    kv("cpu_quota", limit(a.cpu_quota, real));
    kv("pids", limit(a.pids, |n| n.to_string()));
    kv("open_files", limit(a.open_files, |n| n.to_string()));
    kv("file_size", limit(a.file_size, |b| b.to_string()));
    kv("disk", limit(a.disk, |b| b.to_string()));
    kv("network", a.network.to_string());
    kv(
        "netns",
        q(if a.netns == super::Netns::Shared {
            "shared"
        } else {
            "private"
        }),
    );
    kv("namespaces", list(&a.namespaces, |n| q(n.as_str())));
    if let Some(u) = &a.user {
        kv("user", q(u));
    }
    if let Some(g) = &a.group {
        kv("group", q(g));
    }
    kv("allow_root", a.allow_root.to_string());
    kv("readonly_paths", list(&a.readonly_paths, |x| p(x)));
    kv("writable_paths", list(&a.writable_paths, |x| p(x)));
    kv("env_pass", list(&a.env_pass, |x| q(x)));
    kv("keep_workspace", a.keep_workspace.to_string());
    kv("prewarm", a.prewarm.to_string());
    kv("seccomp", a.seccomp.to_string());
    kv("landlock", a.landlock.to_string());
    kv("strict", a.strict.to_string());
    kv("heartbeat_interval", dur(a.heartbeat_interval));
    kv("heartbeat_timeout", dur(a.heartbeat_timeout));
    kv("stall_timeout", dur(a.stall_timeout));
    kv("startup_timeout", dur(a.startup_timeout));
    kv("wall_time", dur(a.wall_time));
    kv("kill_grace", dur(a.kill_grace));
    kv("sample_interval", dur(a.sample_interval));
    kv("log_limit", a.log_limit.to_string());
    let restart = match a.restart {
        crate::policy::RestartPolicy::Never => "never",
        crate::policy::RestartPolicy::OnFailure => "on-failure",
        crate::policy::RestartPolicy::Always => "always",
    };
    kv("restart", q(restart));
    kv("max_retries", a.max_retries.to_string());
    kv(
        "no_retry_exit_codes",
        list(&a.no_retry_exit_codes, |c| c.to_string()),
    );
    let b = &a.backoff;
    kv(
        "backoff",
        format!(
            "{{ initial = {}, max = {}, factor = {}, jitter = {}, reset_after = {} }}",
            dur(b.initial),
            dur(b.max),
            real(b.factor),
            real(b.jitter),
            dur(b.reset_after)
        ),
    );
    let i = &a.intensity;
    kv(
        "intensity",
        format!(
            "{{ max = {}, period = {}, fatal_cooldown = {} }}",
            i.max,
            dur(i.period),
            dur(i.fatal_cooldown)
        ),
    );
    kv(
        "breaker",
        format!(
            "{{ failures = {}, open_for = {} }}",
            a.breaker.failures,
            dur(a.breaker.open_for)
        ),
    );
    kv("quarantine_after", a.quarantine_after.to_string());
    if let Some(m) = a.max_instances {
        kv("max_instances", m.to_string());
    }
    kv("tools", list(&a.tools, |x| q(x)));
    kv("deny_tools", list(&a.deny_tools, |x| q(x)));
}
