//! The daemon's control socket: one small request/response protocol over a Unix socket, the
//! check of who is asking, and the client the `corral` verbs use.
//!
//! The wire is the agents' framing (`corral_proto::frame`: a `u32` length, then a bincode
//! payload), with [`Request`]s up and [`Response`]s down. JSON documents (agent lists, run
//! results) travel as JSON text inside the frames (bincode cannot carry self-describing
//! values). A request is one frame of at most [`MAX_REQUEST`] bytes; the answer is one or
//! more frames, the last one final (see [`Response::is_final`]): streams (`logs -f`,
//! `events -f`, `submit --wait`) send lines or an acceptance first.
//!
//! Who may ask: every connection's peer is read with `SO_PEERCRED` (uid, gid, pid) and checked
//! against `[supervisor] admins` (users, and groups by the peer's primary and supplementary
//! groups); root and the daemon's own uid always may. A refusal is answered with the error
//! kind `denied` and logged with the peer's uid and pid.
//!
//! - `proto`: the messages.
//! - `server`: the listener, the peer check, the bounds (connections, request size, time to
//!   send the request), and the [`Handler`] the daemon implements.
//! - `client`: connect, ask, read the answers.
//! - `approvals`: the [`Approvals`] seam through which `corral approvals/approve/deny` reach
//!   the tool broker's pending `approve = "ask"` calls.

mod approvals;
mod client;
mod proto;
mod server;

pub use approvals::{Approvals, NoApprovals, PendingApproval};
pub use client::{Client, ControlError};
pub use proto::{Request, Response, MAX_REQUEST, MAX_RESPONSE};
pub use server::{bind, serve, Handler, Peer, Replies};
