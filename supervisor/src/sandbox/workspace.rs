//! One attempt's workspace, owned by the agent's user: a private directory (mode 0700, owned by
//! the agent's uid) that is its `HOME`, `TMPDIR` and default `cwd`, with a `.tmp` directory
//! inside that becomes its `/tmp` under a mount namespace.
//!
//! The disk quota: under a root supervisor the workspace is a tmpfs of `disk` bytes mounted on
//! that directory, so the workspace and `/tmp` share one bound and a write past it fails with
//! `ENOSPC`. A tmpfs lives in memory: its pages count against the agent's memory cgroup too
//! (`docs/isolation.md`). Without root, or with `keep_workspace` (a kept workspace must outlive
//! its mount), the workspace is a plain directory and the quota is not enforced.
//!
//! The workspace holds the attempt's uid lease ([`UidLease`]): the uid is released only once
//! the workspace is gone, after the attempt's processes.

use std::path::{Path, PathBuf};

use crate::sandbox::uids::UidLease;

/// The workspace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A file-system step failed.
    #[error("workspace {}: {op}: {source}", .path.display())]
    Io {
        /// The step.
        op: &'static str,
        /// The workspace.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A prepared workspace (removed, its tmpfs unmounted, when dropped).
#[derive(Debug)]
pub struct Workspace {
    // Field order is drop order: the mount first, then the directory, then the uid.
    mount: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    uid: Option<UidLease>,
}

impl Workspace {
    /// Make `dir` a workspace: the quota's tmpfs of `disk` bytes when the host lets us mount
    /// (else a plain directory, and the quota is not enforced), mode 0700, and its `.tmp`.
    pub fn make(dir: tempfile::TempDir, disk: Option<u64>) -> Result<Workspace, WorkspaceError> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().to_path_buf();
        let io = |op: &'static str| {
            let path = path.clone();
            move |source: std::io::Error| WorkspaceError::Io { op, path, source }
        };
        let mut ws = Workspace {
            mount: None,
            dir: Some(dir),
            uid: None,
        };
        if let (Some(bytes), true) = (disk, nix::unistd::geteuid().is_root()) {
            // One inode per 16 KiB of quota, at least 1024: files cannot run the host's memory
            // out through inodes either.
            let inodes = (bytes / 16384).max(1024);
            let data = format!("size={bytes},nr_inodes={inodes},mode=0700");
            nix::mount::mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(data.as_str()),
            )
            .map_err(|e| io("mount its tmpfs")(e.into()))?;
            ws.mount = Some(path.clone());
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod 0700"))?;
        let tmp = path.join(".tmp");
        std::fs::create_dir(&tmp).map_err(io("create .tmp"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod .tmp"))?;
        Ok(ws)
    }

    /// Give the workspace (and its `.tmp`) to the attempt's user, and hold its uid lease.
    pub fn assign(
        &mut self,
        owner: Option<(u32, u32)>,
        uid: Option<UidLease>,
    ) -> Result<(), WorkspaceError> {
        let path = self.path().to_path_buf();
        if let Some((u, g)) = owner {
            for p in [path.clone(), path.join(".tmp")] {
                std::os::unix::fs::lchown(&p, Some(u), Some(g)).map_err(|source| {
                    WorkspaceError::Io {
                        op: "chown",
                        path: p.clone(),
                        source,
                    }
                })?;
            }
        }
        self.uid = uid;
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// What becomes the agent's `/tmp`.
    pub fn tmp(&self) -> PathBuf {
        self.path().join(".tmp")
    }

    /// Whether the quota is used up (less than 1/64 of its blocks, or of its inodes, left).
    pub fn is_full(&self) -> bool {
        let Some(m) = &self.mount else {
            return false;
        };
        match nix::sys::statvfs::statvfs(m) {
            Ok(s) => {
                let low = |free: u64, total: u64| total > 0 && free.saturating_mul(64) < total;
                low(s.blocks_available(), s.blocks()) || low(s.files_available(), s.files())
            }
            Err(_) => false,
        }
    }

    /// The attempt's uid lease, if it has one.
    pub fn uid_mut(&mut self) -> Option<&mut UidLease> {
        self.uid.as_mut()
    }

    /// Keep the directory after the attempt (its uid is retired: files of it remain).
    pub fn keep(mut self) -> PathBuf {
        if let Some(u) = self.uid.as_mut() {
            u.retire();
        }
        match self.dir.take() {
            Some(d) => d.keep(),
            None => PathBuf::new(),
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %m.display(), "unmount workspace: {e}");
            }
        }
        drop(self.dir.take());
        drop(self.uid.take());
    }
}
