//! `Context` as an axum extractor (feature `axum`), on axum's `Router`.
#![cfg(feature = "axum")]

mod http_support;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use cancelctx::tower::ContextLayer;
use cancelctx::{Context, Error, ManualClock};
use http_support::{body_text, within};
use tokio::sync::mpsc;
use tower::ServiceExt;

fn get_root() -> http::Request<axum::body::Body> {
    http::Request::builder().uri("/").body(axum::body::Body::empty()).unwrap()
}

#[tokio::test]
async fn a_handler_takes_its_requests_context() {
    let clock = ManualClock::new();
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/",
            get(move |ctx: Context| async move {
                tx.send(ctx.clone()).unwrap();
                format!("{:?}", ctx.remaining())
            }),
        )
        .layer(ContextLayer::new(Context::with_clock(clock)).timeout(Duration::from_secs(5)));

    let response = within("response", app.oneshot(get_root())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response.into_body()).await, "Some(5s)");
    let ctx = contexts.recv().await.unwrap();
    assert_eq!(ctx.err(), Some(Error::Canceled), "the response is complete");
}

#[tokio::test]
async fn without_the_layer_the_extractor_answers_500_and_says_why() {
    let app = Router::new().route("/", get(|_ctx: Context| async { "unreachable" }));
    let response = within("response", app.oneshot(get_root())).await.unwrap();
    assert_eq!(response.status(), 500);
    let text = body_text(response.into_body()).await;
    assert!(text.contains("no cancelctx::Context") && text.contains("ContextLayer"), "{text}");
}

#[tokio::test]
async fn the_layer_answers_504_for_an_axum_handler_past_its_deadline() {
    let clock = ManualClock::new();
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/",
            get(move |ctx: Context| async move {
                tx.send(ctx).unwrap();
                std::future::pending::<&'static str>().await
            }),
        )
        .layer(
            ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(5)),
        );
    let call = tokio::spawn(app.oneshot(get_root()));
    let ctx = within("handler start", contexts.recv()).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let response = within("response", call).await.unwrap().unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

/// `Option<Context>`: the context behind the layer, `None` (not a rejection) without it.
#[tokio::test]
async fn an_optional_context_is_none_without_the_layer() {
    async fn handler(ctx: Option<Context>) -> String {
        format!("{:?}", ctx.map(|ctx| ctx.is_done()))
    }
    let bare = Router::new().route("/", get(handler));
    let response = within("response", bare.oneshot(get_root())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response.into_body()).await, "None");

    let layered = Router::new()
        .route("/", get(handler))
        .layer(ContextLayer::new(Context::with_clock(ManualClock::new())));
    let response = within("response", layered.oneshot(get_root())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response.into_body()).await, "Some(false)");
}

static_assertions::assert_impl_all!(cancelctx::axum::MissingContextLayer: Send, Sync, Copy, std::fmt::Debug, std::error::Error);
