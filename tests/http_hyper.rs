//! `ContextLayer` and `PropagateLayer` on real hyper 1 servers and clients over loopback
//! (feature `tower`). Deadlines run on a `ManualClock`: every expiry here is an `advance`,
//! never a sleep; the 30 s bounds only turn a hang into a failure.
#![cfg(feature = "tower")]

mod http_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cancelctx::http::ClientDisconnected;
use cancelctx::tower::{ContextLayer, PropagateLayer};
use cancelctx::{Context, Error, ManualClock};
use http_body_util::BodyExt;
use http_support::*;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

/// A handler that hands its request's context to the test and then never answers (until its
/// future is dropped, which `dropped` records).
fn stuck_handler(
    contexts: mpsc::UnboundedSender<Context>,
    dropped: Arc<AtomicBool>,
) -> impl Fn(
    http::Request<hyper::body::Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<TestBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |req| {
        let ctx = req.extensions().get::<Context>().expect("ContextLayer sets the context").clone();
        let contexts = contexts.clone();
        let flag = DropFlag(dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            contexts.send(ctx).unwrap();
            std::future::pending::<http::Response<TestBody>>().await
        })
    }
}

fn assert_client_disconnected(ctx: &Context) {
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let cause = ctx.cause().unwrap();
    assert!(cause.is::<ClientDisconnected>(), "cause: {cause}");
}

fn assert_plain_cancel(ctx: &Context) {
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let cause = ctx.cause().unwrap();
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled), "cause: {cause}");
}

#[tokio::test]
async fn the_handler_sees_the_earlier_of_the_layer_timeout_and_grpc_timeout() {
    let clock = ManualClock::new();
    let layer =
        ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(10));
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let server = serve(layer, move |req| {
        let ctx = req.extensions().get::<Context>().unwrap().clone();
        tx.send(ctx.clone()).unwrap();
        async move { http::Response::new(text(format!("{:?}", ctx.remaining()))) }
    })
    .await;
    let mut client = Http1::connect(server.addr).await;

    for (header, expected) in
        [(None, "Some(10s)"), (Some("3S"), "Some(3s)"), (Some("1M"), "Some(10s)")]
    {
        let headers: Vec<_> = header.map(|h| ("grpc-timeout", h)).into_iter().collect();
        let response =
            within("response", client.sender.send_request(request("/", &headers))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body_text(response.into_body()).await, expected);
        // The response is complete: its context ended, plainly.
        let ctx = contexts.recv().await.unwrap();
        within("context end", ctx.done()).await;
        assert_plain_cancel(&ctx);
    }
}

#[tokio::test]
async fn an_http1_client_that_disconnects_cancels_with_client_disconnected() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let server = serve(ContextLayer::new(root.clone()), stuck_handler(tx, dropped.clone())).await;

    let mut client = Http1::connect(server.addr).await;
    let call = tokio::spawn(client.sender.send_request(request("/", &[])));
    let ctx = within("handler start", contexts.recv()).await.unwrap();
    assert_eq!(ctx.err(), None);

    client.close();
    call.abort();
    within("disconnect seen", ctx.done()).await;
    assert_client_disconnected(&ctx);
    assert!(dropped.load(Ordering::SeqCst), "the handler's future was dropped");
    assert_eq!(root.err(), None, "only that request ended");
}

#[tokio::test]
async fn an_http2_stream_reset_cancels_only_that_request() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let server = serve(ContextLayer::new(root), stuck_handler(tx, Arc::default())).await;
    let mut client = Http2::connect(server.addr).await;

    let first = tokio::spawn(client.sender.send_request(request("/", &[])));
    let second = tokio::spawn(client.sender.send_request(request("/", &[])));
    let a = within("handler start", contexts.recv()).await.unwrap();
    let b = within("handler start", contexts.recv()).await.unwrap();

    // Dropping the response future resets its stream; the connection stays up.
    first.abort();
    let _ = first.await;
    let (reset, live) = within("one reset", async {
        tokio::select! {
            _ = a.done() => (&a, &b),
            _ = b.done() => (&b, &a),
        }
    })
    .await;
    assert_client_disconnected(reset);
    assert_eq!(live.err(), None);
    second.abort();
    let _ = second.await;
    within("second reset", live.done()).await;
    assert_client_disconnected(live);
}

#[tokio::test]
async fn a_slow_handler_gets_504_at_the_deadline() {
    let clock = ManualClock::new();
    let layer =
        ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(10));
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let server = serve(layer, stuck_handler(tx, dropped.clone())).await;
    let mut client = Http1::connect(server.addr).await;

    let call = tokio::spawn(client.sender.send_request(request("/", &[])));
    let ctx = within("handler start", contexts.recv()).await.unwrap();
    clock.advance(Duration::from_secs(9));
    assert_eq!(ctx.err(), None);
    assert!(!call.is_finished());
    clock.advance(Duration::from_secs(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));

    let response = within("504", call).await.unwrap().unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body_text(response.into_body()).await, "context deadline exceeded");
    assert!(dropped.load(Ordering::SeqCst), "the handler's future was dropped at the deadline");
}

#[tokio::test]
async fn a_grpc_call_past_its_deadline_gets_trailers_only_status_4() {
    let clock = ManualClock::new();
    let layer =
        ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(60));
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let server = serve(layer, stuck_handler(tx, Arc::default())).await;
    let mut client = Http2::connect(server.addr).await;

    let headers =
        [("content-type", "application/grpc+proto"), ("grpc-timeout", "2S"), ("te", "trailers")];
    let call = tokio::spawn(client.sender.send_request(request("/pkg.Svc/Method", &headers)));
    let ctx = within("handler start", contexts.recv()).await.unwrap();
    clock.advance(Duration::from_secs(2));

    let response = within("response", call).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "4");
    assert_eq!(response.headers()["grpc-message"], "context deadline exceeded");
    // Trailers-only: the HEADERS frame ends the stream; no data, no trailers.
    let collected = within("end", response.into_body().collect()).await.unwrap();
    assert!(collected.trailers().is_none());
    assert!(collected.to_bytes().is_empty());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test]
async fn cancelling_the_root_stops_every_request_in_flight() {
    #[derive(Debug)]
    struct Shutdown;
    impl std::fmt::Display for Shutdown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("shutdown")
        }
    }
    impl std::error::Error for Shutdown {}

    let (root, shutdown) = Context::with_clock(ManualClock::new()).with_cancel();
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));
    let counted = {
        let (handler, handled) = (stuck_handler(tx, dropped.clone()), handled.clone());
        move |req| {
            handled.fetch_add(1, Ordering::SeqCst);
            handler(req)
        }
    };
    let server = serve(ContextLayer::new(root), counted).await;
    let mut client = Http2::connect(server.addr).await;
    let grpc = [("content-type", "application/grpc")];
    let calls: Vec<_> = [&[][..], &[][..], &grpc[..]]
        .into_iter()
        .map(|headers| tokio::spawn(client.sender.send_request(request("/", headers))))
        .collect();
    let mut ctxs = Vec::new();
    for _ in 0..3 {
        ctxs.push(within("handler start", contexts.recv()).await.unwrap());
    }

    shutdown.cancel_with(Shutdown);
    for ctx in &ctxs {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert!(ctx.cause().unwrap().is::<Shutdown>(), "the root's cause, not a disconnect");
    }
    let mut statuses = Vec::new();
    for call in calls {
        let response = within("response", call).await.unwrap().unwrap();
        statuses.push((response.status().as_u16(), response.headers().get("grpc-status").cloned()));
    }
    assert_eq!(statuses[0], (503, None));
    assert_eq!(statuses[1], (503, None));
    assert_eq!(statuses[2], (200, Some(http::HeaderValue::from_static("14"))));
    assert!(dropped.load(Ordering::SeqCst));

    // A request that arrives after the root is cancelled never reaches the handler.
    let response = within("late", client.sender.send_request(request("/", &[]))).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_streaming_body_keeps_the_context_alive_until_it_ends() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let (chunks_tx, chunks_rx) = futures::channel::mpsc::unbounded::<
        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >();
    let chunks_rx = Arc::new(std::sync::Mutex::new(Some(chunks_rx)));
    let server = serve(ContextLayer::new(root), move |req| {
        tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
        let rx = chunks_rx.lock().unwrap().take().expect("one request");
        async move { http::Response::new(http_body_util::StreamBody::new(rx).boxed_unsync()) }
    })
    .await;
    let mut client = Http1::connect(server.addr).await;

    let response = within("headers", client.sender.send_request(request("/", &[]))).await.unwrap();
    let ctx = contexts.recv().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(ctx.err(), None, "the headers are sent, the response is not complete");

    let mut body = response.into_body();
    chunks_tx.unbounded_send(Ok(http_body::Frame::data(Bytes::from_static(b"one")))).unwrap();
    let frame = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "one");
    assert_eq!(ctx.err(), None, "still streaming");

    drop(chunks_tx); // the body ends
    assert!(within("end", body.frame()).await.is_none());
    within("context end", ctx.done()).await;
    assert_plain_cancel(&ctx);
}

#[tokio::test]
async fn a_streaming_body_dropped_mid_stream_ends_the_context() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, mut contexts) = mpsc::unbounded_channel();
    let server = serve(ContextLayer::new(root), move |req| {
        tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
        let never =
            futures::stream::pending::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>();
        async move { http::Response::new(http_body_util::StreamBody::new(never).boxed_unsync()) }
    })
    .await;
    let mut client = Http1::connect(server.addr).await;
    let response = within("headers", client.sender.send_request(request("/", &[]))).await.unwrap();
    let ctx = contexts.recv().await.unwrap();
    assert_eq!(ctx.err(), None);
    drop(response);
    client.close(); // hyper drops the body with the connection
    within("context end", ctx.done()).await;
    assert_plain_cancel(&ctx);
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_refused_before_the_handler() {
    let clock = ManualClock::new();
    let layer =
        ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(10));
    let handled = Arc::new(AtomicUsize::new(0));
    let server = serve(layer, {
        let handled = handled.clone();
        move |_req| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { http::Response::new(empty()) }
        }
    })
    .await;
    let mut client = Http2::connect(server.addr).await;

    for bad in ["1.5S", "", "-1S", "123456789S", "10", "5s"] {
        let response = client.sender.send_request(request("/", &[("grpc-timeout", bad)]));
        let response = within("400", response).await.unwrap();
        assert_eq!(response.status(), 400, "{bad:?}");
        let text = body_text(response.into_body()).await;
        assert!(text.starts_with("malformed grpc-timeout: "), "{bad:?}: {text}");

        let headers = [("grpc-timeout", bad), ("content-type", "application/grpc")];
        let response =
            within("grpc", client.sender.send_request(request("/", &headers))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "13", "{bad:?}");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.starts_with("malformed grpc-timeout: "), "{message}");
    }
    // Zero: the deadline has passed; answered at once, not served without a deadline.
    let response = within("0", client.sender.send_request(request("/", &[("grpc-timeout", "0m")])))
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    let response =
        within("ok", client.sender.send_request(request("/", &[("grpc-timeout", "1S")])))
            .await
            .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_grpc_timeout_on_an_unclocked_root_is_a_server_error() {
    let server = serve(ContextLayer::new(Context::unclocked()), |_req| async {
        http::Response::new(text("served"))
    })
    .await;
    let mut client = Http1::connect(server.addr).await;
    let response =
        within("500", client.sender.send_request(request("/", &[("grpc-timeout", "1S")])))
            .await
            .unwrap();
    assert_eq!(response.status(), 500);
    assert!(body_text(response.into_body()).await.contains("no clock"));
    let response = within("200", client.sender.send_request(request("/", &[]))).await.unwrap();
    assert_eq!(body_text(response.into_body()).await, "served");
}

/// A hyper-util client under `PropagateLayer`, talking HTTP/2 to a `ContextLayer` server
/// that shares the test's `ManualClock`.
#[tokio::test]
async fn propagate_layer_carries_the_deadline_and_the_cancel() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (tx, mut contexts) = mpsc::unbounded_channel::<Context>();
    let server = serve(ContextLayer::new(root.clone()), move |req| {
        let ctx = req.extensions().get::<Context>().unwrap().clone();
        let header = req.headers().get("grpc-timeout").map(|v| v.to_str().unwrap().to_owned());
        tx.send(ctx.clone()).unwrap();
        async move {
            if req.uri().path() == "/stuck" {
                std::future::pending::<()>().await;
            }
            http::Response::new(text(format!("{header:?} {:?}", ctx.remaining())))
        }
    })
    .await;

    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<TestBody>();
    let mut client = tower::ServiceBuilder::new().layer(PropagateLayer::new()).service(http_client);
    let url = |path: &str| format!("http://{}{path}", server.addr);

    // The deadline crosses.
    let (ctx, guard) = root.with_timeout(Duration::from_secs(5));
    let mut req = request(&url("/"), &[]);
    req.extensions_mut().insert(ctx.clone());
    let response = within("call", client.ready().await.unwrap().call(req)).await.unwrap();
    assert_eq!(body_text(response.into_body()).await, "Some(\"5000000u\") Some(5s)");
    contexts.recv().await.unwrap();

    // The cancel crosses: the call is abandoned and the server sees its client go away.
    let mut req = request(&url("/stuck"), &[]);
    req.extensions_mut().insert(ctx.clone());
    let call = tokio::spawn(client.ready().await.unwrap().call(req));
    let remote = within("handler start", contexts.recv()).await.unwrap();
    guard.cancel();
    let err = within("abandoned", call).await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    within("remote end", remote.done()).await;
    assert_client_disconnected(&remote);

    // A done context fails fast: nothing is sent.
    let mut req = request(&url("/"), &[]);
    req.extensions_mut().insert(ctx.clone());
    let err = client.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(contexts.try_recv().is_err(), "the server saw no request");

    // No context: untouched.
    let req = request(&url("/"), &[("grpc-timeout", "7S")]);
    let response = within("plain", client.ready().await.unwrap().call(req)).await.unwrap();
    assert_eq!(body_text(response.into_body()).await, "Some(\"7S\") Some(7s)");
}

static_assertions::assert_impl_all!(ContextLayer: Clone, Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(PropagateLayer: Clone, Copy, Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::ContextService<()>: Clone, Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::PropagateService<()>: Clone, Send, Sync, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::ContextFuture<std::future::Ready<()>>: Send, Sync, Unpin, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::ContextBody<String>: Send, Sync, Unpin, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::PropagateFuture<std::future::Ready<()>>: Send, Sync, Unpin, std::fmt::Debug);
static_assertions::assert_impl_all!(cancelctx::tower::PropagateBody<String>: Send, Sync, Unpin, std::fmt::Debug);

/// A response body still streaming when the client's context ends fails with its error, and
/// the server sees its body dropped.
#[tokio::test]
async fn propagate_layer_abandons_a_streaming_response_body() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, mut contexts) = mpsc::unbounded_channel::<Context>();
    let server = serve(ContextLayer::new(root.clone()), move |req| {
        tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
        let first =
            futures::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(b"first")))]);
        let body = futures::StreamExt::chain(first, futures::stream::pending());
        async move { http::Response::new(http_body_util::StreamBody::new(body).boxed_unsync()) }
    })
    .await;
    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<TestBody>();
    let mut client = tower::ServiceBuilder::new().layer(PropagateLayer::new()).service(http_client);

    let (ctx, guard) = root.with_cancel();
    let mut req = request(&format!("http://{}/", server.addr), &[]);
    req.extensions_mut().insert(ctx);
    let response = within("headers", client.ready().await.unwrap().call(req)).await.unwrap();
    let remote = contexts.recv().await.unwrap();
    let mut body = response.into_body();
    let first = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");

    let next = tokio::spawn(async move {
        let next = body.frame().await;
        (next.map(|r| r.map(|_| ())), body)
    });
    guard.cancel();
    let (next, body) = within("abandoned", next).await.unwrap();
    let err = next.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(http_body::Body::is_end_stream(&body));
    drop(body); // resets the stream
    within("remote end", remote.done()).await;
    assert_plain_cancel(&remote);
}

/// Without a network: a `grpc-timeout` the request already carries (tonic's
/// `Request::set_timeout` writes one) is kept when it is earlier than the context's.
#[tokio::test]
async fn propagate_layer_keeps_an_earlier_grpc_timeout() {
    let clock = ManualClock::new();
    let (ctx, _guard) = Context::with_clock(clock).with_timeout(Duration::from_secs(10));
    let mut svc = tower::ServiceBuilder::new().layer(PropagateLayer::new()).service_fn(
        |req: http::Request<()>| async move {
            let header = req
                .headers()
                .get_all("grpc-timeout")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, std::convert::Infallible>(http::Response::new(
                header.collect::<Vec<_>>().join(","),
            ))
        },
    );
    for (existing, sent) in [
        (None, "10000000u"),
        (Some("2S"), "2S"),
        (Some("1M"), "10000000u"),
        (Some("2 S"), "10000000u"),
    ] {
        let mut req = http::Request::new(());
        if let Some(value) = existing {
            req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static(value));
        }
        req.extensions_mut().insert(ctx.clone());
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.into_body().into_inner(), sent, "{existing:?}");
    }
    // A context without a deadline leaves the request's own header alone.
    let mut req = http::Request::new(());
    req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("3S"));
    req.extensions_mut().insert(Context::background());
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(response.into_body().into_inner(), "3S");
}

/// Without a network: a response that is ready when the deadline has also passed is served
/// (the layer polls the handler first), and one that is not gets the 504.
#[tokio::test]
async fn a_response_ready_at_the_deadline_is_still_served() {
    let clock = ManualClock::new();
    let layer =
        ContextLayer::new(Context::with_clock(clock.clone())).timeout(Duration::from_secs(1));
    let (answer_tx, answer_rx) = futures::channel::oneshot::channel::<()>();
    let answer_rx = Arc::new(std::sync::Mutex::new(Some(answer_rx)));
    let mut svc =
        tower::ServiceBuilder::new().layer(layer).service_fn(move |_req: http::Request<()>| {
            let rx = answer_rx.lock().unwrap().take();
            async move {
                match rx {
                    Some(rx) => rx.await.unwrap(),
                    None => std::future::pending().await,
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(String::from("served")))
            }
        });

    let mut ready_in_time = std::pin::pin!(svc.ready().await.unwrap().call(http::Request::new(())));
    let mut too_late = std::pin::pin!(svc.ready().await.unwrap().call(http::Request::new(())));
    assert!(futures::poll!(ready_in_time.as_mut()).is_pending());
    assert!(futures::poll!(too_late.as_mut()).is_pending());
    answer_tx.send(()).unwrap();
    clock.advance(Duration::from_secs(1));

    let std::task::Poll::Ready(Ok(response)) = futures::poll!(ready_in_time) else {
        panic!("not ready")
    };
    assert_eq!(response.status(), 200);
    let std::task::Poll::Ready(Ok(response)) = futures::poll!(too_late) else {
        panic!("not ready")
    };
    assert_eq!(response.status(), 504);
}

/// Without a network: a handler whose future panics did not lose its client. The request's
/// context ends without the [`ClientDisconnected`] cause, which marks exactly the requests
/// whose client went away. (Regression: the guard dropped while unwinding out of the
/// handler's poll used to report a disconnect.)
#[tokio::test]
async fn a_panicking_handler_is_not_a_client_disconnect() {
    let root = Context::with_clock(ManualClock::new());
    let (tx, rx) = std::sync::mpsc::channel::<Context>();
    let mut svc = tower::ServiceBuilder::new().layer(ContextLayer::new(root)).service_fn(
        move |req: http::Request<()>| {
            tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
            async move {
                if true {
                    panic!("a bug in the handler");
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }
        },
    );
    let call = svc.ready().await.unwrap().call(http::Request::new(()));
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(call)).await;
    assert!(result.is_err(), "the handler's panic reaches the server");
    let ctx = rx.recv().unwrap();
    assert_plain_cancel(&ctx);
}

/// Without a network: a response body that has ended is complete, even if the client's
/// context ends before the body is polled once more. (Regression: the next poll used to fail
/// with the context's error instead of returning the end.)
#[tokio::test]
async fn propagate_body_that_has_ended_stays_ended_when_the_context_ends() {
    let mut svc = tower::ServiceBuilder::new().layer(PropagateLayer::new()).service_fn(
        |_: http::Request<()>| async {
            let body = http_body_util::Full::new(Bytes::from_static(b"all of it"));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        },
    );
    for poll_the_end_first in [false, true] {
        let (ctx, guard) = Context::unclocked().with_cancel();
        let mut req = http::Request::new(());
        req.extensions_mut().insert(ctx);
        let mut body = svc.ready().await.unwrap().call(req).await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "all of it");
        assert!(http_body::Body::is_end_stream(&body));
        if poll_the_end_first {
            assert!(body.frame().await.is_none());
        }
        guard.cancel();
        assert!(body.frame().await.is_none(), "poll_the_end_first: {poll_the_end_first}");
    }
}
