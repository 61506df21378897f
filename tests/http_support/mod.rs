//! Loopback servers and clients for the HTTP integration tests (`tests/http_*.rs`), each of
//! which includes this with `mod http_support;` and uses part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cancelctx::tower::ContextLayer;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The response body every test handler returns.
pub type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// Bounds a wait so that a hang fails the test instead of stalling CI; the bound never
/// decides a pass.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still waiting after 30 s"),
    }
}

/// A server on 127.0.0.1 (HTTP/1 and HTTP/2, hyper-util's `auto`), stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` behind `layer`.
pub async fn serve<H, F>(layer: ContextLayer, handler: H) -> Server
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<TestBody>> + Send + 'static,
{
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn(move |req| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    serve_service(svc).await
}

/// Serves any tower service that hyper can run.
pub async fn serve_service<S, B>(svc: S) -> Server
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// An HTTP/1 client connection; dropping it (or `close`) closes the socket.
pub struct Http1 {
    pub sender: hyper::client::conn::http1::SendRequest<TestBody>,
    conn: JoinHandle<()>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Http1 {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        Http1 {
            sender,
            conn: tokio::spawn(async move {
                let _ = conn.await;
            }),
        }
    }

    /// Closes the connection (the task owning the socket is dropped).
    pub fn close(self) {
        self.conn.abort();
    }
}

impl Drop for Http1 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// An HTTP/2 client connection.
pub struct Http2 {
    pub sender: hyper::client::conn::http2::SendRequest<TestBody>,
    conn: JoinHandle<()>,
}

impl Http2 {
    pub async fn connect(addr: SocketAddr) -> Http2 {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        Http2 {
            sender,
            conn: tokio::spawn(async move {
                let _ = conn.await;
            }),
        }
    }
}

impl Drop for Http2 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

pub fn empty() -> TestBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new().boxed_unsync()
}

pub fn text(s: impl Into<String>) -> TestBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(Bytes::from(s.into())).boxed_unsync()
}

/// A request to `path` with the given headers and no body.
pub fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<TestBody> {
    let mut builder = http::Request::builder().uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(empty()).unwrap()
}

/// The whole body as a string.
pub async fn body_text<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let bytes = within("body", body.collect()).await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Sets a flag when dropped: tells whether a handler's future was dropped.
pub struct DropFlag(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
