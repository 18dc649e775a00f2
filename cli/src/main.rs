//! The `corral` command line: thin faces over the library.
//!
//! Verbs: `call` (one task on one fresh agent process, with the restart policy), `validate`
//! (check a config without running anything), `demo` (real agents misbehaving on the embedded
//! defaults), and over the journal `runs`, `show` and `replay`. Exit codes: 0 success, 1 the task failed, 2 usage or config errors.
//!
//! Here: the arguments, logging and the runtime; the verbs are in `verbs`, the config they run
//! on (a file, or the embedded defaults) in `defaults`.

mod approve;
mod ctl;
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
        /// The run's input: JSON, @FILE holding JSON, or - to read it from stdin (default:
        /// null; with --resume, the input the run was started with).
        #[arg(long, short)]
        input: Option<String>,
        /// Print one JSON object: {run_id, status, output, nodes}.
        #[arg(long)]
        json: bool,
        /// Resume this run (started from the same plan file, on the same input): re-run only
        /// the instances that did not finish.
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
        /// Only runs in this status: succeeded, failed, degraded, interrupted, cancelled or running.
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
    #[command(flatten)]
    Daemon(Daemon),
}

/// How a client verb finds the daemon.
#[derive(clap::Args, Debug)]
struct Conn {
    /// The config file the daemon runs on (its `control_socket`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// The daemon's verbs.
#[derive(Subcommand, Debug)]
enum Daemon {
    /// Run the daemon: service agents, the control socket, runs submitted to it (systemd
    /// Type=notify; SIGTERM drains, SIGHUP reloads).
    Serve {
        /// Config file (default: ./corral.toml if present, else the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The daemon's agent processes.
    Ps {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON: a list of {name, agent, instance, service, state, pid, uptime_s,
        /// restarts, last_exit_reason, rss_kb, cpu_ms, breaker}.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's summary.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a service agent's instances (they stay stopped until `start`).
    Stop {
        /// The agent.
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a stopped service agent.
    Start {
        /// The agent.
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restart a service agent's instances.
    Restart {
        /// The agent.
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Submit a task for an agent, or a plan run (`--plan`); prints the run id.
    Submit {
        /// The agent (not with --plan).
        agent: Option<String>,
        /// A plan file to run instead.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The input, as JSON, or @FILE holding JSON.
        #[arg(long, short, default_value = "null")]
        input: String,
        /// Wait for the end and print what `call` / `run` print.
        #[arg(long)]
        wait: bool,
        /// With --wait: print the JSON document of `call --json` / `run --json`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a run under way.
    Cancel {
        /// The run id `submit` printed.
        run_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close an agent's circuit breaker and lift its quarantine.
    Reset {
        /// The agent.
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Recent log lines of an agent.
    Logs {
        /// The agent.
        agent: String,
        /// Go on printing lines as they come.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// The daemon's events as they happen (one JSON object a line).
    Events {
        /// Follow (the only mode: events are not kept).
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Tool calls waiting for an operator's approval.
    Approvals {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting tool call.
    Approve {
        /// Its id (see `corral approvals`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deny a waiting tool call.
    Deny {
        /// Its id (see `corral approvals`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `--status` of `corral runs`.
fn parse_status(s: &str) -> Result<corral::journal::RunStatus, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not a run status: succeeded, failed, degraded, interrupted, cancelled or running")
    })
}

/// Whether stderr is the journal (`JOURNAL_STREAM` names its device and inode).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata(format!("/proc/self/fd/{}", std::io::stderr().as_raw_fd())) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino())
        }
        Err(_) => false,
    }
}

/// The daemon's logs: journald's native protocol when stderr is the journal, else lines.
fn init_daemon_tracing(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier("corral".into()))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
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

/// A reader that left (`corral events | head -2`) ends the command quietly, as it ends any
/// Unix filter, instead of a panic's backtrace: Rust ignores SIGPIPE, so `println!` panics on
/// the closed pipe, and this hook exits in its place (0, what `head` leaves). Any other panic
/// is reported as before.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
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
    if matches!(cli.command, Command::Daemon(Daemon::Serve { .. })) {
        init_daemon_tracing(cli.verbose);
    } else {
        init_tracing(if quiet_demo { None } else { Some(cli.verbose) });
    }
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
                    input.as_deref(),
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
            Command::Daemon(d) => daemon_verb(d).await,
        };
        // Workspaces (and their quota's tmpfs) and cgroups of finished attempts are removed on
        // the reaper thread: gone before the process is.
        corral::sandbox::process::settled().await;
        code
    })
}

/// The daemon's verbs: `serve`, and the client verbs through its control socket.
async fn daemon_verb(d: Daemon) -> ExitCode {
    use corral::control::Request;
    let conn_of = |c: &Conn| ctl::socket(c.socket.as_deref(), c.config.as_deref());
    let simple =
        |conn: &Conn, req: Request, json: bool, table: fn(&serde_json::Value) -> String| {
            match conn_of(conn) {
                Ok(s) => ctl::simple(&s, req, json, table),
                Err(code) => code,
            }
        };
    match d {
        Daemon::Serve { config } => {
            let path = config.unwrap_or_else(|| PathBuf::from("corral.toml"));
            ctl::serve(&path).await
        }
        Daemon::Ps { conn, json } => simple(&conn, Request::Ps, json, ctl::ps_table),
        Daemon::Status { conn, json } => simple(&conn, Request::Status, json, ctl::status_text),
        Daemon::Stop { agent, conn } => {
            simple(&conn, Request::Stop { agent }, false, ctl::ack_text)
        }
        Daemon::Start { agent, conn } => {
            simple(&conn, Request::Start { agent }, false, ctl::ack_text)
        }
        Daemon::Restart { agent, conn } => {
            simple(&conn, Request::Restart { agent }, false, ctl::ack_text)
        }
        Daemon::Cancel { run_id, conn } => {
            simple(&conn, Request::Cancel { run_id }, false, ctl::ack_text)
        }
        Daemon::Reset { agent, conn } => {
            simple(&conn, Request::Reset { agent }, false, ctl::ack_text)
        }
        Daemon::Logs {
            agent,
            follow,
            conn,
        } => simple(&conn, Request::Logs { agent, follow }, false, ctl::ack_text),
        Daemon::Events { follow: _, conn } => simple(&conn, Request::Events, false, ctl::ack_text),
        Daemon::Approvals { conn, json } => {
            simple(&conn, Request::Approvals, json, ctl::approvals_text)
        }
        Daemon::Approve { id, conn } => simple(
            &conn,
            Request::Decide { id, allow: true },
            false,
            ctl::ack_text,
        ),
        Daemon::Deny { id, conn } => simple(
            &conn,
            Request::Decide { id, allow: false },
            false,
            ctl::ack_text,
        ),
        Daemon::Submit {
            agent,
            plan,
            input,
            wait,
            json,
            conn,
        } => {
            let input = match ctl::read_input(&input) {
                Ok(i) => i,
                Err(code) => return code,
            };
            let req = match (agent, plan) {
                (Some(agent), None) => Request::SubmitTask { agent, input, wait },
                (None, Some(plan)) => match std::fs::read_to_string(&plan) {
                    Ok(text) => Request::SubmitPlan {
                        path: plan.display().to_string(),
                        text,
                        input,
                        wait,
                    },
                    Err(e) => {
                        eprintln!("corral: plan {}: {e}", plan.display());
                        return ExitCode::from(2);
                    }
                },
                _ => {
                    eprintln!("corral submit: give an AGENT or --plan PLAN (one of them)");
                    return ExitCode::from(2);
                }
            };
            match conn_of(&conn) {
                Ok(s) => ctl::submit(&s, req, json),
                Err(code) => code,
            }
        }
    }
}
