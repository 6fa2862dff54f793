//! The HTTP API of bench-service on axum:
//! `GET /healthz`, `POST /v1/notes` (JSON), `GET /v1/notes[?tag=T]` (JSON),
//! `GET /v1/notes.pb[?tag=T]` (protobuf `NoteList`), `GET /v1/notes/{id}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use notes_core::{NewNote, NoteError, Store};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::RwLock;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;

pub type Shared = Arc<RwLock<Store>>;

/// An API error: a status and a JSON body `{"error": "..."}`.
pub struct ApiError(NoteError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            NoteError::NotFound(_) => StatusCode::NOT_FOUND,
            NoteError::Duplicate(_) => StatusCode::CONFLICT,
            NoteError::BadTitle { .. } | NoteError::BadTag(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

impl From<NoteError> for ApiError {
    fn from(e: NoteError) -> Self {
        ApiError(e)
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub tag: Option<String>,
}

async fn healthz(State(store): State<Shared>) -> Json<serde_json::Value> {
    let notes = store.read().await.len();
    Json(json!({ "status": "ok", "notes": notes }))
}

#[tracing::instrument(skip_all, fields(title = %new.title))]
async fn create(
    State(store): State<Shared>,
    Json(new): Json<NewNote>,
) -> Result<impl IntoResponse, ApiError> {
    let note = store.write().await.insert(new)?;
    tracing::info!(id = %note.id, "created");
    Ok((StatusCode::CREATED, Json(note)))
}

async fn list(State(store): State<Shared>, Query(q): Query<ListQuery>) -> impl IntoResponse {
    let store = store.read().await;
    let notes: Vec<_> = store.list(q.tag.as_deref()).into_iter().cloned().collect();
    Json(notes)
}

async fn list_proto(State(store): State<Shared>, Query(q): Query<ListQuery>) -> impl IntoResponse {
    let store = store.read().await;
    let body = notes_proto::encode_list(store.list(q.tag.as_deref()));
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body)
}

async fn fetch(
    State(store): State<Shared>,
    Path(id): Path<uuid_str::Id>,
) -> Result<impl IntoResponse, ApiError> {
    let store = store.read().await;
    Ok(Json(store.get(id.0)?.clone()))
}

/// A path segment parsed as a note id (a bad one is axum's 400).
mod uuid_str {
    use serde::{Deserialize, Deserializer};

    pub struct Id(pub notes_core::NoteId);

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            s.parse().map(Id).map_err(serde::de::Error::custom)
        }
    }
}

/// The service's router over `store`, at most `concurrency` requests at once.
pub fn router(store: Shared, concurrency: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/notes", get(list).post(create))
        .route("/v1/notes.pb", get(list_proto))
        .route("/v1/notes/{id}", get(fetch))
        .layer(ServiceBuilder::new().layer(ConcurrencyLimitLayer::new(concurrency)))
        .with_state(store)
}

/// Decodes a `/v1/notes.pb` body (for clients and the self-test).
pub fn decode_list(bytes: &[u8]) -> Result<notes_proto::NoteList, prost::DecodeError> {
    notes_proto::decode_list(bytes)
}
