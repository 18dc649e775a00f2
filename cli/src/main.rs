//! The `corral` command line: thin faces over the library.
//!
//! Verbs: `call` (one task on one fresh agent process, with the restart policy), `validate`
//! (check a config without running anything), `demo` (real agents misbehaving on the embedded
//! defaults), and over the journal `runs`, `show` and `replay`. Exit codes: 0 success, 1 the task failed, 2 usage or config errors.
//!
//! Here: the arguments, logging and the runtime; the verbs are in `verbs`, the config they run
//! on (a file, or the embedded defaults) in `defaults`.

mod approve;
mod defaults;
mod demo;
mod input;
mod plan;
mod runs;
mod verbs;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// corral: a process-isolating supervisor for AI agents.
#[derive(Parser, Debug)]
#[command(name = "corral", version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// The verb.
    #[command(subcommand)]
    command: Command,
}

/// The verbs.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run one task on one fresh agent process and print its output.
    Call {
        /// Agent name from the config.
        agent: String,
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The task input: JSON, @FILE holding JSON, or - to read it from stdin.
        #[arg(long, short, default_value = "null")]
        input: String,
        /// Print one JSON object: {"run_id": …, "output": …, "attempts": [exit records]}.
        #[arg(long)]
        json: bool,
        /// Ask on the terminal about calls of tools with `approve = "ask"` (else they are
        /// denied).
        #[arg(long)]
        approve: bool,
    },
    /// Check a config file without running anything.
    Validate {
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A plan file to check against the config too.
        plan: Option<PathBuf>,
        /// Also start each agent once, up to `Ready`, and show its contract (or why it could
        /// not start, with its stderr).
        #[arg(long)]
        start: bool,
        /// Print the resolved config (built-in defaults included), per agent, as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Run a plan: a DAG of agent calls with hand-offs, fan-out, checkpoints and resume.
    Run {
        /// The plan file.
        plan: PathBuf,
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The run's input: JSON, @FILE holding JSON, or - to read it from stdin.
        #[arg(long, short, default_value = "null")]
        input: String,
        /// Print one JSON object: {run_id, status, output, nodes}.
        #[arg(long)]
        json: bool,
        /// Resume this run: re-run only the instances that did not finish.
        #[arg(long)]
        resume: Option<String>,
    },
    /// Run a real multi-agent plan on the embedded defaults (a review of a source tree, with
    /// agents that crash, hang and fail on purpose) and show what corral did.
    Demo {
        /// Instead: single agents misbehaving one by one, and what corral recorded for each.
        #[arg(long)]
        chaos: bool,
    },
    /// Recent runs from the journal, newest first.
    Runs {
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON: a list of {run_id, agent, status, started_at, ended_at, attempts}.
        #[arg(long)]
        json: bool,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only runs of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs in this status: succeeded, failed, degraded, interrupted or running.
        #[arg(long, value_parser = parse_status)]
        status: Option<corral::journal::RunStatus>,
    },
    /// The timeline of one run: each attempt, what it saw, its tool calls, its output.
    Show {
        /// The run's id (see `corral runs`).
        run_id: String,
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a recorded task again with a fresh agent, answering its tool calls from the
    /// recording, and report the first divergence (exit 0 identical, 1 divergent).
    Replay {
        /// The run's id (see `corral runs`).
        run_id: String,
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print {"identical": …, "divergence": …} as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--status` of `corral runs`.
fn parse_status(s: &str) -> Result<corral::journal::RunStatus, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not a run status: succeeded, failed, degraded, interrupted or running")
    })
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
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
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
    let quiet_demo = matches!(cli.command, Command::Demo { .. }) && cli.verbose == 0;
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
                approve,
            } => verbs::call(&agent, config.as_deref(), &input, json, approve).await,
            Command::Validate {
                config,
                plan,
                start,
                print,
            } => {
                let how = verbs::Validate { start, print };
                verbs::validate(config.as_deref(), plan.as_deref(), how).await
            }
            Command::Run {
                plan: plan_path,
                config,
                input,
                json,
                resume,
            } => {
                plan::run(
                    &plan_path,
                    config.as_deref(),
                    &input,
                    json,
                    resume.as_deref(),
                )
                .await
            }
            Command::Demo { chaos: false } => demo::review().await,
            Command::Demo { chaos: true } => demo::chaos().await,
            Command::Runs {
                config,
                json,
                limit,
                agent,
                status,
            } => runs::runs(config.as_deref(), json, limit, agent, status),
            Command::Show {
                run_id,
                config,
                json,
            } => runs::show(config.as_deref(), &run_id, json),
            Command::Replay {
                run_id,
                config,
                json,
            } => runs::replay(config.as_deref(), &run_id, json).await,
        };
        // Workspaces (and their quota's tmpfs) and cgroups of finished attempts are removed on
        // the reaper thread: gone before the process is.
        corral::sandbox::process::settled().await;
        code
    })
}
