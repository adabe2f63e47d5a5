//! `X-Request-Id`: a client's id is kept only when it is short and plain (at most
//! [`MAX_LEN`] characters of `A-Z a-z 0-9 . _ -`); any other is dropped, so the server
//! makes one, and only a clean id is echoed and logged.

use axum::extract::Request;

pub(crate) const HEADER: &str = "x-request-id";

/// Longest request id kept.
pub(crate) const MAX_LEN: usize = 128;

/// Whether `id` may be echoed and logged as it is.
pub(crate) fn is_clean(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Drops every `X-Request-Id` unless there is one and it is clean.
pub(crate) async fn sanitize(mut req: Request) -> Request {
    let ids = req.headers().get_all(HEADER);
    let mut it = ids.iter();
    let keep = matches!((it.next(), it.next()), (Some(id), None) if is_clean(id.as_bytes()));
    if !keep {
        req.headers_mut().remove(HEADER);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        for ok in ["a", "req-1.2_3", &"x".repeat(MAX_LEN)] {
            assert!(is_clean(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "<script>", "a b", "a/b", "ü", &"x".repeat(MAX_LEN + 1)] {
            assert!(!is_clean(bad.as_bytes()), "{bad}");
        }
    }
}
