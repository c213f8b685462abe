//! Owners: a group of posts and timers that can be cancelled together by killing the owner.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

struct Inner {
    id: u64,
    name: String,
    killed: AtomicBool,
}

/// Who a task belongs to. Killing the owner cancels its pending posts, timers and I/O waits, and
/// later posts for it are refused. Clones share one owner.
///
/// Made by [`crate::PumpHandle::owner`]; [`crate::PumpHandle::kill`] kills it.
#[derive(Clone)]
pub struct Owner {
    inner: Arc<Inner>,
}

impl Owner {
    pub(crate) fn new(name: String) -> Owner {
        Owner {
            inner: Arc::new(Inner {
                id: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
                name,
                killed: AtomicBool::new(false),
            }),
        }
    }

    /// A number unique to this owner in the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the owner has been killed.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::Acquire)
    }

    /// Marks the owner killed; returns false if it already was.
    pub(crate) fn mark_killed(&self) -> bool {
        !self.inner.killed.swap(true, Ordering::AcqRel)
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("killed", &self.is_killed())
            .finish()
    }
}
