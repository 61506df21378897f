//! Helpers shared by several integration test files; each includes this with `mod common;`
//! and uses only part of it.
#![allow(dead_code)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

/// An explicit cause, told apart by its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(pub &'static str);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {}", self.0)
    }
}

impl StdError for Tag {}

/// A waker that counts wake-ups; `Arc::strong_count` of the counter tells how many clones of
/// the waker exist.
#[derive(Default)]
pub struct WakeCounter {
    pub wakes: AtomicUsize,
}

impl WakeCounter {
    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn counting_waker() -> (Arc<WakeCounter>, Waker) {
    let counter = Arc::new(WakeCounter::default());
    (counter.clone(), Waker::from(counter))
}
