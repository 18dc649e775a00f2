//! Who made a directory: the supervisor's pid and start time, carried in the names of the
//! directories it makes for attempts (cgroup leaves, workspaces), and whether it is gone.

use std::{fs, io};

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
            start: fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| parse_stat_start_time(&s))
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
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(e) => e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH),
            Ok(stat) => parse_stat_start_time(&stat).is_some_and(|start| start != self.start),
        }
    }
}

/// Field 22 (`starttime`, in clock ticks since boot) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub(crate) fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3; field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}
