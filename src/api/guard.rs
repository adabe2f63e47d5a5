//! Who may use the service: the API key when one is set, and without one only requests whose
//! `Host` is loopback or listed (so a web page cannot reach a local server by DNS rebinding).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::conn::Conn;
use super::error::ApiError;
use super::fair::Client;
use super::AppState;

/// Checks the API key (`Authorization: Bearer KEY`, the scheme in any case, or `X-Api-Key`)
/// when one is configured, and handles the request as its client's ([`Client::current`]: run
/// slots are shared per client).
pub(crate) async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|ConnectInfo(c)| Client::at(c.remote().ip()));
    match client {
        Some(client) => client.scope(check_key(&state, req, next)).await,
        None => check_key(&state, req, next).await,
    }
}

async fn check_key(state: &AppState, req: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(req).await;
    };
    match given_key(req.headers()) {
        None => ApiError::unauthorized(
            "an API key is required: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
        )
        .into_response(),
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("the API key is not valid").into_response(),
    }
}

/// The key a request carries, if any. Auth schemes are case-insensitive (RFC 7235).
fn given_key(h: &HeaderMap) -> Option<&str> {
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    bearer
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Paths any `Host` may reach: liveness and readiness probes (orchestrators dial the pod's
/// address), which reveal nothing.
const ANY_HOST_PATHS: [&str; 2] = ["/health", "/ready"];

/// Without an API key, answers only requests addressed to a loopback name or to a host listed
/// in `--allowed-hosts`; others get 403.
pub(crate) async fn check_host(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let c = &state.config;
    if c.api_key.is_some() || ANY_HOST_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if host_allowed(h, &c.allowed_hosts) => next.run(req).await,
        _ => {
            let shown: String = host.unwrap_or("none").chars().take(80).collect();
            ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "Host {shown:?} is not allowed: without an API key the server answers only \
                     loopback names (localhost, 127.0.0.1, [::1]) and the hosts listed in \
                     --allowed-hosts"
                ),
            )
            .with_field("host")
            .into_response()
        }
    }
}

/// True when `host` (a `Host` header: name or address, optional port) is loopback or matches
/// an entry of `allowed`: `*` (any), an exact name, or `.example.com` (it and its subdomains).
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    if name.is_empty() {
        return false;
    }
    let loopback = name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback
        || allowed.iter().any(|a| {
            let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
            match a.strip_prefix('.') {
                _ if a == "*" => true,
                Some(domain) => name == domain || name.ends_with(&a),
                None => host_name(&a) == name,
            }
        })
}

/// The lowercased name or address of a `Host` value, without port, brackets or final dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_pass_others_need_listing() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "app.localhost:1",
            "127.0.0.1",
            "127.3.4.5:8080",
            "[::1]:8080",
            "[::1]",
            "localhost.",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example:8080",
            "10.0.0.1:8080",
            "[::2]",
            "",
            ":8080",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let listed: Vec<String> = vec!["api.example.com".into(), ".corp.test".into(), "10.0.0.1".into()];
        for ok in [
            "api.example.com:443",
            "API.example.com",
            "corp.test",
            "x.corp.test",
            "10.0.0.1:8080",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in ["example.com", "evilcorp.test", "api.example.com.evil"] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
        assert!(host_allowed("anything:1", &["*".to_string()]));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let key = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            given_key(&h).map(str::to_string)
        };
        for v in ["Bearer k1", "bearer k1", "BEARER k1", "BeArEr   k1 "] {
            assert_eq!(key(v).as_deref(), Some("k1"), "{v}");
        }
        assert_eq!(key("Basic k1"), None);
        assert_eq!(key("Bearerk1"), None);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", " k2 ".parse().unwrap());
        assert_eq!(given_key(&h), Some("k2"));
    }
}
