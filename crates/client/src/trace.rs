//! The client library's part of the sampled latency trace ([`tessera_wire::trace`]): which
//! requests a caller's future sent that were sampled, so a front end (the NBD server) can
//! record its own stages of them.

use std::cell::RefCell;
use std::future::Future;

tokio::task_local! {
    static SAMPLED: RefCell<Vec<(u64, u64)>>;
}

/// Runs `f` and returns its output with the `(client, seq)` of every sampled request it sent
/// from this task (pieces of a call that run as tasks of their own are not seen).
pub async fn collect<F: Future>(f: F) -> (F::Output, Vec<(u64, u64)>) {
    SAMPLED
        .scope(RefCell::new(Vec::new()), async {
            let out = f.await;
            let sampled = SAMPLED.with(|s| s.take());
            (out, sampled)
        })
        .await
}

/// Notes a sampled request for an enclosing [`collect`], if any.
pub(crate) fn note(client: u64, seq: u64) {
    let _ = SAMPLED.try_with(|s| s.borrow_mut().push((client, seq)));
}
