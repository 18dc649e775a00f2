//! Agents calling agents (`call_agent`, the tool `agent:NAME`): a child task in the same run,
//! journalled with its parent; quotas of depth and count; grants narrowed to the caller's.

use corral_e2e::{bin, call_json, corral, fixture, Fixture};
use serde_json::{json, Value as J};

fn fx() -> Fixture {
    fixture(&format!(
        "[agents.caller]\ncommand = [\"{chaos}\"]\ntools = [\"agent:echo\", \"agent:caller\"]\n\
         max_depth = 1\nmax_children = 2\n\
         [agents.boss]\ncommand = [\"{chaos}\"]\ntools = [\"agent:caller\"]\n",
        chaos = bin("chaos").display()
    ))
}

fn calls(list: &[(&str, J)]) -> String {
    let calls: Vec<J> = list
        .iter()
        .map(|(t, a)| json!({"tool": t, "args": a}))
        .collect();
    json!({"do": "tools", "calls": calls}).to_string()
}

#[test]
fn a_child_agent_runs_in_the_same_run_with_its_parent_named() {
    let fx = fx();
    let c = call_json(&fx, "caller", &calls(&[("agent:echo", json!({"x": 1}))]));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(
        c.doc["output"]["results"][0],
        json!({"ok": true, "value": {"x": 1}})
    );
    let run_id = c.doc["run_id"].as_str().expect("run_id");
    let out = corral(&[
        "show",
        run_id,
        "--config",
        fx.config.to_str().expect("utf-8"),
        "--json",
    ]);
    let run: J = serde_json::from_slice(&out.stdout).expect("json");
    let calls = run["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{run}");
    assert_eq!(calls[1]["agent"], "echo");
    assert_eq!(calls[1]["input"], json!({"x": 1}));
    let child = calls[1]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "child"))
        .expect("a child event");
    assert_eq!(child["payload"]["parent_call"], 1);
    assert_eq!(child["payload"]["depth"], 1);
}

#[test]
fn quotas_and_grants_bound_agent_calls() {
    let fx = fx();
    // max_children = 2: the third call of one task is refused.
    let c = call_json(
        &fx,
        "caller",
        &calls(&[
            ("agent:echo", json!(1)),
            ("agent:echo", json!(2)),
            ("agent:echo", json!(3)),
        ]),
    );
    let r = &c.doc["output"]["results"];
    assert_eq!(r[0]["ok"], true);
    assert_eq!(r[1]["ok"], true);
    assert_eq!(r[2]["error"]["kind"], "quota_exceeded", "{r}");
    assert!(r[2]["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_children"));

    // max_depth = 1: a child may not call in turn.
    let inner = calls(&[("agent:echo", json!("deep"))]);
    let c = call_json(
        &fx,
        "caller",
        &calls(&[("agent:caller", serde_json::from_str(&inner).expect("json"))]),
    );
    let nested = &c.doc["output"]["results"][0];
    assert_eq!(nested["ok"], true, "{nested}");
    let deep = &nested["value"]["results"][0];
    assert_eq!(deep["error"]["kind"], "quota_exceeded", "{deep}");
    assert!(deep["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_depth"));

    // Not granted: refused before anything runs.
    let c = call_json(
        &fx,
        "caller",
        &calls(&[("agent:shout", json!({"text": "x"}))]),
    );
    assert_eq!(
        c.doc["output"]["results"][0]["error"]["kind"],
        "permission_denied"
    );

    // A child's grants are its own within its caller's: boss may call `caller`, not `echo`,
    // so `caller` called by boss cannot call `echo` either.
    let c = call_json(
        &fx,
        "boss",
        &calls(&[("agent:caller", serde_json::from_str(&inner).expect("json"))]),
    );
    let via = &c.doc["output"]["results"][0];
    assert_eq!(via["ok"], true, "{via}");
    assert_eq!(
        via["value"]["results"][0]["error"]["kind"], "permission_denied",
        "{via}"
    );

    // A child that fails is a structured error to its caller.
    let c = call_json(
        &fx,
        "caller",
        &calls(&[("agent:caller", json!({"do": "fail", "retryable": false}))]),
    );
    let failed = &c.doc["output"]["results"][0];
    assert_eq!(failed["error"]["kind"], "agent_failed", "{failed}");
}
