//! The web page (`static/`), compiled into the binary by `build.rs`, or read from a directory.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/static_files.rs"));

/// The embedded file for a URL path (`/` and directories map to their `index.html`).
pub fn lookup(path: &str) -> Option<&'static [u8]> {
    let mut rel = path.trim_start_matches('/').to_string();
    if rel.is_empty() || rel.ends_with('/') {
        rel.push_str("index.html");
    }
    FILES
        .iter()
        .find(|(p, _)| *p == rel)
        .map(|(_, b)| *b)
        .or_else(|| {
            let index = format!("{rel}/index.html");
            FILES.iter().find(|(p, _)| *p == index).map(|(_, b)| *b)
        })
}

pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// Serves an embedded file, or `None` when there is none at `path`.
pub fn serve(path: &str) -> Option<Response> {
    let body = lookup(path)?;
    let name = if path.ends_with('/') || !path.rsplit('/').next().unwrap_or("").contains('.') {
        "index.html"
    } else {
        path
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(res)
}
