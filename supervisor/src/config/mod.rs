//! corral.toml (in progress).
