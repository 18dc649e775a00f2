//! The agent's stdout and stderr: drained as long as the process (or anything holding the
//! pipes) writes, line by line into the supervisor's log (escaped, so that each stays one line),
//! within the attempt's log budget; the last bytes of stderr are kept for the exit record. The
//! drain is a task of its own, so that an agent that floods its output never holds up the
//! attempt's watch, and the watch never has to read what the agent prints.

use super::bounds::{self, LogBudget};
use super::with_scratch;
use std::sync::Arc;
use tokio::net::unix::pipe;

/// How much of stderr the exit record keeps.
pub(super) const STDERR_TAIL: usize = 4096;

/// A partial line longer than this is printed as it is.
const LONGEST_LINE: usize = 64 * 1024;

/// Where an agent's stdout/stderr bytes go: lines to the log (escaped), within the attempt's
/// log budget.
pub(super) struct LogSink {
    agent: String,
    pid: i32,
    budget: Arc<LogBudget>,
    /// Partial last line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    stderr_tail: Vec<u8>,
}

impl LogSink {
    /// Take bytes just read from stream `which` (0 stdout, 1 stderr); `eof` flushes its partial
    /// line.
    fn consume(&mut self, which: usize, data: &[u8], eof: bool) {
        if which == 1 {
            let tail = &mut self.stderr_tail;
            tail.extend_from_slice(data);
            if tail.len() > STDERR_TAIL {
                let cut = tail.len() - STDERR_TAIL;
                tail.drain(..cut);
            }
        }
        let keep = self.budget.take(data.len());
        let stream = if which == 0 { "stdout" } else { "stderr" };
        let (agent, pid) = (&self.agent, self.pid);
        let emit = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            tracing::info!(agent = %agent, pid, stream, "{}", bounds::escape(&text));
        };
        let buf = &mut self.partial[which];
        let mut rest = &data[..keep];
        // Complete the pending partial line, then emit whole lines straight from the chunk.
        if !buf.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    buf.extend_from_slice(&rest[..pos]);
                    emit(buf);
                    buf.clear();
                    rest = &rest[pos + 1..];
                }
                None => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            emit(&rest[..pos]);
            rest = &rest[pos + 1..];
        }
        buf.extend_from_slice(rest);
        if buf.len() > LONGEST_LINE || (eof && !buf.is_empty()) {
            emit(buf);
            buf.clear();
        }
    }
}

/// Drain stdout and stderr to the log, line by line, within the attempt's log budget.
/// Returns the last bytes of stderr.
pub(super) async fn drain(
    out: pipe::Receiver,
    errp: pipe::Receiver,
    agent: String,
    pid: i32,
    budget: Arc<LogBudget>,
) -> Vec<u8> {
    let mut sink = LogSink {
        agent,
        pid,
        budget,
        partial: [Vec::new(), Vec::new()],
        stderr_tail: Vec::new(),
    };
    let mut open = [true, true];
    let streams = [&out, &errp];
    // Which stream is asked first: the other one after each read, so that a stream that is
    // always ready cannot keep the other unread.
    let mut first = 0;
    while open[0] || open[1] {
        // Polled in place: nothing is kept between wake-ups but the two registrations.
        let which = std::future::poll_fn(|cx| {
            for which in [first, 1 - first] {
                if !open[which] {
                    continue;
                }
                match streams[which].poll_read_ready(cx) {
                    std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready(Some(which)),
                    std::task::Poll::Ready(Err(_)) => open[which] = false,
                    std::task::Poll::Pending => {}
                }
            }
            if open[0] || open[1] {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            }
        })
        .await;
        let Some(which) = which else { break };
        first = 1 - which;
        let result = with_scratch(|c| {
            let r = streams[which].try_read(c);
            match &r {
                Ok(n) => sink.consume(which, &c[..*n], *n == 0),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    sink.consume(which, &[], true)
                }
                Err(_) => {}
            }
            r
        });
        match result {
            Ok(0) => open[which] = false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => open[which] = false,
        }
    }
    sink.stderr_tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(limit: u64) -> LogSink {
        LogSink {
            agent: "t".into(),
            pid: 1,
            budget: Arc::new(LogBudget::new(limit)),
            partial: [Vec::new(), Vec::new()],
            stderr_tail: Vec::new(),
        }
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut s = sink(1 << 20);
        s.consume(0, b"ab\ncd", false);
        assert_eq!(s.partial[0], b"cd");
        s.consume(0, b"e", false);
        assert_eq!(s.partial[0], b"cde");
        s.consume(0, b"f\ng\nh", false);
        assert_eq!(s.partial[0], b"h");
        s.consume(0, b"", true);
        assert!(
            s.partial[0].is_empty(),
            "end of stream flushes the last line"
        );
    }

    #[test]
    fn bytes_over_the_limit_are_counted_not_kept() {
        let mut s = sink(4);
        s.consume(0, b"0123456789", false);
        assert_eq!(s.budget.dropped(), 6);
        assert_eq!(s.partial[0], b"0123");
        s.consume(1, b"oops\n", false);
        assert_eq!(s.budget.dropped(), 11);
        assert_eq!(
            s.stderr_tail, b"oops\n",
            "the stderr tail is kept beyond the limit"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_bytes() {
        let mut s = sink(0);
        s.consume(1, &vec![b'a'; STDERR_TAIL], false);
        s.consume(1, b"END", false);
        assert_eq!(s.stderr_tail.len(), STDERR_TAIL);
        assert!(s.stderr_tail.ends_with(b"aEND"));
    }
}
