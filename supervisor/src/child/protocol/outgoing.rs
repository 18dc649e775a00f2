//! What the supervisor sends to an agent, checked against the `max_frame` both sides agreed
//! on before it is sent.

use corral_proto::frame::{self, FrameError};
use serde::Serialize;

/// What the supervisor sends to an agent, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A call's input (checked before any process exists).
    Input,
    /// The `Task` message (input and notes).
    Task,
}

impl Outgoing {
    fn name(self) -> &'static str {
        match self {
            Outgoing::Input => "input",
            Outgoing::Task => "task",
        }
    }

    fn unencodable(self) -> &'static str {
        match self {
            Outgoing::Input => "sent to an agent",
            Outgoing::Task => "encoded",
        }
    }
}

/// Something the supervisor would send that no agent could take.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutgoingError {
    /// Larger than the `max_frame` the agent was told in `Hello`.
    #[error("the {} is {len} bytes encoded, more than max_frame ({max} bytes)", .what.name())]
    TooLarge {
        /// What it is.
        what: Outgoing,
        /// Its payload length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// Not encodable at all (nesting past the protocol's limit).
    #[error("the {} cannot be {}: {source}", .what.name(), .what.unencodable())]
    Unencodable {
        /// What it is.
        what: Outgoing,
        /// Why.
        source: FrameError,
    },
}

/// `msg` as a frame whose payload is within `max_frame`, the limit both sides agreed on.
pub(crate) fn encode_within<M: Serialize>(
    msg: &M,
    max_frame: u32,
    what: Outgoing,
) -> Result<Vec<u8>, OutgoingError> {
    let bytes = frame::encode(msg).map_err(|source| OutgoingError::Unencodable { what, source })?;
    let len = bytes.len() - 4;
    if len > max_frame as usize {
        return Err(OutgoingError::TooLarge {
            what,
            len,
            max: max_frame,
        });
    }
    Ok(bytes)
}
