//! The file tools' confinement, their answers, and what is done inline.

use super::*;
use std::os::unix::fs::symlink;

fn reach(dir: &Path) -> Reach<'static> {
    Reach {
        workspace: Some(Cow::Owned(dir.join("ws"))),
        dir: None,
        readonly: Cow::Owned(vec![dir.join("ro")]),
        writable: Cow::Owned(vec![]),
        who: None,
    }
}

/// `reach`, its workspace opened once, as an attempt gives it.
fn opened(dir: &Path) -> Reach<'static> {
    let ws = rustix::fs::open(
        dir.join("ws"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    Reach {
        dir: Some(Arc::new(ws)),
        ..reach(dir)
    }
}

fn done(r: Result<Value, Run>) -> Result<Value, ToolError> {
    r.map_err(|e| match e {
        Run::Failed(e) => e,
        Run::Larger => panic!("deferred outside inline mode"),
    })
}

fn read(r: &Reach, path: &str, max: u64) -> Result<Value, ToolError> {
    done(super::read(r, path, max, false))
}

fn list(r: &Reach, path: &str, max: u64) -> Result<Value, ToolError> {
    done(super::list(r, path, max, false))
}

/// The agent's uid: what its own process could not read or write, a tool does not either.
#[test]
fn the_agents_uid_bounds_what_a_tool_touches() {
    use std::os::unix::fs::PermissionsExt;
    let t = setup();
    let ro = t.path().join("ro");
    std::fs::write(ro.join("secret"), "s").unwrap();
    std::fs::set_permissions(ro.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(ro.join("public"), "p").unwrap();
    std::fs::set_permissions(ro.join("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut r = reach(t.path());
    r.writable = Cow::Owned(vec![ro.clone()]);
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

/// Beneath the workspace opened once: the same answers, the same escapes refused.
#[test]
fn an_opened_workspace_confines_as_its_path_does() {
    let d = setup();
    let r = opened(d.path());
    let denied = ErrorKind::PermissionDenied;
    assert_eq!(content(read(&r, "a.txt", 1 << 20)), "hello");
    let abs = d.path().join("ws/a.txt");
    assert_eq!(content(read(&r, abs.to_str().unwrap(), 1 << 20)), "hello");
    for escape in [
        "../secret",
        "abs-link",
        "rel-link",
        "/proc/self/root/etc/passwd",
    ] {
        assert_eq!(kind(read(&r, escape, 1 << 20)), denied, "{escape}");
    }
    let dotdot = format!("{}/ws/../secret", d.path().display());
    assert_eq!(kind(read(&r, &dotdot, 1 << 20)), denied);
    assert_eq!(kind(write(&r, "../escaped", b"x")), denied);
    assert!(!d.path().join("escaped").exists());
    let v = write(&r, "new.txt", b"abc").unwrap();
    assert_eq!(v.get("bytes").and_then(Value::as_i64), Some(3));
    assert_eq!(std::fs::read(d.path().join("ws/new.txt")).unwrap(), b"abc");
}

/// Small work is done inline; larger work is left, untouched, for the blocking pool.
#[test]
fn only_small_work_is_done_inline() {
    let d = setup();
    let r = opened(d.path());
    let big = vec![b'x'; INLINE_BYTES as usize + 1];
    std::fs::write(d.path().join("ws/big"), &big).unwrap();
    let args = |path: &str| Value::map([("path", Value::from(path))]);
    let small = run_inline(Builtin::FsRead, &args("a.txt"), &r, 1 << 20);
    assert_eq!(
        content(small.expect("a small file is read inline")),
        "hello"
    );
    assert!(run_inline(Builtin::FsRead, &args("big"), &r, 1 << 20).is_none());
    let whole = run(Builtin::FsRead, &args("big"), &r, 1 << 20).unwrap();
    assert_eq!(
        whole.get("content").and_then(Value::as_str).map(str::len),
        Some(big.len())
    );
    // Refusals are given inline, whatever the size.
    let escape = run_inline(Builtin::FsRead, &args("../secret"), &r, 1 << 20);
    assert_eq!(
        kind(escape.expect("refused inline")),
        ErrorKind::PermissionDenied
    );
    // A large write is left before the file is created or truncated.
    let write_args = Value::map([
        ("path", Value::from("a.txt")),
        ("content", Value::Bytes(big.clone())),
    ]);
    assert!(run_inline(Builtin::FsWrite, &write_args, &r, 1 << 20).is_none());
    assert_eq!(
        std::fs::read_to_string(d.path().join("ws/a.txt")).unwrap(),
        "hello"
    );
    // A small directory is listed inline.
    let listed = run_inline(Builtin::FsList, &args("."), &r, 1 << 20);
    assert!(listed.expect("listed inline").is_ok());
}

/// What a file system says of a size is not trusted inline: a file of `/proc` says 0 bytes, a
/// directory of many short names may say little; past the inline bounds the work is left.
#[test]
fn sizes_that_understate_do_not_keep_large_work_inline() {
    let d = setup();
    let mut r = reach(d.path());
    r.readonly = Cow::Owned(vec![PathBuf::from("/proc")]);
    let args = |path: &str| Value::map([("path", Value::from(path))]);
    // More entries than are listed inline, in a directory the file system may size small.
    let many = d.path().join("ws/many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..INLINE_ENTRIES + 1 {
        std::fs::write(many.join(format!("{i}")), "").unwrap();
    }
    assert!(run_inline(Builtin::FsList, &args("many"), &r, 1 << 22).is_none());
    let whole = run(Builtin::FsList, &args("many"), &r, 1 << 22).unwrap();
    let Some(Value::List(entries)) = whole.get("entries") else {
        panic!("{whole:?}")
    };
    assert_eq!(entries.len(), INLINE_ENTRIES + 1);
    // A file that says 0 bytes and holds more than INLINE_BYTES (a line per field of each of
    // this process's mappings).
    let smaps = Path::new("/proc/self/smaps");
    assert_eq!(std::fs::metadata(smaps).unwrap().len(), 0);
    assert!(std::fs::read(smaps).unwrap().len() as u64 > INLINE_BYTES);
    assert!(run_inline(Builtin::FsRead, &args("/proc/self/smaps"), &r, 1 << 22).is_none());
    let whole = run(Builtin::FsRead, &args("/proc/self/smaps"), &r, 1 << 22).unwrap();
    let read = whole
        .get("content")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    assert!(read as u64 > INLINE_BYTES, "{read}");
    let small = run_inline(Builtin::FsRead, &args("/proc/self/comm"), &r, 1 << 22);
    assert!(!content(small.expect("a short /proc file is read inline")).is_empty());
}
