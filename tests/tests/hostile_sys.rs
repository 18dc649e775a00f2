//! The seccomp filter end to end: a hostile agent's system calls, made through the real
//! supervisor (`corral call … --json`) on the default config, fail with the errno the filter
//! gives while its benign ones succeed; with `seccomp = false` the same attacks go through.

use corral_e2e::*;

/// The hostile agent on the default config, and the same with `seccomp = false`.
fn hostile() -> Fixture {
    let exe = bin("hostile_sys");
    fixture_with_defaults(
        "max_retries = 0",
        &format!(
            "[agents.hostile]\ncommand = [\"{0}\"]\n\n\
             [agents.hostile_open]\ncommand = [\"{0}\"]\nseccomp = false\n",
            exe.display()
        ),
    )
}

/// Whether this kernel has seccomp filters; skip (or fail) otherwise.
fn seccomp_ok() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if status.lines().any(|l| l.starts_with("Seccomp:")) {
        return true;
    }
    skip_or_fail("this kernel has no seccomp");
    false
}

/// One probe through `corral call`: the agent's output `{"ok", "errno", "error"}`.
fn probe(fx: &Fixture, agent: &str, name: &str) -> serde_json::Value {
    let c = call_json(fx, agent, &format!(r#"{{"probe":"{name}"}}"#));
    assert_eq!(c.code, 0, "{agent} {name}: {}", c.stderr);
    assert_eq!(c.reasons(), ["completed"], "{agent} {name}: {}", c.doc);
    c.doc["output"].clone()
}

#[test]
fn attacks_fail_with_the_filters_errno() {
    if !seccomp_ok() {
        return;
    }
    let fx = hostile();
    let attacks = [
        ("clone_newuser", libc::EPERM),
        ("clone_newnet", libc::EPERM),
        ("clone3", libc::ENOSYS),
        ("unshare_user", libc::EPERM),
        ("setns", libc::EPERM),
        ("mount", libc::EPERM),
        ("chmod_setuid", libc::EPERM),
        ("keyctl", libc::EPERM),
        ("bpf", libc::EPERM),
        ("perf_event_open", libc::EPERM),
        ("userfaultfd", libc::EPERM),
        ("ptrace", libc::EPERM),
        ("personality", libc::EPERM),
    ];
    for (name, errno) in attacks {
        let out = probe(&fx, "hostile", name);
        assert_eq!(out["ok"], false, "{name}: {out}");
        assert_eq!(out["errno"], errno, "{name}: {out}");
    }
}

#[test]
fn benign_calls_still_work_under_the_filter() {
    if !seccomp_ok() {
        return;
    }
    let fx = hostile();
    for name in ["chmod_plain", "fork", "thread"] {
        let out = probe(&fx, "hostile", name);
        assert_eq!(out["ok"], true, "{name}: {out}");
        assert_eq!(out["errno"], 0, "{name}: {out}");
    }
}

/// Whether this host lets a process without capabilities make a user namespace.
fn userns_allowed() -> bool {
    let off = |p: &str| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == "0");
    !off("/proc/sys/user/max_user_namespaces") && !off("/proc/sys/kernel/unprivileged_userns_clone")
}

#[test]
fn without_seccomp_the_attacks_go_through() {
    let fx = hostile();
    // Nothing but the filter stood in their way: the rest of the sandbox allows these.
    let mut attacks = vec!["chmod_setuid", "clone3", "personality"];
    if userns_allowed() {
        attacks.push("clone_newuser");
    } else {
        eprintln!("clone_newuser not tried: this host refuses user namespaces to processes without capabilities");
    }
    for name in attacks {
        let out = probe(&fx, "hostile_open", name);
        assert_eq!(out["ok"], true, "{name}: {out}");
    }
}
