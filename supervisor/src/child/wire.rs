//! The pipes to and from one agent: frames written without blocking (what does not fit waits
//! for the pipe to drain; past `bounds::MAX_PENDING` bytes waiting, the agent's frames are left
//! unread until it reads its own), frames read in bounded chunks into a bounded decoder, and
//! the beat pipe, read without blocking. Buffers are given back once empty: a thousand idle
//! agents keep none. Readiness comes from the attempt's [`Poller`]: the up pipe is in its set
//! while its frames are wanted, the down pipe only while a write waits for room.

use super::bounds;
use super::poller::{Poller, Ready};
use super::protocol::Protocol;
use super::{read_scratch, SCRATCH_LEN};
use corral_proto::beat::{monotonic_ns, BEAT_LEN};
use corral_proto::frame::{self, FrameDecoder};
use corral_proto::Down;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// The pipes to and from the agent.
pub(super) struct Wire {
    /// The agent→supervisor pipe (non-blocking).
    up: Option<OwnedFd>,
    /// The agent's end of the up pipe is still open.
    pub(super) up_open: bool,
    /// The up pipe is in the poller's set.
    up_watched: bool,
    /// The up pipe's frames, as far as they arrived.
    pub(super) decoder: FrameDecoder,
    /// The supervisor→agent pipe (non-blocking); what does not fit waits in `pending` for the
    /// pipe to have room.
    down: Option<OwnedFd>,
    pending: Vec<u8>,
    /// The down pipe is in the poller's set (a write waits for room).
    down_watched: bool,
    max_frame: u32,
}

impl Wire {
    /// The pipes, `up` and `down` non-blocking already.
    pub(super) fn new(up: Option<OwnedFd>, down: Option<OwnedFd>, max_frame: u32) -> Wire {
        Wire {
            up,
            up_open: true,
            up_watched: false,
            decoder: FrameDecoder::new(max_frame),
            down,
            pending: Vec::new(),
            down_watched: false,
            max_frame,
        }
    }

    /// Say `msg` to the agent (dropped when the agent can no longer be told anything).
    pub(super) fn send(&mut self, msg: &Down, poller: &Poller) {
        if self.down.is_none() {
            return;
        }
        let at = self.pending.len();
        if frame::encode_into(msg, &mut self.pending).is_ok() {
            self.flush(poller);
        } else {
            // Nothing of a frame that could not be encoded goes down the pipe.
            self.pending.truncate(at);
        }
    }

    /// Say a tool's answer to call `call_id`. An answer whose frame would pass the agent's
    /// `max_frame` (its decoder would refuse it, and the agent end) goes as a `too_large`
    /// error instead, which the agent can handle. What was sent.
    pub(super) fn send_tool_result(
        &mut self,
        call_id: u64,
        result: Result<corral_proto::Value, corral_proto::AgentError>,
        poller: &Poller,
    ) -> Result<corral_proto::Value, corral_proto::AgentError> {
        use corral_proto::ToolResult;
        if self.down.is_none() {
            return result;
        }
        let msg = Down::ToolResult(ToolResult { call_id, result });
        let at = self.pending.len();
        let encoded = frame::encode_into(&msg, &mut self.pending);
        let len = (self.pending.len() - at).saturating_sub(4);
        if encoded.is_ok() && len <= self.max_frame as usize {
            self.flush(poller);
            return result_of(msg);
        }
        self.pending.truncate(at);
        let refused = Err(corral_proto::AgentError::new(
            "too_large",
            format!(
                "the tool's answer is {len} bytes encoded, past this agent's max_frame ({} \
                 bytes)",
                self.max_frame
            ),
            false,
        ));
        let msg = Down::ToolResult(ToolResult {
            call_id,
            result: refused,
        });
        self.send(&msg, poller);
        result_of(msg)
    }

    /// Send a frame encoded already.
    pub(super) fn send_encoded(&mut self, frame: &[u8], poller: &Poller) {
        if self.down.is_some() {
            self.pending.extend_from_slice(frame);
            self.flush(poller);
        }
    }

    /// Write as much of `pending` as the pipe takes now; what is left waits for room (the down
    /// pipe is then in the poller's set).
    pub(super) fn flush(&mut self, poller: &Poller) {
        let Some(down) = &self.down else {
            self.pending = Vec::new();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(down, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    if !self.down_watched {
                        self.down_watched = poller.add(down.as_fd(), Ready::DOWN).is_ok();
                    }
                    return;
                }
                Err(_) => {
                    // The agent closed its end: nothing more can be said to it.
                    self.close_down();
                    return;
                }
            }
        }
        if self.down_watched {
            poller.remove(down.as_fd());
            self.down_watched = false;
        }
        // All written: the room goes back (the supervisor says little, and rarely).
        self.pending = Vec::new();
    }

    /// Nothing more can be said to the agent (closing the pipe takes it out of the poller's
    /// set).
    pub(super) fn close_down(&mut self) {
        self.pending = Vec::new();
        self.down = None;
        self.down_watched = false;
    }

    /// Bytes waiting for the agent to read them.
    pub(super) fn unread(&self) -> usize {
        self.pending.len()
    }

    /// Whether the agent's frames are left unread because it does not read its own: more
    /// than `bounds::MAX_PENDING` bytes wait to be written to it.
    pub(super) fn backpressured(&self) -> bool {
        self.down.is_some() && bounds::over_pending(self.pending.len())
    }

    /// Put the up pipe in the poller's set while its frames are wanted (it is open and the
    /// agent reads its own), and out of it otherwise.
    pub(super) fn watch_up(&mut self, poller: &Poller) {
        let wanted = self.up_open && !self.backpressured();
        if let Some(up) = &self.up {
            if wanted && !self.up_watched {
                self.up_watched = poller.add(up.as_fd(), Ready::UP).is_ok();
            } else if !wanted && self.up_watched {
                poller.remove(up.as_fd());
                self.up_watched = false;
            }
        }
    }

    /// Nothing on the wire wakes the attempt any more (it is being stopped).
    pub(super) fn unwatch(&mut self, poller: &Poller) {
        if let (Some(up), true) = (&self.up, self.up_watched) {
            poller.remove(up.as_fd());
        }
        if let (Some(down), true) = (&self.down, self.down_watched) {
            poller.remove(down.as_fd());
        }
        self.up_watched = false;
        self.down_watched = false;
    }

    /// Read what is available on the up pipe into the decoder. `Err` is a protocol
    /// violation's message.
    pub(super) fn read_available(&mut self, max_chunks: usize) -> Result<ReadState, String> {
        // Bounded per call: a flooding agent cannot grow the buffer without bound (frames are
        // handled between calls) nor keep this task from its timers.
        let Some(up) = &self.up else {
            return Ok(ReadState::Eof);
        };
        let decoder = &mut self.decoder;
        for _ in 0..max_chunks {
            // Refuse a too-large length, or a too-large tool call, before reading its payload.
            decoder.wanted().map_err(frame_error)?;
            bounds::check_head(decoder.peek_head()).map_err(|e| e.to_string())?;
            let state = read_scratch(up.as_fd(), CHUNK, |r| match r {
                Ok([]) => Ok(Some(ReadState::Eof)),
                Ok(read) => {
                    decoder.push(read);
                    // A short read proves the pipe empty.
                    Ok((read.len() < CHUNK).then_some(ReadState::Drained))
                }
                Err(rustix::io::Errno::AGAIN) => Ok(Some(ReadState::Drained)),
                Err(rustix::io::Errno::INTR) => Ok(None),
                Err(e) => Err(frame_error(std::io::Error::from(e).into())),
            })?;
            if let Some(state) = state {
                return Ok(state);
            }
        }
        Ok(ReadState::More)
    }

    /// Give back the decoder's room once every frame in it is handled (an idle agent's frames
    /// come seconds apart, if at all: its beats go through the beat pipe).
    pub(super) fn settle(&mut self) {
        if self.decoder.pending() == 0 {
            self.decoder = FrameDecoder::new(self.max_frame);
        }
    }
}

/// The most read of the up pipe at once: a frame's head is checked between reads.
const CHUNK: usize = 16 * 1024;

/// What one bounded read found.
#[derive(PartialEq)]
pub(super) enum ReadState {
    /// Nothing more buffered in the pipe right now.
    Drained,
    /// More may be waiting.
    More,
    /// The writer side is closed.
    Eof,
}

/// The beat pipe (read end), read only when a watchdog is due and at the end.
pub(super) struct Beats {
    fd: Option<OwnedFd>,
    /// Bytes of a beat record cut short by a read (only a misbehaving agent writes partial
    /// records).
    rest: ([u8; BEAT_LEN], usize),
}

impl Beats {
    pub(super) fn new(fd: OwnedFd) -> Beats {
        Beats {
            fd: Some(fd),
            rest: ([0; BEAT_LEN], 0),
        }
    }

    /// Close the beat pipe.
    pub(super) fn close(&mut self) {
        self.fd = None;
    }

    /// Read the beats waiting (a few bounded reads, never blocking) into `proto`.
    pub(super) fn absorb(&mut self, proto: &mut Protocol) {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_fd()) else {
            return;
        };
        let now = Instant::now();
        let Some(mono_now) = monotonic_ns() else {
            return;
        };
        // A pipe holds 64 KiB by default: a couple of reads drain it.
        for _ in 0..4 {
            let rest = &mut self.rest;
            let more = read_scratch(fd, SCRATCH_LEN, |r| {
                let Ok(read) = r else {
                    return false; // empty (EAGAIN)
                };
                if read.is_empty() {
                    return false; // the agent closed its end
                }
                let mut data = read;
                // A record cut short by the last read first.
                let (kept, n) = (rest.1, read.len());
                if kept > 0 {
                    let need = (BEAT_LEN - kept).min(data.len());
                    rest.0[kept..kept + need].copy_from_slice(&data[..need]);
                    rest.1 += need;
                    data = &data[need..];
                    if rest.1 == BEAT_LEN {
                        let (progress, at_ns) = corral_proto::beat::decode(&rest.0);
                        proto.on_beat(progress, at_ns, now, mono_now);
                        rest.1 = 0;
                    }
                }
                let whole = data.len() - data.len() % BEAT_LEN;
                for rec in data[..whole].chunks_exact(BEAT_LEN) {
                    let mut r = [0u8; BEAT_LEN];
                    r.copy_from_slice(rec);
                    let (progress, at_ns) = corral_proto::beat::decode(&r);
                    proto.on_beat(progress, at_ns, now, mono_now);
                }
                let tail = &data[whole..];
                rest.0[rest.1..rest.1 + tail.len()].copy_from_slice(tail);
                rest.1 += tail.len();
                // A short read: the pipe is empty.
                n == SCRATCH_LEN
            });
            if !more {
                return;
            }
        }
    }
}

/// A framing error as a protocol violation's message.
pub(super) fn frame_error(e: corral_proto::FrameError) -> String {
    format!("{} ({})", e, e.kind())
}

/// The result a `ToolResult` carries (only those are passed).
fn result_of(msg: Down) -> Result<corral_proto::Value, corral_proto::AgentError> {
    match msg {
        Down::ToolResult(r) => r.result,
        _ => Err(corral_proto::AgentError::new(
            "internal",
            "not a tool result",
            false,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{Note, Notes, TaskInput};
    use std::sync::{Arc, Mutex};

    /// Beat records cut across reads (as only a misbehaving agent writes them) are put back
    /// together: each counted once, none made up, the last progress the last record's.
    #[test]
    fn beats_cut_across_reads_are_each_counted_once() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        super::super::poller::set_nonblocking(r.as_fd()).expect("nonblocking");
        let mut beats = Beats::new(r);
        let agent = Arc::new(crate::config::AgentSpec::builtin(
            "a",
            vec!["/bin/true".into()],
        ));
        let task = TaskInput {
            task_id: 1,
            input: Arc::new(corral_proto::Value::Null),
            memory: Vec::new(),
        };
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let notes: Notes = Arc::new(move |n| {
            if let Note::Summary {
                heartbeats,
                progress,
            } = n
            {
                *s.lock().expect("lock") = Some((heartbeats, progress));
            }
        });
        let mut proto =
            Protocol::new(agent, task, 1 << 16, false, Instant::now()).with_notes(Some(notes));
        let at = monotonic_ns().expect("monotonic clock");
        let records: Vec<u8> = (1..=4u64)
            .flat_map(|p| corral_proto::beat::encode(p, at))
            .collect();
        // Two records and a half; one byte more; the rest.
        for part in [&records[..40], &records[40..41], &records[41..]] {
            nix::unistd::write(&w, part).expect("write");
            beats.absorb(&mut proto);
        }
        // Nothing waiting: nothing more counted.
        beats.absorb(&mut proto);
        proto.finish();
        assert_eq!(*seen.lock().expect("lock"), Some((4, 4)));
    }
}
