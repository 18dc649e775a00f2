use super::*;
use std::os::unix::fs::PermissionsExt;

fn config(dir: &Path, text: &str) -> Config {
    let path = dir.join("corral.toml");
    std::fs::write(&path, text).expect("write");
    Config::load(&path).expect("parses")
}

fn messages(report: HostReport) -> Vec<String> {
    report
        .error()
        .map(|e| e.to_string().lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn every_environmental_problem_is_reported_at_its_key_in_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "[agents.a]\ncommand = [\"no-such-program-anywhere\"]\ncwd = \"/no/such/dir\"\n\
         readonly_paths = [\"/usr\", \"/no/such/ro\"]\nuser = \"no-such-user-here\"\n\
         group = \"no-such-group-here\"\nopen_files = 1000000000000\n",
    );
    let said = messages(host(&cfg));
    let file = dir.path().join("corral.toml").display().to_string();
    assert_eq!(said.len(), 6, "{said:#?}");
    assert!(
        said[0].starts_with(&format!(
            "{file}:2:12: agent `a`: command: program `no-such-program-anywhere` not found"
        )),
        "{said:#?}"
    );
    assert!(
        said[1].starts_with(&format!(
            "{file}:3:7: agent `a`: cwd /no/such/dir: No such file"
        )),
        "{said:#?}"
    );
    assert!(
        said[2].starts_with(&format!(
            "{file}:4:27: agent `a`: readonly_paths: /no/such/ro"
        )),
        "{said:#?}"
    );
    assert!(
        said[3].starts_with(&format!(
            "{file}:5:8: agent `a`: user `no-such-user-here`: no such user"
        )),
        "{said:#?}"
    );
    assert!(
        said[4].starts_with(&format!(
            "{file}:6:9: agent `a`: group `no-such-group-here`: no such group"
        )),
        "{said:#?}"
    );
    assert!(
        said[5].starts_with(&format!(
            "{file}:7:1: agent `a`: open_files = 1000000000000 is more than"
        )),
        "{said:#?}"
    );
}

#[test]
fn a_bare_name_is_said_as_the_file_it_became_and_a_good_config_has_no_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "[agents.a]\ncommand = [\"sh\", \"-c\", \"true\"]\n",
    );
    let report = host(&cfg);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (agent, note) = &report.notes[0];
    assert_eq!(agent, "a");
    assert!(note.starts_with("command: `sh` is /"), "{note}");
}

#[test]
fn a_script_whose_interpreter_the_agent_cannot_reach_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // An interpreter under a directory others may not enter (a pyenv under a private home).
    let home = dir.path().join("home");
    let bin = home.join("py/bin");
    std::fs::create_dir_all(&bin).expect("dirs");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let interp = bin.join("python3");
    std::fs::write(&interp, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&interp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = dir.path().join("agent.py");
    std::fs::write(&script, format!("#!{}\n", interp.display())).expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = config(dir.path(), "[agents.a]\ncommand = [\"./agent.py\"]\n");
    let said = messages(host(&cfg));
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains(&format!("starts with `#!{}`", interp.display())),
        "{said:#?}"
    );
    assert!(said[0].contains("outside the agent's root"), "{said:#?}");
    // A script that is not executable at all is refused too.
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let said = messages(host(&cfg));
    assert!(said[0].contains("is not executable"), "{said:#?}");
}

#[test]
fn a_command_tool_whose_program_is_missing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(
        &path,
        "[tools.t]\nkind = \"command\"\ncommand = [\"/no/such/prog\"]\n",
    )
    .unwrap();
    let config = crate::config::Config::load(&path).unwrap();
    let e = super::host(&config).error().expect("a problem").to_string();
    assert!(e.contains("tool `t`: command: /no/such/prog"), "{e}");
}
