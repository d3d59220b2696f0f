//! What the CLI's integration tests share: the binary in a clean environment, its output, and the
//! two ways a run may end (success, or a clean error naming the problem).

#![allow(dead_code)] // each test crate uses its own part

use std::process::Output;

use assert_cmd::Command;
use msrnn_tests::files::workspace;

/// The `msrnn` binary, run from the workspace root with no user environment that would change
/// what it does, on one thread, killed after `timeout_secs`.
pub fn msrnn(timeout_secs: u64) -> Command {
    let mut c = Command::cargo_bin("msrnn").unwrap();
    c.current_dir(workspace())
        .env_remove("MSRNN_MODEL")
        .env_remove("MSRNN_PLUGINS")
        .env_remove("MSRNN_POSITIONS")
        .env_remove("RUST_LOG")
        .env("MSRNN_THREADS", "1")
        .timeout(std::time::Duration::from_secs(timeout_secs));
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects success, without a panic on stderr.
pub fn ok(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    o
}

/// Runs, expects exit `code` (1 for ours, 2 for the argument parser's; a panic exits 101) and
/// returns stderr, after checking it holds no panic and every needle.
pub fn fails_with(c: &mut Command, code: i32, needles: &[&str]) -> String {
    let o = c.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "expected exit {code}\nstdout:\n{}\nstderr:\n{err}", stdout(&o));
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    err
}
