//! The Python SDK (`agent-sdk/python`, package `corral_agent`) held to the Rust SDK's behaviour:
//! one set of behaviours run against the `chaos` agent of each SDK under the default sandbox,
//! expecting the same exit records; the Python codec's own tests (golden vectors, limits, the
//! agent runtime against a supervisor played over pipes); random `Value`s round-tripped between
//! the two codecs through real pipes; the SDK loaded from `PYTHONPATH`, from beside the script
//! and from a virtual environment it was pip-installed into; `mypy --strict` where mypy is.

use corral::{CallOptions, ExitReason, Stop};
use corral_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn sdk() -> PathBuf {
    repo().join("agent-sdk/python")
}

/// A `python3` the agents' uids can run: one on `PATH` inside the system paths every agent
/// sees (a pyenv shim under a private home would not do), or `None` after saying why.
fn python() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|d| {
                corral::sandbox::rootfs::SYSTEM_PATHS
                    .iter()
                    .any(|s| d.starts_with(s))
            })
            .map(|d| d.join("python3"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        skip_or_fail("no python3 in the system paths");
    }
    found
}

/// A config with `pychaos` (the Python chaos agent, the SDK on `PYTHONPATH`) and `rschaos`
/// (the Rust one), with the same settings.
fn both(python: &Path) -> String {
    let settings = "max_retries = 0\nstall_timeout = \"2s\"\nwall_time = \"20s\"\n\
                    breaker = { failures = 1000 }\n";
    format!(
        "[agents.pychaos]\ncommand = [\"{py}\", \"{script}\"]\nenv = {{ PYTHONPATH = \"{sdk}\" }}\n\
         readonly_paths = [\"{sdk}\"]\n{settings}\n\
         [agents.rschaos]\ncommand = [\"{rs}\"]\n{settings}",
        py = python.display(),
        script = repo().join("examples/python/chaos.py").display(),
        sdk = sdk().display(),
        rs = bin("chaos").display(),
    )
}

/// The fields of an exit record that say what happened (not when, nor which process).
fn facts(o: &corral::CallOutcome) -> serde_json::Value {
    let a = serde_json::to_value(&o.attempts[0]).expect("record as JSON");
    serde_json::json!({
        "attempts": o.attempts.len(),
        "output": output(o),
        "reason": a["reason"],
        "decision": a["decision"],
        "exit_code": a["exit_code"],
        "signal_name": a["signal_name"],
        "error_kind": a["error"]["kind"],
        "retryable": a["error"]["retryable"],
    })
}

/// A broker: `upper` answers, `breaker` fails as an open circuit, anything else is unknown.
fn broker() -> tokio::sync::mpsc::Sender<corral::ToolRequest> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<corral::ToolRequest>(8);
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let answer = match req.call.tool.as_str() {
                "upper" => Ok(corral_proto::Value::from(
                    req.call
                        .args
                        .get("text")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_uppercase(),
                )),
                "breaker" => Err(corral_proto::AgentError::new(
                    "circuit_open",
                    "the breaker is open",
                    true,
                )),
                other => Err(corral_proto::AgentError::new("unknown_tool", other, false)),
            };
            let _ = req.reply.send(answer);
        }
    });
    tx
}

async fn run_case(s: &corral::Supervisor, agent: &str, json: &str) -> corral::CallOutcome {
    let opts = CallOptions {
        tools: Some(broker().into()),
        ..Default::default()
    };
    s.call(agent, input(json), opts).await.expect("known agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sdks_behave_the_same() {
    let Some(py) = python() else { return };
    let (_fx, s) = sup_with("", &both(&py));
    let cases: &[(&str, &str)] = &[
        (r#"{"do":"ok"}"#, "completed"),
        (r#"{"do":"fail","retryable":false}"#, "agent_error"),
        (r#"{"do":"fail","retryable":true}"#, "agent_error"),
        (r#"{"do":"exit","code":3}"#, "exit_code"),
        (r#"{"do":"crash"}"#, "signal"),
        (r#"{"do":"hang"}"#, "hung"),
        (r#"{"do":"stall"}"#, "stalled"),
        (r#"{"do":"garbage"}"#, "protocol_violation"),
        (r#"{"do":"huge_frame"}"#, "protocol_violation"),
        (r#"{"do":"huge_output","mb":17}"#, "agent_error"),
        (r#"{"do":"deep_output"}"#, "agent_error"),
        (
            r#"{"do":"tool","name":"upper","args":{"text":"hi"}}"#,
            "completed",
        ),
        (r#"{"do":"tool","name":"nope","args":null}"#, "agent_error"),
        (
            r#"{"do":"tool","name":"breaker","args":null}"#,
            "agent_error",
        ),
        (r#"{"do":"sleep_ms","ms":50}"#, "completed"),
    ];
    for (json, reason) in cases {
        let (rs, py) = tokio::join!(run_case(&s, "rschaos", json), run_case(&s, "pychaos", json));
        let (mut rs, mut py) = (facts(&rs), facts(&py));
        assert_eq!(rs["reason"], *reason, "{json}: the Rust agent: {rs}");
        if matches!(*reason, "hung" | "stalled") {
            // After a watchdog's `Shutdown` and SIGTERM, each SDK exits half the kill grace
            // later, which races the SIGKILL at the grace's end on a loaded machine: how
            // the process ended is left out here. The Python SDK's own tests check that exit
            // with no kill racing it.
            for f in [&mut rs, &mut py] {
                f["exit_code"] = serde_json::Value::Null;
                f["signal_name"] = serde_json::Value::Null;
            }
        }
        assert_eq!(py, rs, "{json}: the Python agent differs from the Rust one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sdks_are_cancelled_the_same() {
    let Some(py) = python() else { return };
    let (_fx, s) = sup_with("", &both(&py));
    let mut seen = Vec::new();
    for agent in ["rschaos", "pychaos"] {
        let (stop_handle, stop) = Stop::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = CallOptions {
            stop: Some(stop),
            events: Some(tx),
            ..Default::default()
        };
        let call = s.call(agent, input(r#"{"do":"wait_cancel"}"#), opts);
        let watch = async {
            while let Some(ev) = rx.recv().await {
                if matches!(ev, corral::AttemptEvent::Ready { .. }) {
                    stop_handle.stop(ExitReason::Cancelled);
                }
            }
        };
        let (o, _) = tokio::join!(call, watch);
        let o = o.expect("known agent");
        assert_eq!(reasons(&o), [ExitReason::Cancelled], "{agent}");
        assert!(!alive(o.attempts[0].pid.expect("a process") as i32));
        seen.push(facts(&o));
    }
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_exception_is_a_panic_with_its_traceback() {
    let Some(py) = python() else { return };
    let (_fx, s) = sup_with("", &both(&py));
    let o = run_case(&s, "pychaos", r#"{"do":"panic"}"#).await;
    let a = &o.attempts[0];
    assert_eq!(a.reason, ExitReason::AgentError);
    let e = a.error.as_ref().expect("an error");
    assert_eq!((e.kind.as_str(), e.retryable), ("panic", true));
    assert!(
        e.message
            .contains("RuntimeError: chaos: panicking on request"),
        "{}",
        e.message
    );
    assert!(e.message.contains("in handle"), "{}", e.message);
}

/// `python3 FILE ARGS…`, its status and output.
fn run_python(py: &Path, args: &[&str]) -> std::process::Output {
    Command::new(py)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run python3")
}

#[test]
fn the_python_codec_and_runtime_pass_their_tests() {
    let Some(py) = python() else { return };
    let tests = sdk().join("tests");
    let out = run_python(
        &py,
        &[
            "-m",
            "unittest",
            "discover",
            "-s",
            tests.to_str().unwrap(),
            "-v",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // The golden vectors were among them.
    assert!(
        text.contains("test_down_frames") && text.contains("ok"),
        "{text}"
    );
}

#[test]
fn values_made_in_python_round_trip_through_the_rust_codec() {
    let Some(py) = python() else { return };
    let script = sdk().join("tests/roundtrip_rust.py");
    let echo = bin("value_echo");
    for seed in ["1", "2", "3"] {
        let out = run_python(
            &py,
            &[
                script.to_str().unwrap(),
                echo.to_str().unwrap(),
                seed,
                "400",
            ],
        );
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn values_made_in_rust_round_trip_through_the_python_codec() {
    use proptest::strategy::{Strategy, ValueTree};
    let Some(py) = python() else { return };
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = values::value();
    let values: Vec<corral_proto::Value> = (0..600)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect();
    let mut sent = Vec::new();
    for v in &values {
        sent.extend(corral_proto::frame::encode(v).expect("encodable"));
    }
    let mut child = Command::new(&py)
        .arg(sdk().join("tests/echo_values.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&sent).expect("write frames");
        })
    };
    let out = child.wait_with_output().expect("python3 ends");
    feed.join().expect("writer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), sent.len(), "every frame came back");
    assert!(out.stdout == sent, "the Python codec wrote other bytes");
    let mut reader = corral_proto::frame::FrameReader::new(&out.stdout[..]);
    for v in &values {
        let back: corral_proto::Value = reader.read_frame().expect("decodes").expect("a frame");
        assert_eq!(
            corral_proto::frame::encode(&back).unwrap(),
            corral_proto::frame::encode(v).unwrap()
        );
    }
}

mod values {
    use corral_proto::Value;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,8}", "[a-z]{0,3}"]
    }

    /// Any `Value`, NaN payloads and every other float bit pattern included.
    pub fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![
                Just(0i64),
                Just(125),
                Just(126),
                Just(i64::MIN),
                Just(i64::MAX)
            ]
            .prop_map(Value::Int),
            any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b))),
            text().prop_map(Value::String),
            vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::List),
                btree_map(text(), inner, 0..6).prop_map(Value::Map),
            ]
        })
    }
}

#[test]
fn mypy_strict_is_clean_where_mypy_is_installed() {
    let Some(py) = python() else { return };
    // mypy may be installed for another interpreter on PATH than the system one.
    let candidates = [PathBuf::from("python3"), py];
    let Some(with_mypy) = candidates.iter().find(|p| {
        Command::new(p)
            .args(["-m", "mypy", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipped: mypy is not installed (pip install mypy, then this test runs it)");
        return;
    };
    let out = Command::new(with_mypy)
        .current_dir(sdk())
        .args([
            "-m",
            "mypy",
            "--strict",
            "--cache-dir=/dev/null",
            "corral_agent",
            "tests",
            "_build",
            "../../examples/python/chaos.py",
            "../../examples/python/pyecho.py",
        ])
        .output()
        .expect("run mypy");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[path = "python_sdk/sandboxed.rs"]
mod sandboxed;
