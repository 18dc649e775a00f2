//! The hostile-agent suite: an agent written to escape (`examples/src/bin/hostile.rs`) runs
//! through the real supervisor on the default config and on each opt-out an admin can write,
//! and every test asserts on what it recorded. Where an opt-out gives a protection away, the
//! same attack is shown to go through there, so each assertion can fail.
//!
//! Needs root (agents run as uids of their own), landlock with signal and abstract-socket
//! scoping (ABI 6) and seccomp; without them each test says why it skipped (a failure under
//! `CORRAL_REQUIRE_ISOLATION=1`).

use corral::ExitReason;
use corral::{AttemptEvent, ToolRequest};
use corral::{CallOptions, CallOutcome, Supervisor};
use corral_e2e::*;
use serde_json::{json, Value as Json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The opt-outs, by the name of the agent that has them in a lab's config.
const VARIANTS: &[(&str, &str)] = &[
    ("default", ""),
    ("no_landlock", "landlock = false"),
    ("no_seccomp", "seccomp = false"),
    ("no_mount", r#"namespaces = ["pid", "ipc", "uts", "net"]"#),
    ("no_pid", r#"namespaces = ["ipc", "uts", "mount", "net"]"#),
    ("no_net", r#"namespaces = ["pid", "ipc", "uts", "mount"]"#),
    ("no_ns", "namespaces = []"),
    ("bare", "namespaces = []\nlandlock = false\nseccomp = false"),
    ("network", "network = true"),
    ("network_no_landlock", "network = true\nlandlock = false"),
    ("shared_netns", "netns = \"shared\""),
    (
        "shared_netns_no_landlock",
        "netns = \"shared\"\nlandlock = false",
    ),
    ("named_user", "user = \"nobody\""),
    ("root", "user = \"root\"\nallow_root = true"),
    (
        "root_no_landlock",
        "user = \"root\"\nallow_root = true\nlandlock = false",
    ),
    (
        "root_no_ns",
        "user = \"root\"\nallow_root = true\nnamespaces = []",
    ),
    (
        "root_bare",
        "user = \"root\"\nallow_root = true\nnamespaces = []\nlandlock = false\nseccomp = false",
    ),
    (
        "nobody_bare",
        "user = \"nobody\"\nnamespaces = []\nlandlock = false\nseccomp = false",
    ),
    (
        "user_ns",
        r#"namespaces = ["user", "pid", "ipc", "uts", "mount", "net"]"#,
    ),
];

/// Variants only some tests use.
const EXTRA_VARIANTS: &[(&str, &str)] = &[(
    "root_no_pid_no_landlock",
    "user = \"root\"\nallow_root = true\nlandlock = false\nnamespaces = [\"ipc\", \"uts\", \"mount\", \"net\"]",
)];

/// No sandbox at all beyond the uid.
const BARE: &[&str] = &["bare", "root_bare", "nobody_bare"];
/// Without a mount namespace of their own.
const NO_MOUNT_NS: &[&str] = &[
    "no_mount",
    "no_ns",
    "bare",
    "root_no_ns",
    "root_bare",
    "nobody_bare",
];
/// Without a pid namespace of their own.
const NO_PID_NS: &[&str] = &[
    "no_pid",
    "no_ns",
    "bare",
    "root_no_ns",
    "root_bare",
    "nobody_bare",
];

/// Every variant but `user_ns` (which a root supervisor cannot start: see its own test).
fn runnable() -> Vec<&'static str> {
    VARIANTS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "user_ns")
        .collect()
}

/// Whether this machine can run the suite; says why not otherwise.
fn can_run(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(&format!(
            "{what}: needs root (agents run as uids of their own)"
        ));
        return false;
    }
    match corral::sandbox::landlock::abi() {
        Ok(v) if v >= 6 => {}
        Ok(v) => {
            skip_or_fail(&format!(
                "{what}: landlock ABI {v} has no scoping (needs 6)"
            ));
            return false;
        }
        Err(e) => {
            skip_or_fail(&format!("{what}: {e}"));
            return false;
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        skip_or_fail(&format!("{what}: this kernel has no seccomp"));
        return false;
    }
    true
}

/// A supervisor whose agents are the hostile program in the given variants, each with `keys`
/// added, running a private copy of the program in a directory of its own.
struct Lab {
    s: Arc<Supervisor>,
    /// Where the program copy lives (mode 0777: only the sandbox keeps agents from writing it).
    prog_dir: tempfile::TempDir,
    /// The config and state directory.
    fx: Fixture,
}

impl Lab {
    fn new(variants: &[&str], keys: &str) -> Lab {
        let lab = Lab::with_stems(variants, keys);
        lab.s.disable_prewarm();
        lab
    }

    /// Like [`Lab::new`], keeping warm stems (made by `prewarm`).
    fn with_stems(variants: &[&str], keys: &str) -> Lab {
        let prog_dir = open_tempdir();
        chmod(prog_dir.path(), 0o777);
        let exe = prog_dir.path().join("hostile");
        std::fs::copy(bin("hostile"), &exe).expect("copy the hostile agent");
        chmod(&exe, 0o755);
        let mut agents = String::new();
        for name in variants {
            let (_, opts) = VARIANTS
                .iter()
                .chain(EXTRA_VARIANTS)
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no variant {name}"));
            agents.push_str(&format!(
                "[agents.{name}]\ncommand = [\"{}\"]\n{opts}\n{keys}\n\n",
                exe.display()
            ));
        }
        let (fx, s) = sup_with("max_retries = 0\nwall_time = \"30s\"", &agents);
        Lab {
            s: Arc::new(s),
            prog_dir,
            fx,
        }
    }

    fn exe(&self) -> PathBuf {
        self.prog_dir.path().join("hostile")
    }

    /// One task; its whole outcome.
    async fn run(&self, agent: &str, input: &Json) -> CallOutcome {
        call(&self.s, agent, &input.to_string()).await
    }

    /// One probe that must complete; its output.
    async fn probe(&self, agent: &str, input: Json) -> Json {
        let o = self.run(agent, &input).await;
        assert_eq!(
            reasons(&o),
            [ExitReason::Completed],
            "{agent} {input}: {:?}",
            o.attempts
        );
        output(&o)
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory outside `/tmp` (whose host copy a mount namespace hides anyway).
fn outside_tmp() -> tempfile::TempDir {
    let base = if Path::new("/var/tmp").is_dir() {
        PathBuf::from("/var/tmp")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    open_tempdir_in(&base)
}

fn ok(out: &Json) -> bool {
    out["ok"]
        .as_bool()
        .unwrap_or_else(|| panic!("no `ok` in {out}"))
}

fn errno(out: &Json) -> i32 {
    out["errno"].as_i64().unwrap_or(-1) as i32
}

/// Runs `input` on each variant and checks whether the attack went through as `through` says.
async fn expect(lab: &Lab, variants: &[&str], input: Json, through: impl Fn(&str) -> bool) {
    for v in variants {
        let out = lab.probe(v, input.clone()).await;
        assert_eq!(ok(&out), through(v), "{v}: {input} gave {out}");
    }
}

fn one_of(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |v| names.contains(&v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etc_shadow_and_host_files_stay_out_of_reach() {
    if !can_run("host files") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    // Masked in the agent's root; the dynamic uid cannot read it anyway. Root without a mount
    // namespace owns it, and landlock lets everyone read /etc.
    if Path::new("/etc/shadow").exists() {
        expect(
            &lab,
            &all,
            json!({"probe": "read", "path": "/etc/shadow"}),
            one_of(&["root_no_ns", "root_bare"]),
        )
        .await;
        let out = lab
            .probe(
                "root_no_landlock",
                json!({"probe": "read", "path": "/etc/shadow"}),
            )
            .await;
        assert_eq!(
            errno(&out),
            libc::EACCES,
            "the mask holds without landlock: {out}"
        );
    }
    // Metadata of a host file: read-only in the agent's root, owned by root. Landlock does not
    // cover metadata: root without a mount namespace changes it (to what it was: harmless).
    let passwd = Path::new("/etc/passwd");
    let mode = std::fs::metadata(passwd)
        .expect("/etc/passwd")
        .permissions()
        .mode()
        & 0o7777;
    for input in [
        json!({"probe": "chmod", "path": "/etc/passwd", "mode": mode}),
        json!({"probe": "chown", "path": "/etc/passwd"}),
    ] {
        expect(&lab, &all, input, one_of(&["root_no_ns", "root_bare"])).await;
    }
    let out = lab
        .probe(
            "default",
            json!({"probe": "chmod", "path": "/etc/passwd", "mode": mode}),
        )
        .await;
    assert_eq!(errno(&out), libc::EROFS, "{out}");
    // Its own program file (owned by root, which lets others write its directory).
    for input in [
        json!({"probe": "chmod", "path": "$exe", "mode": 0o755}),
        json!({"probe": "chown", "path": "$exe"}),
        json!({"probe": "setxattr", "path": "$exe"}),
    ] {
        expect(&lab, &all, input, one_of(&["root_no_ns", "root_bare"])).await;
    }
    for v in ["default", "root", "root_no_landlock", "no_landlock"] {
        let out = lab
            .probe(v, json!({"probe": "setxattr", "path": "$exe"}))
            .await;
        assert_eq!(errno(&out), libc::EROFS, "{v}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_set_id_file_can_be_made() {
    if !can_run("set-id files") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let no_seccomp = ["no_seccomp", "bare", "root_bare", "nobody_bare"];
    for dir in ["$home", "/tmp"] {
        for v in &all {
            let out = lab
                .probe(v, json!({"probe": "setid_file", "dir": dir}))
                .await;
            // Without a mount namespace, /tmp is the host's, which landlock keeps the agent
            // from writing.
            let host_tmp = dir == "/tmp" && ["no_mount", "no_ns", "root_no_ns"].contains(v);
            if no_seccomp.contains(v) {
                assert!(
                    ok(&out),
                    "{v} {dir}: the set-id bits stick without seccomp: {out}"
                );
                continue;
            }
            assert!(!ok(&out), "{v} {dir}: {out}");
            // Refused by seccomp; in the host's /tmp landlock refuses even the plain file.
            assert_eq!(out["create_errno"], libc::EPERM, "{v} {dir}: {out}");
            assert_eq!(out["mknod_errno"], libc::EPERM, "{v} {dir}: {out}");
            let want = if host_tmp { libc::EACCES } else { libc::EPERM };
            assert_eq!(out["chmod_errno"], want, "{v} {dir}: {out}");
            assert_eq!(out["create_mode"], -1, "{v} {dir}: {out}");
            assert_eq!(out["mknod_mode"], -1, "{v} {dir}: {out}");
            if !host_tmp {
                assert_eq!(out["chmod_mode"], 0o644, "{v} {dir}: {out}");
            }
        }
        // Whatever was left there could not be run as set-id: every mount of the agent's root
        // is nosuid, and so is the workspace's tmpfs on the host.
        let out = lab
            .probe("no_seccomp", json!({"probe": "setid_file", "dir": dir}))
            .await;
        assert_eq!(out["nosuid"], true, "{dir}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_cwd_and_readonly_paths_cannot_be_written() {
    if !can_run("read-only paths") {
        return;
    }
    // Open to everyone (0777 directories, 0666 files): only the sandbox stops the writes.
    let in_tmp = open_tempdir();
    let out_tmp = outside_tmp();
    let cwd = outside_tmp();
    for d in [in_tmp.path(), out_tmp.path(), cwd.path()] {
        chmod(d, 0o777);
        let f = d.join("f");
        std::fs::write(&f, "data").unwrap();
        chmod(&f, 0o666);
    }
    let all = runnable();
    let keys = format!(
        "cwd = \"{}\"\nreadonly_paths = [\"{}\", \"{}\"]",
        cwd.path().display(),
        in_tmp.path().display(),
        out_tmp.path().display()
    );
    let lab = Lab::new(&all, &keys);
    // Its own program file: refused to everyone, root or not, sandboxed or not (a running
    // program is busy); what the sandbox adds is that its metadata and its directory stay out
    // of reach (the tests of host files, and of `$exe_dir` below).
    for v in &all {
        let out = lab
            .probe(v, json!({"probe": "open", "path": "$exe", "write": true}))
            .await;
        assert!(!ok(&out), "{v}: {out}");
        if !v.starts_with("root") {
            assert_eq!(errno(&out), libc::EACCES, "{v}: {out}");
        }
    }
    // Its program's directory as the host has it. Under /tmp (as here), the agent sees the
    // program at that path inside its own /tmp, where a root agent may make files: what counts
    // is that nothing appears on the host.
    for v in &all {
        let out = lab
            .probe(
                v,
                json!({"probe": "create", "dir": "$exe_dir", "keep": true}),
            )
            .await;
        let made: Vec<_> = std::fs::read_dir(lab.prog_dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p != &lab.exe())
            .collect();
        assert_eq!(!made.is_empty(), BARE.contains(v), "{v}: {made:?} {out}");
        for p in made {
            std::fs::remove_file(p).unwrap();
        }
    }
    let dirs = [
        ".".to_string(),
        in_tmp.path().display().to_string(),
        out_tmp.path().display().to_string(),
    ];
    for d in &dirs {
        expect(
            &lab,
            &all,
            json!({"probe": "create", "dir": d}),
            one_of(BARE),
        )
        .await;
    }
    for f in [
        in_tmp.path().join("f"),
        out_tmp.path().join("f"),
        cwd.path().join("f"),
    ] {
        let input = json!({"probe": "open", "path": f, "write": true});
        expect(&lab, &all, input, one_of(BARE)).await;
    }
    assert_eq!(
        std::fs::read_to_string(in_tmp.path().join("f")).unwrap(),
        "data"
    );
    // Read-only is not unreadable.
    let out = lab
        .probe(
            "default",
            json!({"probe": "read", "path": in_tmp.path().join("f")}),
        )
        .await;
    assert_eq!(out["bytes"], 4, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_directories_and_sockets_are_not_there() {
    if !can_run("host directories") {
        return;
    }
    let lab_dir = open_tempdir();
    let sock = lab_dir.path().join("host.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chmod(&sock, 0o777);
    let all = runnable();
    let lab = Lab::new(&all, "");
    let mount_ns = |v: &str| !NO_MOUNT_NS.contains(&v);
    // The agent's root holds the system paths, /dev, /proc, /tmp and the first components of
    // its own paths; nothing of the host's /run, /home or /root.
    let mut allowed: Vec<String> = [
        "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "tmp", "usr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in [
        lab.exe(),
        bin("corral-init"),
        lab.fx.dir.path().to_path_buf(),
    ] {
        if let Some(std::path::Component::Normal(c)) = p.components().nth(1) {
            allowed.push(c.to_string_lossy().into_owned());
        }
    }
    for v in &all {
        let out = lab.probe(v, json!({"probe": "list", "path": "/"})).await;
        if mount_ns(v) {
            for e in out["entries"].as_array().unwrap() {
                assert!(
                    allowed.contains(&e.as_str().unwrap().to_string()),
                    "{v}: / has {e}: {out}"
                );
            }
        }
        for d in ["/run", "/home", "/root", "/var"] {
            let out = lab.probe(v, json!({"probe": "list", "path": d})).await;
            if mount_ns(v) {
                assert_eq!(errno(&out), libc::ENOENT, "{v} {d}: {out}");
            }
            // Landlock hides what the mount namespace does not; /root is closed to other
            // uids anyway.
            let through = BARE.contains(v) && !(d == "/root" && *v != "root_bare");
            assert_eq!(ok(&out), through, "{v} {d}: {out}");
        }
        let roots = [
            "/etc", "/dev", "/run", "/var", "/home", "/root", "/tmp", "$home",
        ]
        .iter()
        .map(|r| r.to_string())
        .chain([lab_dir.path().display().to_string()])
        .collect::<Vec<_>>();
        let out = lab
            .probe(v, json!({"probe": "sockets", "roots": roots, "max": 50000}))
            .await;
        let found: Vec<&str> = out["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_str)
            .collect();
        if BARE.contains(v) {
            assert!(found.contains(&sock.to_str().unwrap()), "{v}: {out}");
        } else {
            assert_eq!(found, Vec::<&str>::new(), "{v}: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_and_its_status_pipe_are_out_of_reach() {
    if !can_run("corral-init") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let pid_ns = |v: &str| !NO_PID_NS.contains(&v);
    for v in all.iter().copied().filter(|v| pid_ns(v)) {
        // The status pipe is not among the agent's descriptors, and its init's are closed to
        // it: not listed (other uid, hidepid) nor opened (not dumpable), root or not.
        let (init, req, task) = hold(&lab, v).await;
        let target = |pid: i32, fd: &str| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|t| t.display().to_string())
        };
        let status = target(init, "5").expect("the init holds its status pipe");
        let agent = agent_pid(init);
        assert_ne!(agent, init, "{v}: the agent runs under its init");
        let held: Vec<String> = std::fs::read_dir(format!("/proc/{agent}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| target(agent, &e.file_name().to_string_lossy()).ok())
            .collect();
        assert!(held.len() >= 5, "{v}: {held:?}");
        assert!(
            !held.contains(&status),
            "{v}: it holds the status pipe {status}: {held:?}"
        );
        req.reply.send(Ok(corral_proto::Value::Null)).unwrap();
        assert_eq!(
            reasons(&task.await.unwrap()),
            [ExitReason::Completed],
            "{v}"
        );
        let out = lab.probe(v, json!({"probe": "proc_fds", "pid": 1})).await;
        assert_eq!(out["opened"], json!([]), "{v}: {out}");
        assert!(!ok(&out), "{v}: {out}");
        let root = v.starts_with("root");
        assert_eq!(
            out["listed"], root,
            "{v}: only its own uid lists the fds: {out}"
        );
        let out = lab
            .probe(v, json!({"probe": "read", "path": "/proc/1/environ"}))
            .await;
        assert!(!ok(&out), "{v}: {out}");
        let out = lab.probe(v, json!({"probe": "ptrace", "pid": 1})).await;
        assert!(!ok(&out), "{v}: {out}");
        // Signals: a uid of its own cannot; a root agent can (same uid, same sandbox), which
        // reaches only the init's forwarding of termination signals to the agent itself.
        let out = lab
            .probe(v, json!({"probe": "kill_parent", "sig": 0}))
            .await;
        assert_eq!(out["ppid"], 1, "{v}: {out}");
        assert_eq!(ok(&out), root, "{v}: {out}");
    }
    // What the record says is what happened.
    let o = lab.run("default", &json!({"probe": "nope"})).await;
    assert_eq!(reasons(&o), [ExitReason::AgentError], "{:?}", o.attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_settings_in_proc_and_sys_are_read_only() {
    if !can_run("/proc/sys") {
        return;
    }
    let mut variants = runnable();
    variants.push("root_no_pid_no_landlock");
    let lab = Lab::new(&variants, "");
    // Opened for writing, never written. Root-owned and guarded by their mode alone: only
    // landlock or a read-only /proc keeps a root agent from every host setting.
    let mut files = vec!["/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches"];
    // And the one writable-looking file of /sys the agent sees: taking a CPU off line.
    for f in ["/proc/sysrq-trigger", "/sys/devices/system/cpu/cpu1/online"] {
        if Path::new(f).exists() {
            files.push(f);
        }
    }
    for f in files {
        for v in &variants {
            let out = lab
                .probe(v, json!({"probe": "open", "path": f, "write": true}))
                .await;
            assert_eq!(ok(&out), *v == "root_bare", "{v} {f}: {out}");
            // In its own root (with a /proc of its pid namespace or the host's), read-only.
            let own_root = ["root_no_landlock", "root_no_pid_no_landlock"].contains(v);
            if own_root {
                assert_eq!(errno(&out), libc::EROFS, "{v} {f}: {out}");
            }
        }
    }
    let out = lab
        .probe(
            "root_no_landlock",
            json!({"probe": "read", "path": "/proc/sys/kernel/core_pattern"}),
        )
        .await;
    assert!(ok(&out), "still readable: {out}");
}

/// A host listener and the address agents are told.
fn tcp_listener() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_loopback_is_unreachable_without_network() {
    if !can_run("host loopback") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let (_tcp, addr) = tcp_listener();
    // Its own loopback (refused), or landlock where it shares the host's network (EACCES).
    let open = [
        "bare",
        "root_bare",
        "nobody_bare",
        "network",
        "network_no_landlock",
    ];
    for v in &all {
        let out = lab.probe(v, json!({"probe": "tcp", "addr": addr})).await;
        assert_eq!(ok(&out), open.contains(v), "{v}: {out}");
        if !ok(&out) {
            let landlocked = ["no_net", "no_ns", "root_no_ns"].contains(v);
            let want = if landlocked {
                libc::EACCES
            } else {
                libc::ECONNREFUSED
            };
            assert_eq!(errno(&out), want, "{v}: {out}");
        }
    }
    // UDP: landlock has no rule for it, so only a network namespace keeps it in.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let addr = udp.local_addr().unwrap().to_string();
    let mut buf = [0u8; 64];
    for v in &all {
        let out = lab.probe(v, json!({"probe": "udp", "addr": addr})).await;
        // Delivery on loopback is done by the time sendto returns.
        let got = udp.recv(&mut buf).is_ok();
        let host_net = [
            "no_net",
            "no_ns",
            "bare",
            "root_no_ns",
            "root_bare",
            "nobody_bare",
            "network",
            "network_no_landlock",
        ];
        assert_eq!(got, host_net.contains(v), "{v}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_unix_sockets_are_unreachable() {
    if !can_run("host unix sockets") {
        return;
    }
    let dir = open_tempdir();
    let path = dir.path().join("host.sock");
    let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    chmod(&path, 0o777);
    let name = format!("corral-hostile-{}", std::process::id());
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let _a = std::os::unix::net::UnixListener::bind_addr(&abs).unwrap();
    let all = runnable();
    let lab = Lab::new(&all, "");
    // A pathname socket in a world-open directory: only the mount namespace hides it
    // (landlock before ABI 9 has no right for connecting to one).
    expect(
        &lab,
        &all,
        json!({"probe": "unix", "path": path}),
        one_of(NO_MOUNT_NS),
    )
    .await;
    // An abstract socket of the host: in the host's network namespace only, where landlock
    // scoping refuses it.
    for v in &all {
        let out = lab
            .probe(v, json!({"probe": "unix_abstract", "name": name}))
            .await;
        let through = ["bare", "root_bare", "nobody_bare", "network_no_landlock"].contains(v);
        assert_eq!(ok(&out), through, "{v}: {out}");
        let host_net = ["no_net", "no_ns", "root_no_ns", "network"];
        if host_net.contains(v) {
            assert_eq!(errno(&out), libc::EPERM, "{v}: landlock scope: {out}");
        } else if !through {
            assert_eq!(errno(&out), libc::ECONNREFUSED, "{v}: {out}");
        }
    }
}

/// A socket file in `readonly_paths`: read-only does not stop `connect`, and on this kernel
/// nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open finding: a world-connectable Unix socket in readonly_paths (or cwd, writable_paths) can be connected to; landlock controls that only from ABI 9 (LANDLOCK_ACCESS_FS_RESOLVE_UNIX)"]
async fn a_socket_in_readonly_paths_is_unreachable() {
    if !can_run("socket in readonly_paths") {
        return;
    }
    let dir = open_tempdir();
    let path = dir.path().join("host.sock");
    let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    chmod(&path, 0o777);
    let lab = Lab::new(
        &["default"],
        &format!("readonly_paths = [\"{}\"]", dir.path().display()),
    );
    let out = lab
        .probe("default", json!({"probe": "unix", "path": path}))
        .await;
    assert!(!ok(&out), "{out}");
}

/// Agent `a` runs `serve` and asks the owner (tool call `listening`) to try `b` with `input`
/// built from the arguments it gave; returns what `b` saw and `a`'s output.
async fn pair(
    lab: &Lab,
    a: &str,
    serve: Json,
    b: &str,
    input: impl Fn(&Json) -> Json,
) -> (Json, Json) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ToolRequest>(1);
    let server = tokio::spawn({
        let s = lab.s.clone();
        let a = a.to_string();
        async move {
            let opts = CallOptions {
                tools: Some(tx.into()),
                ..Default::default()
            };
            s.call(&a, corral_e2e::input(&serve.to_string()), opts)
                .await
                .unwrap()
        }
    });
    // It announces itself, or ends without (it could not listen).
    let Some(req) = rx.recv().await else {
        let o = server.await.unwrap();
        assert_eq!(
            reasons(&o),
            [ExitReason::Completed],
            "{a}: {:?}",
            o.attempts
        );
        return (Json::Null, output(&o));
    };
    assert_eq!(req.call.tool, "listening");
    let seen = lab.probe(b, input(&req.call.args.to_json())).await;
    req.reply.send(Ok(corral_proto::Value::Null)).unwrap();
    let o = server.await.unwrap();
    assert_eq!(
        reasons(&o),
        [ExitReason::Completed],
        "{a}: {:?}",
        o.attempts
    );
    (seen, output(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_reach_each_other() {
    if !can_run("agent to agent") {
        return;
    }
    let pairs = [
        "default",
        "no_landlock",
        "shared_netns",
        "shared_netns_no_landlock",
        "no_net",
    ];
    let lab = Lab::new(&pairs, "");
    for v in pairs {
        // Loopback TCP: each attempt has a loopback of its own, unless it shares one
        // (`netns = "shared"`, the documented trade-off) or the host's (landlock refuses).
        let (seen, served) = pair(
            &lab,
            v,
            json!({"probe": "serve_tcp"}),
            v,
            |args| json!({"probe": "tcp", "addr": format!("127.0.0.1:{}", args["port"])}),
        )
        .await;
        if v == "no_net" {
            // On the host's network, landlock refuses even the listening socket.
            assert!(seen.is_null(), "{seen}");
            assert_eq!(errno(&served), libc::EACCES, "{served}");
        } else {
            let shared = v.starts_with("shared_netns");
            assert_eq!(ok(&seen), shared, "{v}: {seen}");
            assert_eq!(served["accepted"], shared, "{v}: {served}");
        }
        // Abstract sockets: per network namespace, and scoped by landlock where shared.
        let name = format!("corral-hostile-{v}-{}", std::process::id());
        let (seen, served) = pair(
            &lab,
            v,
            json!({"probe": "serve_abstract", "name": name}),
            v,
            |args| json!({"probe": "unix_abstract", "name": args["name"]}),
        )
        .await;
        let through = v == "shared_netns_no_landlock";
        assert_eq!(ok(&seen), through, "{v}: {seen}");
        assert_eq!(served["accepted"], through, "{v}: {served}");
        let want = if v == "shared_netns" || v == "no_net" {
            libc::EPERM
        } else {
            libc::ECONNREFUSED
        };
        if !through {
            assert_eq!(errno(&seen), want, "{v}: {seen}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_namespace_can_be_made() {
    if !can_run("namespaces") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let userns = ![
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
    ]
    .iter()
    .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == "0"));
    let no_seccomp = ["no_seccomp", "bare", "root_bare", "nobody_bare"];
    for ns in ["user", "mount", "net", "pid"] {
        for probe in ["clone", "unshare"] {
            for v in &all {
                let out = lab.probe(v, json!({"probe": probe, "ns": ns})).await;
                // Without seccomp: a user namespace where the host allows them to anyone; the
                // others need capabilities, which no agent has (root included).
                let through = no_seccomp.contains(v) && ns == "user" && userns;
                assert_eq!(ok(&out), through, "{v} {probe} {ns}: {out}");
                if !through {
                    assert_eq!(errno(&out), libc::EPERM, "{v} {probe} {ns}: {out}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_quota_holds_for_workspace_and_tmp() {
    if !can_run("disk") {
        return;
    }
    const QUOTA: i64 = 16 << 20;
    let lab = Lab::new(
        &["default", "no_landlock", "no_seccomp", "root"],
        "disk = \"16MiB\"",
    );
    for v in ["default", "no_landlock", "no_seccomp", "root"] {
        for dir in ["$home", "/tmp"] {
            let out = lab
                .probe(v, json!({"probe": "fill", "dir": dir, "max": 2 * QUOTA}))
                .await;
            assert_eq!(errno(&out), libc::ENOSPC, "{v} {dir}: {out}");
            assert!(
                out["written"].as_i64().unwrap() <= QUOTA,
                "{v} {dir}: {out}"
            );
            // Failing with the quota used up is recorded as such.
            let o = lab
                .run(
                    v,
                    &json!({"probe": "fill", "dir": dir, "max": 2 * QUOTA, "fail": true}),
                )
                .await;
            assert_eq!(
                reasons(&o),
                [ExitReason::DiskLimit],
                "{v} {dir}: {:?}",
                o.attempts
            );
        }
    }
    // Under the quota, a failure is what it is.
    let o = lab.run("default", &json!({"probe": "nope"})).await;
    assert_eq!(reasons(&o), [ExitReason::AgentError]);
    // Opt-outs: no quota at all, or none on a kept workspace (it must outlive its mount).
    let lab = Lab::new(&["default"], "disk = \"unlimited\"");
    let out = lab
        .probe(
            "default",
            json!({"probe": "fill", "dir": "/tmp", "max": 2 * QUOTA}),
        )
        .await;
    assert_eq!(out["written"], 2 * QUOTA, "{out}");
    let lab = Lab::new(&["default"], "disk = \"16MiB\"\nkeep_workspace = true");
    let out = lab
        .probe(
            "default",
            json!({"probe": "fill", "dir": "$home", "max": 2 * QUOTA}),
        )
        .await;
    assert_eq!(out["written"], 2 * QUOTA, "{out}");
}

/// Starts `agent` on `hold` (it waits in a tool call) and returns its host pid as the events
/// show it, with what to answer to let it finish.
async fn hold(lab: &Lab, agent: &str) -> (i32, ToolRequest, tokio::task::JoinHandle<CallOutcome>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ToolRequest>(1);
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn({
        let s = lab.s.clone();
        let agent = agent.to_string();
        async move {
            let opts = CallOptions {
                tools: Some(tx.into()),
                events: Some(etx),
                ..Default::default()
            };
            s.call(&agent, input(r#"{"probe":"hold"}"#), opts)
                .await
                .unwrap()
        }
    });
    let req = rx.recv().await.expect("the agent holds");
    let mut pid = 0;
    while let Ok(ev) = erx.try_recv() {
        if let AttemptEvent::Spawned { pid: p, .. } = ev {
            pid = p;
        }
    }
    assert!(pid > 0, "{agent}: no Spawned event before its tool call");
    (pid, req, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_and_other_agents_cannot_be_signalled() {
    if !can_run("signals") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let me = std::process::id();
    for v in &all {
        // Signal 0: the permission check without the signal.
        let out = lab
            .probe(v, json!({"probe": "kill", "pid": me, "sig": 0}))
            .await;
        let pid_ns = !NO_PID_NS.contains(v);
        if pid_ns {
            assert_eq!(errno(&out), libc::ESRCH, "{v}: {out}");
        } else {
            // Another uid, or root scoped by landlock; root without landlock could.
            assert_eq!(ok(&out), *v == "root_bare", "{v}: {out}");
        }
        let out = lab
            .probe(v, json!({"probe": "kill_parent", "sig": 0}))
            .await;
        if !pid_ns {
            assert_eq!(out["ppid"], me, "{v}: {out}");
            assert_eq!(ok(&out), *v == "root_bare", "{v}: {out}");
        }
    }
    // Another live agent, by the host pids of its init and of itself.
    let pairs = [
        ("default", "default"),
        ("named_user", "named_user"),
        ("no_pid", "no_pid"),
        ("no_ns", "no_ns"),
        ("nobody_bare", "nobody_bare"),
        ("root_no_ns", "root_no_ns"),
    ];
    for (a, b) in pairs {
        let (pid, req, task) = hold(&lab, a).await;
        let target = agent_pid(pid);
        for p in [pid, target] {
            let out = lab
                .probe(b, json!({"probe": "kill", "pid": p, "sig": 0}))
                .await;
            // Only the same user with no sandbox between them (nobody_bare).
            assert_eq!(ok(&out), b == "nobody_bare", "{b} -> {a} pid {p}: {out}");
            let out = lab.probe(b, json!({"probe": "ptrace", "pid": p})).await;
            assert_eq!(
                ok(&out),
                b == "nobody_bare",
                "{b} ptrace {a} pid {p}: {out}"
            );
        }
        req.reply.send(Ok(corral_proto::Value::Null)).unwrap();
        let o = task.await.unwrap();
        assert_eq!(
            reasons(&o),
            [ExitReason::Completed],
            "{a}: {:?}",
            o.attempts
        );
    }
}

fn caps_zero(out: &Json) -> bool {
    out["caps"].as_object().is_some_and(|c| {
        !c.is_empty()
            && c.values()
                .all(|v| v.as_str().is_some_and(|s| s.chars().all(|c| c == '0')))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_as_uids_of_their_own_without_capabilities() {
    if !can_run("uids") {
        return;
    }
    let all = runnable();
    let lab = Lab::new(&all, "");
    let (lo, hi) = corral::config::DEFAULT_UID_RANGE;
    for v in &all {
        let out = lab.probe(v, json!({"probe": "id"})).await;
        assert!(caps_zero(&out), "{v}: {out}");
        assert_eq!(out["groups"], json!([]), "{v}: {out}");
        let uid = out["uid"].as_u64().unwrap() as u32;
        match *v {
            "named_user" | "nobody_bare" => assert_eq!(uid, 65534, "{out}"),
            v if v.starts_with("root") => assert!(ok(&out) && uid == 0, "{v}: {out}"),
            _ => {
                assert!(!ok(&out), "{v}: {out}");
                assert!((lo..=hi).contains(&uid), "{v}: {out}");
                assert_eq!(out["gid"], uid, "{v}: {out}");
            }
        }
    }
    // Two live agents never share a uid: one holds while the other runs.
    for v in ["default", "no_ns"] {
        let (pid, req, task) = hold(&lab, v).await;
        let other = lab.probe(v, json!({"probe": "id"})).await;
        let held = host_uid(agent_pid(pid)).expect("the held agent is alive");
        assert_ne!(held, 0);
        assert_ne!(other["uid"], held, "{v}: both run as {held}");
        req.reply.send(Ok(corral_proto::Value::Null)).unwrap();
        let o = task.await.unwrap();
        assert_eq!(output(&o)["uid"], held, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_stem_gives_the_same_sandbox() {
    if !can_run("warm stems") {
        return;
    }
    let variants = ["default", "root", "no_landlock", "no_seccomp"];
    let lab = Lab::with_stems(&variants, "");
    for v in variants {
        for input in [
            json!({"probe": "id"}),
            json!({"probe": "setid_file", "dir": "$home"}),
            json!({"probe": "proc_fds", "pid": 1}),
            json!({"probe": "read", "path": "/etc/shadow"}),
            json!({"probe": "create", "dir": "/tmp"}),
        ] {
            let cold = lab.probe(v, input.clone()).await;
            assert!(lab.s.prewarm(v).await.unwrap(), "{v} gets stems");
            let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
            let opts = CallOptions {
                events: Some(etx),
                ..Default::default()
            };
            let o = lab
                .s
                .call(v, corral_e2e::input(&input.to_string()), opts)
                .await
                .unwrap();
            let warm = output(&o);
            let mut was_warm = false;
            while let Ok(ev) = erx.try_recv() {
                if let AttemptEvent::Spawned { warm, .. } = ev {
                    was_warm = warm;
                }
            }
            assert!(was_warm, "{v}: the call used the stem");
            if input["probe"] == "id" {
                assert!(caps_zero(&warm), "{v}: {warm}");
            }
            let same = |k: &str| {
                assert_eq!(
                    cold[k], warm[k],
                    "{v} {input} {k}: cold {cold}, warm {warm}"
                )
            };
            for k in [
                "ok",
                "errno",
                "caps",
                "groups",
                "create_mode",
                "mknod_mode",
                "chmod_errno",
                "opened",
            ] {
                same(k);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_never_maps_to_host_root() {
    if !can_run("user namespace") {
        return;
    }
    let lab = Lab::new(&["user_ns"], "");
    let o = lab.run("user_ns", &json!({"probe": "id"})).await;
    match reasons(&o).as_slice() {
        // A root supervisor refuses a user namespace (its agents have uids of their own; a
        // user namespace would only make them root inside it), naming the key.
        [ExitReason::SpawnFailed] => {
            let msg = &o.attempts[0].error.as_ref().unwrap().message;
            assert!(msg.contains("user namespace"), "{msg}");
        }
        _ => {
            assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
            let (pid, req, task) = hold(&lab, "user_ns").await;
            assert_ne!(host_uid(agent_pid(pid)), Some(0));
            req.reply.send(Ok(corral_proto::Value::Null)).unwrap();
            task.await.unwrap();
        }
    }
}
