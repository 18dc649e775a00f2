//! Tests of the whole room: a full file resolves as documented, and every class of error is
//! reported at the right `FILE:LINE:COL`.
//!
//! Past ~600 lines: one test per class of error, each with its file and expected location.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use corral_proto::DEFAULT_MAX_FRAME;

const FULL: &str = r#"
[supervisor]
state_dir = "state"
max_frame = "4MiB"

[defaults]
memory = "256MiB"
heartbeat_timeout = "3s"
backoff = { initial = "200ms", max = "20s" }
intensity = { max = 4 }
breaker = { open_for = "10s" }
env = { A = "1", B = "2" }
env_pass = ["RUST_LOG", "HOME"]
readonly_paths = ["data", "/usr/share"]

[agents.echo]
command = ["../target/debug/echo", "--fast"]
cwd = "."
memory = "64MiB"
backoff = { factor = 3.0 }
breaker = { failures = 2 }
env = { B = "two", C = "3" }
restart = "always"
no_retry_exit_codes = [2, 64]

[agents.py]
command = ["python3", "agent.py"]
cwd = "agents/py"
cpu_time = "unlimited"
cpu_quota = 0.5
pids = "unlimited"
network = true
namespaces = ["pid", "net", "user"]
writable_paths = ["scratch"]
heartbeat_interval = "2s"
heartbeat_timeout = "8s"
wall_time = "1h 30m"
intensity = { period = "2m", fatal_cooldown = "1m" }
quarantine_after = 1
keep_workspace = true
strict = true
user = "nobody"
group = "nogroup"
"#;

fn path() -> &'static Path {
    Path::new("/srv/corral/corral.toml")
}

fn ok(text: &str) -> Config {
    match Config::parse(text, path()) {
        Ok(config) => config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The rendered error for `text` parsed as `x.toml`.
fn err(text: &str) -> String {
    match Config::parse(text, Path::new("x.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts the rendered error starts with `prefix` and mentions `needle`.
#[track_caller]
fn assert_err(text: &str, prefix: &str, needle: &str) {
    let msg = err(text);
    assert!(
        msg.starts_with(prefix),
        "expected prefix {prefix:?}, got {msg:?}"
    );
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
}

#[test]
fn full_example_resolves() {
    let config = ok(FULL);
    assert_eq!(config.path, path());
    assert_eq!(
        config.supervisor.state_dir,
        PathBuf::from("/srv/corral/state")
    );
    assert_eq!(config.supervisor.max_frame, 4 << 20);
    assert_eq!(config.agents.keys().collect::<Vec<_>>(), ["echo", "py"]);

    let echo = &config.agents["echo"];
    let builtin = AgentSpec::builtin("x", vec![]);
    assert_eq!(echo.name, "echo");
    // `..` is kept: resolving it lexically would be wrong across a symbolic link.
    assert_eq!(echo.command, ["/srv/corral/../target/debug/echo", "--fast"]);
    assert_eq!(echo.cwd.as_deref(), Some(Path::new("/srv/corral")));
    assert_eq!(echo.memory, Some(64 << 20));
    assert_eq!(echo.cpu_time, builtin.cpu_time);
    assert_eq!(echo.heartbeat_timeout, Duration::from_secs(3));
    assert_eq!(echo.heartbeat_interval, Duration::from_secs(1));
    // env merges per key, the agent winning.
    let env: Vec<(&str, &str)> = echo
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("A", "1"), ("B", "two"), ("C", "3")]);
    assert_eq!(echo.env_pass, ["RUST_LOG", "HOME"]);
    assert_eq!(
        echo.readonly_paths,
        [
            PathBuf::from("/srv/corral/data"),
            PathBuf::from("/usr/share")
        ]
    );
    // Nested tables merge per key: agent <- defaults <- built-in.
    assert_eq!(echo.backoff.initial, Duration::from_millis(200));
    assert_eq!(echo.backoff.max, Duration::from_secs(20));
    assert_eq!(echo.backoff.factor, 3.0);
    assert_eq!(echo.backoff.jitter, builtin.backoff.jitter);
    assert_eq!(echo.backoff.reset_after, builtin.backoff.reset_after);
    assert_eq!(echo.intensity.max, 4);
    assert_eq!(echo.intensity.period, builtin.intensity.period);
    assert_eq!(echo.breaker.failures, 2);
    assert_eq!(echo.breaker.open_for, Duration::from_secs(10));
    assert_eq!(echo.restart, RestartPolicy::Always);
    assert_eq!(echo.no_retry_exit_codes, [2, 64]);
    assert_eq!(echo.namespaces, builtin.namespaces);
    assert!(!echo.network);

    let py = &config.agents["py"];
    assert_eq!(py.command, ["python3", "agent.py"]);
    assert_eq!(py.cwd.as_deref(), Some(Path::new("/srv/corral/agents/py")));
    assert_eq!(py.memory, Some(256 << 20));
    assert_eq!(py.cpu_time, None);
    assert_eq!(py.cpu_quota, Some(0.5));
    assert_eq!(py.pids, None);
    assert_eq!(py.open_files, Some(256));
    // network = true drops the net namespace.
    assert!(py.network);
    assert_eq!(py.namespaces, [Namespace::Pid, Namespace::User]);
    assert_eq!(py.writable_paths, [PathBuf::from("/srv/corral/scratch")]);
    assert_eq!(py.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(py.heartbeat_timeout, Duration::from_secs(8));
    assert_eq!(py.wall_time, Duration::from_secs(5400));
    assert_eq!(py.intensity.max, 4);
    assert_eq!(py.intensity.period, Duration::from_secs(120));
    assert_eq!(py.intensity.fatal_cooldown, Duration::from_secs(60));
    assert_eq!(py.backoff.factor, builtin.backoff.factor);
    assert_eq!(py.backoff.initial, Duration::from_millis(200));
    assert_eq!(py.quarantine_after, 1);
    assert!(py.keep_workspace && py.strict);
    assert_eq!(py.user.as_deref(), Some("nobody"));
    assert_eq!(py.group.as_deref(), Some("nogroup"));
    assert_eq!(py.restart, RestartPolicy::OnFailure);
}

#[test]
fn builtin_defaults() {
    let spec = AgentSpec::builtin("a", vec!["a".into()]);
    assert_eq!(spec.memory, Some(512 << 20));
    assert_eq!(spec.cpu_time, Some(Duration::from_secs(60)));
    assert_eq!(spec.cpu_quota, Some(1.0));
    assert_eq!(spec.pids, Some(64));
    assert_eq!(spec.open_files, Some(256));
    assert_eq!(spec.file_size, Some(1 << 30));
    assert_eq!(spec.env_pass, ["RUST_LOG"]);
    assert_eq!(spec.wall_time, Duration::from_secs(600));
    assert_eq!(spec.log_limit, 1 << 20);
    assert_eq!(spec.backoff.initial, Duration::from_millis(100));
    assert_eq!(spec.intensity.fatal_cooldown, Duration::from_secs(300));
    assert_eq!(spec.breaker.failures, 5);
    assert_eq!(spec.quarantine_after, 2);
}

#[test]
fn empty_file_is_valid() {
    let config = ok("");
    assert!(config.agents.is_empty());
    assert_eq!(
        config.supervisor.state_dir,
        PathBuf::from("/srv/corral/.corral-state")
    );
    assert_eq!(config.supervisor.max_frame, DEFAULT_MAX_FRAME);
}

#[test]
fn an_agent_with_only_a_command_gets_builtins() {
    let config = ok("[agents.a]\ncommand = [\"/bin/true\"]\n");
    let a = &config.agents["a"];
    let builtin = AgentSpec::builtin("a", vec!["/bin/true".into()]);
    assert_eq!(a.command, builtin.command);
    assert_eq!(a.backoff, builtin.backoff);
    assert_eq!(a.intensity, builtin.intensity);
    assert_eq!(a.breaker, builtin.breaker);
    assert_eq!(a.heartbeat_timeout, builtin.heartbeat_timeout);
    assert_eq!(a.cwd, None);
}

#[test]
fn relative_config_path_resolves_against_current_dir() {
    let config = match Config::parse(
        "[agents.a]\ncommand = [\"./bin/a\"]\n",
        Path::new("corral.toml"),
    ) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let cwd = std::env::current_dir().expect("current dir");
    assert_eq!(
        PathBuf::from(&config.agents["a"].command[0]),
        cwd.join("bin/a")
    );
    assert!(config.supervisor.state_dir.is_absolute());
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("corral.toml");
    std::fs::write(&file, "[agents.a]\ncommand = [\"bin/a\"]\n").expect("write");
    let config = Config::load(&file).expect("load");
    assert_eq!(
        config.agents["a"].command[0],
        dir.path().join("bin/a").display().to_string()
    );

    let missing = dir.path().join("missing.toml");
    let e = Config::load(&missing).expect_err("missing file");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read config: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(e.location(), None);
}

#[test]
fn syntax_errors_are_located() {
    assert_err("[agents.a]\ncommand = [\"x\"\n", "x.toml:3:1: ", "array");
    assert_err("x = 1 2\n", "x.toml:1:7: ", "expected");
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\n[agents.a]\n",
        "x.toml:3:1: ",
        "duplicate key",
    );
    // The message stays on one line.
    assert!(!err("[agents.a]\ncommand = [\"x\"\n").contains('\n'));
}

#[test]
fn unknown_keys_are_located_at_the_key() {
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nhearbeat_timeout = \"5s\"\n",
        "x.toml:3:1: ",
        "unknown key `hearbeat_timeout`: did you mean `heartbeat_timeout`?",
    );
    assert_err(
        "[agent.a]\ncommand = [\"x\"]\n",
        "x.toml:1:2: ",
        "unknown key `agent`: did you mean `agents`?",
    );
    assert_err(
        "[supervisor]\nstate = \"s\"\n",
        "x.toml:2:1: ",
        "unknown key `state`: did you mean `state_dir`?",
    );
    assert_err(
        "[defaults]\nbackoff = { bogus = 1 }\n",
        "x.toml:2:13: ",
        "unknown field `bogus`",
    );
    assert_err(
        "[defaults]\n  intensity = { max = 1, window = \"1s\" }\n",
        "x.toml:2:26: ",
        "unknown field `window`",
    );
}

#[test]
fn bad_values_are_located_at_the_value() {
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nheartbeat_timeout = \"5 parsecs\"\n",
        "x.toml:3:21: ",
        "expected a duration like \"5s\" or \"100ms\", found \"5 parsecs\"",
    );
    assert_err(
        "[defaults]\nmemory = \"12 parsecs\"\n",
        "x.toml:2:10: ",
        "found \"12 parsecs\"",
    );
    assert_err("[defaults]\nlog_limit = -1\n", "x.toml:2:13: ", "found -1");
    assert_err(
        "[defaults]\nrestart = \"sometimes\"\n",
        "x.toml:2:11: ",
        "unknown variant `sometimes`",
    );
    assert_err(
        "[defaults]\nnamespaces = [\"pid\", \"pdi\"]\n",
        "x.toml:2:22: ",
        "unknown variant `pdi`",
    );
    assert_err(
        "[defaults]\nmax_retries = -1\n",
        "x.toml:2:15: ",
        "expected u32",
    );
    assert_err(
        "[defaults]\nbackoff = { initial = 5 }\n",
        "x.toml:2:23: ",
        "needs a unit",
    );
    assert_err(
        "[agents]\na = 3\n",
        "x.toml:2:5: ",
        "expected a table of agent settings",
    );
}

#[test]
fn command_is_required_per_agent_and_refused_in_defaults() {
    assert_err(
        "[defaults]\ncommand = [\"x\"]\n",
        "x.toml:2:1: ",
        "`command` cannot be set in [defaults]",
    );
    assert_err(
        "[agents.a]\nmemory = \"1MiB\"\n",
        "x.toml:1:9: ",
        "agent `a` has no `command`",
    );
    assert_err(
        "[agents.a]\ncommand = []\n",
        "x.toml:2:11: ",
        "command is empty",
    );
    assert_err(
        "[agents.a]\ncommand = [\"\", \"x\"]\n",
        "x.toml:2:12: ",
        "program name is empty",
    );
}

#[test]
fn agent_names_are_checked() {
    assert_err(
        "[agents.\"\"]\ncommand = [\"x\"]\n",
        "x.toml:1:9: ",
        "empty agent name",
    );
    assert_err(
        "[agents.\"a b\"]\ncommand = [\"x\"]\n",
        "x.toml:1:9: ",
        "agent name \"a b\" is not allowed",
    );
    assert_err(
        "[agents]\n\"a.b\" = { command = [\"x\"] }\n",
        "x.toml:2:1: ",
        "agent name \"a.b\" is not allowed",
    );
    ok("[agents.Ok_name-2]\ncommand = [\"x\"]\n");
}

#[test]
fn env_names_are_checked() {
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nenv = { \"A=B\" = \"1\" }\n",
        "x.toml:3:9: ",
        "contains '='",
    );
    assert_err(
        "[defaults]\nenv = { \"\" = \"1\" }\n",
        "x.toml:2:9: ",
        "is empty",
    );
    assert_err(
        "[defaults]\nenv = { A = \"x\\u0000y\" }\n",
        "x.toml:2:13: ",
        "NUL",
    );
    assert_err(
        "[defaults]\nenv_pass = [\"HOME\", \"A=B\"]\n",
        "x.toml:2:21: ",
        "env_pass",
    );
}

#[test]
fn heartbeat_order_is_checked_at_the_key_that_breaks_it() {
    // The agent's own timeout.
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nheartbeat_timeout = \"1s\"\n",
        "x.toml:3:1: ",
        "heartbeat_timeout (1s) must be greater than heartbeat_interval (1s)",
    );
    // The agent's interval against the defaults' timeout.
    assert_err(
        "[defaults]\nheartbeat_timeout = \"3s\"\n[agents.a]\ncommand = [\"x\"]\n  heartbeat_interval = \"3s\"\n",
        "x.toml:5:3: ",
        "must be greater than heartbeat_interval",
    );
    // Only the defaults are involved.
    assert_err(
        "[defaults]\nheartbeat_interval = \"10s\"\n[agents.a]\ncommand = [\"x\"]\n",
        "x.toml:2:1: ",
        "agent `a`",
    );
    // An agent can repair what the defaults would break.
    ok("[defaults]\nheartbeat_interval = \"10s\"\n[agents.a]\ncommand = [\"x\"]\nheartbeat_timeout = \"30s\"\n");
}

#[test]
fn policy_numbers_are_checked() {
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nbackoff = { factor = 0.5 }\n",
        "x.toml:3:22: ",
        "backoff.factor must be at least 1.0, found 0.5",
    );
    assert_err(
        "[defaults]\nbackoff = { jitter = 1.5 }\n",
        "x.toml:2:22: ",
        "backoff.jitter must be between 0.0 and 1.0",
    );
    assert_err(
        "[defaults]\nbackoff = { jitter = -0.1 }\n",
        "x.toml:2:22: ",
        "backoff.jitter",
    );
    assert_err(
        "[defaults]\nbackoff.factor = nan\n",
        "x.toml:2:18: ",
        "backoff.factor",
    );
    assert_err(
        "[defaults]\nbreaker.failures = 0\n",
        "x.toml:2:20: ",
        "breaker.failures must be at least 1",
    );
    assert_err(
        "[defaults]\nquarantine_after = 0\n",
        "x.toml:2:20: ",
        "quarantine_after must be at least 1",
    );
    assert_err(
        "[defaults]\nintensity = { period = \"0s\" }\n",
        "x.toml:2:24: ",
        "intensity.period must be greater than 0",
    );
    assert_err(
        "[agents.a]\ncommand = [\"x\"]\nbackoff = { initial = \"1m\", max = \"1s\" }\n",
        "x.toml:3:29: ",
        "backoff.max (1s) must not be less than backoff.initial (1m)",
    );
    assert_err(
        "[defaults]\nno_retry_exit_codes = [1, 256]\n",
        "x.toml:2:27: ",
        "between 0 and 255",
    );
    ok("[defaults]\nbackoff = { factor = 1, jitter = 0 }\nintensity = { max = 0 }\n");
}

#[test]
fn limits_are_checked() {
    assert_err(
        "[defaults]\nmemory = 0\n",
        "x.toml:2:10: ",
        "memory must be greater than 0",
    );
    assert_err("[defaults]\npids = 0\n", "x.toml:2:8: ", "\"unlimited\"");
    assert_err(
        "[defaults]\ncpu_quota = 0.0\n",
        "x.toml:2:13: ",
        "cpu_quota",
    );
    assert_err(
        "[defaults]\ncpu_quota = inf\n",
        "x.toml:2:13: ",
        "cpu_quota",
    );
    assert_err(
        "[defaults]\nwall_time = \"0s\"\n",
        "x.toml:2:13: ",
        "wall_time must be greater than 0",
    );
    assert_err(
        "[defaults]\nnamespaces = [\"pid\", \"pid\"]\n",
        "x.toml:2:22: ",
        "listed twice",
    );
    assert_err("[defaults]\ncwd = \"\"\n", "x.toml:2:7: ", "cwd");
    assert_err("[defaults]\nuser = \"\"\n", "x.toml:2:8: ", "user");
    let config = ok("[defaults]\nmemory = \"unlimited\"\nfile_size = \"unlimited\"\ncpu_quota = 2\n[agents.a]\ncommand = [\"x\"]\n");
    assert_eq!(config.agents["a"].memory, None);
    assert_eq!(config.agents["a"].file_size, None);
    assert_eq!(config.agents["a"].cpu_quota, Some(2.0));
}

#[test]
fn supervisor_section_is_checked() {
    assert_err(
        "[supervisor]\nmax_frame = 512\n",
        "x.toml:2:13: ",
        "max_frame must be between 1KiB and 1GiB",
    );
    assert_err(
        "[supervisor]\nmax_frame = \"2GiB\"\n",
        "x.toml:2:13: ",
        "max_frame",
    );
    assert_err(
        "[supervisor]\nstate_dir = \"\"\n",
        "x.toml:2:13: ",
        "state_dir",
    );
    let config = ok("[supervisor]\nmax_frame = \"1KiB\"\nstate_dir = \"/var/lib/corral\"\n");
    assert_eq!(config.supervisor.max_frame, 1024);
    assert!(config.supervisor.journal);
    assert_eq!(config.supervisor.journal_keep, None);
    assert_eq!(
        config.supervisor.state_dir,
        PathBuf::from("/var/lib/corral")
    );
}

#[test]
fn journal_keys_are_checked() {
    let config = ok("[supervisor]\njournal = false\njournal_keep = \"30d\"\n");
    assert!(!config.supervisor.journal);
    assert_eq!(
        config.supervisor.journal_keep,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_err(
        "[supervisor]\njournal_keep = \"0s\"\n",
        "x.toml:2:16: ",
        "journal_keep must be longer than 0s",
    );
    assert_err(
        "[supervisor]\njournal_keep = \"soon\"\n",
        "x.toml:2:16: ",
        "",
    );
    assert_err("[supervisor]\njournal = \"yes\"\n", "x.toml:2:11: ", "");
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes but one column.
    assert_err(
        "[defaults]\nenv = { \"é\" = \"1\", \"\" = \"2\" }\n",
        "x.toml:2:20: ",
        "is empty",
    );
    assert_eq!(
        Location::from_offset("ab\ncd", 4),
        Location { line: 2, column: 2 }
    );
    assert_eq!(
        Location::from_offset("ab", 99),
        Location { line: 1, column: 3 }
    );
}

#[test]
fn errors_without_location_render_file_and_message() {
    let e = ConfigError::Invalid {
        path: PathBuf::from("x.toml"),
        location: None,
        message: "something".into(),
    };
    assert_eq!(e.to_string(), "x.toml: something");
    assert_eq!(e.path(), Path::new("x.toml"));
}

#[test]
fn every_namespace_is_named_as_the_file_names_it() {
    use strum::VariantArray;
    for ns in Namespace::VARIANTS {
        let json = serde_json::to_value(ns).unwrap();
        assert_eq!(json.as_str(), Some(ns.as_str()), "{ns:?}");
    }
    assert_eq!(Namespace::Mount.as_str(), "mount");
}

/// `corral validate` (`Config::check_text`): the values' problems and the host's together, in
/// file order, one line each.
#[test]
fn values_and_host_problems_are_reported_together_in_file_order() {
    let text = "[agents.a]\ncommand = [\"/bin/true\"]\ncpu_quota = 1e308\n\
                [agents.b]\ncommand = [\"/bin/true\"]\ncwd = \"/nonexistent/corral-test\"\n\
                [agents.c]\ncommand = [\"/nonexistent/corral-prog\"]\n";
    let e = Config::check_text(text, Path::new("c.toml")).expect_err("three problems");
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(
        lines[0].starts_with("c.toml:3:") && lines[0].contains("cpu_quota"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("c.toml:6:") && lines[1].contains("cwd"),
        "{shown}"
    );
    assert!(
        lines[2].starts_with("c.toml:8:") && lines[2].contains("corral-prog"),
        "{shown}"
    );
}

/// Schema errors (an unknown key, a wrong type) do not hide the rest of the file from
/// `corral validate`.
#[test]
fn schema_errors_do_not_hide_the_others() {
    let text = "[agents.a]\ncommand = [\"/bin/true\"]\nhearbeat_interval = \"1s\"\n\
                [agents.b]\ncommand = [\"/bin/true\"]\nmax_retries = -1\n\
                [agents.c]\ncommand = [\"/bin/true\"]\ncpu_quota = 1e308\n\
                [agents.d]\ncommand = [\"/nonexistent/corral-prog\"]\n";
    let e = Config::check_text(text, Path::new("c.toml")).expect_err("four problems");
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(
        lines[0].starts_with("c.toml:3:") && lines[0].contains("did you mean"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("c.toml:6:") && lines[1].contains("max_retries"),
        "{shown}"
    );
    assert!(
        lines[2].starts_with("c.toml:9:") && lines[2].contains("cpu_quota"),
        "{shown}"
    );
    assert!(
        lines[3].starts_with("c.toml:11:") && lines[3].contains("corral-prog"),
        "{shown}"
    );
}

/// An agent with a value's problem is still checked on the host.
#[test]
fn an_agent_with_a_bad_value_is_still_checked_on_the_host() {
    let text = "[agents.c]\ncommand = [\"/nonexistent/corral-prog\"]\ncpu_quota = 1e308\n";
    let e = Config::check_text(text, Path::new("c.toml")).expect_err("two problems");
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[0].starts_with("c.toml:2:") && lines[0].contains("corral-prog"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("c.toml:3:") && lines[1].contains("cpu_quota"),
        "{shown}"
    );
}

#[test]
fn a_grant_table_takes_no_other_key() {
    let agent = "[agents.a]\ncommand = [\"/bin/true\"]\n";
    let cfg = ok(&format!(
        "{agent}tools = [\"fs.read\", {{ name = \"fs.write\", approve = \"ask\" }}]\n"
    ));
    assert_eq!(cfg.agents["a"].approve_tools, ["fs.write"]);
    assert_err(
        &format!(
            "{agent}tools = [{{ name = \"fs.write\", approve = \"ask\", approve_timeout = \"1s\" }}]\n"
        ),
        "x.toml:3:9: ",
        "with no other key",
    );
}

#[test]
fn an_http_tool_url_is_checked_when_read() {
    let tool = |url: &str| format!("[tools.t]\nkind = \"http\"\nurl = \"{url}\"\n");
    ok(&tool("http://127.0.0.1:8080/v1/chat"));
    assert_err(
        &tool("http://exa mple .com/%zz"),
        "x.toml:3:7: ",
        "is not a valid URL",
    );
    assert_err(
        &tool("https://user:secret@example.com/"),
        "x.toml:3:7: ",
        "header_env",
    );
}
