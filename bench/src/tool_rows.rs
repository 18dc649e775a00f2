//! Row 10: a tool call's round trip through the broker. A real `chaos` agent makes N `fs.list`
//! calls of its workspace in one task (`{"do":"tools","timed":true}`), timing each from before
//! the call to its result; every call goes up the pipe to the attempt, which hands it to the
//! [`Broker`] (made from the config, as `corral call` makes it, and called in the attempt's own
//! task as `corral call` calls it: `ToolSink::Broker`), which executes it (`dedup = false`, so
//! none is served from the trace) and answers down the pipe. The baseline is a raw frame round
//! trip in the same run: a thread encodes a `ToolCall` frame on a pipe and waits for the
//! `ToolResult` that another thread, which decoded the call, writes back on a second pipe;
//! timed the same way, by the calling side.

use crate::harness::{self, Env};
use crate::raw;
use crate::stats::{self, fig, p50, p99, Figure, Row, Section, Unit};
use anyhow::{anyhow, bail, Result};
use corral::tools::Broker;
use corral::{CallOptions, Supervisor};
use corral_proto::frame::{self, FrameReader};
use corral_proto::{Down, ToolCall, ToolResult, Up, Value};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Each call's round trip, as the agent timed it.
    trips: Vec<Duration>,
    /// The value the first call returned.
    first: Value,
}

/// One task of `n` timed calls through `broker`: called in the attempt's task, or with
/// `channel` through the channel [`Broker::serve`] reads (a task of its own).
async fn corral_run(
    sup: Arc<Supervisor>,
    broker: Arc<Broker>,
    n: usize,
    channel: bool,
) -> Result<Run, String> {
    let mut serving = None;
    let sink = if channel {
        let (tx, task) = broker.serve();
        serving = Some(task);
        tx.into()
    } else {
        broker.into()
    };
    let opts = CallOptions {
        tools: Some(sink),
        ..Default::default()
    };
    let mut input = tools_input(n).to_json();
    input["timed"] = serde_json::Value::Bool(true);
    let out = sup
        .call("chaos", Value::from_json(&input), opts)
        .await
        .map_err(|e| e.to_string());
    if let Some(task) = serving {
        task.abort();
    }
    let out = out?;
    let Some(output) = out.output.as_ref() else {
        return Err(out
            .last()
            .map(|r| format!("{}", r.reason))
            .unwrap_or_else(|| "no attempt".into()));
    };
    let (ok, first) = tool_results(output);
    let trips: Vec<Duration> = output.to_json()["ns"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(serde_json::Value::as_u64)
                .map(Duration::from_nanos)
                .collect()
        })
        .unwrap_or_default();
    if ok != n || trips.len() != n {
        return Err(format!("{ok} of {n} calls ok, {} timed", trips.len()));
    }
    Ok(Run {
        trips,
        first: first.unwrap_or(Value::Null),
    })
}

/// The raw baseline: `n` round trips between two threads over two pipes, the "agent" thread
/// encoding each `ToolCall` as the SDK does and timing it until its `ToolResult` is decoded.
fn raw_run(n: usize, reply: &Value) -> Result<Vec<Duration>> {
    let (up_r, up_w) = raw::pipe()?;
    let (down_r, down_w) = raw::pipe()?;
    let args = Value::from_json(&serde_json::json!({"path": "."}));
    let agent = std::thread::spawn(move || -> Result<Vec<Duration>> {
        let mut up = File::from(up_w);
        let mut down = FrameReader::new(File::from(down_r));
        let mut trips = Vec::with_capacity(n);
        for call_id in 1..=n as u64 {
            let t0 = Instant::now();
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
            trips.push(t0.elapsed());
        }
        Ok(trips)
    });
    let mut up = FrameReader::new(File::from(up_r));
    let mut down = File::from(down_w);
    let mut answered = 0;
    while let Some(msg) = up.read_frame::<Up>()? {
        let Up::ToolCall(call) = msg else {
            bail!("expected a ToolCall");
        };
        let bytes = frame::encode(&Down::ToolResult(ToolResult {
            call_id: call.call_id,
            result: Ok(reply.clone()),
        }))?;
        down.write_all(&bytes)?;
        answered += 1;
        if answered == n {
            break;
        }
    }
    drop(down);
    let trips = agent
        .join()
        .map_err(|_| anyhow!("raw agent thread panicked"))??;
    if trips.len() != n {
        bail!("{} of {n} raw round trips", trips.len());
    }
    Ok(trips)
}

/// Calls per second over one run of `trips` made back to back.
fn rate(trips: &[Duration]) -> f64 {
    let total: Duration = trips.iter().sum();
    if total.is_zero() {
        f64::NAN
    } else {
        trips.len() as f64 / total.as_secs_f64()
    }
}

/// Row 10.
pub fn row10(env: &Env, sec: &mut Section) -> Result<()> {
    let (n, runs) = if env.quick { (500, 3) } else { (2000, 5) };
    let keys = tool_keys(crate::call_rows::PLAIN);
    let text = harness::config_text("chaos", &env.chaos, &keys)?;
    let sup = harness::supervisor(env, &text, false)?;
    let broker = Arc::new(Broker::for_supervisor(&sup.sup));
    let (mut trips, mut rates) = (Vec::new(), Vec::new());
    let (mut raw_trips, mut raw_rates) = (Vec::new(), Vec::new());
    let mut channel_trips = Vec::new();
    let mut failure = None;
    for _ in 0..runs {
        // The same calls through `Broker::serve`'s channel, alternating with the rest.
        match env.run(corral_run(sup.sup.clone(), broker.clone(), n, true))? {
            Ok(run) => channel_trips.extend(run.trips),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        let r = env.run(corral_run(sup.sup.clone(), broker.clone(), n, false))?;
        let reply = match r {
            Ok(run) => {
                rates.push(rate(&run.trips));
                trips.extend(run.trips);
                run.first
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let raw = raw_run(n, &reply)?;
        raw_rates.push(rate(&raw));
        raw_trips.extend(raw);
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
    sec.rows.push(
        Row::new(
            "10c",
            "tool round trip, broker behind a channel",
            Unit::Time,
            corral_fig(fig(&channel_trips)),
        )
        .base("10a's (the attempt's task)", fig(&trips))
        .target("informative", None),
    );
    sec.note(format!(
        "10a: chaos {{\"do\":\"tools\",\"timed\":true}} making {n} fs.list \
         {{\"path\":\".\"}} calls in one task, {runs} tasks (row 1's agent keys, journal on, \
         dedup = false so the broker lists the workspace at every call), the broker called in \
         the attempt's task (`ToolSink::Broker`, as `corral call` and the daemon call theirs); \
         a round trip is what the agent timed around one call (encoded → up the pipe → the \
         attempt decodes it, the broker checks and lists the workspace → ToolResult down the \
         pipe → the SDK's I/O thread decodes it and hands it to the handler); p50 {} p99 {}; \
         {} of {} calls answered at once, in the attempt's turn. Baseline: two threads and two \
         pipes in the bench, one encoding each ToolCall and blocking on its ToolResult \
         (carrying the value fs.list returned), which the other decodes and answers, timed by \
         the calling side in the same way; p50 {} p99 {}",
        p50(&trips),
        p99(&trips),
        broker.answered_inline(),
        broker.executions(),
        p50(&raw_trips),
        p99(&raw_trips)
    ));
    sec.note(format!(
        "10c: the same tasks with the same broker behind the channel `Broker::serve` reads (an \
         embedder's own owner, as `CallOptions::tools` may be): each call goes from the \
         attempt's task to the broker's and its answer back; {runs} tasks, run before each of \
         10a's; p50 {} p99 {}",
        p50(&channel_trips),
        p99(&channel_trips)
    ));
    sec.note(format!(
        "10b: calls/s = calls / the sum of their round trips, per task; the p99 column is the \
         slowest of the {runs} tasks; broker executions {}",
        broker.executions()
    ));
    Ok(())
}
