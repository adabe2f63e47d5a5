//! The web page (`static/`), compiled into the binary by `build.rs`, or read from a directory.

use std::path::{Path, PathBuf};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/static_files.rs"));

/// The embedded file for a URL path (`/` and directories map to their `index.html`).
pub(crate) fn lookup(path: &str) -> Option<&'static [u8]> {
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

pub(crate) fn content_type(path: &str) -> &'static str {
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
pub(crate) fn serve(path: &str) -> Option<Response> {
    let body = lookup(path)?;
    let name = if path.ends_with('/') || !path.rsplit('/').next().unwrap_or("").contains('.') {
        "index.html"
    } else {
        path
    };
    Some(respond(body, name))
}

fn respond(body: impl IntoResponse, name: &str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Serves a file of `dir` (`--static-dir`) at URL `path`, or `None`. Only files inside `dir`
/// are served: a symbolic link that leads out of it is treated as missing.
pub(crate) async fn serve_dir(dir: &Path, path: &str) -> Option<Response> {
    let rel = relative_path(path)?;
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let mut real = tokio::fs::canonicalize(root.join(&rel)).await.ok()?;
    if tokio::fs::metadata(&real).await.ok()?.is_dir() {
        real = tokio::fs::canonicalize(real.join("index.html")).await.ok()?;
    }
    if !real.starts_with(&root) || !tokio::fs::metadata(&real).await.ok()?.is_file() {
        return None;
    }
    // Dotfiles (`.env`, `.git/`) are never served, also not through a link to one.
    let hidden = |p: &Path| {
        p.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    };
    if hidden(&rel) || hidden(real.strip_prefix(&root).ok()?) {
        return None;
    }
    let body = tokio::fs::read(&real).await.ok()?;
    let name = real.file_name()?.to_string_lossy().into_owned();
    Some(respond(body, &name))
}

/// A URL path as a relative file path: percent-decoded, each segment a plain name (no `.`,
/// `..`, backslashes or NULs).
fn relative_path(path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." || seg.contains(['\\', '\0', ':']) {
            return None;
        }
        rel.push(seg);
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_map_to_plain_relative_paths() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(relative_path("/a/b.js"), Some(PathBuf::from("a/b.js")));
        assert_eq!(relative_path("//a%20b.css"), Some(PathBuf::from("a b.css")));
        for bad in ["/../etc/passwd", "/a/%2e%2e/b", "/a\\b", "/a%00b", "/./x", "/c:x"] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }
}
