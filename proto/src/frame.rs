//! Framing: a `u32` little-endian payload length, then the bincode payload.
//!
//! The payload is encoded with bincode 2 in its serde mode and standard configuration
//! (little-endian, variable-length integers). Readers check the announced length against their
//! maximum *before* allocating anything, and decode with a bincode size limit, so no input can
//! make either side allocate more than the maximum or panic.
//!
//! Three ways a stream can go wrong are kept apart: a clean end between frames
//! (`Ok(None)`), an end in the middle of a frame ([`FrameError::Truncated`]) and a payload that
//! does not decode ([`FrameError::Decode`]).
//!
//! [`FrameReader`] reads from any `std::io::Read`; [`FrameDecoder`] splits frames out of bytes
//! pushed into it (what an event loop uses); with the `tokio` feature, [`AsyncFrameReader`]
//! and [`write_frame_async`] work over tokio's I/O traits.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

/// Default largest payload accepted: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Hard ceiling on what bincode may allocate while decoding one payload (1 GiB); the
/// configured frame maximum is always below it.
const DECODE_LIMIT: usize = 1 << 30;

fn config<const LIMIT: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
> {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Framing failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the pipe failed.
    #[error("i/o error on the frame stream: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announced more than the maximum. Nothing was allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Maximum in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended mid-frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame (header or payload) needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The payload is not a valid message.
    #[error("undecodable payload: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl FrameError {
    /// A short class name, used in exit records.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Io(_) => "io",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::Truncated { .. } => "truncated_frame",
            FrameError::Decode(_) => "undecodable_frame",
            FrameError::Encode(_) => "unencodable_message",
        }
    }
}

/// Encode one message as a complete frame (header + payload).
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Append one complete frame to `buf`.
pub fn encode_into<M: Serialize>(msg: &M, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(msg, buf, config::<DECODE_LIMIT>())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - start - 4;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max: u32::MAX,
    })?;
    buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// Decode one payload (without its header) of a stream whose frames are at most
/// [`DEFAULT_MAX_FRAME`] bytes. Trailing bytes are an error. See [`decode_payload_within`].
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    decode_payload_within(payload, DEFAULT_MAX_FRAME)
}

/// Decode one payload of a stream whose frames are at most `max_frame` bytes. The values it
/// holds may take at most `2 × max_frame − payload length + 64 KiB` bytes of memory, so that
/// the frame and what it decodes to never take much more than twice `max_frame`, whatever
/// its content: a frame of millions of one-byte nulls (32 bytes each in memory) is refused
/// instead of growing the decoder thirty-fold.
pub fn decode_payload_within<M: DeserializeOwned>(
    payload: &[u8],
    max_frame: u32,
) -> Result<M, FrameError> {
    let budget = (2 * max_frame as usize).saturating_sub(payload.len()) + 64 * 1024;
    crate::value::with_budget(budget, || decode_unbudgeted(payload))
}

fn decode_unbudgeted<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    // bincode allocates a string's announced length once it fits the limit, before reading the
    // bytes. A valid payload claims at most 8 bytes of limit per payload byte (a one-byte varint
    // `u64` claims 8), so a limit scaled to the payload keeps a short frame announcing a huge
    // string from allocating more than a small multiple of its own size.
    let n = payload.len();
    let (msg, used) = if n <= 1 << 12 {
        decode_limited::<M, { 1 << 15 }>(payload)
    } else if n <= 1 << 15 {
        decode_limited::<M, { 1 << 18 }>(payload)
    } else if n <= 1 << 18 {
        decode_limited::<M, { 1 << 21 }>(payload)
    } else if n <= 1 << 21 {
        decode_limited::<M, { 1 << 24 }>(payload)
    } else if n <= 1 << 24 {
        decode_limited::<M, { 1 << 27 }>(payload)
    } else {
        decode_limited::<M, DECODE_LIMIT>(payload)
    }?;
    if used != payload.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

fn decode_limited<M: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> Result<(M, usize), FrameError> {
    bincode::serde::decode_from_slice(payload, config::<LIMIT>())
        .map_err(|e| FrameError::Decode(describe(&e)))
}

/// Write one message as a frame, in a single `write_all`, and flush.
pub fn write_frame<W: Write, M: Serialize>(w: &mut W, msg: &M) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads frames from a blocking stream.
pub struct FrameReader<R> {
    inner: R,
    max: u32,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader with the default maximum.
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, DEFAULT_MAX_FRAME)
    }

    /// A reader refusing payloads longer than `max` bytes.
    pub fn with_max(inner: R, max: u32) -> Self {
        FrameReader {
            inner,
            max,
            buf: Vec::new(),
        }
    }

    /// Change the maximum.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// The stream, to read on in another way (a [`FrameDecoder`] over non-blocking reads, say).
    /// The reader keeps no bytes of its own between frames: whatever comes next is still in the
    /// stream.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next message; `Ok(None)` at a clean end of stream between frames.
    pub fn read_frame<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        let mut header = [0u8; 4];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(FrameError::Truncated { expected: 4, got });
        }
        let len = u32::from_le_bytes(header);
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        let len = len as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < len {
            return Err(FrameError::Truncated { expected: len, got });
        }
        decode_payload_within(&self.buf, self.max).map(Some)
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Buffer capacity a [`FrameDecoder`] keeps once empty; more (left by a large frame) is freed.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Splits frames out of bytes as they arrive, for event loops that read in chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        FrameDecoder {
            max,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.reset();
        }
        // Room for the whole frame under way at once (its length is checked against the
        // maximum first), rather than doubling past it.
        if self.pending() >= 4 {
            if let Ok(len) = self.header_len() {
                let want = (self.start + 4 + len).saturating_sub(self.buf.len());
                if want > bytes.len() {
                    self.buf.reserve_exact(want);
                }
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Empty the buffer; the room a large frame needed is given back rather than kept for the
    /// rest of the stream.
    fn reset(&mut self) {
        self.start = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// The announced payload length of the frame under way and its first payload byte (for an
    /// enum message, its variant index when below 251), once both are buffered. Lets a reader
    /// refuse a frame by kind and size before its payload is read. The length is not checked
    /// against the maximum here.
    pub fn peek_head(&self) -> Option<(usize, u8)> {
        if self.pending() < 5 {
            return None;
        }
        let h = &self.buf[self.start..self.start + 4];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        (len > 0).then(|| (len, self.buf[self.start + 4]))
    }

    /// Bytes buffered but not yet consumed as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes the frame under way needs before [`FrameDecoder::next`] can return
    /// it (0 when a whole frame or nothing is buffered). Checks the length first: a too-large
    /// announcement is an error here, before the payload is waited for.
    pub fn wanted(&self) -> Result<usize, FrameError> {
        let avail = self.pending();
        if avail < 4 {
            return Ok(if avail == 0 { 0 } else { 4 - avail });
        }
        let len = self.header_len()?;
        Ok((4 + len).saturating_sub(avail))
    }

    fn header_len(&self) -> Result<usize, FrameError> {
        let h = &self.buf[self.start..self.start + 4];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        Ok(len as usize)
    }

    /// The next complete message, if one is buffered.
    #[allow(clippy::should_implement_trait)] // fallible and generic: not an `Iterator`
    pub fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        let avail = self.pending();
        if avail < 4 {
            return Ok(None);
        }
        let len = self.header_len()?;
        if avail < 4 + len {
            return Ok(None);
        }
        let payload = &self.buf[self.start + 4..self.start + 4 + len];
        let msg = decode_payload_within(payload, self.max)?;
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.reset();
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        let avail = self.pending();
        if avail == 0 {
            return Ok(());
        }
        if avail < 4 {
            return Err(FrameError::Truncated {
                expected: 4,
                got: avail,
            });
        }
        let len = self.header_len()?;
        Err(FrameError::Truncated {
            expected: len,
            got: avail - 4,
        })
    }
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads frames from an async stream through a [`FrameDecoder`].
    pub struct AsyncFrameReader<R> {
        inner: R,
        decoder: FrameDecoder,
        chunk: Box<[u8]>,
        eof: bool,
    }

    impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
        /// A reader refusing payloads longer than `max` bytes.
        pub fn new(inner: R, max: u32) -> Self {
            AsyncFrameReader {
                inner,
                decoder: FrameDecoder::new(max),
                chunk: vec![0; 64 * 1024].into_boxed_slice(),
                eof: false,
            }
        }

        /// The next message; `Ok(None)` at a clean end of stream between frames.
        /// Cancel-safe: bytes read are kept in the decoder.
        pub async fn read_frame<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
            loop {
                if let Some(m) = self.decoder.next()? {
                    return Ok(Some(m));
                }
                if self.eof {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                // Checks a too-large header before waiting for its payload.
                self.decoder.wanted()?;
                let n = self.inner.read(&mut self.chunk).await?;
                if n == 0 {
                    self.eof = true;
                } else {
                    self.decoder.push(&self.chunk[..n]);
                }
            }
        }

        /// The underlying stream.
        pub fn get_mut(&mut self) -> &mut R {
            &mut self.inner
        }
    }

    /// Write one message as a frame.
    pub async fn write_frame_async<W: AsyncWrite + Unpin, M: Serialize>(
        w: &mut W,
        msg: &M,
    ) -> Result<(), FrameError> {
        let buf = encode(msg)?;
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{write_frame_async, AsyncFrameReader};

/// A decode error in words (bincode's own `Display` is its `Debug`).
fn describe(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as D;
    let int = |t: &bincode::error::IntegerType| format!("{t:?}").to_lowercase();
    match e {
        D::UnexpectedEnd { additional } => {
            format!("the payload ends {additional} byte(s) too early")
        }
        D::LimitExceeded => "the payload claims more than the frame limit".into(),
        D::InvalidIntegerType { expected, found } => format!(
            "an integer encoded as {} where {} was expected",
            int(found),
            int(expected)
        ),
        D::NonZeroTypeIsZero { .. } => "a zero where a non-zero integer was expected".into(),
        D::UnexpectedVariant {
            type_name, found, ..
        } => format!("no variant {found} of {type_name}"),
        D::Utf8 { inner } => format!("a string that is not UTF-8 ({inner})"),
        D::InvalidCharEncoding(_) => "an invalid character".into(),
        D::InvalidBooleanValue(b) => format!("{b} where a boolean (0 or 1) was expected"),
        D::ArrayLengthMismatch { required, found } => {
            format!("an array of {found} items where {required} were expected")
        }
        D::OutsideUsizeRange(n) => format!("a length of {n}, too large for this machine"),
        D::OtherString(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::Value;

    fn encoded(v: &Value) -> Vec<u8> {
        let mut b = encode(v).expect("encodes");
        b.drain(..4);
        b
    }

    #[test]
    fn many_tiny_values_are_refused_past_twice_the_frame_limit() {
        // 200 000 nulls: 200 KB on the wire, 6.4 MB in memory.
        let nulls = Value::List(vec![Value::Null; 200_000]);
        let payload = encoded(&nulls);
        let err = decode_payload_within::<Value>(&payload, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("bytes of memory"), "{err}");
        // With room for them (a 16 MiB limit) they decode.
        assert_eq!(
            decode_payload_within::<Value>(&payload, 16 << 20).unwrap(),
            nulls
        );
    }

    #[test]
    fn a_map_of_many_keys_is_charged_too() {
        let map = Value::Map(
            (0..50_000)
                .map(|i| (format!("k{i}"), Value::Null))
                .collect(),
        );
        let payload = encoded(&map);
        assert!(decode_payload_within::<Value>(&payload, 512 << 10).is_err());
        assert_eq!(
            decode_payload_within::<Value>(&payload, 16 << 20).unwrap(),
            map
        );
    }

    #[test]
    fn large_strings_fit_the_budget_of_their_frame() {
        let v = Value::List(vec![Value::String("x".repeat(1 << 20)); 3]);
        let payload = encoded(&v);
        let max = u32::try_from(payload.len()).expect("fits");
        assert_eq!(decode_payload_within::<Value>(&payload, max).unwrap(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    #[test]
    fn round_trip_and_clean_eof() {
        let mut bytes = encode(&Up::Heartbeat(Heartbeat { progress: 3 })).unwrap();
        encode_into(&Up::Heartbeat(Heartbeat { progress: 4 }), &mut bytes).unwrap();
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(
            r.read_frame::<Up>().unwrap(),
            Some(Up::Heartbeat(Heartbeat { progress: 3 }))
        );
        assert_eq!(
            r.read_frame::<Up>().unwrap(),
            Some(Up::Heartbeat(Heartbeat { progress: 4 }))
        );
        assert_eq!(r.read_frame::<Up>().unwrap(), None);
    }

    #[test]
    fn distinct_errors() {
        let bytes = encode(&Up::Heartbeat(Heartbeat { progress: 3 })).unwrap();
        let mut r = FrameReader::new(&bytes[..bytes.len() - 1]);
        assert!(matches!(
            r.read_frame::<Up>(),
            Err(FrameError::Truncated { .. })
        ));
        let mut r = FrameReader::new(&bytes[..2]);
        assert!(matches!(
            r.read_frame::<Up>(),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        let mut r = FrameReader::new(&garbage[..]);
        match r.read_frame::<Up>() {
            Err(FrameError::Decode(m)) => assert!(!m.contains('{'), "debug text: {m}"),
            other => panic!("{other:?}"),
        }
        let huge = u32::MAX.to_le_bytes();
        let mut r = FrameReader::new(&huge[..]);
        assert!(matches!(
            r.read_frame::<Up>(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn decoder_splits_chunks() {
        let mut bytes = Vec::new();
        for p in 0..100u64 {
            encode_into(&Up::Heartbeat(Heartbeat { progress: p }), &mut bytes).unwrap();
        }
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            d.push(chunk);
            while let Some(Up::Heartbeat(h)) = d.next::<Up>().unwrap() {
                got.push(h.progress);
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        d.finish().unwrap();
    }

    #[test]
    fn peek_head_tells_kind_and_size_before_the_payload() {
        let call = Up::ToolCall(ToolCall {
            call_id: 1,
            tool: "t".into(),
            args: crate::Value::Null,
        });
        let bytes = encode(&call).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes[..4]);
        assert_eq!(d.peek_head(), None, "no payload byte yet");
        d.push(&bytes[4..5]);
        assert_eq!(d.peek_head(), Some((bytes.len() - 4, UP_TOOL_CALL_TAG)));
        d.push(&bytes[5..]);
        assert_eq!(d.next::<Up>().unwrap(), Some(call));
        assert_eq!(d.peek_head(), None);
    }

    #[test]
    fn a_large_frame_does_not_keep_its_room() {
        let big = Up::Log(Log {
            level: LogLevel::Info,
            message: "x".repeat(1 << 20),
        });
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&encode(&big).unwrap());
        assert_eq!(d.next::<Up>().unwrap(), Some(big));
        assert!(d.buf.capacity() <= KEEP_CAPACITY, "{}", d.buf.capacity());
    }
}

#[cfg(all(test, feature = "tokio"))]
mod async_tests {
    use super::*;
    use crate::message::{Heartbeat, Up};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_cross_reads_and_a_clean_end_is_none() {
        let (mut w, r) = tokio::io::duplex(7); // smaller than one frame: every frame is split
        let writer = tokio::spawn(async move {
            for p in [1u64, 2, 1 << 40] {
                write_frame_async(&mut w, &Up::Heartbeat(Heartbeat { progress: p }))
                    .await
                    .unwrap();
            }
        });
        let mut reader = AsyncFrameReader::new(r, 1024);
        let mut got = Vec::new();
        while let Some(Up::Heartbeat(h)) = reader.read_frame::<Up>().await.unwrap() {
            got.push(h.progress);
        }
        writer.await.unwrap();
        assert_eq!(got, [1, 2, 1 << 40]);
    }

    #[tokio::test]
    async fn a_huge_length_is_refused_before_its_payload_and_a_cut_frame_is_truncated() {
        let (mut w, r) = tokio::io::duplex(64);
        // Announces 4 GiB and sends nothing more, keeping the stream open: the reader must not
        // wait for the payload.
        w.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let mut reader = AsyncFrameReader::new(r, 1024);
        let e = reader.read_frame::<Up>().await.unwrap_err();
        assert_eq!(e.kind(), "frame_too_large", "{e}");
        drop(w);

        let (mut w, r) = tokio::io::duplex(64);
        let whole = encode(&Up::Heartbeat(Heartbeat { progress: 9 })).unwrap();
        w.write_all(&whole[..whole.len() - 1]).await.unwrap();
        drop(w);
        let mut reader = AsyncFrameReader::new(r, 1024);
        let e = reader.read_frame::<Up>().await.unwrap_err();
        assert_eq!(e.kind(), "truncated_frame", "{e}");
    }
}
