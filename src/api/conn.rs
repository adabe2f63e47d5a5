//! Connection timeouts, against clients that open sockets and never finish (slowloris) or
//! park idle keep-alive connections.
//!
//! A connection that has no request in progress must send a request's headers within the
//! header timeout of being accepted or of sending the request's first byte, and may stay idle
//! between requests for the keep-alive timeout. A request in progress (its body being read, the
//! work running, an event stream open) is never cut by either: `track` marks it.
//!
//! A request's body is timed by [`limit_body`]: it must arrive whole within the body timeout
//! of the headers, with no gap longer than the body idle timeout (408 and the connection
//! closed otherwise), and one whose `Content-Length` exceeds the body limit is refused with
//! 413 before a byte of it is read (and before `100 Continue`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use super::AppState;

/// How long a client may take over each part of a request, and stay idle between requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request's headers must arrive within this time of the connection being accepted or
    /// of the request's first byte.
    pub header: Duration,
    /// A connection with no request in progress is closed after this long.
    pub keep_alive: Duration,
    /// A request's whole body must arrive within this time of its headers.
    pub body: Duration,
    /// Longest gap between two pieces of a request's body.
    pub body_idle: Duration,
}

/// What one connection is doing, shared by its IO and the requests it carries.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    state: Mutex<Idle>,
}

#[derive(Debug)]
struct Idle {
    /// Accepted, or the last request ended.
    since: Instant,
    /// False until the first request: a new connection gets the header timeout.
    served: bool,
    /// First byte of the next request, once read.
    header_started: Option<Instant>,
    /// The read waiting on this connection, woken when a request ends to arm the idle timer.
    reader: Option<Waker>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(Idle {
                since: Instant::now(),
                served: false,
                header_started: None,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection times out, or `None` while a request is in progress.
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let s = self.lock();
        Some(match s.header_started {
            Some(at) => at + t.header,
            None if !s.served => s.since + t.header,
            None => s.since + t.keep_alive,
        })
    }

    fn read_bytes(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.lock().header_started.get_or_insert_with(Instant::now);
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut s = self.lock();
        s.served = true;
        s.header_started = None;
        InFlight(self.clone())
    }
}

/// A request in progress on its connection; dropped when its response body has been sent.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            s.since = Instant::now();
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }
}

/// The connection a request came on (as axum connect info).
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    activity: Arc<Activity>,
    remote: std::net::SocketAddr,
}

impl Conn {
    /// The address the client connects from.
    pub(crate) fn remote(&self) -> std::net::SocketAddr {
        self.remote
    }
}

impl Connected<IncomingStream<'_, TimeoutListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TimeoutListener>) -> Self {
        Conn {
            activity: stream.io().activity.clone(),
            remote: *stream.remote_addr(),
        }
    }
}

/// A TCP listener whose connections time out as [`Timeouts`] says.
pub(crate) struct TimeoutListener {
    inner: TcpListener,
    timeouts: Timeouts,
}

impl TimeoutListener {
    pub(crate) fn new(inner: TcpListener, timeouts: Timeouts) -> Self {
        TimeoutListener { inner, timeouts }
    }
}

impl Listener for TimeoutListener {
    type Io = TimeoutIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TimeoutIo, std::net::SocketAddr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        let activity = Arc::new(Activity::new());
        let first = activity.deadline(&self.timeouts).unwrap_or_else(Instant::now);
        let io = TimeoutIo {
            io,
            activity,
            timeouts: self.timeouts,
            timer: Box::pin(tokio::time::sleep_until(first)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose reads fail with `TimedOut` once the connection's deadline passes.
pub(crate) struct TimeoutIo {
    io: TcpStream,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
}

impl TimeoutIo {
    /// Called while a read is pending: Ready(Err) once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(deadline) = self.activity.deadline(&self.timeouts) else {
                // A request is in progress; its end wakes us to arm the idle timer.
                self.activity.lock().reader = Some(cx.waker().clone());
                // It may have ended between the check and storing the waker.
                if self.activity.in_flight.load(Ordering::SeqCst) > 0 {
                    return Poll::Pending;
                }
                continue;
            };
            if deadline <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out (--header-timeout / --keep-alive-timeout)",
                )));
            }
            self.timer.as_mut().reset(deadline);
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncRead for TimeoutIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity.read_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for TimeoutIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Middleware: marks a request in progress on its connection until its body has been sent.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<Conn>>().cloned() else {
        return next.run(req).await;
    };
    let guard = conn.activity.begin();
    next.run(req).await.map(|body| {
        Body::new(Tracked {
            inner: body,
            _guard: guard,
        })
    })
}

/// A response body that keeps its request marked in progress until it is done or dropped.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: refuses a body whose `Content-Length` exceeds `--max-body-bytes` before reading
/// it (413), and times the body as [`Timeouts`] says (408); either closes the connection.
pub(crate) async fn limit_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let max = state.config.max_body_bytes;
    if let Some(len) = content_length(req.headers()).filter(|len| *len > max as u64) {
        let e = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body ({len} bytes) exceeds the limit of {max} bytes (--max-body-bytes)"),
        );
        return closing(e.with_field("body"));
    }
    let t = state.config.timeouts;
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(TimedBody::new(body, t, expired.clone()));
    let res = next.run(Request::from_parts(parts, body)).await;
    if !expired.load(Ordering::SeqCst) {
        return res;
    }
    let e = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive in time: it must arrive whole within {} s of the \
             headers (--body-timeout), with no gap over {} s (--body-idle-timeout)",
            t.body.as_secs_f64(),
            t.body_idle.as_secs_f64()
        ),
    );
    closing(e.with_field("body"))
}

/// The declared body length, when the request states one.
fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// `e` as a response that closes the connection (the rest of the body is never read).
fn closing(e: ApiError) -> Response {
    let mut res = e.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A request body that fails with `TimedOut` once its deadline or idle gap passes.
struct TimedBody {
    inner: Body,
    /// The whole body must have arrived by then.
    deadline: Instant,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl TimedBody {
    fn new(inner: Body, t: Timeouts, expired: Arc<AtomicBool>) -> Self {
        let now = Instant::now();
        let deadline = now + t.body;
        TimedBody {
            inner,
            deadline,
            idle: t.body_idle,
            timer: Box::pin(tokio::time::sleep_until(deadline.min(now + t.body_idle))),
            expired,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = self.deadline.min(Instant::now() + self.idle);
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if self.timer.as_mut().poll(cx).is_ready() => {
                self.expired.store(true, Ordering::SeqCst);
                let e = io::Error::new(io::ErrorKind::TimedOut, "the request body did not arrive in time");
                Poll::Ready(Some(Err(axum::Error::new(e))))
            }
            other => other,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
