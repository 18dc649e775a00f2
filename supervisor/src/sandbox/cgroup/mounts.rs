//! The cgroup mounts and the supervisor's own cgroups, from `/proc/self/mountinfo` and
//! `/proc/self/cgroup` (split into fields by `procfs`; see the module doc of `cgroup`).

use std::path::PathBuf;

/// One cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point.
    pub root: String,
    /// `true` for `cgroup2`, `false` for `cgroup` (v1).
    pub v2: bool,
    /// Super options: for v1 the controllers (`memory`, `cpu`, `name=systemd`, ...).
    pub options: Vec<String>,
}

impl CgroupMount {
    /// The directory of `own` (a path from `/proc/self/cgroup`) under this mount, when the
    /// mount shows it.
    pub fn dir_of(&self, own: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rel = own.strip_prefix(root)?;
        if !(rel.is_empty() || rel.starts_with('/')) {
            return None;
        }
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }
}

/// Cgroup mounts in `/proc/self/mountinfo` (fields: id parent dev root mountpoint options
/// [optional...] - fstype source superoptions), split by `procfs`; a line it cannot read is
/// skipped. `procfs` leaves the kernel's octal escapes in paths: they are undone here.
pub(super) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let m = procfs::process::MountInfo::from_line(line).ok()?;
            let v2 = match m.fs_type.as_str() {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let mut options: Vec<String> = m
                .super_options
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect();
            options.sort();
            Some(CgroupMount {
                mount_point: PathBuf::from(unescape_mountinfo(&m.mount_point.to_string_lossy())),
                root: unescape_mountinfo(&m.root),
                v2,
                options,
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
pub(super) fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnCgroup {
    /// `0` for the unified hierarchy.
    pub hierarchy: u32,
    /// Controllers of a v1 hierarchy (`cpu,cpuacct` when co-mounted); empty for v2.
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the cgroup namespace root.
    pub path: String,
}

/// The lines of `/proc/self/cgroup`, parsed by `procfs`; a line it cannot read is skipped.
pub(super) fn parse_proc_cgroup(text: &str) -> Vec<OwnCgroup> {
    use procfs::FromBufRead;
    text.lines()
        .filter_map(|line| procfs::ProcessCGroups::from_buf_read(line.as_bytes()).ok())
        .flat_map(|groups| groups.0)
        .map(|g| OwnCgroup {
            hierarchy: g.hierarchy,
            controllers: g.controllers,
            path: g.pathname,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_cgroup_mounts_and_own_dirs() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:39 /docker/abc /mnt/my\\040cg rw - cgroup cgroup rw,pids
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert!(!mounts[1].v2 && mounts[1].options.contains(&"memory".to_string()));
        assert!(mounts[2].v2);
        assert_eq!(mounts[3].mount_point, PathBuf::from("/mnt/my cg"));
        assert_eq!(mounts[3].root, "/docker/abc");

        assert_eq!(
            mounts[1].dir_of("/process_api/x"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/x"))
        );
        assert_eq!(
            mounts[2].dir_of("/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mounts[3].dir_of("/docker/abc/sub"),
            Some(PathBuf::from("/mnt/my cg/sub"))
        );
        assert_eq!(
            mounts[3].dir_of("/docker/abc"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(mounts[3].dir_of("/docker/abcdef"), None);
        assert_eq!(mounts[3].dir_of("/other"), None);
    }

    #[test]
    fn proc_cgroup_lines() {
        let own = parse_proc_cgroup(
            "9:name=systemd:/\n2:cpu,cpuacct:/a\n4:memory:/process_api/x\n0::/\n",
        );
        assert_eq!(own.len(), 4);
        assert_eq!(own[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(own[1].path, "/a");
        assert_eq!(own[3].hierarchy, 0);
        assert!(own[3].controllers.is_empty());
    }
}
