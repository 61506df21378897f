//! A deadline and a cancel crossing three hops on loopback: client → service A → service B,
//! over HTTP/2 (hyper 1), with `ContextLayer` on each server and `PropagateLayer` on each
//! client.
//!
//! ```sh
//! cargo run --example http_chain --features tower
//! ```
//!
//! 1. The client calls with a 300 ms timeout. A and B each print the deadline they received
//!    (a little less at each hop); B's work would take longer, so the client's timeout ends
//!    the call at all three.
//! 2. The client calls with a 10 s timeout and cancels while B is working: the cancel
//!    reaches B as the end of its request (cause: client disconnected).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cancelctx::tower::{BoxError, ContextLayer, PropagateLayer, PropagateService};
use cancelctx::Context;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn body(text: String) -> Body {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync()
}

/// An HTTP/2 client that sends each request's context along.
fn client() -> PropagateService<Client<HttpConnector, Body>> {
    let http = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Body>();
    ServiceBuilder::new().layer(PropagateLayer::new()).service(http)
}

fn describe(ctx: &Context) -> String {
    match (ctx.err(), ctx.cause()) {
        (Some(err), Some(cause)) if cause.to_string() != err.to_string() => {
            format!("{err} (cause: {cause})")
        }
        (Some(err), _) => err.to_string(),
        (None, _) => "live".to_owned(),
    }
}

fn received(hop: &str, req: &http::Request<hyper::body::Incoming>, ctx: &Context) {
    let header = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).unwrap_or("-");
    println!("  {hop}: grpc-timeout {header:>9} -> deadline in {:?}", ctx.remaining().unwrap());
}

/// Serves `handler` behind a `ContextLayer` on a fresh loopback port.
async fn serve<H, F>(handler: H) -> SocketAddr
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(Context::background()).timeout(Duration::from_secs(30)))
        .service_fn(move |req| {
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let start = Instant::now();
    // B reports when it starts working and how its request's context ended.
    let (b_events, mut b_rx) = mpsc::unbounded_channel::<String>();

    // Service B: "works" until its request's context ends.
    let b = serve(move |req| {
        let ctx = req.extensions().get::<Context>().unwrap().clone();
        received("B", &req, &ctx);
        let events = b_events.clone();
        async move {
            events.send("started".to_owned()).unwrap();
            // Watch the context from a task of its own, as real work would: this handler's
            // future is dropped when the request ends.
            tokio::spawn(async move {
                ctx.done().await;
                events.send(describe(&ctx)).unwrap();
            });
            std::future::pending().await
        }
    })
    .await;

    // Service A: calls B with its request's context.
    let a = serve(move |req| {
        let ctx = req.extensions().get::<Context>().unwrap().clone();
        received("A", &req, &ctx);
        let mut to_b = client();
        async move {
            let mut call =
                http::Request::get(format!("http://{b}/")).body(body(String::new())).unwrap();
            call.extensions_mut().insert(ctx.clone());
            let outcome = match to_b.ready().await.unwrap().call(call).await {
                Ok(response) => format!("B answered {}", response.status()),
                Err(e) => format!("call to B failed: {e}"),
            };
            println!("  A: {outcome}; A's context: {}", describe(&ctx));
            http::Response::new(body(outcome))
        }
    })
    .await;

    let mut to_a = client();
    let call_a = |ctx: &Context| {
        let mut req = http::Request::get(format!("http://{a}/")).body(body(String::new())).unwrap();
        req.extensions_mut().insert(ctx.clone());
        req
    };

    println!("1. client timeout 300 ms, B needs longer:");
    let (ctx, _guard) = Context::background().with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let result = to_a.ready().await.unwrap().call(call_a(&ctx)).await;
    match result {
        Ok(response) => {
            println!("  client: A answered {} after {:?}", response.status(), t.elapsed())
        }
        Err(e) => println!("  client: call failed after {:?}: {e}", t.elapsed()),
    }
    // On a very slow machine the 300 ms may run out before the request reaches B.
    match tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await {
        Ok(Some(started)) => {
            assert_eq!(started, "started");
            let b_end = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await;
            println!(
                "  B's context: {}",
                b_end.expect("B's request ends with the client's").unwrap()
            );
        }
        _ => println!("  B: never reached (the deadline passed on the way)"),
    }
    println!("2. client timeout 10 s, cancelled while B works:");
    let (ctx, guard) = Context::background().with_timeout(Duration::from_secs(10));
    let call = tokio::spawn(to_a.ready().await.unwrap().call(call_a(&ctx)));
    let started = tokio::time::timeout(Duration::from_secs(15), b_rx.recv()).await;
    assert_eq!(started.expect("B is reached").as_deref(), Some("started"));
    println!("  client: cancel");
    guard.cancel();
    match call.await.unwrap() {
        Ok(response) => println!("  client: A answered {}", response.status()),
        Err(e) => println!("  client: call abandoned: {e}"),
    }
    let b_end = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await;
    println!("  B's context: {}", b_end.expect("the cancel reaches B").unwrap());
    println!("done in {:?}", start.elapsed());
}
