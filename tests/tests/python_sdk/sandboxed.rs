//! Python agents under the default sandbox (a dynamic uid, a pivot_root'ed minimal root,
//! landlock): the interpreter and the SDK load for `["python3", "path/agent.py"]` with the SDK
//! on `PYTHONPATH` or beside the script, and for a virtual environment's interpreter with the
//! SDK pip-installed into it. Paths outside the system ones reach the agent only through
//! `readonly_paths`.

use super::{python, repo, sdk};
use corral_e2e::*;
use std::path::Path;
use std::process::Command;

fn pyecho() -> std::path::PathBuf {
    repo().join("examples/python/pyecho.py")
}

fn agent(command: &[&Path], env: &str, readonly: &[&Path]) -> Fixture {
    let list = |ps: &[&Path]| {
        ps.iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    fixture(&format!(
        "[agents.py]\ncommand = [{}]\nenv = {{ {env} }}\nreadonly_paths = [{}]\nmax_retries = 0\n",
        list(command),
        list(readonly)
    ))
}

fn assert_echoes(fx: &Fixture) {
    let c = call_json(fx, "py", r#"{"hello":[1,2.5,null]}"#);
    assert_eq!(c.code, 0, "{}\n{}", c.stderr, c.doc);
    assert_eq!(
        c.doc["output"],
        serde_json::json!({"echo": {"hello": [1, 2.5, null]}})
    );
    assert_eq!(c.reasons(), ["completed"]);
    assert_eq!(c.last()["exit_code"], 0, "it exits on Shutdown");
}

#[test]
fn the_readme_agent_runs_with_the_sdk_on_pythonpath() {
    let Some(py) = python() else { return };
    let fx = agent(
        &[&py, &pyecho()],
        &format!("PYTHONPATH = \"{}\"", sdk().display()),
        &[&sdk()],
    );
    assert_echoes(&fx);
}

#[test]
fn a_python_agent_runs_as_an_unprivileged_uid() {
    let Some(py) = python() else { return };
    let fx = fixture(&super::both(&py));
    let c = call_json(&fx, "pychaos", r#"{"do":"id"}"#);
    assert_eq!(c.code, 0, "{}\n{}", c.stderr, c.doc);
    let uid = c.doc["output"]["uid"].as_i64().expect("a uid");
    assert_ne!(uid, 0, "the agent ran as root");
}

#[test]
fn the_sdk_beside_the_script_is_found() {
    let Some(py) = python() else { return };
    let dir = open_tempdir();
    let script = dir.path().join("agent.py");
    std::fs::copy(pyecho(), &script).expect("copy the agent");
    let pkg = dir.path().join("corral_agent");
    std::fs::create_dir(&pkg).expect("package dir");
    for f in std::fs::read_dir(sdk().join("corral_agent")).expect("the SDK") {
        let f = f.expect("entry").path();
        if f.is_file() {
            std::fs::copy(&f, pkg.join(f.file_name().expect("name"))).expect("copy");
        }
    }
    let fx = agent(&[&py, &script], "", &[dir.path()]);
    assert_echoes(&fx);
}

#[test]
fn a_virtual_environment_with_the_sdk_installed_runs_its_agent() {
    let Some(py) = python() else { return };
    let dir = open_tempdir();
    let venv = dir.path().join("venv");
    let made = Command::new(&py)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("run python3 -m venv");
    if !made.status.success() {
        // Debian splits venv (and ensurepip) into python3-venv.
        eprintln!(
            "skipped: `python3 -m venv` failed here: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        return;
    }
    let vpy = venv.join("bin/python");
    // The SDK's build backend is its own (standard library only): no network, no index.
    let pip = Command::new(&vpy)
        .args(["-m", "pip", "install", "--no-deps", "--no-index", "--quiet"])
        .arg(sdk())
        .output()
        .expect("run pip");
    assert!(
        pip.status.success(),
        "pip install of the SDK: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    let fx = agent(&[&vpy, &pyecho()], "", &[&venv]);
    assert_echoes(&fx);
}
