//! Row 10: a tool call's round trip through the broker. A real `chaos` agent makes N `fs.list`
//! calls of its workspace in one task (`{"do":"tools"}`); every call goes up the pipe, through
//! the attempt, to a [`Broker`] (made from the config, as `corral call` makes it) which executes
//! it (`dedup = false`, so none is served from the trace) and answers down the pipe. The
//! baseline is a raw frame round trip in the same run: a `ToolCall` frame written by one thread
//! on a pipe, decoded by another, which writes the same `ToolResult` back on a second pipe.

use crate::harness::{self, Env};
use crate::raw;
use crate::stats::{self, fig, p50, p99, Figure, Row, Section, Unit};
use anyhow::{anyhow, bail, Result};
use corral::tools::Broker;
use corral::{CallOptions, Supervisor, ToolRequest};
use corral_proto::frame::{self, FrameReader};
use corral_proto::{Down, ToolCall, ToolResult, Up, Value};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Row 1's agent keys, `fs.list` granted, and the tool executed at every call.
pub fn tool_keys(plain: &str) -> String {
    format!("{plain}tools = [\"fs.list\"]\n\n[tools.\"fs.list\"]\ndedup = false\n")
}

/// The task: `n` calls of `fs.list` of the workspace, in order.
pub fn tools_input(n: usize) -> Value {
    let call = serde_json::json!({"tool": "fs.list", "args": {"path": "."}});
    Value::from_json(&serde_json::json!({"do": "tools", "calls": vec![call; n]}))
}

/// The `results` of a `{"do":"tools"}` output: how many were ok, and the first value.
pub fn tool_results(out: &Value) -> (usize, Option<Value>) {
    let json = out.to_json();
    let Some(list) = json["results"].as_array() else {
        return (0, None);
    };
    let ok = list.iter().filter(|r| r["ok"] == true).count();
    let first = list.first().map(|r| Value::from_json(&r["value"]));
    (ok, first)
}

/// What one task of `n` calls gave.
struct Run {
    /// The instant each `ToolRequest` reached the bench (the owner of the broker).
    stamps: Vec<Instant>,
    /// Time in `Broker::dispatch` per call (permission, execution and reply when answered at
    /// once; else until its task was spawned).
    handled: Vec<Duration>,
    /// The value the first call returned.
    first: Value,
}

/// One task of `n` calls through `broker`.
async fn corral_run(sup: Arc<Supervisor>, broker: Arc<Broker>, n: usize) -> Result<Run, String> {
    let (tx, mut rx) = mpsc::channel::<ToolRequest>(64);
    let opts = CallOptions {
        tools: Some(tx),
        ..Default::default()
    };
    let call = sup.call("chaos", tools_input(n), opts);
    let serve = async move {
        let mut stamps = Vec::with_capacity(n);
        let mut handled = Vec::with_capacity(n);
        while let Some(req) = rx.recv().await {
            stamps.push(Instant::now());
            // As `Broker::serve` does: answered at once when nothing waits, else on a task.
            let t = Instant::now();
            broker.dispatch(req);
            handled.push(t.elapsed());
        }
        (stamps, handled)
    };
    let (out, (stamps, handled)) = tokio::join!(call, serve);
    let out = out.map_err(|e| e.to_string())?;
    let Some(output) = out.output.as_ref() else {
        return Err(out
            .last()
            .map(|r| format!("{}", r.reason))
            .unwrap_or_else(|| "no attempt".into()));
    };
    let (ok, first) = tool_results(output);
    if ok != n || stamps.len() != n {
        return Err(format!(
            "{ok} of {n} calls ok, {} reached the broker",
            stamps.len()
        ));
    }
    Ok(Run {
        stamps,
        handled,
        first: first.unwrap_or(Value::Null),
    })
}

/// The raw baseline: `n` round trips between two threads over two pipes, the "agent" thread
/// encoding each `ToolCall` as the SDK does and waiting for its `ToolResult`; the instants at
/// which the "supervisor" side decoded each call.
fn raw_run(n: usize, reply: &Value) -> Result<Vec<Instant>> {
    let (up_r, up_w) = raw::pipe()?;
    let (down_r, down_w) = raw::pipe()?;
    let args = Value::from_json(&serde_json::json!({"path": "."}));
    let agent = std::thread::spawn(move || -> Result<()> {
        let mut up = File::from(up_w);
        let mut down = FrameReader::new(File::from(down_r));
        for call_id in 1..=n as u64 {
            let bytes = frame::encode(&Up::ToolCall(ToolCall {
                call_id,
                tool: "fs.list".into(),
                args: args.clone(),
            }))?;
            up.write_all(&bytes)?;
            match down.read_frame::<Down>()? {
                Some(Down::ToolResult(r)) if r.call_id == call_id => {
                    std::hint::black_box(r);
                }
                other => bail!("expected the ToolResult of call {call_id}, got {other:?}"),
            }
        }
        Ok(())
    });
    let mut stamps = Vec::with_capacity(n);
    let mut up = FrameReader::new(File::from(up_r));
    let mut down = File::from(down_w);
    while let Some(msg) = up.read_frame::<Up>()? {
        stamps.push(Instant::now());
        let Up::ToolCall(call) = msg else {
            bail!("expected a ToolCall");
        };
        let bytes = frame::encode(&Down::ToolResult(ToolResult {
            call_id: call.call_id,
            result: Ok(reply.clone()),
        }))?;
        down.write_all(&bytes)?;
        if stamps.len() == n {
            break;
        }
    }
    drop(down);
    agent
        .join()
        .map_err(|_| anyhow!("raw agent thread panicked"))??;
    if stamps.len() != n {
        bail!("{} of {n} raw round trips", stamps.len());
    }
    Ok(stamps)
}

/// Round trips (consecutive arrivals) and the rate over one run.
fn split(stamps: &[Instant], trips: &mut Vec<Duration>) -> f64 {
    trips.extend(stamps.windows(2).map(|w| w[1] - w[0]));
    match (stamps.first(), stamps.last()) {
        (Some(a), Some(b)) if b > a => (stamps.len() - 1) as f64 / (*b - *a).as_secs_f64(),
        _ => f64::NAN,
    }
}

/// Row 10.
pub fn row10(env: &Env, sec: &mut Section) -> Result<()> {
    let (n, runs) = if env.quick { (500, 3) } else { (2000, 5) };
    let keys = tool_keys(crate::call_rows::PLAIN);
    let text = harness::config_text("chaos", &env.chaos, &keys)?;
    let sup = harness::supervisor(env, &text, false)?;
    let broker = Arc::new(Broker::for_supervisor(&sup.sup));
    let (mut trips, mut rates, mut handled) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_trips, mut raw_rates) = (Vec::new(), Vec::new());
    let mut failure = None;
    for _ in 0..runs {
        let r = env.run(corral_run(sup.sup.clone(), broker.clone(), n))?;
        let reply = match r {
            Ok(run) => {
                rates.push(split(&run.stamps, &mut trips));
                handled.extend(run.handled);
                run.first
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let stamps = raw_run(n, &reply)?;
        raw_rates.push(split(&stamps, &mut raw_trips));
    }
    let corral_fig = |f: Figure| match &failure {
        Some(e) => Figure::NotMeasured(format!("n/a: {e}")),
        None => f,
    };
    let rf = |v: &[f64]| match stats::rate_summary(v) {
        Some(s) => Figure::Measured(s),
        None => Figure::NotMeasured("no samples".into()),
    };
    let row = Row::new(
        "10a",
        "tool round trip, fs.list via broker",
        Unit::Time,
        corral_fig(fig(&trips)),
    )
    .base("raw ToolCall/ToolResult frames", fig(&raw_trips));
    let met = row.ratio().map(|r| r <= 2.0);
    sec.rows.push(row.target("≤ 2× raw p50", met));
    sec.rows.push(
        Row::new(
            "10b",
            "tool calls/s, one agent (fs.list)",
            Unit::Rate,
            corral_fig(rf(&rates)),
        )
        .base("raw frame round trips/s", rf(&raw_rates))
        .target("informative", None),
    );
    sec.note(format!(
        "10a: chaos {{\"do\":\"tools\"}} making {n} fs.list {{\"path\":\".\"}} calls in one \
         task, {runs} tasks (row 1's agent keys, journal on, dedup = false so the broker lists \
         the workspace at every call); a round trip is the time between two consecutive \
         ToolRequests reaching the bench, which owns the broker (answer → ToolResult down the \
         pipe → the agent decodes it, encodes the next call → up the pipe → the attempt \
         relays it); p50 {} p99 {}, of which in Broker::dispatch (permission, listing the \
         workspace, the reply sent: {} of {} calls answered at once, without a task of their \
         own) p50 {} p99 {}. Baseline: two threads and two pipes in the bench, the \
         agent side encoding each ToolCall and blocking on its ToolResult (carrying the value \
         fs.list returned), timed the same way on the other side; p50 {} p99 {}",
        p50(&trips),
        p99(&trips),
        broker.answered_inline(),
        handled.len(),
        p50(&handled),
        p99(&handled),
        p50(&raw_trips),
        p99(&raw_trips)
    ));
    sec.note(format!(
        "10b: calls/s = (n − 1) / (first → last ToolRequest) per task; the p99 column is the \
         slowest of the {runs} tasks; broker executions {}",
        broker.executions()
    ));
    Ok(())
}
