//! A context cancelled on Ctrl-C / SIGTERM: Go's `signal.NotifyContext` (feature `signal`,
//! unix and windows).
//!
//! Built on [`signal-hook`](https://docs.rs/signal-hook), chosen over `ctrlc` because it can
//! take back what it installs (`ctrlc` registers one handler for the life of the process and
//! cannot unregister it), handles SIGTERM as well as SIGINT on both platforms without a
//! feature switch, documents which of its functions are async-signal-safe, and is the
//! de-facto standard (tokio's and async-signal's unix signal support rest on its registry).
//!
//! How it works, once per process, on the first [`Context::with_signals`]:
//!
//! - For SIGINT and SIGTERM an action is registered with signal-hook. In the handler it only
//!   reads and sets atomics: if some context listens, it records the signal in `PENDING` and
//!   wakes the watcher; if none does, it runs the signal's default action (terminating the
//!   process, as if nothing had been installed).
//! - A `cancelctx-signal` thread (the watcher) waits for those wakes — on unix through a
//!   self-pipe written by signal-hook's async-signal-safe pipe action, on windows (where the
//!   runtime calls handlers on a thread of their own) by `unpark` — and cancels every
//!   listening context outside the handler, where taking locks and running callbacks is
//!   allowed.
//!
//! Dropping a [`SignalGuard`] unregisters its context. signal-hook cannot hand the process's
//! handler back to the operating system (its registry keeps its low-level handler installed),
//! so "unregistered" means: when no guard is left, a signal gets its default action again.
//!
//! One interplay to know: other users of signal-hook's registry in the same process (for
//! example `tokio::signal`) share that handler. While no guard is left, this crate's action
//! runs the default action (terminating the process) even if such a user also listens for
//! the signal. A program that handles Ctrl-C / SIGTERM elsewhere as well should keep a
//! guard for as long as it wants to survive them (or not use this module).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::context::{CancelGuard, Context};

/// A signal that ends a context made by [`Context::with_signals`].
///
/// ```
/// use cancelctx::Signal;
/// assert_eq!(Signal::Interrupt.name(), "SIGINT");
/// assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT: Ctrl-C in a terminal (on windows, the console's Ctrl-C event).
    Interrupt,
    /// SIGTERM: the polite "please stop" of `kill`, systemd, Docker and Kubernetes.
    Terminate,
}

impl Signal {
    const ALL: [Signal; 2] = [Signal::Interrupt, Signal::Terminate];

    /// The conventional name: `"SIGINT"` or `"SIGTERM"`.
    ///
    /// ```
    /// assert_eq!(cancelctx::Signal::Terminate.name(), "SIGTERM");
    /// ```
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The platform's signal number.
    ///
    /// ```
    /// # #[cfg(unix)]
    /// assert_eq!(cancelctx::Signal::Interrupt.number(), 2);
    /// ```
    #[must_use]
    pub fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Signal::Interrupt => 1,
            Signal::Terminate => 2,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The [`cause`](Context::cause) of a context ended by a signal: which one.
///
/// ```no_run
/// use cancelctx::{Context, SignalReceived};
///
/// let (ctx, _guard) = Context::background().with_signals()?;
/// ctx.wait();
/// if let Some(received) = ctx.cause().unwrap().downcast_ref::<SignalReceived>() {
///     eprintln!("shutting down: {received}"); // "shutting down: received SIGTERM"
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SignalReceived {
    signal: Signal,
}

impl SignalReceived {
    /// The signal that was received.
    ///
    /// ```no_run
    /// # let (ctx, _g) = cancelctx::Context::background().with_signals()?;
    /// # let received = *ctx.cause().unwrap().downcast_ref::<cancelctx::SignalReceived>().unwrap();
    /// let stop_now = received.signal() == cancelctx::Signal::Interrupt;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn signal(&self) -> Signal {
        self.signal
    }
}

impl fmt::Display for SignalReceived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "received {}", self.signal)
    }
}

impl core::error::Error for SignalReceived {}

/// Contexts listening; read by the signal handler (async-signal-safe: one atomic load).
static LISTENING: AtomicUsize = AtomicUsize::new(0);
/// Signals received and not yet handled by the watcher, as `Signal::bit`s.
static PENDING: AtomicU8 = AtomicU8::new(0);
/// The process-wide installation: `Err` if it failed (kept, so every call reports it).
static INSTALLED: OnceLock<Result<(), (io::ErrorKind, String)>> = OnceLock::new();
/// The listening contexts.
static LISTENERS: Mutex<Listeners> = Mutex::new(Listeners { next_id: 0, guards: Vec::new() });
/// The watcher thread, for the windows handler to unpark.
#[cfg(windows)]
static WATCHER: OnceLock<std::thread::Thread> = OnceLock::new();

struct Listeners {
    next_id: u64,
    guards: Vec<(u64, Arc<CancelGuard>)>,
}

fn listeners() -> MutexGuard<'static, Listeners> {
    // Nothing panics while holding it; the list is consistent even if poisoned.
    LISTENERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cancels every listener for each pending signal, outside the lock (callbacks may register
/// or drop listeners). Panicking callbacks are contained: the watcher lives on.
fn deliver() {
    // memory ordering: SeqCst, as the handler's `fetch_or`; a bit set after this swap comes
    // with its own wake, so none is lost.
    let bits = PENDING.swap(0, Ordering::SeqCst);
    for signal in Signal::ALL {
        if bits & signal.bit() == 0 {
            continue;
        }
        let guards: Vec<Arc<CancelGuard>> =
            listeners().guards.iter().map(|(_, guard)| guard.clone()).collect();
        for guard in guards {
            let cancel = || guard.cancel_with(SignalReceived { signal });
            // A panicking `after_func` of a listener: the cancel itself has completed.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cancel));
        }
    }
}

/// The part that runs inside the signal handler: atomics only (async-signal-safe).
fn on_signal(signal: Signal) {
    // memory ordering: SeqCst; `LISTENING` changes under the listeners' lock, and the
    // handler only needs some recent value: with no listener the process gets the default
    // action it would get without this crate.
    if LISTENING.load(Ordering::SeqCst) == 0 {
        let _ = signal_hook::low_level::emulate_default_handler(signal.number());
        return;
    }
    PENDING.fetch_or(signal.bit(), Ordering::SeqCst);
    // Windows runs console handlers on a thread of their own: unparking is allowed there.
    #[cfg(windows)]
    if let Some(thread) = WATCHER.get() {
        thread.unpark();
    }
    // On unix the self-pipe action registered after this one wakes the watcher.
}

/// Registers the handlers, then starts the watcher. Until `with_signals` returns, nobody
/// listens, so a signal in between gets its default action.
fn install() -> Result<(), (io::ErrorKind, String)> {
    let fail = |what: &str, e: io::Error| (e.kind(), format!("{what}: {e}"));
    #[cfg(unix)]
    let (mut reader, writer) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| fail("creating the signal self-pipe", e))?;
    #[cfg(unix)]
    writer.set_nonblocking(true).map_err(|e| fail("creating the signal self-pipe", e))?;

    for signal in Signal::ALL {
        // The action only loads and sets atomics, unparks a thread on windows (console handlers
        // run on an ordinary thread) and calls `emulate_default_handler`; it never allocates.
        // SAFETY: all of that is allowed in a signal handler, and none of it panics.
        unsafe { signal_hook::low_level::register(signal.number(), move || on_signal(signal)) }
            .map_err(|e| fail("registering the signal handler", e))?;
        #[cfg(unix)]
        {
            let writer = writer.try_clone().map_err(|e| fail("cloning the self-pipe", e))?;
            // Registered after `on_signal`, so the watcher reads `PENDING` after it is set.
            signal_hook::low_level::pipe::register(signal.number(), writer)
                .map_err(|e| fail("registering the signal handler", e))?;
        }
    }

    let _thread = std::thread::Builder::new()
        .name("cancelctx-signal".into())
        .spawn(move || {
            #[cfg(unix)]
            {
                use std::io::Read;
                let mut buf = [0u8; 64];
                loop {
                    deliver();
                    match reader.read(&mut buf) {
                        Ok(0) => return, // the write ends are never closed
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            }
            #[cfg(not(unix))]
            loop {
                deliver();
                std::thread::park();
            }
        })
        .map_err(|e| fail("starting the cancelctx-signal thread", e))?;
    #[cfg(windows)]
    let _ = WATCHER.set(_thread.thread().clone());
    Ok(())
}

/// Unregisters its context from Ctrl-C / SIGTERM when dropped, and cancels it (as Go's
/// `stop()` does); made by [`Context::with_signals`].
///
/// While any guard lives, Ctrl-C and SIGTERM no longer terminate the process: they cancel
/// the listening contexts, every time they arrive. Drop the guard once shutdown has begun if
/// a second Ctrl-C should kill the process.
///
/// ```no_run
/// let (ctx, guard) = cancelctx::Context::background().with_signals()?;
/// // ... run until `ctx` is done ...
/// drop(guard); // Ctrl-C terminates the process again
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the SignalGuard unregisters and cancels the context at once"]
#[clippy::has_significant_drop]
pub struct SignalGuard {
    id: u64,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let removed = {
            let mut listeners = listeners();
            let index = listeners.guards.iter().position(|(id, _)| *id == self.id);
            let removed = index.map(|i| listeners.guards.swap_remove(i));
            if removed.is_some() {
                LISTENING.fetch_sub(1, Ordering::SeqCst);
            }
            removed
        };
        // Cancels the context, outside the lock (its callbacks may use signals too).
        drop(removed);
    }
}

impl fmt::Debug for SignalGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalGuard").field("id", &self.id).finish()
    }
}

impl Context {
    /// A child of this context that is cancelled when the process receives Ctrl-C (SIGINT)
    /// or SIGTERM, with [`Error::Canceled`](crate::Error::Canceled) and a
    /// [`SignalReceived`] cause naming the signal: Go's `signal.NotifyContext`.
    ///
    /// While the returned [`SignalGuard`] lives, those signals cancel instead of terminating
    /// the process. Dropping it cancels the child and unregisters it; once no guard is left,
    /// the signals terminate the process again. The first call installs the handlers and
    /// starts one `cancelctx-signal` thread for the process (see the module docs);
    /// `after_func` callbacks of a context ended by a signal run on that thread.
    ///
    /// # Errors
    ///
    /// If the handlers cannot be installed (or the thread cannot be started); every later
    /// call reports the same error.
    ///
    /// ```no_run
    /// use cancelctx::{Context, SignalReceived};
    ///
    /// fn main() -> std::io::Result<()> {
    ///     let (ctx, _guard) = Context::background().with_signals()?;
    ///     while ctx.check().is_ok() {
    ///         // serve...
    ///         # break;
    ///     }
    ///     if let Some(cause) = ctx.cause() {
    ///         println!("stopping: {cause}"); // "stopping: received SIGINT"
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn with_signals(&self) -> io::Result<(Context, SignalGuard)> {
        if let Err((kind, msg)) = INSTALLED.get_or_init(install) {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        let (ctx, guard) = self.with_cancel();
        let id = {
            let mut listeners = listeners();
            let id = listeners.next_id;
            listeners.next_id += 1;
            listeners.guards.push((id, Arc::new(guard)));
            LISTENING.fetch_add(1, Ordering::SeqCst);
            id
        };
        Ok((ctx, SignalGuard { id }))
    }
}
