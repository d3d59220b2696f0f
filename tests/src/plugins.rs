//! Building the workspace's Rust plugins from a test: `cargo build -p ...` into the test binary's
//! own target directory and profile (cargo has released its lock while tests run), so the plugin
//! matches the build under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::files::workspace;

/// `target/<profile>` of the running test binary (it lives in `target/<profile>/deps/`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Builds `packages` (with `--target T` when given) into this test's target dir and profile;
/// panics with cargo's output when the build fails.
pub fn cargo_build(packages: &[&str], target: Option<&str>) {
    let profile_dir = profile_dir();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("odd target dir {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(workspace()).args(["build", "--profile", &profile]);
    for p in packages {
        c.args(["-p", p]);
    }
    if let Some(t) = target {
        c.args(["--target", t]);
    }
    let o = c.arg("--target-dir").arg(profile_dir.parent().expect("target dir")).output().expect("cannot run cargo");
    assert!(o.status.success(), "building {packages:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// The shared library `name` (`msrnn_keynorm`) in `dir`, with the platform's prefix and suffix.
pub fn dylib(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX))
}

/// The keynorm plugin (plugins/keynorm) as a native library, built once per test process.
pub fn keynorm() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        cargo_build(&["msrnn-plugin-keynorm"], None);
        dylib(&profile_dir(), "msrnn_keynorm")
    })
    .clone()
}
