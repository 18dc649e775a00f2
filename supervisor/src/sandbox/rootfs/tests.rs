//! Tests of the agent's root: the plan, and a root made ahead entered by a real process.

use super::*;

fn steps(p: &RootPlan) -> Vec<String> {
    p.compile().expect("compiles").described
}

#[test]
fn system_paths_and_the_agent_paths_appear_parents_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join(".tmp")).expect("mkdir");
    let mut plan = RootPlan::new();
    plan.writable(&ws).tmp(&ws.join(".tmp")).own_proc(true);
    let s = steps(&plan);
    let pos = |needle: &str| {
        s.iter()
            .position(|x| x.contains(needle))
            .unwrap_or_else(|| panic!("no step with {needle}: {s:#?}"))
    };
    assert!(pos("\"/oldroot/usr\"") < pos("pivot_root into the new root"));
    assert!(pos("on \"/newroot/tmp\"") < pos(&format!("on \"/newroot{}\"", ws.display())));
    assert!(pos("mount proc") > 0);
    if Path::new("/proc/sys").exists() {
        assert!(pos("bind \"/newroot/proc/sys\" on \"/newroot/proc/sys\"") > pos("mount proc"));
    }
    assert!(pos("remount the new root read-only") < pos("pivot_root into the new root"));
    if Path::new("/etc/shadow").exists() {
        assert!(pos("mask \"/newroot/etc/shadow\"") > pos("\"/oldroot/etc\""));
    }
    // Nothing of the host's /run or /home.
    assert!(!s
        .iter()
        .any(|x| x.contains("/oldroot/run") || x.contains("/oldroot/home")));
}

#[test]
fn a_root_made_ahead_is_entered_by_a_later_process() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join(".tmp")).expect("mkdir");
    std::fs::write(ws.join("mine"), b"x").expect("write");
    std::fs::write(dir.path().join("not-given"), b"x").expect("write");
    let mut plan = RootPlan::new();
    plan.writable(&ws).tmp(&ws.join(".tmp")).own_proc(false);
    let ns = build_detached(plan.compile_ahead().expect("compiles")).expect("built ahead");
    let mut join = MountOps::join(std::os::fd::AsRawFd::as_raw_fd(&ns), false).expect("join steps");
    let script = format!(
        "ls / | tr '\\n' ' '; echo; ls {ws}; test -e {other} && echo visible; \
         touch /tmp/t && echo tmp-ok; touch /usr/x 2>/dev/null || echo usr-ro",
        ws = ws.display(),
        other = dir.path().join("not-given").display()
    );
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", &script]);
    // SAFETY: the closure makes raw system calls over steps made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if join.apply() != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run in the root made ahead");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        top.contains(&"usr") && top.contains(&"tmp") && top.contains(&"proc"),
        "{top:?}"
    );
    assert!(!top.contains(&"root") && !top.contains(&"home") && !top.contains(&"run"));
    assert!(text.contains("mine"), "its workspace: {text}");
    assert!(
        !text.contains("visible"),
        "nothing it was not given: {text}"
    );
    assert!(text.contains("tmp-ok") && text.contains("usr-ro"), "{text}");
    assert!(
        ws.join(".tmp/t").exists(),
        "its /tmp is the workspace's .tmp"
    );
}

#[test]
fn missing_paths_are_left_out_and_duplicates_keep_the_wider_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("d");
    std::fs::create_dir(&d).expect("mkdir");
    let mut plan = RootPlan::new();
    plan.read_only(&d)
        .writable(&d)
        .read_only(&dir.path().join("missing"));
    let ops = plan.compile().expect("compiles");
    let binds: Vec<_> = ops
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Bind { dst, rdonly, .. } if dst.to_bytes().ends_with(b"/d") => Some(*rdonly),
            _ => None,
        })
        .collect();
    assert_eq!(binds, vec![false], "one writable bind of d");
    assert!(!ops.described.iter().any(|x| x.contains("missing")));
}
