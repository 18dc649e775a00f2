//! The config a verb runs on: the file given, else `./corral.toml`, else the embedded defaults
//! (the example agents built next to the `corral` binary).

use corral::{Config, ConfigError, Supervisor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the embedded defaults say they come from, in messages.
pub const EMBEDDED: &str = "<embedded defaults>";

/// Config used when none is given: the example agents next to the `corral` binary.
pub fn embedded_default() -> String {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
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
        state = esc(std::env::temp_dir().join("corral-state")),
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

/// Where `corral demo` writes the source tree its review plan reads.
pub fn demo_tree() -> PathBuf {
    std::env::temp_dir().join("corral-demo-tree")
}

/// The embedded defaults, parsed.
pub fn embedded() -> Result<Config, ConfigError> {
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
