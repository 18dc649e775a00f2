//! The agent's stdout and stderr: read as long as the process (or anything holding the pipes)
//! writes, line by line into the supervisor's log (escaped, so that each stays one line),
//! within the attempt's log budget; the last bytes of stderr are kept for the exit record.
//!
//! The streams are read by the attempt's own task when its [`Poller`] says they are ready, a
//! bounded chunk per wake-up after everything that matters more (the owner's stop, the exit,
//! the timer, the agent's frames), so that an agent that floods its output never holds up its
//! watch; while the agent is being stopped, and after it exited until both streams end, they
//! are still read (an agent blocked on a full stdout could not exit gracefully).

use super::bounds::{self, LogBudget};
use super::poller::{Poller, Ready};
use super::{read_scratch, SCRATCH_LEN};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// How much of stderr the exit record keeps.
pub(super) const STDERR_TAIL: usize = 4096;

/// A partial line longer than this is printed as it is.
const LONGEST_LINE: usize = 64 * 1024;

/// Where an agent's stdout/stderr bytes go: lines to the log (escaped), within the attempt's
/// log budget.
pub(super) struct LogSink {
    budget: Arc<LogBudget>,
    /// Partial last line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    stderr_tail: Vec<u8>,
}

impl LogSink {
    /// Take bytes just read from stream `which` (0 stdout, 1 stderr) of `agent`'s process
    /// `pid`; `eof` flushes its partial line.
    fn consume(&mut self, which: usize, data: &[u8], eof: bool, agent: &str, pid: i32) {
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
        if buf.is_empty() {
            // No partial line: its room goes back.
            *buf = Vec::new();
        }
    }
}

/// The agent's stdout and stderr (read ends, non-blocking), and where their bytes go.
pub(super) struct Logs {
    /// stdout, stderr; `None` once at their end.
    streams: [Option<OwnedFd>; 2],
    sink: LogSink,
}

impl Logs {
    /// Read `out` and `err` within `budget`, as `poller` says they are ready.
    pub(super) fn new(
        out: OwnedFd,
        err: OwnedFd,
        budget: Arc<LogBudget>,
        poller: &Poller,
    ) -> std::io::Result<Logs> {
        for (fd, what) in [(&out, Ready::STDOUT), (&err, Ready::STDERR)] {
            super::poller::set_nonblocking(fd.as_fd())?;
            poller.add(fd.as_fd(), what)?;
        }
        Ok(Logs {
            streams: [Some(out), Some(err)],
            sink: LogSink {
                budget,
                partial: [Vec::new(), Vec::new()],
                stderr_tail: Vec::new(),
            },
        })
    }

    /// Whether a stream has not ended yet.
    pub(super) fn open(&self) -> bool {
        self.streams.iter().any(Option::is_some)
    }

    /// Read one chunk of each stream `ready` says is ready. A stream at its end (or failing)
    /// is closed, which takes it out of the poller's set.
    pub(super) fn read(&mut self, ready: Ready, agent: &str, pid: i32) {
        for (which, what) in [(0, Ready::STDOUT), (1, Ready::STDERR)] {
            if !ready.has(what) {
                continue;
            }
            let Some(fd) = &self.streams[which] else {
                continue;
            };
            let sink = &mut self.sink;
            let ended = read_scratch(fd.as_fd(), SCRATCH_LEN, |r| match r {
                Ok(read) => {
                    sink.consume(which, read, read.is_empty(), agent, pid);
                    read.is_empty()
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => false,
                Err(_) => {
                    sink.consume(which, &[], true, agent, pid);
                    true
                }
            });
            if ended {
                self.streams[which] = None;
            }
        }
    }

    /// Read both streams to their end. The caller has taken everything else out of the
    /// poller's set, and bounds the wait.
    pub(super) async fn drain_to_end(&mut self, poller: &Poller, agent: &str, pid: i32) {
        while self.open() {
            match poller.ready().await {
                Ok(ready) => self.read(ready, agent, pid),
                Err(_) => return,
            }
        }
    }

    /// The last bytes of stderr.
    pub(super) fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.sink.stderr_tail).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(limit: u64) -> LogSink {
        LogSink {
            budget: Arc::new(LogBudget::new(limit)),
            partial: [Vec::new(), Vec::new()],
            stderr_tail: Vec::new(),
        }
    }

    impl LogSink {
        fn take(&mut self, which: usize, data: &[u8], eof: bool) {
            self.consume(which, data, eof, "t", 1);
        }
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut s = sink(1 << 20);
        s.take(0, b"ab\ncd", false);
        assert_eq!(s.partial[0], b"cd");
        s.take(0, b"e", false);
        assert_eq!(s.partial[0], b"cde");
        s.take(0, b"f\ng\nh", false);
        assert_eq!(s.partial[0], b"h");
        s.take(0, b"", true);
        assert!(
            s.partial[0].is_empty() && s.partial[0].capacity() == 0,
            "end of stream flushes the last line, and its room goes back"
        );
    }

    #[tokio::test]
    async fn streams_are_read_to_their_end_and_closed() {
        let poller = Poller::new().expect("epoll");
        let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
        let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
        let budget = Arc::new(LogBudget::new(1 << 20));
        let mut logs = Logs::new(out_r, err_r, budget, &poller).expect("logs");
        nix::unistd::write(&out_w, b"one\ntwo").expect("write");
        nix::unistd::write(&err_w, b"oops").expect("write");
        let ready = poller.ready().await.expect("ready");
        logs.read(ready, "t", 1);
        assert_eq!(logs.sink.partial[0], b"two");
        drop((out_w, err_w));
        logs.drain_to_end(&poller, "t", 1).await;
        assert!(!logs.open());
        assert_eq!(logs.stderr_tail(), "oops");
        assert!(logs.sink.partial[0].is_empty(), "the last line was printed");
    }

    #[test]
    fn bytes_over_the_limit_are_counted_not_kept() {
        let mut s = sink(4);
        s.take(0, b"0123456789", false);
        assert_eq!(s.budget.dropped(), 6);
        assert_eq!(s.partial[0], b"0123");
        s.take(1, b"oops\n", false);
        assert_eq!(s.budget.dropped(), 11);
        assert_eq!(
            s.stderr_tail, b"oops\n",
            "the stderr tail is kept beyond the limit"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_bytes() {
        let mut s = sink(0);
        s.take(1, &vec![b'a'; STDERR_TAIL], false);
        s.take(1, b"END", false);
        assert_eq!(s.stderr_tail.len(), STDERR_TAIL);
        assert!(s.stderr_tail.ends_with(b"aEND"));
    }
}
