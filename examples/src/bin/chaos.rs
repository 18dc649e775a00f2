//! `chaos`: an agent whose input selects a misbehaviour, for tests and demos of corral's
//! supervision. Input shapes (scripted against):
//!
//! | input | behaviour |
//! |---|---|
//! | `{"do":"ok"}` | output `{"ok":true}` |
//! | `{"do":"crash"}` | `abort()`: dies by SIGABRT |
//! | `{"do":"exit","code":N}` | exits with code N mid-task |
//! | `{"do":"fail","retryable":B}` | returns a structured agent error |
//! | `{"do":"hang"}` | stops reading and beating |
//! | `{"do":"stall"}` | keeps beating, never progresses |
//! | `{"do":"spin"}` | burns CPU, beating and progressing |
//! | `{"do":"hog_mb","mb":N}` | allocates and touches N MiB, then `{"ok":true}` |
//! | `{"do":"fork_bomb"}` | forks without end |
//! | `{"do":"fork_term","ms":N}` | forks a child (no exec) that sleeps, sends it SIGTERM (its SDK handler catches it), then SIGKILL, reaps it, then works N ms, beating: `{"cancelled":B}` (whether the agent took the child's SIGTERM for its own) |
//! | `{"do":"ignore_term"}` | ignores SIGTERM and Shutdown, then hangs |
//! | `{"do":"garbage"}` | writes a frame that does not decode on fd 4 |
//! | `{"do":"huge_frame"}` | announces a 4 GiB frame |
//! | `{"do":"huge_output","mb":N}` | returns N MiB of text (past `max_frame`: refused) |
//! | `{"do":"deep_output"}` | returns lists nested 200 deep (past the nesting limit: refused) |
//! | `{"do":"wait_cancel"}` | progresses until cancelled, then fails `cancelled` |
//! | `{"do":"flood"}` | writes stdout without end (`"mb":N` stops after N MiB, then ok) |
//! | `{"do":"escape"}` | double-fork + setsid; the grandchild sleeps an hour; `{"escaped_pid":P}` |
//! | `{"do":"net","addr":"HOST:PORT"}` | `{"connected":B,"error":S}` |
//! | `{"do":"read","path":P}` | `{"ok":B,"error":S}` |
//! | `{"do":"tool","name":T,"args":V}` | the tool's result, or its error |
//! | `{"do":"tools","calls":[{"tool":T,"args":V},…]}` | makes the calls in order: `{"results":[{"ok":true,"value":V} or {"ok":false,"error":{"kind":K,"message":M}},…]}`; with `"timed":true` also `"ns":[N,…]`, each call's round trip as this agent saw it (from before the call to its result, in nanoseconds) |
//! | `{"do":"random"}` | `{"n":N}`, N drawn afresh each time (for replay's divergence) |
//! | `{"do":"remember","notes":[V,…],"echo":V}` | hands the notes downstream; `{"seen":[notes received],"echo":V}` |
//! | `{"do":"crash_first","echo":V}` | crashes (SIGABRT) on attempt 1, then `{"echo":V,"attempt":N}` |
//! | `{"do":"hang_first","echo":V}` | hangs (no frames, no beats) on attempt 1, then `{"echo":V,"attempt":N}` |
//! | `{"do":"sleep_ms","ms":N}` | sleeps N ms, beating and progressing, then `{"ok":true}` |
//! | `{"do":"env"}` | `{"env":{NAME:VALUE,…}}` |
//! | `{"do":"panic"}` | panics in the handler (the SDK reports `Failed {kind: "panic"}`) |
//! | `{"do":"ptrace"}` | `{"ok":B,"error":S}` from `ptrace(PTRACE_TRACEME)` (seccomp denies it) |
//! | `{"do":"frames","n":N}` | sends N small `Log` frames as fast as it can, then `{"ok":true}` |
//! | `{"do":"id"}` | `{"uid":U,"gid":G,"pid":P}` |
//! | `{"do":"beat_future"}` | one beat on fd 6 dated in the far future (progress 7), then hangs |
//! | `{"do":"beat_fill","ms":N}` | fills the beat pipe with beats dated at boot, then sleeps N ms, beating, then `{"filled":BYTES,"room_after":B}` |

use corral_sdk::{run_value, AgentError, Contract, Ctx, Schema, SideEffects, Value};
use std::io::Write;
use std::time::{Duration, Instant};

fn ok() -> Value {
    Value::map([("ok", Value::Bool(true))])
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn arg_i64(input: &Value, key: &str) -> Result<i64, AgentError> {
    input.get(key).and_then(Value::as_i64).ok_or_else(|| {
        AgentError::new(
            "invalid_input",
            format!("`{key}` must be an integer"),
            false,
        )
    })
}

fn arg_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, AgentError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| AgentError::new("invalid_input", format!("`{key}` must be a string"), false))
}

fn handle(ctx: &mut Ctx, input: Value) -> Result<Value, AgentError> {
    let what = arg_str(&input, "do")?.to_string();
    ctx.log(format!("chaos: {what}"));
    match what.as_str() {
        "ok" => Ok(ok()),
        "crash" => std::process::abort(),
        "exit" => std::process::exit(arg_i64(&input, "code")? as i32),
        "fail" => {
            let retryable = input
                .get("retryable")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Err(AgentError::new("chaos", "failed on request", retryable))
        }
        "hang" => {
            ctx.misbehave().stop_heartbeats();
            forever()
        }
        "stall" => forever(),
        "spin" => {
            let mut x: u64 = 0;
            loop {
                for _ in 0..10_000_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(x);
                ctx.progress();
            }
        }
        "hog_mb" => {
            let mb = arg_i64(&input, "mb")?.max(0) as usize;
            // One touched MiB at a time (a fill is a memset, fast even in a debug build).
            let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mb);
            for _ in 0..mb {
                chunks.push(vec![1u8; 1 << 20]);
                ctx.progress();
            }
            std::hint::black_box(&chunks);
            Ok(Value::map([
                ("ok", Value::Bool(true)),
                ("mb", Value::Int(mb as i64)),
            ]))
        }
        "fork_bomb" => loop {
            // SAFETY: fork in a test agent; the children only fork again and sleep, touching no
            // locks held by other threads.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            ctx.progress();
        },
        "fork_term" => {
            // SAFETY: fork in a test agent; the child only sleeps (no locks, no allocation).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if pid > 0 {
                // (It keeps the SDK's SIGTERM handler: it does not die of it. The SIGKILL after
                // leaves it time to run the handler.)
                // SAFETY: kill and waitpid of our own child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                std::thread::sleep(Duration::from_millis(100));
                // SAFETY: idem.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            let until =
                Instant::now() + Duration::from_millis(arg_i64(&input, "ms")?.max(0) as u64);
            while Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                ctx.progress();
            }
            Ok(Value::map([("cancelled", Value::Bool(ctx.cancelled()))]))
        }
        "ignore_term" => {
            ctx.misbehave().ignore_shutdown();
            // SAFETY: setting a signal's disposition to SIG_IGN is always sound.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            ctx.misbehave().stop_heartbeats();
            forever()
        }
        "garbage" => {
            let _ = ctx
                .misbehave()
                .write_raw(&[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            forever()
        }
        "huge_frame" => {
            let _ = ctx.misbehave().write_raw(&u32::MAX.to_le_bytes());
            forever()
        }
        "huge_output" => {
            let mb = arg_i64(&input, "mb")?.max(0) as usize;
            Ok(Value::map([("text", Value::String("x".repeat(mb << 20)))]))
        }
        "deep_output" => {
            let mut deep = Value::Null;
            for _ in 0..200 {
                deep = Value::List(vec![deep]);
            }
            Ok(deep)
        }
        "wait_cancel" => {
            while !ctx.cancelled() {
                std::thread::sleep(Duration::from_millis(10));
                ctx.progress();
            }
            Err(AgentError::new("cancelled", "task cancelled", false))
        }
        "flood" => {
            let limit = input
                .get("mb")
                .and_then(Value::as_i64)
                .map(|m| (m.max(0) as u64) << 20);
            let line = [b'x'; 1023];
            let mut out = std::io::stdout().lock();
            let mut written: u64 = 0;
            loop {
                if let Some(l) = limit {
                    if written >= l {
                        break;
                    }
                }
                let _ = out.write_all(&line);
                let _ = out.write_all(b"\n");
                written += 1024;
                if written.is_multiple_of(1 << 20) {
                    ctx.progress();
                }
            }
            let _ = out.flush();
            Ok(Value::map([
                ("ok", Value::Bool(true)),
                ("bytes", Value::Int(written as i64)),
            ]))
        }
        "escape" => escape(),
        "net" => {
            let addr = arg_str(&input, "addr")?;
            let res = addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)));
            Ok(match res {
                Ok(_) => Value::map([("connected", Value::Bool(true)), ("error", Value::from(""))]),
                Err(e) => Value::map([
                    ("connected", Value::Bool(false)),
                    ("error", Value::from(e.to_string())),
                ]),
            })
        }
        "read" => {
            let path = arg_str(&input, "path")?;
            Ok(match std::fs::read(path) {
                Ok(_) => Value::map([("ok", Value::Bool(true)), ("error", Value::from(""))]),
                Err(e) => Value::map([
                    ("ok", Value::Bool(false)),
                    ("error", Value::from(e.to_string())),
                ]),
            })
        }
        "tool" => {
            let name = arg_str(&input, "name")?.to_string();
            let args = input.get("args").cloned().unwrap_or(Value::Null);
            ctx.call_tool(&name, args)
        }
        "tools" => {
            let calls = match input.get("calls") {
                Some(Value::List(calls)) => calls.clone(),
                _ => {
                    return Err(AgentError::new(
                        "invalid_input",
                        "`calls` must be a list of {tool, args}",
                        false,
                    ))
                }
            };
            let timed = matches!(input.get("timed"), Some(Value::Bool(true)));
            let mut results = Vec::with_capacity(calls.len());
            let mut ns = Vec::new();
            for call in calls {
                let tool = arg_str(&call, "tool")?.to_string();
                let args = call.get("args").cloned().unwrap_or(Value::Null);
                let t0 = std::time::Instant::now();
                let result = ctx.call_tool(&tool, args);
                if timed {
                    ns.push(Value::Int(t0.elapsed().as_nanos() as i64));
                }
                results.push(match result {
                    Ok(value) => Value::map([("ok", Value::Bool(true)), ("value", value)]),
                    Err(e) => Value::map([
                        ("ok", Value::Bool(false)),
                        (
                            "error",
                            Value::map([
                                ("kind", Value::from(e.kind)),
                                ("message", Value::from(e.message)),
                            ]),
                        ),
                    ]),
                });
            }
            if timed {
                return Ok(Value::map([
                    ("results", Value::List(results)),
                    ("ns", Value::List(ns)),
                ]));
            }
            Ok(Value::map([("results", Value::List(results))]))
        }
        "random" => Ok(Value::map([("n", Value::Int(random()))])),
        "remember" => {
            if let Some(Value::List(notes)) = input.get("notes") {
                for n in notes.clone() {
                    ctx.remember(n);
                }
            }
            Ok(Value::map([
                ("seen", Value::List(ctx.memory().to_vec())),
                ("echo", input.get("echo").cloned().unwrap_or(Value::Null)),
            ]))
        }
        "crash_first" | "hang_first" => {
            if ctx.attempt() == 1 {
                if what == "crash_first" {
                    std::process::abort();
                }
                return handle(ctx, Value::map([("do", Value::from("hang"))]));
            }
            Ok(Value::map([
                ("echo", input.get("echo").cloned().unwrap_or(Value::Null)),
                ("attempt", Value::Int(ctx.attempt() as i64)),
            ]))
        }
        "sleep_ms" => {
            let until =
                Instant::now() + Duration::from_millis(arg_i64(&input, "ms")?.max(0) as u64);
            while Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                ctx.progress();
            }
            Ok(ok())
        }
        "panic" => panic!("chaos: panicking on request"),
        "ptrace" => {
            // SAFETY: PTRACE_TRACEME takes no pointers.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            let e = std::io::Error::last_os_error();
            Ok(Value::map([
                ("ok", Value::Bool(r == 0)),
                (
                    "error",
                    Value::from(if r == 0 { String::new() } else { e.to_string() }),
                ),
            ]))
        }
        "beat_future" => {
            let _ = ctx
                .misbehave()
                .write_beat_raw(&corral_proto::beat::encode(7, u64::MAX));
            ctx.misbehave().stop_heartbeats();
            forever()
        }
        "beat_fill" => {
            let ms = arg_i64(&input, "ms")?.max(0) as u64;
            let stale = corral_proto::beat::encode(0, 0);
            let mut filled = 0usize;
            // Until the pipe is full (it does not block): the SDK's beats must then fall back
            // to frames, and the supervisor must drain the pipe.
            while let Ok(n) = ctx.misbehave().write_beat_raw(&stale) {
                filled += n;
            }
            std::thread::sleep(Duration::from_millis(ms));
            // Room again only if the supervisor drained the pipe meanwhile.
            let room = ctx
                .misbehave()
                .write_beat_raw(&corral_proto::beat::encode(0, 0))
                .is_ok();
            Ok(Value::map([
                ("filled", Value::from(filled as i64)),
                ("room_after", Value::Bool(room)),
            ]))
        }
        "frames" => {
            let n = arg_i64(&input, "n")?.max(0);
            for _ in 0..n {
                ctx.log_at(corral_proto::LogLevel::Trace, "x");
            }
            Ok(ok())
        }
        "env" => Ok(Value::map([(
            "env",
            Value::Map(
                std::env::vars()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
        )])),
        "id" => {
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            Ok(Value::map([
                ("uid", Value::Int(uid as i64)),
                ("gid", Value::Int(gid as i64)),
                ("pid", Value::Int(std::process::id() as i64)),
            ]))
        }
        other => Err(AgentError::new(
            "invalid_input",
            format!("unknown misbehaviour `{other}`"),
            false,
        )),
    }
}

/// A number that differs from run to run: the clock's nanoseconds mixed with the pid and a
/// hashed address (no dependency for one number).
fn random() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() >> 1) as i64
}

/// Double-fork and setsid: the grandchild leaves the agent's session and process group and
/// sleeps for an hour. Returns its pid.
fn escape() -> Result<Value, AgentError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(AgentError::new("io", "pipe failed", true));
    }
    // SAFETY: the child only calls async-signal-safe functions (setsid, fork, write, _exit,
    // nanosleep via sleep) before it exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::setsid();
            let g = libc::fork();
            if g == 0 {
                libc::close(fds[0]);
                libc::close(fds[1]);
                libc::sleep(3600);
                libc::_exit(0);
            }
            let bytes = g.to_le_bytes();
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    let mut buf = [0u8; 4];
    // SAFETY: reading into a buffer we own, from the pipe we created; waiting for our own child.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], buf.as_mut_ptr().cast(), 4);
        libc::close(fds[0]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    Ok(Value::map([(
        "escaped_pid",
        Value::Int(i32::from_le_bytes(buf) as i64),
    )]))
}

fn main() -> std::process::ExitCode {
    let contract = Contract::new("chaos", env!("CARGO_PKG_VERSION"))
        .input(Schema::object().field("do", Schema::String).allow_extra())
        .output(Schema::Any)
        .tool("*")
        .side_effects(SideEffects::Destructive);
    run_value(contract, handle)
}
