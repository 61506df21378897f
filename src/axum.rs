//! [`Context`] as an axum extractor (feature `axum`).
//!
//! With [`ContextLayer`](crate::tower::ContextLayer) on the router, a handler takes its
//! request's context as an argument:
//!
//! ```
//! use axum::{routing::get, Router};
//! use cancelctx::tower::ContextLayer;
//! use cancelctx::{Context, ManualClock};
//! use std::time::Duration;
//! use tower::ServiceExt;
//!
//! async fn handler(ctx: Context) -> String {
//!     // Hand `ctx` to the work this request starts: it ends with the request.
//!     format!("{:?} left", ctx.remaining().unwrap())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let root = Context::with_clock(ManualClock::new()); // Context::background() in production
//! let app = Router::new()
//!     .route("/", get(handler))
//!     .layer(ContextLayer::new(root).timeout(Duration::from_secs(10)));
//!
//! let request = http::Request::get("/").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Without the layer the extraction fails with [`MissingContextLayer`]: a `500 Internal
//! Server Error` that says so, rather than a context that never ends. A handler that may run
//! without the layer takes `Option<Context>` instead.

use core::convert::Infallible;
use core::fmt;
use core::future::Future;

use ::http::request::Parts;
use ::http::StatusCode;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};

use crate::Context;

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = MissingContextLayer;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Context, MissingContextLayer>> + Send {
        let ctx = parts.extensions.get::<Context>().cloned().ok_or(MissingContextLayer);
        core::future::ready(ctx)
    }
}

/// `Option<Context>` as an extractor: the request's context, or `None` without
/// [`ContextLayer`](crate::tower::ContextLayer) (never a rejection), for handlers served
/// both behind the layer and without it.
///
/// ```
/// use axum::{routing::get, Router};
/// use cancelctx::Context;
/// use tower::ServiceExt;
///
/// async fn handler(ctx: Option<Context>) -> &'static str {
///     if ctx.is_some() { "with a context" } else { "without" }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let app = Router::new().route("/", get(handler)); // no ContextLayer
/// let request = http::Request::get("/").body(axum::body::Body::empty())?;
/// let response = app.oneshot(request).await?;
/// assert_eq!(response.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
impl<S: Send + Sync> OptionalFromRequestParts<S> for Context {
    type Rejection = Infallible;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Option<Context>, Infallible>> + Send {
        core::future::ready(Ok(parts.extensions.get::<Context>().cloned()))
    }
}

/// The rejection of the [`Context`] extractor: the request has no context because
/// [`ContextLayer`](crate::tower::ContextLayer) is not installed on the router (or is
/// installed with `route_layer` on other routes only).
///
/// As a response it is `500 Internal Server Error` with its `Display` text: the server is
/// misconfigured, the client did nothing wrong.
///
/// ```
/// use axum_core::response::IntoResponse;
/// use cancelctx::axum::MissingContextLayer;
///
/// let response = MissingContextLayer.into_response();
/// assert_eq!(response.status(), 500);
/// assert!(MissingContextLayer.to_string().contains("ContextLayer"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MissingContextLayer;

impl MissingContextLayer {
    const MESSAGE: &'static str = "this request has no cancelctx::Context: \
        add cancelctx::tower::ContextLayer to the router (Router::layer) to extract one";
}

impl fmt::Display for MissingContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MissingContextLayer::MESSAGE)
    }
}

impl std::error::Error for MissingContextLayer {}

impl IntoResponse for MissingContextLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, MissingContextLayer::MESSAGE).into_response()
    }
}
