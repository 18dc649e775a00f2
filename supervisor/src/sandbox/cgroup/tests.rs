//! Parsers are tested on text; the backends on the real machine. Tests that need a writable
//! cgroup print `skipped: <why>` and pass when there is none, unless
//! `CORRAL_REQUIRE_ISOLATION=1`, which turns the skip into a failure. (The parsers' own tests
//! are beside them, in `mounts.rs` and `sandbox::owner`.) One file of about 600 lines: the
//! real-cgroup tests share its helpers (finding a usable backend, reaping their children).

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Instant;

use super::*;

const MIB: u64 = 1 << 20;

/// A unique attempt name within this test process (the leaf prefix adds pid and start time).
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // The pid too: the fake owners of the sweep test share a prefix across test processes.
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A detected manager that enforces `need`, or `None` after printing why the test is skipped.
fn usable(need: &[&str]) -> Option<Cgroups> {
    let cgroups = Cgroups::detect();
    let wanted = CgroupLimits {
        memory: need.contains(&"memory").then_some(64 * MIB),
        pids: need.contains(&"pids").then_some(64),
        cpu_quota: need.contains(&"cpu_quota").then_some(1.0),
    };
    let why = if cgroups.backend() == Backend::None {
        let all = CgroupLimits {
            memory: Some(64 * MIB),
            pids: Some(64),
            cpu_quota: Some(1.0),
        };
        Some(format!(
            "no writable cgroup: {}",
            cgroups.report(&all).join("; ")
        ))
    } else {
        let missing = cgroups.unenforceable(&wanted);
        (!missing.is_empty()).then(|| {
            format!(
                "cannot enforce {missing:?}: {}",
                cgroups.report(&wanted).join("; ")
            )
        })
    };
    match why {
        None => Some(cgroups),
        Some(why) => {
            if std::env::var("CORRAL_REQUIRE_ISOLATION").as_deref() == Ok("1") {
                panic!("CORRAL_REQUIRE_ISOLATION=1 but {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A child killed and reaped when the test ends, whatever happens.
struct Reaped(Child);

impl Reaped {
    fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(cmd.spawn().expect("spawn test child"))
    }

    fn id(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("wait test child")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper() -> Reaped {
    Reaped::spawn(Command::new("sleep").arg("30"))
}

/// Wait up to `secs` for `cond`.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    cond()
}

fn read_trim(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Parsers and pure helpers.

#[test]
fn leaf_names_encode_the_owner_and_are_safe() {
    let owner = Owner { pid: 42, start: 7 };
    let leaf = leaf_name(owner, "agent/one-run 3-1");
    assert_eq!(leaf, "corral-42-7-agent_one-run_3-1");
    assert_eq!(parse_leaf_owner(&leaf), Some(owner));
    assert_eq!(leaf_name(owner, ".."), "corral-42-7-..");
    assert_eq!(leaf_name(owner, &"x".repeat(400)).len(), NAME_MAX);
    assert_eq!(parse_leaf_owner("corral"), None);
    assert_eq!(parse_leaf_owner("corral-x-1-a"), None);
    assert_eq!(parse_leaf_owner("corral-1-2"), None);
    assert_eq!(parse_leaf_owner("supervisor"), None);
}

#[test]
fn cpu_quota_is_a_fraction_of_the_period() {
    assert_eq!(cpu_quota_us(0.5), 50_000);
    assert_eq!(cpu_quota_us(2.0), 200_000);
    assert_eq!(cpu_quota_us(0.0001), MIN_CPU_QUOTA_US);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let limits = CgroupLimits {
            cpu_quota: Some(bad),
            ..CgroupLimits::default()
        };
        assert!(matches!(
            validate(&limits),
            Err(CgroupError::InvalidLimit {
                limit: "cpu_quota",
                ..
            })
        ));
    }
}

#[test]
fn handles_are_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Cgroups>();
    shareable::<AgentCgroup>();
    shareable::<CgroupError>();
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let e = CgroupError::Write {
        path: PathBuf::from("/sys/fs/cgroup/pids/x/pids.max"),
        value: "10".to_string(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    };
    let text = e.to_string();
    assert!(
        text.starts_with("write \"10\" to /sys/fs/cgroup/pids/x/pids.max: "),
        "{text}"
    );
    let e = CgroupError::CreateDir {
        path: PathBuf::from("/a/b"),
        source: io::Error::from_raw_os_error(libc::EACCES),
    };
    assert!(e.to_string().starts_with("create dir /a/b: "));
}

#[test]
fn disabled_backend_enforces_nothing_and_says_why() {
    let cgroups = Cgroups::disabled("cgroups switched off");
    assert_eq!(cgroups.backend(), Backend::None);
    let wanted = CgroupLimits {
        memory: Some(MIB),
        pids: None,
        cpu_quota: Some(0.5),
    };
    assert_eq!(cgroups.unenforceable(&wanted), ["memory", "cpu_quota"]);
    let report = cgroups.report(&wanted);
    assert_eq!(report.len(), 3);
    assert_eq!(report[0], "memory: not enforced: cgroups switched off");
    assert!(report[1].starts_with("pids: no limit set"), "{}", report[1]);
    assert!(cgroups.sweep_stale().unwrap() == 0);

    let agent = cgroups.create("x", &wanted).unwrap();
    assert!(agent.paths().is_empty());
    assert!(agent.attach_fds().unwrap().is_empty());
    agent.attach(std::process::id()).unwrap();
    assert!(agent.pids().unwrap().is_empty());
    assert_eq!(agent.kill_all().unwrap(), 0);
    assert_eq!(agent.oom_kills(), 0);
    assert_eq!(agent.pids_limit_hits(), 0);
    assert_eq!(agent.memory_peak_bytes(), None);
    agent.remove().unwrap();
}

#[test]
fn detection_reports_every_limit() {
    let cgroups = Cgroups::detect();
    let wanted = CgroupLimits {
        memory: Some(64 * MIB),
        pids: Some(64),
        cpu_quota: Some(0.5),
    };
    let report = cgroups.report(&wanted);
    eprintln!("backend: {}", cgroups.backend());
    for line in &report {
        eprintln!("  {line}");
    }
    assert_eq!(report.len(), 3);
    for (line, name) in report.iter().zip(["memory: ", "pids: ", "cpu_quota: "]) {
        assert!(line.starts_with(name), "{line}");
    }
    for name in cgroups.unenforceable(&wanted) {
        let line = report.iter().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains("not enforced: "), "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Real cgroups.

/// The value of the first `file` found in the attempt's directories.
fn limit_file(agent: &AgentCgroup, file: &str) -> Option<String> {
    agent
        .paths()
        .iter()
        .map(|p| p.join(file))
        .find(|p| p.exists())
        .map(|p| read_trim(&p))
}

#[test]
fn limits_attach_kill_and_remove() {
    let Some(cgroups) = usable(&["memory", "pids"]) else {
        return;
    };
    let limits = CgroupLimits {
        memory: Some(64 * MIB),
        pids: Some(32),
        cpu_quota: Some(0.5),
    };
    let agent = cgroups.create(&unique("life"), &limits).unwrap();
    let paths = agent.paths();
    assert!(!paths.is_empty());
    let prefix = format!("corral-{}-", std::process::id());
    for p in &paths {
        assert!(p.is_dir(), "{}", p.display());
        assert!(p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&prefix));
        assert_eq!(p.parent().unwrap().file_name().unwrap(), CORRAL_DIR);
    }

    match cgroups.backend() {
        Backend::V1 => {
            let bytes = (64 * MIB).to_string();
            assert_eq!(limit_file(&agent, "memory.limit_in_bytes").unwrap(), bytes);
            if let Some(memsw) = limit_file(&agent, "memory.memsw.limit_in_bytes") {
                assert_eq!(memsw, bytes);
            }
            assert_eq!(limit_file(&agent, "pids.max").unwrap(), "32");
            if cgroups.unenforceable(&limits).is_empty() {
                assert_eq!(limit_file(&agent, "cpu.cfs_quota_us").unwrap(), "50000");
                assert_eq!(limit_file(&agent, "cpu.cfs_period_us").unwrap(), "100000");
            }
        }
        Backend::V2 => {
            assert_eq!(
                limit_file(&agent, "memory.max").unwrap(),
                (64 * MIB).to_string()
            );
            assert_eq!(limit_file(&agent, "pids.max").unwrap(), "32");
            if let Some(swap) = limit_file(&agent, "memory.swap.max") {
                assert_eq!(swap, "0");
            }
            if cgroups.unenforceable(&limits).is_empty() {
                assert_eq!(limit_file(&agent, "cpu.max").unwrap(), "50000 100000");
            }
        }
        Backend::None => unreachable!(),
    }

    let mut child = sleeper();
    agent.attach(child.id()).unwrap();
    assert_eq!(agent.pids().unwrap(), [child.id()]);
    let own = fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(own.contains(agent.name()), "{own}");

    assert_eq!(agent.kill_all().unwrap(), 1);
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    assert!(agent.pids().unwrap().is_empty());
    assert_eq!(agent.kill_all().unwrap(), 0);
    assert_eq!(agent.oom_kills(), 0);
    assert_eq!(agent.pids_limit_hits(), 0);

    agent.remove().unwrap();
    agent.remove().unwrap();
    for p in &paths {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    // Counters survive removal (read just before).
    assert!(agent.memory_peak_bytes().is_some());
}

#[test]
fn attach_fds_let_a_child_attach_itself() {
    let Some(cgroups) = usable(&[]) else {
        return;
    };
    let agent = cgroups
        .create(&unique("fds"), &CgroupLimits::default())
        .unwrap();
    let fds = agent.attach_fds().unwrap();
    assert_eq!(fds.len(), agent.paths().len());
    for (fd, dir) in fds.iter().zip(agent.paths()) {
        let raw = fd.as_raw_fd();
        let flags = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "fd {raw} is not close-on-exec");
        let mode = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(mode & libc::O_ACCMODE, libc::O_WRONLY);
        let target = fs::read_link(format!("/proc/self/fd/{raw}")).unwrap();
        let file = if cgroups.backend() == Backend::V1 {
            "tasks" // v1: the calling thread moves without the thread-group lock
        } else {
            "cgroup.procs"
        };
        assert_eq!(target, dir.join(file));
    }
    // The spawn path writes "0" into each fd before exec. Without `unsafe` pre_exec here, the
    // child reaches the same open files through /proc/<test>/fd/<n>.
    let me = std::process::id();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"for f in "$@"; do echo 0 > "$f" || exit 3; done; exec sleep 30"#)
        .arg("sh");
    for fd in &fds {
        cmd.arg(format!("/proc/{me}/fd/{}", fd.as_raw_fd()));
    }
    let mut child = Reaped::spawn(&mut cmd);
    // Every hierarchy ends up holding it (the child writes them one after the other).
    let everywhere = || {
        agent.paths().iter().all(|dir| {
            fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim() == child.id().to_string()
        })
    };
    assert!(
        eventually(5, everywhere),
        "child never attached: {:?}",
        agent.pids()
    );
    assert_eq!(agent.pids().unwrap(), [child.id()]);
    drop(fds);
    assert_eq!(agent.kill_all().unwrap(), 1);
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    agent.remove().unwrap();
}

#[test]
fn kill_all_reaches_grandchildren_and_pids_limit_is_counted() {
    let Some(cgroups) = usable(&["pids"]) else {
        return;
    };
    let limits = CgroupLimits {
        pids: Some(4),
        ..CgroupLimits::default()
    };
    let agent = cgroups.create(&unique("pids"), &limits).unwrap();
    let mut child = Reaped::spawn(
        Command::new("sh")
            .arg("-c")
            .arg("read go; for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait")
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    agent.attach(child.id()).unwrap();
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(
        eventually(5, || agent.pids_limit_hits() >= 1),
        "no fork refused: {:?}",
        agent.pids()
    );
    assert!(agent.pids().unwrap().len() <= 4);
    let killed = agent.kill_all().unwrap();
    assert!(killed >= 1, "killed {killed}");
    assert!(agent.pids().unwrap().is_empty());
    child.wait();
    agent.remove().unwrap();
    assert!(agent.pids_limit_hits() >= 1, "counter lost at removal");
}

/// A process the agent moved into a sub-cgroup of its own is listed and killed with the rest
/// (a leaf's sub-cgroups are found by its link count, one `stat` instead of a listing).
#[test]
fn kill_all_listed_reaches_a_sub_cgroup() {
    let Some(cgroups) = usable(&["pids"]) else {
        return;
    };
    let agent = cgroups
        .create(&unique("sub"), &CgroupLimits::default())
        .unwrap();
    let (top, deep) = (sleeper(), sleeper());
    agent.attach(top.id()).unwrap();
    agent.attach(deep.id()).unwrap();
    // Moved, in every hierarchy, into a sub-cgroup `inner` of the agent's leaf.
    for dir in agent.paths() {
        let inner = dir.join("inner");
        fs::create_dir(&inner).unwrap();
        fs::write(inner.join("cgroup.procs"), deep.id().to_string()).unwrap();
    }
    let mut both = [top.id(), deep.id()];
    both.sort_unstable();
    assert_eq!(agent.pids().unwrap(), both);
    let (listed, killed) = agent.kill_all_listed();
    assert_eq!(listed, both);
    assert_eq!(killed.unwrap(), 2);
    for mut p in [top, deep] {
        assert_eq!(p.wait().signal(), Some(libc::SIGKILL));
    }
    let (listed, killed) = agent.kill_all_listed();
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(killed.unwrap(), 0);
    agent.remove().unwrap();
}

/// An attempt's end lists the cgroup in place only when every leaf is flat: seen empty when
/// nothing is inside, not when a process is, and not when a sub-cgroup exists, even an empty one
/// (however many an agent made, those are listed off the runtime).
#[test]
fn seen_empty_flat_only_for_flat_empty_leaves() {
    let Some(cgroups) = usable(&["pids"]) else {
        return;
    };
    let agent = cgroups
        .create(&unique("flat"), &CgroupLimits::default())
        .unwrap();
    assert!(agent.seen_empty_flat());
    let mut p = sleeper();
    agent.attach(p.id()).unwrap();
    assert!(!agent.seen_empty_flat());
    let _ = agent.kill_all().unwrap();
    assert_eq!(p.wait().signal(), Some(libc::SIGKILL));
    assert!(agent.seen_empty_flat());
    // An empty sub-cgroup in one hierarchy: not flat.
    let dir = agent.paths()[0].join("inner");
    fs::create_dir(&dir).unwrap();
    assert!(!agent.seen_empty_flat());
    assert!(agent.pids().unwrap().is_empty());
    fs::remove_dir(&dir).unwrap();
    assert!(agent.seen_empty_flat());
    agent.remove().unwrap();
}

/// Whether `pid` has exited and waits to be reaped.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// At an attempt's end (its first process exited, not reaped), a cgroup holding only that
/// zombie is seen empty from its counter; one that still holds a live process is not, and is
/// listed and killed whole.
#[test]
fn only_an_exited_leader_is_seen_from_the_counter() {
    let Some(cgroups) = usable(&["pids"]) else {
        return;
    };
    for live_child in [false, true] {
        let agent = cgroups
            .create(&unique("leader"), &CgroupLimits::default())
            .unwrap();
        // It forks (or not) only once told to, after it is attached: its child is born inside.
        let script = if live_child {
            "read go; sleep 30 & echo $!; exec sleep 30"
        } else {
            "read go; echo; exec sleep 30"
        };
        let mut leader = Reaped::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        agent.attach(leader.id()).unwrap();
        leader.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.0.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let want = if live_child { 2 } else { 1 };
        assert_eq!(agent.pids().unwrap().len(), want);
        // SAFETY: kill(2) of our own child, not reaped yet.
        unsafe { libc::kill(leader.id() as i32, libc::SIGKILL) };
        assert!(eventually(5, || is_zombie(leader.id())));
        assert_eq!(agent.holds_only_exited_leader(), !live_child);
        let (listed, killed) = agent.kill_all_listed();
        if live_child {
            let grandchild: u32 = line.trim().parse().unwrap();
            assert_eq!(listed, [grandchild]);
            assert_eq!(killed.unwrap(), 1);
            assert!(agent.pids().unwrap().is_empty());
        } else {
            assert!(listed.is_empty(), "{listed:?}");
            assert_eq!(killed.unwrap(), 0);
        }
        assert_eq!(leader.wait().signal(), Some(libc::SIGKILL));
        assert!(eventually(5, || agent.remove().is_ok()));
    }
}

#[test]
fn memory_hog_is_oom_killed_and_counted() {
    let Some(cgroups) = usable(&["memory"]) else {
        return;
    };
    let limit = 50 * MIB;
    let limits = CgroupLimits {
        memory: Some(limit),
        ..CgroupLimits::default()
    };
    let agent = cgroups.create(&unique("oom"), &limits).unwrap();
    let mut child = Reaped::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(r#"read go; x=$(head -c 200000000 /dev/zero | tr '\0' x); echo "survived ${#x}""#)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    agent.attach(child.id()).unwrap();
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = child.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        agent.oom_kills() >= 1,
        "no OOM kill recorded; status {status:?}, output {out:?}"
    );
    assert!(!out.contains("survived 200000000"), "{out}");
    let peak = agent.memory_peak_bytes().unwrap();
    for dir in agent.paths() {
        for file in ["memory.oom_control", "memory.events"] {
            if let Ok(text) = fs::read_to_string(dir.join(file)) {
                eprintln!("{}/{file}:\n{text}", dir.display());
            }
        }
    }
    eprintln!(
        "status {status:?}, oom_kills {}, peak {peak}",
        agent.oom_kills()
    );
    assert!(peak > 10 * MIB && peak <= limit + 4 * MIB, "peak {peak}");
    agent.kill_all().unwrap();
    agent.remove().unwrap();
    assert!(agent.oom_kills() >= 1);
}

#[test]
fn dropping_kills_and_removes() {
    let Some(cgroups) = usable(&[]) else {
        return;
    };
    let agent = cgroups
        .create(&unique("drop"), &CgroupLimits::default())
        .unwrap();
    let paths = agent.paths();
    let mut child = sleeper();
    agent.attach(child.id()).unwrap();
    drop(agent);
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    for p in &paths {
        assert!(!p.exists(), "{} still exists", p.display());
    }
}

#[test]
fn create_refuses_a_name_in_use() {
    let Some(cgroups) = usable(&[]) else {
        return;
    };
    let name = unique("twice");
    let first = cgroups.create(&name, &CgroupLimits::default()).unwrap();
    let err = cgroups.create(&name, &CgroupLimits::default()).unwrap_err();
    let exists = matches!(
        &err,
        CgroupError::CreateDir { source, .. } if source.kind() == io::ErrorKind::AlreadyExists
    );
    assert!(exists, "{err}");
    // The failed create must not have removed the first one's directories.
    for p in first.paths() {
        assert!(p.is_dir(), "{}", p.display());
    }
}

#[test]
fn sweep_removes_dead_owners_only() {
    let Some(cgroups) = usable(&[]) else {
        return;
    };
    // A supervisor that crashed: its pid no longer exists.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut crashed = cgroups.clone();
    crashed.owner = Owner {
        pid: dead_pid,
        start: 1,
    };
    let mut orphan = sleeper();
    // Test processes running at the same time sweep too and may take this stale cgroup
    // before the orphan is in it: then make another.
    let mut tries = 0;
    let stale = loop {
        let stale = crashed
            .create(&unique("stale"), &CgroupLimits::default())
            .unwrap();
        match stale.attach(orphan.id()) {
            Ok(()) => break stale,
            Err(e) if tries < 5 => {
                eprintln!("stale cgroup swept by someone else before attach: {e}");
                tries += 1;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let stale_paths = stale.paths();
    std::mem::forget(stale); // nobody left to clean up

    // A live supervisor sharing the parent cgroup (pid 1 stands in for it), and this one.
    let init_start = parse_stat_start_time(&fs::read_to_string("/proc/1/stat").unwrap()).unwrap();
    let mut other = cgroups.clone();
    other.owner = Owner {
        pid: 1,
        start: init_start,
    };
    let live_other = other
        .create(&unique("live"), &CgroupLimits::default())
        .unwrap();
    let mine = cgroups
        .create(&unique("mine"), &CgroupLimits::default())
        .unwrap();
    let mut my_child = sleeper();
    mine.attach(my_child.id()).unwrap();

    let swept = cgroups.sweep_stale().unwrap();
    for p in &stale_paths {
        assert!(!p.exists(), "stale {} still exists", p.display());
    }
    // Another test binary may sweep too; then it counted ours.
    eprintln!("swept {swept}");
    assert_eq!(orphan.wait().signal(), Some(libc::SIGKILL));
    for p in live_other.paths().iter().chain(mine.paths().iter()) {
        assert!(p.is_dir(), "live {} was swept", p.display());
    }
    assert_eq!(mine.pids().unwrap(), [my_child.id()]);
    assert!(my_child.0.try_wait().unwrap().is_none());
    cgroups.sweep_stale().unwrap();
    assert!(mine.paths().iter().all(|p| p.is_dir()));
}

/// Removes a test-made v2 base directory (and what is left in it) at the end of the test.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = rmdir_tree(&self.0);
    }
}

/// The v2 directory handling (leaves, attach, `cgroup.kill`, sweep) on whatever v2 hierarchy
/// there is, even one with no controllers: a hybrid host runs the code production v2 hosts use.
#[test]
fn v2_leaves_attach_kill_and_sweep() {
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
    let own = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap());
    let dir = own
        .iter()
        .find(|o| o.hierarchy == 0 && o.controllers.is_empty())
        .and_then(|o| {
            mounts
                .iter()
                .filter(|m| m.v2)
                .find_map(|m| m.dir_of(&o.path))
        });
    let Some(dir) = dir.filter(|d| writable(d).is_ok()) else {
        eprintln!("skipped: no writable cgroup v2 directory");
        return;
    };
    let base = dir.join(format!("corral-v2test-{}", std::process::id()));
    mkdir_existing_ok(&base).unwrap();
    let _cleanup = RemoveDir(base.clone());
    let owner = Cgroups::detect().owner;
    let cgroups = Cgroups {
        inner: Inner::V2(v2::V2::without_controllers(base.clone())),
        owner,
        enforcement: CgroupLimit::ALL.map(|_| Err("test: no controllers".to_string())),
    };
    assert_eq!(cgroups.backend(), Backend::V2);

    let agent = cgroups
        .create(&unique("v2"), &CgroupLimits::default())
        .unwrap();
    assert_eq!(agent.paths(), [base.join(CORRAL_DIR).join(agent.name())]);
    assert_eq!(agent.attach_fds().unwrap().len(), 1);
    let mut child = sleeper();
    agent.attach(child.id()).unwrap();
    assert_eq!(agent.pids().unwrap(), [child.id()]);
    let has_kill = agent.paths()[0].join("cgroup.kill").exists();
    assert_eq!(agent.kill_all().unwrap(), 1);
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    eprintln!("cgroup.kill present: {has_kill}");
    agent.remove().unwrap();
    assert!(!agent.paths()[0].exists());
    assert!(
        !base.join(CORRAL_DIR).exists(),
        "empty shared dir left behind"
    );

    let mut crashed = cgroups.clone();
    crashed.owner = Owner {
        pid: u32::MAX - 1,
        start: 1,
    };
    let stale = crashed
        .create(&unique("v2-stale"), &CgroupLimits::default())
        .unwrap();
    let mut orphan = sleeper();
    stale.attach(orphan.id()).unwrap();
    let stale_paths = stale.paths();
    std::mem::forget(stale);
    let mine = cgroups
        .create(&unique("v2-mine"), &CgroupLimits::default())
        .unwrap();
    assert_eq!(cgroups.sweep_stale().unwrap(), 1);
    assert_eq!(orphan.wait().signal(), Some(libc::SIGKILL));
    assert!(!stale_paths[0].exists());
    assert!(mine.paths()[0].is_dir());
    drop(mine);
    assert!(!base.join(CORRAL_DIR).exists());
}
