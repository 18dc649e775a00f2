//! The journal end to end: `corral call` journals every run; `corral runs`, `show` and `replay`
//! read it back; a supervisor killed at random points loses no finished attempt and leaves the
//! rest `lost`; a corrupt database is refused with a clear error.

use corral_e2e::{call_json, corral, fixture, Fixture};
use serde_json::{json, Value as J};
use std::process::{Command, Stdio};

fn cfg(fx: &Fixture) -> &str {
    fx.config.to_str().expect("utf-8 path")
}

fn json_of(out: &std::process::Output) -> J {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn show(fx: &Fixture, run_id: &str) -> J {
    let out = corral(&["show", run_id, "--config", cfg(fx), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    json_of(&out)
}

fn runs(fx: &Fixture, extra: &[&str]) -> Vec<J> {
    let mut args = vec!["runs", "--config", cfg(fx), "--json"];
    args.extend_from_slice(extra);
    let out = corral(&args);
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    json_of(&out).as_array().cloned().expect("a list of runs")
}

#[test]
fn a_call_is_journalled_and_shown() {
    let fx = fixture("");
    let ok = call_json(&fx, "echo", r#"{"hello":"world"}"#);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let run_id = ok.doc["run_id"].as_str().expect("run_id").to_string();
    let bad = call_json(&fx, "chaos", r#"{"do":"fail","retryable":true}"#);
    assert_eq!(bad.code, 1);
    let bad_id = bad.doc["run_id"].as_str().expect("run_id").to_string();

    let all = runs(&fx, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    // Newest first.
    assert_eq!(all[0]["run_id"], J::from(bad_id.clone()));
    assert_eq!(all[0]["status"], "failed");
    assert_eq!(all[0]["agent"], "chaos");
    assert_eq!(all[0]["attempts"], J::from(bad.attempts().len()));
    assert_eq!(all[1]["status"], "succeeded");
    for r in &all {
        assert!(
            r["started_at"].is_string() && r["ended_at"].is_string(),
            "{r}"
        );
    }
    let only = runs(&fx, &["--status", "succeeded"]);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["run_id"], J::from(run_id.clone()));
    assert_eq!(runs(&fx, &["--agent", "chaos"]).len(), 1);
    assert_eq!(runs(&fx, &["--limit", "1"]).len(), 1);

    let run = show(&fx, &run_id);
    assert_eq!(run["status"], "succeeded");
    let call = &run["calls"][0];
    assert_eq!(call["agent"], "echo");
    assert_eq!(call["input"], serde_json::json!({"hello":"world"}));
    assert_eq!(call["memory"], serde_json::json!([]));
    assert_eq!(call["output"], ok.doc["output"]);
    // The records shown are the records printed.
    assert_eq!(call["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(call["attempts"][0]["reason"], "completed");
    assert_eq!(call["attempts"][0]["pid"], ok.last()["pid"]);
    // The contract the agent declared is kept with the attempt.
    let events = call["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["kind"] == "contract"), "{events:?}");

    let failed = show(&fx, &bad_id);
    let attempts = failed["calls"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), bad.attempts().len());
    let decisions: Vec<&str> = attempts
        .iter()
        .map(|a| a["decision"].as_str().unwrap_or("?"))
        .collect();
    // Given up (the same input failing twice is quarantined).
    assert!(
        matches!(decisions.last(), Some(&"abort") | Some(&"quarantine")),
        "{decisions:?}"
    );
    assert!(decisions[..decisions.len() - 1]
        .iter()
        .all(|d| *d == "retry"));
    assert_eq!(failed["calls"][0]["error"]["kind"], "chaos");

    // Readable on a terminal: the reason and the output are in it.
    let out = corral(&["show", &run_id, "--config", cfg(&fx)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("completed") && text.contains("hello"),
        "{text}"
    );
}

#[test]
fn unknown_runs_are_one_line_and_exit_2() {
    let fx = fixture("");
    for verb in ["show", "replay"] {
        let out = corral(&[verb, "r-nope", "--config", cfg(&fx)]);
        assert_eq!(out.status.code(), Some(2), "{verb}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("r-nope"), "{err}");
    }
}

#[test]
fn tool_calls_are_journalled_in_order_with_their_answers() {
    let fx = fixture("");
    let input = r#"{"do":"tools","calls":[{"tool":"t.one","args":{"a":1}},{"tool":"t.two","args":[true,"x"]}]}"#;
    let called = call_json(&fx, "chaos", input);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    let run = show(&fx, &run_id);
    let calls = run["calls"][0]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["seq"], 1);
    assert_eq!(calls[0]["tool"], "t.one");
    assert_eq!(calls[0]["args"], serde_json::json!({"a":1}));
    assert_eq!(calls[1]["seq"], 2);
    assert_eq!(calls[1]["args"], serde_json::json!([true, "x"]));
    // Refused here (no tool is granted): the refusal is what was recorded, and what the
    // agent saw.
    let seen = &called.doc["output"]["results"];
    for (i, c) in calls.iter().enumerate() {
        assert_ne!(c["status"], "ok");
        assert_eq!(
            c["result"]["kind"], seen[i]["error"]["kind"],
            "{c} vs {seen}"
        );
    }
}

#[test]
fn replay_of_a_deterministic_run_is_identical() {
    let fx = fixture("");
    let input = r#"{"do":"tools","calls":[{"tool":"t.one","args":{"a":1}},{"tool":"t.one","args":{"a":2}}]}"#;
    let called = call_json(&fx, "chaos", input);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    let out = corral(&["replay", &run_id, "--config", cfg(&fx), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out)["identical"], true);
    // Replay is not journalled itself.
    assert_eq!(runs(&fx, &[]).len(), 1);
}

#[test]
fn replay_of_a_random_run_reports_the_output_divergence() {
    let fx = fixture("");
    let called = call_json(&fx, "chaos", r#"{"do":"random"}"#);
    assert_eq!(called.code, 0, "{}", called.stderr);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    let out = corral(&["replay", &run_id, "--config", cfg(&fx), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc = json_of(&out);
    assert_eq!(doc["identical"], false);
    let d = &doc["divergence"];
    assert_eq!(d["kind"], "output");
    assert_eq!(d["seq"], 1);
    assert_eq!(d["recorded"], called.doc["output"]);
    assert!(d["replayed"]["n"].is_i64(), "{d}");
    assert_ne!(d["replayed"], d["recorded"]);
    // Readably, on a terminal.
    let out = corral(&["replay", &run_id, "--config", cfg(&fx)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("diverged at output"), "{text}");
}

/// `corral call` killed with SIGKILL at random points, fifty times: the database opens after
/// each, every attempt whose record was printed is in it as printed, and what was under way
/// is `lost` (its run `interrupted`) once a supervisor starts again.
#[test]
fn kill_9_of_the_supervisor_loses_no_finished_attempt() {
    let fx = fixture("");
    let mut printed: Vec<J> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for i in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let input = if i % 3 == 0 {
            r#"{"do":"fail","retryable":true}"#.to_string()
        } else {
            format!(r#"{{"do":"sleep_ms","ms":{}}}"#, seed % 40)
        };
        let child = Command::new(corral_e2e::bin("corral"))
            .args([
                "call",
                "chaos",
                "--config",
                cfg(&fx),
                "--input",
                &input,
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn corral");
        // Kill after a random delay (0-150 ms), from its start to after its end.
        std::thread::sleep(std::time::Duration::from_millis(seed % 150));
        let pid = child.id() as i32;
        // SAFETY: kill of our own child, which is not reaped before wait_with_output.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let out = child.wait_with_output().expect("wait");
        if let Ok(doc) = serde_json::from_slice::<J>(&out.stdout) {
            printed.push(doc);
        }
        // The database opens cleanly after each kill.
        let list = corral(&["runs", "--config", cfg(&fx), "--json", "--limit", "1"]);
        assert_eq!(list.status.code(), Some(0), "after kill {i}: {list:?}");
    }
    // A supervisor starting (any call) marks what was left unfinished.
    assert_eq!(call_json(&fx, "echo", "1").code, 0);
    let all = runs(&fx, &["--limit", "1000"]);
    // A call killed before it journalled anything left no run; every other did.
    assert!(
        all.len() <= 51 && all.len() > printed.len(),
        "{} runs",
        all.len()
    );
    assert!(all.iter().all(|r| r["status"] != "running"), "{all:?}");
    for doc in &printed {
        let run_id = doc["run_id"].as_str().expect("run_id");
        let run = show(&fx, run_id);
        let kept = run["calls"][0]["attempts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let shown = doc["attempts"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            kept, shown,
            "run {run_id}: the journal lost or changed a printed record"
        );
    }
    let interrupted: Vec<&J> = all
        .iter()
        .filter(|r| r["status"] == "interrupted")
        .collect();
    for r in &interrupted {
        let run = show(&fx, r["run_id"].as_str().expect("run_id"));
        let attempts = run["calls"][0]["attempts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Only the attempt under way at the kill can be lost: those before it kept theirs.
        let lost: Vec<usize> = attempts
            .iter()
            .enumerate()
            .filter(|(_, a)| a["reason"] == "lost")
            .map(|(i, _)| i)
            .collect();
        assert!(lost.is_empty() || lost == [attempts.len() - 1], "{run}");
        assert!(attempts.iter().all(|a| a["reason"].is_string()), "{run}");
    }
    eprintln!(
        "{} of 50 printed their records before the kill; {} interrupted",
        printed.len(),
        interrupted.len()
    );
}

#[test]
fn a_corrupt_database_is_refused_naming_the_file() {
    let fx = fixture("");
    let state = fx.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let db = state.join("corral.db");
    std::fs::write(
        &db,
        b"this is not a database, it is a shopping list\n".repeat(100),
    )
    .expect("write");
    let before = std::fs::read(&db).expect("read");
    for args in [
        vec!["runs", "--config", cfg(&fx)],
        vec!["call", "echo", "--config", cfg(&fx), "--input", "1"],
    ] {
        let out = corral(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("corral.db"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(
        std::fs::read(&db).expect("read"),
        before,
        "user data rewritten"
    );
}

/// A recording whose tool calls differ from what the agent does now (here: its arguments
/// edited): replay stops at the first differing call, answers it `replay_divergence` (never
/// executing it), and says which call, what was recorded and what was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_the_first_differing_tool_call() {
    let (fx, sup) = corral_e2e::sup_with("", "");
    let input = r#"{"do":"tools","calls":[{"tool":"t.one","args":{"a":1}},{"tool":"t.two","args":{"b":2}}]}"#;
    let out = corral_e2e::call(&sup, "chaos", input).await;
    let journal = sup.journal().expect("journal on by default");
    journal.flush().await.expect("flush");
    let reader = journal.reader().expect("reader");
    let mut run = reader
        .run(&out.run_id)
        .expect("read")
        .expect("the run is journalled");
    // Same recording, as if the agent had once asked for {"b": 3} in its second call.
    run.calls[0].tool_calls[1].args = json!({"b": 3});
    let report = corral::replay::replay(&sup, &run).await.expect("replay");
    assert!(!report.identical);
    let d = report.divergence.expect("a divergence");
    assert_eq!((d.call, d.seq, d.kind), (1, 2, "tool_call"));
    assert_eq!(d.recorded, json!({"tool": "t.two", "args": {"b": 3}}));
    assert_eq!(d.replayed, json!({"tool": "t.two", "args": {"b": 2}}));
    // The unedited recording replays identically.
    let run = reader.run(&out.run_id).expect("read").expect("run");
    let report = corral::replay::replay(&sup, &run).await.expect("replay");
    assert!(report.identical, "{report:?}");
    drop(fx);
}

/// The state directory's file system full: the call fails with a clear reason (exit 2), and
/// nothing half-written is shown as complete.
#[test]
fn a_full_disk_fails_the_call_clearly() {
    let fx = fixture("");
    let state = fx.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    let c = std::ffi::CString::new(state.to_str().expect("utf-8")).expect("path");
    let fstype = std::ffi::CString::new("tmpfs").expect("c");
    let opts = std::ffi::CString::new("size=2m").expect("c");
    // SAFETY: mount with valid C strings, on a directory of this test's fixture.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        corral_e2e::skip_or_fail("cannot mount a tmpfs (not root?)");
        return;
    }
    // A first call makes the database; then the rest of the file system is filled.
    assert_eq!(call_json(&fx, "echo", "1").code, 0);
    let mut filler = std::fs::File::create(state.join("filler")).expect("filler");
    let block = vec![7u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100 * 1024));
    let out = corral(&[
        "call",
        "echo",
        "--config",
        cfg(&fx),
        "--input",
        &big,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("full") && err.contains("corral.db"), "{err}");
    assert!(out.stdout.is_empty(), "no outcome is printed as known");
    // Room again: the journal opens, and no run shows as complete that was not.
    std::fs::remove_file(state.join("filler")).expect("rm");
    for r in runs(&fx, &["--limit", "100"]) {
        if r["status"] == "succeeded" {
            let run = show(&fx, r["run_id"].as_str().expect("id"));
            assert!(
                run["calls"][0]["output"].is_object() || run["calls"][0]["output"].is_number(),
                "{run}"
            );
        }
    }
    // SAFETY: umount2 of the tmpfs mounted above.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// A repeated read answered from the run's trace is journalled as such.
#[test]
fn a_tool_call_served_from_the_trace_says_so() {
    let fx = corral_e2e::fixture(&format!(
        "[agents.reader]\ncommand = [\"{}\"]\ntools = [\"fs.list\"]\n",
        corral_e2e::bin("chaos").display()
    ));
    let input = r#"{"do":"tools","calls":[{"tool":"fs.list","args":{"path":"."}},{"tool":"fs.list","args":{"path":"."}}]}"#;
    let called = call_json(&fx, "reader", input);
    assert_eq!(called.code, 0, "{}", called.stderr);
    let run = show(&fx, called.doc["run_id"].as_str().expect("run_id"));
    let calls = run["calls"][0]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 2, "{run}");
    assert_eq!(calls[0]["status"], "ok", "{run}");
    assert_eq!(calls[0]["deduplicated"], false);
    assert_eq!(calls[1]["deduplicated"], true, "{run}");
    assert_eq!(calls[1]["result"], calls[0]["result"]);
}

#[test]
fn log_lines_are_journalled_in_order_by_level() {
    let fx = fixture("");
    let out = call_json(&fx, "chaos", r#"{"do":"frames","n":3000}"#);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = show(&fx, out.doc["run_id"].as_str().expect("run_id"));
    let events = run["calls"][0]["events"]
        .as_array()
        .expect("events")
        .clone();
    // Lines read together are one event per run of one level: `{level, lines}`.
    let logs: Vec<(String, Vec<String>)> = events
        .iter()
        .filter(|e| e["kind"] == "log")
        .map(|e| {
            let p = &e["payload"];
            let lines = p["lines"].as_array().expect("lines");
            (
                p["level"].as_str().expect("level").to_string(),
                lines
                    .iter()
                    .map(|l| l.as_str().expect("text").to_string())
                    .collect(),
            )
        })
        .collect();
    assert!(!logs.is_empty(), "{events:?}");
    // chaos says what it does (info), then sends its 3000 lines (trace), in that order.
    assert_eq!(
        logs[0],
        ("info".to_string(), vec!["chaos: frames".to_string()])
    );
    let rest = &logs[1..];
    assert!(rest.iter().all(|(level, _)| level == "trace"), "{logs:?}");
    let lines: Vec<&String> = rest.iter().flat_map(|(_, l)| l).collect();
    assert_eq!(lines.len(), 3000);
    assert!(lines.iter().all(|l| *l == "x"));
    // Gathered: fewer events than lines.
    assert!(rest.len() < 3000, "{}", rest.len());
    // The contract comes before the lines, as the frames came.
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let contract = kinds
        .iter()
        .position(|k| *k == "contract")
        .expect("contract");
    let first_log = kinds.iter().position(|k| *k == "log").expect("log");
    assert!(contract < first_log, "{kinds:?}");
}

/// A reader that leaves (`corral runs | head -1`) ends a verb quietly, as any Unix filter:
/// no panic, no backtrace.
#[test]
fn a_closed_stdout_ends_a_verb_quietly() {
    let fx = fixture("");
    let mut child = Command::new(corral_e2e::bin("corral"))
        .args(["runs", "--config", cfg(&fx)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Closed before the verb prints its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Supervisors that open one brand-new journal at once all start: the schema is made once (the
/// others wait for it, then find it done), and each one's run is journalled.
#[test]
fn supervisors_creating_one_journal_at_once_all_start() {
    for _ in 0..3 {
        let fx = fixture("");
        let calls: Vec<_> = (0..3)
            .map(|_| {
                Command::new(corral_e2e::bin("corral"))
                    .args(["call", "echo", "--config", cfg(&fx), "--input", "{}"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("corral call")
            })
            .collect();
        for c in calls {
            let out = c.wait_with_output().expect("wait");
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(runs(&fx, &[]).len(), 3);
    }
}

/// A failed call replays as identical only when it ended the same way: the same exit code,
/// not only the same reason.
#[test]
fn replay_compares_how_a_failed_call_ended() {
    let agent = |code: u8| {
        format!(
            "[agents.x]\ncommand = [\"/usr/bin/sh\", \"-c\", \"exit {code}\"]\nmax_retries = 0\n"
        )
    };
    let fx = fixture(&agent(3));
    let called = call_json(&fx, "x", "{}");
    assert_eq!(called.last()["exit_code"], 3, "{}", called.doc);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    let out = corral(&["replay", &run_id, "--config", cfg(&fx), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The same agent now exits 4.
    let text = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&fx.config, text.replace("exit 3", "exit 4")).unwrap();
    let out = corral(&["replay", &run_id, "--config", cfg(&fx), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let d = &json_of(&out)["divergence"];
    assert_eq!(d["kind"], "error");
    assert_eq!(d["recorded"]["exit_code"], 3, "{d}");
    assert_eq!(d["replayed"]["exit_code"], 4, "{d}");
}

/// An agent that cannot be started now is a replay that cannot be made (exit 2, saying why),
/// not a divergence of its tool calls.
#[test]
fn replay_of_an_agent_that_cannot_start_is_an_error() {
    let dir = corral_e2e::open_tempdir();
    let program = dir.path().join("agent");
    std::fs::copy(corral_e2e::bin("chaos"), &program).unwrap();
    let fx = fixture(&format!(
        "[agents.x]\ncommand = [\"{}\"]\n",
        program.display()
    ));
    let input = r#"{"do":"tools","calls":[{"tool":"t.one","args":{}}]}"#;
    let called = call_json(&fx, "x", input);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    std::fs::remove_file(&program).unwrap();
    let out = corral(&["replay", &run_id, "--config", cfg(&fx), "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be started"), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// An attempt under way is shown as one: its number, agent and start, no reason yet (not a
/// `null` in the list nor a made-up line).
#[test]
fn show_of_an_attempt_under_way() {
    use std::io::BufRead;
    let fx = fixture("");
    let mut child = Command::new(corral_e2e::bin("corral"))
        .args(["-v", "call", "chaos", "--config", cfg(&fx), "--input"])
        .arg(r#"{"do":"sleep_ms","ms":60000}"#)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corral call");
    // The agent logs what it is about to do: once that line is out, the attempt is under way.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("chaos: sleep_ms") {
        line.clear();
    }
    assert!(line.contains("chaos: sleep_ms"), "the agent never started");
    // The journal commits in batches of its own: the attempt's start is read back once it is
    // in the file (nothing outside the file tells when; bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let doc = loop {
        let listed = runs(&fx, &[]);
        if let Some(run_id) = listed.first().and_then(|r| r["run_id"].as_str()) {
            let doc = show(&fx, run_id);
            if doc["calls"][0]["attempts"][0].is_object() {
                break doc;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the attempt never reached the journal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let run_id = doc["run_id"].as_str().expect("run_id").to_string();
    let a = &doc["calls"][0]["attempts"][0];
    assert_eq!(a["attempt"], 1, "{doc}");
    assert_eq!(a["agent"], "chaos", "{doc}");
    assert_eq!(a["running"], true, "{doc}");
    assert!(a["reason"].is_null(), "{doc}");
    assert!(a["started_at"].is_string(), "{doc}");
    let out = corral(&["show", &run_id, "--config", cfg(&fx)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attempt 1 ·"), "{text}");
    assert!(text.contains("no end recorded"), "{text}");
    assert!(!text.contains("attempt 0"), "{text}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait");
}

/// An agent looping on tool calls cannot grow the journal without end: the first 4096 calls of
/// an attempt are kept, and one event says that the rest were not.
#[test]
fn the_tool_calls_journalled_per_attempt_are_bounded() {
    let fx = fixture("");
    let calls: Vec<J> = (0..4200)
        .map(|i| json!({"tool": "t.one", "args": {"i": i}}))
        .collect();
    let file = fx.dir.path().join("input.json");
    std::fs::write(&file, json!({"do": "tools", "calls": calls}).to_string()).unwrap();
    let called = call_json(&fx, "chaos", &format!("@{}", file.display()));
    assert_eq!(called.code, 0, "{}", called.stderr);
    let run_id = called.doc["run_id"].as_str().expect("run_id").to_string();
    let doc = show(&fx, &run_id);
    let call = &doc["calls"][0];
    assert_eq!(call["tool_calls"].as_array().map(Vec::len), Some(4096));
    let dropped: Vec<&J> = call["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "tool_calls_dropped")
        .collect();
    assert_eq!(dropped.len(), 1, "{:?}", call["events"]);
    assert_eq!(dropped[0]["payload"]["kept"], 4096);
    assert_eq!(dropped[0]["payload"]["from_seq"], 4097);
}
