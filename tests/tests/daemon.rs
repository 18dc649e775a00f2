//! `corral serve` as a real process started by the test, with a real `NOTIFY_SOCKET` owned by
//! the test, driven through the real `corral` client verbs and signals.

use corral_e2e::{alive, bin, corral, fixture, Fixture};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A daemon under test and the notify socket it talks to.
struct Daemon {
    child: Child,
    notify: UnixDatagram,
    fx: Fixture,
    seen: Vec<String>,
}

const SERVICE: &str = r#"
[agents.svc]
command = ["ECHO"]
service = true
instances = 2
wall_time = "30s"
"#;

fn start(extra: &str) -> Daemon {
    start_on(fixture(
        &extra.replace("ECHO", &bin("echo").display().to_string()),
    ))
}

impl Daemon {
    /// Read notify datagrams until one holds `what`; every state seen is kept in order.
    fn wait_for(&mut self, what: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.notify.recv(&mut buf).expect("notify datagram");
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            for line in text.lines() {
                self.seen.push(line.to_string());
            }
            if text.lines().any(|l| l.starts_with(what)) {
                return text;
            }
        }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        // By the socket: the config may be broken on purpose meanwhile.
        let sock = self.fx.dir.path().join("state/control.sock");
        let sock = sock.to_str().expect("utf-8 path").to_string();
        all.extend(["--socket", &sock]);
        corral(&all)
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["ps", "--json"]);
        assert!(
            out.status.success(),
            "ps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps --json parses");
        v.as_array().expect("a list").clone()
    }

    /// The service pids once both instances are ready and none is `except`.
    fn wait_pids(&self, except: &[i64]) -> Vec<i64> {
        loop {
            let rows = self.ps();
            let ready: Vec<i64> = rows
                .iter()
                .filter(|r| r["agent"] == "svc" && r["state"] == "ready")
                .filter_map(|r| r["pid"].as_i64())
                .collect();
            if ready.len() == 2 && ready.iter().all(|p| !except.contains(p)) {
                return ready;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write `text` as the config and reload it: back when the daemon says `READY=1` again
    /// (after a refused reload too).
    fn reload(&mut self, text: &str) {
        std::fs::write(&self.fx.config, text).expect("write");
        self.signal(libc::SIGHUP);
        self.wait_for("RELOADING=1");
        self.wait_for("READY=1");
    }

    fn signal(&self, sig: i32) {
        // SAFETY (test): a signal to the daemon this test started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn term(mut self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        self.wait_for("STOPPING=1");
        let status = self.child.wait().expect("wait daemon");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }
}

/// `corral stop|start|restart AGENT`: a stopped service agent is shown stopped (in `ps`,
/// `status`), started again on new processes; a restart replaces its processes.
#[test]
fn stop_start_and_restart_a_service_agent() {
    let d = start(SERVICE);
    let pids = d.wait_pids(&[]);
    let out = d.ctl(&["stop", "svc"]);
    assert!(out.status.success(), "{out:?}");
    let rows = d.ps();
    let svc: Vec<_> = rows.iter().filter(|r| r["agent"] == "svc").collect();
    assert_eq!(svc.len(), 2, "{rows:?}");
    assert!(
        svc.iter()
            .all(|r| r["service"] == true && r["state"] == "stopped" && r["pid"].is_null()),
        "{rows:?}"
    );
    let status = d.ctl(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        doc["by_state"]["stopped"], 2,
        "status counts the stopped instances: {doc}"
    );
    let out = d.ctl(&["start", "svc"]);
    assert!(out.status.success(), "{out:?}");
    let started = d.wait_pids(&pids);
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.iter().all(|p| !pids.contains(p)), "new processes");
    let out = d.ctl(&["restart", "svc"]);
    assert!(out.status.success(), "{out:?}");
    let restarted = d.wait_pids(&started);
    assert!(restarted.iter().all(|p| !started.contains(p)), "replaced");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// While the daemon drains, its socket still answers: `status` says so, new work is refused
/// `draining`; then it exits 0.
#[test]
fn a_draining_daemon_still_answers_and_refuses_new_work() {
    let slow = format!(
        "[agents.stub]\ncommand = [\"{}\"]\nservice = true\nkill_grace = \"3s\"\n",
        bin("chaos").display()
    );
    let mut d = start(&slow);
    d.ready_pid("stub", &[]);
    // A task that ignores SIGTERM and `Shutdown`: the drain waits its grace.
    let out = d.ctl(&["submit", "stub", "--input", r#"{"do":"ignore_term"}"#]);
    assert!(out.status.success(), "{out:?}");
    // Taken by the instance (not still queued, which the drain would answer at once).
    loop {
        let status = d.ctl(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        if doc["tasks"]["running"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // `ps` shows the instance at work (once it was sent the task).
    loop {
        let rows = d.ps();
        let row = rows
            .iter()
            .find(|r| r["agent"] == "stub")
            .expect("stub row");
        if row["state"] == "busy" {
            break;
        }
        assert_eq!(row["state"], "ready", "{row}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.ctl(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert!(
        doc["summary"]
            .as_str()
            .is_some_and(|s| s.contains("1 healthy")),
        "a busy instance is healthy: {doc}"
    );
    d.signal(libc::SIGTERM);
    d.wait_for("STOPPING=1");
    let status = d.ctl(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(doc["draining"], true, "{doc}");
    let out = d.ctl(&["submit", "stub", "--input", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("draining"),
        "{out:?}"
    );
    let status = d.child.wait().expect("wait daemon");
    assert_eq!(status.code(), Some(0));
}

/// A service instance's exit record says the restart that follows it, as a call's does.
#[test]
fn a_service_agents_record_says_its_restart() {
    use std::io::BufRead;
    let d = start(SERVICE);
    let pids = d.wait_pids(&[]);
    let sock = d.fx.dir.path().join("state/control.sock");
    let mut follow = Command::new(bin("corral"))
        .args(["events", "-f", "--socket"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("events -f");
    let out = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(ev) = serde_json::from_str(&line) {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
    });
    // Following for sure once an event of a task arrives: the `exited` below is not missed.
    loop {
        let out = d.ctl(&["submit", "svc", "--input", "1", "--wait"]);
        assert!(out.status.success(), "{out:?}");
        if rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
    }
    let victim = pids[0] as i32;
    let host = corral_e2e::agent_pid(victim);
    // SAFETY (test): kill the agent's process (under its init when there is one).
    unsafe { libc::kill(host, libc::SIGKILL) };
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let rec = loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("an exited event");
        if ev["event"] == "exited" {
            break ev["record"].clone();
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(rec["restart_count"], 1, "{rec}");
    assert!(rec["backoff_ms"].is_u64(), "{rec}");
    assert_eq!(rec["decision"], "retry", "{rec}");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

#[test]
fn notify_order_service_restart_and_drain() {
    let mut d = start(SERVICE);
    d.wait_for("WATCHDOG=1");
    let pids = d.wait_pids(&[]);
    // kill -9 of a service agent: back with a new pid.
    let victim = pids[0] as i32;
    let host = corral_e2e::agent_pid(victim);
    // SAFETY (test): kill the agent's process (under its init when there is one).
    unsafe { libc::kill(host, libc::SIGKILL) };
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let after = d.wait_pids(&[pids[0]]);
    assert!(
        after.contains(&pids[1]),
        "the other instance was left alone"
    );
    let rows = d.ps();
    let restarted: u64 = rows
        .iter()
        .filter(|r| r["agent"] == "svc")
        .map(|r| r["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(restarted, 1, "{rows:?}");
    // A task on the service agent.
    let out = d.ctl(&["submit", "svc", "--input", r#"{"x":1}"#, "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"x":1}"#);
    // Journalled like a call: its input and output.
    let runs = corral(&[
        "runs",
        "--json",
        "--agent",
        "svc",
        "--config",
        d.fx.config.to_str().expect("utf-8"),
    ]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs --json");
    let run_id = runs[0]["run_id"]
        .as_str()
        .expect("a journalled run")
        .to_string();
    assert_eq!(runs[0]["status"], "succeeded", "{runs}");
    let shown = corral(&[
        "show",
        &run_id,
        "--json",
        "--config",
        d.fx.config.to_str().expect("utf-8"),
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show --json");
    assert_eq!(shown["calls"][0]["input"], serde_json::json!({"x": 1}));
    assert_eq!(shown["calls"][0]["output"], serde_json::json!({"x": 1}));
    // The agents' processes, and the agents under their init when they have one.
    let live: Vec<i32> = d
        .wait_pids(&[])
        .into_iter()
        .flat_map(|p| [p as i32, corral_e2e::agent_pid(p as i32)])
        .collect();
    assert!(live.iter().all(|p| alive(*p)), "{live:?}");
    let (code, err) = d.term_with_seen();
    assert_eq!(code, 0, "{err}");
    for p in live {
        assert!(!alive(p), "agent {p} left after the drain");
    }
}

impl Daemon {
    /// SIGTERM, then check the notify states' order.
    fn term_with_seen(self) -> (i32, String) {
        let mut me = self;
        me.signal(libc::SIGTERM);
        me.wait_for("STOPPING=1");
        let first = |what: &str| {
            me.seen
                .iter()
                .position(|l| l.starts_with(what))
                .unwrap_or_else(|| panic!("no {what} in {:?}", me.seen))
        };
        let (ready, status, watchdog, stopping) = (
            first("READY=1"),
            first("STATUS="),
            first("WATCHDOG=1"),
            first("STOPPING=1"),
        );
        assert!(
            ready <= status && status < watchdog && watchdog < stopping,
            "{:?}",
            me.seen
        );
        let status = me.child.wait().expect("wait daemon");
        let mut err = String::new();
        if let Some(mut e) = me.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }
}

#[test]
fn sighup_keeps_a_broken_config_and_applies_a_changed_one() {
    let slow = format!(
        "[agents.slow]\ncommand = [\"{}\"]\nservice = true\nwall_time = \"20s\"\n",
        bin("chaos").display()
    );
    let mut d = start(&format!("{SERVICE}\n{slow}"));
    let pids = d.wait_pids(&[]);
    let slow_pid = d.ready_pid("slow", &[]);
    let good = std::fs::read_to_string(&d.fx.config).expect("read config");
    // Broken: the daemon goes on with the old config and the same agents.
    d.reload(&format!("{good}\n[agents.svc2]\ncommand = 3\n"));
    assert_eq!(d.wait_pids(&[]), pids, "unchanged agents untouched");
    assert_eq!(d.ready_pid("slow", &[]), slow_pid);
    // The client verbs still find the daemon through the file, with a warning.
    let config = d.fx.config.to_str().expect("utf-8").to_string();
    let out = corral(&["ps", "--json", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
    // A task of 1.5 s passes within the running wall_time of 20 s.
    let task = r#"{"do":"sleep_ms","ms":1500}"#;
    let out = d.ctl(&["submit", "slow", "--input", task, "--wait", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(doc["output"]["ok"], true, "{doc}");
    // Changed limit on `slow` only: the same task now fails by its deadline, on a new
    // process, while `svc` (unchanged) keeps its processes.
    d.reload(&good.replace("wall_time = \"20s\"", "wall_time = \"500ms\""));
    d.ready_pid("slow", &[slow_pid]);
    let out = d.ctl(&["submit", "slow", "--input", task, "--wait", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["error"]["kind"], "deadline", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("wall_time")),
        "{doc}"
    );
    assert_eq!(d.wait_pids(&[]), pids, "the unchanged agent kept its pids");
    let (code, err) = d.term();
    assert_eq!(code, 0);
    assert!(
        err.contains("reload refused"),
        "the broken config is logged: {err}"
    );
    // Its location: `file:line:col`.
    assert!(err.lines().any(has_location), "{err}");
}

/// Whether `line` says where in the config a problem is: `corral.toml:LINE:COL`.
fn has_location(line: &str) -> bool {
    line.split("corral.toml:").skip(1).any(|rest| {
        let mut parts = rest.splitn(3, ':');
        let num = |p: Option<&str>| {
            p.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        num(parts.next()) && num(parts.next())
    })
}

#[test]
fn a_peer_not_in_admins_is_refused() {
    let d = start("");
    let socket = d.fx.dir.path().join("state/control.sock");
    let as_nobody = || {
        Command::new(bin("corral"))
            .args(["ps", "--socket"])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run the client as uid 65534")
    };
    // The socket's mode keeps the other uid out first: said as such, not as "no daemon".
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied: uid 65534 is not root nor in the socket's group"),
        "{err}"
    );
    // Let the other uid reach the socket, so that the daemon's own check is what refuses it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(
        d.fx.dir.path().join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied") && err.contains("65534"), "{err}");
    let (code, log) = d.term();
    assert_eq!(code, 0);
    assert!(
        log.contains("refused") && log.contains("peer_uid=65534"),
        "{log}"
    );
}

#[test]
fn no_daemon_is_one_line_and_exit_2() {
    let out = corral(&["status", "--socket", "/nonexistent/corral.sock"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no corral daemon"), "{err}");
}

/// A small Prometheus text-format parser: `# HELP`/`# TYPE` lines and samples
/// `name{label="value",…} number`.
fn parse_prometheus(text: &str) -> Result<Vec<(String, f64)>, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            match (p.next(), p.next()) {
                (Some("HELP" | "TYPE"), Some(n)) if name_ok(n) => continue,
                (Some("EOF"), None) => continue,
                _ => return Err(format!("bad comment line: {line}")),
            }
        }
        let (head, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let name = match head.split_once('{') {
            Some((n, labels)) => {
                let labels = labels.strip_suffix('}').ok_or(format!("labels: {line}"))?;
                for l in labels.split(',').filter(|l| !l.is_empty()) {
                    let (k, v) = l.split_once('=').ok_or(format!("label: {line}"))?;
                    if !(name_ok(k) && v.starts_with('"') && v.ends_with('"')) {
                        return Err(format!("label: {line}"));
                    }
                }
                n
            }
            None => head,
        };
        if !name_ok(name) {
            return Err(format!("name: {line}"));
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| format!("value: {line}"))?,
        };
        out.push((name.to_string(), v));
    }
    Ok(out)
}

/// A daemon on the fixture with `extra`, serving metrics on a free port of loopback.
fn start_with_metrics(extra: &str) -> (Daemon, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let fx = fixture(extra);
    let cfg_text = std::fs::read_to_string(&fx.config).expect("read");
    std::fs::write(
        &fx.config,
        cfg_text.replace(
            "[supervisor]\n",
            &format!("[supervisor]\nmetrics_listen = \"{port}\"\n"),
        ),
    )
    .expect("write");
    (start_on(fx), port)
}

/// A service agent's tool calls are in the metrics as they are answered, not when its
/// (long-lived) process ends.
#[test]
fn a_service_agents_tool_calls_are_counted_while_it_lives() {
    let svc = format!(
        "[agents.tsvc]\ncommand = [\"{}\"]\nservice = true\ntools = [\"fs.list\"]\n",
        bin("chaos").display()
    );
    let (d, port) = start_with_metrics(&svc);
    let pid = d.ready_pid("tsvc", &[]);
    let task = r#"{"do":"tools","calls":[{"tool":"fs.list","args":{"path":"."}},{"tool":"fs.list","args":{"path":"."}},{"tool":"fs.read","args":{"path":"x"}}]}"#;
    let out = d.ctl(&["submit", "tsvc", "--input", task, "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let body = get_metrics(port);
    let count = |tool: &str, status: &str| {
        let want = format!("corral_tool_calls_total{{tool=\"{tool}\",status=\"{status}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(count("fs.list", "ok"), Some(2.0), "{body}");
    assert_eq!(count("fs.read", "permission_denied"), Some(1.0), "{body}");
    assert_eq!(
        d.ready_pid("tsvc", &[]),
        pid,
        "the same process, still running"
    );
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

#[test]
fn metrics_parse_and_submit_plan_matches_run() {
    let (mut d, port) =
        start_with_metrics(&SERVICE.replace("ECHO", &bin("echo").display().to_string()));
    let plan = d.fx.dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[plan]\nname = \"p\"\n\n[[node]]\nid = \"a\"\nagent = \"echo\"\ninput = \"$input\"\n\n[[node]]\nid = \"b\"\nagent = \"echo\"\ninput = { got = \"$a.output\" }\n",
    )
    .expect("write plan");
    let plan_s = plan.to_str().expect("utf-8");
    let cfg = d.fx.config.to_str().expect("utf-8").to_string();
    let direct = corral(&["run", plan_s, "--config", &cfg, "--input", r#"{"k":2}"#]);
    let via = d.ctl(&[
        "submit",
        "--plan",
        plan_s,
        "--input",
        r#"{"k":2}"#,
        "--wait",
    ]);
    assert_eq!(direct.status.code(), via.status.code());
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout),
        String::from_utf8_lossy(&via.stdout)
    );
    let direct = corral(&["run", plan_s, "--config", &cfg, "--input", "1", "--json"]);
    let via = d.ctl(&[
        "submit", "--plan", plan_s, "--input", "1", "--wait", "--json",
    ]);
    let strip = |o: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(o).expect("json");
        let ids: Vec<_> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| (n["id"].clone(), n["status"].clone()))
            .collect();
        (v["status"].clone(), v["output"].clone(), ids)
    };
    assert_eq!(strip(&direct.stdout), strip(&via.stdout));
    // Metrics, after the runs: the text parses, and says what happened.
    d.wait_for("WATCHDOG=1");
    let body = get_metrics(port);
    let samples = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(
        samples.iter().any(|(n, _)| n == "corral_runs_active"),
        "{body}"
    );
    let succeeded = samples
        .iter()
        .any(|(n, v)| n == "corral_runs_total" && *v >= 1.0);
    assert!(succeeded, "{body}");
    // And by a kept parser of the format: every line understood, the families typed.
    for line in body.lines() {
        let info = prometheus_parse::LineInfo::parse(line);
        let known = !matches!(info, prometheus_parse::LineInfo::Ignored)
            || line == "# EOF"
            || line.starts_with("# UNIT ");
        assert!(known, "not understood: {line}\n{body}");
    }
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}\n{body}"));
    let family = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| s.value.clone())
            .collect::<Vec<_>>()
    };
    // (OpenMetrics names a counter's family without `_total`, which this parser of the older
    // text format reads as untyped samples.)
    let runs = family("corral_runs_total");
    assert!(
        runs.iter().any(|v| matches!(v,
            prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) if *n >= 1.0)),
        "{runs:?}\n{body}"
    );
    // The plans' attempts are counted as their instances end (two submissions of two `echo`
    // nodes, one attempt each).
    let exits = |body: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix("corral_exits_total{agent=\"echo\",reason=\"completed\"} ")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut body = body;
    while exits(&body) != Some(4.0) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        body = get_metrics(port);
    }
    assert_eq!(exits(&body), Some(4.0), "{body}");
    // The journal's commits, timed as the writer makes them (the runs above wrote some).
    let commits = body
        .lines()
        .find_map(|l| l.strip_prefix("corral_journal_write_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(commits.is_some_and(|n| n >= 1.0), "{body}");
    let ready = family("corral_spawn_ready_seconds");
    assert!(
        ready
            .iter()
            .any(|v| matches!(v, prometheus_parse::Value::Histogram(b) if !b.is_empty())),
        "{ready:?}\n{body}"
    );
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

fn start_on(fx: Fixture) -> Daemon {
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = fx.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock).expect("bind notify socket");
    // Not a timing assertion: a daemon that never says what is awaited fails the test
    // instead of hanging it.
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let child = Command::new(bin("corral"))
        .args(["serve", "--config"])
        .arg(&fx.config)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start corral serve");
    let mut d = Daemon {
        child,
        notify,
        fx,
        seen: Vec::new(),
    };
    d.wait_for("READY=1");
    d
}

fn get_metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    // The body is OpenMetrics (`_total` counters, `# EOF`): said so, for the scraper's parser.
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    body.to_string()
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/corral.service");
    assert!(unit.is_file(), "packaging/corral.service exists");
    let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    else {
        println!("skipped: systemd-analyze is not installed, the unit is not verified");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    // The unit names /usr/bin/corral, which a build machine may lack: only that is tolerated.
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("/usr/bin/corral") && !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {err}");
}

/// A tool that asks for approval, in a task submitted to the daemon: the call waits, is listed
/// by `corral approvals`, and `corral approve ID` lets it run; `corral deny` refuses the next.
#[test]
fn approvals_are_listed_and_decided_over_the_socket() {
    let d = start(&format!(
        "[agents.asker]\ncommand = [\"{}\"]\ntools = [\"fs.write\"]\n\
         [tools.\"fs.write\"]\napprove = \"ask\"\napprove_timeout = \"60s\"\n",
        bin("chaos").display()
    ));
    let sock = d.fx.dir.path().join("state/control.sock");
    let input = r#"{"do":"tools","calls":[{"tool":"fs.write","args":{"path":"a","content":"1"}},{"tool":"fs.write","args":{"path":"b","content":"2"}}]}"#;
    let waiter = Command::new(bin("corral"))
        .args([
            "submit", "asker", "--input", input, "--wait", "--json", "--socket",
        ])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("submit");
    let mut decided = 0;
    while decided < 2 {
        let out = d.ctl(&["approvals", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if let Some(p) = list.as_array().and_then(|l| l.first()) {
            assert_eq!(p["tool"], "fs.write");
            assert_eq!(p["agent"], "asker");
            let id = p["id"].as_str().expect("id").to_string();
            let verb = if decided == 0 { "approve" } else { "deny" };
            let out = d.ctl(&[verb, &id]);
            assert!(out.status.success(), "{verb} {id}: {out:?}");
            // Decided once: a second decision of the same call is refused.
            let again = d.ctl(&[verb, &id]);
            assert!(!again.status.success(), "{again:?}");
            assert!(
                String::from_utf8_lossy(&again.stderr).contains("waiting"),
                "{again:?}"
            );
            decided += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let out = waiter.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let results = &doc["output"]["results"];
    assert_eq!(results[0]["ok"], true, "{doc}");
    assert_eq!(results[1]["error"]["kind"], "approval_denied", "{doc}");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// The drain gives each agent the `kill_grace` it has now: one a reload raised is waited for
/// that long (said to systemd in `EXTEND_TIMEOUT_USEC`).
#[test]
fn the_drain_follows_a_kill_grace_a_reload_raised() {
    let mut d = start("");
    let good = std::fs::read_to_string(&d.fx.config).expect("read config");
    d.reload(&good.replace("[agents.chaos]\n", "[agents.chaos]\nkill_grace = \"25s\"\n"));
    d.signal(libc::SIGTERM);
    let stopping = d.wait_for("STOPPING=1");
    let usec: u64 = stopping
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC: {stopping}"));
    assert!(usec >= 50_000_000, "twice the new 25 s grace: {stopping}");
    let status = d.child.wait().expect("wait daemon");
    assert_eq!(status.code(), Some(0));
}

/// `submit --wait` of a task that fails says why, as `corral call` does.
#[test]
fn a_failed_task_waited_for_says_why_as_call_does() {
    let d = start("");
    let task = r#"{"do":"fail","retryable":false}"#;
    let out = d.ctl(&["submit", "chaos", "--input", task, "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let via = String::from_utf8_lossy(&out.stderr).into_owned();
    let config = d.fx.config.to_str().expect("utf-8").to_string();
    let direct = corral(&["call", "chaos", "--config", &config, "--input", task]);
    assert_eq!(direct.status.code(), Some(1), "{direct:?}");
    let direct = String::from_utf8_lossy(&direct.stderr).into_owned();
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("corral: task failed: "))
            .map(str::to_string)
    };
    assert!(line(&via).is_some(), "{via}");
    assert_eq!(line(&via), line(&direct), "{via}\n{direct}");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// A one-shot task an operator cancels ends `cancelled` in the journal, as a service agent's
/// does (not `failed`).
#[test]
fn a_cancelled_one_shot_task_is_journalled_cancelled() {
    let d = start("");
    let out = d.ctl(&[
        "submit",
        "chaos",
        "--input",
        r#"{"do":"sleep_ms","ms":60000}"#,
    ]);
    assert!(out.status.success(), "{out:?}");
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Under way once the journal has its attempt.
    let config = d.fx.config.to_str().expect("utf-8").to_string();
    loop {
        let shown = corral(&["show", &run_id, "--json", "--config", &config]);
        let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        if run["calls"][0]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.ctl(&["cancel", &run_id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.ended_status(&run_id), "cancelled");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// One daemon per state directory: a second one on it is refused before it touches anything
/// (it would resume the first one's plan runs), whatever socket it was given.
#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let d = start("");
    let text = std::fs::read_to_string(&d.fx.config).expect("config");
    let other = d.fx.dir.path().join("other.toml");
    let sock = d.fx.dir.path().join("other.sock");
    std::fs::write(
        &other,
        text.replacen(
            "[supervisor]\n",
            &format!("[supervisor]\ncontrol_socket = \"{}\"\n", sock.display()),
            1,
        ),
    )
    .expect("write");
    let out = corral(&["serve", "--config", other.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another corral serve runs on state_dir")
            && err.contains(&format!("(pid {})", d.child.id())),
        "{err}"
    );
    assert!(!sock.exists(), "it bound nothing");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// Submit a plan of one node sleeping a minute: its run id, and the file the daemon keeps to
/// resume it.
fn submit_long_plan(d: &Daemon) -> (String, PathBuf) {
    let plan = d.fx.dir.path().join("long.toml");
    std::fs::write(
        &plan,
        "[plan]\nname = \"long\"\n[[node]]\nid = \"wait\"\nagent = \"chaos\"\n\
         input = { do = \"sleep_ms\", ms = 60000 }\n",
    )
    .expect("plan");
    let out = d.ctl(&["submit", "--plan", plan.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let remembered = d.fx.dir.path().join(format!("state/plans/{run_id}.json"));
    (run_id, remembered)
}

/// A plan run an operator cancelled is not left for the next daemon to resume (a drain's is).
#[test]
fn a_cancelled_plan_run_is_not_resumed_by_the_next_daemon() {
    let d = start("");
    let (run_id, remembered) = submit_long_plan(&d);
    assert!(remembered.is_file(), "remembered while it runs");
    let out = d.ctl(&["cancel", &run_id]);
    assert!(out.status.success(), "{out:?}");
    let config = d.fx.config.to_str().expect("utf-8").to_string();
    loop {
        let shown = corral(&["show", &run_id, "--json", "--config", &config]);
        let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        if run["status"].as_str().is_some_and(|s| s != "running") {
            assert_eq!(run["status"], "interrupted", "{run}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The file goes as the run's task ends, just after its end is journalled (not a timing
    // assertion: a generous bound, so that a file left behind fails instead of hanging).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while remembered.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !remembered.exists(),
        "a cancelled run is not left to be resumed"
    );
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// A plan run the next daemon resumed is under way like any: `status` counts it and `cancel`
/// stops it (for good: it is not left for another resume).
#[test]
fn a_resumed_plan_run_can_be_seen_and_cancelled() {
    let mut d = start("");
    let (run_id, remembered) = submit_long_plan(&d);
    d.signal(libc::SIGTERM);
    d.wait_for("STOPPING=1");
    assert_eq!(d.child.wait().expect("wait daemon").code(), Some(0));
    assert!(remembered.is_file(), "left for the next daemon");
    let fx = d.fx;
    std::fs::remove_file(fx.dir.path().join("notify.sock")).expect("rm notify socket");
    let d = start_on(fx);
    // Resumed in the background once the daemon is ready: cancelled as soon as it is known.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = d.ctl(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        if doc["runs"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < until, "never under way: {doc}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.ctl(&["cancel", &run_id]);
    assert!(out.status.success(), "{out:?}");
    while remembered.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!remembered.exists(), "cancelled for good");
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

/// A plan run under way when the daemon stops is resumed by the next daemon: only the
/// instances that had not finished run again, and the run ends in the journal.
#[test]
fn a_plan_run_left_by_a_stopped_daemon_is_resumed_by_the_next() {
    let d = start("");
    let plan = d.fx.dir.path().join("slow.toml");
    std::fs::write(
        &plan,
        "[plan]\nname = \"slow\"\nmax_parallel = 2\n[[node]]\nid = \"work\"\nagent = \"chaos\"\n\
         for_each = \"$input\"\ninput = { do = \"sleep_ms\", ms = \"$item\" }\n",
    )
    .expect("plan");
    let items = serde_json::to_string(&vec![300; 8]).expect("json");
    let out = d.ctl(&[
        "submit",
        "--plan",
        plan.to_str().expect("utf-8"),
        "--input",
        &items,
    ]);
    assert!(out.status.success(), "{out:?}");
    let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let config = d.fx.config.to_str().expect("utf-8").to_string();
    // Stop the daemon once some instances are checkpointed, not all.
    loop {
        let shown = corral(&["show", &run_id, "--json", "--config", &config]);
        let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        let done = run["calls"]
            .as_array()
            .map(|c| c.iter().filter(|c| !c["output"].is_null()).count())
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut d = d;
    d.signal(libc::SIGTERM);
    d.wait_for("STOPPING=1");
    let status = d.child.wait().expect("wait daemon");
    assert_eq!(status.code(), Some(0));
    let shown = corral(&["show", &run_id, "--json", "--config", &config]);
    let before: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_ne!(
        before["status"], "succeeded",
        "stopped before the run ended"
    );
    let fx = d.fx;
    std::fs::remove_file(fx.dir.path().join("notify.sock")).expect("rm notify socket");
    let d = start_on(fx);
    // The run ends in the journal, every instance once with an output.
    let run = loop {
        let shown = corral(&["show", &run_id, "--json", "--config", &config]);
        let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        if run["status"] == "succeeded" {
            break run;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let with_output: Vec<u64> = run["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| !c["output"].is_null())
        .filter_map(|c| {
            c["events"]
                .as_array()?
                .iter()
                .find(|e| e["kind"] == "node")?["payload"]["index"]
                .as_u64()
        })
        .collect();
    let mut sorted = with_output.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, (0..8).collect::<Vec<u64>>(), "{run}");
    assert_eq!(
        with_output.len(),
        8,
        "no finished instance ran twice: {run}"
    );
    let (code, _) = d.term();
    assert_eq!(code, 0);
}

impl Daemon {
    /// `corral status --json`.
    fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(out.status.success(), "status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status --json parses")
    }

    /// Wait until the daemon holds `queued` tasks waiting and `running` tasks on agents.
    fn wait_tasks(&self, queued: u64, running: u64) {
        loop {
            let s = self.status();
            if s["tasks"]["queued"] == queued && s["tasks"]["running"] == running {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of `agent`'s one ready instance, once it is not one of `except`.
    fn ready_pid(&self, agent: &str, except: &[i64]) -> i64 {
        loop {
            let pid = self
                .ps()
                .iter()
                .find(|r| r["agent"] == agent && r["state"] == "ready")
                .and_then(|r| r["pid"].as_i64());
            if let Some(p) = pid.filter(|p| !except.contains(p)) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `corral submit AGENT --input INPUT --wait --json`, left running.
    fn submit_waiting(&self, agent: &str, input: &str) -> Child {
        let sock = self.fx.dir.path().join("state/control.sock");
        Command::new(bin("corral"))
            .args([
                "submit", agent, "--input", input, "--wait", "--json", "--socket",
            ])
            .arg(&sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("submit")
    }

    /// The run id of the journalled task of `agent` whose input is `input`, once journalled.
    fn run_of(&self, agent: &str, input: &serde_json::Value) -> String {
        let config = self.fx.config.to_str().expect("utf-8").to_string();
        loop {
            let runs = corral(&["runs", "--json", "--agent", agent, "--config", &config]);
            let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap_or_default();
            for r in runs.as_array().into_iter().flatten() {
                let id = r["run_id"].as_str().unwrap_or_default();
                let shown = corral(&["show", id, "--json", "--config", &config]);
                let shown: serde_json::Value =
                    serde_json::from_slice(&shown.stdout).unwrap_or_default();
                if shown["calls"][0]["input"] == *input {
                    return id.to_string();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The journal's status of run `run_id`, once it ended.
    fn ended_status(&self, run_id: &str) -> String {
        let config = self.fx.config.to_str().expect("utf-8").to_string();
        loop {
            let shown = corral(&["show", run_id, "--json", "--config", &config]);
            let shown: serde_json::Value =
                serde_json::from_slice(&shown.stdout).unwrap_or_default();
            match shown["status"].as_str() {
                Some("running") | None => std::thread::sleep(Duration::from_millis(50)),
                Some(s) => return s.to_string(),
            }
        }
    }
}

/// What a `submit --wait --json` client printed and its exit code.
fn waited(c: Child) -> (Option<i32>, serde_json::Value) {
    let out = c.wait_with_output().expect("wait client");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (out.status.code(), doc)
}

/// `corral cancel` of tasks on a service agent: one waiting in the queue is answered
/// `cancelled` at once (its agent never sees it), one running is sent `Cancel` (an agent that
/// answers keeps its process), one whose agent ignores the `Cancel` has its process stopped
/// after `kill_grace` and restarted. Each ends `cancelled` for its waiting client and in the
/// journal.
#[test]
fn cancel_a_service_task_queued_running_and_ignored() {
    let d = start(&format!(
        "[agents.slow]\ncommand = [\"{}\"]\nservice = true\nkill_grace = \"500ms\"\n\
         wall_time = \"120s\"\nstall_timeout = \"120s\"\n",
        bin("chaos").display()
    ));
    let pid = d.ready_pid("slow", &[]);
    let honours = serde_json::json!({"do": "wait_cancel"});
    let queued = serde_json::json!({"do": "ok"});
    let a = d.submit_waiting("slow", &honours.to_string());
    d.wait_tasks(0, 1);
    let b = d.submit_waiting("slow", &queued.to_string());
    d.wait_tasks(1, 1);
    let (run_a, run_b) = (d.run_of("slow", &honours), d.run_of("slow", &queued));

    // Queued: answered at once, while the agent still holds the first task.
    let out = d.ctl(&["cancel", &run_b]);
    assert!(out.status.success(), "{out:?}");
    let ack: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ack["was"], "queued", "{ack}");
    let (code, doc) = waited(b);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["kind"], "cancelled", "{doc}");
    assert!(doc["output"].is_null(), "{doc}");
    d.wait_tasks(0, 1);

    // Running, and the agent answers the Cancel: same process afterwards.
    let out = d.ctl(&["cancel", &run_a]);
    let ack: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ack["was"], "running", "{ack}");
    let (code, doc) = waited(a);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["kind"], "cancelled", "{doc}");
    assert_eq!(
        d.ready_pid("slow", &[]),
        pid,
        "the agent answered: not restarted"
    );

    // Running, and the agent ignores the Cancel: stopped, restarted with a new pid.
    let ignores = serde_json::json!({"do": "stall", "n": 1});
    let c = d.submit_waiting("slow", &ignores.to_string());
    d.wait_tasks(0, 1);
    let run_c = d.run_of("slow", &ignores);
    let out = d.ctl(&["cancel", &run_c]);
    assert!(out.status.success(), "{out:?}");
    let (code, doc) = waited(c);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["kind"], "cancelled", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("kill_grace")),
        "{doc}"
    );
    let new_pid = d.ready_pid("slow", &[pid]);
    assert!(!alive(pid as i32), "the agent that ignored Cancel is gone");
    let row = d
        .ps()
        .into_iter()
        .find(|r| r["agent"] == "slow")
        .expect("a row");
    assert_eq!(row["pid"], new_pid);
    assert_eq!(row["restarts"], 1, "{row}");
    assert_eq!(row["last_exit_reason"], "cancelled", "{row}");

    // The journal says so for each.
    for run in [&run_a, &run_b, &run_c] {
        assert_eq!(d.ended_status(run), "cancelled", "run {run}");
    }
    // A task that ended cannot be cancelled.
    let out = d.ctl(&["cancel", &run_a]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_run"));
    let (code, err) = d.term();
    assert_eq!(code, 0, "{err}");
}

/// A task that kills every instance it meets is retried `max_retries` times in all, not that
/// many times per instance: with two instances and one retry, it runs twice.
#[test]
fn a_poison_task_is_retried_max_retries_times_across_instances() {
    let d = start(&format!(
        "[agents.poison]\ncommand = [\"{}\"]\nservice = true\ninstances = 2\n\
         restart = \"always\"\nmax_retries = 1\n\
         backoff = {{ initial = \"0ms\", max = \"0ms\", jitter = 0.0 }}\n",
        bin("chaos").display()
    ));
    let rows = |d: &Daemon| -> Vec<serde_json::Value> {
        d.ps()
            .into_iter()
            .filter(|r| r["agent"] == "poison")
            .collect()
    };
    let settled = |d: &Daemon, restarts: u64| loop {
        let rows = rows(d);
        let sum: u64 = rows.iter().filter_map(|r| r["restarts"].as_u64()).sum();
        if rows.len() == 2 && rows.iter().all(|r| r["state"] == "ready") && sum >= restarts {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(settled(&d, 0), 0);
    let (code, doc) = waited(d.submit_waiting("poison", r#"{"do":"crash"}"#));
    assert_eq!(code, Some(1), "{doc}");
    assert!(doc["output"].is_null(), "{doc}");
    assert!(!doc["error"].is_null(), "{doc}");
    // Each death is counted before its instance is ready again: once both are, the count is
    // final.
    assert_eq!(
        settled(&d, 2),
        2,
        "the task ran more than twice: {:?}",
        rows(&d)
    );
    let (code, err) = d.term();
    assert_eq!(code, 0, "{err}");
}
