//! # msrnn-server
//!
//! `msrnn serve`: an OpenAI-compatible HTTP server where every conversation is a finite
//! multi-state. One engine thread owns the model and steps every active sequence together
//! (continuous batching); handlers talk to it over channels. A conversation's state is a few
//! megabytes that never grow, so between turns it is stored whole in a session store (SQLite, or
//! Redis for several processes) and any process can take the next turn.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let model = Arc::new(msrnn_engine::load("model.gguf".as_ref(), Default::default(), &candle_core::Device::Cpu)?);
//! let registry = Arc::new(msrnn_policies::registry());
//! msrnn_server::run(msrnn_server::ServerConfig::default(), model, registry)?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod error;
mod files;
mod http;
pub mod metrics;
pub mod sessions;
mod turn;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use api::Limits;
pub use error::ApiError;
pub use sessions::{SessionInfo, SessionStore};

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] sessions::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything `msrnn serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (the bound address is logged and printed).
    pub port: u16,
    /// Default policy spec of new conversations.
    pub policy: String,
    /// Default capacity (tokens per layer) of new conversations; a policy that keeps every token
    /// (`full`) runs unbounded whatever this says.
    pub capacity: usize,
    pub positions: msrnn_core::Positions,
    /// How every conversation's state stores keys and values; a session stored in another format
    /// is refused when resumed.
    pub kv: msrnn_core::KvFormat,
    /// Prompt tokens per prefill chunk.
    pub prefill_chunk: usize,
    /// Prompt tokens fed per engine step over all sequences.
    pub prefill_budget: usize,
    /// Bytes of KV cache the admitted sequences may reserve together.
    pub kv_budget: usize,
    /// `sqlite:PATH` or `redis://HOST:PORT`.
    pub sessions: String,
    /// Idle time after which a stored session is deleted.
    pub session_ttl: Option<Duration>,
    /// Requests that may wait for KV budget before new ones get 429.
    pub max_queue: usize,
    /// How long a request may wait in the queue before it gets 429.
    pub queue_timeout: Duration,
    pub api_key: Option<String>,
    pub limits: Limits,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that sends no complete request headers for this long is closed (idle
    /// keep-alive connections included).
    pub header_timeout: Duration,
    /// After SIGTERM, how long running turns may take to finish before the process exits anyway.
    pub drain_timeout: Duration,
    /// The name `/v1/models` lists (default: the model file's name).
    pub model_name: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            policy: "tova".into(),
            capacity: 512,
            positions: msrnn_core::Positions::Absolute,
            kv: msrnn_core::KvFormat::F32,
            prefill_chunk: msrnn_core::DEFAULT_MAX_CHUNK,
            prefill_budget: 512,
            kv_budget: 4 << 30,
            sessions: "sqlite:msrnn-sessions.db".into(),
            session_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            max_queue: 64,
            queue_timeout: Duration::from_secs(30),
            api_key: None,
            limits: Limits::default(),
            max_connections: 256,
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            model_name: None,
        }
    }
}

/// Runs the server until SIGTERM or Ctrl-C, then drains: stops accepting, finishes the running
/// turns (storing their sessions), and returns. Blocks the calling thread.
pub fn run(
    cfg: ServerConfig,
    model: Arc<msrnn_engine::LoadedModel>,
    registry: Arc<msrnn_core::PolicyRegistry>,
) -> Result<(), ServerError> {
    // The engine thread does the heavy work; the runtime only moves bytes.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(cfg, model, registry, shutdown_signal()))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: draining"),
        _ = term => tracing::info!("SIGTERM: draining"),
    }
}

/// [`run`] inside a runtime, stopping when `shutdown` resolves.
pub async fn serve(
    cfg: ServerConfig,
    model: Arc<msrnn_engine::LoadedModel>,
    registry: Arc<msrnn_core::PolicyRegistry>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let defaults = turn::Defaults::check(&cfg, &model, &registry)?;
    files::ensure(cfg.max_connections)?;
    let store: Arc<dyn SessionStore> = {
        let (spec, ttl) = (cfg.sessions.clone(), cfg.session_ttl);
        tokio::task::spawn_blocking(move || sessions::open(&spec, ttl))
            .await
            .map_err(|e| ServerError::Config(e.to_string()))??
            .into()
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = msrnn_engine::Engine::new(
        model.clone(),
        registry.clone(),
        msrnn_engine::EngineOptions { prefill_budget: cfg.prefill_budget.max(1) },
    );
    let worker = worker::Worker::new(
        engine,
        worker::Settings { kv_budget: cfg.kv_budget, max_queue: cfg.max_queue, queue_timeout: cfg.queue_timeout },
        metrics.clone(),
    );
    let engine_thread = std::thread::Builder::new().name("msrnn-engine".into()).spawn(move || worker.run(rx))?;

    let model_name = cfg.model_name.clone().unwrap_or_else(|| model.short_name());
    let app = Arc::new(http::App {
        model: model.clone(),
        registry,
        defaults,
        store: store.clone(),
        busy: Default::default(),
        engine: tx.clone(),
        metrics: metrics.clone(),
        limits: cfg.limits.clone(),
        api_key: cfg.api_key.clone(),
        model_name,
        created: sessions::unix_now(),
    });
    let router = http::router(app);

    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(%local, sessions = %store.describe(), "listening");
    // One line on stdout: how scripts learn the port when they asked for port 0.
    println!("msrnn serve: listening on http://{local}");

    let expiry = cfg.session_ttl.map(|ttl| tokio::spawn(expire_sessions(store.clone(), ttl)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let router = router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            use tower::ServiceExt;
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(socket), svc));
        let m = metrics.clone();
        tokio::spawn(async move {
            m.open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            m.open_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    if let Some(t) = expiry {
        t.abort();
    }
    tracing::info!("no longer accepting; finishing the running turns");
    let _ = tx.send(worker::Cmd::Drain);
    drop(tx);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("every connection closed"),
        _ = tokio::time::sleep(cfg.drain_timeout) => tracing::warn!("drain timeout: exiting with connections open"),
    }
    // The engine thread ends once its running turns are done (they are, when every connection
    // closed) and every sender is gone.
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    Ok(())
}

/// Deletes idle sessions every so often (a store that expires entries itself does nothing).
async fn expire_sessions(store: Arc<dyn SessionStore>, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::time::sleep(every).await;
        let s = store.clone();
        let r = tokio::task::spawn_blocking(move || s.expire_idle(std::time::SystemTime::now() - ttl)).await;
        match r {
            Ok(Ok(n)) if n > 0 => tracing::info!(expired = n, "idle sessions deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "session expiry failed"),
            _ => {}
        }
    }
}
