//! Foundation: one agent supervised end to end, through the real `corral` binary.
//! Each exit reason the foundation detects is asserted on the `--json` record.

use corral_e2e::*;

#[test]
fn echo_round_trip_prints_the_output() {
    let fx = fixture("");
    let out = corral(&[
        "call",
        "echo",
        "--config",
        fx.config.to_str().unwrap(),
        "--input",
        r#"{"msg":"hi","n":[1,2.5,null]}"#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"msg":"hi","n":[1,2.5,null]}));
}

#[test]
fn completed_record_has_every_field() {
    let fx = fixture("");
    let c = call_json(&fx, "echo", r#"{"x":1}"#);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(c.doc["output"], serde_json::json!({"x":1}));
    let a = c.last();
    assert_eq!(a["reason"], "completed");
    assert_eq!(a["agent"], "echo");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["decision"], "none");
    assert!(a["pid"].as_u64().unwrap() > 1);
    for key in [
        "started_at",
        "ended_at",
        "duration_ms",
        "exit_code",
        "signal",
        "core_dumped",
        "cpu_user_ms",
        "cpu_sys_ms",
        "max_rss_kb",
        "error",
        "stderr_tail",
    ] {
        assert!(a.get(key).is_some(), "exit record lacks `{key}`: {a}");
    }
    assert!(
        a["max_rss_kb"].as_u64().unwrap() > 0,
        "rusage was read: {a}"
    );
    // A completed agent exits by itself on Shutdown.
    assert_eq!(a["exit_code"], 0, "{a}");
    assert!(!alive(a["pid"].as_i64().unwrap() as i32));
}

#[test]
fn agent_error_is_structured_and_not_retried_when_not_retryable() {
    let fx = fixture("");
    let c = call_json(&fx, "chaos", r#"{"do":"fail","retryable":false}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["agent_error"]);
    let e = &c.last()["error"];
    assert_eq!(e["kind"], "chaos");
    assert_eq!(e["retryable"], false);
    assert_eq!(c.last()["decision"], "abort");
    assert!(c.doc["output"].is_null());
}

#[test]
fn exit_code_is_recorded() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(&fx, "chaos", r#"{"do":"exit","code":3}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["exit_code"]);
    assert_eq!(c.last()["exit_code"], 3);
    assert!(c.last()["signal"].is_null());
}

#[test]
fn signal_death_keeps_the_signal() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(&fx, "chaos", r#"{"do":"crash"}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["signal"]);
    assert_eq!(c.last()["signal"], libc::SIGABRT);
    assert_eq!(c.last()["signal_name"], "SIGABRT");
    assert!(c.last()["exit_code"].is_null());
    assert_eq!(
        c.last()["signals_sent"],
        serde_json::json!([]),
        "corral sent no signal"
    );
}

#[test]
fn startup_timeout_when_no_ready() {
    let fx = fixture(
        r#"
[agents.mute]
command = ["sleep", "30"]
startup_timeout = "300ms"
max_retries = 0
"#,
    );
    let c = call_json(&fx, "mute", "null");
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["startup_timeout"]);
    let a = c.last();
    assert_eq!(a["phase"], "starting");
    assert_eq!(a["signals_sent"][0], "SIGTERM");
    assert_eq!(a["signal"], libc::SIGTERM);
    assert!(!alive(a["pid"].as_i64().unwrap() as i32));
}

#[test]
fn spawn_failed_names_the_cause() {
    let fx = fixture(
        r#"
[agents.ghost]
command = ["/nonexistent/agent-binary"]
"#,
    );
    let c = call_json(&fx, "ghost", "null");
    assert_eq!(c.code, 1);
    assert_eq!(
        c.reasons(),
        ["spawn_failed"],
        "spawn failures are not retried"
    );
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("/nonexistent/agent-binary") && msg.contains("No such file"),
        "{msg}"
    );
    assert!(c.last()["pid"].is_null());
}

#[test]
fn garbage_frame_is_a_protocol_violation() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(&fx, "chaos", r#"{"do":"garbage"}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["protocol_violation"]);
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(msg.contains("undecodable"), "{msg}");
    assert!(!alive(c.last()["pid"].as_i64().unwrap() as i32));
}

#[test]
fn huge_frame_is_refused_before_allocating() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(&fx, "chaos", r#"{"do":"huge_frame"}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["protocol_violation"]);
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("4294967295") && msg.contains("exceeds"),
        "{msg}"
    );
}

#[test]
fn contract_violation_on_input_names_the_field() {
    let fx = fixture("");
    let c = call_json(&fx, "shout", r#"{"text":7}"#);
    assert_eq!(c.code, 1);
    assert_eq!(
        c.reasons(),
        ["contract_violation"],
        "bad input is never retried"
    );
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("input.text:"), "{msg}");
}

#[test]
fn contract_violation_on_output_names_the_field() {
    let fx = fixture("");
    let c = call_json(&fx, "shout", r#"{"text":"a","lie":true}"#);
    assert_eq!(c.code, 1);
    assert_eq!(c.reasons(), ["contract_violation"]);
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("output.shout: expected string"), "{msg}");
    let ok = call_json(&fx, "shout", r#"{"text":"a"}"#);
    assert_eq!(ok.doc["output"], serde_json::json!({"shout":"A"}));
}

#[test]
fn config_errors_show_file_line_col_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[supervisor]\n\n[agents.x]\ncommand = [\"a\"]\nhearbeat_timeout = \"1s\"\n",
    )
    .unwrap();
    let out = corral(&["validate", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Every problem, in file order: the program `a` (line 4), then the misspelt key.
    assert!(
        err.starts_with(&format!("{}:4:12:", bad.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:5:1: unknown key `hearbeat_timeout`",
            bad.display()
        )),
        "{err}"
    );

    std::fs::write(&bad, "[defaults]\nmemory = \"12 parsecs\"\n").unwrap();
    let out = corral(&["call", "x", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:2:10:", bad.display())),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let fx = fixture("");
    let out = corral(&[
        "call",
        "echo",
        "--config",
        fx.config.to_str().unwrap(),
        "--input",
        "{not json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = corral(&["call", "nobody", "--config", fx.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named `nobody`"));
    let out = corral(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sdk_outside_corral_says_so_and_exits_2() {
    let out = std::process::Command::new(bin("echo")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("start it under corral"), "{err}");
}

#[test]
fn demo_runs_a_real_plan() {
    let out = corral(&["demo"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The retried crash, the hang killed and retried, the optional failure, the readers.
    for line in [
        "catalog    succeeded  attempts: signal → completed",
        "style      succeeded  attempts: hung → completed",
        "spelling   skipped    attempts: agent_error",
        "30 isolated readers",
        "ended degraded",
        "\"files\": 30",
    ] {
        assert!(text.contains(line), "demo output lacks {line:?}:\n{text}");
    }
    // The run it names is in the journal.
    let run_id = text
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split(' ').next())
        .expect("the run's id");
    let shown = corral(&["show", run_id, "--json"]);
    assert_eq!(shown.status.code(), Some(0), "{shown:?}");
    let run: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(run["status"], "degraded");
    assert_eq!(run["calls"].as_array().map(Vec::len), Some(35));
}

#[test]
fn demo_chaos_runs_real_agents() {
    let out = corral(&["demo", "--chaos"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for reason in [
        "completed",
        "agent_error",
        "exit_code",
        "signal",
        "protocol_violation",
        "hung",
    ] {
        assert!(text.contains(reason), "demo output lacks {reason}:\n{text}");
    }
    // The memory hog is OOM-killed where a cgroup enforces memory.
    let cg = corral::sandbox::cgroup::Cgroups::detect();
    let mem = corral::sandbox::cgroup::CgroupLimits {
        memory: Some(1 << 20),
        pids: None,
        cpu_quota: None,
    };
    if cg.unenforceable(&mem).is_empty() {
        assert!(text.contains("oom_killed"), "{text}");
    } else {
        skip_or_fail("demo: no memory cgroup, so no oom_killed row");
    }
}

#[test]
fn handler_panic_becomes_a_structured_error() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(&fx, "chaos", r#"{"do":"panic"}"#);
    assert_eq!(c.reasons(), ["agent_error"]);
    let e = &c.last()["error"];
    assert_eq!(e["kind"], "panic");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("panicking on request"),
        "{e}"
    );
    assert!(
        c.last()["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "the panic message reaches the log"
    );
}

#[test]
fn tool_calls_not_granted_are_denied_and_traced() {
    let fx = fixture_with_defaults("max_retries = 0", "");
    let c = call_json(
        &fx,
        "chaos",
        r#"{"do":"tool","name":"search","args":{"q":"x"}}"#,
    );
    assert_eq!(c.reasons(), ["agent_error"]);
    assert_eq!(c.last()["error"]["kind"], "permission_denied");
    let trace = &c.last()["tool_calls"];
    assert_eq!(trace[0]["tool"], "search");
    assert_eq!(trace[0]["ok"], false);
    assert_eq!(trace[0]["error_kind"], "permission_denied");
}

#[test]
fn sigterm_to_corral_stops_the_agent_and_still_records_it() {
    a_signal_to_corral_stops_the_agent_and_still_records_it(libc::SIGTERM);
}

/// The terminal went away: as SIGTERM (no attempt left without its record).
#[test]
fn sighup_to_corral_stops_the_agent_and_still_records_it() {
    a_signal_to_corral_stops_the_agent_and_still_records_it(libc::SIGHUP);
}

fn a_signal_to_corral_stops_the_agent_and_still_records_it(sig: i32) {
    use std::io::BufRead;
    let fx = fixture_with_defaults("max_retries = 0\nheartbeat_timeout = \"60s\"", "");
    let mut child = std::process::Command::new(bin("corral"))
        .args([
            "-v",
            "call",
            "chaos",
            "--config",
            fx.config.to_str().unwrap(),
            "--input",
            r#"{"do":"hang"}"#,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The agent logs what it is about to do: once that line is out, it is working on the task.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("chaos: hang") {
        line.clear();
    }
    assert!(
        line.contains("chaos: hang"),
        "the agent never started its task"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &doc["attempts"][0];
    assert_eq!(a["reason"], "shutdown", "{a}");
    assert!(!alive(a["pid"].as_i64().unwrap() as i32));
}

/// An agent in another language, written from `docs/protocol.md` alone.
fn python_agent(extra_args: &str) -> Option<Fixture> {
    let python = std::path::Path::new("/usr/bin/python3");
    if !python.exists() {
        skip_or_fail("/usr/bin/python3 is not installed");
        return None;
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/agent.py");
    Some(fixture(&format!(
        "[agents.py]\ncommand = [\"/usr/bin/python3\", \"{}\"{extra_args}]\nmax_retries = 0\n",
        script.display()
    )))
}

#[test]
fn an_agent_in_python_speaks_the_protocol() {
    let Some(fx) = python_agent("") else { return };
    let c = call_json(&fx, "py", r#"{"anything":[1,2]}"#);
    assert_eq!(c.code, 0, "{}\n{}", c.stderr, c.doc);
    assert_eq!(
        c.doc["output"],
        serde_json::json!({"lang":"python","task":1})
    );
    assert_eq!(c.reasons(), ["completed"]);
    assert_eq!(c.last()["exit_code"], 0, "it exits on Shutdown");
}

#[test]
fn a_protocol_version_mismatch_names_both_versions() {
    let Some(fx) = python_agent(", \"--protocol\", \"99\"") else {
        return;
    };
    let c = call_json(&fx, "py", "null");
    assert_eq!(c.reasons(), ["protocol_violation"]);
    let msg = c.last()["error"]["message"].as_str().unwrap();
    assert!(msg.contains("v1") && msg.contains("v99"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_no_agent_could_decode_is_refused_before_any_process() {
    let (_fx, s) = sup_with("", "");
    // 200 levels of lists: past the protocol's nesting limit of 128.
    let mut deep = serde_json::json!(null);
    for _ in 0..200 {
        deep = serde_json::json!([deep]);
    }
    // 17 MiB of text: past the default max_frame of 16 MiB.
    let big = serde_json::json!({ "text": "x".repeat(17 << 20) });
    for (input, why) in [
        (deep, "nesting deeper than 128"),
        (big, "more than max_frame"),
    ] {
        let o = s
            .call(
                "echo",
                corral_proto::Value::from_json(&input),
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(o.attempts.len(), 1);
        let a = &o.attempts[0];
        assert_eq!(a.reason, corral::ExitReason::ContractViolation);
        assert_eq!(a.pid, None, "no process was made");
        let msg = &a.error.as_ref().unwrap().message;
        assert!(msg.contains(why), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_max_frame_with_its_memory_ends_as_a_contract_violation() {
    // The input alone fits (10 MiB); with the memory handed down (10 MiB more) the Task frame
    // would pass the 16 MiB the agent was told in Hello: it is refused, not sent.
    let (_fx, s) = sup_with("", "");
    let text = |n: usize| corral_proto::Value::String("x".repeat(n));
    let opts = corral::CallOptions {
        memory: vec![text(10 << 20)],
        ..Default::default()
    };
    let input = corral_proto::Value::map([("text", text(10 << 20))]);
    let o = s.call("echo", input, opts).await.unwrap();
    assert_eq!(o.attempts.len(), 1, "{:?}", o.attempts);
    let a = &o.attempts[0];
    assert_eq!(a.reason, corral::ExitReason::ContractViolation);
    assert!(a.pid.is_some(), "refused after the handshake");
    let msg = &a.error.as_ref().unwrap().message;
    assert!(msg.contains("more than max_frame"), "{msg}");
}
