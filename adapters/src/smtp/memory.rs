//! The memory all messages being received may take together.
//!
//! Each connection may send a message up to the size limit (25 MiB by
//! default), and a thousand connections may be open: without a budget a
//! stranger could make the server hold tens of gigabytes. A message being
//! received takes its bytes from one budget shared by every session, in
//! pieces as it grows, and gives them back when it has been delivered or
//! spooled. A message that finds the budget spent is read to its end and
//! dropped, and the sender hears `452` (insufficient storage, try again
//! later): it keeps the message and sends it again, so nothing is lost.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in pieces of this many bytes.
const PIECE: usize = 64 * 1024;

/// The shared budget.
#[derive(Debug)]
pub(crate) struct MessageMemory {
    pieces: Arc<Semaphore>,
}

impl MessageMemory {
    /// A budget of `bytes` (at least one piece).
    pub(crate) fn new(bytes: usize) -> MessageMemory {
        MessageMemory {
            pieces: Arc::new(Semaphore::new((bytes / PIECE).max(1))),
        }
    }

    /// An empty hold on it, for one message.
    pub(crate) fn hold(&self) -> Held {
        Held {
            pieces: self.pieces.clone(),
            permit: None,
            bytes: 0,
        }
    }
}

/// The part of the budget one message holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    pieces: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// Grows the hold to cover `len` bytes; `false` when the budget has
    /// not that much left (the hold stays as it was).
    pub(crate) fn cover(&mut self, len: usize) -> bool {
        if len <= self.bytes {
            return true;
        }
        let more = (len - self.bytes).div_ceil(PIECE);
        let Ok(more_u32) = u32::try_from(more) else {
            return false;
        };
        let Ok(permit) = self.pieces.clone().try_acquire_many_owned(more_u32) else {
            return false;
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes += more * PIECE;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_share_the_budget_and_give_it_back() {
        let memory = MessageMemory::new(4 * PIECE);
        let mut a = memory.hold();
        assert!(a.cover(1));
        assert!(a.cover(3 * PIECE));
        let mut b = memory.hold();
        assert!(b.cover(PIECE));
        assert!(!b.cover(PIECE + 1), "the budget is spent");
        drop(a);
        assert!(b.cover(4 * PIECE));
    }
}
