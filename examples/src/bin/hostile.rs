//! `hostile`: an agent that attacks its sandbox, one attack per task, for corral's hostile-agent
//! tests. Input `{"probe": NAME, ...args}`; output a map with at least `ok` (the attack went
//! through), `errno` (0 when it did, else the error it failed with) and `error` (its text), plus
//! fields of the probe.
//!
//! Paths may start with `$exe` (its program file, as the kernel names it), `$exe_dir` (that
//! file's directory), `$home` (its workspace) or `$tmp` (`/tmp`).
//!
//! | probe | args | attack | extra fields |
//! |---|---|---|---|
//! | `id` | | `ok` = it runs as uid or gid 0 | `uid`, `gid`, `euid`, `egid`, `groups`, `pid`, `ppid`, `caps` (`CapEff`, `CapPrm`, `CapInh`, `CapBnd`, `CapAmb`, hex masks as in `/proc/self/status`), `fds` (its open descriptors and what they are) |
//! | `hold` | | tool call `hold` with its ids, answered when the owner wants: the agent is alive meanwhile | as `id` |
//! | `read` | `path` | reads the file | `bytes` |
//! | `open` | `path`, `write` | opens it (for writing: `O_WRONLY`, no truncation, nothing written) | |
//! | `list` | `path` | lists the directory | `entries` (sorted names) |
//! | `create` | `dir`, `keep` | creates a new file in it (removed again unless `keep`) | `path` |
//! | `chmod` | `path`, `mode` | `chmod` | |
//! | `chown` | `path` | `chown` to its own ids | |
//! | `setxattr` | `path` | sets `user.hostile` | |
//! | `setid_file` | `dir` | leaves a set-id file there: `open(O_CREAT)` and `mknod` with mode 06755, `chmod 04755` of a plain file | `create_mode`, `mknod_mode`, `chmod_errno`, `nosuid` (the mount's flag) |
//! | `sockets` | `roots`, `max` | looks for socket files under `roots` (default `["/"]`, skipping `/proc` and `/sys`), at most `max` entries | `sockets`, `scanned` |
//! | `tcp` | `addr` | TCP connect | |
//! | `udp` | `addr` | sends one datagram `hostile` | |
//! | `unix` | `path` | connects to a pathname Unix stream socket | |
//! | `unix_abstract` | `name` | connects to the abstract Unix stream socket `\0name` | |
//! | `serve_tcp` | | listens on 127.0.0.1, tool call `listening` `{"port"}`, then takes what connected | `port`, `accepted` |
//! | `serve_abstract` | `name` | listens on `\0name`, tool call `listening` `{"name"}`, then takes what connected | `accepted` |
//! | `clone` | `ns` | `clone` with `CLONE_NEW<ns>` (`user`, `mount`, `pid`, `net`, `ipc`, `uts`, `cgroup`) | |
//! | `unshare` | `ns` | `unshare(CLONE_NEW<ns>)` in a forked child (a user namespace needs a single thread) | |
//! | `fill` | `dir`, `max`, `fail` | writes files of 1 MiB under `dir` until an error or `max` bytes; with `fail`, an error fails the task | `written` |
//! | `kill` | `pid`, `sig` (default 0) | `kill(pid, sig)` | |
//! | `kill_parent` | `sig` (default 0) | `kill(getppid(), sig)` | `ppid` |
//! | `ptrace` | `pid` | `PTRACE_SEIZE` (detached again) | |
//! | `fd` | `fd` | whether that descriptor is open in the agent (`fcntl(F_GETFD)`) | |
//! | `proc_fds` | `pid` (default 1) | lists `/proc/PID/fd` and opens each entry (and 0..=7) for writing; `errno` is fd 5's | `listed`, `entries`, `opened` |

use corral_sdk::{run_value, AgentError, Contract, Ctx, Schema, SideEffects, Value};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

type Fields = Vec<(&'static str, Value)>;

/// What one probe saw: whether the attack went through (else the OS error), and its fields.
struct Seen {
    result: Result<(), std::io::Error>,
    fields: Fields,
}

impl Seen {
    fn of(result: std::io::Result<()>) -> Seen {
        Seen {
            result,
            fields: Vec::new(),
        }
    }

    fn with(mut self, k: &'static str, v: impl Into<Value>) -> Seen {
        self.fields.push((k, v.into()));
        self
    }

    fn into_value(self) -> Value {
        let mut m: BTreeMap<String, Value> = self
            .fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let (ok, errno, error) = match &self.result {
            Ok(()) => (true, 0, String::new()),
            Err(e) => (false, e.raw_os_error().unwrap_or(0), e.to_string()),
        };
        m.insert("ok".into(), Value::Bool(ok));
        m.insert("errno".into(), Value::Int(i64::from(errno)));
        m.insert("error".into(), Value::String(error));
        Value::Map(m)
    }
}

fn bad(msg: impl Into<String>) -> AgentError {
    AgentError::new("invalid_input", msg, false)
}

fn arg_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, AgentError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("`{key}` must be a string")))
}

fn arg_int(input: &Value, key: &str, default: Option<i64>) -> Result<i64, AgentError> {
    match input.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| bad(format!("`{key}` is required"))),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| bad(format!("`{key}` must be an integer"))),
    }
}

/// A path argument, with `$exe`, `$exe_dir`, `$home` and `$tmp` expanded.
fn arg_path(input: &Value, key: &str) -> Result<PathBuf, AgentError> {
    let raw = arg_str(input, key)?;
    let exe = || std::env::current_exe().map_err(|e| bad(format!("its program: {e}")));
    let (head, rest) = match raw.find('/') {
        Some(i) => (&raw[..i], &raw[i..]),
        None => (raw, ""),
    };
    let base = match head {
        "$exe" => exe()?,
        "$exe_dir" => exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| bad("its program has no directory"))?,
        "$home" => std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| bad("no HOME"))?,
        "$tmp" => PathBuf::from("/tmp"),
        _ => return Ok(PathBuf::from(raw)),
    };
    let rest = rest.trim_start_matches('/');
    Ok(if rest.is_empty() {
        base
    } else {
        base.join(rest)
    })
}

fn cpath(p: &Path) -> Result<CString, AgentError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| bad(format!("path: {e}")))
}

/// A raw call's result: negative means it failed with `errno`.
fn check(r: libc::c_long) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn errno_of(r: &std::io::Result<()>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => i64::from(e.raw_os_error().unwrap_or(0)),
    }
}

/// A unique name for a file this agent makes.
fn fresh(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    dir.join(format!(
        "hostile-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn ids() -> Fields {
    // SAFETY: these getters cannot fail and touch no memory.
    let (uid, gid, euid, egid, ppid) = unsafe {
        (
            libc::getuid(),
            libc::getgid(),
            libc::geteuid(),
            libc::getegid(),
            libc::getppid(),
        )
    };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: getgroups writes at most `groups.len()` entries into the buffer we own.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    let fds: BTreeMap<String, Value> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        Value::from(target.display().to_string()),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    vec![
        ("uid", Value::Int(i64::from(uid))),
        ("gid", Value::Int(i64::from(gid))),
        ("euid", Value::Int(i64::from(euid))),
        ("egid", Value::Int(i64::from(egid))),
        (
            "groups",
            Value::List(groups.iter().map(|g| Value::Int(i64::from(*g))).collect()),
        ),
        ("pid", Value::Int(i64::from(std::process::id()))),
        ("ppid", Value::Int(i64::from(ppid))),
        ("caps", Value::Map(caps())),
        ("fds", Value::Map(fds)),
    ]
}

/// Its capability sets, as hex masks: from `capget` (effective, permitted, inheritable) and
/// `prctl` (bounding, ambient), which need no `/proc`.
fn caps() -> BTreeMap<String, Value> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [0u32; 6]; // two of { effective, permitted, inheritable }
                              // SAFETY: capget writes two 12-byte records into `data`, which holds six u32.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    let mut out = BTreeMap::new();
    let hex =
        |lo: u32, hi: u32| Value::from(format!("{:016x}", (u64::from(hi) << 32) | u64::from(lo)));
    if r == 0 {
        out.insert("CapEff".into(), hex(data[0], data[3]));
        out.insert("CapPrm".into(), hex(data[1], data[4]));
        out.insert("CapInh".into(), hex(data[2], data[5]));
    }
    let (mut bnd, mut amb) = (0u64, 0u64);
    for cap in 0..64 {
        // SAFETY: these prctl queries take integers only.
        let (b, a) = unsafe {
            (
                libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0),
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, cap, 0, 0),
            )
        };
        if b == 1 {
            bnd |= 1 << cap;
        }
        if a == 1 {
            amb |= 1 << cap;
        }
    }
    out.insert("CapBnd".into(), Value::from(format!("{bnd:016x}")));
    out.insert("CapAmb".into(), Value::from(format!("{amb:016x}")));
    out
}

fn id_seen() -> Seen {
    // SAFETY: as in `ids`.
    let root = unsafe { libc::getuid() == 0 || libc::geteuid() == 0 || libc::getgid() == 0 };
    let mut s = Seen::of(if root {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EPERM))
    });
    s.fields = ids();
    s
}

fn read(path: &Path) -> Seen {
    let mut buf = Vec::new();
    let r = std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf));
    match r {
        Ok(n) => Seen::of(Ok(())).with("bytes", n as i64),
        Err(e) => Seen::of(Err(e)).with("bytes", 0i64),
    }
}

fn open(path: &Path, write: bool) -> Seen {
    let r = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path);
    Seen::of(r.map(drop))
}

fn list(path: &Path) -> Seen {
    match std::fs::read_dir(path) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.truncate(500);
            Seen::of(Ok(())).with(
                "entries",
                Value::List(names.into_iter().map(Value::String).collect()),
            )
        }
        Err(e) => Seen::of(Err(e)).with("entries", Value::List(Vec::new())),
    }
}

fn create(dir: &Path, keep: bool) -> Seen {
    let p = fresh(dir, "create");
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p);
    let made = r.is_ok();
    let s = Seen::of(r.map(drop)).with("path", p.display().to_string());
    if made && !keep {
        let _ = std::fs::remove_file(&p);
    }
    s
}

fn chmod(path: &Path, mode: i64) -> Result<Seen, AgentError> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    Ok(Seen::of(check(
        unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) }.into(),
    )))
}

fn chown(path: &Path) -> Result<Seen, AgentError> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; the ids are plain numbers.
    Ok(Seen::of(check(
        unsafe { libc::chown(c.as_ptr(), libc::getuid(), libc::getgid()) }.into(),
    )))
}

fn setxattr(path: &Path) -> Result<Seen, AgentError> {
    let c = cpath(path)?;
    let value = b"hostile";
    // SAFETY: the name and path are NUL-terminated, the value is `value.len()` bytes we own.
    Ok(Seen::of(check(
        unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.hostile".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
        .into(),
    )))
}

fn mode_of(p: &Path) -> i64 {
    std::fs::symlink_metadata(p).map_or(-1, |m| i64::from(m.mode() & 0o7777))
}

/// Tries three ways to leave a set-id file in `dir`. `ok` when one of them has such a mode.
fn setid_file(dir: &Path) -> Result<Seen, AgentError> {
    const SETID: i64 = (libc::S_ISUID | libc::S_ISGID) as i64;
    // 1. Created with the bits in its mode.
    let created = fresh(dir, "setid-open");
    let c = cpath(&created)?;
    // SAFETY: `c` is a NUL-terminated path; the returned fd is closed right after.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o6755 as libc::c_uint,
        )
    };
    let create = check(fd.into());
    if fd >= 0 {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd) };
    }
    // 2. mknod of a regular file.
    let node = fresh(dir, "setid-mknod");
    let n = cpath(&node)?;
    // SAFETY: `n` is a NUL-terminated path.
    let mknod = check(unsafe { libc::mknod(n.as_ptr(), libc::S_IFREG | 0o6755, 0) }.into());
    // 3. chmod of a plain file.
    let plain = fresh(dir, "setid-chmod");
    let made = std::fs::write(&plain, b"#!/bin/sh\n");
    let p = cpath(&plain)?;
    let chmod = match made {
        // SAFETY: `p` is a NUL-terminated path.
        Ok(()) => check(unsafe { libc::chmod(p.as_ptr(), 0o4755) }.into()),
        Err(e) => Err(e),
    };
    let modes = [mode_of(&created), mode_of(&node), mode_of(&plain)];
    let setid = modes.iter().any(|m| *m >= 0 && m & SETID != 0);
    let nosuid = nix_statvfs_nosuid(dir);
    for f in [&created, &node, &plain] {
        let _ = std::fs::remove_file(f);
    }
    let result = if setid {
        Ok(())
    } else {
        Err(chmod
            .as_ref()
            .err()
            .or(create.as_ref().err())
            .map(|e| std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EPERM)))
            .unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EPERM)))
    };
    Ok(Seen::of(result)
        .with("create_mode", modes[0])
        .with("create_errno", errno_of(&create))
        .with("mknod_mode", modes[1])
        .with("mknod_errno", errno_of(&mknod))
        .with("chmod_mode", modes[2])
        .with("chmod_errno", errno_of(&chmod))
        .with("nosuid", nosuid))
}

/// Whether the file system holding `dir` is mounted `nosuid`.
fn nix_statvfs_nosuid(dir: &Path) -> bool {
    let Ok(c) = cpath(dir) else { return false };
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_flag & libc::ST_NOSUID != 0
}

/// Walks `roots` for socket files (not into `/proc` or `/sys`), at most `max` entries.
fn sockets(roots: Vec<PathBuf>, max: usize) -> Seen {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut stack = roots;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            scanned += 1;
            if scanned > max {
                break;
            }
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_socket() {
                found.push(Value::String(p.display().to_string()));
            } else if t.is_dir() && p != Path::new("/proc") && p != Path::new("/sys") {
                stack.push(p);
            }
        }
        if scanned > max {
            break;
        }
    }
    let r = if found.is_empty() {
        Err(std::io::Error::from_raw_os_error(libc::ENOENT))
    } else {
        Ok(())
    };
    Seen::of(r)
        .with("sockets", Value::List(found))
        .with("scanned", scanned as i64)
}

fn tcp(addr: &str) -> Result<Seen, AgentError> {
    let a: std::net::SocketAddr = addr.parse().map_err(|e| bad(format!("addr: {e}")))?;
    let r = std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5));
    Ok(Seen::of(r.map(drop)))
}

fn udp(addr: &str) -> Result<Seen, AgentError> {
    let a: std::net::SocketAddr = addr.parse().map_err(|e| bad(format!("addr: {e}")))?;
    let r = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"hostile", a));
    Ok(Seen::of(r.map(drop)))
}

fn unix(path: &Path) -> Seen {
    Seen::of(std::os::unix::net::UnixStream::connect(path).map(drop))
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

fn unix_abstract(name: &str) -> Seen {
    let r = abstract_addr(name).and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a));
    Seen::of(r.map(drop))
}

/// Whether a connection is waiting on a (non-blocking) listening socket.
fn accepted(fd: libc::c_int) -> bool {
    // SAFETY: a non-blocking accept4 on a listening socket we own; null address out-params.
    let c = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if c >= 0 {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(c) };
    }
    c >= 0
}

/// Tool call `listening` with `args`; the answer says the peers have tried.
fn announce(ctx: &mut Ctx, args: Value) -> Result<(), AgentError> {
    ctx.call_tool("listening", args).map(drop)
}

fn serve_tcp(ctx: &mut Ctx) -> Result<Seen, AgentError> {
    let l = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return Ok(Seen::of(Err(e)).with("accepted", false)),
    };
    if let Err(e) = l.set_nonblocking(true) {
        return Ok(Seen::of(Err(e)).with("accepted", false));
    }
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    announce(ctx, Value::map([("port", Value::Int(i64::from(port)))]))?;
    Ok(Seen::of(Ok(()))
        .with("port", i64::from(port))
        .with("accepted", accepted(l.as_raw_fd())))
}

fn serve_abstract(ctx: &mut Ctx, name: &str) -> Result<Seen, AgentError> {
    let l = abstract_addr(name).and_then(|a| std::os::unix::net::UnixListener::bind_addr(&a));
    let l = match l.and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(l) => l,
        Err(e) => return Ok(Seen::of(Err(e)).with("accepted", false)),
    };
    announce(ctx, Value::map([("name", Value::from(name))]))?;
    Ok(Seen::of(Ok(())).with("accepted", accepted(l.as_raw_fd())))
}

fn ns_flag(ns: &str) -> Result<libc::c_int, AgentError> {
    Ok(match ns {
        "user" => libc::CLONE_NEWUSER,
        "mount" => libc::CLONE_NEWNS,
        "pid" => libc::CLONE_NEWPID,
        "net" => libc::CLONE_NEWNET,
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "cgroup" => libc::CLONE_NEWCGROUP,
        other => return Err(bad(format!("unknown namespace `{other}`"))),
    })
}

fn clone_ns(flag: libc::c_int) -> Seen {
    // SAFETY: without CLONE_VM the child has a copy of our memory and leaves at once.
    let r = unsafe { libc::syscall(libc::SYS_clone, flag | libc::SIGCHLD, 0, 0, 0, 0) };
    if r == 0 {
        // SAFETY: in the new child: leave at once.
        unsafe { libc::_exit(0) };
    }
    let res = check(r);
    if r > 0 {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(r as libc::pid_t, std::ptr::null_mut(), 0) };
    }
    Seen::of(res)
}

/// `unshare` in a forked child: the agent has threads (its heartbeat), and a user namespace
/// can only be made by a single-threaded process. The child reports its errno as exit code.
fn unshare(flag: libc::c_int) -> Seen {
    // SAFETY: the child only makes raw calls and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child: unshare takes flags only; leave at once.
        unsafe {
            let r = libc::unshare(flag);
            libc::_exit(if r == 0 {
                0
            } else {
                *libc::__errno_location() & 0xff
            });
        }
    }
    if let Err(e) = check(pid.into()) {
        return Seen::of(Err(e));
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Seen::of(match libc::WEXITSTATUS(status) {
        0 if libc::WIFEXITED(status) => Ok(()),
        0 => Err(std::io::Error::other(format!("child status {status:#x}"))),
        e => Err(std::io::Error::from_raw_os_error(e)),
    })
}

/// Lists `/proc/PID/fd` and opens every entry for writing (the init's status pipe is one).
fn proc_fds(pid: i64) -> Seen {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let listed = list(&dir);
    let entries = listed
        .fields
        .iter()
        .find(|(k, _)| *k == "entries")
        .map(|(_, v)| v.clone())
        .unwrap_or(Value::List(Vec::new()));
    let mut names: Vec<String> = match &entries {
        Value::List(l) => l
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    // Named ones too, in case listing is refused but opening is not.
    for fd in 0..8 {
        if !names.contains(&fd.to_string()) {
            names.push(fd.to_string());
        }
    }
    let mut opened = Vec::new();
    // The error reported is that of fd 5, the init's status pipe.
    let mut status_fd = Ok(());
    for n in &names {
        let r = open(&dir.join(n), true).result;
        if r.is_ok() {
            opened.push(Value::from(n.as_str()));
        }
        if n == "5" {
            status_fd = r;
        }
    }
    let result = if opened.is_empty() { status_fd } else { Ok(()) };
    Seen::of(result)
        .with("listed", listed.result.is_ok())
        .with("entries", entries)
        .with("opened", Value::List(opened))
}

fn fill(dir: &Path, max: u64, fail: bool) -> Result<Seen, AgentError> {
    let chunk = vec![0x5au8; 1 << 20];
    let mut written: u64 = 0;
    let mut result = Ok(());
    let mut i = 0u32;
    'files: while written < max {
        let p = dir.join(format!("hostile-fill-{}-{i}", std::process::id()));
        i += 1;
        let mut f = match std::fs::File::create(&p) {
            Ok(f) => f,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        // Files of at most 64 MiB, under any `file_size` limit worth testing with.
        for _ in 0..64 {
            if written >= max {
                break 'files;
            }
            let want = (max - written).min(chunk.len() as u64) as usize;
            match f.write(&chunk[..want]) {
                Ok(0) => {
                    result = Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                    break 'files;
                }
                Ok(n) => written += n as u64,
                Err(e) => {
                    result = Err(e);
                    break 'files;
                }
            }
        }
        if let Err(e) = f.sync_all() {
            result = Err(e);
            break;
        }
    }
    if fail {
        if let Err(e) = &result {
            return Err(AgentError::new(
                "disk",
                format!("wrote {written} bytes, then: {e}"),
                false,
            ));
        }
    }
    Ok(Seen::of(result).with("written", written as i64))
}

fn kill(pid: i64, sig: i64) -> Seen {
    // SAFETY: kill takes two integers.
    Seen::of(check(
        unsafe { libc::kill(pid as libc::pid_t, sig as libc::c_int) }.into(),
    ))
}

fn ptrace(pid: i64) -> Seen {
    // SAFETY: PTRACE_SEIZE takes a pid and no pointers; a seized process is not stopped.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid as libc::pid_t, 0, 0) };
    let res = check(r);
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0, 0) };
    }
    Seen::of(res)
}

fn probe(ctx: &mut Ctx, name: &str, input: &Value) -> Result<Seen, AgentError> {
    Ok(match name {
        "id" => id_seen(),
        "hold" => {
            ctx.call_tool(
                "hold",
                Value::Map(ids().into_iter().map(|(k, v)| (k.into(), v)).collect()),
            )?;
            id_seen()
        }
        "read" => read(&arg_path(input, "path")?),
        "open" => {
            let write = input.get("write").and_then(Value::as_bool).unwrap_or(false);
            open(&arg_path(input, "path")?, write)
        }
        "list" => list(&arg_path(input, "path")?),
        "create" => {
            let keep = input.get("keep").and_then(Value::as_bool).unwrap_or(false);
            create(&arg_path(input, "dir")?, keep)
        }
        "chmod" => chmod(
            &arg_path(input, "path")?,
            arg_int(input, "mode", Some(0o777))?,
        )?,
        "chown" => chown(&arg_path(input, "path")?)?,
        "setxattr" => setxattr(&arg_path(input, "path")?)?,
        "setid_file" => setid_file(&arg_path(input, "dir")?)?,
        "sockets" => {
            let roots = match input.get("roots") {
                Some(Value::List(l)) => l
                    .iter()
                    .filter_map(Value::as_str)
                    .map(PathBuf::from)
                    .collect(),
                _ => vec![PathBuf::from("/")],
            };
            sockets(roots, arg_int(input, "max", Some(200_000))?.max(0) as usize)
        }
        "tcp" => tcp(arg_str(input, "addr")?)?,
        "udp" => udp(arg_str(input, "addr")?)?,
        "unix" => unix(&arg_path(input, "path")?),
        "unix_abstract" => unix_abstract(arg_str(input, "name")?),
        "serve_tcp" => serve_tcp(ctx)?,
        "serve_abstract" => serve_abstract(ctx, arg_str(input, "name")?)?,
        "clone" => clone_ns(ns_flag(arg_str(input, "ns")?)?),
        "unshare" => unshare(ns_flag(arg_str(input, "ns")?)?),
        "fill" => {
            let fail = input.get("fail").and_then(Value::as_bool).unwrap_or(false);
            let max = arg_int(input, "max", None)?.max(0) as u64;
            fill(&arg_path(input, "dir")?, max, fail)?
        }
        "kill" => kill(
            arg_int(input, "pid", None)?,
            arg_int(input, "sig", Some(0))?,
        ),
        "kill_parent" => {
            // SAFETY: getppid cannot fail.
            let ppid = i64::from(unsafe { libc::getppid() });
            kill(ppid, arg_int(input, "sig", Some(0))?).with("ppid", ppid)
        }
        "ptrace" => ptrace(arg_int(input, "pid", None)?),
        "proc_fds" => proc_fds(arg_int(input, "pid", Some(1))?),
        "fd" => {
            let fd = arg_int(input, "fd", None)?;
            // SAFETY: F_GETFD reads the flags of a descriptor number; no memory is passed.
            Seen::of(check(
                unsafe { libc::fcntl(fd as libc::c_int, libc::F_GETFD) }.into(),
            ))
        }
        other => return Err(bad(format!("unknown probe `{other}`"))),
    })
}

fn main() -> std::process::ExitCode {
    let contract = Contract::new("hostile", env!("CARGO_PKG_VERSION"))
        .input(
            Schema::object()
                .field("probe", Schema::String)
                .allow_extra(),
        )
        .output(Schema::Any)
        .tool("*")
        .side_effects(SideEffects::Destructive);
    run_value(contract, |ctx, input| {
        let name = arg_str(&input, "probe")?.to_string();
        ctx.log(format!("hostile: {name}"));
        let seen = probe(ctx, &name, &input)?;
        ctx.progress();
        Ok(seen.into_value())
    })
}
