//! HTTP errors: every failure is `{"error": {"code", "message", "field"?}}` with its status,
//! and JSON bodies are parsed so that a wrong type or an unknown field names its field.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorBody, ErrorDetail};

/// Seconds a client is told to wait after a 503 or 429.
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

/// An HTTP error: a status and the `{"error": {"code", "message", "field"?}}` body.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Machine-readable code in the body (`invalid_request`, `not_ready`, ...).
    pub code: &'static str,
    /// What went wrong, in a sentence for people.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// Seconds for `Retry-After` on a 503 or 429 (default [`RETRY_AFTER_SECS`]).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 401: the API key is missing or wrong; `message` says which.
    pub fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 503: the model is loading or failed to load, or the server is shutting down.
    pub fn not_ready(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// 404: `what` (e.g. `job ID`) does not exist.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into()).into()
    }

    /// 413: a body over `--max-body-bytes` (as sent, or once decoded).
    pub fn payload_too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body exceeds the configured limit (--max-body-bytes)",
        )
        .with_field("body")
    }

    /// 504: a synchronous request ran past the limit of `secs` seconds and was cancelled.
    pub fn timeout(secs: f64) -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the request took longer than the limit of {secs} s and was cancelled"),
        )
        .with_field("request_timeout")
    }

    /// The JSON body sent with the status.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Model(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
            // Only shutdown cancels a request whose client is still there.
            Error::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Remote {
                unavailable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Remote { .. } => StatusCode::BAD_GATEWAY,
        };
        let retry_after = match &e {
            Error::Remote { retry_after, .. } => *retry_after,
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            field: e.field().map(str::to_string),
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code,
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                code = self.code,
                "{}",
                self.message
            );
        }
        let mut res = (self.status, Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.unwrap_or(RETRY_AFTER_SECS)),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// A JSON body. Unlike `axum::Json` its errors are JSON too and name the offending field.
/// The body must be sent as `Content-Type: application/json` (415 otherwise): a web page can
/// send `text/plain` to any server without asking, but not JSON.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The whole body of a JSON request (415 otherwise), within the configured size limit.
pub(crate) async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    require_json(req.headers())?;
    axum::body::Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", r.body_text())
        }
    })
}

/// A path parameter. Unlike `axum::extract::Path` its rejection (a segment that is not
/// UTF-8 once percent-decoded, say) is a JSON error too.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(r.status(), "invalid_path", r.body_text()).with_field("path")
    }
}

/// 415 unless the content type is `application/json` or `application/*+json`.
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"));
    if json {
        return Ok(());
    }
    let given = if given.is_empty() { "none" } else { given };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("send the body as `Content-Type: application/json` (given: {given})"),
    )
    .with_field("content-type"))
}

/// Parses `bytes` as `T` in one pass, as the CLI does (so a duplicate key is an error, not a
/// silent overwrite); errors name the JSON path of the problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is empty: send a JSON object",
        ));
    };
    let syntax = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    };
    if *first != b'{' {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(syntax)?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body: expected a JSON object",
        )
        .with_field("body"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) if e.inner().is_data() => return Err(shape_error(&e)),
        Err(e) => return Err(syntax(e.into_inner())),
    };
    de.end().map_err(syntax)?;
    Ok(value)
}

/// A body of the wrong shape: names the field at fault.
fn shape_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let message = e.inner().to_string();
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    // Unknown, missing and repeated fields may be reported at their parent; name the field.
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match named {
        Some(name) if path.is_empty() => name.to_string(),
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => path,
        Some(name) => format!("{path}.{name}"),
        None if path.is_empty() => "body".to_string(),
        None => path,
    };
    let message = strip_position(&message);
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("{field}: {message}"),
    )
    .with_field(field)
}

/// Drops serde_json's " at line 1 column 42" from a data error (the field says where).
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::AttributeRequest;

    fn err(body: &str) -> ApiError {
        parse_json::<AttributeRequest>(body.as_bytes()).expect_err("an error")
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"template": "x", "bogus": 1}"#);
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, "invalid_request", Some("bogus"))
        );
        let e = err(r#"{"values": {"name": 3}}"#);
        assert_eq!(e.field.as_deref(), Some("values.name"), "{}", e.message);
        let e = err(r#"{"n_samples": "many"}"#);
        assert_eq!(e.field.as_deref(), Some("n_samples"));
        assert!(!e.message.contains("line 1"), "{}", e.message);
        let e = err(r#"{"method": "magic"}"#);
        assert_eq!(e.field.as_deref(), Some("method"));
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        for body in ["{", "", "  ", "[1,", "{} x", "nope"] {
            let e = err(body);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_json"),
                "{body:?}: {}",
                e.message
            );
        }
        assert!(parse_json::<AttributeRequest>(b" {} ").is_ok());
    }

    #[test]
    fn repeated_keys_are_errors_as_in_the_cli() {
        for (body, field) in [
            (r#"{"values": {"a": "x", "a": "y"}}"#, "values"),
            (r#"{"mask": {"a": 1, "a": 2}}"#, "mask"),
            (r#"{"seed": 1, "seed": 2}"#, "seed"),
        ] {
            let e = err(body);
            assert_eq!(e.code, "invalid_request", "{body}");
            assert!(e.message.contains("duplicate"), "{body}: {}", e.message);
            let f = e.field.unwrap();
            assert!(f == field || f.starts_with(&format!("{field}.")), "{body}: {f}");
            assert!(
                serde_json::from_str::<AttributeRequest>(body).is_err(),
                "the CLI agrees"
            );
        }
    }

    #[test]
    fn json_bodies_need_a_json_content_type() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(
            require_json(&h).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("multipart/form-data", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(require_json(&h).is_ok(), ok, "{ct}");
        }
    }
}
