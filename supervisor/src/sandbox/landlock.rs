//! Landlock: confine what an agent may read and write in the file system.
//!
//! The parent builds a ruleset per attempt (`Ruleset::build_with`): read-only system paths, the
//! agent's own binary, `readonly_paths`, and read-write for the workspace and
//! `writable_paths`. The child adds rules for mounts it makes itself (its private `/tmp` and
//! `/proc`, which the parent cannot name) with `add_rule_raw`, then restricts itself with
//! `landlock_restrict_self` (after `no_new_privs`). Raw system calls, because the child may
//! not allocate.
//!
//! Why not the `landlock` crate: it would serve the parent's half (a `RulesetCreated` gives
//! up its fd), but not the child's: the `/proc` rule and the restriction happen after `clone`,
//! where its `add_rule` and `restrict_self` must not run (they take the ruleset by value, an
//! object in memory the `CLONE_VM` child shares with the parent, drop it, by default set
//! `no_new_privs` themselves and build Rust errors), so the raw `landlock_path_beneath_attr`
//! and the two calls would stay here anyway. With both halves on the same few constants, the
//! parent's half is one `landlock_create_ruleset` with the attribute sized to the ABI (the
//! scopes of ABI 6, TCP of ABI 4) and one `landlock_add_rule` per path, the kept system paths
//! opened once per process; the crate's best-effort mode would also hide the "no landlock"
//! answer that `strict` agents are refused on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

/// Rights that apply to files (the rest apply to directories only).
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

/// Read and execute.
pub(crate) const READ: u64 = EXECUTE | READ_FILE | READ_DIR;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    /// ABI 4+: network rights handled (TCP bind and connect).
    handled_access_net: u64,
    /// ABI 6+: IPC scopes (abstract Unix sockets, signals).
    scoped: u64,
}

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Landlock failed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel has no landlock (or it is disabled).
    #[error("landlock is not available on this kernel: {0}")]
    Unavailable(std::io::Error),
    /// A system call failed.
    #[error("landlock: {op} {path}: {source}")]
    Call {
        /// Operation.
        op: &'static str,
        /// Path involved.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// The landlock ABI version of this kernel, or why there is none.
pub fn abi() -> Result<u32, LandlockError> {
    // SAFETY: the version query takes no attribute pointer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(LandlockError::Unavailable(std::io::Error::last_os_error()));
    }
    Ok(v as u32)
}

/// Every file-system right this ABI knows.
fn handled(abi: u32) -> u64 {
    let mut all: u64 = (1 << 13) - 1; // ABI 1: bits 0..=12
    if abi >= 2 {
        all |= 1 << 13; // REFER
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// A ruleset under construction (owned fd).
#[derive(Debug)]
pub(crate) struct Ruleset {
    fd: OwnedFd,
    handled: u64,
}

impl Ruleset {
    /// Create a ruleset handling every right of this kernel's ABI, with rules for `read`
    /// paths (read + execute) and `write` paths (everything); paths that do not exist are
    /// skipped. `static_read` and `static_write` are paths that stay the same for the life of
    /// the process (system paths, `corral-init`): those are opened once and their fds kept, so
    /// a spawn does not look them up again.
    ///
    /// Where the kernel has them, the ruleset also scopes the agent (ABI 6): it can neither
    /// connect to an abstract Unix socket nor signal a process made outside its sandbox (the
    /// supervisor, another agent), whatever namespaces it has. With `deny_tcp` (an agent
    /// without network) TCP bind and connect are denied too (ABI 4), a second layer under the
    /// network namespace.
    pub fn build_with<'a>(
        static_read: impl IntoIterator<Item = &'a Path>,
        static_write: impl IntoIterator<Item = &'a Path>,
        read: impl IntoIterator<Item = &'a Path>,
        write: impl IntoIterator<Item = &'a Path>,
        deny_tcp: bool,
    ) -> Result<Ruleset, LandlockError> {
        static ABI: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
        let abi = match ABI.get_or_init(|| abi().map_err(|e| e.to_string())) {
            Ok(v) => *v,
            Err(_) => abi()?,
        };
        let handled = handled(abi);
        let attr = RulesetAttr {
            handled_access_fs: handled,
            handled_access_net: if deny_tcp && abi >= 4 {
                NET_BIND_TCP | NET_CONNECT_TCP
            } else {
                0
            },
            scoped: if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        // The attribute as long as this ABI knows it (older kernels refuse unknown fields).
        let size = match abi {
            0..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        // SAFETY: attr is a valid ruleset attribute at least `size` bytes long.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size,
                0u32,
            )
        };
        if fd < 0 {
            return Err(LandlockError::Call {
                op: "create ruleset",
                path: String::new(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel returned a new fd that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let rs = Ruleset { fd, handled };
        for p in static_read {
            rs.add_kept(p, READ)?;
        }
        for p in static_write {
            rs.add_kept(p, handled)?;
        }
        for p in read {
            rs.add(p, READ)?;
        }
        for p in write {
            rs.add(p, handled)?;
        }
        Ok(rs)
    }

    /// Allow `access` beneath `path` (skipped when it does not exist).
    pub fn add(&self, path: &Path, access: u64) -> Result<(), LandlockError> {
        match open_path(path)? {
            Some((file, is_dir)) => self.add_fd(path, file.as_raw_fd(), is_dir, access),
            None => Ok(()),
        }
    }

    /// Like [`Ruleset::add`] for a path that stays: its fd is opened once and kept. A kept
    /// regular file replaced since (a new inode at its path, as an upgrade installs
    /// `corral-init`) is opened again: a rule on the old inode would refuse the new file to every
    /// agent until the supervisor restarted. That costs one `stat` a spawn for such a file;
    /// directories (their rules cover whatever is replaced beneath them) and devices are kept
    /// as they are.
    fn add_kept(&self, path: &Path, access: u64) -> Result<(), LandlockError> {
        /// A kept fd, whether it is a directory, and a regular file's device and inode.
        type Entry = Option<(std::fs::File, bool, Option<(u64, u64)>)>;
        type Kept = std::collections::HashMap<std::path::PathBuf, Entry>;
        static KEPT: std::sync::OnceLock<std::sync::Mutex<Kept>> = std::sync::OnceLock::new();
        use std::os::unix::fs::MetadataExt;
        let mut kept = KEPT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stale = match kept.get(path) {
            None => true,
            Some(Some((_, _, Some(id)))) => std::fs::metadata(path)
                .map(|m| (m.dev(), m.ino()))
                .map_or(true, |now| now != *id),
            Some(_) => false,
        };
        if stale {
            let opened = open_path(path)?.map(|(file, is_dir)| {
                let id = file
                    .metadata()
                    .ok()
                    .filter(|m| m.file_type().is_file())
                    .map(|m| (m.dev(), m.ino()));
                (file, is_dir, id)
            });
            kept.insert(path.to_path_buf(), opened);
        }
        match kept.get(path) {
            Some(Some((file, is_dir, _))) => self.add_fd(path, file.as_raw_fd(), *is_dir, access),
            _ => Ok(()),
        }
    }

    fn add_fd(
        &self,
        path: &Path,
        fd: RawFd,
        is_dir: bool,
        access: u64,
    ) -> Result<(), LandlockError> {
        let mut access = access & self.handled;
        if !is_dir {
            access &= FILE_RIGHTS;
        }
        if add_rule_raw(self.fd.as_raw_fd(), fd, access) != 0 {
            return Err(LandlockError::Call {
                op: "add rule for",
                path: path.display().to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The ruleset fd, for the child.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// An O_PATH fd for `path` and whether it is a directory; `None` when it does not exist.
fn open_path(path: &Path) -> Result<Option<(std::fs::File, bool)>, LandlockError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => {
            let is_dir = f.metadata().map(|m| m.is_dir()).unwrap_or(false);
            Ok(Some((f, is_dir)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LandlockError::Call {
            op: "open",
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// `landlock_add_rule` for a path-beneath rule. Async-signal-safe: usable in the spawn child.
/// Returns the raw result (0 on success).
pub(crate) fn add_rule_raw(ruleset: RawFd, parent_fd: RawFd, access: u64) -> libc::c_long {
    let rule = PathBeneath {
        allowed_access: access,
        parent_fd,
    };
    // SAFETY: rule is a valid path-beneath attribute for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            RULE_PATH_BENEATH,
            &rule as *const PathBeneath,
            0u32,
        )
    }
}
