//! The config a verb runs on: the file given, else `./corral.toml`, else the embedded defaults
//! (the example agents built next to the `corral` binary, with state in a per-user directory:
//! `$XDG_STATE_HOME/corral`, else `~/.local/state/corral`; `/var/lib/corral` for root; never
//! a directory shared by every user).

use corral::{Config, ConfigError, Supervisor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the embedded defaults say they come from, in messages.
pub const EMBEDDED: &str = "<embedded defaults>";

/// The directory of the running `corral` binary, where the embedded defaults look for the
/// example agents.
pub fn binary_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The state directory of the embedded defaults: per user, never shared.
pub fn state_home() -> PathBuf {
    state_home_from(
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// [`state_home`] from its inputs: root's is `/var/lib/corral`; else an absolute
/// `$XDG_STATE_HOME/corral`, else `$HOME/.local/state/corral`, else one named by the uid
/// under the temporary directory (no home at all).
pub fn state_home_from(root: bool, xdg: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/corral");
    }
    if let Some(x) = xdg.filter(|x| x.is_absolute()) {
        return x.join("corral");
    }
    if let Some(h) = home.filter(|h| h.is_absolute()) {
        return h.join(".local/state/corral");
    }
    std::env::temp_dir().join(format!("corral-{}", nix::unistd::geteuid()))
}

/// What to do when the example agents the embedded defaults run are not next to the binary.
pub fn missing_agents_hint() -> String {
    format!(
        "corral: the embedded defaults run the example agents built next to this binary (in \
         {}); build them with `cargo build --workspace`, or give a config with --config",
        binary_dir().display()
    )
}

/// Config used when none is given: the example agents next to the `corral` binary.
pub fn embedded_default() -> String {
    let dir = binary_dir();
    let esc = |p: PathBuf| {
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    format!(
        r#"# Embedded defaults: the example agents built next to this binary.
[supervisor]
state_dir = "{state}"

[defaults]
heartbeat_interval = "200ms"
heartbeat_timeout = "1s"
startup_timeout = "5s"
kill_grace = "500ms"
backoff = {{ initial = "50ms", max = "1s" }}
breaker = {{ failures = 20, open_for = "10s" }}
max_retries = 2

[agents.echo]
command = ["{echo}"]

[agents.chaos]
command = ["{chaos}"]
wall_time = "5s"
stall_timeout = "2s"

# The review plan of `corral demo` (examples/plans/review.toml), over the tree it writes.
[agents.lister]
command = ["{lister}"]
readonly_paths = ["{tree}"]

[agents.reader]
command = ["{reader}"]
readonly_paths = ["{tree}"]

[agents.merger]
command = ["{merger}"]
"#,
        state = esc(state_home()),
        tree = esc(demo_tree()),
        echo = esc(dir.join("echo")),
        chaos = esc(dir.join("chaos")),
        lister = esc(dir.join("lister")),
        reader = esc(dir.join("reader")),
        merger = esc(dir.join("merger")),
    ) + &python_agent().map(|(py, src)| {
        let sdk = src.join("agent-sdk/python");
        format!(
            "\n[agents.pyecho]\ncommand = [\"{py}\", \"{script}\"]\nenv = {{ PYTHONPATH = \"{sdk}\" }}\n\
             readonly_paths = [\"{sdk}\"]\n",
            py = esc(py),
            script = esc(src.join("examples/python/pyecho.py")),
            sdk = esc(sdk),
        )
    }).unwrap_or_default()
}

/// The Python example agent (`examples/python/pyecho.py`, on the Python SDK of the source tree
/// this binary was built from) and a `python3` every agent's uid can run (on `PATH`, within
/// the system paths of the agents' root); `None` when either is missing.
pub fn python_agent() -> Option<(PathBuf, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !src.join("examples/python/pyecho.py").is_file() {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    let py = std::env::split_paths(&path)
        .filter(|d| {
            corral::sandbox::rootfs::SYSTEM_PATHS
                .iter()
                .any(|s| d.starts_with(s))
        })
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())?;
    Some((py, src.canonicalize().unwrap_or(src)))
}

/// Where `corral demo` writes the source tree its review plan reads: in the per-user state
/// directory.
pub fn demo_tree() -> PathBuf {
    state_home().join("demo-tree")
}

/// The embedded defaults, parsed (the demo's tree, which two of its agents read, written first
/// if it is not there yet; if it cannot be, `validate` says so).
pub fn embedded() -> Result<Config, ConfigError> {
    let tree = demo_tree();
    if !tree.exists() {
        let _ = crate::demo::write_tree(&tree);
    }
    Config::parse(&embedded_default(), Path::new(EMBEDDED))
}

/// The config at `path`; without one, `./corral.toml` if present, else the embedded defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => {
            let local = Path::new("corral.toml");
            if local.exists() {
                Config::load(local)
            } else {
                embedded()
            }
        }
    }
}

/// What SIGINT, SIGTERM and SIGHUP (the terminal went away) stop: the calls given it end with
/// escalation and their records say `shutdown` (instead of being left to PDEATHSIG). Must be
/// called inside the runtime.
pub fn stop_on_signals() -> corral::Stop {
    let (handle, stop) = corral::Stop::new();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        handle.stop(corral::ExitReason::Shutdown);
    });
    stop
}

/// A supervisor on a loaded config, or the exit code after saying what is wrong (2).
pub fn start(cfg: Result<Config, ConfigError>) -> Result<Supervisor, ExitCode> {
    let cfg = cfg.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    Supervisor::new(cfg).map_err(|e| {
        eprintln!("corral: {e}");
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_per_user_and_never_a_shared_directory() {
        let p = |root, xdg: Option<&str>, home: Option<&str>| {
            state_home_from(root, xdg.map(PathBuf::from), home.map(PathBuf::from))
        };
        assert_eq!(
            p(true, Some("/x"), Some("/h")),
            Path::new("/var/lib/corral")
        );
        assert_eq!(p(false, Some("/x"), Some("/h")), Path::new("/x/corral"));
        assert_eq!(
            p(false, Some("rel"), Some("/h")),
            Path::new("/h/.local/state/corral")
        );
        assert_eq!(
            p(false, None, Some("/h")),
            Path::new("/h/.local/state/corral")
        );
        let last = p(false, None, None);
        assert!(
            last.ends_with(format!("corral-{}", nix::unistd::geteuid())),
            "{last:?}"
        );
    }
}
