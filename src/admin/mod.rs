//! The operator's listener (issue 17, `[admin] listen`): a second socket, served by the same
//! bounded accept loop as the public one (`server::conn`), where every route but the
//! dashboard's static page needs `Authorization: Bearer <token>`, the token read once from the
//! environment variable `admin.token_env`. Nothing here is routed on the public listener.
//!
//! - [`stats`]: `GET /admin/stats` and the dashboard's `GET /admin/dashboard.json`, with the
//!   bounded per-minute history they draw from;
//! - [`explain`]: `POST /admin/explain`, a dry run of the real lookup (no upstream call, no
//!   write, no hit recorded);
//! - [`entries`]: read, delete, purge, export and import entries through the storage
//!   [`crate::cache::backend::Backend`], whichever backend runs;
//! - [`page`]: `GET /admin/`, one self-contained page embedded in the binary;
//! - [`cli`]: `deja cache …`, the same requests from a shell (or in-process, `--offline`).
//!
//! [`router`] builds the one `Router` of the listener: a new endpoint is one more `.route`.
//! Handlers never log or echo the token; a wrong token and a missing one get the same 401.

pub mod cli;
pub mod entries;
pub mod explain;
pub mod keys;
pub mod page;
pub mod stats;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error::ApiError;
use crate::cache::CacheEngine;
use crate::server::AppState;

/// Why the admin listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin.listen is set but the environment variable {env} (admin.token_env) is empty or \
         unset: set it to the admin bearer token"
    )]
    NoToken { env: String },
}

/// The admin bearer token, kept only as its SHA-256 so that comparing takes the same time
/// whatever the presented value (its length included) and the token is in no struct a
/// `Debug` could print.
#[derive(Clone)]
pub struct Token(Arc<[u8; 32]>);

impl Token {
    /// The token in `admin.token_env` as `env` answers; an empty one is refused.
    pub fn from_env(
        env_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Token, AdminError> {
        match env(env_name) {
            Some(t) if !t.trim().is_empty() => Ok(Token::new(t.trim())),
            _ => Err(AdminError::NoToken {
                env: env_name.to_string(),
            }),
        }
    }

    pub fn new(token: &str) -> Token {
        Token(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    /// Constant-time comparison of the digests.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&*self.0))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the admin handlers share: the server's state and the listener's own pieces.
#[derive(Clone)]
pub struct AdminState {
    pub app: AppState,
    pub token: Token,
    pub history: Arc<stats::History>,
    pub inventory: Arc<stats::InventoryCache>,
}

impl AdminState {
    pub fn new(app: AppState, token: Token) -> AdminState {
        AdminState {
            app,
            token,
            history: Arc::new(stats::History::new()),
            inventory: Arc::new(stats::InventoryCache::default()),
        }
    }

    /// The engine, or 503 while the model and the store are still loading.
    pub fn engine(&self) -> Result<CacheEngine, ApiError> {
        self.app
            .engine()
            .cloned()
            .ok_or_else(|| ApiError::ProviderUnavailable {
                message: "the cache is still loading (model and store); retry shortly".into(),
                retry_after_s: Some(1),
            })
    }
}

/// The admin listener's routes. `/admin/` (the page's static shell, which holds no data) is
/// the only one served without the token; `/metrics` is here when `admin.metrics = true`.
pub fn router(state: AdminState) -> axum::Router {
    let metrics_here = !state.app.config().admin.public_metrics();
    let mut protected = axum::Router::new()
        .route("/admin/stats", get(stats::stats))
        .route("/admin/dashboard.json", get(stats::dashboard))
        .route("/admin/explain", post(explain::explain))
        .route(
            "/admin/entries/{id}",
            get(entries::get_entry).delete(entries::delete_entry),
        )
        .route("/admin/purge", post(entries::purge))
        .route("/admin/reload", post(entries::reload))
        .route("/admin/export", get(entries::export))
        .route("/admin/import", post(entries::import))
        .route("/admin/feedback", post(feedback))
        .route("/admin/keys", get(keys::list).post(keys::create))
        .route("/admin/keys/{name}", axum::routing::delete(keys::delete));
    if metrics_here {
        protected = protected.route("/metrics", get(metrics));
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    axum::Router::new()
        .route("/admin/", get(page::page))
        .route("/admin", get(page::page))
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
}

/// `POST /admin/feedback`: the operator's verdict on a served hit, as a client sends it to
/// `/v1/deja/feedback` but for any tenant (`crate::quality::feedback`).
async fn feedback(State(state): State<AdminState>, body: axum::body::Body) -> Response {
    crate::quality::feedback::admin_handler(State(state.app.clone()), body).await
}

/// 401 unless `Authorization: Bearer <token>` carries the admin token.
async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if authorized(&state.token, req.headers()) {
        return next.run(req).await;
    }
    let mut resp = ApiError::Unauthorized {
        message: "this is deja's admin listener: send `Authorization: Bearer <token>` with the \
                  token in the environment variable named by admin.token_env"
            .into(),
    }
    .into_response_for(None);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"deja-admin\""),
    );
    resp
}

fn authorized(token: &Token, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or("");
    // Compared even when empty, so a missing scheme takes as long as a wrong token.
    token.matches(presented.trim()) && !presented.trim().is_empty()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    crate::server::metrics_response(&state.app)
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response_for(None)
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_only_itself() {
        let t = Token::new("s3cret-admin");
        assert!(t.matches("s3cret-admin"));
        assert!(!t.matches("s3cret-admiN"));
        assert!(!t.matches(""));
        assert!(!t.matches("s3cret-admin "));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn the_bearer_header_is_required() {
        let t = Token::new("tok");
        let mut h = HeaderMap::new();
        assert!(!authorized(&t, &h));
        h.insert(header::AUTHORIZATION, "tok".parse().unwrap());
        assert!(!authorized(&t, &h), "no scheme");
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(!authorized(&t, &h));
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(authorized(&t, &h));
    }

    #[test]
    fn an_unset_token_variable_is_a_clear_error() {
        let e = Token::from_env("OPS_TOKEN", &|_| None).unwrap_err();
        assert!(e.to_string().contains("OPS_TOKEN"), "{e}");
        assert!(Token::from_env("OPS_TOKEN", &|_| Some("  ".into())).is_err());
        assert!(Token::from_env("OPS_TOKEN", &|_| Some("x".into()))
            .unwrap()
            .matches("x"));
    }
}
