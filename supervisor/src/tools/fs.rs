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
//! process could not read, nor write one it could not write. A file written is given to the
//! owner of the directory it was resolved beneath (the agent's uid in its workspace).
//!
//! Blocking: the broker runs these on the blocking pool.

use super::{err, ErrorKind, ToolError};
use crate::config::Builtin;
use crate::ToolRequest;
use corral_proto::Value;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Most entries `fs.list` returns.
pub const MAX_ENTRIES: usize = 10_000;

/// Where a call may reach: the workspace and the granted paths.
pub(super) struct Reach {
    workspace: Option<PathBuf>,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
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

impl Reach {
    /// What the agent of `req` may reach.
    pub(super) fn of(req: &ToolRequest) -> Reach {
        let spec = &req.spec;
        let who = req.workspace.as_ref().and_then(|w| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(w).ok()?;
            (m.uid() != 0).then_some((m.uid(), m.gid()))
        });
        Reach {
            who,
            workspace: req.workspace.clone(),
            read: spec
                .readonly_paths
                .iter()
                .chain(&spec.writable_paths)
                .cloned()
                .collect(),
            write: spec.writable_paths.clone(),
        }
    }
}

/// Run built-in `b` with `args`, results within `max` bytes.
pub(super) fn run(b: Builtin, args: &Value, reach: &Reach, max: u64) -> Result<Value, ToolError> {
    let path = args.get("path").and_then(Value::as_str).ok_or_else(|| {
        ToolError::new(
            ErrorKind::ToolFailed,
            "invalid arguments: `path` (a string) is required",
        )
    })?;
    match b {
        Builtin::FsRead => read(reach, path, max),
        Builtin::FsList => list(reach, path, max),
        Builtin::FsWrite => {
            let content = match args.get("content") {
                Some(Value::String(s)) => s.as_bytes(),
                Some(Value::Bytes(b)) => b.as_slice(),
                _ => {
                    return err(
                        ErrorKind::ToolFailed,
                        "invalid arguments: `content` (a string or bytes) is required",
                    )
                }
            };
            write(reach, path, content)
        }
    }
}

/// The directory `path` is resolved beneath, and the rest of it.
fn beneath<'p>(reach: &Reach, path: &'p str, write: bool) -> Result<(PathBuf, &'p str), ToolError> {
    if path.is_empty() || path.contains('\0') {
        return err(
            ErrorKind::ToolFailed,
            "invalid arguments: `path` is empty or holds NUL",
        );
    }
    let p = Path::new(path);
    if p.is_relative() {
        return match &reach.workspace {
            Some(w) => Ok((w.clone(), path)),
            None => err(
                ErrorKind::PermissionDenied,
                "the agent has no workspace for a relative path",
            ),
        };
    }
    let roots = reach
        .workspace
        .iter()
        .chain(if write { &reach.write } else { &reach.read });
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
            Ok((root.clone(), rest))
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

/// Open `path` beneath its root with `flags`; the root's descriptor too.
fn open(
    reach: &Reach,
    path: &str,
    write: bool,
    flags: OFlags,
    mode: Mode,
) -> Result<(OwnedFd, OwnedFd), ToolError> {
    let (root, rest) = beneath(reach, path, write)?;
    let rest = if rest.is_empty() { "." } else { rest };
    let dir = rustix::fs::open(
        &root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        ToolError::new(
            ErrorKind::ToolFailed,
            format!("cannot open the directory the path is resolved beneath: {e}"),
        )
    })?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let shown = super::broker::clip(path, 256);
    match rustix::fs::openat2(&dir, rest, flags | OFlags::CLOEXEC, mode, resolve) {
        Ok(fd) => Ok((fd, dir)),
        Err(e) if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::LOOP => err(
            ErrorKind::PermissionDenied,
            format!("`{shown}` escapes the directory it is resolved beneath (.., a symbolic link or a magic link)"),
        ),
        Err(e) if e == rustix::io::Errno::NOSYS => err(
            ErrorKind::ToolFailed,
            "this kernel has no openat2 (Linux 5.6): the file tools cannot confine paths",
        ),
        Err(e) => err(ErrorKind::ToolFailed, format!("`{shown}`: {e}")),
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

fn read(reach: &Reach, path: &str, max: u64) -> Result<Value, ToolError> {
    // Non-blocking: a FIFO must not hold the call.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let (fd, _) = open(reach, path, false, flags, Mode::empty())?;
    check(&fd, reach, 4, path)?;
    let (kind, size) = kind_of(&fd)?;
    if kind != rustix::fs::FileType::RegularFile {
        return err(
            ErrorKind::ToolFailed,
            format!("`{path}` is not a regular file"),
        );
    }
    if size > max {
        return err(
            ErrorKind::TooLarge,
            format!("`{path}` is {size} bytes, more than max_response ({max} bytes)"),
        );
    }
    let mut buf = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("read `{path}`: {e}")))?;
    if buf.len() as u64 > max {
        return err(
            ErrorKind::TooLarge,
            format!("`{path}` grew past max_response ({max} bytes) while read"),
        );
    }
    let content = match String::from_utf8(buf) {
        Ok(s) => Value::String(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    };
    Ok(Value::map([("content", content)]))
}

fn list(reach: &Reach, path: &str, max: u64) -> Result<Value, ToolError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let (fd, _) = open(reach, path, false, flags, Mode::empty())?;
    check(&fd, reach, 4, path)?;
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
        if entries.len() >= MAX_ENTRIES || bytes > max {
            return err(
                ErrorKind::TooLarge,
                format!("`{path}` has more entries than a listing holds ({MAX_ENTRIES}, or max_response {max} bytes)"),
            );
        }
        let kind = match entry.file_type() {
            rustix::fs::FileType::RegularFile => "file",
            rustix::fs::FileType::Directory => "dir",
            rustix::fs::FileType::Symlink => "symlink",
            _ => "other",
        };
        entries.push(Value::map([
            ("name", Value::String(name)),
            ("type", Value::String(kind.into())),
        ]));
    }
    entries.sort_by(|a, b| {
        let n = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
        n(a).cmp(&n(b))
    });
    Ok(Value::map([("entries", Value::List(entries))]))
}

fn write(reach: &Reach, path: &str, content: &[u8]) -> Result<Value, ToolError> {
    // Checked before anything is created or truncated: the file if it exists, else the
    // directory it would be made in.
    let probe = OFlags::PATH | OFlags::NOFOLLOW;
    match open(reach, path, true, probe, Mode::empty()) {
        Ok((fd, _)) => check(&fd, reach, 2, path)?,
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
        }
    }
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
    // The file belongs to whoever owns the directory it was resolved beneath.
    if let Ok(st) = rustix::fs::fstat(&dir) {
        let _ = rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        );
    }
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    f.write_all(content)
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("write `{path}`: {e}")))?;
    Ok(Value::map([("bytes", Value::Int(content.len() as i64))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn reach(dir: &Path) -> Reach {
        Reach {
            workspace: Some(dir.join("ws")),
            read: vec![dir.join("ro")],
            write: vec![],
            who: None,
        }
    }

    /// The agent's uid: what its own process could not read or write, a tool does not either.
    #[test]
    fn the_agents_uid_bounds_what_a_tool_touches() {
        use std::os::unix::fs::PermissionsExt;
        let t = setup();
        let ro = t.path().join("ro");
        std::fs::write(ro.join("secret"), "s").unwrap();
        std::fs::set_permissions(ro.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(ro.join("public"), "p").unwrap();
        std::fs::set_permissions(ro.join("public"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let mut r = reach(t.path());
        r.write = vec![ro.clone()];
        r.who = Some((64999, 64999));
        let secret = ro.join("secret");
        let public = ro.join("public");
        assert_eq!(
            kind(read(&r, secret.to_str().unwrap(), 1 << 20)),
            ErrorKind::PermissionDenied
        );
        assert_eq!(content(read(&r, public.to_str().unwrap(), 1 << 20)), "p");
        // Not written (nor truncated): the file is root's, 0644.
        let w = write(&r, public.to_str().unwrap(), b"x");
        assert_eq!(kind(w), ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read_to_string(&public).unwrap(), "p");
        // Nor created in a directory the agent may not write.
        let new = ro.join("new");
        assert_eq!(
            kind(write(&r, new.to_str().unwrap(), b"x")),
            ErrorKind::PermissionDenied
        );
        assert!(!new.exists());
        // Host root (no uid of its own) is not checked.
        r.who = None;
        assert_eq!(content(read(&r, secret.to_str().unwrap(), 1 << 20)), "s");
    }

    fn setup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("ws")).unwrap();
        std::fs::create_dir(d.path().join("ro")).unwrap();
        std::fs::write(d.path().join("secret"), "s3cret").unwrap();
        std::fs::write(d.path().join("ws/a.txt"), "hello").unwrap();
        std::fs::write(d.path().join("ro/b.txt"), "ro").unwrap();
        symlink(d.path().join("secret"), d.path().join("ws/abs-link")).unwrap();
        symlink("../secret", d.path().join("ws/rel-link")).unwrap();
        symlink("a.txt", d.path().join("ws/inner-link")).unwrap();
        d
    }

    fn content(v: Result<Value, ToolError>) -> String {
        v.unwrap()
            .get("content")
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    fn kind(v: Result<Value, ToolError>) -> ErrorKind {
        v.unwrap_err().kind
    }

    #[test]
    fn reads_beneath_the_workspace_and_granted_paths() {
        let d = setup();
        let r = reach(d.path());
        assert_eq!(content(read(&r, "a.txt", 1 << 20)), "hello");
        assert_eq!(content(read(&r, "inner-link", 1 << 20)), "hello");
        let granted = d.path().join("ro/b.txt");
        assert_eq!(content(read(&r, granted.to_str().unwrap(), 1 << 20)), "ro");
        let abs = d.path().join("ws/a.txt");
        assert_eq!(content(read(&r, abs.to_str().unwrap(), 1 << 20)), "hello");
    }

    #[test]
    fn escapes_are_refused() {
        let d = setup();
        let r = reach(d.path());
        let denied = ErrorKind::PermissionDenied;
        assert_eq!(kind(read(&r, "../secret", 1 << 20)), denied);
        assert_eq!(kind(read(&r, "abs-link", 1 << 20)), denied);
        assert_eq!(kind(read(&r, "rel-link", 1 << 20)), denied);
        assert_eq!(
            kind(read(&r, "/proc/self/root/etc/passwd", 1 << 20)),
            denied
        );
        let outside = d.path().join("secret");
        assert_eq!(kind(read(&r, outside.to_str().unwrap(), 1 << 20)), denied);
        let dotdot = format!("{}/ws/../secret", d.path().display());
        assert_eq!(kind(read(&r, &dotdot, 1 << 20)), denied);
        // Read-only grants are not writable.
        let ro = d.path().join("ro/new");
        assert_eq!(kind(write(&r, ro.to_str().unwrap(), b"x")), denied);
        assert_eq!(kind(write(&r, "../escaped", b"x")), denied);
        assert!(!d.path().join("escaped").exists());
    }

    #[test]
    fn big_files_are_refused_unread_and_writes_land_in_the_workspace() {
        let d = setup();
        let r = reach(d.path());
        std::fs::write(d.path().join("ws/big"), vec![b'x'; 5000]).unwrap();
        assert_eq!(kind(read(&r, "big", 4096)), ErrorKind::TooLarge);
        let v = write(&r, "new.txt", b"abc").unwrap();
        assert_eq!(v.get("bytes").and_then(Value::as_i64), Some(3));
        assert_eq!(std::fs::read(d.path().join("ws/new.txt")).unwrap(), b"abc");
        let l = list(&r, ".", 1 << 20).unwrap();
        let Some(Value::List(entries)) = l.get("entries") else {
            panic!()
        };
        assert_eq!(entries.len(), 6, "{entries:?}");
    }
}
