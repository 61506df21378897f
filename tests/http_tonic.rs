//! Interop with tonic's own client and server, both ways (feature `tower`). The gRPC service
//! and codec are written by hand (bytes in, bytes out), so no protoc is needed.
#![cfg(feature = "tower")]

mod http_support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use cancelctx::http::{inject_deadline, ClientDisconnected};
use cancelctx::tower::{ContextLayer, PropagateLayer};
use cancelctx::{Context, Error, ManualClock};
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use http_support::*;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Messages are raw bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

const PATH: &str = "/test.Echo/Call";

/// What the handler saw: its request's context (if a `ContextLayer` put one there) and the
/// `grpc-timeout` header.
#[derive(Debug)]
struct Seen {
    ctx: Option<Context>,
    header: Option<String>,
}

/// `test.Echo/Call`: reports what it saw; the message `stuck` never gets an answer (and sets
/// `dropped` when its future is dropped).
#[derive(Clone)]
struct Echo {
    seen: mpsc::UnboundedSender<Seen>,
    dropped: Arc<AtomicBool>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(Status::unimplemented("").into_http());
            }
            Ok(tonic::server::Grpc::new(RawCodec).unary(this, req).await)
        })
    }
}

impl tonic::server::UnaryService<Vec<u8>> for Echo {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let ctx = request.extensions().get::<Context>().cloned();
        let header = request.metadata().get("grpc-timeout").map(|v| v.to_str().unwrap().to_owned());
        let stuck = request.get_ref() == b"stuck";
        self.seen.send(Seen { ctx, header }).unwrap();
        let flag = DropFlag(self.dropped.clone());
        Box::pin(async move {
            let _flag = flag;
            if stuck {
                std::future::pending::<()>().await;
            }
            Ok(tonic::Response::new(b"ok".to_vec()))
        })
    }
}

fn echo() -> (Echo, mpsc::UnboundedReceiver<Seen>, Arc<AtomicBool>) {
    let (seen, rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    (Echo { seen, dropped: dropped.clone() }, rx, dropped)
}

/// tonic's `Routes` served on hyper behind `ContextLayer`: the set-up that answers
/// DEADLINE_EXCEEDED (see the `tower` module docs).
async fn serve_routes(layer: ContextLayer, svc: Echo) -> Server {
    let routes = tonic::service::Routes::new(svc);
    serve_service(tower::ServiceBuilder::new().layer(layer).service(routes)).await
}

async fn channel(server: &Server) -> tonic::transport::Channel {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    within("connect", endpoint.connect()).await.unwrap()
}

async fn call<T>(
    client: &mut tonic::client::Grpc<T>,
    request: tonic::Request<Vec<u8>>,
) -> Result<Vec<u8>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    client.ready().await.map_err(|e| Status::unknown(e.into().to_string()))?;
    let response = client.unary(request, PathAndQuery::from_static(PATH), RawCodec).await?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn a_tonic_clients_set_timeout_is_the_handlers_deadline_within_one_unit() {
    let clock = ManualClock::new();
    let (svc, mut seen, _) = echo();
    let server = serve_routes(ContextLayer::new(Context::with_clock(clock.clone())), svc).await;
    let mut client = tonic::client::Grpc::new(channel(&server).await);

    // tonic truncates to the unit (the first sends 90000000u), so the deadline may be up to
    // one unit shorter than asked; grpc-go and `encode_grpc_timeout` round up instead. tonic's
    // client also enforces the timeout on real time: all of these are long.
    for timeout in
        [Duration::new(90, 700), Duration::new(1_000, 123_456), Duration::new(200_000, 5)]
    {
        let mut request = tonic::Request::new(b"hi".to_vec());
        request.set_timeout(timeout);
        assert_eq!(within("call", call(&mut client, request)).await.unwrap(), b"ok");
        let Seen { ctx, header } = seen.recv().await.unwrap();
        let header = header.unwrap();
        let unit = match header.as_bytes().last().unwrap() {
            b'n' => Duration::from_nanos(1),
            b'u' => Duration::from_micros(1),
            b'm' => Duration::from_millis(1),
            b'S' => Duration::from_secs(1),
            other => panic!("unexpected unit {other} in {header}"),
        };
        let ctx = ctx.expect("the layer's context reaches tonic's handler");
        let deadline = ctx.deadline().unwrap().saturating_duration_since(clock.now());
        assert!(
            deadline.abs_diff(timeout) < unit,
            "{timeout:?} sent as {header}, deadline in {deadline:?}"
        );
    }
}

#[tokio::test]
async fn a_grpc_call_past_its_deadline_gets_deadline_exceeded() {
    let clock = ManualClock::new();
    let (svc, mut seen, dropped) = echo();
    let server = serve_routes(ContextLayer::new(Context::with_clock(clock.clone())), svc).await;
    let mut client = tonic::client::Grpc::new(channel(&server).await);

    // tonic's client enforces the timeout too, on real time: a long one, so that the
    // server's (on the manual clock, advanced below) is the one that fires.
    let mut request = tonic::Request::new(b"stuck".to_vec());
    request.set_timeout(Duration::from_secs(600));
    let pending = tokio::spawn(async move { call(&mut client, request).await });
    let ctx = within("handler start", seen.recv()).await.unwrap().ctx.unwrap();
    clock.advance(Duration::from_secs(600));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));

    let status = within("status", pending).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "context deadline exceeded");
    assert!(dropped.load(Ordering::SeqCst));
}

/// tonic's own `Server` takes the header `inject_deadline` writes as its request timeout,
/// and (its quirk) answers CANCELLED when it runs out.
#[tokio::test]
async fn tonics_server_accepts_the_header_inject_deadline_writes() {
    let (svc, mut seen, dropped) = echo();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming),
    );

    // A deadline on a manual clock that never moves: only tonic's own timer (real time) can
    // end this call, so an answer proves tonic read the header.
    let clock = ManualClock::new();
    let (ctx, _guard) = Context::with_clock(clock).with_timeout(Duration::from_millis(100));
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    inject_deadline(&ctx, req.headers_mut().unwrap()).unwrap();
    assert_eq!(req.headers_ref().unwrap()["grpc-timeout"], "100000u");
    // One gRPC message: uncompressed, 5 bytes, "stuck".
    let mut frame = vec![0u8];
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(b"stuck");
    let req = req.body(text(String::from_utf8(frame).unwrap())).unwrap();

    let mut client = Http2::connect(addr).await;
    let response = within("response", client.sender.send_request(req)).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = within("trailers", body.collect()).await.unwrap().trailers().cloned();
    // Trailers-only or trailers: tonic answers in either.
    let status =
        trailers.as_ref().and_then(|t| t.get("grpc-status")).or(parts.headers.get("grpc-status"));
    assert_eq!(status.unwrap(), "1", "tonic's Server answers CANCELLED, not DEADLINE_EXCEEDED");
    // The handler normally runs before tonic's 100 ms are up (on a badly overloaded machine
    // the timeout may win the race before the message is decoded); when it did, it saw the
    // header and its future was dropped by tonic's timeout.
    if let Ok(handler) = seen.try_recv() {
        assert_eq!(handler.header.as_deref(), Some("100000u"), "tonic passes the header on");
        assert!(dropped.load(Ordering::SeqCst));
    }
    server.abort();
}

/// `PropagateLayer` on tonic's `Channel`: the context's deadline reaches the server, and a
/// cancel abandons the call and ends the server's request context.
#[tokio::test]
async fn propagate_layer_on_a_tonic_channel() {
    let clock = ManualClock::new();
    let root = Context::with_clock(clock.clone());
    let (svc, mut seen, dropped) = echo();
    let server = serve_routes(ContextLayer::new(root.clone()), svc).await;
    let stack =
        tower::ServiceBuilder::new().layer(PropagateLayer::new()).service(channel(&server).await);
    let mut client = tonic::client::Grpc::new(stack);

    // tonic's Channel enforces the header on real time too: a long deadline.
    let (ctx, guard) = root.with_timeout(Duration::from_secs(600));
    let mut request = tonic::Request::new(b"hi".to_vec());
    request.extensions_mut().insert(ctx.clone());
    assert_eq!(within("call", call(&mut client, request)).await.unwrap(), b"ok");
    let Seen { ctx: remote, header } = seen.recv().await.unwrap();
    assert_eq!(header.as_deref(), Some("600000m"));
    assert_eq!(remote.unwrap().remaining(), Some(Duration::from_secs(600)));

    let mut request = tonic::Request::new(b"stuck".to_vec());
    request.extensions_mut().insert(ctx.clone());
    let pending = tokio::spawn(async move { call(&mut client, request).await });
    let remote = within("handler start", seen.recv()).await.unwrap().ctx.unwrap();
    guard.cancel();
    let status = within("abandoned", pending).await.unwrap().unwrap_err();
    assert!(status.message().contains(&Error::Canceled.to_string()), "{status:?}");
    within("remote end", remote.done()).await;
    assert!(remote.cause().unwrap().is::<ClientDisconnected>());
    assert!(dropped.load(Ordering::SeqCst));
}
