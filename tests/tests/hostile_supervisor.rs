//! The supervisor stays bounded whatever an agent sends, and ends what it started even when
//! dropped. The `hostile_flood` agent speaks raw frames (it can leave fd 3 unread): tool calls
//! with huge names or arguments, floods of calls, of outstanding calls and of log frames full
//! of forged lines, a beat dated in the future. Assertions are on recorded facts: reasons,
//! messages, dropped counts, exit record sizes, the supervisor's peak resident set (from the
//! kernel's accounting of the `corral` process), the log text, and processes that are gone.

use corral::record::MAX_RECORD_BYTES;
use corral::AttemptEvent;
use corral::ExitReason;
use corral::{CallOptions, Supervisor};
use corral_e2e::*;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// How much a hostile agent may raise the supervisor's resident set over its baseline.
const RSS_GROWTH_KB: u64 = 32 * 1024;

/// The agent, with a wall_time as a backstop: a bound that does not hold shows as a
/// `deadline` (and its cost), not as a test that never ends.
fn hostile_agent() -> String {
    format!(
        "[agents.hostile]\ncommand = [\"{}\"]\nmax_retries = 0\nwall_time = \"5s\"\n",
        bin("hostile_flood").display()
    )
}

fn hostile_fixture(defaults: &str) -> Fixture {
    fixture_with_defaults(defaults, &hostile_agent())
}

/// One `corral call hostile --json` run.
struct Run {
    doc: serde_json::Value,
    stdout_len: usize,
    stderr: String,
    /// Peak resident set of the `corral` process, KiB (the kernel's `ru_maxrss` at its reap:
    /// the largest of it and what it reaped, the agent, which is far smaller).
    peak_kb: u64,
}

impl Run {
    fn last(&self) -> &serde_json::Value {
        self.doc["attempts"]
            .as_array()
            .and_then(|a| a.last())
            .expect("an attempt")
    }

    fn reason(&self) -> &str {
        self.last()["reason"].as_str().unwrap_or("?")
    }

    fn message(&self) -> &str {
        self.last()["error"]["message"].as_str().unwrap_or("")
    }

    /// No record over the cap, measured as compact JSON, nor the whole `--json` output.
    fn assert_records_bounded(&self) {
        for a in self.doc["attempts"].as_array().expect("attempts") {
            let size = serde_json::to_vec(a).expect("re-encode").len();
            assert!(size <= MAX_RECORD_BYTES, "a record of {size} bytes");
        }
        assert!(
            self.stdout_len <= MAX_RECORD_BYTES,
            "--json output of {} bytes",
            self.stdout_len
        );
    }

    /// The supervisor grew by at most [`RSS_GROWTH_KB`] over its baseline.
    fn assert_rss_bounded(&self) -> u64 {
        let base = baseline_kb();
        let growth = self.peak_kb.saturating_sub(base);
        eprintln!(
            "corral peak RSS {} KiB, baseline {base} KiB, growth {growth} KiB",
            self.peak_kb
        );
        assert!(
            growth <= RSS_GROWTH_KB,
            "the supervisor grew by {growth} KiB (peak {} KiB, baseline {base} KiB)",
            self.peak_kb
        );
        growth
    }
}

fn run(fx: &Fixture, input: &str, verbose: bool) -> Run {
    let mut cmd = Command::new(bin("corral"));
    if verbose {
        cmd.arg("-v");
    }
    let config = fx.config.to_str().expect("utf-8 path");
    cmd.args(["call", "hostile", "--config", config])
        .args(["--input", input, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run corral");
    let pid = child.id() as i32;
    let (mut out, mut err) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let errs = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let mut stdout = Vec::new();
    out.read_to_end(&mut stdout).expect("read --json output");
    let stderr = String::from_utf8_lossy(&errs.join().expect("stderr reader")).into_owned();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let doc = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "--json output is not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&stdout)
        )
    });
    Run {
        doc,
        stdout_len: stdout.len(),
        stderr,
        peak_kb: ru.ru_maxrss.max(0) as u64,
    }
}

/// The supervisor's peak with a well-behaved run of the same agent.
fn baseline_kb() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    *BASE.get_or_init(|| {
        let fx = hostile_fixture("");
        let r = run(&fx, r#"{"do":"ok"}"#, false);
        assert_eq!(r.reason(), "completed", "{}", r.doc);
        r.peak_kb
    })
}

#[test]
fn a_frame_of_millions_of_nulls_is_refused_before_it_grows_the_supervisor() {
    // 15 million nulls: 15 MB on the wire (under the 16 MiB max_frame), 480 MB if decoded.
    let fx = hostile_fixture("");
    let r = run(&fx, r#"{"do":"nulls","n":15000000}"#, false);
    assert_eq!(r.reason(), "protocol_violation", "{}", r.doc);
    assert!(r.message().contains("bytes of memory"), "{}", r.message());
    r.assert_records_bounded();
    r.assert_rss_bounded();
}

#[test]
fn a_flood_of_tool_calls_named_with_a_mebibyte_is_ended_at_the_first() {
    let fx = hostile_fixture("");
    let r = run(&fx, r#"{"do":"names","kb":1024,"n":0}"#, false);
    assert_eq!(r.reason(), "protocol_violation", "{}", r.doc);
    assert!(
        r.message()
            .contains("a tool call of 1048584 bytes (name and arguments, encoded)"),
        "{}",
        r.message()
    );
    assert_eq!(r.last()["tool_calls"].as_array().map(Vec::len), Some(0));
    r.assert_records_bounded();
    r.assert_rss_bounded();
}

#[test]
fn a_tool_name_over_256_bytes_is_a_violation_quoted_short() {
    let fx = hostile_fixture("");
    let r = run(&fx, r#"{"do":"names","kb":4,"n":0}"#, false);
    assert_eq!(r.reason(), "protocol_violation", "{}", r.doc);
    let m = r.message();
    assert!(m.contains("tool call 1 names a tool of 4096 bytes"), "{m}");
    assert!(m.contains("a tool name is at most 256 bytes"), "{m}");
    assert!(m.len() < 300, "the name is not echoed whole: {m}");
    r.assert_records_bounded();
}

#[test]
fn arguments_past_the_cap_are_refused_from_the_frame_header() {
    let fx = hostile_fixture("");
    let r = run(&fx, r#"{"do":"args","kb":4096}"#, false);
    assert_eq!(r.reason(), "protocol_violation", "{}", r.doc);
    assert!(
        r.message().contains("a tool call is at most 1048576 bytes"),
        "{}",
        r.message()
    );
    r.assert_records_bounded();
    r.assert_rss_bounded();
}

#[test]
fn an_agent_that_never_reads_its_answers_is_held_back_then_ended() {
    // Thousands of calls, each answered `denied`, none read: past 256 KiB of answers waiting,
    // corral stops reading the agent; a heartbeat_timeout later the attempt ends.
    let fx = hostile_fixture("");
    let r = run(&fx, r#"{"do":"calls","n":0}"#, false);
    assert_eq!(r.reason(), "protocol_violation", "{}", r.doc);
    assert!(
        r.message()
            .contains("the agent left more than 262144 bytes unread on its pipe (fd 3) for 1s"),
        "{}",
        r.message()
    );
    let a = r.last();
    let kept = a["tool_calls"].as_array().map(Vec::len).unwrap_or(0);
    let dropped = a["tool_calls_dropped"].as_u64().unwrap_or(0);
    assert_eq!(kept, 128, "the first and last 64 calls are kept");
    assert!(
        dropped > 1000,
        "{dropped} calls dropped from the record: the agent was read until it was held back"
    );
    r.assert_records_bounded();
    r.assert_rss_bounded();
}

#[test]
fn log_frames_count_against_log_limit_and_cannot_forge_a_line() {
    // 64 frames of 16 KiB of forged lines and escapes; 64 KiB may be printed: four frames.
    let fx = hostile_fixture("log_limit = \"64KiB\"");
    let r = run(&fx, r#"{"do":"logs","n":64,"kb":16}"#, true);
    assert_eq!(r.reason(), "completed", "{}", r.doc);
    let sent = r.doc["output"]["bytes"].as_u64().expect("bytes sent");
    assert_eq!(sent, 64 << 14);
    assert_eq!(
        r.last()["log_bytes_dropped"].as_u64(),
        Some(sent - (64 << 10)),
        "every byte past log_limit is counted"
    );
    let forged: Vec<&str> = r.stderr.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(forged.len(), 4, "one line per frame printed:\n{}", r.stderr);
    for line in &forged {
        assert!(
            line.contains("\\n2030-01-01T00:00:00.000000Z  INFO corral: FORGED by the agent\\r\\x1b[2J\\x1b[31m"),
            "{line}"
        );
    }
    assert!(
        !r.stderr.lines().any(|l| l.starts_with("2030-")),
        "a forged line starts a line"
    );
    assert!(
        !r.stderr.contains("\x1b[2J"),
        "the agent's escape reached the log"
    );
    assert!(
        !r.stderr.contains('\r'),
        "a carriage return reached the log"
    );
    r.assert_records_bounded();
    r.assert_rss_bounded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_64_outstanding_are_refused() {
    let (_fx, s) = sup_with("", &hostile_agent());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<corral::ToolRequest>(128);
    let broker = tokio::spawn(async move {
        let mut relayed = 0;
        while let Some(req) = rx.recv().await {
            relayed += 1;
            let _ = req.reply.send(Ok(corral_proto::Value::Null));
        }
        relayed
    });
    let opts = CallOptions {
        tools: Some(tx.into()),
        ..Default::default()
    };
    let o = s
        .call("hostile", input(r#"{"do":"outstanding","n":100}"#), opts)
        .await
        .expect("known agent");
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(
        output(&o)["kinds"],
        serde_json::json!({"ok": 64, "too_many_calls": 36})
    );
    let trace = &o.attempts[0].tool_calls;
    let refused = trace
        .iter()
        .filter(|t| t.error_kind.as_deref() == Some("too_many_calls"))
        .count();
    assert_eq!((trace.len(), refused), (100, 36));
    assert_eq!(
        broker.await.expect("broker"),
        64,
        "refused calls are not relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_keeps_the_first_and_last_64_calls_and_counts_the_rest() {
    let (_fx, s) = sup_with("", &hostile_agent());
    let o = call(&s, "hostile", r#"{"do":"calls","n":1000,"read":true}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(output(&o), serde_json::json!({"ok": 0, "err": 1000}));
    let a = &o.attempts[0];
    let ids: Vec<u64> = a.tool_calls.iter().map(|t| t.call_id).collect();
    let want: Vec<u64> = (1..=64).chain(937..=1000).collect();
    assert_eq!(ids, want);
    assert_eq!(a.tool_calls_dropped, 872);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_dated_in_the_future_does_not_hide_a_hang() {
    // Were the beat believed, the hang would be hidden until wall_time made it a deadline.
    let (_fx, s) = sup_with("heartbeat_timeout = \"400ms\"", &hostile_agent());
    let o = call(&s, "hostile", r#"{"do":"beat_future"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Hung], "{:?}", o.attempts);
    let a = &o.attempts[0];
    assert_eq!(a.progress, 7, "the beat was read: {a:?}");
    assert!(a.last_heartbeat_age_ms.unwrap_or(0) >= 400, "{a:?}");
}

/// A process and all its descendants, from `/proc/<pid>/task/*/children`.
fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// The directories of the attempt cgroups (`corral-*`) a process is in.
fn corral_cgroups(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if !path.contains("corral-") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            dirs.push(PathBuf::from("/sys/fs/cgroup").join(rel));
        } else {
            for c in controllers.split(',') {
                let c = c.trim_start_matches("name=");
                dirs.push(PathBuf::from("/sys/fs/cgroup").join(c).join(rel));
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Start `chaos` hanging, drop the call once it is ready, and check that its whole tree is
/// gone (no zombie either) once the reaper has done its work, and its cgroups with it.
async fn drop_mid_attempt(s: &Supervisor) -> (Vec<i32>, Vec<PathBuf>) {
    s.disable_prewarm();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = CallOptions {
        events: Some(tx),
        ..Default::default()
    };
    let mut call = Box::pin(s.call("chaos", input(r#"{"do":"hang"}"#), opts));
    let pid = loop {
        tokio::select! {
            o = &mut call => panic!("the call ended: {:?}", o.map(|o| o.attempts)),
            Some(ev) = rx.recv() => if let AttemptEvent::Ready { pid, .. } = ev { break pid },
        }
    };
    let procs = tree(pid);
    let cgroups = corral_cgroups(*procs.last().unwrap_or(&pid));
    assert!(procs.iter().all(|p| alive(*p)), "{procs:?}");
    drop(call);
    corral::sandbox::process::settled().await;
    for p in &procs {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} of the dropped attempt is still there (tree {procs:?})"
        );
    }
    for d in &cgroups {
        assert!(!d.exists(), "cgroup {} was left behind", d.display());
    }
    (procs, cgroups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_attempt_kills_and_reaps_its_agent_without_cgroups() {
    let fx = fixture_with_defaults("namespaces = []", "");
    let s = Supervisor::with_cgroups(load(&fx), None).expect("supervisor");
    let (procs, _) = drop_mid_attempt(&s).await;
    assert_eq!(procs.len(), 1, "chaos alone, no corral-init: {procs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_attempt_kills_its_whole_tree_and_cgroup() {
    // The default sandbox: a pid namespace (corral-init, then chaos) and a cgroup.
    let (_fx, s) = sup_with("", "");
    if s.cgroups()
        .is_none_or(|c| c.backend() == corral::sandbox::cgroup::Backend::None)
    {
        return skip_or_fail("no cgroups on this host");
    }
    let (procs, cgroups) = drop_mid_attempt(&s).await;
    if procs.len() < 2 {
        return skip_or_fail("no pid namespace (corral-init) here");
    }
    assert!(!cgroups.is_empty(), "the agent was in no attempt cgroup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_supervisor_kills_and_reaps_its_warm_stem() {
    let (_fx, s) = sup_with("", "");
    match s.prewarm("chaos").await {
        Ok(true) => {}
        other => return skip_or_fail(&format!("no warm stem here: {other:?}")),
    }
    let stems = s.prewarmed();
    assert_eq!(stems.len(), 1, "{stems:?}");
    let procs = tree(stems[0].1);
    assert!(procs.iter().all(|p| alive(*p)), "{procs:?}");
    drop(s);
    corral::sandbox::process::settled().await;
    for p in &procs {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} of the warm stem is still there"
        );
    }
}
