//! What one agent can make the supervisor hold, and no more: the size of a tool call (name and
//! arguments), how many are outstanding, the bytes waiting to be written to an agent that does
//! not read them, the tool calls kept in the exit record, the log bytes (stdout, stderr and
//! `Log` frames share one budget), and agent text made safe to print. Pure and small: the
//! attempt loop asks, this room answers.

use crate::record::{ExitReason, ToolTrace};
use corral_proto::message::{
    MAX_OUTSTANDING_CALLS, MAX_TOOL_CALL, MAX_TOOL_NAME, UP_TOOL_CALL_TAG,
};
use corral_proto::{AgentError, ToolCall};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes waiting to be written to the agent past which its frames are no longer read, until it
/// reads what it was sent (one message more may be added past it).
pub(super) const MAX_PENDING: usize = 256 * 1024;

/// Tool calls kept at the start of the trace in the exit record…
pub(super) const TRACE_HEAD: usize = 64;
/// …and at its end; those between are counted in `tool_calls_dropped`.
pub(super) const TRACE_TAIL: usize = 64;

/// How much of a string the agent chose is quoted in an error message, in bytes.
const QUOTE: usize = 64;

/// Ways an agent oversteps a bound that end its attempt as a `protocol_violation`. The text is
/// the violation's message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum BoundError {
    /// A `ToolCall` frame larger than [`MAX_TOOL_CALL`] (seen from its header).
    #[error(
        "a tool call of {len} bytes (name and arguments, encoded); a tool call is at most \
         {MAX_TOOL_CALL} bytes"
    )]
    ToolCallTooLarge {
        /// Its payload length.
        len: usize,
    },
    /// A tool name longer than [`MAX_TOOL_NAME`].
    #[error(
        "tool call {call_id} names a tool of {len} bytes (`{quoted}…`); a tool name is at most \
         {MAX_TOOL_NAME} bytes"
    )]
    ToolNameTooLong {
        /// The call.
        call_id: u64,
        /// The name's length.
        len: usize,
        /// Its start, escaped.
        quoted: String,
    },
    /// A call id that is still outstanding.
    #[error("tool call id {call_id} is already outstanding; call ids must be unique")]
    DuplicateCall {
        /// The call id.
        call_id: u64,
    },
    /// The agent has left too much unread on fd 3 for too long.
    #[error(
        "the agent left more than {MAX_PENDING} bytes unread on its pipe (fd 3) for {waited:?} \
         (heartbeat_timeout), {bytes} at the end; corral does not read the agent's frames \
         meanwhile"
    )]
    NotReading {
        /// Bytes waiting to be written.
        bytes: usize,
        /// How long it was so.
        waited: Duration,
    },
}

/// Whether `pending` bytes waiting to be written to the agent are too many: its frames are then
/// left unread until it reads.
pub(super) fn over_pending(pending: usize) -> bool {
    pending > MAX_PENDING
}

/// The liveness watchdog: `hung` a heartbeat_timeout after the last sign of life; but while
/// the agent's frames are left unread (`blocked_since`, see [`over_pending`]), it cannot be
/// told hung, and is given a heartbeat_timeout from then to read what waits for it, or it is a
/// `protocol_violation`.
pub(super) fn liveness_deadline(
    last_alive: Instant,
    blocked_since: Option<Instant>,
    timeout: Duration,
) -> (Instant, ExitReason) {
    match blocked_since {
        Some(since) => (since + timeout, ExitReason::ProtocolViolation),
        None => (last_alive + timeout, ExitReason::Hung),
    }
}

/// Check the head of the next frame (its length and first payload byte, see
/// `FrameDecoder::peek_head`) before its payload is read: a `ToolCall` past [`MAX_TOOL_CALL`]
/// is refused from its header.
pub(super) fn check_head(head: Option<(usize, u8)>) -> Result<(), BoundError> {
    match head {
        Some((len, UP_TOOL_CALL_TAG)) if len > MAX_TOOL_CALL => {
            Err(BoundError::ToolCallTooLarge { len })
        }
        _ => Ok(()),
    }
}

/// Check a decoded tool call. `Err`: a protocol violation; `Ok(Some(refusal))`: answered with
/// that error, not relayed; `Ok(None)`: it may go on.
pub(super) fn check_call(
    call: &ToolCall,
    outstanding: usize,
    is_outstanding: impl Fn(u64) -> bool,
) -> Result<Option<AgentError>, BoundError> {
    if call.tool.len() > MAX_TOOL_NAME {
        return Err(BoundError::ToolNameTooLong {
            call_id: call.call_id,
            len: call.tool.len(),
            quoted: quote(&call.tool),
        });
    }
    if is_outstanding(call.call_id) {
        return Err(BoundError::DuplicateCall {
            call_id: call.call_id,
        });
    }
    if outstanding >= MAX_OUTSTANDING_CALLS {
        return Ok(Some(AgentError::new(
            "too_many_calls",
            format!(
                "{outstanding} tool calls are outstanding, the most an agent may have; wait for \
                 an answer before calling again"
            ),
            true,
        )));
    }
    Ok(None)
}

/// The tool calls of an attempt as the exit record keeps them: the first [`TRACE_HEAD`] and the
/// last [`TRACE_TAIL`], and a count of those between.
#[derive(Debug, Default)]
pub(super) struct Trace {
    head: Vec<ToolTrace>,
    tail: VecDeque<ToolTrace>,
    dropped: u64,
}

impl Trace {
    /// Add one finished call.
    pub(super) fn push(&mut self, t: ToolTrace) {
        if self.head.len() < TRACE_HEAD {
            self.head.push(t);
            return;
        }
        if self.tail.len() == TRACE_TAIL {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(t);
    }

    /// The calls kept, in order, and how many were dropped.
    pub(super) fn take(&mut self) -> (Vec<ToolTrace>, u64) {
        let mut kept = std::mem::take(&mut self.head);
        kept.extend(std::mem::take(&mut self.tail));
        (kept, std::mem::take(&mut self.dropped))
    }
}

/// The log budget of one attempt (`log_limit`), shared by its stdout, its stderr and its `Log`
/// frames: what is over it is counted, not printed.
#[derive(Debug)]
pub(super) struct LogBudget {
    limit: u64,
    used: AtomicU64,
    dropped: AtomicU64,
}

impl LogBudget {
    /// A budget of `limit` bytes.
    pub(super) fn new(limit: u64) -> LogBudget {
        LogBudget {
            limit,
            used: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Take up to `n` bytes; returns how many may be printed (the rest is counted as dropped).
    pub(super) fn take(&self, n: usize) -> usize {
        let n = n as u64;
        let prev = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_add(n).min(self.limit.max(u)))
            })
            .unwrap_or(self.limit);
        let kept = self.limit.saturating_sub(prev).min(n);
        self.dropped.fetch_add(n - kept, Ordering::Relaxed);
        kept as usize
    }

    /// Bytes dropped so far.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// When a beat the agent dated `beat_ns` (`CLOCK_MONOTONIC`) was alive, read at `read_at`
/// (`mono_now` on that clock): its date, clamped to the time it was read (a beat from the
/// future counts as "now", so it cannot hide a hang) and to `floor` (the attempt's start).
pub(super) fn beat_time(read_at: Instant, mono_now: u64, beat_ns: u64, floor: Instant) -> Instant {
    let age = Duration::from_nanos(mono_now.saturating_sub(beat_ns));
    read_at.checked_sub(age).unwrap_or(floor).max(floor)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The start of a string the agent chose, escaped, for an error message.
fn quote(s: &str) -> String {
    escape(clip(s, QUOTE)).into_owned()
}

/// Whether a character must not reach a log line as itself: controls (C0 including newline,
/// carriage return, tab and ESC, which starts terminal escape sequences; DEL; C1), the Unicode
/// line and paragraph separators, and the bidirectional overrides and isolates that reorder
/// how a line reads.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Agent text made safe for one log line: `\n`, `\r`, `\t` as those two characters, other
/// unsafe characters (ESC is `\x1b`) as `\xNN` or `\u{NNNN}`. Other text, backslashes
/// included, is unchanged.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::{frame, Up, Value};

    fn call(id: u64, tool: &str) -> ToolCall {
        ToolCall {
            call_id: id,
            tool: tool.into(),
            args: Value::Null,
        }
    }

    fn trace(id: u64) -> ToolTrace {
        ToolTrace {
            call_id: id,
            tool: "t".into(),
            ok: true,
            error_kind: None,
            duration_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_tool_call_too_large_is_refused_from_its_header() {
        let small = frame::encode(&Up::ToolCall(call(1, "t"))).unwrap();
        assert_eq!(check_head(Some((small.len() - 4, small[4]))), Ok(()));
        assert_eq!(
            check_head(Some((MAX_TOOL_CALL + 1, UP_TOOL_CALL_TAG))),
            Err(BoundError::ToolCallTooLarge {
                len: MAX_TOOL_CALL + 1
            })
        );
        assert_eq!(check_head(Some((MAX_TOOL_CALL, UP_TOOL_CALL_TAG))), Ok(()));
        // Other messages are bounded by max_frame only.
        let log = frame::encode(&Up::Log(corral_proto::Log {
            level: corral_proto::LogLevel::Info,
            message: String::new(),
        }))
        .unwrap();
        assert_eq!(check_head(Some((MAX_TOOL_CALL + 1, log[4]))), Ok(()));
        assert_eq!(check_head(None), Ok(()));
    }

    #[test]
    fn tool_names_past_the_cap_are_violations_quoted_short_and_escaped() {
        assert_eq!(
            check_call(&call(1, &"n".repeat(MAX_TOOL_NAME)), 0, |_| false),
            Ok(None)
        );
        let long = format!("\x1b[2J{}", "n".repeat(1 << 20));
        let e = check_call(&call(7, &long), 0, |_| false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("tool call 7 names a tool of 1048580 bytes"),
            "{text}"
        );
        assert!(text.contains("`\\x1b[2Jnnn"), "{text}");
        assert!(text.len() < 300, "{text}");
    }

    #[test]
    fn outstanding_calls_are_capped_and_ids_unique() {
        let refusal = check_call(&call(1, "t"), MAX_OUTSTANDING_CALLS, |_| false)
            .unwrap()
            .unwrap();
        assert_eq!(refusal.kind, "too_many_calls");
        assert!(refusal.retryable);
        assert_eq!(
            check_call(&call(1, "t"), MAX_OUTSTANDING_CALLS - 1, |_| false),
            Ok(None)
        );
        assert_eq!(
            check_call(&call(5, "t"), 1, |id| id == 5),
            Err(BoundError::DuplicateCall { call_id: 5 })
        );
    }

    #[test]
    fn the_trace_keeps_head_and_tail_and_counts_the_rest() {
        let mut t = Trace::default();
        for id in 0..1000 {
            t.push(trace(id));
        }
        let (kept, dropped) = t.take();
        assert_eq!(kept.len(), TRACE_HEAD + TRACE_TAIL);
        assert_eq!(dropped, 1000 - (TRACE_HEAD + TRACE_TAIL) as u64);
        let ids: Vec<u64> = kept.iter().map(|t| t.call_id).collect();
        let want: Vec<u64> = (0..TRACE_HEAD as u64)
            .chain(1000 - TRACE_TAIL as u64..1000)
            .collect();
        assert_eq!(ids, want);

        let mut few = Trace::default();
        for id in 0..3 {
            few.push(trace(id));
        }
        assert_eq!(few.take(), (vec![trace(0), trace(1), trace(2)], 0));
    }

    #[test]
    fn the_log_budget_is_shared_and_counts_what_is_over() {
        let b = LogBudget::new(10);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(4), 2);
        assert_eq!(b.take(4), 0);
        assert_eq!(b.dropped(), 6);
        let none = LogBudget::new(0);
        assert_eq!(none.take(3), 0);
        assert_eq!(none.dropped(), 3);
    }

    #[test]
    fn escaping_leaves_no_line_break_nor_control() {
        assert!(matches!(escape("plain text, C:\\path"), Cow::Borrowed(_)));
        let forged = "ok\n2024-01-01T00:00:00Z  INFO corral: forged\r\x1b[2J\x1b]0;t\x07\t\u{7f}\u{85}\u{2028}\u{202e}é";
        let e = escape(forged);
        assert_eq!(
            e,
            "ok\\n2024-01-01T00:00:00Z  INFO corral: forged\\r\\x1b[2J\\x1b]0;t\\x07\\t\\x7f\\x85\\u{2028}\\u{202e}é"
        );
        assert!(!e.chars().any(unsafe_char));
    }

    #[test]
    fn a_beat_is_dated_no_later_than_it_was_read_nor_before_the_attempt() {
        let floor = Instant::now();
        let read_at = floor + Duration::from_secs(10);
        let mono = 1_000_000_000_000;
        // From the future, near or far: when it was read.
        assert_eq!(beat_time(read_at, mono, mono + 1, floor), read_at);
        assert_eq!(beat_time(read_at, mono, u64::MAX, floor), read_at);
        // From the past: its own date.
        assert_eq!(
            beat_time(read_at, mono, mono - 3_000_000_000, floor),
            read_at - Duration::from_secs(3)
        );
        // From before the attempt (or boot): the attempt's start.
        assert_eq!(beat_time(read_at, mono, 0, floor), floor);
    }

    #[test]
    fn an_agent_held_back_is_given_a_heartbeat_timeout_to_read_then_is_a_violation() {
        assert!(!over_pending(MAX_PENDING));
        assert!(over_pending(MAX_PENDING + 1));
        let t = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(liveness_deadline(t, None, s), (t + s, ExitReason::Hung));
        // Held back later than its last frame: judged from then, not hung meanwhile.
        let since = t + Duration::from_millis(300);
        assert_eq!(
            liveness_deadline(t, Some(since), s),
            (since + s, ExitReason::ProtocolViolation)
        );
    }

    #[test]
    fn clip_stays_on_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("hi", 10), "hi");
    }
}
