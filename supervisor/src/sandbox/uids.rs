//! Dynamic users: each live attempt of an agent with `user = "dynamic"` runs as a host uid of
//! its own (and the gid of the same number), taken from `[supervisor] uid_range`, like
//! systemd's `DynamicUser=`. Two agents never share a uid, so even without namespaces they
//! cannot signal, trace or read each other, and none of them owns a host file.
//!
//! A uid is held by an exclusive `flock` on `<lock dir>/<uid>` (the lock dir is
//! `/run/corral/uids`, shared by every supervisor on the host, so two supervisors never hand
//! out the same uid; a supervisor that dies releases its locks with its open files). A lease is
//! released when its attempt has ended: its processes are dead (pid namespace or cgroup kill,
//! else a sweep that kills every process of the uid) and its workspace is gone. A uid that may
//! still own files somewhere is given them back or *retired*: what it left in `writable_paths`
//! is handed to the owner of each such directory (a bounded walk, [`RECLAIM_LIMIT`] entries);
//! when that walk cannot finish, when its workspace is kept, or when it had no IPC namespace
//! (System V objects of it may remain), a `<uid>.retired` marker keeps every supervisor from
//! handing it out again until the lock dir is cleared (at boot, `/run` being a tmpfs).
//!
//! Ids named in `/etc/passwd` or `/etc/group`, and those systemd has handed to a
//! `DynamicUser=` service (its lock files in `/run/systemd/dynamic-uid`), are never handed out.

use nix::fcntl::{Flock, FlockArg};
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Most entries walked in `writable_paths` to give a released uid's files back.
pub const RECLAIM_LIMIT: usize = 100_000;

/// Where uid locks live unless `CORRAL_UID_LOCK_DIR` says otherwise.
pub const LOCK_DIR: &str = "/run/corral/uids";

/// No uid could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum UidError {
    /// The lock directory could not be made or used.
    #[error("uid lock directory {}: {source}", .dir.display())]
    LockDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Every uid of the range is in use or retired.
    #[error("no free uid in uid_range [{lo}, {hi}]: every one is in use by a live attempt or retired (widen uid_range)")]
    Exhausted {
        /// First uid of the range.
        lo: u32,
        /// Last uid of the range.
        hi: u32,
    },
}

/// The dynamic uids of one supervisor: a range, the ids the host already names, and a cursor
/// that hands uids out in turn (so a released uid is the last to be reused).
#[derive(Debug)]
pub struct UidPool {
    lo: u32,
    hi: u32,
    dir: PathBuf,
    named: HashSet<u32>,
    cursor: AtomicU32,
}

impl UidPool {
    /// A pool over `[lo, hi]`.
    pub fn new(lo: u32, hi: u32) -> Arc<UidPool> {
        let dir = std::env::var_os("CORRAL_UID_LOCK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(LOCK_DIR));
        let mut named = HashSet::new();
        for (file, field) in [("/etc/passwd", 2), ("/etc/group", 2)] {
            if let Ok(text) = std::fs::read_to_string(file) {
                named.extend(
                    text.lines()
                        .filter_map(|l| l.split(':').nth(field))
                        .filter_map(|id| id.parse::<u32>().ok()),
                );
            }
        }
        // Start at a point of our own, so concurrent supervisors rarely race for one uid.
        let span = hi - lo + 1;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        Arc::new(UidPool {
            lo,
            hi,
            dir,
            named,
            cursor: AtomicU32::new(start),
        })
    }

    /// The range.
    pub fn range(&self) -> (u32, u32) {
        (self.lo, self.hi)
    }

    fn lock_dir(&self) -> Result<&Path, UidError> {
        use std::os::unix::fs::DirBuilderExt;
        let fail = |source| UidError::LockDir {
            dir: self.dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(fail)?;
        Ok(&self.dir)
    }

    /// Take a free uid.
    pub fn take(self: &Arc<Self>) -> Result<UidLease, UidError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.lock_dir()?.to_path_buf();
        let span = self.hi - self.lo + 1;
        for _ in 0..span {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % span;
            let uid = self.lo + i;
            if self.named.contains(&uid)
                || dir.join(format!("{uid}.retired")).exists()
                || systemd_holds(uid)
            {
                continue;
            }
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join(uid.to_string()))
            {
                Ok(f) => f,
                Err(source) => return Err(UidError::LockDir { dir, source }),
            };
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => {
                    return Err(UidError::LockDir {
                        dir,
                        source: e.into(),
                    })
                }
            };
            // Retired by another supervisor between the check and the lock?
            if dir.join(format!("{uid}.retired")).exists() {
                continue;
            }
            return Ok(UidLease {
                uid,
                dir,
                _lock: lock,
                retire: false,
                sweep: false,
                reclaim: Vec::new(),
            });
        }
        Err(UidError::Exhausted {
            lo: self.lo,
            hi: self.hi,
        })
    }
}

/// Whether systemd has handed `uid` to a `DynamicUser=` service (the default range is
/// systemd's own): it keeps a lock file named by the number in `/run/systemd/dynamic-uid`.
fn systemd_holds(uid: u32) -> bool {
    Path::new("/run/systemd/dynamic-uid")
        .join(uid.to_string())
        .exists()
}

/// One uid, held for one attempt (or one warm stem and the attempt that uses it).
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    dir: PathBuf,
    _lock: Flock<File>,
    retire: bool,
    sweep: bool,
    reclaim: Vec<PathBuf>,
}

impl UidLease {
    /// The uid (also the gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Never hand this uid out again: files of it may remain (kept workspace, `writable_paths`).
    pub fn retire(&mut self) {
        self.retire = true;
    }

    /// Before release, give what this uid owns under `dirs` (writable to the attempt) to the
    /// owner of each directory; retire the uid when that cannot be done.
    pub fn reclaim_on_release(&mut self, dirs: &[PathBuf]) {
        self.reclaim.extend(dirs.iter().cloned());
    }

    /// Give back what the uid owns under `self.reclaim`. `false` when something may remain.
    fn reclaim(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut budget = RECLAIM_LIMIT;
        let mut stack: Vec<(PathBuf, u32, u32)> = Vec::new();
        for d in &self.reclaim {
            match std::fs::symlink_metadata(d) {
                Ok(m) => stack.push((d.clone(), m.uid(), m.gid())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
        }
        while let Some((p, to_uid, to_gid)) = stack.pop() {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                return false;
            };
            if (m.uid() == self.uid || m.gid() == self.uid)
                && std::os::unix::fs::lchown(&p, Some(to_uid), Some(to_gid)).is_err()
            {
                return false;
            }
            if m.is_dir() {
                let Ok(entries) = std::fs::read_dir(&p) else {
                    return false;
                };
                for e in entries {
                    let Ok(e) = e else { return false };
                    stack.push((e.path(), to_uid, to_gid));
                }
            }
        }
        true
    }

    /// Kill every process of this uid before the uid is released (for attempts with neither a
    /// pid namespace nor a cgroup, whose strays nothing else would find).
    pub fn sweep_on_release(&mut self) {
        self.sweep = true;
    }

    /// Kill every process running as this uid: `kill -KILL -1` run as the uid itself reaches
    /// exactly the processes that uid may signal, which are its own.
    fn sweep(&self) {
        for _ in 0..3 {
            let status = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", "-1"])
                .uid(self.uid)
                .gid(self.uid)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            // `kill` dies by its own signal once it has sent it to everyone else.
            match status {
                Ok(s) if s.code().is_none() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(uid = self.uid, "sweeping the uid's processes: {e}");
                    return;
                }
            }
        }
    }
}

use std::os::unix::process::CommandExt;

impl Drop for UidLease {
    fn drop(&mut self) {
        if self.sweep {
            self.sweep();
        }
        if !self.reclaim.is_empty() && !self.reclaim() {
            tracing::warn!(
                uid = self.uid,
                "files of the uid may remain in writable_paths (more than {RECLAIM_LIMIT} entries, or one could not be changed)"
            );
            self.retire = true;
        }
        if self.retire {
            let marker = self.dir.join(format!("{}.retired", self.uid));
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!(uid = self.uid, "retiring the uid: {e}");
            } else {
                tracing::info!(uid = self.uid, "uid retired: files of it may remain");
            }
        }
        // The lock goes with the file.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(lo: u32, hi: u32) -> (tempfile::TempDir, Arc<UidPool>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(UidPool {
            lo,
            hi,
            dir: dir.path().join("uids"),
            named: HashSet::new(),
            cursor: AtomicU32::new(0),
        });
        (dir, p)
    }

    #[test]
    fn live_leases_never_share_a_uid_and_the_range_runs_out() {
        let (_d, p) = pool(70000, 70003);
        let leases: Vec<_> = (0..4).map(|_| p.take().expect("a free uid")).collect();
        let uids: HashSet<u32> = leases.iter().map(UidLease::uid).collect();
        assert_eq!(uids.len(), 4);
        assert!(uids.iter().all(|u| (70000..=70003).contains(u)));
        assert!(matches!(p.take(), Err(UidError::Exhausted { .. })));
    }

    #[test]
    fn a_second_pool_on_the_same_dir_sees_the_locks() {
        let (_d, a) = pool(70010, 70011);
        let b = Arc::new(UidPool {
            lo: 70010,
            hi: 70011,
            dir: a.dir.clone(),
            named: HashSet::new(),
            cursor: AtomicU32::new(0),
        });
        let x = a.take().expect("uid");
        let y = b.take().expect("uid");
        assert_ne!(x.uid(), y.uid());
        assert!(b.take().is_err(), "both uids are held");
        drop(x);
        assert!(b.take().is_ok(), "a released uid is free again");
    }

    #[test]
    fn a_retired_uid_is_not_handed_out_again() {
        let (_d, p) = pool(70020, 70021);
        let mut a = p.take().expect("uid");
        let retired = a.uid();
        a.retire();
        drop(a);
        for _ in 0..4 {
            let l = p.take().expect("the other uid");
            assert_ne!(l.uid(), retired);
        }
    }

    #[test]
    fn files_left_in_writable_paths_go_back_to_the_directory_owner() {
        use std::os::unix::fs::MetadataExt;
        let (d, p) = pool(70040, 70040);
        let out = d.path().join("out");
        std::fs::create_dir_all(out.join("sub")).expect("mkdir");
        std::fs::write(out.join("sub/f"), b"x").expect("write");
        let mut lease = p.take().expect("uid");
        let uid = lease.uid();
        for f in [out.join("sub"), out.join("sub/f")] {
            std::os::unix::fs::lchown(&f, Some(uid), Some(uid)).expect("chown (tests run as root)");
        }
        lease.reclaim_on_release(std::slice::from_ref(&out));
        drop(lease);
        let owner = std::fs::metadata(&out).expect("out").uid();
        for f in [out.join("sub"), out.join("sub/f")] {
            assert_eq!(std::fs::metadata(&f).expect("f").uid(), owner);
        }
        assert!(p.take().is_ok(), "given back, the uid is not retired");
    }

    #[test]
    fn ids_the_host_names_are_skipped() {
        let (_d, p) = pool(70030, 70031);
        let p = Arc::new(UidPool {
            named: HashSet::from([70030]),
            lo: p.lo,
            hi: p.hi,
            dir: p.dir.clone(),
            cursor: AtomicU32::new(0),
        });
        let a = p.take().expect("uid");
        assert_eq!(a.uid(), 70031);
        assert!(p.take().is_err());
    }
}
