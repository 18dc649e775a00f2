//! Cgroup backends (in progress).
