//! The state word: one `AtomicUsize` per cancellable node: eight flag bits and the node's
//! reference count.
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
//!  bit  7    DETACHED   live and not in its scope's `children` (only while live): the
//!                       scope's completion does not reach this word, so readers also read
//!                       the scope's word, and the first one to see it done copies it here
//!  bit  8-   COUNT      handles: contexts, the guard, pending callbacks, walk references
//! ```
//!
//! The count shares the word so that a guard's drop, which cancels and releases, is one
//! compare-exchange instead of two read-modify-writes. Every transition below keeps it; on
//! 32-bit targets it has 24 bits (16 million handles of one node; more aborts, as `Arc`
//! does on overflow).
//!
//! Transitions: `live -> live | WAITERS`, `live -> live | LINKS`, `live | DETACHED -> live`
//! (linking, under the scope's lock) and exactly one `live -> done` (a compare-exchange that
//! keeps the flag bits but DETACHED). Done is terminal.
//!
//! Because every transition is a read-modify-write on the same word, they are totally
//! ordered: a waiter's `fetch_or(WAITERS)` either precedes the completing compare-exchange
//! (which then sees WAITERS and notifies) or follows it (and sees the done status). The same
//! holds for LINKS, which is only set under the node's lock, just before a child, callback or
//! timer is stored there. That is the no-lost-wakeup argument, in one place.

use crate::error::Error;

pub(crate) const STATUS: usize = 0b11;
pub(crate) const LIVE: usize = 0;
pub(crate) const CANCELED: usize = 1;
pub(crate) const DEADLINE: usize = 2;
pub(crate) const CAUSE: usize = 1 << 2;
pub(crate) const INHERITED: usize = 1 << 3;
pub(crate) const WAITERS: usize = 1 << 4;
pub(crate) const LINKS: usize = 1 << 5;
pub(crate) const FINISHED: usize = 1 << 6;
pub(crate) const DETACHED: usize = 1 << 7;
/// One reference in the COUNT field.
pub(crate) const REF: usize = 1 << 8;
/// The flag bits (everything but COUNT).
pub(crate) const FLAGS: usize = REF - 1;

/// The number of references in a state.
#[inline]
pub(crate) const fn count(state: usize) -> usize {
    state >> 8
}

/// The status bits for an error.
#[inline]
pub(crate) fn status_of(err: Error) -> usize {
    match err {
        Error::Canceled => CANCELED,
        Error::DeadlineExceeded => DEADLINE,
    }
}

/// Decodes the status bits: `None` while live.
#[inline]
pub(crate) fn error_of(state: usize) -> Option<Error> {
    match state & STATUS {
        LIVE => None,
        CANCELED => Some(Error::Canceled),
        _ => Some(Error::DeadlineExceeded),
    }
}

#[inline]
pub(crate) fn is_done(state: usize) -> bool {
    state & STATUS != LIVE
}
