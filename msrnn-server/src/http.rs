//! The router and its handlers. A handler only translates: HTTP in, a call into the library
//! ([`crate::turn`], the session store, the engine thread's channel), HTTP out. The shared state is
//! one [`App`], passed explicitly as axum's `State`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, ChatRequest, CompletionRequest, Limits, Prepared, Reply};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sessions::{self, SessionStore};
use crate::turn::{self, Defaults, Done, Turn};
use crate::worker::{Cmd, Out};

/// Everything the handlers share.
pub struct App {
    pub model: Arc<msrnn_engine::LoadedModel>,
    pub registry: Arc<msrnn_core::PolicyRegistry>,
    pub defaults: Defaults,
    pub store: Arc<dyn SessionStore>,
    /// Sessions with a turn running: a second turn on one of them is refused (409), not raced.
    pub busy: Mutex<HashSet<String>>,
    pub engine: std::sync::mpsc::Sender<Cmd>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub api_key: Option<String>,
    /// What `/v1/models` lists and responses name.
    pub model_name: String,
    pub created: u64,
}

pub fn router(app: Arc<App>) -> Router {
    let max_body = app.limits.max_body;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// `Authorization: Bearer KEY` when the server has a key. Compared in constant time.
async fn auth(State(app): State<Arc<App>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else { return next.run(req).await };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// The endpoint a path is counted under (a fixed set, so clients cannot grow the label space).
fn endpoint(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/v1/sessions" => "/v1/sessions",
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/sessions/") => "/v1/sessions/{id}",
        _ => "other",
    }
}

/// Counts every response by endpoint and status.
async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint(req.uri().path());
    let r = next.run(req).await;
    app.metrics.request(endpoint, r.status().as_u16());
    r
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    let mut e = ApiError::invalid(format!("method {} is not allowed on {}", req.method(), req.uri().path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(format!("cannot read the request body: {}", r.body_text()))
        }
    })
}

async fn chat(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let b = body(b, app.limits.max_body)?;
    let p = api::parse::<ChatRequest>(&b)?.prepare(&app.limits)?;
    complete(app, p, t0, "chatcmpl").await
}

async fn completions(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let b = body(b, app.limits.max_body)?;
    let p = api::parse::<CompletionRequest>(&b)?.prepare(&app.limits)?;
    complete(app, p, t0, "cmpl").await
}

/// Holds a session for one turn; released when the turn's response (or stream) is dropped.
struct Claim {
    app: Arc<App>,
    id: String,
}

impl Claim {
    fn take(app: &Arc<App>, id: &str) -> Result<Self, ApiError> {
        let mut busy = app.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id.to_string()) {
            return Err(ApiError::conflict(format!(
                "session `{id}` has a turn running; send the next turn once it has finished"
            )));
        }
        Ok(Self { app: app.clone(), id: id.to_string() })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.app.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))?
}

fn new_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:04x}", sessions::unix_now(), N.fetch_add(1, Relaxed) & 0xffff)
}

/// One turn, from the checked request to the response: resume the session (if any), hand the job
/// to the engine thread, stream or collect the answer, store the state.
async fn complete(app: Arc<App>, p: Prepared, t0: Instant, prefix: &str) -> Result<Response, ApiError> {
    let claim = match &p.ext.session {
        Some(id) => Some(Claim::take(&app, id)?),
        None => None,
    };
    let stored = match claim.as_ref() {
        Some(c) => {
            let (store, id) = (app.store.clone(), c.id.clone());
            blocking(move || store.get(&id).map_err(|e| ApiError::internal(e.to_string()))).await?
        }
        None => None,
    };
    let (stream, include_usage, chat) = (p.stream, p.include_usage, p.chat);
    let (tx, mut rx) = unbounded_channel();
    let (job, turn) = {
        let app = app.clone();
        blocking(move || turn::build(&app, p, stored.as_deref(), tx, t0)).await?
    };
    if turn.resumed {
        app.metrics.sessions_resumed.fetch_add(1, Relaxed);
    }
    app.engine
        .send(Cmd::Submit(Box::new(job)))
        .map_err(|_| ApiError::unavailable("the engine has stopped (the server is shutting down)"))?;
    match rx.recv().await {
        Some(Out::Started) => {}
        Some(Out::Failed(e)) => return Err(e),
        _ => return Err(ApiError::internal("the engine answered before starting the turn")),
    }
    let reply = ReplyCtx { id: new_id(prefix), created: sessions::unix_now(), model: app.model_name.clone(), chat };
    if stream {
        let s = sse_stream(app, turn, claim, rx, reply, include_usage, t0);
        return Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response());
    }
    loop {
        match rx.recv().await {
            Some(Out::Token { .. }) | Some(Out::Started) => {}
            Some(Out::Finished(f)) => {
                let done = finish(&app, turn, *f).await?;
                drop(claim);
                app.metrics.request_seconds.observe(t0.elapsed());
                let r = reply.reply();
                return Ok(Json(r.full(&done.text, done.finish_reason, done.usage, done.extra)).into_response());
            }
            Some(Out::Failed(e)) => return Err(e),
            None => return Err(ApiError::internal("the engine dropped the turn")),
        }
    }
}

struct ReplyCtx {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl ReplyCtx {
    fn reply(&self) -> Reply<'_> {
        Reply { id: &self.id, created: self.created, model: &self.model, chat: self.chat }
    }
}

/// Stores the session (if any) and says how the turn ended. The store write runs on the blocking
/// pool and completes even if the client is gone by then: a finished turn is never lost.
async fn finish(app: &Arc<App>, turn: Turn, f: msrnn_engine::Finished) -> Result<Done, ApiError> {
    let app2 = app.clone();
    let t = tokio::task::spawn_blocking(move || turn::finish(&app2, turn, f));
    let (done, saved) = t.await.map_err(|e| ApiError::internal(format!("storing the turn failed: {e}")))??;
    if saved {
        app.metrics.sessions_saved.fetch_add(1, Relaxed);
    }
    Ok(done)
}

fn sse_json(v: &serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// The answer as server-sent events: a first chunk (chat: the assistant role), one chunk per piece
/// of text, the finish reason, the usage if asked for, then `data: [DONE]`.
fn sse_stream(
    app: Arc<App>,
    turn: Turn,
    claim: Option<Claim>,
    rx: UnboundedReceiver<Out>,
    reply: ReplyCtx,
    include_usage: bool,
    t0: Instant,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    enum St {
        First,
        Running,
        Tail(Vec<SseEvent>),
    }
    struct Ctx {
        app: Arc<App>,
        turn: Option<Turn>,
        _claim: Option<Claim>,
        rx: UnboundedReceiver<Out>,
        reply: ReplyCtx,
        include_usage: bool,
        t0: Instant,
        st: St,
    }
    let ctx = Ctx { app, turn: Some(turn), _claim: claim, rx, reply, include_usage, t0, st: St::First };
    stream::unfold(ctx, |mut c| async move {
        loop {
            match &mut c.st {
                St::Tail(events) => {
                    if events.is_empty() {
                        return None;
                    }
                    let e = events.remove(0);
                    return Some((Ok(e), c));
                }
                St::First => {
                    c.st = St::Running;
                    if c.reply.chat {
                        let v = c.reply.reply().chunk(Some(""), true, None);
                        return Some((sse_json(&v), c));
                    }
                }
                St::Running => match c.rx.recv().await {
                    Some(Out::Token { text }) if text.is_empty() => {}
                    Some(Out::Token { text }) => {
                        let v = c.reply.reply().chunk(Some(&text), false, None);
                        return Some((sse_json(&v), c));
                    }
                    Some(Out::Started) => {}
                    Some(Out::Finished(f)) => {
                        let turn = c.turn.take().expect("one finish per turn");
                        let mut tail = Vec::new();
                        match finish(&c.app, turn, *f).await {
                            Ok(done) => {
                                let r = c.reply.reply();
                                tail.push(
                                    sse_json(&r.chunk(None, false, Some(done.finish_reason))).expect("infallible"),
                                );
                                if c.include_usage {
                                    tail.push(sse_json(&r.usage_chunk(done.usage, done.extra)).expect("infallible"));
                                }
                            }
                            Err(e) => tail.push(SseEvent::default().data(e.to_json())),
                        }
                        tail.push(SseEvent::default().data("[DONE]"));
                        c.app.metrics.request_seconds.observe(c.t0.elapsed());
                        c.st = St::Tail(tail);
                    }
                    Some(Out::Failed(e)) => {
                        c.st =
                            St::Tail(vec![SseEvent::default().data(e.to_json()), SseEvent::default().data("[DONE]")]);
                    }
                    None => {
                        let e = ApiError::internal("the engine dropped the turn");
                        c.st =
                            St::Tail(vec![SseEvent::default().data(e.to_json()), SseEvent::default().data("[DONE]")]);
                    }
                },
            }
        }
    })
}

async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_name,
            "object": "model",
            "created": app.created,
            "owned_by": "msrnn",
            "msrnn": {
                "model_id": app.model.id,
                "policy": app.defaults.policy,
                "capacity": app.defaults.capacity,
                "positions": app.defaults.positions.to_string(),
                "kv": app.defaults.kv.to_string(),
                "max_context": app.model.info().max_context,
            },
        }],
    }))
}

async fn list_sessions(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = app.store.clone();
    let list = blocking(move || store.list().map_err(|e| ApiError::internal(e.to_string()))).await?;
    Ok(Json(json!({"object": "list", "data": list})))
}

fn session_id(id: &str) -> Result<(), ApiError> {
    sessions::check_id(id).map_err(|e| ApiError::invalid_param("id", e))
}

async fn get_session(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    session_id(&id)?;
    let store = app.store.clone();
    let id2 = id.clone();
    let bytes = blocking(move || store.get(&id2).map_err(|e| ApiError::internal(e.to_string()))).await?;
    let bytes = bytes.ok_or_else(|| ApiError::not_found(format!("no session `{id}`")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{id}.state\"")),
        ],
        bytes,
    )
        .into_response())
}

async fn delete_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    session_id(&id)?;
    let _claim = Claim::take(&app, &id)?;
    let store = app.store.clone();
    let id2 = id.clone();
    let deleted = blocking(move || store.delete(&id2).map_err(|e| ApiError::internal(e.to_string()))).await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no session `{id}`")));
    }
    Ok(Json(json!({"id": id, "object": "session", "deleted": true})))
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let m = &app.metrics;
    Json(json!({
        "status": "ok",
        "model": app.model_name,
        "sessions": app.store.describe(),
        "active": m.active.load(Relaxed),
        "queued": m.queued.load(Relaxed),
    }))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    let n = tokio::task::spawn_blocking(move || store.count().ok()).await.ok().flatten();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render(n)).into_response()
}
