//! Row 12: agents written in Python on the SDK in `agent-sdk/python` (`corral_agent`).
//! Spawn → `Ready` of `examples/python/pyecho.py` through `Supervisor::call`, beside a bare
//! `python3 -c pass` (spawn → exit) in the same run; and frames per second through the Python
//! codec (`corral_agent.wire`, timed inside Python) beside the Rust codec doing the same work
//! in this process.

use crate::harness::{self, corral_ready, Env, Sup};
use crate::raw::{self, Program};
use crate::stats::{self, fig, p50, Figure, Row, Section, Unit};
use anyhow::{anyhow, bail, Context, Result};
use corral_proto::frame;
use corral_proto::{ToolCall, Up, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A `python3` on `PATH` inside the system paths every agent's root has (as
/// `corral demo` picks it): a pyenv shim under a private home would not run in the sandbox.
pub fn system_python() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| {
            corral::sandbox::rootfs::SYSTEM_PATHS
                .iter()
                .any(|s| d.starts_with(s))
        })
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
}

/// The source tree's Python SDK and example agent.
fn sdk_paths() -> (PathBuf, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = src.canonicalize().unwrap_or(src);
    (
        src.join("agent-sdk/python"),
        src.join("examples/python/pyecho.py"),
    )
}

/// A copy of the SDK in `dir` (world-readable) with its bytecode compiled, as a package
/// installed with pip has it; the source tree is left untouched. Returns its directory.
fn installed_copy(py: &Path, sdk: &Path, dir: &Path) -> Result<PathBuf> {
    let dst = dir.join("corral_agent");
    std::fs::create_dir_all(&dst)?;
    for e in std::fs::read_dir(sdk.join("corral_agent"))? {
        let e = e?;
        let name = e.file_name();
        if e.file_type()?.is_file() && !name.to_string_lossy().ends_with(".pyc") {
            std::fs::copy(e.path(), dst.join(&name))?;
        }
    }
    let out = std::process::Command::new(py)
        .args(["-m", "compileall", "-q"])
        .arg(&dst)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .env_remove("PYTHONPYCACHEPREFIX")
        .output()
        .context("run python3 -m compileall")?;
    if !out.status.success() {
        bail!(
            "compiling the SDK failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("chmod of the SDK copy failed");
    }
    Ok(dir.to_path_buf())
}

/// A supervisor of `pyecho` on the SDK in `sdk`, with `keys` (and `cgroups`).
fn pyecho_sup(env: &Env, py: &Path, sdk: &Path, keys: &str, cgroups: bool) -> Result<Sup> {
    let (_, script) = sdk_paths();
    let s = |p: &Path| serde_json::to_string(&p.display().to_string());
    let text = format!(
        "[agents.pyecho]\ncommand = [{}, {}]\nenv = {{ PYTHONPATH = {}, \
         PYTHONDONTWRITEBYTECODE = \"1\" }}\nreadonly_paths = [{}]\n{keys}\n",
        s(py)?,
        s(&script)?,
        s(sdk)?,
        s(sdk)?,
    );
    harness::supervisor(env, &text, cgroups)
}

/// Row 12a/12b: spawn → ready, plain and isolated, each sample followed by `python3 -c pass`.
fn spawn_rows(env: &Env, py: &Path, sec: &mut Section) -> Result<()> {
    let (sdk, _) = sdk_paths();
    let copy = tempfile::tempdir()?;
    let installed = installed_copy(py, &sdk, copy.path())?;
    let plain = pyecho_sup(env, py, &installed, crate::call_rows::PLAIN, false)?;
    let isolated = pyecho_sup(env, py, &installed, "", true)?;
    let bare = Program::new(py, &["-c", "pass"])?;
    // The SDK's import alone, for the footnote: where the difference goes.
    let import = format!(
        "import sys; sys.path.insert(0, {}); import corral_agent",
        serde_json::to_string(&installed.display().to_string())?
    );
    let import_only = Program::new(py, &["-c", &import])?;
    let mut imports = Vec::new();
    let n = if env.quick { 20 } else { 100 };
    let warmup = 2;
    let (mut a, mut b, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let (mut a_hs, mut b_hs) = (Vec::new(), Vec::new());
    let input = || Value::map([("n", Value::Int(1))]);
    let mut failure: [Option<String>; 2] = [None, None];
    for i in 0..warmup + n {
        for (k, sup) in [&plain, &isolated].into_iter().enumerate() {
            if failure[k].is_some() {
                continue;
            }
            match env.run(corral_ready(
                sup.sup.clone(),
                "pyecho".into(),
                input(),
                false,
            ))? {
                Ok(s) if i >= warmup => {
                    let hs = s.spawned.map(|sp| s.ready.saturating_sub(sp));
                    if k == 0 {
                        a.push(s.ready);
                        a_hs.extend(hs);
                    } else {
                        b.push(s.ready);
                        b_hs.extend(hs);
                    }
                }
                Ok(_) => {}
                Err(e) => failure[k] = Some(e),
            }
        }
        let d = raw::spawn_exit(&bare).context("python3 -c pass")?;
        let imp = raw::spawn_exit(&import_only).context("python3 -c 'import corral_agent'")?;
        if i >= warmup {
            base.push(d);
            imports.push(imp);
        }
    }
    let figure = |k: usize, v: &[Duration]| match &failure[k] {
        Some(e) => Figure::NotMeasured(format!("n/a: {e}")),
        None => fig(v),
    };
    let row = Row::new(
        "12a",
        "pyecho spawn→ready, plain",
        Unit::Time,
        figure(0, &a),
    )
    .base("python3 -c pass, spawn→exit", fig(&base));
    let met = row.ratio().map(|r| r <= 1.2);
    sec.rows.push(row.target("≤ 1.2× bare python", met));
    sec.rows.push(
        Row::new(
            "12b",
            "pyecho spawn→ready, default isolation",
            Unit::Time,
            figure(1, &b),
        )
        .base("python3 -c pass, spawn→exit", fig(&base))
        .target("informative", None),
    );
    sec.note(format!(
        "12a: {n} calls of examples/python/pyecho.py ({}) on a copy of the source tree's SDK \
         with its bytecode compiled beforehand (python3 -m compileall), as a package \
         installed with pip has it, on PYTHONPATH; row 1's agent keys; \
         timed from Supervisor::call to the Ready event; each followed by a raw posix_spawn \
         of `python3 -c pass` to its exit; Spawned → Ready p50 {} (interpreter start, SDK \
         import, handshake); `python3 -c 'import corral_agent'` (same copy) spawn → exit, \
         interleaved too: p50 {}",
        py.display(),
        p50(&a_hs),
        p50(&imports)
    ));
    sec.note(format!(
        "12b: the same agent with the default isolation and cgroups (dynamic uid, own root, \
         namespaces, seccomp, landlock), interleaved with 12a; Spawned → Ready p50 {}",
        p50(&b_hs)
    ));
    Ok(())
}

/// Encode and decode `n` frames with `corral_agent.wire`, timed inside Python.
const CODEC_SCRIPT: &str = r#"
import json, sys, time
from corral_agent import wire

n = int(sys.argv[1])
t0 = time.perf_counter()
for i in range(n):
    data = wire.encode_up(wire.ToolCall(i, "fs.list", {"path": ".", "n": i}))
    payload, rest = wire.split_frame(data)
    msg = wire.decode_up(payload)
    assert not rest and msg.call_id == i
print(json.dumps({"rate": n / (time.perf_counter() - t0)}))
"#;

fn python_codec(py: &Path, n: usize) -> Result<f64> {
    let (sdk, _) = sdk_paths();
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("codec_bench.py");
    std::fs::write(&script, CODEC_SCRIPT)?;
    let out = std::process::Command::new(py)
        .arg(&script)
        .arg(n.to_string())
        .env("PYTHONPATH", &sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .context("run python3")?;
    if !out.status.success() {
        bail!(
            "codec script failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["rate"]
        .as_f64()
        .ok_or_else(|| anyhow!("unexpected output of the codec script: {v}"))
}

/// The same in this process with the Rust codec (`corral_proto::frame`, which the Rust SDK
/// uses): encode a frame, take its payload, decode it.
fn rust_codec(n: usize) -> Result<f64> {
    let t0 = Instant::now();
    for i in 0..n as u64 {
        let args = Value::map([("path", Value::from(".")), ("n", Value::Int(i as i64))]);
        let bytes = frame::encode(&Up::ToolCall(ToolCall {
            call_id: i,
            tool: "fs.list".into(),
            args,
        }))?;
        let msg: Up = frame::decode_payload(&bytes[4..])?;
        match msg {
            Up::ToolCall(c) if c.call_id == i => {
                std::hint::black_box(c);
            }
            other => bail!("decoded {other:?}"),
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Row 12c: frames per second through each codec.
fn codec_row(env: &Env, py: &Path, sec: &mut Section) -> Result<()> {
    let (n, runs) = if env.quick { (20_000, 2) } else { (100_000, 3) };
    let (mut pyr, mut rsr) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        pyr.push(python_codec(py, n)?);
        rsr.push(rust_codec(n)?);
    }
    let rf = |v: &[f64]| match stats::rate_summary(v) {
        Some(s) => Figure::Measured(s),
        None => Figure::NotMeasured("no samples".into()),
    };
    sec.rows.push(
        Row::new("12c", "frames/s, Python codec", Unit::Rate, rf(&pyr))
            .base("Rust codec (corral_proto)", rf(&rsr))
            .target("informative", None),
    );
    sec.note(format!(
        "12c: {n} ToolCall frames ({{\"path\": \".\", \"n\": i}} as args) encoded as a whole \
         frame, split and decoded again, one at a time: in Python with corral_agent.wire \
         (timed inside the interpreter, start-up excluded), in Rust with corral_proto::frame \
         (encode, decode_payload) in this process; {runs} runs each"
    ));
    Ok(())
}

/// Row 12.
pub fn row12(env: &Env, sec: &mut Section) -> Result<()> {
    let Some(py) = system_python() else {
        sec.rows.push(Row::new(
            "12",
            "Python agent rows",
            Unit::Time,
            Figure::NotMeasured("skipped: no python3 on PATH in the system paths".into()),
        ));
        return Ok(());
    };
    let r = spawn_rows(env, &py, sec);
    crate::guard(sec, "12a", r);
    let r = codec_row(env, &py, sec);
    crate::guard(sec, "12c", r);
    Ok(())
}
