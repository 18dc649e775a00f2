//! The `corral` command line: thin faces over the library.
//!
//! Verbs: `call` (one task on one fresh agent process, with the restart policy), `validate`
//! (check a config without running anything), `demo` (real agents misbehaving on the embedded
//! defaults). Exit codes: 0 success, 1 the task failed, 2 usage or config errors.
//!
//! Here: the arguments, logging and the runtime; the verbs are in `verbs`, the config they run
//! on (a file, or the embedded defaults) in `defaults`.

mod approve;
mod defaults;
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
        /// The task input, as JSON.
        #[arg(long, short, default_value = "null")]
        input: String,
        /// Print one JSON object: {"output": …, "attempts": [exit records]}.
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
    },
    /// Run real agents on the embedded defaults, misbehaving on purpose, and show what corral
    /// recorded for each.
    Demo,
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
                approve,
            } => verbs::call(&agent, config.as_deref(), &input, json, approve).await,
            Command::Validate { config } => verbs::validate(config.as_deref()),
            Command::Demo => verbs::demo().await,
        };
        // Workspaces (and their quota's tmpfs) and cgroups of finished attempts are removed on
        // the reaper thread: gone before the process is.
        corral::sandbox::process::settled().await;
        code
    })
}
