//! HTTP to an inference server: JSON in and out, the API key as a bearer token (never in a
//! message), and retries of connection errors, 429 and 5xx with exponential backoff and
//! jitter inside one time budget, after which the error names the server's last status and
//! its Retry-After.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use crate::error::{Error, Result};

/// First pause between tries; doubled each try up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Characters of a server's error body quoted in an error.
const QUOTE: usize = 300;

/// A secret that never prints.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One inference server's root URL, its key and the time budget of one call.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]` without a trailing `/v1`, user info or slash.
    root: String,
    key: Option<Secret>,
    timeout: Duration,
    /// HTTP requests sent (every try, probes included), shared by the clones.
    sent: Arc<AtomicU64>,
}

/// Why one try failed.
#[derive(Debug)]
enum Failure {
    /// Worth another try: connection errors, 429, 5xx.
    Again {
        status: Option<u16>,
        retry_after: Option<u64>,
        message: String,
    },
    /// An answer outside 2xx that another try would not change (4xx but 429).
    Refused { status: u16, message: String },
    /// Not worth another: the error to give.
    Final(Error),
}

impl Client {
    /// A client for `url` (`http(s)://host:port[/v1]`); the URL must not carry credentials.
    pub(crate) fn new(url: &str, key: Option<String>, timeout: Duration) -> Result<Self> {
        let root = root_of(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Internal(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            root,
            key: key.filter(|k| !k.is_empty()).map(Secret),
            timeout,
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The server's root URL (no credentials).
    pub(crate) fn root(&self) -> &str {
        &self.root
    }

    /// HTTP requests sent so far: every try of every call, probes and retries included.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// `GET path`, one try within `within` (probes): `Ok(None)` on a 404.
    pub(crate) async fn get(&self, path: &str, within: Duration) -> Result<Option<Value>> {
        let req = self.http.get(format!("{}{path}", self.root));
        match self.once(req, within).await {
            Ok(v) => Ok(Some(v)),
            Err(Failure::Refused { status: 404, .. }) => Ok(None),
            Err(f) => Err(self.give_up(path, f, 1)),
        }
    }

    /// `POST path` with a JSON body, tried again on connection errors, 429 and 5xx until the
    /// time budget is spent.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let deadline = Instant::now() + self.timeout;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let req = self.http.post(format!("{}{path}", self.root)).json(body);
            let failure = match self.once(req, left).await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let pause = match &failure {
                Failure::Again { retry_after, .. } => pause(tries, *retry_after),
                Failure::Refused { .. } | Failure::Final(_) => return Err(self.give_up(path, failure, tries)),
            };
            if Instant::now() + pause >= deadline {
                return Err(self.give_up(path, failure, tries));
            }
            tracing::debug!(
                path,
                tries,
                pause_ms = pause.as_millis() as u64,
                "retrying the inference server"
            );
            tokio::time::sleep(pause).await;
        }
    }

    async fn once(&self, req: reqwest::RequestBuilder, within: Duration) -> Result<Value, Failure> {
        if within.is_zero() {
            return Err(again(None, None, "no time left".into()));
        }
        let req = match &self.key {
            Some(k) => req.bearer_auth(&k.0),
            None => req,
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        let res = req
            .timeout(within)
            .send()
            .await
            .map_err(|e| again(None, None, transport(&e)))?;
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = res
            .text()
            .await
            .map_err(|e| again(Some(status), retry_after, transport(&e)))?;
        if status == 429 || status >= 500 {
            return Err(again(Some(status), retry_after, quote(&text)));
        }
        if !(200..300).contains(&status) {
            return Err(Failure::Refused {
                status,
                message: quote(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            Failure::Final(Error::remote(
                format!(
                    "the inference server's answer is not JSON ({e}): {}",
                    quote(&text)
                ),
                false,
            ))
        })
    }

    /// The error after the last try: 503 where the server was unreachable or said it was
    /// busy (429, 503), else 502; with the server's last status and Retry-After.
    fn give_up(&self, path: &str, failure: Failure, tries: u32) -> Error {
        let (status, retry_after, message) = match failure {
            Failure::Final(e) => return e,
            Failure::Refused { status, message } => {
                let message = format!(
                    "the inference server at {} answered {status} on {path}: {message}",
                    self.root
                );
                return Error::remote(message, false);
            }
            Failure::Again {
                status,
                retry_after,
                message,
            } => (status, retry_after, message),
        };
        let what = match status {
            Some(s) => format!("answered {s}"),
            None => "could not be reached".to_string(),
        };
        let wait = retry_after
            .map(|s| format!(" (Retry-After: {s} s)"))
            .unwrap_or_default();
        Error::Remote {
            message: format!(
                "the inference server at {} {what} on {path} after {tries} tr{} within {:.0} s{wait}: {message}",
                self.root,
                if tries == 1 { "y" } else { "ies" },
                self.timeout.as_secs_f64()
            ),
            unavailable: matches!(status, None | Some(429) | Some(503)),
            retry_after,
        }
    }
}

fn again(status: Option<u16>, retry_after: Option<u64>, message: String) -> Failure {
    Failure::Again {
        status,
        retry_after,
        message,
    }
}

/// A transport error without its URL.
fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The pause before try `tries + 1`: exponential with full jitter in its upper half, at
/// least what the server asked for.
fn pause(tries: u32, retry_after: Option<u64>) -> Duration {
    let exp = FIRST_PAUSE
        .saturating_mul(1 << tries.saturating_sub(1).min(10))
        .min(MAX_PAUSE);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    jittered.max(Duration::from_secs(retry_after.unwrap_or(0)))
}

fn quote(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// The root of `url`: scheme, host, port and path prefix, without `/v1`, a trailing slash, a
/// query or credentials (which are refused: the key goes in `--remote-api-key`).
pub(crate) fn root_of(url: &str) -> Result<String> {
    let field = "model";
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| Error::invalid(field, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(Error::invalid(
            field,
            "an inference server's URL is http(s)://HOST[:PORT][/v1]",
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Error::invalid(
            field,
            "the URL must not carry credentials; give the key with --remote-api-key",
        ));
    }
    let mut root = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
    if let Some(port) = u.port() {
        root.push_str(&format!(":{port}"));
    }
    let path = u.path().trim_end_matches('/');
    root.push_str(path.strip_suffix("/v1").unwrap_or(path));
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_drop_v1_and_slashes_and_refuse_credentials() {
        assert_eq!(root_of("http://gpu:8000/v1").unwrap(), "http://gpu:8000");
        assert_eq!(root_of("http://gpu:8000/v1/").unwrap(), "http://gpu:8000");
        assert_eq!(root_of("https://x.org/llm/").unwrap(), "https://x.org/llm");
        assert_eq!(root_of("http://[::1]:9/").unwrap(), "http://[::1]:9");
        assert!(root_of("http://u:p@gpu:8000").is_err());
        assert!(root_of("ftp://gpu").is_err());
        assert!(root_of("gpu:8000").is_err());
    }

    #[test]
    fn pauses_grow_and_honour_retry_after() {
        for tries in 1..8 {
            let p = pause(tries, None);
            let cap = FIRST_PAUSE.saturating_mul(1 << (tries - 1)).min(MAX_PAUSE);
            assert!(p <= cap && p >= cap / 2, "{tries}: {p:?}");
        }
        assert!(pause(1, Some(3)) >= Duration::from_secs(3));
    }

    #[test]
    fn the_key_never_prints() {
        let c = Client::new("http://h:1", Some("sk-secret".into()), Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
