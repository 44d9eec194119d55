//! Request sequence numbers and the in-flight floor used for deduplication.
//!
//! Every request of a client gets the next `seq` (starting at 1) and keeps it across all its
//! retries. The `floor` sent with a request is the lowest seq still in flight: every request
//! below it has finished for good, so the client will never send it again and the PG may
//! forget its deduplication entry.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
pub(crate) struct Sequencer {
    client: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    in_flight: BTreeSet<u64>,
}

impl Sequencer {
    pub(crate) fn new(client: u64) -> Self {
        Sequencer { client, state: Mutex::new(State { next: 1, in_flight: BTreeSet::new() }) }
    }

    /// This client's id, sent with every request.
    pub(crate) fn client(&self) -> u64 {
        self.client
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next seq and marks it in flight until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> SeqGuard {
        let mut s = self.lock();
        let seq = s.next;
        s.next += 1;
        s.in_flight.insert(seq);
        SeqGuard { seq, owner: self.clone() }
    }

    /// The lowest seq in flight, or the next seq to be handed out when none is.
    pub(crate) fn floor(&self) -> u64 {
        let s = self.lock();
        s.in_flight.first().copied().unwrap_or(s.next)
    }
}

/// One request's seq, in flight while this lives (dropping it, also by cancellation, ends it).
#[derive(Debug)]
pub(crate) struct SeqGuard {
    seq: u64,
    owner: Arc<Sequencer>,
}

impl SeqGuard {
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for SeqGuard {
    fn drop(&mut self) {
        self.owner.lock().in_flight.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_the_oldest_request_in_flight() {
        let s = Arc::new(Sequencer::new(7));
        assert_eq!(s.floor(), 1);
        let a = s.begin();
        let b = s.begin();
        let c = s.begin();
        assert_eq!((a.seq(), b.seq(), c.seq()), (1, 2, 3));
        assert_eq!(s.floor(), 1);
        drop(b);
        assert_eq!(s.floor(), 1, "a is still in flight");
        drop(a);
        assert_eq!(s.floor(), 3);
        drop(c);
        assert_eq!(s.floor(), 4, "nothing in flight: every seq so far is finished");
    }
}
