//! The protocol machine against every phase and message, on an injected clock: each test says
//! what arrives when, and checks the step and the state it leaves. Longer than a room should
//! be: one test per rule of the table in the machine's docs, and one table for them all.

use super::*;
use corral_proto::message::MAX_OUTSTANDING_CALLS;
use corral_proto::{Done, Failed, Heartbeat, Log, Ready, Schema, ToolResult};

const MAX_FRAME: u32 = 64 * 1024;

fn agent() -> Arc<AgentSpec> {
    Arc::new(AgentSpec {
        startup_timeout: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(1),
        stall_timeout: Duration::from_secs(3),
        wall_time: Duration::from_secs(10),
        kill_grace: Duration::from_millis(300),
        log_limit: 10,
        ..AgentSpec::builtin("a", vec!["/bin/true".into()])
    })
}

fn task(input: Value) -> TaskInput {
    TaskInput {
        task_id: 1,
        input: Arc::new(input),
        memory: vec![Value::from("note")],
    }
}

fn contract() -> Contract {
    Contract::new("a", "1")
        .input(Schema::object().field("q", Schema::String))
        .output(Schema::Int)
        .tool("search")
}

fn input() -> Value {
    Value::map([("q", Value::from("x"))])
}

fn ready(c: Contract) -> Up {
    Up::Ready(Ready {
        protocol: PROTOCOL_VERSION,
        contract: c,
    })
}

fn call(id: u64, tool: &str) -> Up {
    Up::ToolCall(ToolCall {
        call_id: id,
        tool: tool.into(),
        args: Value::Null,
    })
}

fn done(task_id: u64, output: Value) -> Up {
    Up::Done(Done {
        task_id,
        output,
        memory: vec![Value::from("out")],
    })
}

fn failed(task_id: u64, kind: &str, retryable: bool) -> Up {
    Up::Failed(Failed {
        task_id,
        error: AgentError::new(kind, "it broke", retryable),
    })
}

fn beat(progress: u64) -> Up {
    Up::Heartbeat(Heartbeat { progress })
}

fn log(text: &str) -> Up {
    Up::Log(Log {
        level: LogLevel::Info,
        message: text.into(),
    })
}

/// A machine at `t0`, with tools configured.
fn fresh(t0: Instant) -> Protocol {
    Protocol::new(agent(), task(input()), MAX_FRAME, true, t0)
}

/// A machine in `phase`, reached the way an agent gets there (Idle and Stopping, which no
/// message leads to while the attempt goes on, are set).
fn in_phase(phase: Phase, t0: Instant) -> Protocol {
    let mut p = fresh(t0);
    if phase == Phase::Starting {
        return p;
    }
    assert!(matches!(
        p.on_frame(ready(contract()), t0),
        Step::Ready(Some(Ok(_)))
    ));
    match phase {
        Phase::ToolCall => {
            assert!(matches!(p.on_frame(call(1, "search"), t0), Step::Relay(..)));
        }
        Phase::Idle | Phase::Stopping => p.phase = phase,
        _ => {}
    }
    assert_eq!(p.phase(), phase);
    p
}

/// What a step is, for tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Continue,
    Send,
    Ready,
    Relay,
    Log,
    End(ExitReason),
}

fn kind(s: &Step) -> Kind {
    match s {
        Step::Continue => Kind::Continue,
        Step::Send(_) => Kind::Send,
        Step::Ready(Some(Ok(_))) => Kind::Ready,
        Step::Ready(None) | Step::Served(_) => Kind::Continue,
        Step::Ready(Some(Err(v))) | Step::End(v) => Kind::End(v.reason.expect("a reason")),
        Step::Relay(..) => Kind::Relay,
        Step::Log(..) => Kind::Log,
    }
}

fn end(s: Step) -> Verdict {
    match s {
        Step::End(v) | Step::Ready(Some(Err(v))) => v,
        other => panic!("expected the end, got {other:?}"),
    }
}

#[test]
fn every_message_in_every_phase() {
    use ExitReason::{AgentError as Failed_, Completed, ProtocolViolation as PV};
    use Kind::*;
    type Make = fn() -> Up;
    let messages: [(&str, Make); 7] = [
        ("Ready", || ready(contract())),
        ("Heartbeat", || beat(1)),
        ("Log", || log("hi")),
        ("ToolCall", || call(2, "search")),
        ("Done", || done(1, Value::Int(3))),
        ("Failed(task)", || failed(1, "x", true)),
        ("Failed(0)", || failed(0, "x", true)),
    ];
    #[rustfmt::skip]
    let table: [(Phase, [Kind; 7]); 5] = [
        //                 Ready      Heartbeat  Log  ToolCall   Done            Failed(task)      Failed(0)
        (Phase::Starting, [Ready,     End(PV),   Log, End(PV),   End(PV),        End(PV),          End(Failed_)]),
        (Phase::Idle,     [End(PV),   Continue,  Log, End(PV),   End(PV),        End(PV),          End(PV)]),
        (Phase::Busy,     [End(PV),   Continue,  Log, Relay,     End(Completed), End(Failed_),     End(PV)]),
        (Phase::ToolCall, [End(PV),   Continue,  Log, Relay,     End(Completed), End(Failed_),     End(PV)]),
        (Phase::Stopping, [End(PV),   End(PV),   Log, End(PV),   End(PV),        End(PV),          End(PV)]),
    ];
    let t0 = Instant::now();
    for (phase, expected) in table {
        for ((name, msg), want) in messages.iter().zip(expected) {
            let mut p = in_phase(phase, t0);
            let got = kind(&p.on_frame(msg(), t0 + Duration::from_millis(5)));
            assert_eq!(got, want, "{name} while {phase:?}");
            assert_eq!(
                p.last_alive(),
                Some(t0 + Duration::from_millis(5)),
                "any frame is a sign of life ({name} while {phase:?})"
            );
        }
    }
}

#[test]
fn a_violation_names_the_message_and_the_phase() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let v = end(p.on_frame(ready(contract()), t0));
    assert_eq!(v.reason, Some(ExitReason::ProtocolViolation));
    assert!(!v.graceful, "a violation is not asked to stop");
    let e = v.error.expect("error");
    assert_eq!(e.kind, "protocol_violation");
    assert_eq!(e.message, "unexpected `ready` message while busy");
    assert!(!e.retryable);
    let mut p = fresh(t0);
    let e = end(p.on_frame(call(1, "search"), t0)).error.expect("error");
    assert_eq!(
        e.message,
        "unexpected `tool_call` message while starting (before Ready)"
    );
}

#[test]
fn ready_of_another_protocol_version_is_a_violation() {
    let t0 = Instant::now();
    let mut p = fresh(t0);
    let v = end(p.on_frame(
        Up::Ready(Ready {
            protocol: PROTOCOL_VERSION + 1,
            contract: contract(),
        }),
        t0,
    ));
    assert_eq!(v.reason, Some(ExitReason::ProtocolViolation));
    assert_eq!(
        v.error.map(|e| e.message),
        Some(corral_proto::message::version_mismatch(
            PROTOCOL_VERSION,
            PROTOCOL_VERSION + 1
        ))
    );
    assert_eq!(p.phase(), Phase::Starting);
    assert!(p.finish().contract.is_none(), "no contract was accepted");
}

#[test]
fn ready_sends_the_task_and_starts_the_clocks() {
    let t0 = Instant::now();
    let mut p = fresh(t0);
    let at = t0 + Duration::from_secs(2);
    let Step::Ready(Some(Ok(frame))) = p.on_frame(ready(contract()), at) else {
        panic!("not ready");
    };
    let sent: Down = corral_proto::frame::decode_payload(&frame[4..]).expect("a frame");
    assert_eq!(
        sent,
        Down::Task(Task {
            task_id: 1,
            input: input(),
            memory: vec![Value::from("note")],
        })
    );
    assert_eq!(p.phase(), Phase::Busy);
    // From the task on: hung a heartbeat_timeout after the last frame, stalled a stall_timeout
    // after the task, past wall_time a deadline.
    assert_eq!(
        p.next_deadline(),
        (at + Duration::from_secs(1), ExitReason::Hung)
    );
}

#[test]
fn an_input_the_contract_refuses_is_a_contract_violation() {
    let t0 = Instant::now();
    let mut p = Protocol::new(agent(), task(Value::Int(1)), MAX_FRAME, true, t0);
    let v = end(p.on_frame(ready(contract()), t0));
    assert_eq!(v.reason, Some(ExitReason::ContractViolation));
    assert!(v.graceful, "the agent is asked to stop");
    assert!(v.error.expect("error").message.starts_with("input"));
    assert_eq!(p.phase(), Phase::Idle);
    assert_eq!(
        p.finish().contract,
        Some(contract()),
        "its contract is kept"
    );
}

#[test]
fn a_task_past_max_frame_is_refused_after_the_ready() {
    let t0 = Instant::now();
    let big = Value::map([("q", Value::from("x".repeat(MAX_FRAME as usize)))]);
    let mut p = Protocol::new(agent(), task(big), MAX_FRAME, true, t0);
    let v = end(p.on_frame(ready(contract()), t0));
    assert_eq!(v.reason, Some(ExitReason::ContractViolation));
    let message = v.error.expect("error").message;
    assert!(
        message.starts_with("the task is ")
            && message.ends_with("more than max_frame (65536 bytes)"),
        "{message}"
    );
    assert_eq!(p.phase(), Phase::Starting, "no task was sent");
}

#[test]
fn failed_at_the_handshake_is_the_agents_error() {
    let t0 = Instant::now();
    let mut p = fresh(t0);
    let v = end(p.on_frame(failed(0, "no_model", false), t0));
    assert_eq!(v.reason, Some(ExitReason::AgentError));
    assert!(v.graceful);
    let e = v.error.expect("error");
    assert_eq!((e.kind.as_str(), e.retryable), ("no_model", false));
    // An agent that cannot speak this protocol says so: a protocol violation.
    let mut p = fresh(t0);
    let v = end(p.on_frame(failed(0, "protocol_mismatch", false), t0));
    assert_eq!(v.reason, Some(ExitReason::ProtocolViolation));
}

#[test]
fn done_completes_with_output_and_notes() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let v = end(p.on_frame(done(1, Value::Int(7)), t0));
    assert_eq!(v, Verdict::completed());
    assert!(p.completed());
    assert_eq!(p.phase(), Phase::Idle);
    let f = p.finish();
    assert_eq!(f.output, Some(Value::Int(7)));
    assert_eq!(f.memory, [Value::from("out")]);
}

#[test]
fn done_or_failed_for_another_task_is_a_violation() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let e = end(p.on_frame(done(9, Value::Int(7)), t0))
        .error
        .expect("error");
    assert_eq!(e.message, "Done for task 9 while task 1 runs");
    assert!(!p.completed());
    let mut p = in_phase(Phase::ToolCall, t0);
    let e = end(p.on_frame(failed(2, "x", true), t0))
        .error
        .expect("error");
    assert_eq!(e.message, "Failed for task 2 while task 1 runs");
}

#[test]
fn an_output_the_contract_refuses_is_a_contract_violation() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let v = end(p.on_frame(done(1, Value::from("not an int")), t0));
    assert_eq!(v.reason, Some(ExitReason::ContractViolation));
    assert!(v.graceful);
    assert!(v.error.expect("error").message.starts_with("output"));
    assert!(!p.completed(), "a refused output is not kept");
    assert!(p.finish().output.is_none());
}

#[test]
fn failed_task_is_an_agent_error_with_its_retryable_flag() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let v = end(p.on_frame(failed(1, "rate_limited", true), t0));
    assert_eq!(v.reason, Some(ExitReason::AgentError));
    let e = v.error.expect("error");
    assert_eq!((e.kind.as_str(), e.retryable), ("rate_limited", true));
}

#[test]
fn heartbeats_move_progress_and_only_a_change_resets_the_stall() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let s = |n: u64| t0 + Duration::from_secs(n);
    // Same progress (0): alive, but the stall clock runs from the task.
    p.on_frame(beat(0), s(1));
    assert_eq!(p.progress(), 0);
    p.on_frame(beat(0), s(2));
    assert_eq!(p.next_deadline(), (s(3), ExitReason::Hung));
    p.on_frame(beat(0), s(2) + Duration::from_millis(900));
    assert_eq!(p.next_deadline(), (s(3), ExitReason::Stalled));
    // Progress moved: the stall starts over.
    p.on_frame(beat(5), s(3) - Duration::from_millis(1));
    assert_eq!(p.progress(), 5);
    assert_eq!(
        p.next_deadline(),
        (s(4) - Duration::from_millis(1), ExitReason::Hung)
    );
    assert_eq!(p.overdue(s(3)), None);
    assert_eq!(
        p.overdue(s(4)),
        Some((s(4) - Duration::from_millis(1), ExitReason::Hung))
    );
}

#[test]
fn startup_wall_time_and_waiting_for_tools_have_their_own_deadlines() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let p = fresh(t0);
    assert_eq!(p.next_deadline(), (s(5), ExitReason::StartupTimeout));
    // Busy and progressing all along: wall_time ends it.
    let mut p = in_phase(Phase::Busy, t0);
    for n in 1..10 {
        p.on_frame(beat(n), s(n) + Duration::from_millis(500));
    }
    assert_eq!(p.next_deadline(), (s(10), ExitReason::Deadline));
    // Waiting for a tool is no stall.
    let mut p = in_phase(Phase::ToolCall, t0);
    for n in 1..5 {
        p.on_frame(beat(0), s(n));
    }
    assert_eq!(p.next_deadline(), (s(5), ExitReason::Hung));
}

#[test]
fn an_agent_that_does_not_read_is_given_a_heartbeat_timeout_to_read() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let mut p = in_phase(Phase::Busy, t0);
    p.set_blocked(true, s(2));
    p.set_blocked(true, s(3)); // still blocked: since 2
                               // Its frames are not read meanwhile: no hang, no stall, only the time to read.
    assert_eq!(p.next_deadline(), (s(3), ExitReason::ProtocolViolation));
    let v = p.timeout_verdict(ExitReason::ProtocolViolation, 300_000);
    assert_eq!(v.reason, Some(ExitReason::ProtocolViolation));
    let message = v.error.expect("error").message;
    assert!(message.contains("300000 at the end"), "{message}");
    p.set_blocked(false, s(3));
    assert_eq!(p.next_deadline(), (s(1), ExitReason::Hung));
}

#[test]
fn watchdog_verdicts_say_what_was_waited_for() {
    let t0 = Instant::now();
    let p = in_phase(Phase::Busy, t0);
    let cases = [
        (
            ExitReason::StartupTimeout,
            "no Ready within startup_timeout (5s)",
        ),
        (ExitReason::Hung, "no frame within heartbeat_timeout (1s)"),
        (
            ExitReason::Stalled,
            "heartbeats continued but progress stayed at 0 for stall_timeout (3s)",
        ),
        (ExitReason::Deadline, "task ran past wall_time (10s)"),
    ];
    for (why, message) in cases {
        let v = p.timeout_verdict(why, 0);
        assert_eq!(v, Verdict::ended(why, message, true, false));
    }
}

#[test]
fn beats_are_signs_of_life_clamped_to_when_they_were_read() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let mut p = in_phase(Phase::Busy, t0);
    let mono = 1_000_000_000_000u64; // the monotonic clock at s(4)
                                     // Written a second before it was read.
    p.on_beat(3, mono - 1_000_000_000, s(4), mono);
    assert_eq!(p.last_alive(), Some(s(3)));
    assert_eq!(p.progress(), 3);
    // From the future: counts as read now, no later.
    p.on_beat(4, u64::MAX, s(4), mono);
    assert_eq!(p.last_alive(), Some(s(4)));
    assert_eq!(p.next_deadline(), (s(5), ExitReason::Hung));
    // An old beat neither moves life back nor progress: read late, it says nothing new.
    p.on_beat(9, mono - 3_500_000_000, s(4), mono);
    assert_eq!(p.last_alive(), Some(s(4)));
    assert_eq!(p.progress(), 4);
    // From before the attempt: its start.
    let mut p = in_phase(Phase::Busy, t0);
    p.on_beat(0, 0, s(4), mono);
    assert_eq!(p.last_alive(), Some(t0));
}

#[test]
fn log_lines_are_cut_to_the_budget_then_dropped() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let Step::Log(level, text) = p.on_frame(log("héllo"), t0) else {
        panic!("not a log line")
    };
    assert_eq!((level, text.as_str()), (LogLevel::Info, "héllo"));
    // 4 bytes left of 10: "wor" and not half of the "ł".
    let Step::Log(_, text) = p.on_frame(log("worłd"), t0) else {
        panic!("not a log line")
    };
    assert_eq!(text, "wor");
    assert!(matches!(p.on_frame(log("more"), t0), Step::Continue));
    // Dropped: what was over the budget (2 of the second line, all 4 of the third); the byte of
    // the "ł" that was cut is not counted.
    assert_eq!(p.log_budget().dropped(), 2 + 4);
}

#[test]
fn a_declared_tool_call_is_relayed_and_its_answer_traced() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut p = in_phase(Phase::Busy, t0);
    let Step::Relay(c) = p.on_frame(call(4, "search"), ms(10)) else {
        panic!("not relayed")
    };
    assert_eq!((c.call_id, c.tool.as_str()), (4, "search"));
    assert_eq!(p.phase(), Phase::ToolCall);
    let down = p.answer(4, Ok(Value::Int(1)), ms(250));
    assert_eq!(
        down,
        Down::ToolResult(ToolResult {
            call_id: 4,
            result: Ok(Value::Int(1)),
        })
    );
    assert_eq!(p.phase(), Phase::Busy);
    // Waiting was no stall: the stall clock starts over at the answer.
    assert_eq!(
        p.next_deadline(),
        (ms(10) + Duration::from_secs(1), ExitReason::Hung)
    );
    let trace = p.finish().tool_calls;
    assert_eq!(
        trace,
        [ToolTrace {
            call_id: 4,
            tool: "search".into(),
            ok: true,
            error_kind: None,
            duration_ms: 240,
            seq: 1,
            ..Default::default()
        }]
    );
}

#[test]
fn wildcard_contracts_relay_any_tool() {
    let t0 = Instant::now();
    let mut p = fresh(t0);
    p.on_frame(ready(Contract::new("a", "1").tool("*")), t0);
    assert!(matches!(
        p.on_frame(call(1, "anything"), t0),
        Step::Relay(..)
    ));
}

#[test]
fn tool_calls_refused_here_are_answered_and_traced() {
    let t0 = Instant::now();
    let refused = |p: &mut Protocol, id: u64, tool: &str| -> AgentError {
        match p.on_frame(call(id, tool), t0) {
            Step::Send(Down::ToolResult(ToolResult {
                call_id,
                result: Err(e),
            })) if call_id == id => e,
            other => panic!("not refused: {other:?}"),
        }
    };
    // Undeclared.
    let mut p = in_phase(Phase::Busy, t0);
    let e = refused(&mut p, 1, "rm");
    assert_eq!(e.kind, "permission_denied");
    assert_eq!(
        e.message,
        "tool `rm` is not declared in the agent's contract"
    );
    assert_eq!(p.phase(), Phase::Busy, "answered at once: not waiting");
    // No tools configured: declared calls are denied.
    let mut p = in_phase(Phase::Busy, t0);
    p.no_tools();
    let e = refused(&mut p, 2, "search");
    assert_eq!(e.kind, "permission_denied");
    assert_eq!(e.message, "no tools are configured for agent `a`");
    let trace = p.finish().tool_calls;
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0].error_kind.as_deref(), Some("permission_denied"));
    assert!(!trace[0].ok);
}

#[test]
fn outstanding_calls_are_bounded_and_ids_unique() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    for id in 0..MAX_OUTSTANDING_CALLS as u64 {
        assert!(matches!(
            p.on_frame(call(id, "search"), t0),
            Step::Relay(..)
        ));
    }
    match p.on_frame(call(1000, "search"), t0) {
        Step::Send(Down::ToolResult(ToolResult { result: Err(e), .. })) => {
            assert_eq!(e.kind, "too_many_calls")
        }
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(
        p.phase(),
        Phase::ToolCall,
        "the others are still outstanding"
    );
    let v = end(p.on_frame(call(3, "search"), t0));
    assert_eq!(
        v.error.map(|e| e.message),
        Some("tool call id 3 is already outstanding; call ids must be unique".into())
    );
    let mut p = in_phase(Phase::Busy, t0);
    let long = "n".repeat(corral_proto::message::MAX_TOOL_NAME + 1);
    let v = end(p.on_frame(call(1, &long), t0));
    assert_eq!(v.reason, Some(ExitReason::ProtocolViolation));
}

#[test]
fn answers_to_unknown_calls_are_sent_untraced() {
    let t0 = Instant::now();
    let mut p = in_phase(Phase::Busy, t0);
    let down = p.answer(77, Err(Protocol::broker_gone()), t0);
    assert!(matches!(
        down,
        Down::ToolResult(ToolResult { call_id: 77, .. })
    ));
    assert!(p.finish().tool_calls.is_empty());
}

#[test]
fn a_stop_is_graceful_and_a_cancel_tells_the_agent() {
    let t0 = Instant::now();
    let p = in_phase(Phase::Busy, t0);
    let (said, v) = p.on_stop(ExitReason::Cancelled);
    assert_eq!(said, Some(Down::Cancel(Cancel { task_id: 1 })));
    assert_eq!(
        v,
        Verdict::ended(
            ExitReason::Cancelled,
            "stopped by its owner: cancelled",
            false,
            true
        )
    );
    let (said, v) = p.on_stop(ExitReason::Shutdown);
    assert_eq!(said, None);
    assert_eq!(v.reason, Some(ExitReason::Shutdown));
    assert_eq!(
        p.shutdown(),
        Down::Shutdown(corral_proto::Shutdown { grace_ms: 300 })
    );
}

#[test]
fn hello_offers_this_protocol_and_the_agreed_frame_size() {
    let p = fresh(Instant::now());
    assert_eq!(
        p.hello("r1", 3),
        Down::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_id: "a".into(),
            run_id: "r1".into(),
            attempt: 3,
            heartbeat_interval_ms: 1000,
            max_frame: MAX_FRAME,
        })
    );
}

#[test]
fn outgoing_frames_are_checked_against_max_frame() {
    let small = encode_within(&Value::Int(1), 16, Outgoing::Input).expect("fits");
    assert_eq!(
        corral_proto::frame::decode_payload::<Value>(&small[4..]).ok(),
        Some(Value::Int(1))
    );
    let e = encode_within(&Value::from("x".repeat(40)), 16, Outgoing::Input).unwrap_err();
    let len = corral_proto::frame::encode(&Value::from("x".repeat(40)))
        .expect("encodes")
        .len()
        - 4;
    assert_eq!(
        e.to_string(),
        format!("the input is {len} bytes encoded, more than max_frame (16 bytes)")
    );
}

/// What a note keeps of a call's arguments is bounded: past NOTED_ARGS only size and hash.
#[test]
fn noted_args_are_bounded() {
    use crate::child::{noted_args, NOTED_ARGS};
    let small = Value::map([("path", Value::from("a"))]);
    assert_eq!(noted_args(&small), small);
    let big = Value::String("x".repeat(NOTED_ARGS + 1));
    let noted = noted_args(&big);
    assert!(
        noted
            .get("$omitted_bytes")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > NOTED_ARGS as i64
    );
    assert_eq!(
        noted.get("$sha256").and_then(Value::as_str).map(str::len),
        Some(64)
    );
    // The same arguments are noted the same way (replay compares them).
    assert_eq!(noted_args(&big), noted);
}

#[test]
fn attempts_that_declare_the_same_contract_share_one_copy() {
    let name = "contract-sharing";
    let a = super::shared(name, contract());
    let b = super::shared(name, contract());
    assert!(Arc::ptr_eq(&a, &b), "an equal contract is the one kept");
    let mut other = contract();
    other.version = "2.0.0".into();
    let c = super::shared(name, other.clone());
    assert!(!Arc::ptr_eq(&a, &c), "a different one is not");
    assert_eq!(*c, other);
    assert_eq!(*a, contract(), "who holds the first keeps it");
    assert!(
        Arc::ptr_eq(&c, &super::shared(name, other)),
        "the newer one is kept"
    );
    let d = super::shared("contract-sharing-2", contract());
    assert!(!Arc::ptr_eq(&a, &d), "one per agent type");
    // Through the conversation: a service agent's Ready keeps the shared copy. (An agent type
    // of this test's own: the other tests, running meanwhile, declare other contracts for
    // theirs, each replacing the one kept.)
    let t0 = Instant::now();
    let spec = Arc::new(AgentSpec::builtin(
        "contract-sharing-3",
        vec!["/bin/true".into()],
    ));
    let fresh = || Protocol::new(spec.clone(), task(input()), MAX_FRAME, true, t0);
    let mut p = fresh();
    let _ = p.on_frame(ready(contract()), t0);
    let mut q = fresh();
    let _ = q.on_frame(ready(contract()), t0);
    let (pc, qc) = (
        p.contract.clone().expect("kept"),
        q.contract.clone().expect("kept"),
    );
    assert!(Arc::ptr_eq(&pc, &qc));
}
