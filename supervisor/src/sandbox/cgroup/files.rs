//! File helpers shared by the backends: cgroupfs reads and single-`write(2)` writes, directory
//! creation and removal (retried while the kernel still reports a cgroup busy), membership, and
//! killing until empty.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{CgroupError, KILL_DEADLINE, LEAF_PREFIX, RMDIR_DEADLINE};

/// Whether the directory can be written to (`EROFS` on read-only mounts, `EACCES` when not
/// delegated to us).
pub(super) fn writable(dir: &Path) -> Result<(), String> {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{} is not writable ({e})", dir.display()))
}

pub(super) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `value` in a single `write(2)`, as cgroup files expect.
pub(super) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| CgroupError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(value.as_bytes())
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// `mkdir`, treating "already exists" as success.
pub(super) fn mkdir_existing_ok(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::CreateDir {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `mkdir -p`-like creation of `<shared>/<leaf>` where `shared` is the `corral` directory that
/// other supervisors may remove when they see it empty: retried when it vanishes in between.
pub(super) fn mkdir_leaf(shared: &Path, leaf: &str) -> Result<PathBuf, CgroupError> {
    let dir = shared.join(leaf);
    let mut tries = 0;
    loop {
        mkdir_existing_ok(shared)?;
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(source) => return Err(CgroupError::CreateDir { path: dir, source }),
        }
    }
}

/// Remove the shared `corral` directory if nobody uses it any more.
pub(super) fn rmdir_shared_if_empty(shared: &Path) {
    if let Err(e) = fs::remove_dir(shared) {
        let benign = matches!(
            e.raw_os_error(),
            Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT | libc::EEXIST)
        );
        if !benign {
            tracing::debug!(
                path = %shared.display(),
                error = %e,
                "cannot remove shared cgroup dir"
            );
        }
    }
}

/// `rmdir` a cgroup directory and any sub-cgroups the agent made in it, deepest first,
/// retrying for a short while on `EBUSY` (exiting tasks are still being released). A missing
/// directory is fine.
pub(super) fn rmdir_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in sub_dirs(dir)? {
        rmdir_tree(&child)?;
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < RMDIR_DEADLINE =>
            {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::RemoveDir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Sub-directories of a cgroup directory (sub-cgroups). Missing directory: none.
pub(super) fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::ListDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::ListDir {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Names of our leaves (`corral-*` directories) in a shared `corral` directory.
pub(super) fn leaf_names_in(shared: &Path, into: &mut BTreeSet<String>) -> Result<(), CgroupError> {
    for dir in sub_dirs(shared)? {
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            if name.starts_with(LEAF_PREFIX) {
                into.insert(name.to_string());
            }
        }
    }
    Ok(())
}

/// Add the pids in `cgroup.procs` of `dir` to `into`. `false`: there is no such directory.
fn read_procs(dir: &Path, into: &mut BTreeSet<u32>) -> Result<bool, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let pid = line.trim().parse().map_err(|_| CgroupError::Parse {
            path: path.clone(),
            detail: format!("not a pid: {line:?}"),
        })?;
        into.insert(pid);
    }
    Ok(true)
}

/// Whether the cgroup directory `dir` has sub-cgroups: its link count is 2 + their number
/// (kernfs keeps it so), so one `stat` tells, instead of listing the controller's files. A
/// directory that cannot be read is taken to have some (the caller then lists it).
fn has_sub_cgroups(dir: &Path) -> bool {
    !fs::metadata(dir).is_ok_and(|m| m.nlink() <= 2)
}

/// Pids in `cgroup.procs` of `dir` and of its sub-cgroups. A missing directory has none.
pub(super) fn procs_recursive(dir: &Path, into: &mut BTreeSet<u32>) -> Result<(), CgroupError> {
    if !read_procs(dir, into)? || !has_sub_cgroups(dir) {
        return Ok(());
    }
    for child in sub_dirs(dir)? {
        procs_recursive(&child, into)?;
    }
    Ok(())
}

/// Members of the given cgroups when none of them has a sub-cgroup (`None` as soon as one
/// has, or may have: listing those is left to a thread that may take its time). One `stat`
/// and one read per directory, whatever the agent made.
pub(super) fn flat_members(dirs: &[&Path]) -> Result<Option<BTreeSet<u32>>, CgroupError> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        if has_sub_cgroups(dir) {
            return Ok(None);
        }
        read_procs(dir, &mut pids)?;
    }
    Ok(Some(pids))
}

/// Members of all the given cgroups (and their sub-cgroups).
pub(super) fn members(dirs: &[&Path]) -> Result<BTreeSet<u32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        procs_recursive(dir, &mut pids)?;
    }
    Ok(pids)
}

/// SIGKILL one member; a process that is already gone is not an error.
pub(super) fn sigkill(pid: u32, dir: &Path) -> Result<bool, CgroupError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(false);
    };
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(CgroupError::Kill {
            pid,
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// SIGKILL every member of `dirs` once. Returns the pids signalled.
pub(super) fn kill_pass(dirs: &[&Path]) -> Result<BTreeSet<u32>, CgroupError> {
    let mut killed = BTreeSet::new();
    for pid in members(dirs)? {
        if sigkill(pid, dirs[0])? {
            killed.insert(pid);
        }
    }
    Ok(killed)
}

/// Kill members of `dirs` until none is listed, for at most [`KILL_DEADLINE`]. Pids signalled
/// are added to `killed`.
pub(super) fn kill_until_empty(
    dirs: &[&Path],
    killed: &mut BTreeSet<u32>,
) -> Result<(), CgroupError> {
    if dirs.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let left = members(dirs)?;
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= KILL_DEADLINE {
            return Err(CgroupError::NotEmpty {
                path: dirs[0].to_path_buf(),
                pids: left.into_iter().collect(),
                waited: started.elapsed(),
            });
        }
        for pid in left {
            if sigkill(pid, dirs[0])? {
                killed.insert(pid);
            }
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A `key value` line of a flat-keyed cgroup file (`memory.events`, `memory.oom_control`,
/// `pids.events`, `cpu.stat`). Missing file or key: `None`.
pub(super) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A file holding a single number. Missing file: `None`.
pub(super) fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
