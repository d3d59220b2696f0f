//! The open-file limit. Every connection holds a file descriptor; a process out of descriptors
//! cannot accept, and the accept loop then waits with every new client behind it. Rust does not
//! raise the soft limit the way Go's runtime does, and the common soft default (1024) is below
//! what `--max-connections` 1,000 plus the process's own files need. So `serve` raises the soft
//! limit up to the hard one when `--max-connections` needs it, and refuses to start, naming both
//! limits, when even the hard limit is too low: a limit the server cannot honour is a
//! configuration error, not a stall found under load.

use crate::ServerError;

/// Descriptors the process holds besides its connections: stdio, the listener, the runtime's
/// epoll and event descriptors, the model file, SQLite's database, WAL and shared-memory files, a
/// Redis connection, with room to spare.
pub const RESERVED: u64 = 64;

/// Descriptors `max_connections` open connections need in all.
pub fn needed(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_add(RESERVED)
}

/// What to do with the limits `(soft, hard)` when `needed` descriptors are wanted: nothing
/// (`Ok(None)`), raise the soft limit to the returned value, or refuse with the reason.
pub fn plan(max_connections: usize, soft: u64, hard: u64) -> Result<Option<u64>, ServerError> {
    let needed = needed(max_connections);
    if soft >= needed {
        return Ok(None);
    }
    if hard >= needed {
        return Ok(Some(needed));
    }
    Err(ServerError::Config(format!(
        "--max-connections {max_connections} needs about {needed} open files ({RESERVED} for the server itself), \
         but this process may open at most {hard} (hard limit; soft {soft}); lower --max-connections or raise the \
         limit (`ulimit -n`, LimitNOFILE= in a systemd unit)"
    )))
}

/// Raises the soft open-file limit if `max_connections` needs it; returns the limit in force.
#[cfg(unix)]
pub fn ensure(max_connections: usize) -> Result<u64, ServerError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one plain struct that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open-file limit; not checking --max-connections against it");
        return Ok(u64::MAX);
    }
    // RLIM_INFINITY is the largest value: it compares as unlimited. (rlim_t is u64 on Linux, not
    // on every unix.)
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    let Some(raised) = plan(max_connections, soft, hard)? else { return Ok(soft) };
    let new = libc::rlimit { rlim_cur: raised as libc::rlim_t, rlim_max: lim.rlim_max };
    // SAFETY: setrlimit reads one plain struct that we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(ServerError::Config(format!(
            "--max-connections {max_connections} needs about {} open files, but the limit is {soft} and raising it \
             to {raised} failed ({e}); lower --max-connections or raise the limit (`ulimit -n`)",
            needed(max_connections)
        )));
    }
    tracing::info!(from = soft, to = raised, max_connections, "raised the open-file limit for --max-connections");
    Ok(raised)
}

#[cfg(not(unix))]
pub fn ensure(_max_connections: usize) -> Result<u64, ServerError> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_already_changes_nothing() {
        assert_eq!(plan(256, 1024, 1024).unwrap(), None);
        assert_eq!(plan(960, 1024, 1024).unwrap(), None);
        assert_eq!(plan(1000, u64::MAX, u64::MAX).unwrap(), None);
    }

    #[test]
    fn a_low_soft_limit_is_raised_to_what_is_needed() {
        assert_eq!(plan(1000, 1024, 1 << 20).unwrap(), Some(1064));
        assert_eq!(plan(961, 1024, u64::MAX).unwrap(), Some(1025));
    }

    #[test]
    fn a_low_hard_limit_is_refused_with_both_limits_named() {
        let e = plan(1000, 256, 512).unwrap_err().to_string();
        assert!(e.contains("--max-connections 1000 needs about 1064 open files"), "{e}");
        assert!(e.contains("at most 512 (hard limit; soft 256)"), "{e}");
        assert!(e.contains("ulimit -n"), "{e}");
    }

    #[test]
    fn absurd_counts_do_not_overflow() {
        assert!(plan(usize::MAX, 1024, u64::MAX - 1).is_err());
        assert_eq!(needed(usize::MAX), u64::MAX);
    }

    #[cfg(unix)]
    #[test]
    fn the_limit_in_force_covers_a_small_server() {
        assert!(ensure(16).unwrap() >= needed(16));
    }
}
