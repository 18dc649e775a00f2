//! The file system an agent sees, built for it like bubblewrap or nsjail do: in its own mount
//! namespace, a minimal root on a small read-only tmpfs (`pivot_root`), holding only what was
//! asked for, each at its host path:
//!
//! - read-only system paths (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc` with its secrets such as
//!   `shadow` masked, `/sys/devices/system/cpu`), its program, `corral-init`, the files its
//!   arguments name, its `cwd` and `readonly_paths`;
//! - read-write: its workspace, `writable_paths`, and a private `/tmp` (the workspace's `.tmp`
//!   directory, so both share the `disk` quota);
//! - a minimal `/dev` (`null`, `zero`, `full`, `random`, `urandom`, `tty`, and the `fd`/`std*`
//!   links), and a `/proc` of its pid namespace (mounted with `hidepid=2`: processes of other
//!   uids, such as its `corral-init`, are invisible), with `/proc/sys`, `/proc/sysrq-trigger`
//!   and the like read-only.
//!
//! Nothing else: no host `/run`, no `/home`, no socket files. Every mount is `nosuid` and
//! `nodev` (the device binds alone keep devices), read-only ones through `mount_setattr`
//! applied recursively.
//!
//! The plan (`RootPlan`) is made in the parent and compiled into `MountOps`: flat steps over
//! C strings that the spawn child runs with raw system calls only (it may not allocate). The
//! sequence follows bubblewrap's: a tmpfs base on `/tmp`, a first `pivot_root` into it with the
//! host tree at `/oldroot` (sources are read from there, so nothing mounted for the agent can
//! hide one), the new root assembled at `/newroot` and remounted read-only, the host tree
//! detached, and a second `pivot_root` into the new root.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Read-only system paths every agent gets (those missing on the host are skipped; symbolic
/// links such as a merged `/lib -> usr/lib` are made again as links).
pub const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc",
    "/sys/devices/system/cpu",
];

/// Files of `/etc` hidden from every agent (an unreadable device node is mounted over them).
pub(crate) const MASKED: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
];

/// Parts of `/proc` made read-only (as Docker does): files there are owned by root and guarded
/// by their mode alone, so a root agent without landlock could otherwise write kernel settings
/// of the whole host (`/proc/sys/kernel/core_pattern`, `/proc/sysrq-trigger`, …).
pub(crate) const PROC_READ_ONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// Device nodes of the agent's `/dev`.
pub(crate) const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// How a host path appears in the agent's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    /// Read-only, `nosuid,nodev`.
    ReadOnly,
    /// Writable, `nosuid,nodev`.
    ReadWrite,
}

/// What the agent's root holds, made in the parent.
#[derive(Debug, Default, Clone)]
pub(crate) struct RootPlan {
    binds: Vec<(PathBuf, Access)>,
    tmp: Option<PathBuf>,
    proc_own: bool,
}

impl RootPlan {
    /// The system paths, `/dev` and the masks; add the agent's own paths next.
    pub fn new() -> RootPlan {
        let mut p = RootPlan::default();
        for s in SYSTEM_PATHS {
            p.binds.push((PathBuf::from(s), Access::ReadOnly));
        }
        p
    }

    /// Show `path` (file or directory) read-only at the same path.
    pub fn read_only(&mut self, path: &Path) -> &mut Self {
        self.binds.push((path.to_path_buf(), Access::ReadOnly));
        self
    }

    /// Show `path` writable at the same path.
    pub fn writable(&mut self, path: &Path) -> &mut Self {
        self.binds.push((path.to_path_buf(), Access::ReadWrite));
        self
    }

    /// The agent's `/tmp` is this host directory.
    pub fn tmp(&mut self, dir: &Path) -> &mut Self {
        self.tmp = Some(dir.to_path_buf());
        self
    }

    /// Mount a `/proc` of the agent's own pid namespace (else the host's is bound).
    pub fn own_proc(&mut self, on: bool) -> &mut Self {
        self.proc_own = on;
        self
    }

    /// The steps for the spawn child. Paths missing on the host are left out; a path given
    /// twice keeps its most permissive access.
    pub fn compile(&self) -> Result<MountOps, RootError> {
        self.compile_with(false)
    }

    /// Like [`RootPlan::compile`], for a root made ahead of its process
    /// ([`build_detached`]): a `/proc` of the agent's own pid namespace cannot be mounted
    /// before that namespace exists, so it is left to [`MountOps::join`].
    pub fn compile_ahead(&self) -> Result<MountOps, RootError> {
        self.compile_with(true)
    }

    fn compile_with(&self, ahead: bool) -> Result<MountOps, RootError> {
        let mut b = Builder::default();
        b.push(Op::MountTmpfs {
            target: c(BASE)?,
            data: c("mode=0755,size=64k,nr_inodes=64")?,
        });
        b.push(Op::Mkdir(c(NEWROOT)?));
        b.push(Op::Mkdir(c(OLDROOT)?));
        b.push(Op::PivotIn);
        b.push(Op::MountTmpfs {
            target: c(NEWROOT_ABS)?,
            data: c("mode=0755,size=1m,nr_inodes=4096")?,
        });
        // One entry per path: the most permissive access wins.
        let mut binds: Vec<(PathBuf, Access)> = Vec::new();
        for (p, a) in &self.binds {
            match binds.iter_mut().find(|(q, _)| q == p) {
                Some(e) => e.1 = e.1.max(*a),
                None => binds.push((p.clone(), *a)),
            }
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (p, a) in binds {
            if !p.is_absolute() {
                continue;
            }
            entries.push(Entry::Bind(p.clone(), p, a));
        }
        if let Some(t) = &self.tmp {
            entries.push(Entry::Bind(
                t.clone(),
                PathBuf::from("/tmp"),
                Access::ReadWrite,
            ));
        }
        entries.push(Entry::Dev);
        entries.push(Entry::Proc);
        // Parents before what they contain.
        entries.sort_by_key(|e| e.dst().components().count());
        for e in &entries {
            match e {
                Entry::Bind(src, dst, a) => b.bind(src, dst, *a)?,
                Entry::Dev => b.dev()?,
                Entry::Proc if ahead && self.proc_own => {
                    b.push(Op::Mkdir(b.dst(Path::new("/proc"))?));
                    b.made.push(PathBuf::from("/proc"));
                }
                Entry::Proc => b.proc(self.proc_own)?,
            }
        }
        for m in MASKED {
            let m = Path::new(m);
            if m.exists() && b.bound.iter().any(|d| m.starts_with(d)) {
                b.push(Op::Mask { target: b.dst(m)? });
            }
        }
        b.push(Op::RemountRootReadOnly);
        b.push(Op::PivotOut);
        Ok(MountOps {
            ops: b.ops,
            described: b.described,
            failed_at: 0,
        })
    }
}

enum Entry {
    Bind(PathBuf, PathBuf, Access),
    Dev,
    Proc,
}

impl Entry {
    fn dst(&self) -> &Path {
        match self {
            Entry::Bind(_, d, _) => d,
            Entry::Dev => Path::new("/dev"),
            Entry::Proc => Path::new("/proc"),
        }
    }
}

/// The plan cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootError {
    /// A path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// A root made ahead could not be built.
    #[error("building a root ahead: {step}: {source}")]
    Build {
        /// The step that failed.
        step: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A host path could not be examined.
    #[error("{}: {source}", .path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

const BASE: &str = "/tmp";
const NEWROOT: &str = "/tmp/newroot";
const OLDROOT: &str = "/tmp/oldroot";
const NEWROOT_ABS: &str = "/newroot";
const OLDROOT_ABS: &str = "/oldroot";

fn c(s: &str) -> Result<CString, RootError> {
    CString::new(s).map_err(|_| RootError::Nul(s.to_string()))
}

fn cp(p: &Path) -> Result<CString, RootError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| RootError::Nul(p.display().to_string()))
}

/// One step of the child.
#[derive(Debug)]
enum Op {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    MountTmpfs {
        target: CString,
        data: CString,
    },
    /// Bind `src` on `dst` (recursively), then set `nosuid,nodev` (and `rdonly`) on the whole
    /// tree; `dev` keeps devices usable.
    Bind {
        src: CString,
        dst: CString,
        rdonly: bool,
        dev: bool,
    },
    MountProc(CString),
    /// Mount an unreadable `nodev` device node over a file.
    Mask {
        target: CString,
    },
    PivotIn,
    RemountRootReadOnly,
    PivotOut,
    /// Enter a mount namespace whose root was made ahead ([`build_detached`]).
    JoinNs(RawFd),
}

#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    described: Vec<String>,
    /// Directories of the new root already there (made, or bound from the host).
    made: Vec<PathBuf>,
    /// Host directories bound at their own path: what lies beneath exists already.
    bound: Vec<PathBuf>,
}

impl Builder {
    fn push(&mut self, op: Op) {
        self.described.push(match &op {
            Op::Mkdir(p) => format!("mkdir {p:?}"),
            Op::Touch(p) => format!("create mount point {p:?}"),
            Op::Symlink { target, link } => format!("symlink {link:?} -> {target:?}"),
            Op::MountTmpfs { target, .. } => format!("mount tmpfs on {target:?}"),
            Op::Bind { src, dst, .. } => format!("bind {src:?} on {dst:?}"),
            Op::MountProc(p) => format!("mount proc on {p:?}"),
            Op::Mask { target } => format!("mask {target:?}"),
            Op::PivotIn => "pivot_root into the staging tmpfs".into(),
            Op::RemountRootReadOnly => "remount the new root read-only".into(),
            Op::PivotOut => "pivot_root into the new root".into(),
            Op::JoinNs(_) => "enter the root made ahead (setns)".into(),
        });
        self.ops.push(op);
    }

    fn dst(&self, p: &Path) -> Result<CString, RootError> {
        let mut s = NEWROOT_ABS.as_bytes().to_vec();
        s.extend_from_slice(p.as_os_str().as_bytes());
        CString::new(s).map_err(|_| RootError::Nul(p.display().to_string()))
    }

    fn src(&self, p: &Path) -> Result<CString, RootError> {
        let mut s = OLDROOT_ABS.as_bytes().to_vec();
        s.extend_from_slice(p.as_os_str().as_bytes());
        CString::new(s).map_err(|_| RootError::Nul(p.display().to_string()))
    }

    /// Make the directories leading to `dst` (not `dst` itself).
    fn parents(&mut self, dst: &Path) -> Result<(), RootError> {
        let mut chain: Vec<&Path> = dst.ancestors().skip(1).collect();
        chain.reverse();
        for a in chain {
            if a == Path::new("/") || self.made.iter().any(|m| m == a) {
                continue;
            }
            // Inside a bound host directory the path exists already (binds keep host paths).
            if !self.bound.iter().any(|m| a.starts_with(m)) {
                self.push(Op::Mkdir(self.dst(a)?));
            }
            self.made.push(a.to_path_buf());
        }
        Ok(())
    }

    fn bind(&mut self, src: &Path, dst: &Path, a: Access) -> Result<(), RootError> {
        let meta = match std::fs::symlink_metadata(src) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(RootError::Stat {
                    path: src.to_path_buf(),
                    source,
                })
            }
        };
        self.parents(dst)?;
        if meta.file_type().is_symlink() && src == dst && src.parent() == Some(Path::new("/")) {
            // A top-level link (merged /usr): the same link in the new root.
            let target = std::fs::read_link(src).map_err(|source| RootError::Stat {
                path: src.to_path_buf(),
                source,
            })?;
            let link = self.dst(dst)?;
            self.push(Op::Symlink {
                target: cp(&target)?,
                link,
            });
            return Ok(());
        }
        let is_dir = std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(false);
        let inside_bind = self.bound.iter().any(|m| dst.starts_with(m) && m != dst);
        let target = self.dst(dst)?;
        if !inside_bind || dst != src {
            if is_dir {
                self.push(Op::Mkdir(self.dst(dst)?));
            } else {
                self.push(Op::Touch(self.dst(dst)?));
            }
        }
        self.push(Op::Bind {
            src: self.src(src)?,
            dst: target,
            rdonly: a == Access::ReadOnly,
            dev: false,
        });
        if is_dir {
            self.made.push(dst.to_path_buf());
            if src == dst {
                self.bound.push(dst.to_path_buf());
            }
        }
        Ok(())
    }

    fn dev(&mut self) -> Result<(), RootError> {
        let dev = Path::new("/dev");
        self.push(Op::Mkdir(self.dst(dev)?));
        self.push(Op::MountTmpfs {
            target: self.dst(dev)?,
            data: c("mode=0755,size=64k,nr_inodes=64")?,
        });
        self.made.push(dev.to_path_buf());
        for d in DEVICES {
            let d = Path::new(d);
            if !d.exists() {
                continue;
            }
            self.push(Op::Touch(self.dst(d)?));
            self.push(Op::Bind {
                src: self.src(d)?,
                dst: self.dst(d)?,
                rdonly: false,
                dev: true,
            });
        }
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            self.push(Op::Symlink {
                target: c(target)?,
                link: self.dst(Path::new(link))?,
            });
        }
        Ok(())
    }

    fn proc(&mut self, own: bool) -> Result<(), RootError> {
        let p = Path::new("/proc");
        self.push(Op::Mkdir(self.dst(p)?));
        if own {
            self.push(Op::MountProc(self.dst(p)?));
        } else {
            self.push(Op::Bind {
                src: self.src(p)?,
                dst: self.dst(p)?,
                rdonly: false,
                dev: false,
            });
        }
        self.made.push(p.to_path_buf());
        for ro in PROC_READ_ONLY {
            let ro = Path::new(ro);
            if ro.exists() {
                let at = self.dst(ro)?;
                self.push(Op::Bind {
                    src: at.clone(),
                    dst: at,
                    rdonly: true,
                    dev: false,
                });
            }
        }
        Ok(())
    }
}

mod mount;
#[cfg(test)]
mod tests;

pub(crate) use mount::{build_detached, MountOps};
