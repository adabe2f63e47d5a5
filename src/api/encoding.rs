//! Request bodies sent with a `Content-Encoding`: gzip is decoded before any handler reads
//! the body, with `--max-body-bytes` applied to the decoded size; any other encoding is
//! refused with 415.

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Decodes a gzip request body in place; 415 for another encoding, 413 when the body is too
/// large as sent or once decoded, 400 when it is not gzip.
pub(crate) async fn decode(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let encoding = match req.headers().get(header::CONTENT_ENCODING) {
        None => return next.run(req).await,
        Some(v) => v.to_str().unwrap_or("").trim().to_ascii_lowercase(),
    };
    if encoding == "identity" {
        return next.run(req).await;
    }
    if encoding != "gzip" && encoding != "x-gzip" {
        return unsupported(&encoding).into_response();
    }
    let limit = state.config.max_body_bytes;
    let (mut parts, body) = req.into_parts();
    let decoded = match axum::body::to_bytes(body, limit).await {
        Ok(sent) => gunzip(&sent, limit),
        Err(_) => Err(ApiError::payload_too_large()),
    };
    match decoded {
        Ok(bytes) => {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        Err(e) => e.into_response(),
    }
}

/// `sent` gunzipped, at most `limit` bytes.
fn gunzip(sent: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(sent)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body is sent as `Content-Encoding: gzip` but is not gzip: {e}"),
            )
            .with_field("content-encoding")
        })?;
    if out.len() > limit {
        return Err(ApiError::payload_too_large());
    }
    Ok(out.into())
}

fn unsupported(encoding: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("`Content-Encoding: {encoding}` is not supported: send the body as is, or gzip"),
    )
    .with_field("content-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_decoded_within_the_limit_on_its_decoded_size() {
        let body = vec![b'x'; 5000];
        assert_eq!(gunzip(&gzip(&body), 5000).unwrap().len(), 5000);
        // Small as sent, too large once decoded.
        let e = gunzip(&gzip(&body), 4999).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = gunzip(b"{\"text\": \"hi\"}", 5000).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_body"));
    }
}
