//! Where conversations live between turns. A bounded state is a few megabytes that never grow, so a
//! finished turn is stored whole (the state file's bytes) instead of re-reading the conversation:
//! any server process sharing the store can take the next turn.

mod redis_store;
mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store (sqlite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("session store (redis): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("session store: {0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a listing shows about a stored session (kept beside the bytes, so listing reads no state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// Size of the stored state file.
    pub bytes: u64,
    /// Unix seconds of the last finished turn.
    pub updated: u64,
    pub model: String,
    pub policy: String,
    pub capacity: String,
    pub positions: String,
    pub tokens_seen: u64,
    pub turns: u32,
}

/// A session store. Calls block (SQLite file I/O, a Redis round trip): the server makes them on
/// tokio's blocking pool, never on the engine thread.
pub trait SessionStore: Send + Sync {
    /// The stored state file, if the session exists (and has not expired).
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a finished turn: replaces the session's state atomically and durably.
    fn put(&self, info: &SessionInfo, state: &[u8]) -> Result<()>;
    /// Whether there was a session to delete.
    fn delete(&self, id: &str) -> Result<bool>;
    /// Every stored session, oldest first.
    fn list(&self) -> Result<Vec<SessionInfo>>;
    fn count(&self) -> Result<usize>;
    /// Deletes sessions idle since before `cutoff`; returns how many. Stores that expire entries
    /// themselves (Redis) return 0.
    fn expire_idle(&self, cutoff: SystemTime) -> Result<usize>;
    /// `sqlite:/path` or `redis://host:port`: for logs and `/health`.
    fn describe(&self) -> String;
}

/// Opens the store a `--sessions` value names: `sqlite:PATH` (or a bare path), `redis://HOST:PORT[/DB]`
/// (or `rediss://`). `ttl` is the idle time after which a session is deleted.
pub fn open(spec: &str, ttl: Option<Duration>) -> Result<Box<dyn SessionStore>> {
    if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("redis+unix://") {
        return Ok(Box::new(RedisStore::open(spec, ttl)?));
    }
    let path = spec.strip_prefix("sqlite:").unwrap_or(spec);
    if path.is_empty() {
        return Err(StoreError::Other("--sessions sqlite: needs a file path (sqlite:PATH)".into()));
    }
    Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
}

/// Session ids are chosen by clients and end up in keys, URLs and logs: a short, plain alphabet.
pub fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("session id must be 1 to 128 characters, got {}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(format!(
            "session id `{}`: character {c:?} not allowed (use A-Z a-z 0-9 - _ . :)",
            id.escape_debug()
        ));
    }
    Ok(())
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn info(id: &str, bytes: u64, updated: u64) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            bytes,
            updated,
            model: "m [1 bytes]".into(),
            policy: "tova".into(),
            capacity: "512".into(),
            positions: "absolute".into(),
            tokens_seen: 7,
            turns: 1,
        }
    }

    /// The contract every store keeps.
    pub fn exercise(s: &dyn SessionStore) {
        assert_eq!(s.get("a").unwrap(), None);
        assert!(!s.delete("a").unwrap());
        let now = unix_now();
        s.put(&info("a", 3, now), b"abc").unwrap();
        s.put(&info("b", 2, now + 1), b"xy").unwrap();
        assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"abc"[..]));
        // A second turn replaces the first.
        let mut a2 = info("a", 4, now + 2);
        a2.turns = 2;
        s.put(&a2, b"abcd").unwrap();
        assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"abcd"[..]));
        let l = s.list().unwrap();
        assert_eq!(l.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(l[1], a2);
        assert_eq!(s.count().unwrap(), 2);
        assert!(s.delete("b").unwrap());
        assert_eq!(s.get("b").unwrap(), None);
        assert_eq!(s.count().unwrap(), 1);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("chat-42_a.b:c").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn open_refuses_empty_sqlite_path() {
        assert!(open("sqlite:", None).is_err());
    }
}
