//! The compiled steps of a root and the raw system calls that run them (in the spawn child,
//! or on a thread of its own for a root made ahead).

use super::*;

/// The compiled steps, run by the spawn child with [`MountOps::apply`].
#[derive(Debug, Default)]
pub(crate) struct MountOps {
    pub(super) ops: Vec<Op>,
    pub(super) described: Vec<String>,
    /// 1-based index of the step that failed (set by the child).
    pub(super) failed_at: usize,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

impl MountOps {
    /// The steps for a spawn child entering a root made ahead (`ns`, a mount namespace fd from
    /// [`build_detached`], kept open by the caller until the spawn is done): `setns`, then, with
    /// `own_proc`, the `/proc` of its pid namespace and its read-only parts.
    pub fn join(ns: RawFd, own_proc: bool) -> Result<MountOps, RootError> {
        let mut b = Builder::default();
        b.push(Op::JoinNs(ns));
        if own_proc {
            b.push(Op::MountProc(c("/proc")?));
            for ro in PROC_READ_ONLY {
                if Path::new(ro).exists() {
                    b.push(Op::Bind {
                        src: c(ro)?,
                        dst: c(ro)?,
                        rdonly: true,
                        dev: false,
                    });
                }
            }
        }
        Ok(MountOps {
            ops: b.ops,
            described: b.described,
            failed_at: 0,
        })
    }

    /// What the step that failed was doing, after a failed [`MountOps::apply`].
    pub fn failed_step(&self) -> Option<&str> {
        self.described
            .get(self.failed_at.checked_sub(1)?)
            .map(String::as_str)
    }

    /// Run every step. On failure returns -1 with `errno` set and the step kept for
    /// [`MountOps::failed_step`].
    ///
    /// # Safety
    /// Raw system calls only, over strings made beforehand: callable in the spawn child
    /// between `clone` and `execve`. The caller must be in a mount namespace of its own.
    pub unsafe fn apply(&mut self) -> libc::c_int {
        let none = std::ptr::null::<libc::c_char>();
        // Nothing we do may propagate to the host (a root made ahead is private already).
        let joining = matches!(self.ops.first(), Some(Op::JoinNs(_)));
        if !joining
            && libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
        {
            self.failed_at = 1;
            return -1;
        }
        for i in 0..self.ops.len() {
            let rc = match &self.ops[i] {
                Op::Mkdir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        -1
                    } else {
                        0
                    }
                }
                Op::Touch(p) => {
                    let fd = libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o444,
                    );
                    if fd < 0 {
                        // A host file already there (inside a bound directory) will do.
                        if *libc::__errno_location() == libc::EROFS
                            || *libc::__errno_location() == libc::EACCES
                        {
                            let mut st: libc::stat = std::mem::zeroed();
                            libc::stat(p.as_ptr(), &mut st)
                        } else {
                            -1
                        }
                    } else {
                        libc::close(fd)
                    }
                }
                Op::Symlink { target, link } => {
                    if libc::symlink(target.as_ptr(), link.as_ptr()) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        -1
                    } else {
                        0
                    }
                }
                Op::MountTmpfs { target, data } => libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    data.as_ptr().cast(),
                ),
                Op::Bind {
                    src,
                    dst,
                    rdonly,
                    dev,
                } => bind(src, dst, *rdonly, *dev),
                Op::MountProc(p) => libc::mount(
                    c"proc".as_ptr(),
                    p.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"hidepid=2".as_ptr().cast(),
                ),
                Op::Mask { target } => bind(c"/oldroot/dev/null", target, true, false),
                Op::PivotIn => {
                    if libc::syscall(libc::SYS_pivot_root, c"/tmp".as_ptr(), OLDROOT_C.as_ptr())
                        != 0
                    {
                        -1
                    } else {
                        libc::chdir(c"/".as_ptr())
                    }
                }
                Op::RemountRootReadOnly => libc::mount(
                    none,
                    c"/newroot".as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    std::ptr::null(),
                ),
                Op::PivotOut => pivot_out(),
                Op::JoinNs(fd) => {
                    if libc::setns(*fd, libc::CLONE_NEWNS) != 0 {
                        -1
                    } else {
                        libc::chdir(c"/".as_ptr())
                    }
                }
            };
            if rc != 0 {
                self.failed_at = i + 1;
                return -1;
            }
        }
        0
    }
}

/// Build a root ahead of its process: on a thread of its own (which leaves the process's mount
/// namespace and file-system context for a new mount namespace), run `ops` (from
/// [`RootPlan::compile_ahead`]) and return that namespace's fd; a spawn child joins it with
/// [`MountOps::join`]. The thread ends after; nothing else ever enters the namespace.
pub(crate) fn build_detached(mut ops: MountOps) -> Result<OwnedFd, RootError> {
    let fail = |step: &str| RootError::Build {
        step: step.to_string(),
        source: std::io::Error::last_os_error(),
    };
    std::thread::Builder::new()
        .name("corral-root".into())
        .spawn(move || -> Result<OwnedFd, RootError> {
            // SAFETY: raw system calls on this thread's own context: it unshares its
            // file-system context and mount namespace first, so the pivots and mounts of `ops`
            // change nothing the rest of the process sees; the fds opened here are owned below.
            unsafe {
                let procfd = libc::open(
                    c"/proc".as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                if procfd < 0 {
                    return Err(fail("open /proc"));
                }
                let procfd = OwnedFd::from_raw_fd(procfd);
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) != 0 {
                    return Err(fail("unshare(CLONE_NEWNS | CLONE_FS)"));
                }
                if ops.apply() != 0 {
                    let step = ops.failed_step().unwrap_or("a step").to_string();
                    return Err(fail(&step));
                }
                let ns = libc::openat(
                    std::os::fd::AsRawFd::as_raw_fd(&procfd),
                    c"thread-self/ns/mnt".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                if ns < 0 {
                    return Err(fail("open the new mount namespace"));
                }
                Ok(OwnedFd::from_raw_fd(ns))
            }
        })
        .map_err(|source| RootError::Build {
            step: "start a thread".into(),
            source,
        })?
        .join()
        .map_err(|_| RootError::Build {
            step: "the thread panicked".into(),
            source: std::io::Error::other("panic"),
        })?
}

const OLDROOT_C: &std::ffi::CStr = c"/tmp/oldroot";

/// Bind `src` on `dst` and set its flags on the whole bound tree.
///
/// # Safety
/// Raw system calls only.
unsafe fn bind(src: &std::ffi::CStr, dst: &std::ffi::CStr, rdonly: bool, dev: bool) -> i32 {
    let none = std::ptr::null::<libc::c_char>();
    if libc::mount(
        src.as_ptr(),
        dst.as_ptr(),
        none,
        libc::MS_BIND | libc::MS_REC,
        std::ptr::null(),
    ) != 0
    {
        return -1;
    }
    let mut set = MOUNT_ATTR_NOSUID;
    if !dev {
        set |= MOUNT_ATTR_NODEV;
    }
    if rdonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: if rdonly { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let rc = libc::syscall(
        libc::SYS_mount_setattr,
        libc::AT_FDCWD,
        dst.as_ptr(),
        AT_RECURSIVE,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    );
    if rc == 0 {
        return 0;
    }
    // Kernels before 5.12: the top mount only.
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
    if !dev {
        flags |= libc::MS_NODEV;
    }
    if rdonly {
        flags |= libc::MS_RDONLY;
    }
    libc::mount(none, dst.as_ptr(), none, flags, std::ptr::null())
}

/// Detach the host tree and make `/newroot` the root (bubblewrap's second pivot).
///
/// # Safety
/// Raw system calls only.
unsafe fn pivot_out() -> i32 {
    let none = std::ptr::null::<libc::c_char>();
    if libc::mount(
        c"/oldroot".as_ptr(),
        c"/oldroot".as_ptr(),
        none,
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) != 0
        || libc::umount2(c"/oldroot".as_ptr(), libc::MNT_DETACH) != 0
    {
        return -1;
    }
    let old = libc::open(
        c"/".as_ptr(),
        libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
    );
    if old < 0 {
        return -1;
    }
    let rc = if libc::chdir(c"/newroot".as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        || libc::fchdir(old) != 0
        || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        -1
    } else {
        0
    };
    libc::close(old);
    rc
}
