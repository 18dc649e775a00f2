//! Tools and permissions end to end: real agents (`chaos`, `toolbox`) calling tools through
//! the broker, command tools in their sandbox, http tools against a server on 127.0.0.1.

use corral::tools::{Broker, ChannelApprover, LedgerEntry, LedgerKey, MemoryLedger, ToolLedger};
use corral::{AttemptEvent, CallOptions, CallOutcome, Supervisor};
use corral_e2e::{bin, fixture, input, load, open_tempdir};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// A directory every agent uid may write (counters, fifos).
fn shared_dir() -> tempfile::TempDir {
    let d = open_tempdir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// `[agents.toolbox]` declaring `contract` tools, granted `grant`.
fn toolbox(contract: &str, grant: &str) -> String {
    format!(
        "[agents.toolbox]\ncommand = [\"{}\"]\nenv = {{ TOOLBOX_TOOLS = \"{contract}\" }}\ntools = {grant}\n",
        bin("toolbox").display()
    )
}

/// Run `agent` on `json`, its tool calls handed to `broker` in the attempt's own task (as
/// `corral call` and the daemon hand theirs: `ToolSink::Broker`; the channel a broker may
/// also serve is taken by the tests that say so).
async fn run(
    sup: &Supervisor,
    broker: Broker,
    agent: &str,
    json: Json,
) -> (CallOutcome, Arc<Broker>) {
    let broker = Arc::new(broker);
    let opts = CallOptions {
        tools: Some(broker.clone().into()),
        ..Default::default()
    };
    let out = sup
        .call(agent, input(&json.to_string()), opts)
        .await
        .expect("known agent");
    (out, broker)
}

fn results(o: &CallOutcome) -> Vec<Json> {
    let out = o.output.as_ref().map(|v| v.to_json()).unwrap_or_default();
    out["results"].as_array().cloned().unwrap_or_default()
}

fn kinds(o: &CallOutcome) -> Vec<String> {
    results(o)
        .iter()
        .map(|r| match r["ok"].as_bool() {
            Some(true) => "ok".to_string(),
            _ => r["error"]["kind"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn calls(list: &[(&str, Json)]) -> Json {
    let calls: Vec<Json> = list
        .iter()
        .map(|(t, a)| json!({"tool": t, "args": a}))
        .collect();
    json!({"do": "tools", "calls": calls})
}

#[tokio::test]
async fn a_call_outside_the_grant_is_denied_and_deny_wins() {
    let fx = fixture(&toolbox(
        "fs.read,fs.list",
        "[\"fs.read\", \"fs.list\", \"fs.write\"]\ndeny_tools = [\"fs.list\"]",
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let b = Broker::for_supervisor(&sup);
    let args = json!({"path": "."});
    let c = calls(&[
        ("fs.write", json!({"path": "x", "content": "y"})),
        ("fs.list", args.clone()),
        ("fs.read", json!({"path": "missing"})),
        ("shell", args),
    ]);
    let (o, _) = run(&sup, b, "toolbox", c).await;
    assert_eq!(
        kinds(&o),
        [
            "permission_denied",
            "permission_denied",
            "tool_failed",
            "permission_denied"
        ],
        "{:?}",
        results(&o)
    );
    let r = results(&o);
    assert!(r[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deny_tools"));
    // Recorded, each with its kind.
    let trace = &o.attempts[0].tool_calls;
    assert_eq!(trace.len(), 4);
    assert_eq!(trace[1].error_kind.as_deref(), Some("permission_denied"));
}

#[tokio::test]
async fn file_tools_stay_beneath_the_workspace() {
    let fx = fixture(
        "[agents.files]\ncommand = [\"CHAOS\"]\ntools = [\"fs.read\", \"fs.write\", \"fs.list\"]\n"
            .replace("CHAOS", &bin("chaos").display().to_string())
            .as_str(),
    );
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = calls(&[
        ("fs.write", json!({"path": "note.txt", "content": "hello"})),
        ("fs.read", json!({"path": "note.txt"})),
        ("fs.read", json!({"path": "../../../../../etc/passwd"})),
        ("fs.read", json!({"path": "/etc/passwd"})),
        ("fs.read", json!({"path": "/proc/self/root/etc/passwd"})),
        ("fs.write", json!({"path": "../escape.txt", "content": "x"})),
        ("fs.list", json!({"path": "."})),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "files", c).await;
    let k = kinds(&o);
    assert_eq!(
        k,
        [
            "ok",
            "ok",
            "permission_denied",
            "permission_denied",
            "permission_denied",
            "permission_denied",
            "ok"
        ],
        "{:?}",
        results(&o)
    );
    let r = results(&o);
    assert_eq!(r[1]["value"]["content"], "hello");
    let names: Vec<&str> = r[6]["value"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"note.txt"), "{names:?}");
}

#[tokio::test]
async fn a_hanging_command_is_killed_at_its_timeout_with_its_tree() {
    let fx = fixture(&format!(
        "[agents.chaos2]\ncommand = [\"{}\"]\ntools = [\"hang\"]\n\
         [tools.hang]\nkind = \"command\"\ncommand = [\"/usr/bin/sh\", \"-c\", \"sleep 987651 & sleep 987652\"]\ntimeout = \"500ms\"\n",
        bin("chaos").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let (o, _) = run(
        &sup,
        Broker::for_supervisor(&sup),
        "chaos2",
        calls(&[("hang", json!({}))]),
    )
    .await;
    assert_eq!(kinds(&o), ["timeout"], "{:?}", results(&o));
    let msg = results(&o)[0]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("killed with its process tree"), "{msg}");
    // Nothing of its tree is left.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("98765"))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

/// A tiny HTTP server on 127.0.0.1: `/good` answers JSON (and the authorization it got),
/// `/fail` 500, `/big` announces 10 MB, `/stream` sends 2 MB without a length, `/slow` never
/// answers.
fn http_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_one(s));
        }
    });
    addr
}

fn serve_one(mut s: std::net::TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            auth = h["authorization:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    let reply = |s: &mut std::net::TcpStream, status: &str, body: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    match path.as_str() {
        "/good" => {
            let got: Json = serde_json::from_slice(&body).unwrap_or_default();
            let answer = json!({"echo": got, "auth_seen": !auth.is_empty() && auth == "Bearer s3cr3t-t0ken"});
            reply(&mut s, "200 OK", &answer.to_string());
        }
        "/fail" => reply(&mut s, "500 Internal Server Error", "{\"error\":\"boom\"}"),
        "/big" => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n");
            let _ = s.write_all(&[b' '; 4096]);
        }
        "/stream" => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[");
            let chunk = vec![b'1'; 64 * 1024];
            for _ in 0..32 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        _ => {
            // `/slow`: never answers; the connection ends when the client gives up.
            let mut sink = [0u8; 1];
            let _ = s.read(&mut sink);
        }
    }
}

#[tokio::test]
async fn http_tools_good_failing_oversized_and_slow() {
    let addr = http_server();
    std::env::set_var("CORRAL_TEST_TOKEN", "Bearer s3cr3t-t0ken");
    let mut toml = format!(
        "[agents.web]\ncommand = [\"{}\"]\ntools = [\"good\", \"fail\", \"big\", \"stream\", \"slow\"]\n",
        bin("chaos").display()
    );
    for t in ["good", "fail", "big", "stream", "slow"] {
        toml.push_str(&format!(
            "[tools.{t}]\nkind = \"http\"\nurl = \"http://{addr}/{t}\"\ntimeout = \"1s\"\nmax_response = \"64KiB\"\nheader_env = {{ Authorization = \"CORRAL_TEST_TOKEN\" }}\n"
        ));
    }
    let fx = fixture(&toml);
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = calls(&[
        ("good", json!({"q": "hi"})),
        ("fail", json!({})),
        ("big", json!({})),
        ("stream", json!({})),
        ("slow", json!({})),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "web", c).await;
    assert_eq!(
        kinds(&o),
        ["ok", "tool_failed", "too_large", "too_large", "timeout"],
        "{:?}",
        results(&o)
    );
    let r = results(&o);
    assert_eq!(r[0]["value"]["echo"]["q"], "hi");
    assert_eq!(r[0]["value"]["auth_seen"], true);
    assert!(r[1]["error"]["message"].as_str().unwrap().contains("500"));
    // The secret is in no record.
    let rec = serde_json::to_string(&o.attempts).unwrap();
    assert!(!rec.contains("s3cr3t"), "secret leaked into the record");
}

/// A command tool that appends a line to `counter` (so executions can be counted) and
/// answers `{"n": lines}`.
fn counting_tool(name: &str, counter: &Path, extra: &str) -> String {
    format!(
        "[tools.{name}]\nkind = \"command\"\ncommand = [\"/usr/bin/sh\", \"-c\", \"umask 0; echo x >> {c}; printf '{{\\\"n\\\": %d}}' $(wc -l < {c})\"]\nwritable_paths = [\"{d}\"]\n{extra}\n",
        c = counter.display(),
        d = counter.parent().unwrap().display(),
    )
}

#[tokio::test]
async fn an_identical_read_is_served_from_the_trace() {
    let dir = shared_dir();
    let counter = dir.path().join("count");
    let fx = fixture(&format!(
        "[agents.reader]\ncommand = [\"{}\"]\ntools = [\"count\"]\n{}",
        bin("chaos").display(),
        counting_tool("count", &counter, "effect = \"read_only\"")
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = calls(&[
        ("count", json!({"a": 1})),
        ("count", json!({"a": 1})),
        ("count", json!({"a": 2})),
    ]);
    let (o, broker) = run(&sup, Broker::for_supervisor(&sup), "reader", c).await;
    assert_eq!(kinds(&o), ["ok", "ok", "ok"], "{:?}", results(&o));
    assert_eq!(lines(&counter), 2, "the repeat was not executed");
    assert_eq!(broker.executions(), 2);
    assert_eq!(results(&o)[1]["value"], results(&o)[0]["value"]);
    assert_eq!(o.attempts[0].tool_calls_deduplicated, 1);
    assert_eq!(o.tool_calls_deduplicated(), 1);
    assert!(o.attempts[0].tool_calls[1].deduplicated);
}

/// A file tool's answer depends on who asks (its workspace, its grants): an identical read by
/// another agent of the run, or by a retry, is done again for that caller, never served from
/// the first caller's trace.
#[tokio::test]
async fn a_file_read_is_not_served_to_another_caller_from_the_trace() {
    let secret = open_tempdir();
    std::fs::write(secret.path().join("s.txt"), "only for a").unwrap();
    std::fs::set_permissions(
        secret.path().join("s.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let path = secret.path().join("s.txt").display().to_string();
    let fx = fixture(&format!(
        "[agents.a]\ncommand = [\"{chaos}\"]\ntools = [\"fs.read\"]\nreadonly_paths = [\"{dir}\"]\n\
         [agents.b]\ncommand = [\"{chaos}\"]\ntools = [\"fs.read\"]\n{toolbox}",
        chaos = bin("chaos").display(),
        dir = secret.path().display(),
        toolbox = toolbox("fs.list", "[\"fs.list\"]"),
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let broker = Arc::new(Broker::for_supervisor(&sup));
    let read = calls(&[("fs.read", json!({ "path": path }))]);
    let mut seen = Vec::new();
    for agent in ["a", "b"] {
        let opts = CallOptions {
            tools: Some(broker.clone().into()),
            run_id: Some("one-run".into()),
            ..Default::default()
        };
        let o = sup
            .call(agent, input(&read.to_string()), opts)
            .await
            .expect("known agent");
        seen.push((kinds(&o), o.attempts[0].tool_calls[0].deduplicated));
    }
    assert_eq!(
        seen[0],
        (vec!["ok".to_string()], false),
        "a reads its grant"
    );
    assert_eq!(
        seen[1],
        (vec!["permission_denied".to_string()], false),
        "b is not answered from a's read"
    );
    // A retry lists its own fresh workspace: not its predecessor's answer.
    let c = json!({"calls": [{"tool": "fs.list", "args": {"path": "."}}], "fail_attempts": 1});
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "toolbox", c).await;
    assert_eq!(o.attempts.len(), 2, "one retry");
    assert_eq!(kinds(&o), ["ok"], "{:?}", results(&o));
    assert_eq!(o.attempts[1].tool_calls_deduplicated, 0);
    assert!(!o.attempts[1].tool_calls[0].deduplicated);
}

/// An answer within the tool's `max_response` but past the agent's `max_frame` would be
/// refused by the agent's decoder (ending it): it gets a `too_large` error instead, and goes on.
#[tokio::test]
async fn an_answer_past_the_agents_max_frame_is_too_large_not_fatal() {
    let dir = open_tempdir();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "x".repeat(200 << 10)).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fx = fixture(&format!(
        "[agents.small]\ncommand = [\"{}\"]\ntools = [\"fs.read\"]\nreadonly_paths = [\"{}\"]\n\
         max_retries = 0\n",
        bin("chaos").display(),
        dir.path().display(),
    ));
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let text = text.replace("[supervisor]\n", "[supervisor]\nmax_frame = \"64KiB\"\n");
    std::fs::write(&fx.config, text).unwrap();
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = calls(&[
        ("fs.read", json!({ "path": big.display().to_string() })),
        ("fs.read", json!({ "path": "." })),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "small", c).await;
    assert_eq!(o.attempts.len(), 1);
    assert_eq!(
        o.attempts[0].reason,
        corral::ExitReason::Completed,
        "{:?}",
        o.attempts[0]
    );
    let k = kinds(&o);
    assert_eq!(k[0], "too_large", "{:?}", results(&o));
    assert_eq!(k.len(), 2, "the agent went on to its next call");
    let msg = results(&o)[0]["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("max_frame"), "{msg}");
    let t = &o.attempts[0].tool_calls[0];
    assert!(!t.ok, "{t:?}");
    assert_eq!(t.error_kind.as_deref(), Some("too_large"));
}

/// A file in a directory closed to the agent's uid (mode 0700, owned by root) is out of reach
/// of its tools as of its own process, though the file itself is open to all and the
/// directory lies in a granted path.
#[tokio::test]
async fn a_file_behind_a_closed_directory_is_out_of_reach() {
    let dir = open_tempdir();
    for (sub, mode) in [("open", 0o755), ("closed", 0o700)] {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f.txt"), "private").unwrap();
        std::fs::set_permissions(d.join("f.txt"), std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let fx = fixture(&format!(
        "[agents.files]\ncommand = [\"{c}\"]\ntools = [\"fs.read\", \"fs.write\"]\n\
         writable_paths = [\"{d}\"]\n\
         [agents.one]\ncommand = [\"{c}\"]\ntools = [\"fs.read\"]\n\
         readonly_paths = [\"{d}/open/f.txt\"]\n\
         [agents.inner]\ncommand = [\"{c}\"]\ntools = [\"fs.read\"]\n\
         readonly_paths = [\"{d}/closed/f.txt\"]\n",
        c = bin("chaos").display(),
        d = dir.path().display(),
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();
    // A single file granted is read by its path.
    let c = calls(&[("fs.read", json!({ "path": at("open/f.txt") }))]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "one", c).await;
    assert_eq!(kinds(&o), ["ok"], "{:?}", results(&o));
    // A single file granted from inside a closed directory: the agent's process reads it (it
    // is bound in place), and so does its tool.
    let own = json!({"do": "read", "path": at("closed/f.txt")});
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "inner", own).await;
    let out = o.output.as_ref().map(|v| v.to_json()).unwrap_or_default();
    assert_eq!(out["ok"], true, "the process reads it: {out}");
    let c = calls(&[("fs.read", json!({ "path": at("closed/f.txt") }))]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "inner", c).await;
    assert_eq!(kinds(&o), ["ok"], "so does its tool: {:?}", results(&o));
    let c = calls(&[
        ("fs.read", json!({ "path": at("open/f.txt") })),
        ("fs.read", json!({ "path": at("closed/f.txt") })),
        (
            "fs.write",
            json!({ "path": at("closed/f.txt"), "content": "x" }),
        ),
        (
            "fs.write",
            json!({ "path": at("closed/new.txt"), "content": "x" }),
        ),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "files", c).await;
    assert_eq!(
        kinds(&o),
        [
            "ok",
            "permission_denied",
            "permission_denied",
            "permission_denied"
        ],
        "{:?}",
        results(&o)
    );
    assert_eq!(results(&o)[0]["value"]["content"], "private");
    let closed = dir.path().join("closed");
    assert_eq!(
        std::fs::read_to_string(closed.join("f.txt")).unwrap(),
        "private"
    );
    assert!(!closed.join("new.txt").exists());

    // In a directory open to all: a file that was there keeps its owner.
    use std::os::unix::fs::MetadataExt;
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = shared.join("theirs.txt");
    std::fs::write(&theirs, "").unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(12345), Some(12345)).unwrap();
    let c = calls(&[
        (
            "fs.write",
            json!({ "path": at("shared/theirs.txt"), "content": "x" }),
        ),
        (
            "fs.write",
            json!({ "path": at("shared/made.txt"), "content": "y" }),
        ),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "files", c).await;
    assert_eq!(kinds(&o), ["ok", "ok"], "{:?}", results(&o));
    let m = std::fs::metadata(&theirs).unwrap();
    assert_eq!((m.uid(), m.gid()), (12345, 12345), "the owner stays");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "x");
    // (Its owner is the agent's uid until the uid's release gives it to the directory's
    // owner, off the call's path: not asserted here.)
    assert_eq!(
        std::fs::read_to_string(shared.join("made.txt")).unwrap(),
        "y"
    );
}

#[tokio::test]
async fn a_destructive_call_is_not_executed_twice_across_a_retry() {
    let dir = shared_dir();
    let counter = dir.path().join("count");
    let fx = fixture(&format!(
        "{}{}",
        toolbox("bump", "[\"bump\"]"),
        counting_tool("bump", &counter, "")
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = json!({"calls": [{"tool": "bump", "args": {}}], "fail_attempts": 1});
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "toolbox", c).await;
    assert_eq!(o.attempts.len(), 2, "one retry");
    assert_eq!(kinds(&o), ["ok"], "{:?}", results(&o));
    assert_eq!(results(&o)[0]["value"]["n"], 1);
    assert_eq!(lines(&counter), 1, "executed once");
    assert_eq!(o.attempts[1].tool_calls_deduplicated, 1);
}

#[tokio::test]
async fn a_call_begun_by_a_crashed_attempt_gives_unknown_outcome() {
    let dir = shared_dir();
    let fifo = dir.path().join("started");
    nix_mkfifo(&fifo);
    let fx = fixture(&format!(
        "{}[tools.launch]\nkind = \"command\"\ncommand = [\"/usr/bin/sh\", \"-c\", \"echo go > {f}; exec sleep 987653\"]\nwritable_paths = [\"{d}\"]\ntimeout = \"20s\"\n",
        toolbox("launch", "[\"launch\"]"),
        f = fifo.display(),
        d = dir.path().display(),
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let broker = Arc::new(Broker::for_supervisor(&sup));
    let (tx, _task) = broker.serve();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = CallOptions {
        tools: Some(tx.into()),
        events: Some(ev_tx),
        ..Default::default()
    };
    let c = json!({"calls": [{"tool": "launch", "args": {"target": "prod"}}]});
    let call = sup.call("toolbox", input(&c.to_string()), opts);
    let killer = async {
        let Some(AttemptEvent::Spawned { pid, .. }) = ev_rx.recv().await else {
            panic!("no spawn")
        };
        // The tool has started when it writes to the fifo.
        let f = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::read(f).unwrap())
            .await
            .unwrap();
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    let (o, ()) = tokio::join!(call, killer);
    let o = o.unwrap();
    assert!(o.attempts.len() >= 2, "retried after the crash");
    assert_eq!(kinds(&o), ["unknown_outcome"], "{:?}", results(&o));
    drop(sup);
}

fn nix_mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap();
}

#[tokio::test]
async fn a_ledger_entry_left_unfinished_is_never_run_again() {
    // A persistent ledger outlives a supervisor that crashed mid-call: the resumed run finds
    // the call begun and not finished.
    let dir = shared_dir();
    let counter = dir.path().join("count");
    let fx = fixture(&format!(
        "{}{}",
        toolbox("bump", "[\"bump\"]"),
        counting_tool("bump", &counter, "")
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let key = LedgerKey {
        run_id: "resumed".into(),
        task: "toolbox".into(),
        seq: 1,
    };
    // The args hash the broker computes for `{}`.
    let hash = {
        let b = corral_proto::frame::encode(&input("{}")).unwrap();
        let h = b[4..].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{h:016x}")
    };
    ledger.begin(&key, "bump", &hash).unwrap();
    let broker = Arc::new(Broker::for_supervisor(&sup).with_ledger(ledger.clone()));
    let (tx, _task) = broker.serve();
    let opts = CallOptions {
        tools: Some(tx.into()),
        run_id: Some("resumed".into()),
        ..Default::default()
    };
    let c = json!({"calls": [{"tool": "bump", "args": {}}]});
    let o = sup
        .call("toolbox", input(&c.to_string()), opts)
        .await
        .unwrap();
    assert_eq!(kinds(&o), ["unknown_outcome"], "{:?}", results(&o));
    assert_eq!(lines(&counter), 0, "not run");
    assert!(matches!(
        ledger.lookup(&key).unwrap(),
        Some(LedgerEntry::Started { .. })
    ));
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_refuses_at_once() {
    let dir = shared_dir();
    let counter = dir.path().join("count");
    let fx = fixture(&format!(
        "[agents.caller]\ncommand = [\"{}\"]\ntools = [\"flaky\"]\n\
         [tools.flaky]\nkind = \"command\"\ncommand = [\"/usr/bin/sh\", \"-c\", \"umask 0; echo x >> {c}; echo broken >&2; exit 1\"]\nwritable_paths = [\"{d}\"]\nbreaker = {{ failures = 2, open_for = \"60s\" }}\n",
        bin("chaos").display(),
        c = counter.display(),
        d = dir.path().display(),
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let c = calls(&[
        ("flaky", json!({"n": 1})),
        ("flaky", json!({"n": 2})),
        ("flaky", json!({"n": 3})),
    ]);
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "caller", c).await;
    assert_eq!(
        kinds(&o),
        ["tool_failed", "tool_failed", "circuit_open"],
        "{:?}",
        results(&o)
    );
    let msg = results(&o)[0]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("exited with code 1") && msg.contains("broken"),
        "{msg}"
    );
    assert_eq!(lines(&counter), 2, "the open breaker ran nothing");
}

#[tokio::test]
async fn approval_yes_no_and_timeout() {
    let fx = fixture(&format!(
        "[agents.asker]\ncommand = [\"{}\"]\ntools = [\"fs.write\"]\n\
         [tools.\"fs.write\"]\napprove = \"ask\"\napprove_timeout = \"300ms\"\n",
        bin("chaos").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let (approver, mut questions) = ChannelApprover::new();
    let broker = Broker::for_supervisor(&sup).with_approver(Arc::new(approver));
    let answers = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut n = 0;
        while let Some((q, tx)) = questions.recv().await {
            assert_eq!(q.tool, "fs.write");
            n += 1;
            match n {
                1 => {
                    let _ = tx.send(true);
                }
                2 => {
                    let _ = tx.send(false);
                }
                _ => held.push(tx), // never answered
            }
        }
        n
    });
    let c = calls(&[
        ("fs.write", json!({"path": "a", "content": "1"})),
        ("fs.write", json!({"path": "b", "content": "2"})),
        ("fs.write", json!({"path": "c", "content": "3"})),
    ]);
    let (o, broker) = run(&sup, broker, "asker", c).await;
    assert_eq!(
        kinds(&o),
        ["ok", "approval_denied", "approval_denied"],
        "{:?}",
        results(&o)
    );
    let r = results(&o);
    assert!(r[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("approve_timeout"));
    assert_eq!(broker.executions(), 1);
    drop(broker);
    drop(sup);
    assert_eq!(answers.await.unwrap(), 3);
}

/// A broker called in the attempt's task answers at most 64 calls in place per pass over the
/// frames read (each leaves no call outstanding, so the agent's bound on outstanding calls would
/// not hold back a flood of small ones); the rest of the pass's calls go to tasks of their own,
/// where that bound applies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_answers_at_most_64_calls_in_place() {
    let fx = fixture(&format!(
        "[agents.hostile]\ncommand = [\"{}\"]\ntools = [\"fs.read\"]\nmax_retries = 0\n",
        bin("hostile_flood").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    // A hundred reads of a missing file in one write (under PIPE_BUF: seen in one pass).
    let (o, broker) = run(
        &sup,
        Broker::for_supervisor(&sup),
        "hostile",
        json!({"do": "outstanding", "n": 100, "path": "m"}),
    )
    .await;
    let out = o.output.as_ref().map(|v| v.to_json()).unwrap_or_default();
    assert_eq!(
        out["kinds"],
        json!({"tool_failed": 100}),
        "{:?}",
        o.attempts
    );
    assert_eq!(broker.executions(), 100);
    assert_eq!(broker.answered_inline(), 64);
    assert_eq!(o.attempts[0].tool_calls.len(), 100);
}

#[tokio::test]
async fn a_flood_of_tool_calls_keeps_the_supervisor_bounded() {
    let fx = fixture(&format!(
        "[agents.flooder]\ncommand = [\"{}\"]\ntools = [\"fs.read\"]\nwall_time = \"60s\"\n",
        bin("chaos").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let list: Vec<(&str, Json)> = (0..3000)
        .map(|i| ("fs.read", json!({"path": format!("f{i}")})))
        .collect();
    let (o, _) = run(&sup, Broker::for_supervisor(&sup), "flooder", calls(&list)).await;
    assert_eq!(results(&o).len(), 3000);
    let rec = &o.attempts[0];
    assert!(rec.tool_calls.len() <= 128, "{}", rec.tool_calls.len());
    assert_eq!(rec.tool_calls.len() as u64 + rec.tool_calls_dropped, 3000);
}

#[test]
fn validate_names_grants_of_unknown_tools() {
    let fx =
        fixture("[agents.x]\ncommand = [\"/usr/bin/true\"]\ntools = [\"fs.read\", \"nope\"]\n");
    let out = corral_e2e::corral(&["validate", "--config", fx.config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("tools names `nope`, which is not a tool"),
        "{text}"
    );
}

/// A grant may ask for approval of one agent's calls, whatever the tool says.
#[tokio::test]
async fn a_grant_may_ask_for_approval() {
    let fx = fixture(&format!(
        "[agents.careful]\ncommand = [\"{chaos}\"]\ntools = [{{ name = \"fs.write\", approve = \"ask\" }}]\n\
         [agents.trusted]\ncommand = [\"{chaos}\"]\ntools = [\"fs.write\"]\n",
        chaos = bin("chaos").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    let (approver, mut questions) = ChannelApprover::new();
    let asked = tokio::spawn(async move {
        let mut n = 0;
        while let Some((q, tx)) = questions.recv().await {
            assert_eq!(q.agent, "careful");
            n += 1;
            let _ = tx.send(false);
        }
        n
    });
    let approver = Arc::new(approver);
    let c = calls(&[("fs.write", json!({"path": "a", "content": "1"}))]);
    let broker = Broker::for_supervisor(&sup).with_approver(approver.clone());
    let (o, _) = run(&sup, broker, "careful", c.clone()).await;
    assert_eq!(kinds(&o), ["approval_denied"], "{:?}", results(&o));
    let broker = Broker::for_supervisor(&sup).with_approver(approver);
    let (o, broker) = run(&sup, broker, "trusted", c).await;
    assert_eq!(kinds(&o), ["ok"], "{:?}", results(&o));
    drop(broker);
    drop(sup);
    assert_eq!(
        asked.await.unwrap(),
        1,
        "only the careful agent's call was asked about"
    );
}

/// `corral validate --start` names a tool the agent's contract asks for and the config does
/// not grant.
#[test]
fn validate_start_names_contract_tools_not_granted() {
    let fx = fixture(&format!(
        "[agents.tb]\ncommand = [\"{}\"]\nenv = {{ TOOLBOX_TOOLS = \"fs.read,fs.write\" }}\ntools = [\"fs.read\"]\n",
        bin("toolbox").display()
    ));
    let out = corral_e2e::corral(&[
        "validate",
        "--start",
        "--config",
        fx.config.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("asks for tool `fs.write`, which its `tools` does not grant"),
        "{text}"
    );
    assert!(!text.contains("asks for tool `fs.read`"), "{text}");
}

#[tokio::test]
async fn small_file_work_is_answered_at_once_and_large_work_still_whole() {
    let fx = fixture(&format!(
        "[agents.files]\ncommand = [\"{}\"]\ntools = [\"fs.read\", \"fs.write\", \"fs.list\"]\n",
        bin("chaos").display()
    ));
    let sup = Supervisor::new(load(&fx)).unwrap();
    // Past what is done inline (16 KiB): written and read on the blocking pool.
    let big = "x".repeat(40 << 10);
    let c = calls(&[
        ("fs.write", json!({"path": "big.txt", "content": big})),
        ("fs.read", json!({"path": "big.txt"})),
        ("fs.write", json!({"path": "small.txt", "content": "hello"})),
        ("fs.read", json!({"path": "small.txt"})),
        ("fs.list", json!({"path": "."})),
        ("fs.read", json!({"path": "../../../../../etc/passwd"})),
    ]);
    let (o, broker) = run(&sup, Broker::for_supervisor(&sup), "files", c).await;
    assert_eq!(
        kinds(&o),
        ["ok", "ok", "ok", "ok", "ok", "permission_denied"],
        "{:?}",
        results(&o)
    );
    let r = results(&o);
    assert_eq!(r[0]["value"]["bytes"], big.len());
    assert_eq!(
        r[1]["value"]["content"].as_str().map(str::len),
        Some(big.len())
    );
    assert_eq!(r[3]["value"]["content"], "hello");
    // In name order (beside the workspace's own `.tmp`).
    let names: Vec<&str> = r[4]["value"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names, ["big.txt", "small.txt"]);
    // The small write, the small read, the listing and the refusal were answered where they
    // arrived; the two large ones went to the blocking pool (which may finish one before its
    // first poll: then it is answered at once too).
    assert_eq!(broker.offloaded(), 2);
    assert!(
        (4..=6).contains(&broker.answered_inline()),
        "{}",
        broker.answered_inline()
    );
    // Traced as any call: the record holds all six, with their sizes.
    let trace = &o.attempts[0].tool_calls;
    assert_eq!(trace.len(), 6);
    assert!(trace[1].result_bytes > big.len() as u64, "{:?}", trace[1]);
}

/// A broker too busy to take a call now (its channel full) makes the call wait, never fails it.
#[tokio::test]
async fn a_call_waits_for_a_busy_broker_instead_of_failing() {
    let fx = fixture(&format!(
        "[agents.caller]\ncommand = [\"{}\"]\ntools = [\"fs.list\"]\nwall_time = \"60s\"\n",
        bin("chaos").display()
    ));
    let sup = Arc::new(Supervisor::new(load(&fx)).unwrap());
    // The channel's one slot is taken: every call the attempt relays finds it full.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<corral::ToolRequest>(1);
    let permit = tx.clone().reserve_owned().await.unwrap();
    let (etx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let call = tokio::spawn({
        let sup = sup.clone();
        async move {
            let opts = CallOptions {
                tools: Some(tx.into()),
                events: Some(etx),
                ..Default::default()
            };
            let json = calls(&[("fs.list", json!({"path": "."}))]);
            sup.call("caller", input(&json.to_string()), opts)
                .await
                .unwrap()
        }
    });
    while let Some(ev) = events.recv().await {
        if matches!(ev, AttemptEvent::Ready { .. }) {
            break;
        }
    }
    // The agent makes its call as soon as it has its task. Failed at once (the old way), the
    // call would end here; it must still be waiting.
    let mut call = call;
    let ended = tokio::time::timeout(std::time::Duration::from_millis(500), &mut call).await;
    assert!(
        ended.is_err(),
        "the call ended while the broker was busy: {ended:?}"
    );
    drop(permit);
    let req = rx
        .recv()
        .await
        .expect("the call reaches the broker once there is room");
    assert_eq!(req.call.tool, "fs.list");
    req.reply
        .send(Ok(corral_proto::Value::from_json(&json!({"entries": []}))))
        .unwrap();
    let o = call.await.unwrap();
    assert_eq!(kinds(&o), ["ok"], "{:?}", o.attempts);
}
