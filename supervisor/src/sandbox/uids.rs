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
//! is handed to the owner of each such directory (a bounded walk, [`RECLAIM_LIMIT`] entries),
//! and without an IPC namespace its System V objects and POSIX shared memory and queues are
//! removed (like systemd's `RemoveIPC=`); when either cannot finish, or its workspace is kept,
//! a `<uid>.retired` marker keeps every supervisor from handing it out again until the lock
//! dir is cleared (at boot, `/run` being a tmpfs).
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
                ipc: false,
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
    ipc: bool,
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

    /// Kill every process running as this uid: `kill(-1, SIGKILL)` sent with the uid's own
    /// credentials reaches exactly the processes that uid may signal, which are its own. The
    /// credentials are those of a thread made for it (Linux keeps credentials per thread; the
    /// raw system call changes only the calling thread's, unlike libc's `setuid`), which ends
    /// right after.
    fn sweep(&self) {
        let uid = self.uid;
        let swept = std::thread::Builder::new()
            .name("corral-uid-sweep".into())
            .spawn(move || -> std::io::Result<()> {
                // SAFETY: setresuid/setresgid through raw system calls on this thread only,
                // which does nothing else afterwards but kill and exit.
                unsafe {
                    if libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                        || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    // ESRCH: nothing of the uid was left.
                    if libc::kill(-1, libc::SIGKILL) != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::ESRCH) {
                            return Err(e);
                        }
                    }
                }
                Ok(())
            })
            .map_err(std::io::Error::other)
            .and_then(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
            });
        if let Err(e) = swept {
            tracing::warn!(uid, "sweeping the uid's processes: {e}");
        }
    }

    /// Remove the System V IPC objects (and POSIX shared memory and queues in `/dev/shm`,
    /// `/dev/mqueue`) the uid owns, like systemd's `RemoveIPC=`: for attempts that shared the
    /// host's IPC namespace. `false` when one could not be removed.
    fn remove_ipc(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut ok = true;
        // /proc/sysvipc/{shm,sem,msg}: the id is the second column; the owner's uid is named
        // in the header.
        for (file, kind) in [("shm", 0), ("sem", 1), ("msg", 2)] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/sysvipc/{file}")) else {
                continue;
            };
            let mut lines = text.lines();
            let Some(header) = lines.next() else { continue };
            let cols: Vec<&str> = header.split_whitespace().collect();
            let (Some(id_at), Some(uid_at)) = (
                cols.iter()
                    .position(|c| *c == "shmid" || *c == "semid" || *c == "msqid"),
                cols.iter().position(|c| *c == "uid"),
            ) else {
                continue;
            };
            for l in lines {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(id), Some(owner)) = (
                    f.get(id_at).and_then(|v| v.parse::<i32>().ok()),
                    f.get(uid_at).and_then(|v| v.parse::<u32>().ok()),
                ) else {
                    continue;
                };
                if owner != self.uid {
                    continue;
                }
                // SAFETY: IPC_RMID on an id read from the kernel's list; no pointer is read.
                let rc = unsafe {
                    match kind {
                        0 => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                        1 => libc::semctl(id, 0, libc::IPC_RMID),
                        _ => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    }
                };
                ok &= rc == 0;
            }
        }
        for dir in ["/dev/shm", "/dev/mqueue"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.metadata().is_ok_and(|m| m.uid() == self.uid) {
                    ok &= std::fs::remove_file(e.path()).is_ok();
                }
            }
        }
        ok
    }

    /// Before release, remove what the uid left in the host's IPC namespace.
    pub fn remove_ipc_on_release(&mut self) {
        self.ipc = true;
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if self.sweep {
            self.sweep();
        }
        if self.ipc && !self.remove_ipc() {
            tracing::warn!(
                uid = self.uid,
                "IPC objects of the uid could not be removed"
            );
            self.retire = true;
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
    fn a_sweep_kills_the_uids_processes_and_ipc_objects_go() {
        use std::os::unix::process::CommandExt;
        let (_d, p) = pool(70050, 70050);
        let mut lease = p.take().expect("uid");
        let uid = lease.uid();
        // A stray of the uid, and a System V segment it made (tests run as root).
        let mut stray = std::process::Command::new("sleep")
            .arg("600")
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("spawn a stray as the uid");
        let made = std::process::Command::new("ipcmk")
            .args(["-M", "4096"])
            .uid(uid)
            .gid(uid)
            .output();
        // util-linux's ipcmk, on every machine of this kind.
        let ipc = made.is_ok_and(|o| o.status.success());
        assert!(ipc, "ipcmk made a segment as the uid");
        let owned = || {
            std::fs::read_to_string("/proc/sysvipc/shm")
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(7) == Some(&uid.to_string()))
                .count()
        };
        assert_eq!(owned(), 1, "the segment is there");
        lease.sweep_on_release();
        lease.remove_ipc_on_release();
        drop(lease);
        let status = stray.wait().expect("reap the stray");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "swept");
        assert_eq!(owned(), 0, "the uid's segment was removed");
        assert!(p.take().is_ok(), "the uid is free again, not retired");
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
