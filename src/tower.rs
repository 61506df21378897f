//! A context for every request, and deadlines that follow outgoing calls (feature `tower`).
//!
//! - [`ContextLayer`] is a server [`Layer`]: every request gets a child context of the
//!   layer's root, bounded by the layer's timeout and the request's `grpc-timeout`, in the
//!   request's extensions. It ends when the response is complete, when the client goes away
//!   (cause [`ClientDisconnected`]), at its deadline (the layer answers `504` or gRPC
//!   `DEADLINE_EXCEEDED`), or when the root is cancelled (`503` or gRPC `UNAVAILABLE`).
//! - [`PropagateLayer`] is a client [`Layer`]: an outgoing request carrying a [`Context`] in
//!   its extensions is not sent if that context is done, carries its deadline as
//!   `grpc-timeout`, and is abandoned as soon as the context ends.
//!
//! Both work with hyper 1, axum 0.8, tonic and anything else built on `http` 1 and
//! `tower-service` 0.3. See [`crate::http`] for what crosses the wire and what does not.
//!
//! # Coming from Go's `r.Context()`
//!
//! | Go (`net/http`, grpc-go) | cancelctx |
//! |---|---|
//! | `r.Context()` | `req.extensions().get::<Context>()`, or `ctx: Context` as an axum extractor (feature `axum`) |
//! | cancelled when the client's connection closes | cancelled with the cause [`ClientDisconnected`] when the server drops the response future (connection closed, HTTP/2 stream reset) |
//! | cancelled when `ServeHTTP` returns | cancelled (plain [`Error::Canceled`]) when the response is complete: when its body ends or is dropped, not when the headers are sent |
//! | `http.Server{BaseContext: ...}` | [`ContextLayer::new(root)`](ContextLayer::new): cancelling `root` ends every request |
//! | `http.TimeoutHandler(h, d, msg)` | [`ContextLayer::timeout(d)`](ContextLayer::timeout): `504` when the response is not ready in time |
//! | grpc-go server: `grpc-timeout` becomes the handler's deadline | the same, bounded by the layer's timeout |
//! | grpc-go client: the call's `ctx` deadline becomes `grpc-timeout` | [`PropagateLayer`] (or [`inject_deadline`](crate::http::inject_deadline) by hand) |
//! | `http.NewRequestWithContext(ctx, ...)` | `req.extensions_mut().insert(ctx)` below a [`PropagateLayer`] |
//!
//! # gRPC and tonic
//!
//! A gRPC request (`content-type: application/grpc*`) that reaches its deadline is answered
//! *trailers-only* with `grpc-status: 4` (`DEADLINE_EXCEEDED`), as grpc-go does.
//!
//! tonic's own `Server` reads `grpc-timeout` *outside* every layer added with
//! `Server::layer` and, when it runs out first, answers `grpc-status: 1` (`CANCELLED`),
//! not `DEADLINE_EXCEEDED`. Behind tonic's `Server` the handler still sees the deadline in
//! its context, but the status the client gets is tonic's. To answer `DEADLINE_EXCEEDED`,
//! serve tonic's `Routes` on hyper yourself, behind [`ContextLayer`]:
//!
//! ```ignore
//! let routes = tonic::service::Routes::new(MyServer::new(my_service));
//! let svc = tower::ServiceBuilder::new()
//!     .layer(ContextLayer::new(root).timeout(Duration::from_secs(30)))
//!     .service(routes);
//! let svc = hyper_util::service::TowerToHyperService::new(svc);
//! // for each accepted connection:
//! hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
//!     .serve_connection(TokioIo::new(stream), svc.clone());
//! ```
//!
//! (`tests/http_tonic.rs` runs exactly this.) tonic's clients also send `grpc-timeout`
//! themselves (`Request::set_timeout`, `Endpoint::timeout`); under a [`PropagateLayer`] the
//! earlier of theirs and the context's is sent.
//!
//! # Examples
//!
//! A server on hyper whose handler sees its request's context:
//!
//! ```no_run
//! use cancelctx::tower::ContextLayer;
//! use cancelctx::Context;
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! async fn handler(req: http::Request<hyper::body::Incoming>)
//!     -> Result<http::Response<String>, Infallible>
//! {
//!     let ctx = req.extensions().get::<Context>().expect("ContextLayer is installed");
//!     // Pass `ctx` (or a child of it) to the work this request starts.
//!     Ok(http::Response::new(format!("{:?} left", ctx.remaining())))
//! }
//!
//! # async fn serve() -> std::io::Result<()> {
//! let (root, shutdown) = Context::background().with_cancel();
//! let svc = tower::ServiceBuilder::new()
//!     .layer(ContextLayer::new(root).timeout(Duration::from_secs(10)))
//!     .service_fn(handler);
//! let svc = hyper_util::service::TowerToHyperService::new(svc);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let svc = svc.clone();
//!     tokio::spawn(async move {
//!         let io = hyper_util::rt::TokioIo::new(stream);
//!         let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
//!     });
//! }
//! # }
//! ```

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{ready, Context as TaskContext, Poll};
use core::time::Duration;
use std::boxed::Box;

use ::http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use ::http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{
    encode_grpc_timeout, header_timeout, ClientDisconnected, GrpcTimeoutError, GRPC_TIMEOUT,
};
use crate::{CancelGuard, Context, DoneOwned, Error};

/// The error type of [`PropagateService`]: the inner service's error, or the request
/// context's [`Error`] (`err.downcast_ref::<cancelctx::Error>()`).
///
/// ```
/// use cancelctx::tower::BoxError;
/// let err: BoxError = Box::new(cancelctx::Error::DeadlineExceeded);
/// assert_eq!(err.downcast_ref(), Some(&cancelctx::Error::DeadlineExceeded));
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A server [`Layer`] that gives every request its own [`Context`], a child of `root`.
///
/// The request's context is in its extensions (`req.extensions().get::<Context>()`). Its
/// deadline is the earliest of `root`'s, the layer's [`timeout`](ContextLayer::timeout) and
/// the request's `grpc-timeout` header. It ends:
///
/// | when | error | cause | the client gets |
/// |---|---|---|---|
/// | the response is complete: its body has ended or is dropped | [`Error::Canceled`] | none (`Error::Canceled`) | the response |
/// | the client goes away first (the server drops the response future) | [`Error::Canceled`] | [`ClientDisconnected`] | nothing (it is gone) |
/// | the handler's future panics | [`Error::Canceled`] | none (`Error::Canceled`) | whatever the server makes of the panic |
/// | the deadline passes before the response is ready | [`Error::DeadlineExceeded`] | as set on `root`'s deadline, if any | `504 Gateway Timeout`, or for gRPC a trailers-only `grpc-status: 4` (`DEADLINE_EXCEEDED`) |
/// | `root` is cancelled before the response is ready (a passed deadline of `root`'s is the row above) | [`Error::Canceled`] | `root`'s | `503 Service Unavailable`, or `grpc-status: 14` (`UNAVAILABLE`) |
///
/// In the last two rows the inner service's future is dropped at once: the handler stops at
/// its next `.await`, and any work it spawned with the context sees it done.
///
/// A deadline that passes while the *body* is streaming ends the context (work feeding the
/// body should watch it) but does not cut the body: the status was already sent. Once the
/// response is ready, its context ends without a cause whether the body ended or was
/// dropped (a client leaving mid-stream included): [`ClientDisconnected`] marks exactly the
/// requests that lost their client before their response was ready.
///
/// # Malformed `grpc-timeout`
///
/// A request whose `grpc-timeout` is malformed is answered `400 Bad Request` with the
/// [`GrpcTimeoutError`] as its text, or for gRPC `grpc-status: 13` (`INTERNAL`, grpc-go's
/// choice) with it as `grpc-message`; the handler is not called. It is never served without
/// the layer's own limit, and never panics. A `grpc-timeout` of `0` means the deadline has
/// already passed: the request is answered as in the deadline row without reaching the
/// handler. If the header is valid but `root`'s tree has no clock, the answer is `500` or
/// `grpc-status: 13`.
///
/// # Examples
///
/// ```
/// use cancelctx::tower::ContextLayer;
/// use cancelctx::{Context, ManualClock};
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # futures::executor::block_on(async {
/// let clock = ManualClock::new();
/// let mut svc = ServiceBuilder::new()
///     .layer(ContextLayer::new(Context::with_clock(clock)).timeout(Duration::from_secs(10)))
///     .service_fn(|req: http::Request<String>| async move {
///         let ctx = req.extensions().get::<Context>().unwrap();
///         Ok::<_, std::convert::Infallible>(http::Response::new(format!("{:?}", ctx.remaining())))
///     });
/// let request = http::Request::builder().header("grpc-timeout", "3S").body(String::new())?;
/// let response = svc.ready().await?.call(request).await?;
/// assert_eq!(response.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ContextLayer {
    root: Context,
    timeout: Option<Duration>,
}

impl ContextLayer {
    /// A layer whose requests' contexts are children of `root`: cancelling `root` ends every
    /// request in flight and answers those not yet complete with `503`.
    ///
    /// `root` should have a clock (like [`Context::background`]) for `grpc-timeout` headers
    /// to be honoured; on an unclocked tree a request carrying one is answered `500`.
    ///
    /// ```
    /// let layer = cancelctx::tower::ContextLayer::new(cancelctx::Context::background());
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn new(root: Context) -> ContextLayer {
        ContextLayer { root, timeout: None }
    }

    /// Bounds every request to `timeout` (the request's own `grpc-timeout` can only make it
    /// shorter).
    ///
    /// # Panics
    ///
    /// If the root's tree has no clock (it is rooted at [`Context::unclocked`]): deadlines
    /// need one.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = cancelctx::tower::ContextLayer::new(cancelctx::Context::background())
    ///     .timeout(Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    #[must_use]
    #[track_caller]
    pub fn timeout(mut self, timeout: Duration) -> ContextLayer {
        assert!(
            self.root.clock().is_some(),
            "ContextLayer::timeout: the root context has no clock (use Context::background() or Context::with_clock)"
        );
        self.timeout = Some(timeout);
        self
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService { inner, root: self.root.clone(), timeout: self.timeout }
    }
}

/// The service of a [`ContextLayer`]: `Clone` when the inner service is.
///
/// Its responses are `Response<ContextBody<B>>` for the inner service's `Response<B>`. The
/// body's `Data` must convert from `&'static str` (as `Bytes`, which hyper, axum and tonic
/// use, does) for the short text of the answers the layer makes itself (`504`, `503`, `400`).
///
/// ```
/// use cancelctx::tower::{ContextLayer, ContextService};
/// use tower::Layer;
/// let svc: ContextService<()> = ContextLayer::new(cancelctx::Context::background()).layer(());
/// # let _ = svc;
/// ```
#[derive(Clone, Debug)]
pub struct ContextService<S> {
    inner: S,
    root: Context,
    timeout: Option<Duration>,
}

impl<S> ContextService<S> {
    /// The wrapped service.
    ///
    /// ```
    /// use tower::Layer;
    /// let svc = cancelctx::tower::ContextLayer::new(cancelctx::Context::background()).layer(7);
    /// assert_eq!(*svc.get_ref(), 7);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn request_context(&self, headers: &HeaderMap) -> Result<(Context, CancelGuard), Reject> {
        let header = header_timeout(headers).map_err(Reject::Header)?;
        let limit = match (self.timeout, header) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match limit {
            None => Ok(self.root.with_cancel()),
            Some(limit) => self
                .root
                .try_with_timeout(limit)
                .map_err(|_| Reject::Header(GrpcTimeoutError::NoClock)),
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Data: From<&'static str>,
{
    type Response = Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let rejected =
            |reject| ContextFuture { state: State::Rejected { reject: Some((reject, grpc)) } };
        let (ctx, guard) = match self.request_context(req.headers()) {
            Ok(pair) => pair,
            Err(reject) => return rejected(reject),
        };
        // Born done: a `grpc-timeout` of 0, or a cancelled root. Not worth the handler's time.
        if let Some(err) = ctx.err() {
            return rejected(Reject::Done(err));
        }
        let done = ctx.done_owned();
        req.extensions_mut().insert(ctx);
        ContextFuture {
            state: State::Running {
                inner: self.inner.call(req),
                done,
                guard: Some(RequestGuard::new(guard)),
                grpc,
            },
        }
    }
}

/// Cancels the request's context with [`ClientDisconnected`] when dropped before
/// [`complete`](RequestGuard::complete): the server dropped the response future.
struct RequestGuard {
    guard: Option<CancelGuard>,
    /// Set while the handler's future is being polled. If the guard is dropped with it set,
    /// that poll panicked (the future is dropped while unwinding, or after the panic was
    /// caught): the handler failed, the client did not go away.
    polling: bool,
}

impl RequestGuard {
    fn new(guard: CancelGuard) -> RequestGuard {
        RequestGuard { guard: Some(guard), polling: false }
    }

    /// The response is ready: from now on ending the context is not a disconnect.
    fn complete(mut self) -> Option<CancelGuard> {
        self.guard.take()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            if self.polling {
                // The handler panicked: end the context without claiming a disconnect.
                drop(guard);
            } else {
                guard.cancel_with(ClientDisconnected);
            }
        }
    }
}

/// Why the layer answers a request itself.
#[derive(Clone, Copy, Debug)]
enum Reject {
    Header(GrpcTimeoutError),
    Done(Error),
}

impl Reject {
    /// (HTTP status, gRPC status code, message).
    fn parts(self) -> (StatusCode, u8, &'static str) {
        match self {
            Reject::Header(e) if e.is_malformed() => (StatusCode::BAD_REQUEST, 13, e.message()),
            Reject::Header(e) => (StatusCode::INTERNAL_SERVER_ERROR, 13, e.message()),
            Reject::Done(Error::DeadlineExceeded) => {
                (StatusCode::GATEWAY_TIMEOUT, 4, "context deadline exceeded")
            }
            Reject::Done(Error::Canceled) => {
                (StatusCode::SERVICE_UNAVAILABLE, 14, "server context canceled")
            }
        }
    }

    fn response<B>(self, grpc: bool) -> Response<ContextBody<B>> {
        let (status, code, message) = self.parts();
        let mut response =
            Response::new(ContextBody::message(if grpc { None } else { Some(message) }));
        let headers = response.headers_mut();
        if grpc {
            // Trailers-only: the status travels in the one HEADERS frame, with no body. The
            // messages are printable ASCII without `%`, so they need no percent-encoding.
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
            headers.insert("grpc-message", HeaderValue::from_static(message));
        } else {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            *response.status_mut() = status;
        }
        response
    }
}

pin_project! {
    /// The response future of [`ContextService`]: the inner service's response with a
    /// [`ContextBody`], or the layer's own answer at the deadline (see [`ContextLayer`]).
    ///
    /// ```
    /// use cancelctx::tower::{ContextFuture, ContextLayer};
    /// use cancelctx::{Context, ManualClock};
    /// use std::time::Duration;
    /// use tower::{Layer, Service};
    ///
    /// let clock = ManualClock::new();
    /// let layer = ContextLayer::new(Context::with_clock(clock.clone()))
    ///     .timeout(Duration::from_secs(1));
    /// let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
    ///     std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
    /// }));
    /// let mut call: ContextFuture<_> = svc.call(http::Request::new(()));
    /// assert!(futures::FutureExt::now_or_never(&mut call).is_none());
    /// clock.advance(Duration::from_secs(1));
    /// let response = futures::executor::block_on(call).unwrap();
    /// assert_eq!(response.status(), 504);
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ContextFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            inner: F,
            done: DoneOwned,
            guard: Option<RequestGuard>,
            grpc: bool,
        },
        Rejected {
            reject: Option<(Reject, bool)>,
        },
    }
}

impl<F, B, E> Future for ContextFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ContextBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let (reject, grpc) = match state.as_mut().project() {
            StateProj::Running { inner, done, guard, grpc } => {
                // The response first: one that is ready at the deadline is still served.
                // `polling` stays set if the handler's poll panics (see `RequestGuard`).
                set_polling(guard, true);
                let polled = inner.poll(cx);
                set_polling(guard, false);
                if let Poll::Ready(result) = polled {
                    let guard = guard.take().and_then(RequestGuard::complete);
                    return Poll::Ready(
                        result.map(|response| response.map(|body| ContextBody::new(body, guard))),
                    );
                }
                let err = ready!(Pin::new(done).poll(cx));
                // The context is done already, so completing the guard changes nothing;
                // it only keeps the drop below from reporting a disconnect.
                drop(guard.take().and_then(RequestGuard::complete));
                (Reject::Done(err), *grpc)
            }
            StateProj::Rejected { reject } => {
                reject.take().expect("ContextFuture polled after it completed")
            }
        };
        // Drop the handler's future now: it is not going to be answered.
        state.set(State::Rejected { reject: None });
        Poll::Ready(Ok(reject.response(grpc)))
    }
}

fn set_polling(guard: &mut Option<RequestGuard>, polling: bool) {
    if let Some(guard) = guard {
        guard.polling = polling;
    }
}

impl<F> fmt::Debug for ContextFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "running",
            State::Rejected { reject: Some(_) } => "rejected",
            State::Rejected { reject: None } => "complete",
        };
        f.debug_struct("ContextFuture").field("state", &state).finish()
    }
}

pin_project! {
    /// The response body of [`ContextService`]: the inner body, which ends the request's
    /// context when it ends or is dropped, or the short text of a response the layer made.
    ///
    /// ```
    /// use cancelctx::tower::{ContextBody, ContextLayer};
    /// use cancelctx::Context;
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # futures::executor::block_on(async {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut svc = ContextLayer::new(Context::background()).layer(tower::service_fn(
    ///     move |req: http::Request<()>| {
    ///         tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
    ///         async { Ok::<_, std::convert::Infallible>(http::Response::new("hi".to_owned())) }
    ///     },
    /// ));
    /// let response = svc.ready().await?.call(http::Request::new(())).await?;
    /// let body: ContextBody<String> = response.into_body();
    /// let ctx = rx.recv()?;
    /// assert!(!ctx.is_done(), "the request lives while its body is sent");
    /// assert_eq!(body.collect().await?.to_bytes(), "hi");
    /// assert!(ctx.is_done());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub struct ContextBody<B> {
        #[pin]
        inner: Option<B>,
        message: Option<&'static str>,
        guard: Option<CancelGuard>,
    }
}

impl<B> ContextBody<B> {
    fn new(inner: B, guard: Option<CancelGuard>) -> ContextBody<B>
    where
        B: Body,
    {
        // An empty body may never be polled: the response is complete now.
        let guard = if inner.is_end_stream() { None } else { guard };
        ContextBody { inner: Some(inner), message: None, guard }
    }

    fn message(message: Option<&'static str>) -> ContextBody<B> {
        ContextBody { inner: None, message, guard: None }
    }
}

impl<B> Body for ContextBody<B>
where
    B: Body,
    B::Data: From<&'static str>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(this.message.take().map(|m| Ok(Frame::data(m.into()))));
        };
        let frame = ready!(inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            Some(Ok(_)) => inner.is_end_stream(),
            // The end, or an error that ends the response.
            None | Some(Err(_)) => true,
        };
        if ended {
            // The response is complete: end the request's context (dropping the guard
            // cancels it with no cause).
            drop(this.guard.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.message.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(self.message.map_or(0, |m| m.len() as u64)),
        }
    }
}

impl<B> fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody")
            .field("message", &self.message)
            .field("request_live", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

/// A client [`Layer`] that carries the [`Context`] in a request's extensions to the server.
///
/// For a request with a `Context` in its extensions, the [`PropagateService`]:
///
/// 1. fails at once with the context's [`Error`] if it is done (the inner service is not
///    called), or if its deadline has passed;
/// 2. writes its remaining time as `grpc-timeout`, unless the request already carries an
///    earlier one (tonic's `Request::set_timeout` writes its own);
/// 3. abandons the call with the context's [`Error`] as soon as the context ends: the
///    response future resolves to it and drops the inner future (which resets the HTTP/2
///    stream or closes the HTTP/1 connection, so the server sees its client go away), and a
///    response body still streaming fails with it.
///
/// A request without a `Context` passes through untouched. Errors are [`BoxError`]s: the
/// inner service's, or a [`cancelctx::Error`](Error) (`err.downcast_ref::<cancelctx::Error>()`).
///
/// # Examples
///
/// ```
/// use cancelctx::tower::PropagateLayer;
/// use cancelctx::{Context, ManualClock};
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # futures::executor::block_on(async {
/// let mut client = ServiceBuilder::new().layer(PropagateLayer::new()).service_fn(
///     |req: http::Request<String>| async move {
///         let timeout = req.headers()["grpc-timeout"].clone();
///         Ok::<_, std::convert::Infallible>(http::Response::new(timeout.to_str().unwrap().to_owned()))
///     },
/// );
/// let clock = ManualClock::new();
/// let (ctx, _guard) = Context::with_clock(clock).with_timeout(Duration::from_millis(1500));
/// let mut request = http::Request::new(String::new());
/// request.extensions_mut().insert(ctx);
/// let response = client.ready().await?.call(request).await?;
/// assert_eq!(response.into_body().into_inner(), "1500000u");
/// # Ok::<(), cancelctx::tower::BoxError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateLayer {
    _private: (),
}

impl PropagateLayer {
    /// The layer.
    ///
    /// ```
    /// let layer = cancelctx::tower::PropagateLayer::new();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn new() -> PropagateLayer {
        PropagateLayer { _private: () }
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = PropagateService<S>;

    fn layer(&self, inner: S) -> PropagateService<S> {
        PropagateService { inner }
    }
}

/// The service of a [`PropagateLayer`]: `Clone` when the inner service is.
///
/// ```
/// use tower::Layer;
/// let svc = cancelctx::tower::PropagateLayer::new().layer(7);
/// assert_eq!(*svc.get_ref(), 7);
/// ```
#[derive(Clone, Debug)]
pub struct PropagateService<S> {
    inner: S,
}

impl<S> PropagateService<S> {
    /// The wrapped service.
    ///
    /// ```
    /// use tower::Layer;
    /// let svc = cancelctx::tower::PropagateLayer::new().layer("inner");
    /// assert_eq!(*svc.get_ref(), "inner");
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Checks `ctx` and writes its deadline, keeping an earlier `grpc-timeout` already there.
fn prepare(ctx: &Context, headers: &mut HeaderMap) -> Result<(), Error> {
    ctx.check()?;
    if let Some(remaining) = ctx.remaining() {
        if remaining.is_zero() {
            return Err(Error::DeadlineExceeded);
        }
        match header_timeout(headers) {
            Ok(Some(earlier)) if earlier <= remaining => {}
            _ => {
                headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(remaining));
            }
        }
    }
    Ok(())
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PropagateService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PropagateBody<ResBody>>;
    type Error = BoxError;
    type Future = PropagateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let ctx = req.extensions().get::<Context>().cloned();
        if let Some(ctx) = &ctx {
            if let Err(err) = prepare(ctx, req.headers_mut()) {
                return PropagateFuture { state: PropagateState::Failed { err: Some(err) } };
            }
        }
        let watch = ctx.map(|ctx| Watch { done: ctx.done_owned(), ctx });
        PropagateFuture { state: PropagateState::Calling { inner: self.inner.call(req), watch } }
    }
}

/// The context a call runs under, and a future for its end.
struct Watch {
    ctx: Context,
    done: DoneOwned,
}

impl Watch {
    fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Error> {
        Pin::new(&mut self.done).poll(cx)
    }
}

pin_project! {
    /// The response future of [`PropagateService`]: the inner service's response with a
    /// [`PropagateBody`], or the request context's [`Error`] as soon as it ends.
    ///
    /// ```
    /// use cancelctx::tower::{PropagateFuture, PropagateLayer};
    /// use cancelctx::{Context, Error};
    /// use tower::{Layer, Service};
    ///
    /// let mut client = PropagateLayer::new().layer(tower::service_fn(|_: http::Request<()>| {
    ///     std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
    /// }));
    /// let (ctx, guard) = Context::background().with_cancel();
    /// let mut request = http::Request::new(());
    /// request.extensions_mut().insert(ctx);
    /// let mut call: PropagateFuture<_> = client.call(request);
    /// assert!(futures::FutureExt::now_or_never(&mut call).is_none());
    /// guard.cancel(); // the call is abandoned
    /// let err = futures::executor::block_on(call).unwrap_err();
    /// assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct PropagateFuture<F> {
        #[pin]
        state: PropagateState<F>,
    }
}

pin_project! {
    #[project = PropagateProj]
    enum PropagateState<F> {
        Calling {
            #[pin]
            inner: F,
            watch: Option<Watch>,
        },
        Failed {
            err: Option<Error>,
        },
    }
}

impl<F, B, E> Future for PropagateFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<PropagateBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let err = match state.as_mut().project() {
            PropagateProj::Calling { inner, watch } => {
                // The context first: once it has ended, a response is no use to the caller.
                let ended = match watch {
                    Some(w) => match w.poll(cx) {
                        Poll::Ready(err) => Some(err),
                        Poll::Pending => None,
                    },
                    None => None,
                };
                match ended {
                    Some(err) => err,
                    None => {
                        let result = ready!(inner.poll(cx));
                        let watch = watch.take();
                        return Poll::Ready(match result {
                            Ok(response) => Ok(response.map(|body| PropagateBody {
                                inner: body,
                                watch,
                                abandoned: false,
                            })),
                            Err(e) => Err(e.into()),
                        });
                    }
                }
            }
            PropagateProj::Failed { err } => {
                err.take().expect("PropagateFuture polled after it completed")
            }
        };
        // Abandon the call: dropping the inner future resets the stream or the connection.
        state.set(PropagateState::Failed { err: None });
        Poll::Ready(Err(Box::new(err)))
    }
}

impl<F> fmt::Debug for PropagateFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            PropagateState::Calling { watch: Some(w), .. } => {
                return f
                    .debug_struct("PropagateFuture")
                    .field("state", &"calling")
                    .field("context", &w.ctx)
                    .finish()
            }
            PropagateState::Calling { watch: None, .. } => "calling",
            PropagateState::Failed { err: Some(_) } => "failed",
            PropagateState::Failed { err: None } => "complete",
        };
        f.debug_struct("PropagateFuture").field("state", &state).finish()
    }
}

pin_project! {
    /// The response body of [`PropagateService`]: the inner body, failing with the request
    /// context's [`Error`] as soon as the context ends. A body that has ended (it returned
    /// its end, or a frame after which it reports [`is_end_stream`](Body::is_end_stream)) is
    /// complete and stays so.
    ///
    /// ```
    /// use cancelctx::tower::{PropagateBody, PropagateLayer};
    /// use cancelctx::{Context, Error};
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # futures::executor::block_on(async {
    /// let mut client = PropagateLayer::new().layer(tower::service_fn(|_: http::Request<()>| async {
    ///     // A body that never ends (a stream of server events, say).
    ///     let body = http_body_util::StreamBody::new(futures::stream::pending::<
    ///         Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    ///     >());
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(body))
    /// }));
    /// let (ctx, guard) = Context::background().with_cancel();
    /// let mut request = http::Request::new(());
    /// request.extensions_mut().insert(ctx);
    /// let response = client.ready().await?.call(request).await?;
    /// let mut body: PropagateBody<_> = response.into_body();
    /// guard.cancel();
    /// let err = body.frame().await.unwrap().unwrap_err();
    /// assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    /// # Ok::<(), cancelctx::tower::BoxError>(())
    /// # }).unwrap();
    /// ```
    pub struct PropagateBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
        abandoned: bool,
    }
}

impl<B> PropagateBody<B> {
    /// The inner body, no longer watching the context.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// # futures::executor::block_on(async {
    /// let mut svc = tower::Layer::layer(
    ///     &cancelctx::tower::PropagateLayer::new(),
    ///     tower::service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new("body".to_owned()))
    ///     }),
    /// );
    /// let response = svc.ready().await?.call(http::Request::new(())).await?;
    /// assert_eq!(response.into_body().into_inner(), "body");
    /// # Ok::<(), cancelctx::tower::BoxError>(())
    /// # }).unwrap();
    /// ```
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for PropagateBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if *this.abandoned {
            return Poll::Ready(None);
        }
        let Some(watch) = this.watch else {
            return this.inner.poll_frame(cx).map(|frame| frame.map(|f| f.map_err(Into::into)));
        };
        // One load per frame while the context is live; the waker is registered only when
        // the inner body is pending.
        let err = match watch.ctx.err() {
            Some(err) => err,
            None => match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => {
                    if frame.is_none() || this.inner.is_end_stream() {
                        // The body is complete: the context ending later changes nothing.
                        *this.watch = None;
                    }
                    return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                }
                Poll::Pending => ready!(watch.poll(cx)),
            },
        };
        *this.abandoned = true;
        *this.watch = None;
        Poll::Ready(Some(Err(Box::new(err))))
    }

    fn is_end_stream(&self) -> bool {
        self.abandoned || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.abandoned {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

impl<B> fmt::Debug for PropagateBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateBody")
            .field("context", &self.watch.as_ref().map(|w| &w.ctx))
            .finish_non_exhaustive()
    }
}
