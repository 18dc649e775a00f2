//! # corral-proto: the wire contract between corral and its agents
//!
//! This crate is the one thing both sides of a corral pipe agree on. It holds:
//!
//! - [`frame`]: how a message travels: a `u32` little-endian length, then a bincode payload
//!   (serde, standard configuration). Lengths over the maximum are refused before any allocation.
//! - [`message`]: the messages themselves, [`Down`] (supervisor → agent) and [`Up`]
//!   (agent → supervisor), and the protocol version exchanged in the handshake.
//! - [`value`]: [`Value`], the self-describing payload tree (bincode cannot decode
//!   `serde_json::Value`, so this crate owns its own), with lossless JSON conversion.
//! - [`contract`]: [`Contract`] and [`Schema`]: what an agent declares, and the validation the
//!   supervisor applies to inputs before dispatch and to outputs on receipt.
//!
//! It needs no async runtime; the `tokio` feature adds async frame reading and writing.
//! It must not know anything about processes, plans, tools or storage.
//!
//! ```
//! use corral_proto::{frame, Down, Shutdown};
//! let bytes = frame::encode(&Down::Shutdown(Shutdown { grace_ms: 500 })).unwrap();
//! let mut reader = frame::FrameReader::new(&bytes[..]);
//! let back: Down = reader.read_frame().unwrap().unwrap();
//! assert_eq!(back, Down::Shutdown(Shutdown { grace_ms: 500 }));
//! ```

pub mod beat;
pub mod contract;
pub mod frame;
pub mod message;
pub mod value;

pub use contract::{Contract, Field, ObjectSchema, Schema, SchemaError, SideEffects};
pub use frame::{FrameError, DEFAULT_MAX_FRAME};
pub use message::{
    AgentError, Cancel, Done, Down, Failed, Heartbeat, Hello, Log, LogLevel, Ready, Shutdown, Task,
    ToolCall, ToolResult, Up, PROTOCOL_VERSION,
};
pub use value::{Value, ValueError};
