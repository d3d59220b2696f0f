//! Sessions in Redis, for several server processes behind one load balancer: a state is small, so
//! any process can take any conversation's next turn. One hash per session (`state`, `info`),
//! written with its expiry in one MULTI/EXEC, so Redis deletes idle sessions itself.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use redis::Commands;

use super::{Result, SessionInfo, SessionStore};

const PREFIX: &str = "msrnn:session:";

pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    ttl: Option<Duration>,
    url: String,
}

impl RedisStore {
    /// Connects once now, so a wrong address fails at startup rather than at the first turn.
    pub fn open(url: &str, ttl: Option<Duration>) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        Ok(Self { client, conn: Mutex::new(Some(conn)), ttl, url: url.to_string() })
    }

    /// Runs `f` on the connection, reconnecting once if it was lost (a Redis restart).
    fn with<T>(&self, f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.client.get_connection_with_timeout(Duration::from_secs(5))?);
            }
            match f(guard.as_mut().expect("connected")) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    tracing::warn!(error = %e, "redis connection lost; reconnecting");
                    *guard = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the second attempt returns")
    }

    fn keys(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let keys: redis::RedisResult<Vec<String>> = c.scan_match(format!("{PREFIX}*"))?.collect();
            keys
        })
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl SessionStore for RedisStore {
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| c.hget(key(id), "state"))
    }

    fn put(&self, info: &SessionInfo, state: &[u8]) -> Result<()> {
        let json = serde_json::to_string(info).expect("serialisable");
        let k = key(&info.id);
        self.with(|c| {
            let mut p = redis::pipe();
            p.atomic().del(&k).ignore().hset(&k, "state", state).ignore().hset(&k, "info", &json).ignore();
            if let Some(t) = self.ttl {
                p.expire(&k, t.as_secs().max(1) as i64).ignore();
            }
            p.query::<()>(c)
        })
    }

    fn delete(&self, id: &str) -> Result<bool> {
        self.with(|c| c.del::<_, i64>(key(id))).map(|n| n > 0)
    }

    fn list(&self) -> Result<Vec<SessionInfo>> {
        let mut out = Vec::new();
        for k in self.keys()? {
            // A session may expire or be deleted between the scan and the read.
            let Some(json): Option<String> = self.with(|c| c.hget(&k, "info"))? else { continue };
            match serde_json::from_str::<SessionInfo>(&json) {
                Ok(i) => out.push(i),
                Err(e) => tracing::warn!(key = %k, error = %e, "unreadable session info in redis; skipped"),
            }
        }
        out.sort_by(|a, b| a.updated.cmp(&b.updated).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn count(&self) -> Result<usize> {
        Ok(self.keys()?.len())
    }

    fn expire_idle(&self, _cutoff: SystemTime) -> Result<usize> {
        Ok(0)
    }

    fn describe(&self) -> String {
        // The URL may carry a password.
        match self.url.split_once('@') {
            Some((scheme_user, host)) => {
                format!("{}://***@{host}", scheme_user.split("://").next().unwrap_or("redis"))
            }
            None => self.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against a real Redis when MSRNN_TEST_REDIS names one (scripts/test-server.sh starts
    /// one and sets it); the store's data lives under its own prefix, so the test clears that only.
    #[test]
    fn redis_store_keeps_the_contract() {
        let Ok(url) = std::env::var("MSRNN_TEST_REDIS") else {
            eprintln!("skipped: set MSRNN_TEST_REDIS=redis://127.0.0.1:PORT to run the Redis store test");
            return;
        };
        let s = RedisStore::open(&url, Some(Duration::from_secs(60))).unwrap();
        for k in s.keys().unwrap() {
            s.with(|c| c.del::<_, i64>(&k)).unwrap();
        }
        super::super::tests::exercise(&s);
        let ttl: i64 = s.with(|c| c.ttl(key("a"))).unwrap();
        assert!((1..=60).contains(&ttl), "expiry set on put: {ttl}");
        s.delete("a").unwrap();
    }

    #[test]
    fn describe_hides_the_password() {
        let s = RedisStore {
            client: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            conn: Mutex::new(None),
            ttl: None,
            url: "redis://user:secret@host:6379/0".into(),
        };
        assert_eq!(s.describe(), "redis://***@host:6379/0");
    }
}
