//! The state word: one `AtomicU32` per cancellable node.
//!
//! ```text
//!  bit  0-1  STATUS     0 = live, 1 = canceled, 2 = deadline exceeded     (set once)
//!  bit  2    CAUSE      an explicit cause is stored in the node           (set with STATUS)
//!  bit  3    INHERITED  completed by an ancestor: the cause is theirs     (set with STATUS)
//!  bit  4    WAITERS    a waiter may be linked in the node's waiter list (set while live or after)
//!  bit  5    LINKS      children, callbacks or a timer were registered    (set while live)
//!  bit  6    FINISHED   every descendant is done too: set with STATUS on a node without
//!                       LINKS, on the walk's first node when the walk is over, and on
//!                       the INHERITED path a losing cancel walked up (path compression)
//! ```
//!
//! Transitions: `live -> live | WAITERS`, `live -> live | LINKS` and exactly one
//! `live -> done` (a compare-exchange that keeps the flag bits). Done is terminal.
//!
//! Because every transition is a read-modify-write on the same word, they are totally
//! ordered: a waiter's `fetch_or(WAITERS)` either precedes the completing compare-exchange
//! (which then sees WAITERS and notifies) or follows it (and sees the done status). The same
//! holds for LINKS, which is only set under the node's lock, just before a child, callback or
//! timer is stored there. That is the no-lost-wakeup argument, in one place.

use crate::error::Error;

pub(crate) const STATUS: u32 = 0b11;
pub(crate) const LIVE: u32 = 0;
pub(crate) const CANCELED: u32 = 1;
pub(crate) const DEADLINE: u32 = 2;
pub(crate) const CAUSE: u32 = 1 << 2;
pub(crate) const INHERITED: u32 = 1 << 3;
pub(crate) const WAITERS: u32 = 1 << 4;
pub(crate) const LINKS: u32 = 1 << 5;
pub(crate) const FINISHED: u32 = 1 << 6;

/// The status bits for an error.
#[inline]
pub(crate) fn status_of(err: Error) -> u32 {
    match err {
        Error::Canceled => CANCELED,
        Error::DeadlineExceeded => DEADLINE,
    }
}

/// Decodes the status bits: `None` while live.
#[inline]
pub(crate) fn error_of(state: u32) -> Option<Error> {
    match state & STATUS {
        LIVE => None,
        CANCELED => Some(Error::Canceled),
        _ => Some(Error::DeadlineExceeded),
    }
}

#[inline]
pub(crate) fn is_done(state: u32) -> bool {
    state & STATUS != LIVE
}
