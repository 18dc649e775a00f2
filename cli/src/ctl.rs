//! The daemon's verbs: `serve`, and the client verbs that talk to it over its control socket
//! (`ps`, `status`, `stop|start|restart`, `submit`, `cancel`, `reset`, `logs`, `events`,
//! `approvals`, `approve`, `deny`). The socket is found with `--socket PATH`, or from the
//! config the daemon runs on (`--config FILE`, default as for the other verbs); with neither
//! and no `./corral.toml`, the packaged service's socket ([`PACKAGED_SOCKET`]) when it is there.
//! With no daemon: one line, exit 2.

use corral::control::{Client, Request, Response};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `corral serve`.
pub async fn serve(config: &Path) -> ExitCode {
    match corral::daemon::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral serve: {e}");
            ExitCode::from(2)
        }
    }
}

/// The control socket of `packaging/corral.service` with its sample config.
pub const PACKAGED_SOCKET: &str = "/run/corral/control.sock";

/// Where the control socket is.
pub fn socket(socket: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, ExitCode> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    // An admin on a host running the packaged service need not name its config (which they
    // may not be allowed to read).
    let packaged = Path::new(PACKAGED_SOCKET);
    if config.is_none() && !Path::new("corral.toml").exists() && packaged.exists() {
        return Ok(packaged.to_path_buf());
    }
    match crate::defaults::load_config(config) {
        Ok(c) => Ok(c.supervisor.control_socket),
        Err(e) => {
            // The daemon keeps running on the config it loaded when an edit of the file is
            // invalid (its reload refused it): the socket is still found in the file.
            if let Some(s) = config.and_then(corral::config::control_socket_of) {
                eprintln!("corral: warning: {e}");
                return Ok(s);
            }
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Ask `req` on `socket`, printing lines of a stream as they come; the final answer.
fn ask(socket: &Path, req: &Request) -> Result<Response, ExitCode> {
    let client = Client::connect(socket).map_err(|e| {
        eprintln!("corral: {e}");
        ExitCode::from(2)
    })?;
    let r = client.ask(req, |r| match r {
        Response::Line(l) => println!("{l}"),
        Response::Accepted { run_id } => eprintln!("run {run_id} accepted"),
        _ => {}
    });
    match r {
        Ok(Response::Error { kind, message }) => {
            eprintln!("corral: {kind}: {message}");
            Err(ExitCode::from(if kind == "denied" { 2 } else { 1 }))
        }
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("corral: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// A verb whose answer is one JSON document: printed as JSON, or as a table by `table`.
pub fn simple(
    socket: &Path,
    req: Request,
    as_json: bool,
    table: fn(&serde_json::Value) -> String,
) -> ExitCode {
    match ask(socket, &req) {
        Ok(Response::Json(text)) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text));
            } else {
                print!("{}", table(&v));
            }
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// `corral ps` as a table.
pub fn ps_table(v: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:>8} {:>8} {:>8} {:<18} {:>8} {:>8} {:<9}\n",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "RSS KB", "CPU MS", "BREAKER"
    );
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for r in v.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<9} {:>8} {:>8} {:>8} {:<18} {:>8} {:>8} {:<9}\n",
            s(&r["name"]),
            s(&r["state"]),
            s(&r["pid"]),
            s(&r["uptime_s"]),
            s(&r["restarts"]),
            s(&r["last_exit_reason"]),
            s(&r["rss_kb"]),
            s(&r["cpu_ms"]),
            s(&r["breaker"]),
        ));
    }
    out
}

/// `corral status` as text.
pub fn status_text(v: &serde_json::Value) -> String {
    format!(
        "corral daemon pid {} on {}: {}\n",
        v["pid"],
        v["config"].as_str().unwrap_or("-"),
        v["summary"].as_str().unwrap_or("-")
    )
}

/// Plain acknowledgements.
pub fn ack_text(v: &serde_json::Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        format!("{v}\n")
    }
}

/// `corral approvals` as text.
pub fn approvals_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for p in v.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}  {}  {}  {}  {}\n",
            p["id"].as_str().unwrap_or("-"),
            p["agent"].as_str().unwrap_or("-"),
            p["tool"].as_str().unwrap_or("-"),
            p["args"],
            p["asked_at"].as_str().unwrap_or("-")
        ));
    }
    if out.is_empty() {
        out.push_str("no tool call waits for approval\n");
    }
    out
}

/// `corral submit`: prints the run id; with `--wait`, what `call`/`run` print, and their exit
/// code.
pub fn submit(socket: &Path, req: Request, json: bool) -> ExitCode {
    let wait = matches!(
        req,
        Request::SubmitTask { wait: true, .. } | Request::SubmitPlan { wait: true, .. }
    );
    let client = match Client::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    let r = client.ask(&req, |_| {});
    match r {
        Ok(Response::Accepted { run_id }) if !wait => {
            println!("{run_id}");
            ExitCode::SUCCESS
        }
        Ok(Response::Finished {
            json: doc,
            output,
            exit,
            summary,
        }) => {
            if json {
                println!("{doc}");
            } else {
                if output != "null" && !output.is_empty() {
                    println!("{output}");
                }
                if !summary.is_empty() {
                    eprintln!("{summary}");
                }
            }
            ExitCode::from(exit)
        }
        Ok(Response::Error { kind, message }) => {
            eprintln!("corral: {kind}: {message}");
            ExitCode::from(
                if kind == "invalid_plan" || kind == "bad_request" || kind == "denied" {
                    2
                } else {
                    1
                },
            )
        }
        // Waiting, and the daemon went before the answer (it stopped).
        Ok(Response::Accepted { run_id }) => {
            eprintln!(
                "corral: the daemon stopped before run {run_id} ended: see `corral show {run_id}`"
            );
            ExitCode::from(1)
        }
        Ok(other) => {
            eprintln!("corral: unexpected answer: {other:?}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("corral: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--input`: JSON, or `@file` holding JSON, checked here.
pub fn read_input(arg: &str) -> Result<String, ExitCode> {
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| {
            eprintln!("corral: --input {arg}: {e}");
            ExitCode::from(2)
        })?,
        None => arg.to_string(),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(_) => Ok(text),
        Err(e) => {
            eprintln!("corral: --input is not valid JSON: {e}");
            Err(ExitCode::from(2))
        }
    }
}
