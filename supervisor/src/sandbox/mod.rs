//! How a child is made: file descriptors, rlimits, namespaces, cgroups, privileges; and how
//! it is waited for, signalled and reaped.
//!
//! The only room with `unsafe` code (the spawn path), each block with a SAFETY comment. It
//! knows nothing of the protocol, plans or the journal.

pub mod cgroup;
pub(crate) mod owner;
pub mod process;
pub mod rootfs;
pub mod spawn;
pub mod uids;
pub mod workspace;

pub use process::{
    become_subreaper, decode_wait_status, kill_group, reap_adopted, PidFd, Reaped, WaitEnd,
};
pub use spawn::{SpawnError, SpawnSpec, Spawned, Spawner};
pub mod landlock;
pub mod netns;
pub mod netpool;
pub mod seccomp;

use std::path::PathBuf;
use std::sync::OnceLock;

/// Where `corral-init` is: `$CORRAL_INIT`, else next to the running executable (or one
/// directory up, for test binaries in `target/*/deps`), else on `PATH`.
pub fn init_path() -> Option<&'static PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(p) = std::env::var_os("CORRAL_INIT") {
            return Some(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe() {
            let mut dir = exe.parent().map(PathBuf::from);
            for _ in 0..2 {
                if let Some(d) = &dir {
                    let cand = d.join("corral-init");
                    if cand.is_file() {
                        return Some(cand);
                    }
                    dir = d.parent().map(PathBuf::from);
                }
            }
        }
        spawn::resolve_program(std::path::Path::new("corral-init")).ok()
    })
    .as_ref()
}
pub mod pool;
