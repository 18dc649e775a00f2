//! The docs cannot drift from the program: every ```toml block in `README.md` and `docs/*.md`
//! is parsed as a config (or, with a `[plan]` table, as TOML; blocks marked ```toml fragment
//! as TOML only), and every `corral …` line of a ```sh block is run with the built binary
//! against the example config, its exit status checked (0, or the `# exit N` its comment
//! says). `RUN_ID` and `DEMO_TREE` stand for the run and the tree of a `corral demo` run first;
//! lines with other placeholders (`C`, `[--json]`, a `plan.toml` of no file) are skipped, with
//! the reason printed.

use corral_e2e::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every fenced block of every doc: (file, line, info string, text).
fn blocks() -> Vec<(String, usize, String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read doc");
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut open: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match (&mut open, line.strip_prefix("```")) {
                (None, Some(info)) => open = Some((i + 1, info.trim().to_string(), String::new())),
                (Some(_), Some(_)) => {
                    let (at, info, body) = open.take().unwrap();
                    out.push((name.clone(), at, info, body));
                }
                (Some((_, _, body)), None) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, None) => {}
            }
        }
    }
    out
}

#[test]
fn every_toml_block_parses_as_what_it_shows() {
    let mut checked = 0;
    for (file, line, info, body) in blocks() {
        if !info.starts_with("toml") {
            continue;
        }
        let at = format!("{file}:{line}");
        let value: toml::Value = toml::from_str(&body).unwrap_or_else(|e| panic!("{at}: {e}"));
        checked += 1;
        if info.contains("fragment") || value.get("plan").is_some() {
            continue;
        }
        corral::Config::parse(&body, &root().join("docs/example.toml"))
            .unwrap_or_else(|e| panic!("{at}: not a valid config:\n{e}\n{body}"));
    }
    assert!(checked >= 4, "only {checked} toml blocks found");
}

#[test]
fn every_corral_command_of_the_docs_runs_and_exits_as_the_doc_says() {
    let corral = bin("corral");
    let state = tempfile::tempdir().expect("tempdir");
    // A real run and tree for the lines that name one (`RUN_ID`, `DEMO_TREE`): the demo's.
    let demo = Command::new(&corral)
        .arg("demo")
        .current_dir(root())
        .env("XDG_STATE_HOME", state.path())
        .output()
        .expect("run the demo");
    assert!(demo.status.success(), "{demo:?}");
    let text = String::from_utf8_lossy(&demo.stdout).into_owned();
    let run_id = text
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split(' ').next())
        .expect("the demo names its run")
        .to_string();
    let tree = text
        .split(" files in ")
        .nth(1)
        .and_then(|t| t.split(" \u{2014} ").next())
        .expect("the demo names its tree")
        .to_string();
    let mut ran = 0;
    for (file, line, info, body) in blocks() {
        if info != "sh" {
            continue;
        }
        for cmd in body.lines() {
            let cmd = cmd.trim();
            let Some(rest) = cmd
                .strip_prefix("./target/debug/corral ")
                .or_else(|| cmd.strip_prefix("corral "))
            else {
                continue;
            };
            let (rest, want) = match rest.split_once("# exit ") {
                Some((r, code)) => {
                    let n = code.split([' ', ':']).next().unwrap_or("");
                    (r, n.parse::<i32>().unwrap_or(0))
                }
                None => (rest.split('#').next().unwrap_or(rest), 0),
            };
            let rest = rest.replace("RUN_ID", &run_id).replace("DEMO_TREE", &tree);
            let rest = rest.as_str();
            let placeholder = [" C ", "[--", "corral.toml plan.toml", "plan.toml --config"]
                .iter()
                .any(|p| rest.contains(p));
            if placeholder || rest.starts_with("demo") {
                eprintln!("{file}:{line}: skipped (placeholder or long demo): {cmd}");
                continue;
            }
            let script = format!("\"$CORRAL\" {rest}");
            let out = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .current_dir(root())
                .env("CORRAL", &corral)
                .env("XDG_STATE_HOME", state.path())
                .output()
                .expect("run sh");
            assert_eq!(
                out.status.code(),
                Some(want),
                "{file}:{line}: `{cmd}` exited {:?}, the doc implies {want}\n{}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 4, "only {ran} commands ran");
}
