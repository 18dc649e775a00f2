//! Warm stems end to end: a sandbox made ahead starts its agent with the same isolation, made
//! ready beforehand (its process waiting as the agent's user with no capability), and leaves
//! nothing behind; a stem that died or whose program was replaced is not used.

use corral::ExitReason;
use corral_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_stems_start_agents_with_the_same_isolation_and_leave_nothing() {
    let (_fx, s) = sup_with("max_retries = 0", "");
    let (first, warm) = call_warm(&s, r#"{"do":"id"}"#).await;
    assert_eq!(warm, [false], "nothing is warm before the first call");
    assert_eq!(output(&first)["pid"], 2);
    assert!(
        s.prewarm("chaos").await.unwrap(),
        "chaos runs under corral-init"
    );
    let stems = s.prewarmed();
    assert_eq!(stems.len(), 1, "{stems:?}");
    let stem_pid = stems[0].1;
    assert!(alive(stem_pid));
    // Its agent's process is made at once (the init forks it as it starts, on its own time),
    // pid 2 of the namespace; once it blocks reading fd 7 for its program, it waits as the
    // agent's user with no capability at all: a release only reads fd 7 and execs.
    let blocked_in_read = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
            == Some(libc::SYS_read)
    };
    assert!(
        within(5, || {
            let child = agent_pid(stem_pid);
            child != stem_pid && blocked_in_read(child)
        }),
        "the stem holds its agent's process ready"
    );
    let waiting = agent_pid(stem_pid);
    let status = std::fs::read_to_string(format!("/proc/{waiting}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uids = field("Uid:");
    assert_eq!(uids.len(), 4, "{status}");
    assert!(
        uids.iter().all(|u| *u == uids[0] && *u != "0"),
        "the agent's own uid, real to saved: {status}"
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), ["0000000000000000"], "{cap} {status}");
    }
    assert_eq!(field("NSpid:").last(), Some(&"2"), "{status}");

    // The agent of a warm stem: its own run id, attempt and workspace, pid 2 of its own pid
    // namespace, the same confinement.
    let (o, warm) = call_warm(&s, r#"{"do":"env"}"#).await;
    assert_eq!(warm, [true], "{:?}", o.attempts);
    assert_eq!(
        o.attempts[0].pid,
        Some(stem_pid as u32),
        "the stem's init is the attempt's pid"
    );
    let env = output(&o)["env"].clone();
    assert_eq!(env["CORRAL_RUN_ID"], o.attempts[0].run_id.as_str(), "{env}");
    assert_eq!(env["CORRAL_ATTEMPT"], "1", "{env}");
    assert_eq!(env["CORRAL_AGENT"], "chaos", "{env}");
    let home = std::path::Path::new(env["HOME"].as_str().unwrap());
    assert!(
        home.parent().and_then(|p| p.file_name()) == Some("work".as_ref())
            && home
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ws-"),
        "a workspace of its own: {env}"
    );
    assert!(!alive(stem_pid), "the stem ended with its agent");
    s.prewarm("chaos").await.unwrap();
    let (o, warm) = call_warm(&s, r#"{"do":"id"}"#).await;
    assert_eq!(warm, [true]);
    assert_eq!(output(&o)["pid"], 2, "{:?}", output(&o));
    s.prewarm("chaos").await.unwrap();
    let me = std::process::id();
    let (o, warm) = call_warm(
        &s,
        &format!(r#"{{"do":"read","path":"/proc/{me}/status"}}"#),
    )
    .await;
    assert_eq!(warm, [true]);
    assert_eq!(output(&o)["ok"], false, "the agent sees the supervisor");

    // A stem that died while it waited is not used: the call starts cold and succeeds.
    s.prewarm("chaos").await.unwrap();
    let dead = s.prewarmed()[0].1;
    // SAFETY: pidfd_open/kill/poll on a pid we own (our child, unreaped until we take it) and
    // a pollfd we own; the pidfd is closed after.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, dead, 0) as i32;
        assert!(fd >= 0);
        libc::kill(dead, libc::SIGKILL);
        // Readable once it has exited (a zombie: nobody reaped it yet).
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(libc::poll(&mut p, 1, 10_000), 1, "the stem did not die");
        libc::close(fd);
    }
    let (o, warm) = call_warm(&s, r#"{"do":"ok"}"#).await;
    assert_eq!(warm, [false]);
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);

    // Dropping the supervisor ends the stem that waits (killed at once, reaped by the reaper).
    s.prewarm("chaos").await.unwrap();
    let last = s.prewarmed()[0].1;
    drop(s);
    corral::sandbox::process::settled().await;
    assert!(!alive(last), "a stem outlived its supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stem_starts_its_agent_with_no_fd_to_spare() {
    // The agent's fds are 0–7 and `open_files = 9` leaves one more: the stem's init must not
    // need fds of its own to start its agent (it used to need a pipe, and every call then ran
    // cold beside a stem made and thrown away).
    let (_fx, s) = sup_with("max_retries = 0\nopen_files = 9", "");
    assert!(s.prewarm("chaos").await.unwrap());
    let (o, warm) = call_warm(&s, r#"{"do":"ok"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(warm, [true], "{:?}", o.attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_off_means_no_stem() {
    let (_fx, s) = sup_with("max_retries = 0\nprewarm = false", "");
    let (_, warm) = call_warm(&s, r#"{"do":"ok"}"#).await;
    assert_eq!(warm, [false]);
    assert!(!s.prewarm("chaos").await.unwrap());
    let (_, warm) = call_warm(&s, r#"{"do":"ok"}"#).await;
    assert_eq!(warm, [false]);
    assert!(s.prewarmed().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stem_is_not_used_for_a_replaced_program() {
    // Landlock names the program's file when the stem is made; a program replaced since (a
    // deploy renaming a new build into place) gets a sandbox made for it instead.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = private_chaos(work.path());
    let extra = format!(
        "[agents.mine]\ncommand = [\"{}\"]\nmax_retries = 0\n",
        exe.display()
    );
    let (_fx, s) = sup_with("", &extra);
    assert!(s.prewarm("mine").await.unwrap());
    let (o, warm) = call_warm_on(&s, "mine", r#"{"do":"ok"}"#).await;
    assert_eq!(
        (reasons(&o), warm),
        (vec![ExitReason::Completed], vec![true])
    );
    assert!(s.prewarm("mine").await.unwrap());
    let next = work.path().join("next");
    std::fs::copy(bin("chaos"), &next).unwrap();
    std::fs::rename(&next, &exe).unwrap();
    let (o, warm) = call_warm_on(&s, "mine", r#"{"do":"ok"}"#).await;
    assert_eq!(warm, [false], "{:?}", o.attempts);
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
}

/// A pipe whose ends survive `execve` (the test hands them to a child by number).
fn raw_pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array we own; each is then owned by one File.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn a_stem_agent_holds_no_capability_without_ids_of_its_own() {
    // Under an unprivileged supervisor a stem's init is given no ids (its agent stays root of
    // its user namespace). The agent must still hold no capability: with them it could open
    // its init's /proc/1/fd/5 and write a record of its own death. Run here as corral runs it
    // there: as nobody, in a user and pid namespace of its own, fds 5 and 7 its pipes.
    if !root_ok("run corral-init as nobody in a user namespace") {
        return;
    }
    for tool in ["/usr/bin/setpriv", "/usr/bin/unshare"] {
        if !std::path::Path::new(tool).exists() {
            return skip_or_fail(&format!("{tool} (util-linux) is not installed"));
        }
    }
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (mut status_r, status_w) = raw_pipe();
    let (control_r, mut control_w) = raw_pipe();
    let (s, c) = (status_w.as_raw_fd(), control_r.as_raw_fd());
    let mut cmd = std::process::Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "/usr/bin/unshare",
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .arg(bin("corral-init"))
        .arg("--stem")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: fcntl and dup2 are async-signal-safe; the fds are open in the parent and so in
    // the child. Both are lifted above 7 first (close-on-exec), so that placing one cannot
    // overwrite the other.
    unsafe {
        cmd.pre_exec(move || {
            let s = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 10);
            let c = libc::fcntl(c, libc::F_DUPFD_CLOEXEC, 10);
            if s < 0 || c < 0 || libc::dup2(s, 5) < 0 || libc::dup2(c, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop((status_w, control_r));
    let script = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; \
                  printf forged > /proc/1/fd/5 && echo FORGED; exit 0";
    let strings = ["/bin/sh", "sh", "-c", script, "PATH=/usr/bin:/bin"];
    let mut start = Vec::new();
    start.extend_from_slice(&3u32.to_le_bytes());
    start.extend_from_slice(&1u32.to_le_bytes());
    for s in strings {
        start.extend_from_slice(s.as_bytes());
        start.push(0);
    }
    let wrote = control_w.write_all(&start);
    drop(control_w);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wrote.is_ok(),
        "{wrote:?} {:?} fds {s} {c}: {said}",
        out.status
    );
    let caps: Vec<&str> = said.lines().filter(|l| l.starts_with("Cap")).collect();
    assert_eq!(caps.len(), 5, "{said}");
    for line in caps {
        assert!(line.ends_with("0000000000000000"), "{line}: {said}");
    }
    assert!(!said.contains("FORGED"), "{said}");
    let mut record = Vec::new();
    status_r.read_to_end(&mut record).unwrap();
    assert_eq!(record.len(), corral::exit_status::RECORD_LEN, "{record:?}");
    let record: [u8; corral::exit_status::RECORD_LEN] = record.try_into().unwrap();
    match corral::exit_status::InitRecord::decode(&record) {
        Some(corral::exit_status::InitRecord::Ended { status, .. }) => {
            assert_eq!(status, 0, "the shell's own exit, as the init saw it")
        }
        other => panic!("{other:?}"),
    }
}
