//! The default store: one SQLite file in WAL mode. A turn is stored in one committed transaction
//! with `synchronous=FULL`, so once the client has its answer the turn survives `kill -9` (and a
//! power cut); readers never block the writer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};

use super::{unix, Result, SessionInfo, SessionStore, StoreError};

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(format!("{}: cannot switch to WAL mode (got {mode})", path.display())));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS sessions (
                 id      TEXT PRIMARY KEY,
                 state   BLOB NOT NULL,
                 info    TEXT NOT NULL,
                 updated INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated);",
        )?;
        Ok(Self { conn: Mutex::new(conn), path: path.to_path_buf() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (every statement is atomic).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_info(s: String) -> rusqlite::Result<SessionInfo> {
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

impl SessionStore for SqliteStore {
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn().query_row("SELECT state FROM sessions WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    fn put(&self, info: &SessionInfo, state: &[u8]) -> Result<()> {
        let json = serde_json::to_string(info).expect("serialisable");
        self.conn().execute(
            "INSERT INTO sessions (id, state, info, updated) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, info = excluded.info, updated = excluded.updated",
            params![info.id, state, json, info.updated as i64],
        )?;
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM sessions WHERE id = ?1", [id])? > 0)
    }

    fn list(&self) -> Result<Vec<SessionInfo>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT info FROM sessions ORDER BY updated, id")?;
        let rows = st.query_map([], |r| parse_info(r.get(0)?))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn count(&self) -> Result<usize> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))? as usize)
    }

    fn expire_idle(&self, cutoff: SystemTime) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM sessions WHERE updated < ?1", [unix(cutoff) as i64])?)
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::tests::{exercise, info};
    use super::*;

    #[test]
    fn sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sub/sessions.db")).unwrap();
        exercise(&s);
    }

    #[test]
    fn sqlite_store_survives_reopening_and_expires_idle_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put(&info("old", 1, 100), b"o").unwrap();
            s.put(&info("new", 1, 200), b"n").unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.count().unwrap(), 2);
        assert_eq!(s.expire_idle(UNIX_EPOCH + Duration::from_secs(150)).unwrap(), 1);
        assert_eq!(s.get("old").unwrap(), None);
        assert_eq!(s.get("new").unwrap().as_deref(), Some(&b"n"[..]));
        assert_eq!(s.describe(), format!("sqlite:{}", path.display()));
    }

    #[test]
    fn sqlite_store_refuses_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let e = SqliteStore::open(&path).err().expect("not a database");
        assert!(e.to_string().contains("sqlite"), "{e}");
    }
}
