//! `kind = "command"`: the tool's program, run in the sandbox of an agent (see
//! `crate::child`'s `tool_run`): the call's args as JSON on its stdin, its result as JSON on its
//! stdout; a non-zero exit, a signal or output that is not JSON is `tool_failed` with the
//! reason (and the end of its stderr), a run past `timeout` is `timeout` (its tree killed),
//! stdout past `max_response` is `too_large`.

use super::{err, ErrorKind, ToolError, MAX_ARGS_JSON};
use crate::child::{run_tool, Pools};
use crate::config::{AgentSpec, ToolSpec};
use crate::ToolRequest;
use corral_proto::Value;

/// Run `tool` (its sandbox `sandbox`) for `req`.
pub(super) async fn run(
    tool: &ToolSpec,
    sandbox: &AgentSpec,
    pools: Option<&Pools>,
    req: &ToolRequest,
) -> Result<Value, ToolError> {
    let Some(pools) = pools else {
        return err(
            ErrorKind::ToolFailed,
            "command tools need a supervisor's sandbox (Broker::for_supervisor)",
        );
    };
    let input = serde_json::to_vec(&req.call.args.to_json())
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("args as JSON: {e}")))?;
    if input.len() > MAX_ARGS_JSON {
        return err(
            ErrorKind::TooLarge,
            format!(
                "the arguments are {} bytes as JSON, more than a tool takes ({MAX_ARGS_JSON})",
                input.len()
            ),
        );
    }
    let run = run_tool(
        sandbox,
        pools,
        (&req.run_id, req.attempt),
        input,
        tool.timeout,
        tool.max_response,
    )
    .await
    .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("could not start: {e}")))?;
    let name = &tool.name;
    if run.timed_out {
        return err(
            ErrorKind::Timeout,
            format!(
                "tool `{name}` ran past its timeout ({:?}) and was killed with its process tree",
                tool.timeout
            ),
        );
    }
    if run.stdout_over {
        return err(
            ErrorKind::TooLarge,
            format!(
                "tool `{name}` wrote more than max_response ({} bytes) to stdout",
                tool.max_response
            ),
        );
    }
    let tail = last_line(&run.stderr_tail);
    if let Some(sig) = run.signal {
        return err(
            ErrorKind::ToolFailed,
            format!(
                "tool `{name}` was killed by signal {}{tail}",
                crate::child::signal_name(sig)
            ),
        );
    }
    match run.exit_code {
        Some(0) => {}
        Some(code) => {
            return err(
                ErrorKind::ToolFailed,
                format!("tool `{name}` exited with code {code}{tail}"),
            )
        }
        None => {
            return err(
                ErrorKind::ToolFailed,
                format!("tool `{name}` ended without an exit status{tail}"),
            )
        }
    }
    if run.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    match serde_json::from_slice::<serde_json::Value>(&run.stdout) {
        Ok(v) => Ok(Value::from_json(&v)),
        Err(e) => err(
            ErrorKind::ToolFailed,
            format!("tool `{name}` wrote output that is not JSON: {e}"),
        ),
    }
}

/// `": LINE"` of the last non-empty line of stderr (cut), or nothing.
fn last_line(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", super::broker::clip(l.trim(), 512)),
        None => String::new(),
    }
}
