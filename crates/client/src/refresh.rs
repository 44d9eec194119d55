//! The background task that keeps a client's map current: a long poll on the mon
//! (`map(newer_than = current epoch, wait = 30 s)`), retried with backoff on errors.

use std::sync::Arc;
use std::time::Duration;

use tessera_mon::MonClient;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::map::MapCell;

/// How long one long poll waits on the mon for a newer map.
pub(crate) const LONG_POLL: Duration = Duration::from_secs(30);
/// Pause after a poll that brought no newer map.
const NOT_NEWER_PAUSE: Duration = Duration::from_millis(100);

/// Spawns the refresher. It runs until the returned handle is aborted (the client does that
/// when its last clone is dropped).
pub(crate) fn spawn(mon: Arc<MonClient>, cell: Arc<MapCell>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = new_backoff();
        loop {
            let epoch = cell.current().epoch;
            match mon.map(Some(epoch), LONG_POLL).await {
                Ok(map) => {
                    let new = map.epoch;
                    if cell.install(map) {
                        tracing::debug!(epoch = new, "client: new cluster map");
                    } else {
                        // Not newer (the long poll ran out, or a lagging mon answered): never
                        // spin on a mon that answers at once.
                        tokio::time::sleep(NOT_NEWER_PAUSE).await;
                    }
                    backoff = new_backoff();
                }
                Err(e) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(epoch, error = %e, ?pause, "client: cluster map refresh failed, retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    })
}

fn new_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}
