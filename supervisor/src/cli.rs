//! The `corral` command line: thin faces over the library.
//!
//! Verbs: `call` (one task on one fresh agent process, with the restart policy), `validate`
//! (check a config without running anything), `demo` (real agents misbehaving on the embedded
//! defaults). Exit codes: 0 success, 1 the task failed, 2 usage or config errors.

use crate::config::{self, Config};
use crate::record::ExitRecord;
use crate::run::{CallOptions, Supervisor};
use clap::{Parser, Subcommand};
use corral_proto::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// corral: a process-isolating supervisor for AI agents.
#[derive(Parser, Debug)]
#[command(name = "corral", version, about)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one task on one fresh agent process and print its output.
    Call {
        /// Agent name from the config.
        agent: String,
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The task input, as JSON.
        #[arg(long, short, default_value = "null")]
        input: String,
        /// Print one JSON object: {"output": …, "attempts": [exit records]}.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file without running anything.
    Validate {
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run real agents on the embedded defaults, misbehaving on purpose, and show what corral
    /// recorded for each.
    Demo,
}

/// Config used when none is given: the example agents next to the `corral` binary.
pub fn embedded_default() -> String {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let esc = |p: PathBuf| {
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    format!(
        r#"# Embedded defaults: the example agents built next to this binary.
[supervisor]
state_dir = "{state}"

[defaults]
heartbeat_interval = "200ms"
heartbeat_timeout = "1s"
startup_timeout = "5s"
kill_grace = "500ms"
backoff = {{ initial = "50ms", max = "1s" }}
breaker = {{ failures = 20, open_for = "10s" }}
max_retries = 2

[agents.echo]
command = ["{echo}"]

[agents.chaos]
command = ["{chaos}"]
wall_time = "5s"
stall_timeout = "2s"
"#,
        state = esc(std::env::temp_dir().join("corral-state")),
        echo = esc(dir.join("echo")),
        chaos = esc(dir.join("chaos")),
    )
}

fn load_config(path: Option<&Path>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => config::load(p),
        None => {
            let local = Path::new("corral.toml");
            if local.exists() {
                config::load(local)
            } else {
                config::parse(&embedded_default(), Path::new("<embedded defaults>"))
            }
        }
    }
}

fn init_tracing(verbose: Option<u8>) {
    let default = match verbose {
        None => "error",
        Some(0) => "warn",
        Some(1) => "info",
        Some(_) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point of the `corral` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The demo prints its own table; its warnings would only repeat it.
    let quiet_demo = matches!(cli.command, Command::Demo) && cli.verbose == 0;
    init_tracing(if quiet_demo { None } else { Some(cli.verbose) });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let code = match cli.command {
            Command::Call {
                agent,
                config,
                input,
                json,
            } => call(&agent, config.as_deref(), &input, json).await,
            Command::Validate { config } => validate(config.as_deref()),
            Command::Demo => demo().await,
        };
        // Workspaces and cgroups of finished attempts are removed on the reaper thread: gone
        // before the process is.
        crate::sandbox::process::settled().await;
        code
    })
}

/// A supervisor on a loaded config, or the exit code after saying what is wrong (2).
fn start(cfg: Result<Config, config::ConfigError>) -> Result<Supervisor, ExitCode> {
    let cfg = cfg.map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    Supervisor::new(cfg).map_err(|e| {
        eprintln!("corral: {e}");
        ExitCode::from(2)
    })
}

fn validate(path: Option<&Path>) -> ExitCode {
    match load_config(path) {
        Ok(cfg) => {
            println!(
                "{}: ok, {} agent(s): {}",
                cfg.path.display(),
                cfg.agents.len(),
                cfg.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            for (name, spec) in &cfg.agents {
                let found = config::exposure::assess(spec);
                if found.is_empty() {
                    println!("agent `{name}`: fully contained (the default; docs/isolation.md)");
                }
                for e in found {
                    println!(
                        "agent `{name}`: {}: {}: {}",
                        e.level.as_str(),
                        e.key,
                        e.gives_away
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn call(agent: &str, path: Option<&Path>, input: &str, json: bool) -> ExitCode {
    let input: serde_json::Value = match serde_json::from_str(input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("corral: --input is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let sup = match start(load_config(path)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // One call: a warm stem made after it would only be thrown away at exit.
    sup.disable_prewarm();
    // SIGINT/SIGTERM stop the agent with escalation and still print its record (reason
    // `shutdown`), instead of leaving it to PDEATHSIG.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(Some(crate::record::ExitReason::Shutdown));
    });
    let opts = CallOptions {
        stop: Some(stop_rx),
        ..Default::default()
    };
    let outcome = match sup.call(agent, Value::from_json(&input), opts).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        let doc = serde_json::json!({
            "output": outcome.output.as_ref().map(Value::to_json),
            "attempts": outcome.attempts,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if let Some(out) = &outcome.output {
        println!("{}", out.to_json());
    }
    if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        if !json {
            if let Some(last) = outcome.last() {
                eprintln!("corral: {}", describe_failure(last, outcome.attempts.len()));
            }
        }
        ExitCode::from(1)
    }
}

/// One line saying why a task failed.
pub fn describe_failure(last: &ExitRecord, attempts: usize) -> String {
    let msg = last
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    format!(
        "task failed: {} after {} attempt(s): {}",
        last.reason, attempts, msg
    )
}

async fn demo() -> ExitCode {
    let sup = match start(config::parse(
        &embedded_default(),
        Path::new("<embedded defaults>"),
    )) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!("corral demo: real agent processes on the embedded defaults\n");
    let cases: &[(&str, &str)] = &[
        ("echo", r#"{"hello":"world"}"#),
        ("chaos", r#"{"do":"ok"}"#),
        ("chaos", r#"{"do":"fail","retryable":false}"#),
        ("chaos", r#"{"do":"exit","code":3}"#),
        ("chaos", r#"{"do":"crash"}"#),
        ("chaos", r#"{"do":"garbage"}"#),
        ("chaos", r#"{"do":"huge_frame"}"#),
        ("chaos", r#"{"do":"hang"}"#),
        ("chaos", r#"{"do":"hog_mb","mb":600}"#),
        ("chaos", r#"{"do":"read","path":"/root/.profile"}"#),
    ];
    println!(
        "{:<6} {:<34} {:<9} {:<28} {:>5} {:>8}  detail",
        "agent", "input", "result", "reasons", "tries", "ms"
    );
    for (agent, input) in cases {
        let json: serde_json::Value = serde_json::from_str(input).unwrap_or_default();
        let started = std::time::Instant::now();
        match sup
            .call(agent, Value::from_json(&json), CallOptions::default())
            .await
        {
            Ok(o) => {
                let reasons: Vec<_> = o.attempts.iter().map(|a| a.reason.as_str()).collect();
                let detail = match (&o.output, o.last()) {
                    (Some(out), _) => out.to_json().to_string(),
                    (None, Some(last)) => last
                        .error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                println!(
                    "{:<6} {:<34} {:<9} {:<28} {:>5} {:>8}  {}",
                    agent,
                    input,
                    if o.ok() { "ok" } else { "failed" },
                    dedup(&reasons),
                    o.attempts.len(),
                    started.elapsed().as_millis(),
                    detail
                );
            }
            Err(e) => println!("{agent:<6} {input:<34} error: {e}"),
        }
    }
    println!("\nEvery attempt above has a full exit record: try\n  corral call chaos --input '{{\"do\":\"crash\"}}' --json");
    ExitCode::SUCCESS
}

fn dedup(reasons: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < reasons.len() {
        let mut j = i;
        while j < reasons.len() && reasons[j] == reasons[i] {
            j += 1;
        }
        out.push(if j - i > 1 {
            format!("{}×{}", reasons[i], j - i)
        } else {
            reasons[i].to_string()
        });
        i = j;
    }
    out.join(",")
}
