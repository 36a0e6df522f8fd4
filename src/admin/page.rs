//! `GET /admin/`: the dashboard, one self-contained page (HTML, CSS and JS in `page.html`,
//! embedded in the binary; no CDN, no build step). The page itself holds no data and is served
//! without the token: it asks for the token in a form (or takes it from the URL fragment
//! `#token=…`, which browsers never send to a server), keeps it in `sessionStorage`, and sends
//! it as `Authorization: Bearer` on every refresh of `GET /admin/dashboard.json`. Everything
//! it shows comes from there, and every text from the cache (prompts, model names) is set as
//! text, never as markup.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

pub const PAGE: &str = include_str!("page.html");

pub async fn page() -> Response {
    let mut r = PAGE.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}
