//! Connections: deja's own accept loop over hyper-util's auto (HTTP/1.1 + HTTP/2) connections,
//! because `axum::serve` bounds nothing: a client that never sent its headers, sent them a byte
//! at a time or parked an idle keep-alive connection held a socket forever. Here each
//! connection is watched by the task that serves it:
//! - **header read**: a request's line and headers must be complete within
//!   `header_read_timeout` of the connection opening, or of the first byte after the previous
//!   answer. Later bytes do not move the deadline, so a slowloris client is closed as a silent
//!   one is.
//! - **idle**: with no request in flight and no byte received, a keep-alive connection is
//!   closed gracefully after `idle_timeout`.
//! - **concurrency**: at most `max_connections` are served. At the limit the loop stops
//!   accepting, so further connections wait in the kernel's listen backlog and are served in
//!   order as slots free up, instead of taking file descriptors the store, the upstream pools
//!   and the admitted clients need. Waiting rather than refusing (as HAProxy's `maxconn` and
//!   Go's `LimitListener` do): a burst above the limit costs latency, not errors, and the
//!   header timeout frees the slots silent clients take.
//!
//! The body-read bound lives with the handlers (`server::read_body`), where a 408 can be
//! answered. hyper answers a request head it cannot parse (a bad `Content-Length`, a control
//! character in a header) by itself, with an empty 400, 414 or 431: [`WatchedIo`] replaces
//! that one write with the same status and an OpenAI- or Anthropic-shaped JSON body. Nothing
//! here reads a body or knows a route. Time is tokio's, so tests can pause it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::config::ServerConfig;

/// What each connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ServerConfig> for ConnLimits {
    fn from(c: &ServerConfig) -> ConnLimits {
        ConnLimits {
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// Room kept in the open-file limit beyond `max_connections`: the store, index snapshots, the
/// upstream pools, the listener.
const FD_RESERVE: u64 = 256;

/// Raises the soft open-file limit to fit `max_connections` (within the hard limit, as Go's
/// runtime does), and warns when it cannot: `accept` would fail with EMFILE before the
/// connection limit applies, and new clients, `/healthz` included, would starve.
pub fn fit_open_file_limit(max_connections: usize) {
    let want = (max_connections as u64).saturating_add(FD_RESERVE);
    match rlimit::increase_nofile_limit(want) {
        Ok(limit) if limit >= want => {}
        Ok(limit) => tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "server.max_connections leaves fewer than {FD_RESERVE} of the open-file limit for \
             the store and upstream connections: lower it or raise the limit (ulimit -n)"
        ),
        Err(e) => tracing::debug!(error = %e, "could not read or raise the open-file limit"),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, closes idle
/// connections and waits for those with a request in flight to finish it.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait in the listen backlog"
                    );
                    warned_full = Some(Instant::now());
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed answers are many small writes: without TCP_NODELAY each one after the first
        // waits for the client's ACK of the previous (Nagle), which can stall a token stream.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        tasks.spawn(serve_connection(
            tcp,
            app.clone(),
            limits,
            stop.clone(),
            slot,
        ));
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}

/// A failed accept: the peer gave up (retry at once), or the process is out of file
/// descriptors or memory (back off rather than spin, as hyper and axum do).
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    tcp: TcpStream,
    app: axum::Router,
    limits: ConnLimits,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let watch = Arc::new(Watch::new(Instant::now()));
    let io = TokioIo::new(WatchedIo {
        inner: tcp,
        watch: Arc::clone(&watch),
        replacement: None,
    });
    let service_watch = Arc::clone(&watch);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::start(&service_watch);
        let call = app.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // The watch below is the header timeout; hyper's own would also bound idle keep-alive
    // connections by it.
    builder.http1().header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut give_up: Option<Instant> = None;
    loop {
        let deadline = match (watch.deadline(&limits), give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = watch.changed.notified() => {}
            () = sleep_until(deadline) => {
                let now = Instant::now();
                if give_up.is_some_and(|t| t <= now) {
                    tracing::debug!("closing connection: graceful close did not complete");
                    return;
                }
                match watch.expired(&limits, now) {
                    Some(Expired::Headers) => {
                        tracing::debug!(
                            "closing connection: request headers incomplete after \
                             header_read_timeout"
                        );
                        return;
                    }
                    Some(Expired::Idle) if closing => return,
                    Some(Expired::Idle) => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        give_up = Some(now + limits.header_read_timeout);
                    }
                    None => {}
                }
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What one connection is doing, as seen from its bytes and its requests.
struct Watch {
    phase: Mutex<Phase>,
    /// Woken when a deadline may have moved earlier (a head started, the last answer ended).
    changed: Notify,
}

struct Phase {
    /// Requests handed to the app whose answer is not fully written yet.
    busy: usize,
    /// When the head being read started (the connection opened, or a byte arrived while no
    /// request was in flight).
    head_since: Option<Instant>,
    /// When the last answer ended.
    idle_since: Instant,
    /// The first bytes of the head being read: its request line, for the shape of an error.
    head: Vec<u8>,
}

/// How much of a head is kept to find its request line.
const HEAD_SNIFF: usize = 256;

#[derive(Debug, PartialEq, Eq)]
enum Expired {
    Headers,
    Idle,
}

impl Watch {
    fn new(opened: Instant) -> Watch {
        Watch {
            phase: Mutex::new(Phase {
                busy: 0,
                head_since: Some(opened),
                idle_since: opened,
                head: Vec::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn on_read(&self, bytes: &[u8]) {
        let mut p = self.phase.lock();
        if p.busy > 0 {
            return;
        }
        if p.head_since.is_none() {
            p.head_since = Some(Instant::now());
            p.head.clear();
            self.changed.notify_one();
        }
        let room = HEAD_SNIFF.saturating_sub(p.head.len());
        p.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn request_started(&self) {
        let mut p = self.phase.lock();
        p.busy += 1;
        p.head_since = None;
        p.head.clear();
    }

    fn request_done(&self) {
        let mut p = self.phase.lock();
        p.busy = p.busy.saturating_sub(1);
        if p.busy == 0 {
            p.idle_since = Instant::now();
            self.changed.notify_one();
        }
    }

    fn next(&self, limits: &ConnLimits) -> Option<(Instant, Expired)> {
        let p = self.phase.lock();
        if p.busy > 0 {
            return None;
        }
        Some(match p.head_since {
            Some(t) => (t + limits.header_read_timeout, Expired::Headers),
            None => (p.idle_since + limits.idle_timeout, Expired::Idle),
        })
    }

    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        self.next(limits).map(|(t, _)| t)
    }

    fn expired(&self, limits: &ConnLimits, now: Instant) -> Option<Expired> {
        self.next(limits)
            .and_then(|(t, why)| (t <= now).then_some(why))
    }

    /// hyper's own answer to an unparsable head, rewritten with a JSON body; `None` for any
    /// other write. Only hyper writes while no request is in flight and a head is being read,
    /// and its answer is exactly a status line with `content-length: 0` and `date` (the app's
    /// answers always carry more headers).
    fn rewrite_hyper_error(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let p = self.phase.lock();
        if p.busy > 0 {
            return None;
        }
        let error = hyper_error_status(buf)?;
        let api = request_path(&p.head).and_then(ApiKind::for_path);
        drop(p);
        let body = error.body_for(api);
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let status = error.status();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// The error behind hyper's automatic answer `buf`, if it is one: `HTTP/1.1 400|414|431`, then
/// only `content-length: 0`, `date` and `connection` headers, then the blank line.
fn hyper_error_status(buf: &[u8]) -> Option<ApiError> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let error = match rest.get(..3)? {
        "400" => ApiError::MalformedHead,
        "414" => ApiError::UriTooLong,
        "431" => ApiError::HeadersTooLarge,
        _ => return None,
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => {}
            "date" | "connection" => {}
            _ => return None,
        }
    }
    Some(error)
}

/// The path of a request line's target (`POST /v1/messages HTTP/1.1`; an absolute-form target
/// is reduced to its path).
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let target = line.split(|b| *b == b' ').nth(1)?;
    let target = std::str::from_utf8(target).ok()?;
    let path = match target.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => target,
    };
    Some(path.split('?').next().unwrap_or(path))
}

/// Marks a request in flight from the moment the app gets it until its answer's body is
/// dropped by hyper (written, or abandoned with the connection).
struct Busy(Arc<Watch>);

impl Busy {
    fn start(watch: &Arc<Watch>) -> Busy {
        watch.request_started();
        Busy(Arc::clone(watch))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// An answer's body that keeps its request [`Busy`].
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, reporting what it reads to the [`Watch`] and swapping hyper's empty error
/// answers for JSON ones.
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<Watch>,
    /// A rewritten answer and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl WatchedIo {
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is hyper's error answer, sending the rewrite instead.
    fn take_hyper_error(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<()>> {
        let rewritten = self.watch.rewrite_hyper_error(buf)?;
        self.replacement = Some((rewritten, 0));
        match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            // The rest goes out on the flush hyper does next.
            Poll::Ready(Ok(())) | Poll::Pending => Some(Ok(())),
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.watch.on_read(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        if let Some(taken) = this.take_hyper_error(cx, buf) {
            return Poll::Ready(taken.map(|()| buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(taken) = this.take_hyper_error(cx, first) {
                return Poll::Ready(taken.map(|()| first.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_phase() {
        let l = limits();
        let opened = Instant::now();
        let w = Arc::new(Watch::new(opened));
        // A fresh connection must send its head within the header timeout.
        assert_eq!(w.deadline(&l), Some(opened + l.header_read_timeout));
        w.on_read(b"GET / HT");
        tokio::time::advance(Duration::from_secs(5)).await;
        w.on_read(b"TP/1.1\r\n");
        assert_eq!(
            w.deadline(&l),
            Some(opened + l.header_read_timeout),
            "bytes do not extend it"
        );
        let busy = Busy::start(&w);
        assert_eq!(
            w.deadline(&l),
            None,
            "nothing expires while a request is in flight"
        );
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(w.expired(&l, Instant::now()), None);
        drop(busy);
        let done = Instant::now();
        assert_eq!(w.deadline(&l), Some(done + l.idle_timeout));
        tokio::time::advance(Duration::from_secs(1)).await;
        w.on_read(b"G");
        assert_eq!(
            w.deadline(&l),
            Some(done + Duration::from_secs(1) + l.header_read_timeout)
        );
        tokio::time::advance(l.header_read_timeout).await;
        assert_eq!(w.expired(&l, Instant::now()), Some(Expired::Headers));
    }

    #[test]
    fn only_hyper_error_answers_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 01 Dec 2025 08:00:00 GMT\r\n\r\n";
        assert!(matches!(
            hyper_error_status(hyper_400),
            Some(ApiError::MalformedHead)
        ));
        assert!(matches!(
            hyper_error_status(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            ),
            Some(ApiError::HeadersTooLarge)
        ));
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"error\":1}",
        ] {
            assert!(hyper_error_status(other).is_none(), "{other:?}");
        }
        let w = Watch::new(Instant::now());
        w.on_read(b"POST /v1/messages HTTP/1.1\r\ncontent-length: x\r\n\r\n");
        let out = String::from_utf8(w.rewrite_hyper_error(hyper_400).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(
            out.contains("\"type\":\"error\""),
            "Anthropic-shaped: {out}"
        );
        let w = Arc::new(Watch::new(Instant::now()));
        let _busy = Busy::start(&w);
        assert!(
            w.rewrite_hyper_error(hyper_400).is_none(),
            "the app is answering"
        );
    }

    #[test]
    fn request_paths_from_request_lines() {
        assert_eq!(
            request_path(b"GET /v1/messages?x=1 HTTP/1.1\r\n"),
            Some("/v1/messages")
        );
        assert_eq!(
            request_path(b"POST http://deja:8080/v1/messages HTTP/1.1\r\n"),
            Some("/v1/messages")
        );
        assert_eq!(request_path(b"GARBAGE"), None);
    }
}
