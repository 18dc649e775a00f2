//! Row 13: `corral serve` as operators run it: the `corral` binary as a child process on a
//! config file, driven through its control socket with the library's client
//! (`corral::control::Client`), its memory and CPU read from `/proc`.
//!
//! - 13a/13b: the daemon idle with N service agents (`chaos`, beating every second): its RSS
//!   per agent over the same daemon with no service agent (a bare runtime), and its CPU in %
//!   of one core, beside the bare daemon's over the same window.
//! - 13c: `submit --wait` of a trivial task to a service agent (`echo`), request to answer,
//!   interleaved with `Supervisor::call` of the same agent in this process.
//! - 13d: restart of a service agent after `kill -9`, kill to the new instance's `ready` event
//!   on `events -f`, beside supervisord restarting `sleep` (measured as row 6b).

use crate::harness::{self, Env};
use crate::stats::{fig, p50, Figure, Row, Section, Unit};
use anyhow::{anyhow, bail, Context, Result};
use corral::control::{Client, Request, Response};
use corral::CallOptions;
use corral_proto::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The keys of row 7: no namespaces, host network, no disk quota; and no cgroup limits.
const PLAIN: &str = "namespaces = []\nnetwork = true\nuser = \"root\"\nallow_root = true\n\
                     disk = \"unlimited\"\nheartbeat_interval = \"1s\"\nstall_timeout = \"1h\"\n";

/// A `corral serve` child and its state directory.
struct Served {
    child: Child,
    /// When the child was started.
    started: Instant,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Start `corral serve` on `agents` (TOML) and wait until its socket answers.
    fn start(corral: &Path, agents: &str) -> Result<Served> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("corral.toml");
        std::fs::write(
            &config,
            format!("[supervisor]\nstate_dir = \"state\"\n\n{agents}"),
        )?;
        let started = Instant::now();
        let child = Command::new(corral)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} serve", corral.display()))?;
        let mut s = Served {
            child,
            started,
            socket: dir.path().join("state/control.sock"),
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(120);
        while Client::connect(&s.socket).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                bail!("corral serve exited ({st})");
            }
            if Instant::now() > until {
                bail!("corral serve did not open its socket within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    fn ask(&self, req: &Request) -> Result<Response> {
        Ok(Client::connect(&self.socket)?.ask(req, |_| {})?)
    }

    fn json(&self, req: &Request) -> Result<serde_json::Value> {
        match self.ask(req)? {
            Response::Json(t) => Ok(serde_json::from_str(&t)?),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Wait until `n` service instances are ready; the time since the daemon was started.
    fn wait_ready(&self, n: u64, within: Duration) -> Result<Duration> {
        let t0 = self.started;
        loop {
            let st = self.json(&Request::Status)?;
            if st["by_state"]["ready"].as_u64().unwrap_or(0) >= n {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                bail!(
                    "{n} instances not ready within {within:?}: {}",
                    st["summary"]
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// VmRSS of the daemon, bytes.
    fn rss(&self) -> Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: f64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok(kb * 1024.0)
    }

    /// User + system CPU time of the daemon (`/proc/PID/stat`: all its threads, those that
    /// ended included, in clock ticks).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        // Fields after the command's closing parenthesis: utime and stime are the 12th and
        // 13th of them.
        let ticks: u64 = stat
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some(f.iter().sum())
            })
            .unwrap_or(0);
        Duration::from_nanos(ticks * 1_000_000_000 / clock_hz())
    }

    /// The daemon's CPU over `window`, in % of one core.
    fn cpu_over(&self, window: Duration) -> f64 {
        let (c0, t0) = (self.cpu(), Instant::now());
        std::thread::sleep(window);
        let used = self.cpu().saturating_sub(c0);
        100.0 * used.as_secs_f64() / t0.elapsed().as_secs_f64()
    }

    /// SIGTERM (the drain), and the time it took to exit.
    fn stop(mut self) -> Result<Duration> {
        let t0 = Instant::now();
        // SAFETY: kill(2) of the daemon this bench started.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let st = self.child.wait()?;
        if !st.success() {
            bail!("corral serve exited {st} after SIGTERM");
        }
        Ok(t0.elapsed())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) of the daemon this bench started (a row that failed midway).
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second (`/proc`'s CPU times).
fn clock_hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

fn agent(name: &str, command: &Path, keys: &str) -> Result<String> {
    harness::config_text(name, command, &format!("{PLAIN}{keys}"))
}

/// Row 13: see the module's doc.
pub fn row13(env: &Env, corral: &Path, sec: &mut Section) -> Result<()> {
    let r = idle(env, corral, sec);
    crate::guard(sec, "13a", r);
    let r = submit(env, corral, sec);
    crate::guard(sec, "13c", r);
    let r = restart(env, corral, sec);
    crate::guard(sec, "13d", r);
    Ok(())
}

/// 13a/13b: the daemon idle with N service agents, against itself with none.
fn idle(env: &Env, corral: &Path, sec: &mut Section) -> Result<()> {
    let n: u64 = if env.quick { 200 } else { 1000 };
    let window = Duration::from_secs(if env.quick { 4 } else { 10 });
    let settle = Duration::from_secs(1);
    // The same agent type, not a service: the daemon runs no agent.
    let bare = Served::start(corral, &agent("chaos", &env.chaos, "")?)?;
    std::thread::sleep(settle);
    let (rss0, cpu0) = (bare.rss()?, bare.cpu_over(window));
    bare.stop()?;
    let keys = format!("service = true\ninstances = {n}\nstartup_timeout = \"120s\"\n");
    let full = Served::start(corral, &agent("chaos", &env.chaos, &keys)?)?;
    let took = full.wait_ready(n, Duration::from_secs(300))?;
    std::thread::sleep(settle);
    let (rss, cpu) = (full.rss()?, full.cpu_over(window));
    let drain = full.stop()?;
    let per_agent = (rss - rss0) / n as f64;
    sec.rows.push(
        Row {
            ratio_text: Some(format!("+{:.1} KiB/agent", per_agent / 1024.0)),
            ..Row::new(
                "13a",
                &format!("daemon RSS, {n} idle service agents"),
                Unit::Bytes,
                Figure::Single(rss),
            )
            .base("the same daemon, no service agent", Figure::Single(rss0))
        }
        .target("≤ 4 KiB/agent over bare", Some(per_agent <= 4096.0)),
    );
    sec.rows.push(
        Row {
            ratio_text: Some("-".into()),
            ..Row::new(
                "13b",
                &format!("daemon CPU, {n} idle service agents"),
                Unit::Percent,
                Figure::Single(cpu),
            )
            .base("the same daemon, no service agent", Figure::Single(cpu0))
        }
        .target("≤ 0.5 % of a core", Some(cpu <= 0.5)),
    );
    sec.note(format!(
        "13a: `corral serve` (a child process) with `[agents.chaos] service = true, instances = \
         {n}` (row 7's keys: no namespaces, beats every 1 s), all ready after {}; VmRSS of the \
         daemon from /proc 1 s later, against the same daemon on the same agent type without \
         `service` (no agent running); the agents' own memory is not counted",
        Unit::Time.fmt(took.as_secs_f64())
    ));
    sec.note(format!(
        "13b: the daemon's CPU (/proc/PID/stat utime + stime, all threads, in clock ticks: \
         {:.2} % resolution here) over a {} s window / wall, in % of one core; baseline: the bare daemon over the same window. SIGTERM then \
         drained the {n} agents in {}",
        100.0 / (clock_hz() as f64 * window.as_secs_f64()),
        window.as_secs(),
        Unit::Time.fmt(drain.as_secs_f64())
    ));
    Ok(())
}

/// 13c: `submit --wait` of a trivial task to a service agent, against `Supervisor::call`.
fn submit(env: &Env, corral: &Path, sec: &mut Section) -> Result<()> {
    let iters = env.spawn_iters();
    let svc = Served::start(corral, &agent("echo", &env.echo, "service = true\n")?)?;
    svc.wait_ready(1, Duration::from_secs(60))?;
    let sup = harness::supervisor(env, &agent("echo", &env.echo, "")?, false)?;
    let req = Request::SubmitTask {
        agent: "echo".into(),
        input: r#"{"x":1}"#.into(),
        wait: true,
    };
    let (mut via, mut call) = (Vec::new(), Vec::new());
    for i in 0..iters + 1 {
        let one_submit = |via: &mut Vec<Duration>| -> Result<()> {
            let t0 = Instant::now();
            match svc.ask(&req)? {
                Response::Finished { exit: 0, .. } => via.push(t0.elapsed()),
                other => bail!("submit: {other:?}"),
            }
            Ok(())
        };
        let s = sup.sup.clone();
        let one_call = |call: &mut Vec<Duration>| -> Result<()> {
            let t0 = Instant::now();
            let input = Value::from_json(&serde_json::json!({"x": 1}));
            let out =
                env.run(async move { s.call("echo", input, CallOptions::default()).await })?;
            if !out.map_err(|e| anyhow!("{e}"))?.ok() {
                bail!("call failed");
            }
            call.push(t0.elapsed());
            Ok(())
        };
        // (Alternating which goes first; the first pair warms up and is not kept.)
        if i % 2 == 0 {
            one_submit(&mut via)?;
            one_call(&mut call)?;
        } else {
            one_call(&mut call)?;
            one_submit(&mut via)?;
        }
        if i == 0 {
            via.clear();
            call.clear();
        }
    }
    svc.stop()?;
    let row = Row::new(
        "13c",
        "submit --wait → done, service echo",
        Unit::Time,
        fig(&via),
    )
    .base("Supervisor::call of echo", fig(&call));
    sec.rows.push(row.target("informative", None));
    sec.note(format!(
        "13c: a new control connection per task (as the CLI), `SubmitTask {{wait: true}}` of \
         {{\"x\":1}} to `[agents.echo] service = true` until `Finished`: p50 {} against a \
         `Supervisor::call` of echo in this process (a new agent process each; row 7's keys, \
         no cgroups), interleaved, {} each",
        p50(&via),
        via.len()
    ));
    Ok(())
}

/// 13d: restart of a service agent after kill -9, against supervisord.
fn restart(env: &Env, corral: &Path, sec: &mut Section) -> Result<()> {
    let iters = if env.quick { 10 } else { 50 };
    let keys = "service = true\nrestart = \"always\"\nmax_retries = 1000000\n\
                quarantine_after = 1000000\nbreaker = { failures = 1000 }\n\
                intensity = { max = 1000 }\n\
                backoff = { initial = \"0ms\", max = \"0ms\", jitter = 0.0 }\n";
    let svc = Served::start(corral, &agent("chaos", &env.chaos, keys)?)?;
    svc.wait_ready(1, Duration::from_secs(60))?;
    // The daemon's events, as they come, stamped on arrival.
    let (tx, rx) = mpsc::channel::<(Instant, serde_json::Value)>();
    let events = Client::connect(&svc.socket)?;
    std::thread::spawn(move || {
        let _ = events.ask(&Request::Events, |r| {
            if let Response::Line(l) = r {
                if let Ok(v) = serde_json::from_str(l) {
                    let _ = tx.send((Instant::now(), v));
                }
            }
        });
    });
    let ps = svc.json(&Request::Ps)?;
    let mut pid = ps
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["agent"] == "chaos"))
        .and_then(|r| r["pid"].as_i64())
        .ok_or_else(|| anyhow!("no pid in ps: {ps}"))?;
    let mut samples = Vec::new();
    // Phases: kill → `exited` event, → `spawned`, → `ready`.
    let (mut to_exited, mut to_spawned, mut to_ready) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t0 = Instant::now();
        // SAFETY: kill(2) of the service agent's process, which the daemon started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let (mut exited, mut spawned) = (None, None);
        pid = loop {
            let (at, ev) = rx
                .recv_timeout(Duration::from_secs(30))
                .context("no ready event within 30 s")?;
            let p = ev["pid"].as_i64().unwrap_or(pid);
            match ev["event"].as_str() {
                Some("exited") if exited.is_none() => exited = Some(at),
                Some("spawned") if p != pid => spawned = Some(at),
                Some("ready") if p != pid => {
                    samples.push(at.saturating_duration_since(t0));
                    if let (Some(e), Some(s)) = (exited, spawned) {
                        to_exited.push(e.saturating_duration_since(t0));
                        to_spawned.push(s.saturating_duration_since(e));
                        to_ready.push(at.saturating_duration_since(s));
                    }
                    break p;
                }
                _ => {}
            }
        };
    }
    svc.stop()?;
    let peer = match harness::which("supervisord") {
        None => Figure::NotMeasured("missing: corral-bench --setup-peers".into()),
        Some(svd) => match crate::peers::supervisord_samples(&svd, if env.quick { 2 } else { 5 }) {
            Ok(s) => fig(&s),
            Err(e) => Figure::NotMeasured(format!("n/a: {e:#}")),
        },
    };
    let met = Some(samples.len() == iters && fig(&samples).p50().is_some_and(|v| v <= 2e-3));
    sec.rows.push(
        Row::new(
            "13d",
            "service agent restart after kill -9",
            Unit::Time,
            fig(&samples),
        )
        .base("supervisord (as 6b)", peer)
        .target("≤ 2 ms p50", met),
    );
    sec.note(format!(
        "13d: `[agents.chaos] service = true`, zero backoff; kill -9 of the instance's pid \
         (from `ps`, then from each `ready` event), timed to the arrival of the next `ready` \
         event on an `events -f` stream (so the figure carries the event's trip over the \
         socket); {} samples; phases p50 (event arrivals): kill → `exited` {}, → `spawned` {}, \
         → `ready` {}; the daemon runs with the host's cgroups when it has them; baseline: \
         supervisord restarting `sleep 3600` as in row 6b",
        samples.len(),
        p50(&to_exited),
        p50(&to_spawned),
        p50(&to_ready)
    ));
    Ok(())
}
