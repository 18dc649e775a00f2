//! Who made a directory: the supervisor's pid and start time, carried in the names of the
//! directories it makes for attempts (cgroup leaves, workspaces), and whether it is gone.
//!
//! The start time is field 22 of `/proc/<pid>/stat`, read with the `procfs` crate: the command
//! name before it may hold spaces and parentheses, which its parser handles (fields counted
//! after the last `)`), and it maps a process that vanished while being read (`ESRCH`) to
//! "not found" as a missing directory is.

/// The supervisor process that owns attempt directories (cgroup leaves, workspaces): encoded in
/// their names, so that a later supervisor can tell a dead one's leftovers from a live one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    pub(crate) start: u64,
}

impl Owner {
    /// This process (start time 0 if `/proc/self/stat` cannot be read).
    pub(crate) fn current() -> Owner {
        Owner {
            pid: std::process::id(),
            start: procfs::process::Process::myself()
                .and_then(|p| p.stat())
                .map(|stat| stat.starttime)
                .unwrap_or(0),
        }
    }

    /// `<pid>-<start>`: how names carry their owner.
    pub(crate) fn tag(self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    /// The owner of a name `<prefix><pid>-<start>-<rest>`.
    pub(crate) fn parse(name: &str, prefix: &str) -> Option<Owner> {
        let rest = name.strip_prefix(prefix)?;
        let mut parts = rest.splitn(3, '-');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(Owner { pid, start })
    }

    /// Whether the supervisor that made a leaf is gone: its `/proc/<pid>/stat` is missing, or
    /// the pid now belongs to a process started at another time. Unreadable or unparsable stat
    /// files count as alive (never kill what we are not sure about).
    pub(crate) fn is_gone(self) -> bool {
        // No pid is that high: nothing can be there.
        let Ok(pid) = i32::try_from(self.pid) else {
            return true;
        };
        match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
            Err(procfs::ProcError::NotFound(_)) => true,
            Err(_) => false,
            Ok(stat) => stat.starttime != self.start,
        }
    }
}

/// The start time (field 22, clock ticks since boot) in the text of a `/proc/<pid>/stat`.
#[cfg(test)]
pub(crate) fn parse_stat_start_time(stat: &str) -> Option<u64> {
    use procfs::FromRead;
    procfs::process::Stat::from_read(stat.as_bytes())
        .ok()
        .map(|s| s.starttime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    #[test]
    fn stat_start_time_counts_fields_after_the_last_paren() {
        let stat = "6917 (c) a) t) R 6912 6912 5086 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 57213 \
                    3133440 379 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 \
                    0 0 0";
        assert_eq!(parse_stat_start_time(stat), Some(57213));
        assert_eq!(parse_stat_start_time("12 (x) R 1 2"), None);
        assert_eq!(parse_stat_start_time("no paren"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_start_time(&own).is_some());
    }

    #[test]
    fn owners_are_gone_when_dead_or_restarted() {
        let start = parse_stat_start_time(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        let me = std::process::id();
        assert!(!Owner { pid: me, start }.is_gone());
        assert!(Owner {
            pid: me,
            start: start + 1
        }
        .is_gone());
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        assert!(Owner {
            pid: dead_pid,
            start: 1
        }
        .is_gone());
    }
}
