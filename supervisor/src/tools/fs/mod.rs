//! The built-in file tools: `fs.read {path}` → `{content}`, `fs.list {path}` → `{entries}`,
//! `fs.write {path, content}` → `{bytes}`.
//!
//! A relative path is the calling agent's workspace (on the host); an absolute one must lie in
//! the workspace or a path the agent's config grants (`readonly_paths` and `writable_paths` to
//! read and list, `writable_paths` to write). The file is then opened with `openat2` beneath a
//! descriptor of that directory, with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel
//! refuses `..` past it, absolute symbolic links, links leading out, and `/proc/self/root` style
//! magic links, so no check here races with the agent changing its files. `rustix` makes the
//! call (a safe wrapper: no `unsafe` here). The supervisor reads and writes as itself, so on top
//! of the paths, what the call touches is checked against the file's mode bits for the agent's
//! uid and gid (the owner of its workspace): an agent cannot read through a tool a file its own
//! process could not read, nor write one it could not write. A file a write makes is given to
//! the agent's uid and gid, as one its process made (to the owner of the directory it was
//! resolved beneath for an agent of host root; a dynamic uid's files in writable paths go to
//! their directory's owner when the uid is released); a file that was there keeps its owner. The
//! directories on the way must be searchable by the agent too ([`searchable`]).
//!
//! Blocking: a call whose work is small (a file or a directory of at most [`INLINE_BYTES`] and
//! [`INLINE_ENTRIES`], a write of at most that much) is done where the broker decides it, on the runtime, which costs
//! a few system calls; a larger one is left ([`run_inline`] gives `None` after opening and
//! measuring, before reading or writing anything) for the broker to run again on the blocking
//! pool. The agent's workspace is resolved beneath a descriptor its attempt opened once
//! ([`crate::ToolRequest::workspace_dir`]) when there is one.

use super::{err, ErrorKind, ToolError};
use crate::config::Builtin;
use crate::ToolRequest;
use corral_proto::Value;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::borrow::Cow;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most entries `fs.list` returns.
pub const MAX_ENTRIES: usize = 10_000;

/// Largest work done inline (see the module docs): bytes of a file read or written, or the
/// size the file system gives a directory listed.
pub const INLINE_BYTES: u64 = 16 << 10;

/// Most entries listed inline: a directory with more is listed again on the blocking pool.
pub const INLINE_ENTRIES: usize = 1024;

/// Where a call may reach: the workspace and the granted paths (borrowed from the request, or
/// owned to be moved to the blocking pool).
#[derive(Clone)]
pub(super) struct Reach<'r> {
    workspace: Option<Cow<'r, Path>>,
    /// The workspace, opened by the attempt (resolved beneath instead of its path).
    dir: Option<Arc<OwnedFd>>,
    /// Granted for reading (`writable_paths` too).
    readonly: Cow<'r, [PathBuf]>,
    /// Granted for writing.
    writable: Cow<'r, [PathBuf]>,
    /// The agent's uid and gid (the workspace's owner); `None`: host root, unchecked.
    who: Option<(u32, u32)>,
}

/// Whether `who` may `want` (4 read, 2 write, 1 search) the file of `st`, by its mode bits.
fn may(st: &rustix::fs::Stat, who: Option<(u32, u32)>, want: u32) -> bool {
    let Some((uid, gid)) = who else { return true };
    let mode = st.st_mode;
    let bits = if st.st_uid == uid {
        mode >> 6
    } else if st.st_gid == gid {
        mode >> 3
    } else {
        mode
    } & 7;
    bits & want == want
}

/// Refuse unless the agent may `want` (see [`may`]) the file open at `fd`.
fn check(fd: &OwnedFd, reach: &Reach, want: u32, path: &str) -> Result<(), ToolError> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("fstat: {e}")))?;
    if may(&st, reach.who, want) {
        return Ok(());
    }
    let what = match want {
        2 | 3 => "write",
        _ => "read",
    };
    err(
        ErrorKind::PermissionDenied,
        format!(
            "`{}`: the agent's uid may not {what} it (mode {:o})",
            super::broker::clip(path, 256),
            st.st_mode & 0o7777
        ),
    )
}

/// Refuse unless the agent may pass through (search, `x`) the root `dir` and every directory
/// of `rest` before its last part, as its own process must to reach the file: a file in a
/// directory closed to the agent is not reached through a tool either. A prefix that does not
/// open is left to the open of the whole path, which says why.
///
/// `root_seen`: whether the agent's process passes through the root itself; not through the
/// directory of a single file granted (it sees the file bound in place).
fn searchable(
    dir: &impl AsFd,
    (rest, root_seen): (&str, bool),
    reach: &Reach,
    path: &str,
) -> Result<(), ToolError> {
    if reach.who.is_none() {
        return Ok(());
    }
    let closed = |st: &rustix::fs::Stat| -> Result<(), ToolError> {
        err(
            ErrorKind::PermissionDenied,
            format!(
                "`{}`: a directory on its way is closed to the agent's uid (mode {:o})",
                super::broker::clip(path, 256),
                st.st_mode & 0o7777
            ),
        )
    };
    let stat = |fd: BorrowedFd<'_>| {
        rustix::fs::fstat(fd)
            .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("fstat: {e}")))
    };
    if root_seen {
        let st = stat(dir.as_fd())?;
        if !may(&st, reach.who, 1) {
            return closed(&st);
        }
    }
    let mut prefix = std::path::PathBuf::new();
    for part in Path::new(rest)
        .parent()
        .into_iter()
        .flat_map(Path::components)
    {
        prefix.push(part);
        let Ok(fd) = rustix::fs::openat2(
            dir,
            &prefix,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) else {
            return Ok(());
        };
        let st = stat(fd.as_fd())?;
        if !may(&st, reach.who, 1) {
            return closed(&st);
        }
    }
    Ok(())
}

impl<'r> Reach<'r> {
    /// What the agent of `req` may reach (nothing copied).
    pub(super) fn of(req: &'r ToolRequest) -> Reach<'r> {
        let spec = &req.spec;
        let dir = req.workspace.as_ref().and(req.workspace_dir.clone());
        let owner = match &dir {
            Some(d) => rustix::fs::fstat(d).ok().map(|st| (st.st_uid, st.st_gid)),
            None => req.workspace.as_ref().and_then(|w| {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(w).ok()?;
                Some((m.uid(), m.gid()))
            }),
        };
        Reach {
            who: owner.filter(|(uid, _)| *uid != 0),
            workspace: req.workspace.as_deref().map(Cow::Borrowed),
            dir,
            readonly: Cow::Borrowed(&spec.readonly_paths),
            writable: Cow::Borrowed(&spec.writable_paths),
        }
    }

    /// The same, owning what it holds (to be moved to another thread).
    pub(super) fn into_owned(self) -> Reach<'static> {
        Reach {
            workspace: self.workspace.map(|w| Cow::Owned(w.into_owned())),
            dir: self.dir,
            readonly: Cow::Owned(self.readonly.into_owned()),
            writable: Cow::Owned(self.writable.into_owned()),
            who: self.who,
        }
    }

    /// The paths granted for reading (or writing, with `write`).
    fn granted(&self, write: bool) -> impl Iterator<Item = &PathBuf> {
        let read = (!write)
            .then_some(self.readonly.iter())
            .into_iter()
            .flatten();
        read.chain(self.writable.iter())
    }
}

/// Whether work of `bytes` is too large to be done inline (with `inline`).
fn too_big(inline: bool, bytes: u64) -> bool {
    inline && bytes > INLINE_BYTES
}

/// Run built-in `b` with `args` if its work is small (see the module docs): `None` when it is
/// not, before anything was read or written (run it again with [`run`] on the blocking pool).
pub(super) fn run_inline(
    b: Builtin,
    args: &Value,
    reach: &Reach,
    max: u64,
) -> Option<Result<Value, ToolError>> {
    match run_with(b, args, reach, max, true) {
        Err(Run::Larger) => None,
        Err(Run::Failed(e)) => Some(Err(e)),
        Ok(v) => Some(Ok(v)),
    }
}

/// Run built-in `b` with `args`, results within `max` bytes.
pub(super) fn run(b: Builtin, args: &Value, reach: &Reach, max: u64) -> Result<Value, ToolError> {
    run_with(b, args, reach, max, false).map_err(|e| match e {
        Run::Failed(e) => e,
        Run::Larger => ToolError::new(ErrorKind::ToolFailed, "not run"),
    })
}

/// Why a call gave no value.
enum Run {
    /// It failed.
    Failed(ToolError),
    /// Its work is larger than what is done inline (nothing read or written).
    Larger,
}

impl From<ToolError> for Run {
    fn from(e: ToolError) -> Run {
        Run::Failed(e)
    }
}

fn run_with(b: Builtin, args: &Value, reach: &Reach, max: u64, inline: bool) -> Result<Value, Run> {
    let path = args.get("path").and_then(Value::as_str).ok_or_else(|| {
        ToolError::new(
            ErrorKind::ToolFailed,
            "invalid arguments: `path` (a string) is required",
        )
    })?;
    match b {
        Builtin::FsRead => read(reach, path, max, inline),
        Builtin::FsList => list(reach, path, max, inline),
        Builtin::FsWrite => {
            let content = match args.get("content") {
                Some(Value::String(s)) => s.as_bytes(),
                Some(Value::Bytes(b)) => b.as_slice(),
                _ => {
                    return Err(Run::Failed(ToolError::new(
                        ErrorKind::ToolFailed,
                        "invalid arguments: `content` (a string or bytes) is required",
                    )))
                }
            };
            if too_big(inline, content.len() as u64) {
                return Err(Run::Larger);
            }
            Ok(write(reach, path, content)?)
        }
    }
}

/// The directory `path` is resolved beneath, and the rest of it.
fn beneath<'a, 'p>(
    reach: &'a Reach,
    path: &'p str,
    write: bool,
) -> Result<(Root<'a>, &'p str), ToolError> {
    if path.is_empty() || path.contains('\0') {
        return err(
            ErrorKind::ToolFailed,
            "invalid arguments: `path` is empty or holds NUL",
        );
    }
    let p = Path::new(path);
    if p.is_relative() {
        return match &reach.workspace {
            Some(w) => Ok((Root::workspace(reach, w), path)),
            None => err(
                ErrorKind::PermissionDenied,
                "the agent has no workspace for a relative path",
            ),
        };
    }
    let workspace = reach.workspace.as_deref();
    let roots = workspace
        .into_iter()
        .chain(reach.granted(write).map(PathBuf::as_path));
    let best = roots
        .filter(|r| p.starts_with(r))
        .max_by_key(|r| r.as_os_str().len());
    match best {
        Some(root) => {
            let rest = p
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .filter(|r| !r.is_empty())
                .unwrap_or(".");
            let root = match workspace {
                Some(w) if w == root => Root::workspace(reach, w),
                _ => Root::Path(root),
            };
            Ok((root, rest))
        }
        None => err(
            ErrorKind::PermissionDenied,
            format!(
                "`{}` is outside the agent's workspace and the paths granted to it{}",
                super::broker::clip(path, 256),
                if write { " for writing" } else { "" }
            ),
        ),
    }
}

/// A directory paths are resolved beneath.
enum Root<'a> {
    /// Open already (the workspace, opened by the attempt).
    Open(&'a Arc<OwnedFd>),
    /// To be opened.
    Path(&'a Path),
}

impl<'a> Root<'a> {
    fn workspace(reach: &'a Reach, path: &'a Path) -> Root<'a> {
        match &reach.dir {
            Some(dir) => Root::Open(dir),
            None => Root::Path(path),
        }
    }
}

/// The directory a file was opened beneath.
enum Dir<'a> {
    Shared(&'a Arc<OwnedFd>),
    Own(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Shared(d) => d.as_fd(),
            Dir::Own(d) => d.as_fd(),
        }
    }
}

/// Open `path` beneath its root with `flags`; the root's descriptor too.
fn open<'a>(
    reach: &'a Reach,
    path: &str,
    write: bool,
    flags: OFlags,
    mode: Mode,
) -> Result<(OwnedFd, Dir<'a>), ToolError> {
    let (root, rest) = beneath(reach, path, write)?;
    let mut rest = if rest.is_empty() { "." } else { rest };
    let mut root_seen = true;
    let open_dir = |d: &Path| {
        rustix::fs::open(
            d,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let cannot = |e: rustix::io::Errno| {
        ToolError::new(
            ErrorKind::ToolFailed,
            format!("cannot open the directory the path is resolved beneath: {e}"),
        )
    };
    let dir = match root {
        Root::Open(dir) => Dir::Shared(dir),
        Root::Path(root) => match open_dir(root) {
            Ok(d) => Dir::Own(d),
            // A single file granted: resolved beneath its directory, by its name.
            Err(rustix::io::Errno::NOTDIR) if rest == "." => {
                let (Some(parent), Some(name)) =
                    (root.parent(), root.file_name().and_then(|n| n.to_str()))
                else {
                    return Err(cannot(rustix::io::Errno::NOTDIR));
                };
                rest = name;
                root_seen = false;
                Dir::Own(open_dir(parent).map_err(cannot)?)
            }
            Err(e) => return Err(cannot(e)),
        },
    };
    searchable(&dir, (rest, root_seen), reach, path)?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&dir, rest, flags | OFlags::CLOEXEC, mode, resolve) {
        Ok(fd) => Ok((fd, dir)),
        Err(e) if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::LOOP => err(
            ErrorKind::PermissionDenied,
            format!(
                "`{}` escapes the directory it is resolved beneath (.., a symbolic link or a magic link)",
                super::broker::clip(path, 256)
            ),
        ),
        Err(e) if e == rustix::io::Errno::NOSYS => err(
            ErrorKind::ToolFailed,
            "this kernel has no openat2 (Linux 5.6): the file tools cannot confine paths",
        ),
        Err(e) => err(
            ErrorKind::ToolFailed,
            format!("`{}`: {e}", super::broker::clip(path, 256)),
        ),
    }
}

fn kind_of(fd: &OwnedFd) -> Result<(rustix::fs::FileType, u64), ToolError> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("fstat: {e}")))?;
    Ok((
        rustix::fs::FileType::from_raw_mode(st.st_mode),
        st.st_size.max(0) as u64,
    ))
}

fn read(reach: &Reach, path: &str, max: u64, inline: bool) -> Result<Value, Run> {
    // Non-blocking: a FIFO must not hold the call.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let (fd, _) = open(reach, path, false, flags, Mode::empty())?;
    check(&fd, reach, 4, path)?;
    let (kind, size) = kind_of(&fd)?;
    if kind != rustix::fs::FileType::RegularFile {
        return Err(Run::Failed(ToolError::new(
            ErrorKind::ToolFailed,
            format!("`{path}` is not a regular file"),
        )));
    }
    if size > max {
        return Err(Run::Failed(ToolError::new(
            ErrorKind::TooLarge,
            format!("`{path}` is {size} bytes, more than max_response ({max} bytes)"),
        )));
    }
    if too_big(inline, size) {
        return Err(Run::Larger);
    }
    // Inline, no more than INLINE_BYTES is read whatever the size said (a file of `/proc`
    // says 0): past it, it is read again whole on the blocking pool.
    let cap = if inline { max.min(INLINE_BYTES) } else { max };
    let mut buf = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("read `{path}`: {e}")))?;
    if buf.len() as u64 > cap && cap < max {
        return Err(Run::Larger);
    }
    if buf.len() as u64 > max {
        return Err(Run::Failed(ToolError::new(
            ErrorKind::TooLarge,
            format!("`{path}` grew past max_response ({max} bytes) while read"),
        )));
    }
    let content = match String::from_utf8(buf) {
        Ok(s) => Value::String(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    };
    Ok(Value::map([("content", content)]))
}

fn list(reach: &Reach, path: &str, max: u64, inline: bool) -> Result<Value, Run> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let (fd, _) = open(reach, path, false, flags, Mode::empty())?;
    check(&fd, reach, 4, path)?;
    if inline && too_big(inline, kind_of(&fd)?.1) {
        return Err(Run::Larger);
    }
    let dir = rustix::fs::Dir::new(fd)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("list `{path}`: {e}")))?;
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    for entry in dir {
        let entry = entry
            .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("list `{path}`: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        bytes += name.len() as u64 + 32;
        // (Inline, whatever size the file system gave the directory.)
        if inline && entries.len() >= INLINE_ENTRIES {
            return Err(Run::Larger);
        }
        if entries.len() >= MAX_ENTRIES || bytes > max {
            return Err(Run::Failed(ToolError::new(
                ErrorKind::TooLarge,
                format!("`{path}` has more entries than a listing holds ({MAX_ENTRIES}, or max_response {max} bytes)"),
            )));
        }
        let kind = match entry.file_type() {
            rustix::fs::FileType::RegularFile => "file",
            rustix::fs::FileType::Directory => "dir",
            rustix::fs::FileType::Symlink => "symlink",
            _ => "other",
        };
        entries.push((name, kind));
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let entries = entries
        .into_iter()
        .map(|(name, kind)| {
            Value::map([
                ("name", Value::String(name)),
                ("type", Value::String(kind.into())),
            ])
        })
        .collect();
    Ok(Value::map([("entries", Value::List(entries))]))
}

fn write(reach: &Reach, path: &str, content: &[u8]) -> Result<Value, ToolError> {
    // Checked before anything is created or truncated: the file if it exists, else the
    // directory it would be made in.
    let probe = OFlags::PATH | OFlags::NOFOLLOW;
    let existed = match open(reach, path, true, probe, Mode::empty()) {
        Ok((fd, _)) => {
            check(&fd, reach, 2, path)?;
            true
        }
        Err(_) => {
            let parent = Path::new(path)
                .parent()
                .and_then(Path::to_str)
                .filter(|p| !p.is_empty())
                .unwrap_or(".");
            let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
            if let Ok((fd, _)) = open(reach, parent, true, dir_flags, Mode::empty()) {
                check(&fd, reach, 3, parent)?;
            }
            false
        }
    };
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let (fd, dir) = open(reach, path, true, flags, Mode::from_raw_mode(0o644))?;
    let (kind, _) = kind_of(&fd)?;
    if kind != rustix::fs::FileType::RegularFile {
        return err(
            ErrorKind::ToolFailed,
            format!("`{path}` is not a regular file"),
        );
    }
    // A file made here belongs to the agent (as one its own process made), or, for host
    // root's agents, to whoever owns the directory it was resolved beneath. A file that was
    // there keeps its owner.
    let owner = reach.who.or_else(|| {
        rustix::fs::fstat(&dir)
            .ok()
            .map(|st| (st.st_uid, st.st_gid))
    });
    if let (false, Some((uid, gid))) = (existed, owner) {
        let _ = rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
    }
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    f.write_all(content)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("write `{path}`: {e}")))?;
    Ok(Value::map([("bytes", Value::Int(content.len() as i64))]))
}

#[cfg(test)]
mod tests;
