//! Plan validation: each error at its place.

use super::*;

fn config() -> Config {
    Config::parse(
        "[agents.lister]\ncommand = [\"/bin/true\"]\n[agents.reader]\ncommand = [\"/bin/true\"]\n[agents.merger]\ncommand = [\"/bin/true\"]\n",
        Path::new("corral.toml"),
    )
    .expect("config")
}

fn parse(text: &str) -> Result<Plan, ConfigError> {
    Plan::parse(text, Path::new("plan.toml"), &config())
}

const GOOD: &str = r#"[plan]
name = "review"
max_parallel = 8
memory_budget = "1KiB"

[[node]]
id = "list"
agent = "lister"
input = { root = "$input.root" }

[[node]]
id = "read"
agent = "reader"
for_each = "$list.output.files"
input = { path = "$item", i = "$index", hint = "$input.hint" }
skip_memory = true
max_parallel = 4

[[node]]
id = "merge"
agent = "merger"
input = { parts = "$read.output" }
on_failure = "fallback"
fallback = "fallback_merge"

[[node]]
id = "fallback_merge"
agent = "merger"
input = { parts = "$read.output", degraded = true }
"#;

#[test]
fn a_good_plan_validates() {
    let p = parse(GOOD).expect("valid");
    assert_eq!(p.name, "review");
    assert_eq!(p.max_parallel, 8);
    assert_eq!(p.memory_budget, 1024);
    let ids: Vec<&str> = p.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["list", "read", "merge", "fallback_merge"]);
    assert_eq!(
        p.node("read").map(|n| n.deps.clone()),
        Some(vec!["list".to_string()])
    );
    assert!(p.node("fallback_merge").is_some_and(|n| n.fallback_only));
    let sinks: Vec<&str> = p.sinks().iter().map(|n| n.id.as_str()).collect();
    assert_eq!(sinks, ["merge"]);
}

/// `(plan text, expected line:col, words the message must contain)`.
fn refused(text: &str, at: &str, words: &[&str]) {
    let e = parse(text).expect_err("must be refused");
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("plan.toml:{at}:")), "{shown}");
    for w in words {
        assert!(shown.contains(w), "{shown} lacks {w}");
    }
}

#[test]
fn each_error_is_refused_at_its_place() {
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"nobody\"\n",
        "5:9",
        &["no agent `nobody`", "lister"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\ninput = { x = \"$ghost.output\" }\n",
        "6:9",
        &["names no node `ghost`"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\ninput = { x = \"$ghost\" }\n",
        "6:9",
        &["through its output"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\ninput = { x = \"$item\" }\n",
        "6:9",
        &["only defined in a node with for_each"],
    );
    // A cycle, reported at its first node in file order.
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\ninput = \"$b.output\"\n[[node]]\nid = \"b\"\nagent = \"lister\"\nafter = [\"a\"]\n",
        "4:6",
        &["cycle", "a -> b -> a"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\n",
        "7:6",
        &["defined twice"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\non_failure = \"skip\"\n",
        "6:14",
        &["optional = true"],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\non_failure = \"fallback\"\n",
        "6:14",
        &["fallback = \"NODE\""],
    );
    refused(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"input\"\nagent = \"lister\"\n",
        "4:6",
        &["reserved"],
    );
    refused(
        "[plan]\nname = \"x\"\nmax_parallel = 0\n[[node]]\nid = \"a\"\nagent = \"lister\"\n",
        "3:16",
        &["at least 1"],
    );
    // Unknown keys are refused by the schema, at the key.
    let e = parse(
        "[plan]\nname = \"x\"\n[[node]]\nid = \"a\"\nagent = \"lister\"\nfor_eech = \"$input\"\n",
    )
    .expect_err("unknown key");
    assert!(e.to_string().contains("for_eech"), "{e}");
    assert!(e.location().is_some(), "{e}");
}

#[test]
fn fallbacks_that_could_never_run_are_refused_each_at_its_place() {
    let text = r#"[plan]
name = "fb"

[[node]]
id = "m1"
agent = "lister"
input = { x = 1 }
on_failure = "fallback"
fallback = "backup"

[[node]]
id = "m2"
agent = "lister"
input = { x = 2 }
on_failure = "fallback"
fallback = "backup"

[[node]]
id = "backup"
agent = "reader"
input = { got = "$m1.output" }

[[node]]
id = "user"
agent = "merger"
input = { b = "$backup.output" }
"#;
    let err = parse(text).expect_err("refused").to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "all at once: {err}");
    assert!(
        lines[0].starts_with("plan.toml:12:6:") && lines[0].contains("already stands in for `m1`"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("plan.toml:19:6:") && lines[1].contains("cannot read `$m1.output`"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("plan.toml:24:6:") && lines[2].contains("runs only in place of `m1`"),
        "{err}"
    );
}

#[test]
fn every_nodes_error_is_reported_at_once() {
    let text = r#"[plan]
name = "bad"

[[node]]
id = "a"
agent = "nobody"
input = { x = 1 }

[[node]]
id = "b"
agent = "lister"
input = { x = "$ghost.output" }

[[node]]
id = "c"
agent = "reader"
input = { x = "$item" }
"#;
    let err = parse(text).expect_err("refused").to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("plan.toml:6:") && lines[0].contains("nobody"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("plan.toml:") && lines[1].contains("ghost"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("plan.toml:") && lines[2].contains("$item"),
        "{err}"
    );
}
