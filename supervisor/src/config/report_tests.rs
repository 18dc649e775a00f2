//! Tests of how problems are reported: all of them, in file order, each located; the key
//! named for a bad value; the nearest key offered for a misspelt one; the resolved config
//! printed back parses as the same config.

use super::*;

fn err(text: &str) -> String {
    match Config::parse(text, Path::new("x.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let said = err(
        "[defaults]\nheartbeat_interval = \"0s\"\n\n[agents.b]\ncommand = [\"/bin/true\"]\n\
         memory = 0\nquarantine_after = 0\n\n[agents.a]\ncommand = []\n\n[agents.c]\ncwd = \".\"\n",
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        [
            "x.toml:2:22: heartbeat_interval must be greater than 0",
            "x.toml:6:10: memory must be greater than 0 (write \"unlimited\" for no limit)",
            "x.toml:7:20: quarantine_after must be at least 1",
            "x.toml:10:11: command is empty",
            "x.toml:12:9: agent `c` has no `command`",
        ],
        "{said}"
    );
}

#[test]
fn cross_key_problems_of_one_agent_are_all_reported() {
    let said = err(
        "[agents.a]\ncommand = [\"/bin/true\"]\nheartbeat_timeout = \"1s\"\n\
         heartbeat_interval = \"2s\"\nbackoff = { initial = \"5s\", max = \"1s\" }\n",
    );
    assert_eq!(said.lines().count(), 2, "{said}");
    assert!(
        said.starts_with("x.toml:3:1: agent `a`: heartbeat_timeout"),
        "{said}"
    );
    assert!(said.contains("x.toml:5:"), "{said}");
}

#[test]
fn a_misspelt_key_gets_the_nearest_valid_one() {
    let said = err("[agents.a]\ncommand = [\"/bin/true\"]\nhearbeat_interval = \"1s\"\n");
    assert!(
        said.starts_with(
            "x.toml:3:1: unknown key `hearbeat_interval`: did you mean `heartbeat_interval`?"
        ),
        "{said}"
    );
    // Nothing near: no guess.
    let said = err("[agents.a]\ncommand = [\"/bin/true\"]\nzzz = 1\n");
    assert!(!said.contains("did you mean"), "{said}");
}

#[test]
fn a_number_too_large_for_its_key_names_the_key() {
    let said = err("[agents.a]\ncommand = [\"/bin/true\"]\nmax_retries = 99999999999\n");
    assert!(said.starts_with("x.toml:3:15: max_retries: "), "{said}");
}

#[test]
fn a_huge_cpu_quota_is_refused_at_its_key() {
    let said = err("[agents.a]\ncommand = [\"/bin/true\"]\ncpu_quota = 1e308\n");
    assert!(said.starts_with("x.toml:3:1: cpu_quota: 1"), "{said}");
    assert!(
        said.contains("more than the kernel's CPU bandwidth"),
        "{said}"
    );
}

#[test]
fn the_resolved_config_prints_back_as_the_same_config() {
    let text = "[supervisor]\nstate_dir = \"/s\"\n\n[defaults]\nmemory = \"64MiB\"\n\
                backoff = { factor = 3.0 }\n\n[agents.a]\ncommand = [\"/bin/true\", \"x\"]\n\
                env = { K = \"v\\\"q\" }\ncpu_quota = 0.5\npids = \"unlimited\"\n\
                user = \"nobody\"\nwall_time = \"1500ms\"\n";
    let first = Config::parse(text, Path::new("/c/x.toml")).expect("parses");
    let printed = first.render_resolved();
    let again = Config::parse(&printed, Path::new("/c/x.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
    let (a, b) = (&first.agents["a"], &again.agents["a"]);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{printed}");
    assert!(printed.contains("memory = 67108864\n"), "{printed}");
    assert!(printed.contains("pids = \"unlimited\"\n"), "{printed}");
    assert!(printed.contains("max_retries = 3\n"), "{printed}");
}
