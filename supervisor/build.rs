//! Builds `corral-init` (`init/main.rs`): a program with neither `std` nor a C library, which
//! must be compiled with `panic=abort`, a setting cargo's profiles cannot make for one binary.
//! It is placed beside the package's binaries (`target/<profile>/corral-init`), where the
//! library looks for it, and where the install steps in `docs/operations.md` take it from.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    for f in [
        "init/main.rs",
        "init/run.rs",
        "init/sys.rs",
        "src/init_record.rs",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let Some(dest) = out.ancestors().nth(3).map(|d| d.join("corral-init")) else {
        panic!("unexpected OUT_DIR layout: {}", out.display());
    };
    println!("cargo:rerun-if-changed={}", dest.display());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" || !(arch == "x86_64" || arch == "aarch64") {
        println!("cargo:warning=corral-init is built for Linux on x86_64 and aarch64 only");
        return;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let built = out.join("corral-init");
    let mut rustc = Command::new(rustc);
    // The linker cargo resolved for the target, when one is configured (cross builds).
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        rustc.arg("-C").arg(arg);
    }
    let status = rustc
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "corral_init",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "relocation-model=static", "-C", "strip=symbols"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-C", "link-arg=-no-pie"])
        .arg("-o")
        .arg(&built)
        .arg("init/main.rs")
        .status()
        .expect("run rustc for corral-init");
    assert!(status.success(), "building corral-init failed");
    // Replaced only when it differs: a supervisor that runs keeps its landlock rules on the
    // file it opened, so a new inode at the same path would be refused to its agents.
    let new = std::fs::read(&built).expect("read corral-init");
    if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
        // A copy, not a link: the destination may be on another file system; replaced whole.
        let tmp = dest.with_extension("tmp");
        std::fs::write(&tmp, &new).expect("write corral-init");
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make corral-init executable");
        std::fs::rename(&tmp, &dest).expect("place corral-init");
    }
    // Dated as its sources, not now: cargo runs this script again when the destination is
    // newer than its last run (or missing), which a copy made now always would be.
    let sources = std::fs::metadata("init/run.rs").and_then(|m| m.modified());
    if let (Ok(when), Ok(file)) = (sources, std::fs::File::options().write(true).open(&dest)) {
        let _ = file.set_modified(when);
    }
}
