//! How a child is made: file descriptors, rlimits, namespaces, cgroups, privileges; and how
//! it is waited for, signalled and reaped.
//!
//! The only room with `unsafe` code (the spawn path), each block with a SAFETY comment. It
//! knows nothing of the protocol, plans or the journal.

pub mod cgroup;
pub mod process;
pub mod spawn;

pub use process::{become_subreaper, kill_group, OrphanReaper, PidFd, Reaped};
pub use spawn::{SpawnError, SpawnSpec, Spawned, Spawner};
