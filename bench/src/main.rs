//! `corral-bench`: corral's costs, each beside a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p corral-bench -- [--quick] [ROW-FILTER...]
//! ```
//!
//! A filter is a row number (`1` … `13`) or part of a row's name (`spawn`, `isolated`,
//! `ballast`, `frames`, `hang`, `restart`, `idle`, `journal`, `journal-call`, `tools`,
//! `fan-out`, `python`, `daemon`); without filters every row runs. `--soak DURATION` runs the soak
//! instead (see `soak`). `--quick`
//! runs fewer iterations (and fewer agents in rows 5 and 7). The program first builds the
//! agents it needs (`cargo build -p corral-examples -p corral`, same profile as itself) and
//! finds them next to its own executable.
//!
//! Benchmarks measure; tests assert. Nothing here fails on a figure: each row prints p50/p99,
//! the baseline's p50/p99, their ratio and whether the target is met. See `docs/bench.md`.

mod call_rows;
mod daemon_rows;
mod harness;
mod journal_rows;
mod load_rows;
mod peers;
mod plan_rows;
mod python_rows;
mod raw;
mod soak;
mod spawn_rows;
mod stats;
mod tool_rows;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The row groups, by number and name.
const GROUPS: [(&str, &str); 13] = [
    ("1", "spawn-plain"),
    ("2", "spawn-isolated"),
    ("3", "ballast"),
    ("4", "frames"),
    ("5", "hang"),
    ("6", "restart"),
    ("7", "idle"),
    ("8", "journal"),
    ("9", "journal-call"),
    ("10", "tools"),
    ("11", "fan-out"),
    ("12", "python"),
    ("13", "daemon"),
];

const USAGE: &str = "usage: corral-bench [--quick] [--no-build] [--setup-peers] [ROW-FILTER...]\n\
       corral-bench [--no-build] --soak DURATION\n\
  --setup-peers: first install the peer tools (bench/setup-peers: bubblewrap, supervisor)\n\
  --soak DURATION: 300-way fan-outs making tool calls, back to back, for DURATION (e.g. 10m)\n\
  ROW-FILTER: a row number 1-13 or part of a name: spawn-plain spawn-isolated ballast frames \
  hang restart idle journal journal-call tools fan-out python daemon";

struct Args {
    quick: bool,
    build: bool,
    setup_peers: bool,
    soak: Option<std::time::Duration>,
    filters: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        build: true,
        setup_peers: false,
        soak: None,
        filters: Vec::new(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--soak" => {
                let d = argv.next().context("--soak needs a duration, e.g. 10m")?;
                a.soak =
                    Some(soak::parse_duration(&d).map_err(|e| anyhow::anyhow!("{e}\n{USAGE}"))?);
            }
            "--quick" => a.quick = true,
            "--no-build" => a.build = false,
            "--setup-peers" => a.setup_peers = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option `{s}`\n{USAGE}"),
            s => a.filters.push(s.to_string()),
        }
    }
    for f in &a.filters {
        if !GROUPS
            .iter()
            .any(|(n, name)| n == f || name.contains(f.as_str()))
        {
            bail!("`{f}` matches no row\n{USAGE}");
        }
    }
    Ok(a)
}

fn selected(args: &Args, group: usize) -> bool {
    let (n, name) = GROUPS[group - 1];
    args.filters.is_empty()
        || args
            .filters
            .iter()
            .any(|f| f == n || name.contains(f.as_str()))
}

/// Build the agents (same profile as this executable) and return the directory they are in.
fn agents_dir(build: bool) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!("warning: not a release build: figures mean little (use cargo run --release)");
    }
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "corral-examples",
            "-p",
            "corral",
            "-p",
            "corral-cli",
        ])
        .arg("--manifest-path")
        .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        eprintln!("building the agents: {cmd:?}");
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("warning: building the agents failed ({s}); using what is there"),
            Err(e) => eprintln!("warning: cannot run cargo ({e}); using what is there"),
        }
    }
    for bin in ["echo", "chaos"] {
        if !dir.join(bin).is_file() {
            bail!(
                "agent `{bin}` not found in {} (build it with cargo build{} -p corral-examples)",
                dir.display(),
                if release { " --release" } else { "" }
            );
        }
    }
    Ok(dir)
}

/// A row group failed outright (set-up error): keep going with the others.
fn guard(sec: &mut stats::Section, id: &str, r: Result<()>) {
    if let Err(e) = r {
        sec.rows.push(stats::Row::new(
            id,
            "(row failed)",
            stats::Unit::Time,
            stats::Figure::NotMeasured(format!("n/a: {e:#}")),
        ));
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.setup_peers {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("setup-peers");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .with_context(|| format!("run {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    let dir = agents_dir(args.build)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let env = harness::Env {
        rt,
        quick: args.quick,
        echo: dir.join("echo"),
        chaos: dir.join("chaos"),
    };
    if let Some(d) = args.soak {
        return soak::run(&env, d);
    }
    let started = Instant::now();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    // Row 7 runs first, so that its baseline is the process before it ever started an agent
    // (and before row 3's ballast or row 5's 300 agents left anything in the allocator).
    let mut sections: Vec<(usize, stats::Section)> = Vec::new();
    let order = [7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13];
    let mut row1 = None;
    for g in order {
        if !selected(&args, g) {
            continue;
        }
        eprintln!("running row {g} ({}) …", GROUPS[g - 1].1);
        let mut sec = stats::Section::default();
        let r = match g {
            1 => spawn_rows::row1(&env, &mut sec).map(|s| row1 = s),
            2 => spawn_rows::row2(&env, &mut sec),
            3 => spawn_rows::row3(&env, row1.as_ref(), &mut sec),
            4 => load_rows::row4(&env, &mut sec),
            5 => load_rows::row5(&env, &mut sec),
            6 => load_rows::row6(&env, &mut sec),
            8 => journal_rows::row8(&env, &mut sec),
            9 => call_rows::row9(&env, &mut sec),
            10 => tool_rows::row10(&env, &mut sec),
            11 => plan_rows::row11(&env, &mut sec),
            12 => python_rows::row12(&env, &mut sec),
            13 => daemon_rows::row13(&env, &dir.join("corral"), &mut sec),
            _ => load_rows::row7(&env, &mut sec),
        };
        guard(&mut sec, &g.to_string(), r);
        sections.push((g, sec));
    }
    sections.sort_by_key(|(g, _)| *g);

    let rows: Vec<stats::Row> = sections
        .iter()
        .flat_map(|(_, s)| s.rows.iter().cloned())
        .collect();
    println!(
        "corral-bench{} — {date} — {} cores — {} — took {:.0} s\n",
        if args.quick { " --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", stats::render(&rows));
    println!("\nHow measured:");
    for (_, s) in &sections {
        for n in &s.notes {
            println!("- {n}");
        }
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into())
}
