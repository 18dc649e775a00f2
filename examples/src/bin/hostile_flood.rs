//! `hostile_flood`: an agent that tries to make its supervisor hold more than it should, for
//! tests of corral's bounds. It speaks the protocol itself, with raw frames (no SDK: the SDK
//! always reads fd 3, and this agent must be able not to). After the handshake, its input
//! selects a probe:
//!
//! | input | behaviour |
//! |---|---|
//! | `{"do":"ok"}` | output `{"ok":true}` (a baseline) |
//! | `{"do":"names","kb":K,"n":N}` | N tool calls (0: without end) named with K KiB each, never reading fd 3 |
//! | `{"do":"calls","n":N}` | N small tool calls (0: without end), never reading fd 3 |
//! | `{"do":"calls","n":N,"read":true}` | N small tool calls one after the other, each answer read; `{"ok":A,"err":B}` |
//! | `{"do":"outstanding","n":N}` | N small tool calls in one write, then their N answers read; `{"kinds":{KIND:COUNT}}` (`ok` for answers); with `"path":P`, calls of `fs.read {"path":P}` instead of tool `t` |
//! | `{"do":"args","kb":K}` | one tool call with K KiB of arguments, never reading fd 3 |
//! | `{"do":"logs","n":N,"kb":K}` | N `Log` frames of K KiB each, full of newlines, carriage returns, ANSI escapes and forged log lines; then `{"ok":true,"bytes":B}` (B: message bytes sent) |
//! | `{"do":"beat_future"}` | one beat on fd 6 dated at the end of time (progress 7), then silence |
//! | `{"do":"nulls","n":N}` | a `Done` whose output is a list of N nulls (N bytes on the wire, 32 N in memory), written without building it |
//!
//! Every forged log line contains `FORGED`, every probe's message an `ESC [2J` (clear screen).

use corral_proto::frame::{self, FrameReader};
use corral_proto::{
    Contract, Done, Down, Log, LogLevel, Ready, Schema, ToolCall, Up, Value, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;

type Fail = Box<dyn std::error::Error>;

/// The forged line a log probe repeats.
const FORGERY: &str =
    "\n2030-01-01T00:00:00.000000Z  INFO corral: FORGED by the agent\r\x1b[2J\x1b[31m";

fn int(input: &Value, key: &str) -> u64 {
    input.get(key).and_then(Value::as_i64).unwrap_or(0).max(0) as u64
}

fn call(call_id: u64, tool: &str, args: Value) -> Result<Vec<u8>, Fail> {
    Ok(frame::encode(&Up::ToolCall(ToolCall {
        call_id,
        tool: tool.to_string(),
        args,
    }))?)
}

/// The running task's id.
static TASK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn done(up: &mut File, output: Value) -> Result<(), Fail> {
    frame::write_frame(
        up,
        &Up::Done(Done {
            task_id: TASK_ID.load(std::sync::atomic::Ordering::Relaxed),
            output,
            memory: Vec::new(),
        }),
    )?;
    Ok(())
}

/// A `Done` frame whose output is a list of `n` nulls, made by hand: the encoding of such a list
/// with 300 nulls, its length prefix widened to `n`'s and its run of zero bytes (a null is the
/// tag 0) lengthened, so that the agent never holds the `n` values the supervisor would.
fn nulls_frame(n: u32) -> Result<Vec<u8>, Fail> {
    let small = frame::encode(&Up::Done(Done {
        task_id: TASK_ID.load(std::sync::atomic::Ordering::Relaxed),
        output: Value::List(vec![Value::Null; 300]),
        memory: Vec::new(),
    }))?;
    // bincode's varint for 300: 0xfb then a u16; for a u32: 0xfc then four bytes.
    let mut marker = vec![0xfb, 0x2c, 0x01];
    marker.extend([0u8; 300]);
    let at = small
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
        .ok_or("the list's encoding was not found")?;
    let mut out = small[..at].to_vec();
    out.push(0xfc);
    out.extend(n.to_le_bytes());
    out.resize(out.len() + n as usize, 0);
    out.extend_from_slice(&small[at + marker.len()..]);
    let len = u32::try_from(out.len() - 4)?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Write `n` frames made by `make` (0: without end), never reading fd 3.
fn flood(up: &mut File, n: u64, mut make: impl FnMut(u64) -> Result<Vec<u8>, Fail>) -> Fail {
    let mut i = 1;
    loop {
        if n != 0 && i > n {
            // Done, then wait to be stopped: the supervisor decides.
            std::thread::park();
            continue;
        }
        match make(i).and_then(|b| Ok(up.write_all(&b)?)) {
            Ok(()) => i += 1,
            Err(e) => return e,
        }
    }
}

/// The answer to a tool call, read from fd 3.
fn answer(down: &mut FrameReader<File>) -> Result<Result<Value, corral_proto::AgentError>, Fail> {
    loop {
        match down.read_frame::<Down>()? {
            Some(Down::ToolResult(r)) => return Ok(r.result),
            Some(_) => {}
            None => return Err("fd 3 closed".into()),
        }
    }
}

fn probe(input: &Value, down: &mut FrameReader<File>, up: &mut File) -> Result<(), Fail> {
    let what = input.get("do").and_then(Value::as_str).unwrap_or("");
    match what {
        "ok" => done(up, Value::map([("ok", Value::Bool(true))])),
        "names" => {
            let name = "n".repeat((int(input, "kb") as usize) << 10);
            Err(flood(up, int(input, "n"), |i| call(i, &name, Value::Null)))
        }
        "calls" if input.get("read").and_then(Value::as_bool) == Some(true) => {
            let (mut ok, mut err) = (0i64, 0i64);
            for i in 1..=int(input, "n") {
                up.write_all(&call(i, "t", Value::Null)?)?;
                match answer(down)? {
                    Ok(_) => ok += 1,
                    Err(_) => err += 1,
                }
            }
            done(
                up,
                Value::map([("ok", Value::Int(ok)), ("err", Value::Int(err))]),
            )
        }
        "calls" => Err(flood(up, int(input, "n"), |i| call(i, "t", Value::Null))),
        "outstanding" => {
            let n = int(input, "n");
            let path = input.get("path").and_then(Value::as_str);
            let mut all = Vec::new();
            for i in 1..=n {
                all.extend(match path {
                    Some(p) => call(i, "fs.read", Value::map([("path", Value::from(p))]))?,
                    None => call(i, "t", Value::Null)?,
                });
            }
            // One write (under PIPE_BUF for a hundred calls): the supervisor sees them at once.
            up.write_all(&all)?;
            let mut kinds: BTreeMap<String, Value> = BTreeMap::new();
            for _ in 0..n {
                let kind = match answer(down)? {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.kind,
                };
                let count = kinds.get(&kind).and_then(Value::as_i64).unwrap_or(0);
                kinds.insert(kind, Value::Int(count + 1));
            }
            done(up, Value::map([("kinds", Value::Map(kinds))]))
        }
        "args" => {
            let args = Value::String("a".repeat((int(input, "kb") as usize) << 10));
            up.write_all(&call(1, "t", args)?)?;
            std::thread::park();
            Ok(())
        }
        "logs" => {
            let size = (int(input, "kb") as usize) << 10;
            let message: String = FORGERY.chars().cycle().take(size).collect();
            let bytes = frame::encode(&Up::Log(Log {
                level: LogLevel::Info,
                message: message.clone(),
            }))?;
            let n = int(input, "n");
            for _ in 0..n {
                up.write_all(&bytes)?;
            }
            done(
                up,
                Value::map([
                    ("ok", Value::Bool(true)),
                    ("bytes", Value::Int((n as usize * message.len()) as i64)),
                ]),
            )
        }
        "nulls" => {
            let n = u32::try_from(int(input, "n"))?;
            up.write_all(&nulls_frame(n)?)?;
            loop {
                std::thread::park();
            }
        }
        "beat_future" => {
            // SAFETY: fd 6 is the beat pipe corral hands every agent; nothing else owns it.
            let mut beat = unsafe { File::from_raw_fd(corral_proto::beat::BEAT_FD) };
            beat.write_all(&corral_proto::beat::encode(7, u64::MAX))?;
            loop {
                std::thread::park();
            }
        }
        other => Err(format!("unknown probe `{other}`").into()),
    }
}

fn main() -> Result<(), Fail> {
    // SAFETY: fds 3 and 4 are the protocol pipes corral hands every agent; nothing else in
    // this program owns them.
    let (down, mut up) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4)) };
    let mut down = FrameReader::new(down);
    match down.read_frame::<Down>()? {
        Some(Down::Hello(_)) => {}
        other => return Err(format!("expected Hello, got {other:?}").into()),
    }
    let contract = Contract::new("hostile_flood", env!("CARGO_PKG_VERSION"))
        .input(Schema::Any)
        .output(Schema::Any)
        .tool("*");
    frame::write_frame(
        &mut up,
        &Up::Ready(Ready {
            protocol: PROTOCOL_VERSION,
            contract,
        }),
    )?;
    let input = match down.read_frame::<Down>()? {
        Some(Down::Task(t)) => {
            TASK_ID.store(t.task_id, std::sync::atomic::Ordering::Relaxed);
            t.input
        }
        other => return Err(format!("expected Task, got {other:?}").into()),
    };
    probe(&input, &mut down, &mut up)
}
