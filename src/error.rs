//! One error type for the whole service. Every bad input names its field.

use serde::Serialize;

/// Everything that can go wrong in the service; each variant has its `code` and HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request is wrong; `field` says where (e.g. `values.name`, `n_samples`).
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault, as a path into the request (e.g. `values.name`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request is valid but exceeds a configured limit.
    #[error("{field}: {message}")]
    TooLarge {
        /// The field whose setting makes the request too large.
        field: String,
        /// How much the request needs, the limit, and how to ask for less.
        message: String,
    },
    /// A model file is missing, corrupt or unsupported.
    #[error("model: {0}")]
    Model(String),
    /// The queue is full; try again later.
    #[error("the scoring queue is full, try again later")]
    Busy,
    /// The caller cancelled the work (client gone, DELETE on a job, shutdown).
    #[error("cancelled")]
    Cancelled,
    /// Something the caller named does not exist (a job, a route); the text says what.
    #[error("{0} not found")]
    NotFound(String),
    /// A failure inside the service that is not the caller's fault (a bug, a tokenizer error).
    #[error("internal error: {0}")]
    Internal(String),
    /// The inference server behind a remote model failed, or answered what cannot be used
    /// (`unavailable`: unreachable, overloaded or restarting; `retry_after`: the seconds it
    /// asked to wait).
    #[error("{message}")]
    Remote {
        /// What went wrong, as the server or the connection said.
        message: String,
        /// The server was unreachable, overloaded or restarting (503, not 502).
        unavailable: bool,
        /// Seconds the server asked to wait before trying again.
        retry_after: Option<u64>,
    },
}

/// The crate's result type, with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The same error, with an inference server's failure message rewritten by `f` (its
    /// status and Retry-After kept); any other error as it is.
    pub(crate) fn with_remote_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Error::Remote {
                message,
                unavailable,
                retry_after,
            } => Error::Remote {
                message: f(message),
                unavailable,
                retry_after,
            },
            e => e,
        }
    }

    /// An [`Error::Invalid`] naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::TooLarge {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Machine-readable code used in JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "invalid_request",
            Error::TooLarge { .. } => "limit_exceeded",
            Error::Model(_) => "model_error",
            Error::Busy => "queue_full",
            Error::Cancelled => "cancelled",
            Error::NotFound(_) => "not_found",
            Error::Internal(_) => "internal",
            Error::Remote {
                unavailable: true, ..
            } => "remote_unavailable",
            Error::Remote { .. } => "remote_error",
        }
    }

    /// The request field an `Invalid` or `TooLarge` error names; None for the other variants.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } | Error::TooLarge { field, .. } => Some(field),
            _ => None,
        }
    }

    /// A failure of the inference server behind a remote model (502; 503 when `unavailable`).
    pub fn remote(message: impl Into<String>, unavailable: bool) -> Self {
        Error::Remote {
            message: message.into(),
            unavailable,
            retry_after: None,
        }
    }

    /// The JSON body sent to clients for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                field: self.field().map(str::to_string),
            },
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(e.to_string())
    }
}

/// `{"error": {"code", "message", "field"?}}`
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error's code, message and field.
    pub error: ErrorDetail,
}

/// One error, for a program (`code`, `field`) and for a person (`message`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_request`, `limit_exceeded`, `queue_full`, `not_found`.
    pub code: String,
    /// What went wrong, in a sentence for people.
    pub message: String,
    /// The request field at fault (e.g. `values.name`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
