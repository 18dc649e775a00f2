//! How a child is made: file descriptors, rlimits, namespaces, cgroups, privileges.
//!
//! The only room with `unsafe` code (the spawn path). It knows nothing of the protocol.

pub mod cgroup;
