//! Helpers for corral's end-to-end tests: build the real binaries once, write configs that
//! point at them, run `corral` and parse its `--json` output.
//!
//! Tests here start real agent processes over real pipes; they assert on recorded facts (exit
//! records, pids), never on how long something took.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Directory holding the `corral`, `echo` and `chaos` binaries (built on first use).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test-binary> → target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "corral",
            "-p",
            "corral-cli",
            "-p",
            "corral-examples",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        dir
    })
}

/// Path of one built binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Whether isolation capabilities are required (`CORRAL_REQUIRE_ISOLATION=1`): a skip is then
/// a failure.
pub fn require_isolation() -> bool {
    std::env::var("CORRAL_REQUIRE_ISOLATION").is_ok_and(|v| v == "1")
}

/// A private copy of the chaos binary, so its processes can be counted (or it replaced) by
/// its executable without touching other tests' agents.
pub fn private_chaos(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("chaos-escape");
    std::fs::copy(bin("chaos"), &p).unwrap();
    p
}

/// Whether this runs as root; skip (or fail) otherwise.
pub fn root_ok(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_or_fail(&format!("{what}: needs root"));
    false
}

/// Skip (print why) or, under `CORRAL_REQUIRE_ISOLATION=1`, fail.
pub fn skip_or_fail(why: &str) {
    if require_isolation() {
        panic!("required isolation capability missing: {why}");
    }
    eprintln!("skipped: {why}");
}

/// A temporary directory with a `corral.toml` whose `[agents]` point at the built examples.
pub struct Fixture {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
}

impl Drop for Fixture {
    /// What the supervisors of the test left for the reaper (workspaces, with their quota's
    /// tmpfs) is removed first, and a mount still under the directory (a spare workspace made
    /// after) is detached, so that the directory can go.
    fn drop(&mut self) {
        corral::sandbox::process::settle_blocking();
        let dir = self.dir.path().to_path_buf();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| std::path::Path::new(m).starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 with a valid C string; only mounts under this fixture.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// The standard agents (echo, chaos, shout) with fast test timings, plus `extra` TOML.
pub fn fixture(extra: &str) -> Fixture {
    fixture_with_defaults("", extra)
}

/// Like [`fixture`] with extra keys in `[defaults]`.
pub fn fixture_with_defaults(defaults: &str, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    // Test timings, unless the caller sets the same key.
    let base = [
        ("heartbeat_interval", "\"100ms\""),
        ("heartbeat_timeout", "\"1s\""),
        ("startup_timeout", "\"5s\""),
        ("kill_grace", "\"300ms\""),
        (
            "backoff",
            "{ initial = \"10ms\", max = \"100ms\", jitter = 0.0 }",
        ),
    ];
    let given: Vec<&str> = defaults
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .collect();
    let mut defaults = defaults.to_string();
    for (k, v) in base {
        if !given.contains(&k) {
            defaults.push_str(&format!("\n{k} = {v}"));
        }
    }
    let text = format!(
        r#"[supervisor]
state_dir = "state"

[defaults]
{defaults}

[agents.echo]
command = ["{echo}"]

[agents.chaos]
command = ["{chaos}"]

[agents.shout]
command = ["{shout}"]

{extra}
"#,
        echo = bin("echo").display(),
        chaos = bin("chaos").display(),
        shout = bin("shout").display(),
    );
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, text).expect("write config");
    Fixture { dir, config }
}

/// Run `corral` with arguments.
pub fn corral(args: &[&str]) -> Output {
    Command::new(bin("corral"))
        .args(args)
        .output()
        .expect("run corral")
}

/// The result of `corral call --json`.
pub struct Called {
    /// Process exit code.
    pub code: i32,
    /// The parsed document.
    pub doc: serde_json::Value,
    /// stderr, for messages.
    pub stderr: String,
}

impl Called {
    /// The attempts.
    pub fn attempts(&self) -> &Vec<serde_json::Value> {
        self.doc["attempts"].as_array().expect("attempts array")
    }

    /// The last attempt.
    pub fn last(&self) -> &serde_json::Value {
        self.attempts().last().expect("at least one attempt")
    }

    /// Reasons of all attempts.
    pub fn reasons(&self) -> Vec<String> {
        self.attempts()
            .iter()
            .map(|a| a["reason"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

/// `corral call AGENT --config F --input JSON --json`.
pub fn call_json(fx: &Fixture, agent: &str, input: &str) -> Called {
    let out = corral(&[
        "call",
        agent,
        "--config",
        fx.config.to_str().expect("utf-8 path"),
        "--input",
        input,
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    Called {
        code: out.status.code().unwrap_or(-1),
        doc,
        stderr,
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the parenthesised command name
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Parse a fixture's config with the library (for tests that drive a `corral::Supervisor` directly).
pub fn load(fx: &Fixture) -> corral::Config {
    corral::Config::load(&fx.config).unwrap_or_else(|e| panic!("{e}"))
}

/// A JSON string as a [`corral_proto::Value`].
pub fn input(json: &str) -> corral_proto::Value {
    corral_proto::Value::from_json(&serde_json::from_str(json).expect("test input is JSON"))
}

/// A fixture and a library-level supervisor on it.
pub fn sup_with(defaults: &str, extra: &str) -> (Fixture, corral::Supervisor) {
    let fx = fixture_with_defaults(defaults, extra);
    let cfg = load(&fx);
    let s = corral::Supervisor::new(cfg).expect("supervisor set-up");
    (fx, s)
}

/// One call through the library, with default options.
pub async fn call(s: &corral::Supervisor, agent: &str, json: &str) -> corral::CallOutcome {
    s.call(agent, input(json), corral::CallOptions::default())
        .await
        .expect("known agent")
}

/// The reasons of all attempts.
pub fn reasons(o: &corral::CallOutcome) -> Vec<corral::ExitReason> {
    o.attempts.iter().map(|a| a.reason).collect()
}

/// The output as JSON (null when there is none).
pub fn output(o: &corral::CallOutcome) -> serde_json::Value {
    o.output
        .as_ref()
        .map(corral_proto::Value::to_json)
        .unwrap_or_default()
}

/// A temporary directory under `base` that every user may enter and read (mode 0755): agents
/// run as uids of their own, so what they are meant to reach must be open to others.
pub fn open_tempdir_in(base: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755");
    dir
}

/// Like [`open_tempdir_in`], in the system's temporary directory.
pub fn open_tempdir() -> tempfile::TempDir {
    open_tempdir_in(&std::env::temp_dir())
}

/// Whether `cond` holds within `secs` seconds, asked every millisecond: for what only `/proc`
/// shows, such as a process another one forks on its own time.
pub fn within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The host pid of an attempt's agent, from the pid its events and record show: under a pid
/// namespace that is its `corral-init`, whose only child is the agent.
pub fn agent_pid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// The real uid of a live process, as the host sees it.
pub fn host_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One call of `chaos` with its events: the outcome and whether its agent started in a warm stem.
pub async fn call_warm(s: &corral::Supervisor, json: &str) -> (corral::CallOutcome, Vec<bool>) {
    call_warm_on(s, "chaos", json).await
}

/// [`call_warm`] of another agent.
pub async fn call_warm_on(
    s: &corral::Supervisor,
    agent: &str,
    json: &str,
) -> (corral::CallOutcome, Vec<bool>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = corral::CallOptions {
        events: Some(tx),
        ..Default::default()
    };
    let input = corral_proto::Value::from_json(&serde_json::from_str(json).unwrap());
    let o = s.call(agent, input, opts).await.unwrap();
    let mut warm = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let corral::AttemptEvent::Spawned { warm: w, .. } = ev {
            warm.push(w);
        }
    }
    (o, warm)
}
