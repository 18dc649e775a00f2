//! Golden byte vectors: the exact bytes of representative frames and values.
//!
//! Each vector is encoded and compared with its hex, decoded from its hex and compared with
//! the message, and looked for in `docs/protocol.md`, so the document cannot drift from the
//! code. A change here is a wire change: it needs a new `PROTOCOL_VERSION`.

use corral_proto::frame::{self, decode_payload, FrameReader};
use corral_proto::{
    AgentError, Cancel, Contract, Done, Down, Failed, FrameError, Heartbeat, Hello, Log, LogLevel,
    Ready, Schema, Shutdown, SideEffects, Task, ToolCall, ToolResult, Up, Value,
};

const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Whole frames (4-byte length + payload) of supervisor → agent messages.
fn down_vectors() -> Vec<(&'static str, Down, &'static str)> {
    vec![
        (
            "Hello",
            Down::Hello(Hello {
                protocol: 1,
                agent_id: "echo".into(),
                run_id: "r1".into(),
                attempt: 1,
                heartbeat_interval_ms: 1000,
                max_frame: 16_777_216,
            }),
            "130000000001046563686f02723101fbe803fc00000001",
        ),
        (
            "Task",
            Down::Task(Task {
                task_id: 1,
                input: Value::map([("msg", Value::from("hi"))]),
                memory: vec![],
            }),
            "0d00000001010701036d73670402686900",
        ),
        (
            "ToolResult Ok",
            Down::ToolResult(ToolResult {
                call_id: 1,
                result: Ok(Value::Int(42)),
            }),
            "050000000201000254",
        ),
        (
            "ToolResult Err",
            Down::ToolResult(ToolResult {
                call_id: 2,
                result: Err(AgentError::new("denied", "not allowed", false)),
            }),
            "170000000202010664656e6965640b6e6f7420616c6c6f77656400",
        ),
        (
            "Cancel",
            Down::Cancel(Cancel { task_id: 1 }),
            "020000000301",
        ),
        (
            "Shutdown",
            Down::Shutdown(Shutdown { grace_ms: 2000 }),
            "0400000004fbd007",
        ),
    ]
}

/// Whole frames of agent → supervisor messages.
fn up_vectors() -> Vec<(&'static str, Up, &'static str)> {
    vec![
        (
            "Ready",
            Up::Ready(Ready {
                protocol: 1,
                contract: Contract::new("echo", "1.0.0")
                    .input(Schema::object().field("msg", Schema::String))
                    .output(Schema::Map(Box::new(Schema::Any)))
                    .tool("search")
                    .side_effects(SideEffects::Idempotent),
            }),
            "210000000001046563686f05312e302e300901036d73670501000800010673656172636801",
        ),
        (
            "Ready minimal",
            Up::Ready(Ready {
                protocol: 1,
                contract: Contract::new("a", "1"),
            }),
            "0a00000000010161013100000000",
        ),
        (
            "Heartbeat",
            Up::Heartbeat(Heartbeat { progress: 5 }),
            "020000000105",
        ),
        (
            "Heartbeat 2^32",
            Up::Heartbeat(Heartbeat {
                progress: 1 << 32,
            }),
            "0a00000001fd0000000001000000",
        ),
        (
            "Log",
            Up::Log(Log {
                level: LogLevel::Info,
                message: "hi".into(),
            }),
            "050000000202026869",
        ),
        (
            "ToolCall",
            Up::ToolCall(ToolCall {
                call_id: 1,
                tool: "search".into(),
                args: Value::map([("q", Value::from("rust"))]),
            }),
            "1300000003010673656172636807010171040472757374",
        ),
        (
            "Done",
            Up::Done(Done {
                task_id: 1,
                output: Value::map([("ok", Value::Bool(true))]),
                memory: vec![],
            }),
            "0a00000004010701026f6b010100",
        ),
        (
            "Failed",
            Up::Failed(Failed {
                task_id: 1,
                error: AgentError::new("invalid_input", "no msg", false),
            }),
            "1800000005010d696e76616c69645f696e707574066e6f206d736700",
        ),
        (
            "Failed protocol_mismatch",
            Up::Failed(Failed {
                task_id: 0,
                error: AgentError::new(
                    "protocol_mismatch",
                    corral_proto::message::version_mismatch(2, 1),
                    false,
                ),
            }),
            "6600000005001170726f746f636f6c5f6d69736d617463685070726f746f636f6c2076657273696f6e206d69736d617463683a2073757065727669736f7220737065616b7320636f7272616c2070726f746f636f6c2076322c206167656e7420737065616b7320763100",
        ),
    ]
}

/// Bare `Value` encodings (no frame header): what appears inside a message.
fn value_vectors() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("Null", Value::Null, "00"),
        ("Bool(true)", Value::Bool(true), "0101"),
        ("Int(0)", Value::Int(0), "0200"),
        ("Int(-1)", Value::Int(-1), "0201"),
        ("Int(1)", Value::Int(1), "0202"),
        ("Int(125)", Value::Int(125), "02fa"),
        ("Int(126)", Value::Int(126), "02fbfc00"),
        ("Int(300)", Value::Int(300), "02fb5802"),
        ("Int(-300)", Value::Int(-300), "02fb5702"),
        ("Int(70000)", Value::Int(70_000), "02fce0220200"),
        (
            "Int(i64::MIN)",
            Value::Int(i64::MIN),
            "02fdffffffffffffffff",
        ),
        ("Float(1.5)", Value::Float(1.5), "03000000000000f83f"),
        ("Float(-0.0)", Value::Float(-0.0), "030000000000000080"),
        ("String(\"hi\")", Value::from("hi"), "04026869"),
        ("String(\"é\")", Value::from("é"), "0402c3a9"),
        (
            "Bytes",
            Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            "0504deadbeef",
        ),
        (
            "List",
            Value::List(vec![Value::Int(1), Value::Null, Value::from("a")]),
            "0603020200040161",
        ),
        (
            "Map",
            Value::map([("b", Value::Bool(false)), ("a", Value::Null)]),
            "070201610001620100",
        ),
    ]
}

/// The vectors are written with optional spaces for readability; the bytes have none.
fn compact(h: &str) -> String {
    h.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn down_frames_match_their_golden_bytes() {
    for (name, msg, golden) in down_vectors() {
        let golden = compact(golden);
        let bytes = frame::encode(&msg).unwrap();
        assert_eq!(hex(&bytes), golden, "encoding of {name}");
        let raw = unhex(&golden);
        let mut r = FrameReader::new(&raw[..]);
        assert_eq!(
            r.read_frame::<Down>().unwrap(),
            Some(msg),
            "decoding {name}"
        );
        assert_eq!(r.read_frame::<Down>().unwrap(), None);
    }
}

#[test]
fn up_frames_match_their_golden_bytes() {
    for (name, msg, golden) in up_vectors() {
        let golden = compact(golden);
        let bytes = frame::encode(&msg).unwrap();
        assert_eq!(hex(&bytes), golden, "encoding of {name}");
        let raw = unhex(&golden);
        let mut r = FrameReader::new(&raw[..]);
        assert_eq!(r.read_frame::<Up>().unwrap(), Some(msg), "decoding {name}");
        assert_eq!(r.read_frame::<Up>().unwrap(), None);
    }
}

#[test]
fn values_match_their_golden_bytes() {
    for (name, v, golden) in value_vectors() {
        let golden = compact(golden);
        let framed = frame::encode(&v).unwrap();
        assert_eq!(hex(&framed[4..]), golden, "encoding of {name}");
        let back: Value = decode_payload(&unhex(&golden)).unwrap();
        match (&back, &v) {
            // -0.0 == 0.0, so compare floats by bits.
            (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{name}"),
            _ => assert_eq!(back, v, "decoding {name}"),
        }
    }
}

#[test]
fn every_golden_vector_appears_in_protocol_md() {
    let doc = std::fs::read_to_string(PROTOCOL_MD)
        .unwrap_or_else(|e| panic!("cannot read {PROTOCOL_MD}: {e}"));
    // Each vector must stand on a line of its own, exactly as the test spells it.
    let lines: Vec<&str> = doc.lines().map(str::trim).collect();
    let mut missing = Vec::new();
    let all = down_vectors()
        .into_iter()
        .map(|(n, _, h)| (n, h))
        .chain(up_vectors().into_iter().map(|(n, _, h)| (n, h)))
        .chain(value_vectors().into_iter().map(|(n, _, h)| (n, h)));
    for (name, golden) in all {
        let golden = compact(golden);
        if !lines.contains(&golden.as_str()) {
            missing.push(format!("{name}: {golden}"));
        }
    }
    assert!(
        missing.is_empty(),
        "golden vectors missing from docs/protocol.md (each on a line of its own):\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Facts about the encoding that docs/protocol.md states, checked against the decoder.

fn down(payload_hex: &str) -> Result<Down, FrameError> {
    decode_payload(&unhex(&compact(payload_hex)))
}

fn up(payload_hex: &str) -> Result<Up, FrameError> {
    decode_payload(&unhex(&compact(payload_hex)))
}

#[test]
fn varint_boundaries() {
    // u64 progress at each width boundary: the shortest form is what an encoder writes.
    let cases: [(u64, &str); 8] = [
        (0, "0100"),
        (250, "01fa"),
        (251, "01fbfb00"),
        (65_535, "01fbffff"),
        (65_536, "01fc00000100"),
        (u32::MAX as u64, "01fcffffffff"),
        (1 << 32, "01fd0000000001000000"),
        (u64::MAX, "01fdffffffffffffffff"),
    ];
    for (progress, golden) in cases {
        let bytes = frame::encode(&Up::Heartbeat(Heartbeat { progress })).unwrap();
        assert_eq!(hex(&bytes[4..]), golden, "progress {progress}");
        assert_eq!(
            up(golden).unwrap(),
            Up::Heartbeat(Heartbeat { progress }),
            "progress {progress}"
        );
    }
}

#[test]
fn decoders_accept_wider_than_needed_varints() {
    // 5 written as 0xFB + u16 or 0xFD + u64 still decodes: readers must not insist on the
    // shortest form (writers always produce it).
    let five = Up::Heartbeat(Heartbeat { progress: 5 });
    assert_eq!(up("01 fb0500").unwrap(), five);
    assert_eq!(up("01 fc05000000").unwrap(), five);
    assert_eq!(up("01 fd0500000000000000").unwrap(), five);
    // The variant index is a varint too.
    assert_eq!(up("fb0100 05").unwrap(), five);
}

#[test]
fn decoders_reject_what_the_document_calls_invalid() {
    // A u32 field (Hello.protocol) may not use the 8-byte form, even for a small value.
    assert!(down("00 fd0100000000000000 00 00 01 00 01").is_err());
    // 0xFE (u128) and 0xFF are never valid integer markers here.
    assert!(up("01 fe").is_err());
    assert!(up("01 ff").is_err());
    // Variant index beyond the enum.
    assert!(up("06").is_err());
    assert!(down("05").is_err());
    // Value tag beyond Map (7).
    assert!(up("0301 00 08").is_err());
    // bool must be 0 or 1: Failed { task_id: 1, error { kind: "", message: "", retryable: 2 } }
    assert!(up("05 01 00 00 02").is_err());
    assert_eq!(
        up("05 01 00 00 01").unwrap(),
        Up::Failed(Failed {
            task_id: 1,
            error: AgentError::new("", "", true)
        })
    );
    // Result tag must be 0 or 1.
    assert!(down("02 01 02 00").is_err());
    // Strings must be UTF-8: Log { level: Info, message: [0xFF] }.
    assert!(up("02 02 01 ff").is_err());
    // LogLevel beyond Error (4).
    assert!(up("02 05 00").is_err());
    // SideEffects beyond Destructive (2): Ready with an otherwise empty contract.
    assert!(up("00 01 00 00 00 00 00 03").is_err());
    assert!(up("00 01 00 00 00 00 00 02").is_ok());
    // Schema tag beyond OneOf (11).
    assert!(up("00 01 00 00 0c 00 00 00").is_err());
    // Trailing bytes after a complete message.
    assert!(matches!(up("0105 00"), Err(FrameError::Decode(_))));
    // A truncated payload.
    assert!(matches!(up("01fb05"), Err(FrameError::Decode(_))));
}

#[test]
fn map_keys_are_written_sorted_and_read_in_any_order() {
    // {"b": false, "a": null} is written a, b.
    let sorted = Value::map([("a", Value::Null), ("b", Value::Bool(false))]);
    assert_eq!(
        hex(&frame::encode(&sorted).unwrap()[4..]),
        "070201610001620100"
    );
    // Written b, a by another implementation: still accepted, and the same map.
    let back: Value = decode_payload(&unhex("070201620100016100")).unwrap();
    assert_eq!(back, sorted);
    // A repeated key: the last one wins.
    let back: Value =
        decode_payload(&unhex("07020161000161 0101".replace(' ', "").as_str())).unwrap();
    assert_eq!(back, Value::map([("a", Value::Bool(true))]));
}

#[test]
fn hello_protocol_is_readable_by_any_version() {
    // Variant 0, first field: an agent of any version can read the offered version from the
    // first bytes of the first frame, whatever follows.
    for (_, msg, golden) in down_vectors() {
        if let Down::Hello(h) = msg {
            let bytes = unhex(&compact(golden));
            assert_eq!(bytes[4], 0x00, "Hello is variant 0");
            assert_eq!(bytes[5] as u32, h.protocol, "protocol is the first field");
        }
    }
}

#[test]
fn version_mismatch_message_names_both_versions() {
    let m = corral_proto::message::version_mismatch(1, 2);
    assert!(m.contains("v1") && m.contains("v2"), "{m}");
}
