//! Plans end to end: `corral run` on real agents — fan-out, hand-offs, memory, caps, failure
//! policies, validation, and resume after `kill -9` of the supervisor.

use corral_e2e::{bin, corral, fixture, Fixture};
use serde_json::{json, Value as J};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn cfg(fx: &Fixture) -> &str {
    fx.config.to_str().expect("utf-8 path")
}

fn plan_file(fx: &Fixture, text: &str) -> PathBuf {
    let p = fx.dir.path().join("plan.toml");
    std::fs::write(&p, text).expect("write plan");
    p
}

/// `corral run PLAN --json`: exit code and document.
fn run(fx: &Fixture, plan: &str, input: &J, extra: &[&str]) -> (i32, J) {
    let p = plan_file(fx, plan);
    let input = input.to_string();
    let mut args = vec![
        "run",
        p.to_str().expect("utf-8"),
        "--config",
        cfg(fx),
        "--input",
        &input,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = corral(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// The id of the run `child` (a `corral run`) is running, once `ready` says so of it.
fn running_run(
    fx: &Fixture,
    child: &mut std::process::Child,
    ready: impl Fn(&str) -> bool,
) -> String {
    loop {
        let out = corral(&["runs", "--config", cfg(fx), "--json", "--status", "running"]);
        let list: J = serde_json::from_slice(&out.stdout).unwrap_or(J::Null);
        if let Some(id) = list.get(0).and_then(|r| r["run_id"].as_str()) {
            if ready(id) {
                return id.to_string();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) early");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn nodes<'a>(doc: &'a J, node: &str) -> Vec<&'a J> {
    doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["node"] == node)
        .collect()
}

const FAN_OUT: &str = r#"[plan]
name = "fan"
max_parallel = 16

[[node]]
id = "list"
agent = "echo"
input = "$input"

[[node]]
id = "read"
agent = "echo"
for_each = "$list.output.files"
input = { path = "$item", i = "$index", hint = "$input.hint" }
max_parallel = 8

[[node]]
id = "merge"
agent = "echo"
input = { parts = "$read.output" }
"#;

#[test]
fn a_300_way_fan_out_completes_in_order() {
    let fx = fixture("");
    let files: Vec<String> = (0..300).map(|i| format!("f{i}.rs")).collect();
    let (code, doc) = run(
        &fx,
        FAN_OUT,
        &json!({"files": files, "hint": "h", "secret": 1}),
        &[],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["status"], "succeeded");
    let parts = doc["output"]["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 300);
    for (i, p) in parts.iter().enumerate() {
        // Exactly what the mapping selects: no `secret`.
        assert_eq!(p, &json!({"path": format!("f{i}.rs"), "i": i, "hint": "h"}));
    }
    let reads = nodes(&doc, "read");
    assert_eq!(reads.len(), 300);
    let mut ids: Vec<String> = reads
        .iter()
        .map(|n| n["id"].as_str().unwrap_or("?").to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "instance ids are unique");
    assert!(reads
        .iter()
        .all(|n| n["status"] == "succeeded" && n["agent"] == "echo"));
    assert!(reads
        .iter()
        .all(|n| n["input_bytes"].as_u64().unwrap_or(0) > 0));
}

#[test]
fn memory_flows_unless_skipped_and_is_trimmed_to_the_budget() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "mem"
memory_budget = "64B"

[[node]]
id = "a"
agent = "chaos"
input = { do = "remember", notes = ["note-one", "note-two", "note-three-is-longer-than-the-rest-of-them-by-far-really"] }

[[node]]
id = "b"
agent = "chaos"
input = { do = "remember", echo = "$a.output.echo" }

[[node]]
id = "c"
agent = "chaos"
input = { do = "remember", echo = "$a.output.echo" }
skip_memory = true
"#;
    let (code, doc) = run(&fx, plan, &J::Null, &[]);
    assert_eq!(code, 0, "{doc}");
    let b = nodes(&doc, "b")[0];
    let c = nodes(&doc, "c")[0];
    assert_eq!(c["memory_bytes"], 2, "skip_memory sees no notes: {c}");
    assert_eq!(c["memory_trimmed"], 0);
    assert_eq!(
        b["memory_trimmed"], 1,
        "the long note does not fit 64 bytes: {b}"
    );
    let out = &doc["output"];
    assert_eq!(out["b"]["seen"], json!(["note-one", "note-two"]));
    assert_eq!(out["c"]["seen"], json!([]));
}

#[test]
fn notes_reaching_a_node_twice_are_given_once_and_the_budget_counts_the_list() {
    let fx = fixture("");
    // d reads a and b; b hands a's notes on with its own: a's reach d twice.
    let plan = r#"[plan]
name = "diamond"
memory_budget = "40B"

[[node]]
id = "a"
agent = "chaos"
input = { do = "remember", notes = ["note-a"] }

[[node]]
id = "b"
agent = "chaos"
input = { do = "remember", notes = ["note-b"], echo = "$a.output.echo" }

[[node]]
id = "d"
agent = "chaos"
input = { do = "remember", x = "$a.output.echo", y = "$b.output.echo" }

[[node]]
id = "e"
agent = "chaos"
input = { do = "remember", notes = ["012345678a", "012345678b", "012345678c", "012345678d"] }

[[node]]
id = "f"
agent = "chaos"
input = { do = "remember", x = "$e.output.echo" }
"#;
    let (code, doc) = run(&fx, plan, &J::Null, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"]["d"]["seen"], json!(["note-a", "note-b"]));
    // Four notes of 12 bytes as a list: 2 + 4×12 + 3 commas = 53 > 40; three fit (40).
    let f = nodes(&doc, "f")[0];
    assert_eq!(f["memory_trimmed"], 1, "{f}");
    assert!(f["memory_bytes"].as_u64().expect("bytes") <= 40, "{f}");
}

#[test]
fn a_skipped_nodes_fields_are_null_downstream_and_the_report_is_in_plan_order() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "skips"
max_parallel = 1

[[node]]
id = "first"
agent = "chaos"
input = { do = "sleep_ms", ms = 300 }

[[node]]
id = "opt"
agent = "chaos"
input = { do = "fail", retryable = false }
optional = true
on_failure = "skip"

[[node]]
id = "user"
agent = "echo"
input = { got = "$opt.output.echo", deep = "$opt.output.a.b" }

[[node]]
id = "fan"
agent = "echo"
for_each = "$opt.output.list"
input = { i = "$item" }
"#;
    let (code, doc) = run(&fx, plan, &J::Null, &[]);
    assert_eq!(code, 3, "degraded: {doc}");
    assert_eq!(doc["status"], "degraded");
    assert_eq!(doc["output"]["user"], json!({"got": null, "deep": null}));
    assert_eq!(
        doc["output"]["fan"],
        json!([]),
        "a fan-out over a skipped node: none"
    );
    let ids: Vec<&str> = doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["first", "opt", "user"], "in plan order");
    // With one slot, `opt` waited for `first`: its queue time covers first's run, which
    // `first`'s own does not (it waited for nothing).
    let first = nodes(&doc, "first")[0];
    let opt = nodes(&doc, "opt")[0];
    let ran = first["attempts"][0]["duration_ms"]
        .as_u64()
        .expect("duration");
    assert!(first["queue_ms"].as_u64().expect("q") < ran, "{first}");
    assert!(
        opt["queue_ms"].as_u64().expect("q") + 5 >= ran,
        "{opt} {first}"
    );
}

#[test]
fn a_node_that_fails_before_any_agent_runs_is_reported_with_why() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "early"

[[node]]
id = "a"
agent = "echo"
input = { x = 1 }

[[node]]
id = "b"
agent = "echo"
for_each = "$input.xs"
input = { i = "$item" }
"#;
    let (code, doc) = run(&fx, plan, &json!({"xs": 5}), &[]);
    assert_eq!(code, 1, "{doc}");
    let b = nodes(&doc, "b");
    assert_eq!(b.len(), 1, "{doc}");
    assert_eq!(b[0]["status"], "failed");
    assert!(
        b[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a list")),
        "{}",
        b[0]
    );
}

#[test]
fn failure_policies_abort_skip_and_fallback() {
    let fx = fixture("[agents.chaos.restart]\n");
    let _ = &fx;
    let fx = fixture("");
    // skip: an optional node fails; dependants get null; degraded, exit 3.
    let skip = r#"[plan]
name = "skip"

[[node]]
id = "opt"
agent = "chaos"
input = { do = "fail", retryable = false }
optional = true
on_failure = "skip"

[[node]]
id = "after"
agent = "echo"
input = { got = "$opt.output" }
"#;
    let (code, doc) = run(&fx, skip, &J::Null, &[]);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["status"], "degraded");
    assert_eq!(doc["output"], json!({"got": null}));

    // fallback: the named node runs in its place; its output stands for it.
    let fallback = r#"[plan]
name = "fb"

[[node]]
id = "main"
agent = "chaos"
input = { do = "fail", retryable = false }
on_failure = "fallback"
fallback = "spare"

[[node]]
id = "spare"
agent = "echo"
input = { spare = true }

[[node]]
id = "after"
agent = "echo"
input = { got = "$main.output" }
"#;
    let (code, doc) = run(&fx, fallback, &J::Null, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"], json!({"got": {"spare": true}}));
    let spare = nodes(&doc, "spare");
    assert_eq!(spare.len(), 1);
    assert_eq!(spare[0]["parent"], "main");

    // abort: the run fails, nothing downstream runs, in-flight agents are stopped.
    let abort = r#"[plan]
name = "ab"

[[node]]
id = "bad"
agent = "chaos"
input = { do = "fail", retryable = false }

[[node]]
id = "slow"
agent = "chaos"
input = { do = "sleep_ms", ms = 60000 }

[[node]]
id = "after"
agent = "echo"
input = "$bad.output"
"#;
    let (code, doc) = run(&fx, abort, &J::Null, &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["status"], "failed");
    assert!(nodes(&doc, "after").is_empty(), "{doc}");
    let slow = nodes(&doc, "slow");
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0]["status"], "cancelled", "{doc}");
    assert_eq!(slow[0]["attempts"][0]["reason"], "cancelled");
}

#[test]
fn a_crash_is_retried_inside_its_node() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "retry"

[[node]]
id = "flaky"
agent = "chaos"
input = { do = "crash_first", echo = "$input" }
"#;
    let (code, doc) = run(&fx, plan, &json!(7), &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"], json!({"echo": 7, "attempt": 2}));
    let n = nodes(&doc, "flaky")[0];
    let reasons: Vec<&str> = n["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["reason"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(reasons, ["signal", "completed"]);
}

#[test]
fn invalid_plans_are_refused_with_their_place() {
    let fx = fixture("");
    let bad =
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"echo\"\ninput = \"$b.output\"\n";
    let p = plan_file(&fx, bad);
    let out = corral(&["validate", "--config", cfg(&fx), p.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan.toml:6:9:") && err.contains("no node `b`"),
        "{err}"
    );
    let out = corral(&["run", p.to_str().expect("utf-8"), "--config", cfg(&fx)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let good = plan_file(&fx, FAN_OUT);
    let out = corral(&[
        "validate",
        "--config",
        cfg(&fx),
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// The run's instances' attempts, from the journal: (start, end) in RFC 3339 strings, for
/// the nodes named.
fn spans(fx: &Fixture, run_id: &str, node: &str) -> Vec<(String, String)> {
    let out = corral(&["show", run_id, "--config", cfg(fx), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let run: J = serde_json::from_slice(&out.stdout).expect("json");
    let mut v = Vec::new();
    for c in run["calls"].as_array().expect("calls") {
        let is_node = c["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["kind"] == "node" && e["payload"]["node"] == node)
        });
        if !is_node {
            continue;
        }
        for a in c["attempts"].as_array().expect("attempts") {
            v.push((
                a["started_at"].as_str().unwrap_or("").to_string(),
                a["ended_at"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    v
}

#[test]
fn max_parallel_is_never_exceeded_as_the_journal_shows() {
    let fx = fixture("");
    let files: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    let (code, doc) = run(&fx, FAN_OUT, &json!({"files": files, "hint": 0}), &[]);
    assert_eq!(code, 0, "{doc}");
    let run_id = doc["run_id"].as_str().expect("run_id");
    let s = spans(&fx, run_id, "read");
    assert_eq!(s.len(), 40);
    // At any attempt's start, how many attempts of the node had started and not ended.
    let most = s
        .iter()
        .map(|(start, _)| s.iter().filter(|(a, b)| a <= start && b > start).count())
        .max()
        .unwrap_or(0);
    assert!(
        most <= 8,
        "{most} instances of `read` overlapped; max_parallel is 8"
    );
    assert!(most >= 1);
}

#[test]
fn resume_after_kill_9_reruns_only_unfinished_instances() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "resume"
max_parallel = 4

[[node]]
id = "list"
agent = "echo"
input = "$input"

[[node]]
id = "work"
agent = "chaos"
for_each = "$list.output.items"
input = { do = "sleep_ms", ms = "$item" }

[[node]]
id = "sum"
agent = "echo"
input = { parts = "$work.output", n = "$input.n" }
"#;
    let items: Vec<u64> = (0..24).map(|i| 100 + (i % 3) * 20).collect();
    let input = json!({"items": items, "n": 24});
    // The uninterrupted run, for the expected output.
    let (code, whole) = run(&fx, plan, &input, &[]);
    assert_eq!(code, 0, "{whole}");

    let p = plan_file(&fx, plan);
    let mut child = Command::new(bin("corral"))
        .args([
            "run",
            p.to_str().expect("utf-8"),
            "--config",
            cfg(&fx),
            "--input",
            &input.to_string(),
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until some instances of `work` are checkpointed, then kill -9 mid-fan-out.
    let run_id = running_run(&fx, &mut child, |id| {
        let out = corral(&["show", id, "--config", cfg(&fx), "--json"]);
        let run: J = serde_json::from_slice(&out.stdout).unwrap_or(J::Null);
        let done = run["calls"]
            .as_array()
            .map(|c| c.iter().filter(|c| !c["output"].is_null()).count())
            .unwrap_or(0);
        done >= 6
    });
    // SAFETY: kill of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    let (code, resumed) = run(&fx, plan, &input, &["--resume", &run_id]);
    assert_eq!(code, 0, "{resumed}");
    assert_eq!(resumed["run_id"], J::from(run_id.clone()));
    assert_eq!(
        resumed["output"], whole["output"],
        "same output as uninterrupted"
    );
    let kept = resumed["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == "resumed")
        .count();
    let ran = resumed["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == "succeeded")
        .count();
    assert!(
        kept >= 6,
        "list and the instances seen checkpointed (6 in all) are not run again: {kept}"
    );
    assert_eq!(kept + ran, 26, "each instance once: resumed or run");
}

/// `corral run PLAN --resume ID` with `extra` arguments: exit code and stderr.
fn resume(fx: &Fixture, plan: &std::path::Path, id: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "run",
        plan.to_str().expect("utf-8"),
        "--config",
        cfg(fx),
        "--resume",
        id,
    ];
    args.extend_from_slice(extra);
    let out = corral(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn resume_takes_only_its_own_plan_and_input_and_never_a_live_run() {
    let fx = fixture("");
    let slow = r#"[plan]
name = "slow"

[[node]]
id = "wait"
agent = "chaos"
input = { do = "sleep_ms", ms = "$input.ms" }
"#;
    let p = plan_file(&fx, slow);
    let input = json!({"ms": 60000}).to_string();
    let mut child = Command::new(bin("corral"))
        .args(["run", p.to_str().expect("utf-8"), "--config", cfg(&fx)])
        .args(["--input", &input])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let run_id = running_run(&fx, &mut child, |_| true);
    // Live in another supervisor: refused, and the live run goes on.
    let (code, err) = resume(&fx, &p, &run_id, &["--input", &input]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a supervisor still runs it"), "{err}");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the live run goes on"
    );
    // SAFETY: kill of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();

    // Interrupted now; another input or another plan is refused.
    let (code, err) = resume(&fx, &p, &run_id, &["--input", r#"{"ms":1}"#]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("its input was {\"ms\":60000}"), "{err}");
    let other = fx.dir.path().join("other.toml");
    std::fs::write(&other, slow.replace("\"slow\"", "\"other\"")).expect("write");
    let (code, err) = resume(&fx, &other, &run_id, &["--input", &input]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("it ran plan `slow`"), "{err}");
    // A call's run is not a plan run.
    let call = corral_e2e::call_json(&fx, "echo", "1");
    let call_id = call.doc["run_id"].as_str().expect("run_id");
    let (code, err) = resume(&fx, &p, call_id, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a plan run"), "{err}");

    // Without --input, a resume runs on the input the run was started with.
    let quick = plan_file(&fx, FAN_OUT);
    let files = json!({"files": ["a", "b"], "hint": "h"});
    let (code, whole) = run(&fx, FAN_OUT, &files, &[]);
    assert_eq!(code, 0, "{whole}");
    let id = whole["run_id"].as_str().expect("run_id");
    let out = corral(&[
        "run",
        quick.to_str().expect("utf-8"),
        "--config",
        cfg(&fx),
        "--resume",
        id,
        "--json",
    ]);
    let again: J = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(0), "{again}");
    assert_eq!(again["output"], whole["output"]);
    // Each instance reported as it was run: its input's and notes' sizes too.
    let sizes = |doc: &J| -> Vec<(J, J, J)> {
        doc["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["id"].clone(),
                    n["input_bytes"].clone(),
                    n["memory_bytes"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(sizes(&again), sizes(&whole));
    assert!(again["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .all(|n| n["status"] == "resumed"));
}

#[test]
fn a_node_past_its_timeout_is_stopped_and_fails_by_its_policy() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "slow"

[[node]]
id = "slow"
agent = "chaos"
for_each = "$input"
input = { do = "sleep_ms", ms = "$item" }
timeout = "300ms"
optional = true
on_failure = "skip"

[[node]]
id = "after"
agent = "echo"
input = { got = "$slow.output" }
"#;
    let (code, doc) = run(&fx, plan, &json!([60000, 60000]), &[]);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["output"], json!({"got": null}));
    let slow = nodes(&doc, "slow");
    assert_eq!(slow.len(), 2, "{doc}");
    for n in slow {
        assert_eq!(n["attempts"].as_array().map(Vec::len), Some(1), "{n}");
        assert_eq!(n["attempts"][0]["reason"], "deadline", "{n}");
    }
}

/// A field path the upstream agent's contract cannot have is refused before anything runs,
/// at its place; the contracts are asked of the agents once and cached.
#[test]
fn a_fan_out_and_its_items_are_checked_against_the_contracts() {
    let fx = fixture("");
    let plan = r#"[plan]
name = "fan"

[[node]]
id = "a"
agent = "shout"
for_each = "$input"
input = { text = "$item" }

[[node]]
id = "b"
agent = "echo"
for_each = "$a.output"
input = { got = "$item.nope", ok = "$item.shout" }

[[node]]
id = "c"
agent = "echo"
for_each = "$a.output.0.shout"
input = { x = 1 }
"#;
    let p = plan_file(&fx, plan);
    let out = corral(&["validate", "--config", cfg(&fx), p.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan.toml:14:9:")
            && err.contains("`$item.nope`: the items of `$a.output` have no `nope`"),
        "{err}"
    );
    assert!(
        !err.contains("$item.shout"),
        "a field the items have: {err}"
    );
    assert!(
        err.contains("plan.toml:19:12:")
            && err.contains("for_each `$a.output.0.shout` is of type string")
            && err.contains("not a list"),
        "{err}"
    );
}

#[test]
fn field_paths_are_checked_against_the_agents_contracts() {
    let fx = fixture("");
    let plan = |path: &str| {
        format!(
            "[plan]\nname = \"p\"\n[[node]]\nid = \"a\"\nagent = \"shout\"\ninput = {{ text = \"$input\" }}\n\
             [[node]]\nid = \"b\"\nagent = \"echo\"\ninput = {{ got = \"{path}\" }}\n"
        )
    };
    for bad in ["$a.output.shot", "$a.output.shout.deeper"] {
        let p = plan_file(&fx, &plan(bad));
        let out = corral(&["validate", "--config", cfg(&fx), p.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("plan.toml:10:9:") && err.contains("shout"),
            "{err}"
        );
        let out = corral(&[
            "run",
            p.to_str().expect("utf-8"),
            "--config",
            cfg(&fx),
            "--input",
            "\"x\"",
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad}: run refuses too: {out:?}"
        );
    }
    let p = plan_file(&fx, &plan("$a.output.shout"));
    let out = corral(&["validate", "--config", cfg(&fx), p.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (code, doc) = run(&fx, &plan("$a.output.shout"), &json!("hi"), &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"], json!({"got": "HI"}));
    // Cached: the contracts directory holds them.
    let cached = std::fs::read_dir(fx.dir.path().join("state/contracts"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(cached >= 2, "{cached} contracts cached");
}
