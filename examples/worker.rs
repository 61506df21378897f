//! Go's worker pattern, and errgroup, with cancelctx.
//!
//! The Go original:
//!
//! ```go
//! func worker(ctx context.Context, wg *sync.WaitGroup, id int) {
//!     defer wg.Done()
//!     for {
//!         select {
//!         case <-ctx.Done():
//!             fmt.Println("worker", id, "stopping:", ctx.Err())
//!             return
//!         case <-time.After(100 * time.Millisecond):
//!             fmt.Println("worker", id, "tick")
//!         }
//!     }
//! }
//!
//! ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
//! defer cancel()
//! var wg sync.WaitGroup
//! for id := 1; id <= 3; id++ {
//!     wg.Add(1)
//!     go worker(ctx, &wg, id)
//! }
//! wg.Wait()
//! ```
//!
//! Run with `cargo run --example worker`.

use std::time::Duration;

use cancelctx::{Context, Group, WaitGroup, WaitGuard};

/// The async worker: `select { <-ctx.Done(); <-time.After(d) }` is one `ctx.sleep(d)`, and
/// `defer wg.Done()` is the guard dropped when the function returns.
async fn worker(ctx: Context, _done: WaitGuard, id: usize) {
    loop {
        match ctx.sleep(Duration::from_millis(100)).await {
            Ok(()) => println!("async worker {id}: tick"),
            Err(err) => {
                println!("async worker {id}: stopping: {err}");
                return;
            }
        }
    }
}

/// The same worker on a plain thread: `block_on` drives the sleep here.
fn thread_worker(ctx: Context, _done: WaitGuard, id: usize) {
    loop {
        match ctx.block_on(ctx.sleep(Duration::from_millis(100))) {
            Ok(Ok(())) => println!("thread worker {id}: tick"),
            Ok(Err(err)) | Err(err) => {
                println!("thread worker {id}: stopping: {err}");
                return;
            }
        }
    }
}

#[derive(Debug)]
struct FetchError(&'static str);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fetching {} failed", self.0)
    }
}

impl std::error::Error for FetchError {}

/// A stand-in for an HTTP GET bounded by `ctx`.
async fn fetch(ctx: Context, url: &'static str, latency_ms: u64) -> Result<(), FetchError> {
    match ctx.sleep(Duration::from_millis(latency_ms)).await {
        Ok(()) if url.contains("invalid") => Err(FetchError(url)),
        Ok(()) => {
            println!("fetched {url}");
            Ok(())
        }
        Err(err) => {
            println!("gave up on {url}: {err}");
            Ok(())
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Workers on tokio tasks and on threads, all stopped by one deadline.
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(350));
    let wg = WaitGroup::new();
    for id in 1..=3 {
        tokio::spawn(worker(ctx.clone(), wg.add(), id));
    }
    for id in 4..=5 {
        let (ctx, done) = (ctx.clone(), wg.add());
        std::thread::spawn(move || thread_worker(ctx, done, id));
    }
    wg.wait().await;
    println!("all workers stopped: {:?}\n", ctx.err());

    // errgroup.WithContext over URLs: the first failure cancels the rest.
    // (URL, simulated latency in ms)
    let urls = [
        ("http://www.golang.org/", 30),
        ("http://www.google.com/", 50),
        ("http://www.somestupidname.invalid/", 40),
        ("http://www.rust-lang.org/", 200),
    ];
    let group = Group::new(&Context::background());
    group.set_limit(Some(2)); // at most two fetches at once
    for (url, latency_ms) in urls {
        tokio::spawn(group.go(move |ctx| fetch(ctx, url, latency_ms)));
    }
    match group.wait().await {
        Ok(()) => println!("all fetched"),
        Err(err) => println!("first error: {err}"),
    }
}
