//! Running the pieces of one call concurrently.

use std::future::Future;

use tokio::task::JoinSet;

use crate::error::Result;

/// At most this many pieces of one call are in flight at once.
pub(crate) const MAX_PIECES_IN_FLIGHT: usize = 64;

/// Runs every future (as a task, at most [`MAX_PIECES_IN_FLIGHT`] at once) and returns their
/// outputs in input order, or the first error; then the others are aborted. A panicking
/// piece panics the caller.
pub(crate) async fn try_join<T, F>(mut futures: Vec<F>) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let n = futures.len();
    if n == 1 {
        if let Some(f) = futures.pop() {
            return Ok(vec![f.await?]);
        }
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut todo = futures.into_iter().enumerate();
    let mut set = JoinSet::new();
    loop {
        while set.len() < MAX_PIECES_IN_FLIGHT {
            let Some((i, f)) = todo.next() else { break };
            set.spawn(async move { (i, f.await) });
        }
        let Some(joined) = set.join_next().await else { break };
        match joined {
            Ok((i, Ok(v))) => out[i] = Some(v),
            Ok((_, Err(e))) => return Err(e),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a piece task was cancelled (runtime shutting down?): {e}"),
        }
    }
    Ok(out.into_iter().flatten().collect())
}
