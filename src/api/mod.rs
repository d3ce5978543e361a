//! The HTTP API, in the conventions of the Kafka Connect REST API: connectors, their
//! status per partition, config (secrets hidden), topics, offsets, pause and resume;
//! the schema registry's subjects; Prometheus `/metrics`; `/health` and `/ready`.
//! docs/api.md documents every endpoint.
//!
//! Errors are JSON `{error_code, message}` as in Connect. When `api.token` is set, every
//! request must carry `Authorization: Bearer <token>`, compared in constant time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Secret;
use crate::connector::{ConnectorHandle, Target};
use crate::metrics::PartitionMetrics;
use crate::record::SourcePartition;
use crate::service::{ConnectorRuntime, Connectors, ControlError};
use crate::wal::Wal;

mod exposition;
mod page;
pub mod types;

use types::{
    ConnectorStatus, ConnectorSummary, KafkaOffset, KafkaPartition, Offsets, PartitionOffset,
    SkippedOffsets, TaskStatus,
};

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (api.listen): {source}; choose a free port, or api.listen=none to run without the API")]
pub struct ListenError {
    /// The address.
    pub address: String,
    /// The bind error.
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Shared {
    connectors: Arc<Connectors>,
    wal: Wal,
    token: Option<Secret>,
    worker_id: String,
}

type Api = State<Arc<Shared>>;

/// An error answer: `{error_code, message}` with the status as the code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error_code": self.status.as_u16(), "message": self.message}));
        (self.status, body).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// Binds `address` and serves the API until `cancel` fires. Returns the address bound
/// (the port is chosen by the system when `address` asks for port 0).
pub async fn serve(
    address: &str,
    token: Option<Secret>,
    connectors: Arc<Connectors>,
    wal: Wal,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ListenError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ListenError {
            address: address.to_owned(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ListenError {
        address: address.to_owned(),
        source,
    })?;
    if token.is_none() && !bound.ip().is_loopback() {
        warn!(address = %bound, "the API listens beyond loopback without a token: anyone who reaches this address can pause connectors; set api.token");
    }
    let shared = Arc::new(Shared {
        connectors,
        wal,
        token,
        worker_id: bound.to_string(),
    });
    let app = router(shared);
    info!(address = %bound, "API listening");
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the API stopped");
        }
    });
    Ok((bound, handle))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ui", get(ui))
        .route("/connectors", get(list_connectors).post(create_connector))
        .route(
            "/connectors/{name}",
            get(connector_info).delete(delete_connector),
        )
        .route(
            "/connectors/{name}/config",
            get(connector_config).put(put_config),
        )
        .route("/connectors/{name}/status", get(connector_status))
        .route("/connectors/{name}/tasks", get(connector_tasks))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status))
        .route("/connectors/{name}/topics", get(connector_topics))
        .route(
            "/connectors/{name}/offsets",
            get(connector_offsets)
                .patch(alter_offsets)
                .delete(reset_offsets),
        )
        .route(
            "/connectors/{name}/offsets/translate",
            get(translate_offset),
        )
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/stop", put(stop))
        .route("/connectors/{name}/restart", axum::routing::post(restart))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", get(subject_versions))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(subject_version),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint (docs/api.md lists them)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method (docs/api.md)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            authorize,
        ))
        .with_state(shared)
}

async fn authorize(State(shared): Api, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this API needs `Authorization: Bearer <api.token>`",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn root() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "name": "kafka-direct"}))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

async fn ready(State(shared): Api) -> Response {
    let handles = shared.connectors.handles();
    let not_ready: Vec<_> = handles.iter().filter(|c| !c.ready()).collect();
    if not_ready.is_empty() {
        Json(json!({"status": "READY"})).into_response()
    } else {
        let (for_cluster, starting): (Vec<&&Arc<ConnectorHandle>>, Vec<_>) =
            not_ready.iter().partition(|c| c.waiting().is_some());
        let mut reasons: Vec<String> = for_cluster
            .iter()
            .filter_map(|c| c.waiting().map(|w| format!("{}: {w}", c.config().name)))
            .collect();
        if !starting.is_empty() {
            let names: Vec<String> = starting.iter().map(|c| c.config().name.clone()).collect();
            reasons.push(format!(
                "waiting for the first fetch and produce of every running task of: {}",
                names.join(", ")
            ));
        }
        let body = json!({
            "status": "NOT_READY",
            "message": reasons.join("; "),
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn ui(State(shared): Api) -> axum::response::Html<String> {
    axum::response::Html(page::render(
        &shared.connectors.handles(),
        &shared.worker_id,
    ))
}

async fn metrics(State(shared): Api) -> Response {
    let text = exposition::render(&shared.connectors.handles(), &shared.wal);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn find_runtime(shared: &Shared, name: &str) -> Result<Arc<ConnectorRuntime>, ApiError> {
    shared.connectors.get(name).ok_or_else(|| {
        let known: Vec<String> = shared
            .connectors
            .handles()
            .iter()
            .map(|c| c.config().name.clone())
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "connector {name} not found; connectors: {}",
                known.join(", ")
            ),
        )
    })
}

fn find(shared: &Shared, name: &str) -> Result<Arc<ConnectorHandle>, ApiError> {
    Ok(Arc::clone(&find_runtime(shared, name)?.handle))
}

/// `GET /connectors`, with `?expand=status` and/or `?expand=info` as in Connect.
async fn list_connectors(State(shared): Api, Query(query): Query<Vec<(String, String)>>) -> Answer {
    let expand: Vec<String> = query
        .into_iter()
        .filter(|(k, _)| k == "expand")
        .map(|(_, v)| v)
        .collect();
    let handles = shared.connectors.handles();
    if expand.is_empty() {
        let names: Vec<String> = handles.iter().map(|c| c.config().name.clone()).collect();
        return Ok(Json(json!(names)));
    }
    let mut out = serde_json::Map::new();
    for c in &handles {
        let mut entry = serde_json::Map::new();
        for what in &expand {
            match what.as_str() {
                "status" => entry.insert("status".into(), json!(status_of(&shared, c))),
                "info" => entry.insert("info".into(), info_of(c)),
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("unknown expand={other}; accepted: status, info"),
                    ))
                }
            };
        }
        out.insert(c.config().name.clone(), Value::Object(entry));
    }
    Ok(Json(Value::Object(out)))
}

fn info_of(c: &ConnectorHandle) -> Value {
    let tasks: Vec<Value> = (0..c.partitions().len())
        .map(|task| json!({"connector": c.config().name, "task": task}))
        .collect();
    json!({
        "name": c.config().name,
        "config": c.config().settings,
        "tasks": tasks,
        "type": "source",
    })
}

async fn connector_info(State(shared): Api, Path(name): Path<String>) -> Answer {
    Ok(Json(info_of(&*find(&shared, &name)?)))
}

async fn connector_config(State(shared): Api, Path(name): Path<String>) -> Answer {
    Ok(Json(json!(find(&shared, &name)?.config().settings)))
}

fn task_of(id: usize, p: &PartitionMetrics, worker_id: &str) -> TaskStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let known = |v: i64| (v >= 0).then_some(v);
    let skipped = *p.skipped_range.lock().unwrap_or_else(|e| e.into_inner());
    TaskStatus {
        id,
        state: p.state().name().to_owned(),
        worker_id: worker_id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        topic: p.partition.topic.clone(),
        partition: p.partition.partition,
        high_watermark: known(p.source_high_watermark.load(Relaxed)),
        fetched_next: known(p.fetched_next.load(Relaxed)),
        forwarded_next: known(p.forwarded_next.load(Relaxed)),
        lag: p.source_lag(),
        wal_backlog: p.wal_backlog(),
        records_fetched: p.fetched_records.load(Relaxed),
        records_forwarded: p.forwarded_records.load(Relaxed),
        records_dead_lettered: p.dead_lettered_total(),
        produce_in_doubt: p.produce_in_doubt.load(Relaxed),
        skipped_offsets: skipped.map(|(from, to)| SkippedOffsets {
            total: p.skipped_offsets.load(Relaxed),
            last: format!("{from}..{}", to - 1),
        }),
        trace: p.error(),
    }
}

fn status_of(shared: &Shared, c: &ConnectorHandle) -> ConnectorStatus {
    ConnectorStatus {
        name: c.config().name.clone(),
        connector: ConnectorSummary {
            state: c.state().name().to_owned(),
            worker_id: shared.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            trace: c.error().or_else(|| c.waiting()),
        },
        tasks: c
            .partitions()
            .iter()
            .enumerate()
            .map(|(id, p)| task_of(id, p, &shared.worker_id))
            .collect(),
        kind: "source".to_owned(),
    }
}

async fn connector_status(State(shared): Api, Path(name): Path<String>) -> Answer {
    let c = find(&shared, &name)?;
    Ok(Json(json!(status_of(&shared, &c))))
}

/// `GET /connectors/{name}/tasks`, as Connect: each task's id and config, here the
/// connector's (secrets hidden) and the partition the task copies.
async fn connector_tasks(State(shared): Api, Path(name): Path<String>) -> Answer {
    let c = find(&shared, &name)?;
    let tasks: Vec<Value> = c
        .partitions()
        .iter()
        .enumerate()
        .map(|(task, p)| {
            let mut config = c.config().settings.clone();
            config.insert("task.index".into(), task.to_string());
            // Kafka's way of writing a partition (`TopicPartition`): `orders-0`.
            let assigned = format!("{}-{}", p.partition.topic, p.partition.partition);
            config.insert("task.assigned.partitions".into(), assigned);
            json!({"id": {"connector": name, "task": task}, "config": config})
        })
        .collect();
    Ok(Json(json!(tasks)))
}

/// `GET /connectors/{name}/tasks/{task}/status`: that task of the connector's status.
async fn task_status(State(shared): Api, Path((name, task)): Path<(String, String)>) -> Answer {
    let c = find(&shared, &name)?;
    let partitions = c.partitions();
    let found = task
        .parse::<usize>()
        .ok()
        .and_then(|id| Some((id, partitions.get(id)?)));
    let Some((id, p)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "connector {name} has no task {task}; its tasks are 0..{}",
                partitions.len()
            ),
        ));
    };
    Ok(Json(json!(task_of(id, p, &shared.worker_id))))
}

async fn connector_topics(State(shared): Api, Path(name): Path<String>) -> Answer {
    let c = find(&shared, &name)?;
    Ok(Json(json!({ name: {"topics": c.config().topics} })))
}

/// KIP-875's shape: one entry per partition with a checkpoint, the offset being the
/// next source offset to forward (everything below it is stored in the internal topic
/// or the dead-letter topic).
async fn connector_offsets(State(shared): Api, Path(name): Path<String>) -> Answer {
    let c = find(&shared, &name)?;
    let mut offsets = Vec::new();
    for p in c.partitions() {
        let checkpoints = c
            .wal
            .partition(&c.config().name, &p.partition)
            .and_then(|log| log.checkpoints())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(next) = checkpoints.forwarded_next {
            offsets.push(PartitionOffset {
                partition: KafkaPartition {
                    kafka_topic: p.partition.topic.clone(),
                    kafka_partition: p.partition.partition,
                },
                offset: KafkaOffset { kafka_offset: next },
            });
        }
    }
    Ok(Json(json!(Offsets { offsets })))
}

/// A JSON body, or a 400 naming what is wrong with it.
type Body = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

fn body(body: Body) -> Result<Value, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A connector config object as a string map (numbers and booleans written as text,
/// lists joined with commas, as in the config file).
fn settings_of(config: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let object = config.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "config must be an object of connector keys, e.g. {\"kafka.bootstrap.servers\": \"host:9092\", \"topic.prefix\": \"ext\", \"topic.include.list\": \"orders\"}",
        )
    })?;
    object
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("config key {k}: expected a string, number, boolean or list"),
                    ))
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// `POST /connectors` `{name, config}`: 201 with the connector's info.
async fn create_connector(State(shared): Api, request: Body) -> Result<Response, ApiError> {
    let request = body(request)?;
    let name = request["name"].as_str().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be {\"name\": ..., \"config\": {...}}",
        )
    })?;
    let settings = settings_of(&request["config"])?;
    let runtime = shared.connectors.create(name, &settings).await?;
    Ok((StatusCode::CREATED, Json(info_of(&runtime.handle))).into_response())
}

/// `PUT /connectors/{name}/config`: 201 when created, 200 when changed.
async fn put_config(
    State(shared): Api,
    Path(name): Path<String>,
    request: Body,
) -> Result<Response, ApiError> {
    let settings = settings_of(&body(request)?)?;
    let created = shared.connectors.put(&name, &settings).await?;
    let runtime = find_runtime(&shared, &name)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info_of(&runtime.handle))).into_response())
}

/// `DELETE /connectors/{name}`: 204.
async fn delete_connector(
    State(shared): Api,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    shared.connectors.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match e {
            ControlError::Refused(_) => StatusCode::BAD_REQUEST,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn set_target(shared: &Shared, name: &str, target: Target) -> Result<Response, ApiError> {
    find_runtime(shared, name)?.set_target(target).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn pause(State(shared): Api, Path(name): Path<String>) -> Result<Response, ApiError> {
    set_target(&shared, &name, Target::Paused).await
}

/// Resumes a paused connector, or starts a stopped one.
async fn resume(State(shared): Api, Path(name): Path<String>) -> Result<Response, ApiError> {
    set_target(&shared, &name, Target::Running).await
}

/// 204, as Connect answers a stop (pause and resume: 202).
async fn stop(State(shared): Api, Path(name): Path<String>) -> Result<Response, ApiError> {
    set_target(&shared, &name, Target::Stopped).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Restarts the connector's tasks (all of them: kafka-direct restarts a connector
/// whole). As Connect answers: 204 without `includeTasks` and `onlyFailed`, else 202 with
/// the connector's status.
async fn restart(
    State(shared): Api,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let flag = |key: &str| -> Result<bool, ApiError> {
        match query.iter().rev().find(|(k, _)| k == key) {
            None => Ok(false),
            Some((_, v)) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some((_, v)) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some((_, v)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{key}={v}: true or false"),
            )),
        }
    };
    let with_status = flag("includeTasks")? || flag("onlyFailed")?;
    let runtime = find_runtime(&shared, &name)?;
    runtime.restart().await?;
    if !with_status {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let status = status_of(&shared, &runtime.handle);
    Ok((StatusCode::ACCEPTED, Json(json!(status))).into_response())
}

/// `PATCH /connectors/{name}/offsets` with KIP-875's body:
/// `{"offsets": [{"partition": {"kafka_topic", "kafka_partition"}, "offset": {"kafka_offset"} | null}]}`.
async fn alter_offsets(State(shared): Api, Path(name): Path<String>, request: Body) -> Answer {
    let runtime = find_runtime(&shared, &name)?;
    let body = body(request)?;
    let changes = parse_offsets(&body).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    runtime.alter_offsets(&changes).await?;
    Ok(Json(json!({
        "message": format!("the offsets of connector {name} were changed; records below them that the internal topic already holds will be copied again after it is resumed")
    })))
}

fn parse_offsets(body: &Value) -> Result<Vec<(SourcePartition, Option<i64>)>, String> {
    let list = body["offsets"]
        .as_array()
        .ok_or("the body must be {\"offsets\": [{\"partition\": {\"kafka_topic\": T, \"kafka_partition\": P}, \"offset\": {\"kafka_offset\": N}}]}")?;
    if list.is_empty() {
        return Err("offsets is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let topic = entry["partition"]["kafka_topic"]
                .as_str()
                .ok_or(format!("offsets[{i}].partition.kafka_topic must be a string"))?;
            let partition = entry["partition"]["kafka_partition"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p >= 0)
                .ok_or(format!("offsets[{i}].partition.kafka_partition must be a partition number"))?;
            let offset = match &entry["offset"] {
                Value::Null => None,
                o => Some(o["kafka_offset"].as_i64().ok_or(format!(
                    "offsets[{i}].offset must be {{\"kafka_offset\": N}} or null (back to auto.offset.reset)"
                ))?),
            };
            Ok((SourcePartition::new(topic, partition), offset))
        })
        .collect()
}

/// `GET /connectors/{name}/offsets/translate?topic=T&partition=P&offset=O`: the internal
/// offset where a consumer reads source offset O of T/P on (docs/api.md).
async fn translate_offset(
    State(shared): Api,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Answer {
    let runtime = find_runtime(&shared, &name)?;
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the query needs {key}: ?topic=T&partition=P&offset=O"),
                )
            })
    };
    let topic = param("topic")?;
    let number = |key: &str| -> Result<i64, ApiError> {
        let text = param(key)?;
        text.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{key}={text} is not a number"),
            )
        })
    };
    let partition = i32::try_from(number("partition")?)
        .ok()
        .filter(|p| *p >= 0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "partition must be a partition number",
            )
        })?;
    let offset = number("offset")?;
    let translation = runtime
        .translate(&SourcePartition::new(topic, partition), offset)
        .await?;
    Ok(Json(json!(translation)))
}

/// `DELETE /connectors/{name}/offsets`: every partition back to `auto.offset.reset`.
async fn reset_offsets(State(shared): Api, Path(name): Path<String>) -> Answer {
    let runtime = find_runtime(&shared, &name)?;
    let changes: Vec<(SourcePartition, Option<i64>)> = runtime
        .logged_partitions()
        .into_iter()
        .map(|p| (p, None))
        .collect();
    if !changes.is_empty() {
        runtime.alter_offsets(&changes).await?;
    }
    Ok(Json(json!({
        "message": format!("the offsets of connector {name} were reset; it starts from auto.offset.reset after it is resumed")
    })))
}

fn registries(shared: &Shared) -> Vec<Arc<crate::format::registry::SchemaRegistry>> {
    shared
        .connectors
        .handles()
        .iter()
        .filter_map(|c| c.registry.clone())
        .collect()
}

async fn subjects(State(shared): Api) -> Answer {
    let names: Vec<String> = registries(&shared)
        .iter()
        .flat_map(|r| r.all().into_keys())
        .collect();
    Ok(Json(json!(names)))
}

fn versions_of(
    shared: &Shared,
    subject: &str,
) -> Result<Vec<Arc<crate::format::registry::Version>>, ApiError> {
    registries(shared)
        .iter()
        .find_map(|r| r.all().remove(subject))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("subject {subject} not found (subjects are internal topic names; GET /subjects lists them)"),
            )
        })
}

async fn subject_versions(State(shared): Api, Path(subject): Path<String>) -> Answer {
    let versions: Vec<u32> = versions_of(&shared, &subject)?
        .iter()
        .map(|v| v.version)
        .collect();
    Ok(Json(json!(versions)))
}

async fn subject_version(
    State(shared): Api,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let versions = versions_of(&shared, &subject)?;
    let found = if version == "latest" {
        versions.last()
    } else {
        let wanted: u32 = version.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("version {version:?} is neither a number nor latest"),
            )
        })?;
        versions.iter().find(|v| v.version == wanted)
    };
    let v = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "subject {subject} has no version {version}; versions: 1 to {}",
                versions.len()
            ),
        )
    })?;
    let schema: Value = serde_json::from_str(&v.connect)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        json!({"subject": v.subject, "version": v.version, "schema": schema}),
    ))
}
