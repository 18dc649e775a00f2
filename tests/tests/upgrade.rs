//! Upgrading under a running supervisor: `corral-init` installed anew over the file the
//! supervisor started with (a new inode at the same path, as a package manager installs it).
//! A test binary of its own: the init's path is read once per process, from `$CORRAL_INIT`.

use corral::ExitReason;
use corral_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_init_installed_anew_keeps_spawns_working() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("installing corral-init anew: needs root for pid namespaces");
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let init = dir.path().join("corral-init");
    std::fs::copy(bin("corral-init"), &init).unwrap();
    // Only this test runs in this process, before any supervisor reads the variable.
    std::env::set_var("CORRAL_INIT", &init);
    // Cold spawns: each execs the init from its path.
    let (_fx, s) = sup_with("max_retries = 0\nprewarm = false", "");
    let o = call(&s, "chaos", r#"{"do":"id"}"#).await;
    assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
    assert_eq!(output(&o)["pid"], 2, "the agent ran under its init");

    let before = std::fs::metadata(&init).unwrap().ino();
    let staged = dir.path().join(".corral-init.new");
    std::fs::copy(bin("corral-init"), &staged).unwrap();
    std::fs::rename(&staged, &init).unwrap();
    assert_ne!(std::fs::metadata(&init).unwrap().ino(), before);

    for _ in 0..2 {
        let o = call(&s, "chaos", r#"{"do":"id"}"#).await;
        assert_eq!(reasons(&o), [ExitReason::Completed], "{:?}", o.attempts);
        assert_eq!(output(&o)["pid"], 2);
    }
}
