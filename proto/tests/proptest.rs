//! Property tests of the wire contract: every message round-trips through every reader, no
//! input panics, hangs or makes a reader allocate what a frame merely announces, and `Value`
//! round-trips through JSON.
//!
//! A counting global allocator (per thread, so parallel tests do not disturb each other)
//! measures the largest single allocation a decode makes.

use corral_proto::frame::{self, decode_payload, FrameDecoder, FrameReader};
use corral_proto::{
    AgentError, Cancel, Contract, Done, Down, Failed, Field, FrameError, Heartbeat, Hello, Log,
    LogLevel, ObjectSchema, Ready, Schema, Shutdown, SideEffects, Task, ToolCall, ToolResult, Up,
    Value, DEFAULT_MAX_FRAME,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;

// ---------------------------------------------------------------------------------------------
// Allocation accounting

struct Counting;

thread_local! {
    /// Largest single allocation (or reallocation target) on this thread while measuring.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f`, returning its result and the largest single allocation it made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (out, LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn text() -> impl Strategy<Value = String> {
    // Any Unicode scalar values, short.
    vec(any::<char>(), 0..12).prop_map(|cs| cs.into_iter().collect())
}

fn finite_or_inf() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan())
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(-f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        1 => Just(f64::MIN_POSITIVE / 4.0),
    ]
}

fn value_with(float: impl Strategy<Value = f64> + 'static) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(250),
            Just(251),
            Just(i64::MIN),
            Just(i64::MAX)
        ]
        .prop_map(Value::Int),
        float.prop_map(Value::Float),
        text().prop_map(Value::String),
        vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::List),
            btree_map(text(), inner, 0..6).prop_map(Value::Map),
        ]
    })
}

/// Values that compare equal to themselves (no NaN anywhere).
fn value() -> impl Strategy<Value = Value> {
    value_with(finite_or_inf())
}

fn schema() -> impl Strategy<Value = Schema> {
    let leaf = prop_oneof![
        Just(Schema::Any),
        Just(Schema::Null),
        Just(Schema::Bool),
        Just(Schema::Int),
        Just(Schema::Float),
        Just(Schema::String),
        Just(Schema::Bytes),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        let field =
            (text(), inner.clone(), any::<bool>()).prop_map(|(name, schema, required)| Field {
                name,
                schema,
                required,
            });
        prop_oneof![
            inner.clone().prop_map(|s| Schema::List(Box::new(s))),
            inner.clone().prop_map(|s| Schema::Map(Box::new(s))),
            (vec(field, 0..4), any::<bool>()).prop_map(|(fields, allow_extra)| {
                Schema::Object(ObjectSchema {
                    fields,
                    allow_extra,
                })
            }),
            inner.clone().prop_map(|s| Schema::Optional(Box::new(s))),
            vec(inner, 0..4).prop_map(Schema::OneOf),
        ]
    })
}

fn side_effects() -> impl Strategy<Value = SideEffects> {
    prop_oneof![
        Just(SideEffects::ReadOnly),
        Just(SideEffects::Idempotent),
        Just(SideEffects::Destructive),
    ]
}

fn contract() -> impl Strategy<Value = Contract> {
    (
        text(),
        text(),
        schema(),
        schema(),
        vec(text(), 0..4),
        side_effects(),
    )
        .prop_map(
            |(name, version, input, output, tools, side_effects)| Contract {
                name,
                version,
                input,
                output,
                tools,
                side_effects,
            },
        )
}

fn agent_error() -> impl Strategy<Value = AgentError> {
    (text(), text(), any::<bool>()).prop_map(|(kind, message, retryable)| AgentError {
        kind,
        message,
        retryable,
    })
}

fn log_level() -> impl Strategy<Value = LogLevel> {
    prop_oneof![
        Just(LogLevel::Trace),
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warn),
        Just(LogLevel::Error),
    ]
}

/// Integers that straddle every varint width boundary, plus arbitrary ones.
fn u64_edges() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        prop_oneof![
            Just(0u64),
            Just(250),
            Just(251),
            Just(65_535),
            Just(65_536),
            Just(u32::MAX as u64),
            Just(u32::MAX as u64 + 1),
            Just(u64::MAX),
        ],
    ]
}

fn u32_edges() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        prop_oneof![
            Just(0u32),
            Just(250),
            Just(251),
            Just(65_535),
            Just(65_536),
            Just(u32::MAX)
        ],
    ]
}

fn down() -> impl Strategy<Value = Down> {
    prop_oneof![
        (
            u32_edges(),
            text(),
            text(),
            u32_edges(),
            u64_edges(),
            u32_edges()
        )
            .prop_map(
                |(protocol, agent_id, run_id, attempt, heartbeat_interval_ms, max_frame)| {
                    Down::Hello(Hello {
                        protocol,
                        agent_id,
                        run_id,
                        attempt,
                        heartbeat_interval_ms,
                        max_frame,
                    })
                }
            ),
        (u64_edges(), value(), vec(value(), 0..3)).prop_map(|(task_id, input, memory)| {
            Down::Task(Task {
                task_id,
                input,
                memory,
            })
        }),
        (
            u64_edges(),
            prop_oneof![value().prop_map(Ok), agent_error().prop_map(Err)]
        )
            .prop_map(|(call_id, result)| Down::ToolResult(ToolResult { call_id, result })),
        u64_edges().prop_map(|task_id| Down::Cancel(Cancel { task_id })),
        u64_edges().prop_map(|grace_ms| Down::Shutdown(Shutdown { grace_ms })),
    ]
}

fn up() -> impl Strategy<Value = Up> {
    prop_oneof![
        (u32_edges(), contract())
            .prop_map(|(protocol, contract)| Up::Ready(Ready { protocol, contract })),
        u64_edges().prop_map(|progress| Up::Heartbeat(Heartbeat { progress })),
        (log_level(), text()).prop_map(|(level, message)| Up::Log(Log { level, message })),
        (u64_edges(), text(), value()).prop_map(|(call_id, tool, args)| Up::ToolCall(ToolCall {
            call_id,
            tool,
            args
        })),
        (u64_edges(), value(), vec(value(), 0..3)).prop_map(|(task_id, output, memory)| {
            Up::Done(Done {
                task_id,
                output,
                memory,
            })
        }),
        (u64_edges(), agent_error())
            .prop_map(|(task_id, error)| Up::Failed(Failed { task_id, error })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Equality that treats two floats as equal when their bits are (so NaN equals NaN).
fn same_bits(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_bits(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_bits(va, vb))
        }
        _ => a == b,
    }
}

/// Equality after JSON: any NaN equals any NaN (JSON keeps "nan", not the payload bits).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) if x.is_nan() || y.is_nan() => x.is_nan() && y.is_nan(),
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
        }
        _ => a == b,
    }
}

/// Like [`same_json`], but finite floats may differ by one unit in the last place.
fn same_within_ulp(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) if x.is_finite() && y.is_finite() => {
            x == y || (x.signum() == y.signum() && x.to_bits().abs_diff(y.to_bits()) <= 1)
        }
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_within_ulp(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_within_ulp(va, vb))
        }
        _ => same_json(a, b),
    }
}

/// Whether `v` contains a map that JSON reads back as something else: a single-key map whose
/// key is `$bytes` or `$float` (the two reserved forms, documented in value.rs).
fn uses_reserved_key(v: &Value) -> bool {
    match v {
        Value::Map(m) => {
            (m.len() == 1 && (m.contains_key("$bytes") || m.contains_key("$float")))
                || m.values().any(uses_reserved_key)
        }
        Value::List(l) => l.iter().any(uses_reserved_key),
        _ => false,
    }
}

/// A reader that hands out its bytes in the given chunk sizes (cycling), to exercise short reads.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Read every frame in `bytes` with a `FrameReader` over short reads.
fn read_all<M: serde::de::DeserializeOwned>(
    bytes: &[u8],
    sizes: Vec<usize>,
) -> Result<Vec<M>, FrameError> {
    let mut r = FrameReader::new(Chunked {
        data: bytes,
        sizes,
        turn: 0,
    });
    let mut out = Vec::new();
    while let Some(m) = r.read_frame()? {
        out.push(m);
    }
    Ok(out)
}

/// Push `bytes` into a `FrameDecoder` in the given chunk sizes (cycling), collecting messages.
fn decode_all<M: serde::de::DeserializeOwned>(
    bytes: &[u8],
    sizes: &[usize],
    max: u32,
) -> Result<Vec<M>, FrameError> {
    let mut d = FrameDecoder::new(max);
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut turn = 0;
    while !rest.is_empty() {
        let n = sizes[turn % sizes.len()].clamp(1, rest.len());
        turn += 1;
        d.push(&rest[..n]);
        rest = &rest[n..];
        d.wanted()?;
        // Each message consumes at least 4 bytes, so this loop ends.
        while let Some(m) = d.next()? {
            out.push(m);
        }
    }
    d.finish()?;
    Ok(out)
}

fn frames<M: serde::Serialize>(msgs: &[M]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for m in msgs {
        frame::encode_into(m, &mut bytes).unwrap();
    }
    bytes
}

/// Frames from arbitrary bytes: raw noise, noise behind a correct length, and valid frames
/// with some bytes overwritten.
fn noisy_frames(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(vec(any::<u8>(), 0..48), 1..4).prop_map(|payloads| {
            let mut out = Vec::new();
            for p in payloads {
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
                out.extend_from_slice(&p);
            }
            out
        }),
        (
            valid,
            vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|(mut bytes, edits)| {
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    // Leave the 4-byte header alone most of the time, so the payload is decoded.
                    if i >= 4 || b % 4 == 0 {
                        bytes[i] = b;
                    }
                }
                bytes
            }),
        (vec(any::<u8>(), 1..64), any::<prop::sample::Index>()).prop_map(|(mut b, cut)| {
            b.truncate(cut.index(b.len()));
            b
        }),
    ]
}

/// Drain every frame out of `bytes` with both readers; return only that neither panicked.
fn drain_both<M: serde::de::DeserializeOwned>(bytes: &[u8], max: u32) {
    let mut r = FrameReader::with_max(bytes, max);
    for _ in 0..=bytes.len() {
        match r.read_frame::<M>() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut d = FrameDecoder::new(max);
    d.push(bytes);
    for _ in 0..=bytes.len() {
        match d.next::<M>() {
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = d.finish();
                break;
            }
            Err(_) => break,
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // No regression files in the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn down_round_trips_through_frame_reader(msgs in vec(down(), 1..4), sizes in vec(1usize..40, 1..6)) {
        let bytes = frames(&msgs);
        let back: Vec<Down> = read_all(&bytes, sizes).unwrap();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn up_round_trips_through_frame_reader(msgs in vec(up(), 1..4), sizes in vec(1usize..40, 1..6)) {
        let bytes = frames(&msgs);
        let back: Vec<Up> = read_all(&bytes, sizes).unwrap();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn down_round_trips_through_decoder_in_any_chunks(msgs in vec(down(), 1..4), sizes in vec(1usize..40, 1..6)) {
        let bytes = frames(&msgs);
        let back: Vec<Down> = decode_all(&bytes, &sizes, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn up_round_trips_through_decoder_in_any_chunks(msgs in vec(up(), 1..4), sizes in vec(1usize..40, 1..6)) {
        let bytes = frames(&msgs);
        let back: Vec<Up> = decode_all(&bytes, &sizes, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn single_frame_is_header_plus_payload(msg in up()) {
        let bytes = frame::encode(&msg).unwrap();
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, bytes.len() - 4);
        prop_assert_eq!(decode_payload::<Up>(&bytes[4..]).unwrap(), msg);
        // A payload with a byte added is refused, and so is one with a byte removed.
        let mut longer = bytes[4..].to_vec();
        longer.push(0);
        prop_assert!(matches!(decode_payload::<Up>(&longer), Err(FrameError::Decode(_))));
        prop_assert!(decode_payload::<Up>(&bytes[4..bytes.len() - 1]).is_err());
    }

    #[test]
    fn value_round_trips_bit_for_bit(v in value_with(any_float())) {
        let bytes = frame::encode(&v).unwrap();
        let back: Value = decode_payload(&bytes[4..]).unwrap();
        prop_assert!(same_bits(&back, &v), "{:?} came back as {:?}", v, back);
    }

    #[test]
    fn value_round_trips_through_json(v in value_with(any_float())) {
        prop_assume!(!uses_reserved_key(&v));
        let back = Value::from_json(&v.to_json());
        prop_assert!(same_json(&back, &v), "{:?} came back as {:?}", v, back);
    }

    #[test]
    fn value_round_trips_through_json_text(v in value_with(any_float())) {
        // Through JSON *text* a float may come back one ULP off: serde_json parses floats
        // exactly only with its `float_roundtrip` feature, which this workspace does not enable.
        // Everything else, kinds included, comes back exactly.
        prop_assume!(!uses_reserved_key(&v));
        let text = serde_json::to_string(&v.to_json()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = Value::from_json(&json);
        prop_assert!(same_within_ulp(&back, &v), "{:?} came back as {:?} via {}", v, back, text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_down(bytes in noisy_frames(vec(down(), 1..3).prop_map(|m| frames(&m))), max in prop_oneof![Just(DEFAULT_MAX_FRAME), 0u32..64]) {
        drain_both::<Down>(&bytes, max);
    }

    #[test]
    fn arbitrary_bytes_never_panic_up(bytes in noisy_frames(vec(up(), 1..3).prop_map(|m| frames(&m))), max in prop_oneof![Just(DEFAULT_MAX_FRAME), 0u32..64]) {
        drain_both::<Up>(&bytes, max);
    }

    #[test]
    fn arbitrary_payloads_never_panic(payload in vec(any::<u8>(), 0..96)) {
        let _ = decode_payload::<Up>(&payload);
        let _ = decode_payload::<Down>(&payload);
        let _ = decode_payload::<Value>(&payload);
        let _ = decode_payload::<Contract>(&payload);
    }

    #[test]
    fn any_schema_accepts_everything(v in value_with(any_float())) {
        prop_assert!(Schema::Any.validate(&v, "input").is_ok());
        prop_assert!(Schema::Optional(Box::new(Schema::Any)).validate(&v, "input").is_ok());
    }

    #[test]
    fn validate_never_panics(s in schema(), v in value_with(any_float())) {
        let _ = s.validate(&v, "input");
        let _ = s.describe();
    }

    #[test]
    fn validate_errors_name_a_path_under_the_root(s in schema(), v in value()) {
        if let Err(e) = s.validate(&v, "output") {
            prop_assert!(e.path.starts_with("output"), "{}", e.path);
        }
    }

    #[test]
    fn header_over_max_is_too_large(max in 0u32..u32::MAX, over in 1u32..=16) {
        let len = max.saturating_add(over);
        prop_assume!(len > max);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        let mut r = FrameReader::with_max(&bytes[..], max);
        let is_too_large = matches!(
            r.read_frame::<Up>(),
            Err(FrameError::TooLarge { len: l, max: m }) if l == len as u64 && m == max
        );
        prop_assert!(is_too_large);
        let mut d = FrameDecoder::new(max);
        d.push(&bytes);
        let wanted_refused = matches!(d.wanted(), Err(FrameError::TooLarge { .. }));
        let next_refused = matches!(d.next::<Up>(), Err(FrameError::TooLarge { .. }));
        prop_assert!(wanted_refused && next_refused);
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized announcements: refused after the header, without allocating

/// A stream that starts with `header` and then yields zeros forever, counting what it hands out.
struct Endless {
    header: [u8; 4],
    handed: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for b in buf.iter_mut() {
            *b = self.header.get(self.handed as usize).copied().unwrap_or(0);
            self.handed += 1;
        }
        Ok(buf.len())
    }
}

fn refuse_after_header(len: u32, max: u32) {
    let mut stream = Endless {
        header: len.to_le_bytes(),
        handed: 0,
    };
    let (res, largest) = largest_alloc(|| {
        let mut r = FrameReader::with_max(&mut stream, max);
        r.read_frame::<Up>()
    });
    match res {
        Err(FrameError::TooLarge { len: l, max: m }) => {
            assert_eq!((l, m), (len as u64, max));
        }
        other => panic!("length {len:#x} with max {max}: expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        stream.handed, 4,
        "only the header may be read for length {len:#x}"
    );
    assert!(
        largest < 1024,
        "refusing length {len:#x} allocated {largest} bytes"
    );
    // The decoder (and the async reader built on it) refuses it before any payload too.
    let mut d = FrameDecoder::new(max);
    d.push(&len.to_le_bytes());
    assert!(matches!(d.wanted(), Err(FrameError::TooLarge { .. })));
    assert!(matches!(d.next::<Up>(), Err(FrameError::TooLarge { .. })));
    assert!(matches!(d.finish(), Err(FrameError::TooLarge { .. })));
}

#[test]
fn four_gib_prefix_is_refused_after_four_bytes() {
    let just_under_4_gib = (0x1_0000_0000u64 - 1) as u32;
    for len in [u32::MAX, just_under_4_gib, u32::MAX - 1, 0x8000_0000] {
        refuse_after_header(len, 1024);
        refuse_after_header(len, DEFAULT_MAX_FRAME);
    }
}

#[test]
fn lengths_just_above_the_max_are_refused() {
    for max in [0, 1, 1024, DEFAULT_MAX_FRAME, u32::MAX - 1] {
        for over in 1..=3u32 {
            if let Some(len) = max.checked_add(over) {
                refuse_after_header(len, max);
            }
        }
    }
}

#[test]
fn length_equal_to_the_max_is_accepted() {
    let bytes = frame::encode(&Up::Heartbeat(Heartbeat { progress: 7 })).unwrap();
    let len = (bytes.len() - 4) as u32;
    let mut r = FrameReader::with_max(&bytes[..], len);
    assert!(r.read_frame::<Up>().unwrap().is_some());
    let mut r = FrameReader::with_max(&bytes[..], len - 1);
    assert!(matches!(
        r.read_frame::<Up>(),
        Err(FrameError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Inner lengths that lie: a small frame announcing a huge string, byte string, list or map

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A bincode varint for `n`, in its widest form (0xFD + u64 LE), as a hostile peer might send.
fn wide_len(n: u64) -> Vec<u8> {
    let mut out = vec![0xFD];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

/// Decode `payload` as `M` through a `FrameReader` with a 1 KiB maximum: it must fail with
/// `Decode`, and no single allocation may exceed `bound` bytes.
fn lying_length<M: serde::de::DeserializeOwned + std::fmt::Debug>(
    what: &str,
    payload: &[u8],
    bound: usize,
) {
    let bytes = framed(payload);
    let (res, largest) =
        largest_alloc(|| FrameReader::with_max(&bytes[..], 1024).read_frame::<M>());
    assert!(
        matches!(res, Err(FrameError::Decode(_))),
        "{what}: expected Decode, got {res:?}"
    );
    assert!(
        largest <= bound,
        "{what}: a {}-byte frame made a {largest}-byte allocation",
        bytes.len()
    );
}

#[test]
fn inner_length_of_2_pow_60_fails_without_allocating() {
    let n = 1u64 << 60;
    let cat = |parts: &[&[u8]]| parts.concat();
    // Strings are refused by bincode's limit before their buffer exists.
    let strings: Vec<(&str, Vec<u8>)> = vec![
        // Down::Hello { protocol: 1, agent_id: <2^60 bytes> .. }
        ("Hello.agent_id", cat(&[&[0x00, 0x01], &wide_len(n)])),
        // Down::Task { task_id: 1, input: Value::String(<2^60 bytes>) .. }
        (
            "Task.input String",
            cat(&[&[0x01, 0x01, 0x04], &wide_len(n)]),
        ),
        // Down::ToolResult { call_id: 1, result: Err(AgentError { kind: <2^60> .. }) }
        (
            "ToolResult.error.kind",
            cat(&[&[0x02, 0x01, 0x01], &wide_len(n)]),
        ),
    ];
    for (what, p) in &strings {
        lying_length::<Down>(what, p, 1024);
    }
    let strings_up: Vec<(&str, Vec<u8>)> = vec![
        // Up::Log { level: Trace, message: <2^60 bytes> }
        ("Log.message", cat(&[&[0x02, 0x00], &wide_len(n)])),
        // Up::Ready { protocol: 1, contract: { name: <2^60 bytes> .. } }
        ("Ready.contract.name", cat(&[&[0x00, 0x01], &wide_len(n)])),
        // Up::ToolCall { call_id: 1, tool: <2^60 bytes> .. }
        ("ToolCall.tool", cat(&[&[0x03, 0x01], &wide_len(n)])),
    ];
    for (what, p) in &strings_up {
        lying_length::<Up>(what, p, 1024);
    }
    // Sequences and maps go through serde, which pre-allocates at most 1 MiB whatever the
    // announcement, then run out of bytes.
    let seqs: Vec<(&str, Vec<u8>)> = vec![
        (
            "Task.input Bytes",
            cat(&[&[0x01, 0x01, 0x05], &wide_len(n)]),
        ),
        ("Task.input List", cat(&[&[0x01, 0x01, 0x06], &wide_len(n)])),
        ("Task.input Map", cat(&[&[0x01, 0x01, 0x07], &wide_len(n)])),
        // Down::Task { task_id: 1, input: Null, memory: <2^60 values> }
        ("Task.memory", cat(&[&[0x01, 0x01, 0x00], &wide_len(n)])),
    ];
    for (what, p) in &seqs {
        lying_length::<Down>(what, p, 1 << 20);
    }
    // Up::Ready { protocol: 1, contract: { name: "", version: "", input: Any, output: Any,
    //   tools: <2^60 strings> } }
    let tools = cat(&[&[0x00, 0x01, 0x00, 0x00, 0x00, 0x00], &wide_len(n)]);
    lying_length::<Up>("Ready.contract.tools", &tools, 1 << 20);
    // Up::Ready { .., input: Schema::OneOf(<2^60 schemas>) }
    let one_of = cat(&[&[0x00, 0x01, 0x00, 0x00, 0x0B], &wide_len(n)]);
    lying_length::<Up>("Ready.contract.input OneOf", &one_of, 1 << 20);
}

#[test]
fn large_string_lengths_in_a_small_frame_fail_without_allocating() {
    // Lengths that fit bincode's overall 1 GiB ceiling but not a 12-byte frame: the decode
    // limit scales with the payload, so none of them gets its buffer.
    for n in [
        1u64 << 16,
        1 << 20,
        (1 << 29) + 7,
        (1 << 30) - 1,
        u32::MAX as u64,
        u64::MAX,
    ] {
        let p = [&[0x02u8, 0x03][..], &wide_len(n)].concat();
        lying_length::<Up>(&format!("Log.message of {n} bytes"), &p, 1024);
    }
}

#[test]
fn biggest_payload_per_limit_step_still_decodes() {
    // The decode limit steps up with the payload size; a payload just at each step boundary,
    // made of the most limit-hungry content (one-byte varints that decode to u64s), decodes.
    for size in [
        1usize << 12,
        (1 << 12) + 1,
        1 << 15,
        (1 << 15) + 1,
        1 << 18,
        (1 << 18) + 1,
    ] {
        // Value::List of Int(0): tag 06, varint count, then 02 00 per item.
        for count in (size / 2).saturating_sub(4)..=size / 2 {
            let v = Value::List(vec![Value::Int(0); count]);
            let bytes = frame::encode(&v).unwrap();
            let back: Value = decode_payload(&bytes[4..]).unwrap();
            assert_eq!(back, v);
        }
        let memory = vec![Value::Int(0); size / 2];
        let msg = Down::Task(Task {
            task_id: 0,
            input: Value::Null,
            memory,
        });
        let bytes = frame::encode(&msg).unwrap();
        assert_eq!(decode_payload::<Down>(&bytes[4..]).unwrap(), msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Nesting: deep input is a decode error, never a stack overflow

fn nested_list(depth: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..depth {
        v = Value::List(vec![v]);
    }
    v
}

fn nested_map(depth: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..depth {
        v = Value::map([("k", v)]);
    }
    v
}

fn nested_schema(depth: usize) -> Schema {
    let mut s = Schema::Any;
    for i in 0..depth {
        s = match i % 5 {
            0 => Schema::List(Box::new(s)),
            1 => Schema::Map(Box::new(s)),
            2 => Schema::Optional(Box::new(s)),
            3 => Schema::OneOf(vec![Schema::Null, s]),
            _ => Schema::object().field("f", s),
        };
    }
    s
}

fn task_with(input: Value) -> Down {
    Down::Task(Task {
        task_id: 1,
        input,
        memory: vec![],
    })
}

fn ready_with(input: Schema) -> Up {
    Up::Ready(Ready {
        protocol: 1,
        contract: Contract::new("deep", "1").input(input),
    })
}

/// Run `f` on a thread with a 2 MiB stack (what tokio and std give their threads).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn nesting_up_to_128_levels_round_trips() {
    on_small_stack(|| {
        for v in [nested_list(128), nested_map(128)] {
            let msg = task_with(v);
            let bytes = frame::encode(&msg).unwrap();
            assert_eq!(decode_payload::<Down>(&bytes[4..]).unwrap(), msg);
        }
        let msg = ready_with(nested_schema(128));
        let bytes = frame::encode(&msg).unwrap();
        assert_eq!(decode_payload::<Up>(&bytes[4..]).unwrap(), msg);
    });
}

#[test]
fn nesting_past_128_levels_is_a_decode_error() {
    on_small_stack(|| {
        // The encoder refuses these (see below), so one more level is spliced into the bytes
        // of 128: after `Task`'s tag and task id come the levels, `06 01` (a one-item list) or
        // `07 01 01 6b` (a one-entry map, key "k") each.
        for (v, level) in [
            (nested_list(128), &[0x06, 0x01][..]),
            (nested_map(128), &[0x07, 0x01, 0x01, b'k'][..]),
        ] {
            let mut payload = frame::encode(&task_with(v)).unwrap()[4..].to_vec();
            payload.splice(2..2, level.iter().copied());
            assert!(matches!(
                decode_payload::<Down>(&payload),
                Err(FrameError::Decode(_))
            ));
        }
        let bytes = frame::encode(&ready_with(nested_schema(129))).unwrap();
        assert!(matches!(
            decode_payload::<Up>(&bytes[4..]),
            Err(FrameError::Decode(_))
        ));
        // The depth count is per decode: a refused frame leaves nothing behind.
        let msg = task_with(nested_list(128));
        let bytes = frame::encode(&msg).unwrap();
        assert_eq!(decode_payload::<Down>(&bytes[4..]).unwrap(), msg);
    });
}

#[test]
fn nesting_past_128_levels_is_refused_when_encoding() {
    on_small_stack(|| {
        for v in [nested_list(129), nested_map(129)] {
            match frame::encode(&task_with(v)) {
                Err(e) => assert!(e.to_string().contains("nesting deeper than 128"), "{e}"),
                Ok(_) => panic!("a value no decoder accepts was encoded"),
            }
        }
        // The count is per encode: a refused value leaves nothing behind.
        assert!(frame::encode(&task_with(nested_list(128))).is_ok());
    });
}

#[test]
fn hostile_nesting_does_not_overflow_the_stack() {
    on_small_stack(|| {
        let depth = 1_000_000;
        // Down::Task { task_id: 1, input: List([List([ ... ])]) }: two bytes a level.
        let mut p = vec![0x01, 0x01];
        for _ in 0..depth {
            p.extend_from_slice(&[0x06, 0x01]);
        }
        lying_length_any::<Down>("deep List", &p);
        // Map: tag 07, one entry, empty key, then the value.
        let mut p = vec![0x01, 0x01];
        for _ in 0..depth {
            p.extend_from_slice(&[0x07, 0x01, 0x00]);
        }
        lying_length_any::<Down>("deep Map", &p);
        // Up::Ready { protocol: 1, contract: { name: "", version: "", input: Optional(Optional(..
        // one byte a level.
        let mut p = vec![0x00, 0x01, 0x00, 0x00];
        p.resize(p.len() + depth, 0x0A);
        lying_length_any::<Up>("deep Optional schema", &p);
        // Schema::List is tag 7, one byte a level as well.
        let mut p = vec![0x00, 0x01, 0x00, 0x00];
        p.resize(p.len() + depth, 0x07);
        lying_length_any::<Up>("deep List schema", &p);
        // Value nested inside a ToolResult's Ok.
        let mut p = vec![0x02, 0x01, 0x00];
        for _ in 0..depth {
            p.extend_from_slice(&[0x06, 0x01]);
        }
        lying_length_any::<Down>("deep ToolResult", &p);
    });
}

fn lying_length_any<M: serde::de::DeserializeOwned + std::fmt::Debug>(what: &str, payload: &[u8]) {
    let bytes = framed(payload);
    let res = FrameReader::new(&bytes[..]).read_frame::<M>();
    assert!(
        matches!(res, Err(FrameError::Decode(_))),
        "{what}: expected Decode, got {res:?}"
    );
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
    d.push(&bytes);
    assert!(matches!(d.next::<M>(), Err(FrameError::Decode(_))));
}

// ---------------------------------------------------------------------------------------------
// JSON mapping specifics

#[test]
fn json_reserved_forms() {
    use serde_json::json;
    assert_eq!(Value::Float(f64::NAN).to_json(), json!({"$float": "nan"}));
    assert_eq!(
        Value::Float(f64::INFINITY).to_json(),
        json!({"$float": "inf"})
    );
    assert_eq!(
        Value::Float(f64::NEG_INFINITY).to_json(),
        json!({"$float": "-inf"})
    );
    assert_eq!(
        Value::Bytes(vec![0, 1, 2, 0xFF]).to_json(),
        json!({"$bytes": "AAEC/w=="})
    );
    assert_eq!(
        serde_json::to_string(&Value::Float(1.0).to_json()).unwrap(),
        "1.0"
    );
    assert_eq!(
        Value::from_json(&json!(1.0)),
        Value::Float(1.0),
        "a JSON number with a fraction stays a float"
    );
    assert_eq!(Value::from_json(&json!(-7)), Value::Int(-7));
    assert_eq!(
        Value::from_json(&json!(u64::MAX)),
        Value::Float(u64::MAX as f64),
        "an integer beyond i64 becomes a float"
    );
    // The reserved keys only apply to a single-key object holding a string that parses.
    assert_eq!(
        Value::from_json(&json!({"$bytes": "not base64!"})),
        Value::map([("$bytes", Value::from("not base64!"))])
    );
    assert_eq!(
        Value::from_json(&json!({"$float": "nan", "x": 1})),
        Value::map([("$float", Value::from("nan")), ("x", Value::Int(1))])
    );
    // ...and a map that looks like one of them is read back as the reserved form.
    assert_eq!(
        Value::from_json(&Value::map([("$bytes", Value::from("AA=="))]).to_json()),
        Value::Bytes(vec![0])
    );
}

// Silence "unused" for the LogLevel/Cancel imports on configurations that skip some strategies.
#[allow(dead_code)]
fn _uses(_: LogLevel, _: Cancel) {}
