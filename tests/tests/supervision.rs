//! Supervision end to end: hangs, stalls, deadlines, kill escalation, crash loops with backoff
//! and restart intensity, circuit breakers, quarantine, log floods, and isolation of one hung
//! agent from the others. Real `chaos` agent processes, assertions on exit records.
//!
//! The supervisor's policy (backoffs, restart intensity, breakers) runs on a manual clock that
//! the tests drive: a backoff is waited out by moving the clock (see `ManualClock::run`), a
//! breaker's open time by advancing it. The agents' watchdogs watch real processes in real
//! time.

use corral::clock::ManualClock;
use corral::record::Decision;
use corral::ExitReason;
use corral::{CallOptions, CallOutcome, Supervisor};
use corral_e2e::*;
use std::sync::Arc;
use std::time::Duration;

/// A supervisor whose policy runs on the returned clock.
fn sup(defaults: &str) -> (Fixture, Supervisor, ManualClock) {
    let (fx, s) = sup_with(defaults, "");
    let clock = ManualClock::new();
    let s = s.with_clock(Arc::new(clock.clone()));
    (fx, s, clock)
}

/// One call, the clock moved through every backoff it waits.
async fn driven(clock: &ManualClock, s: &Supervisor, json: &str) -> CallOutcome {
    clock.run(call(s, "chaos", json)).await
}

fn decisions(o: &CallOutcome) -> Vec<Decision> {
    o.attempts.iter().map(|a| a.decision).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_is_detected_and_retried() {
    let (_fx, s, clock) =
        sup("heartbeat_timeout = \"400ms\"\nmax_retries = 1\nquarantine_after = 10");
    let o = driven(&clock, &s, r#"{"do":"hang"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Hung, ExitReason::Hung]);
    assert_eq!(decisions(&o), [Decision::Retry, Decision::Abort]);
    let a = &o.attempts[0];
    assert_eq!(a.phase, corral::record::Phase::Busy);
    assert!(a.last_heartbeat_age_ms.unwrap() >= 400, "{a:?}");
    assert_eq!(a.backoff_ms, Some(10));
    assert_eq!(
        clock.slept(),
        [ms(10)],
        "the backoff was waited on the clock"
    );
    assert_eq!(o.attempts[1].retry_count, 1);
    for a in &o.attempts {
        assert!(!alive(a.pid.unwrap() as i32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_is_told_apart_from_hang() {
    let (_fx, s, _clock) = sup("stall_timeout = \"500ms\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"stall"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Stalled]);
    let a = &o.attempts[0];
    // Heartbeats kept coming: the last frame is recent, unlike a hang.
    assert!(a.last_heartbeat_age_ms.unwrap() < 500, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_past_wall_time_is_a_deadline() {
    let (_fx, s, _clock) = sup("wall_time = \"500ms\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"spin"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Deadline]);
    let a = &o.attempts[0];
    assert!(a.progress > 0, "spin progresses: {a:?}");
    assert!(a.cpu_user_ms > 0, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignorer_is_killed_after_grace() {
    let (_fx, s, _clock) =
        sup("heartbeat_timeout = \"300ms\"\nkill_grace = \"200ms\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"ignore_term"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Hung]);
    let a = &o.attempts[0];
    assert_eq!(a.signals_sent, ["SIGTERM", "SIGKILL"]);
    assert_eq!(a.signal, Some(libc::SIGKILL));
    assert!(!alive(a.pid.unwrap() as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_goes_fatal_and_recovers() {
    let (_fx, s, clock) = sup("max_retries = 10\nquarantine_after = 100\n\
         backoff = { initial = \"10ms\", factor = 2.0, max = \"1s\", jitter = 0.0 }\n\
         intensity = { max = 3, period = \"60s\", fatal_cooldown = \"400ms\" }\n\
         breaker = { failures = 100 }");
    let o = driven(&clock, &s, r#"{"do":"crash"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Signal; 4], "{:?}", o.attempts);
    let backoffs: Vec<_> = o.attempts.iter().map(|a| a.backoff_ms).collect();
    assert_eq!(backoffs, [Some(10), Some(20), Some(40), None]);
    assert_eq!(clock.slept(), [ms(10), ms(20), ms(40)]);
    assert_eq!(
        decisions(&o),
        [
            Decision::Retry,
            Decision::Retry,
            Decision::Retry,
            Decision::Escalate
        ]
    );
    let restarts: Vec<_> = o.attempts.iter().map(|a| a.restart_count).collect();
    assert_eq!(restarts, [1, 2, 3, 4]);

    // Fatal: pending work fails fast, without a process, until the cooldown is over.
    clock.advance(ms(399));
    let fast = call(&s, "chaos", r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&fast), [ExitReason::CircuitOpen]);
    assert!(fast.attempts[0].pid.is_none());
    let message = &fast.attempts[0].error.as_ref().unwrap().message;
    assert!(
        message.contains("fatal") && message.contains("another 1 ms"),
        "{message}"
    );

    // Unlike a permanent start-limit, fatal ends by itself after the cooldown.
    clock.advance(ms(1));
    let back = call(&s, "chaos", r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&back), [ExitReason::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_then_half_opens() {
    let (_fx, s, clock) = sup(
        "max_retries = 0\nquarantine_after = 100\nbreaker = { failures = 2, open_for = \"300ms\" }",
    );
    for _ in 0..2 {
        assert_eq!(
            reasons(&call(&s, "chaos", r#"{"do":"crash"}"#).await),
            [ExitReason::Signal]
        );
    }
    let open = call(&s, "chaos", r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&open), [ExitReason::CircuitOpen]);
    assert!(open.attempts[0].pid.is_none());

    // Open for exactly open_for.
    clock.advance(ms(299));
    let still = call(&s, "chaos", r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&still), [ExitReason::CircuitOpen]);
    let message = &still.attempts[0].error.as_ref().unwrap().message;
    assert!(message.contains("next probe in 1 ms"), "{message}");

    // Half-open: one probe; its failure reopens the breaker.
    clock.advance(ms(1));
    assert_eq!(
        reasons(&call(&s, "chaos", r#"{"do":"crash"}"#).await),
        [ExitReason::Signal]
    );
    assert_eq!(
        reasons(&call(&s, "chaos", r#"{"do":"ok"}"#).await),
        [ExitReason::CircuitOpen]
    );

    // Next probe succeeds and closes it.
    clock.advance(ms(300));
    assert_eq!(
        reasons(&call(&s, "chaos", r#"{"do":"ok"}"#).await),
        [ExitReason::Completed]
    );
    assert_eq!(
        reasons(&call(&s, "chaos", r#"{"do":"ok"}"#).await),
        [ExitReason::Completed]
    );
    assert!(clock.slept().is_empty(), "no retries, no backoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_is_quarantined_while_others_proceed() {
    let (_fx, s, clock) =
        sup("max_retries = 5\nquarantine_after = 2\nbreaker = { failures = 100 }");
    let o = driven(&clock, &s, r#"{"do":"exit","code":7}"#).await;
    assert_eq!(reasons(&o), [ExitReason::ExitCode, ExitReason::ExitCode]);
    assert_eq!(decisions(&o), [Decision::Retry, Decision::Quarantine]);
    assert_eq!(clock.slept(), [ms(10)]);
    let again = call(&s, "chaos", r#"{"do":"exit","code":7}"#).await;
    assert_eq!(reasons(&again), [ExitReason::Quarantined]);
    assert!(again.attempts[0].pid.is_none());
    let other = call(&s, "chaos", r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&other), [ExitReason::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_exit_codes_and_non_retryable_errors_are_final() {
    let (_fx, s, _clock) = sup("max_retries = 5\nno_retry_exit_codes = [3]");
    let o = call(&s, "chaos", r#"{"do":"exit","code":3}"#).await;
    assert_eq!(reasons(&o), [ExitReason::ExitCode]);
    assert_eq!(decisions(&o), [Decision::Abort]);
    let o = call(&s, "chaos", r#"{"do":"fail","retryable":false}"#).await;
    assert_eq!(reasons(&o), [ExitReason::AgentError]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_never_blocks_and_drops_are_counted() {
    let (_fx, s, _clock) = sup("log_limit = \"1MiB\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"flood","mb":8}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed]);
    let dropped = o.attempts[0].log_bytes_dropped;
    assert!(
        (7 << 20..=8 << 20).contains(&dropped),
        "8 MiB written, 1 MiB allowed, {dropped} dropped"
    );
    // An endless flood ends at its deadline while another agent completes meanwhile.
    let (_fx2, s2, _clock2) = sup("wall_time = \"1s\"\nmax_retries = 0");
    let (flood, echo) = tokio::join!(
        call(&s2, "chaos", r#"{"do":"flood"}"#),
        call(&s2, "echo", r#"{"x":1}"#)
    );
    assert_eq!(reasons(&echo), [ExitReason::Completed]);
    assert_eq!(reasons(&flood), [ExitReason::Deadline]);
    assert!(flood.attempts[0].log_bytes_dropped > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hung_agents_do_not_delay_forty_others() {
    let (_fx, s, _clock) =
        sup("heartbeat_timeout = \"60s\"\nmax_retries = 0\nkill_grace = \"200ms\"");
    let s = std::sync::Arc::new(s);
    let (stop_tx, stop_rx) = corral::Stop::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..50 {
        let (s, stop_rx, done_tx) = (s.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            let hang = i % 5 == 0;
            let json = if hang {
                r#"{"do":"hang"}"#
            } else {
                r#"{"do":"sleep_ms","ms":20}"#
            };
            let opts = CallOptions {
                stop: Some(stop_rx),
                ..Default::default()
            };
            let o = s.call("chaos", input(json), opts).await.unwrap();
            let _ = done_tx.send((hang, o));
        });
    }
    // The first forty to finish are exactly the forty healthy ones, all completed, while the
    // ten hung agents are still running.
    for _ in 0..40 {
        let (hang, o) = done_rx.recv().await.unwrap();
        assert!(!hang, "a hung agent finished before the healthy ones");
        assert_eq!(reasons(&o), [ExitReason::Completed]);
    }
    stop_tx.stop(ExitReason::Cancelled);
    for _ in 0..10 {
        let (hang, o) = done_rx.recv().await.unwrap();
        assert!(hang);
        assert_eq!(reasons(&o), [ExitReason::Cancelled]);
        assert!(!alive(o.attempts[0].pid.unwrap() as i32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_frame_flood_still_meets_its_deadline() {
    let (_fx, s, _clock) = sup("wall_time = \"1s\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"frames","n":1000000000000}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Deadline], "{:?}", o.attempts);
    assert!(!alive(o.attempts[0].pid.unwrap() as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_reach_the_owner_and_answers_reach_the_agent() {
    let (_fx, s, _clock) = sup("max_retries = 0");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<corral::ToolRequest>(8);
    // A tiny broker: `upper` answers, everything else fails with a structured error.
    let broker = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(req) = rx.recv().await {
            seen.push((req.agent.clone(), req.call.tool.clone()));
            let answer = match req.call.tool.as_str() {
                "upper" => {
                    let text = req
                        .call
                        .args
                        .get("text")
                        .and_then(|v| v.as_str())
                        .unwrap_or("");
                    Ok(corral_proto::Value::from(text.to_uppercase()))
                }
                other => Err(corral_proto::AgentError::new("unknown_tool", other, false)),
            };
            let _ = req.reply.send(answer);
        }
        seen
    });
    let opts = |tx: &tokio::sync::mpsc::Sender<_>| CallOptions {
        tools: Some(tx.clone().into()),
        ..Default::default()
    };
    let ok = s
        .call(
            "chaos",
            input(r#"{"do":"tool","name":"upper","args":{"text":"hi"}}"#),
            opts(&tx),
        )
        .await
        .unwrap();
    assert_eq!(reasons(&ok), [ExitReason::Completed]);
    assert_eq!(output(&ok), serde_json::json!("HI"));
    let trace = &ok.attempts[0].tool_calls;
    assert_eq!(trace.len(), 1);
    assert!(trace[0].ok && trace[0].tool == "upper");
    let bad = s
        .call(
            "chaos",
            input(r#"{"do":"tool","name":"nope","args":null}"#),
            opts(&tx),
        )
        .await
        .unwrap();
    assert_eq!(reasons(&bad), [ExitReason::AgentError]);
    assert_eq!(bad.attempts[0].error.as_ref().unwrap().kind, "unknown_tool");
    drop(tx);
    let seen = broker.await.unwrap();
    assert_eq!(
        seen,
        [
            ("chaos".into(), "upper".into()),
            ("chaos".into(), "nope".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_task_alive_and_carry_progress() {
    let (_fx, s, _clock) =
        sup("heartbeat_timeout = \"400ms\"\nstall_timeout = \"600ms\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"sleep_ms","ms":1500}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert!(o.attempts[0].progress > 0, "progress carried by heartbeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_samples_report_rss_and_cpu() {
    let (_fx, s, _clock) = sup("sample_interval = \"100ms\"\nmax_retries = 0");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = CallOptions {
        events: Some(tx),
        ..Default::default()
    };
    let o = s
        .call("chaos", input(r#"{"do":"hog_mb","mb":32}"#), opts)
        .await
        .unwrap();
    assert_eq!(reasons(&o), [ExitReason::Completed]);
    let mut samples = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let corral::AttemptEvent::Sample { rss_kb, cpu_ms, .. } = ev {
            samples.push((rss_kb, cpu_ms));
        }
    }
    assert!(!samples.is_empty(), "no health sample was taken");
    assert!(samples.iter().all(|(kb, cpu)| *kb > 0 && cpu.is_some()));
    let a = &o.attempts[0];
    assert!(
        a.last_rss_kb.is_some() && a.peak_rss_kb >= a.last_rss_kb,
        "{a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_backoff_starts_no_further_attempt() {
    let (_fx, s, clock) = sup(
        "max_retries = 5\nquarantine_after = 100\nbackoff = { initial = \"30s\", jitter = 0.0 }",
    );
    let (stop_tx, stop_rx) = corral::Stop::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = CallOptions {
        stop: Some(stop_rx),
        events: Some(tx),
        ..Default::default()
    };
    let call = s.call("chaos", input(r#"{"do":"crash"}"#), opts);
    tokio::pin!(call);
    // Once the first attempt has ended, the call sits in its 30 s backoff (on a clock nobody
    // moves): stop it there.
    let outcome = loop {
        tokio::select! {
            o = &mut call => break o.unwrap(),
            Some(ev) = rx.recv() => {
                if matches!(ev, corral::AttemptEvent::Exited(_)) {
                    stop_tx.stop(ExitReason::Shutdown);
                }
            }
        }
    };
    assert_eq!(
        reasons(&outcome),
        [ExitReason::Signal, ExitReason::Shutdown]
    );
    assert_eq!(outcome.attempts[0].backoff_ms, Some(30_000));
    assert_eq!(clock.slept(), [Duration::from_secs(30)]);
    assert!(
        outcome.attempts[1].pid.is_none(),
        "no process for the stopped retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_from_the_future_does_not_hide_a_hang() {
    // One beat dated u64::MAX ns, then silence: the beat counts as "now" when it is read, no
    // later, so the agent is hung one heartbeat_timeout after that. (Were the beat believed,
    // the hang would be hidden until wall_time ended it as a deadline.)
    let (_fx, s, _clock) =
        sup("heartbeat_timeout = \"400ms\"\nwall_time = \"10s\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"beat_future"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Hung], "{:?}", o.attempts);
    let a = &o.attempts[0];
    assert_eq!(a.progress, 7, "the beat pipe was read: {a:?}");
    assert!(a.last_heartbeat_age_ms.unwrap() >= 400, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_beat_pipe_falls_back_to_frames_and_is_drained() {
    // The agent fills its beat pipe with beats dated at boot, then works for three
    // heartbeat_timeouts: its SDK's beats find the pipe full and go as frames, the supervisor
    // drains the pipe, and the task completes (stale beats never make it look hung).
    let (_fx, s, _clock) = sup("heartbeat_timeout = \"400ms\"\nmax_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"beat_fill","ms":1200}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    let filled = o
        .output
        .as_ref()
        .and_then(|v| v.get("filled"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    assert!(
        filled >= 4096,
        "the pipe took {filled} bytes before it was full"
    );
    let room = o.output.as_ref().and_then(|v| v.get("room_after")).cloned();
    assert_eq!(
        room,
        Some(corral_proto::Value::Bool(true)),
        "the pipe was drained"
    );
    let a = &o.attempts[0];
    assert!(a.last_heartbeat_age_ms.unwrap() < 400, "{a:?}");
}

/// `Threads:` of a live process.
fn threads(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_agent_runs_on_two_threads_whose_io_thread_beats() {
    // The handler's thread and one I/O thread (frames, beats, SIGTERM), never more while a
    // task runs; with a heartbeat_timeout a third of the task's length, the task completes
    // only because that thread beats while the handler sleeps.
    let (_fx, s, _clock) = sup("heartbeat_timeout = \"400ms\"\nmax_retries = 0");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = CallOptions {
        events: Some(tx),
        ..Default::default()
    };
    let call = s.call("chaos", input(r#"{"do":"sleep_ms","ms":1200}"#), opts);
    let seen = async {
        let pid = loop {
            match rx.recv().await {
                Some(corral::AttemptEvent::Ready { pid, .. }) => break agent_pid(pid),
                Some(_) => {}
                None => panic!("no ready event"),
            }
        };
        tokio::task::spawn_blocking(move || {
            // Its I/O thread starts right after `Ready`.
            assert!(within(10, || threads(pid) == Some(2)), "{:?}", threads(pid));
            let mut most = 0;
            while let Some(n) = threads(pid) {
                most = most.max(n);
                std::thread::sleep(ms(20));
            }
            most
        })
        .await
        .unwrap()
    };
    let (o, most) = tokio::join!(call, seen);
    let o = o.unwrap();
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(most, 2, "threads of the agent while its task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_childs_sigterm_is_not_its_agents() {
    // A child forked without exec keeps the SDK's SIGTERM handler and the socket it writes to:
    // its SIGTERM wakes the agent's I/O thread, which must not take it for the agent's own.
    let (_fx, s, _clock) = sup("max_retries = 0");
    let o = call(&s, "chaos", r#"{"do":"fork_term","ms":1500}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(output(&o)["cancelled"], false, "{:?}", o.output);
}
