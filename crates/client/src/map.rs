//! The client's current cluster map, replaced only by newer epochs, and waiting for one.

use std::sync::Arc;
use std::time::Duration;

use tessera_mon::model::ClusterMap;
use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct MapCell {
    tx: watch::Sender<Arc<ClusterMap>>,
}

impl MapCell {
    pub(crate) fn new(map: ClusterMap) -> Self {
        MapCell { tx: watch::Sender::new(Arc::new(map)) }
    }

    pub(crate) fn current(&self) -> Arc<ClusterMap> {
        self.tx.borrow().clone()
    }

    /// Installs `map` if its epoch is newer than the current one; returns whether it did.
    /// The epoch never goes backwards, whatever order maps arrive in.
    pub(crate) fn install(&self, map: ClusterMap) -> bool {
        self.tx.send_if_modified(|cur| {
            if map.epoch > cur.epoch {
                *cur = Arc::new(map);
                true
            } else {
                false
            }
        })
    }

    /// The first map with an epoch greater than `epoch`, or `None` if none arrives within
    /// `timeout`.
    pub(crate) async fn newer_than(&self, epoch: u64, timeout: Duration) -> Option<Arc<ClusterMap>> {
        let mut rx = self.tx.subscribe();
        let wait = async { rx.wait_for(|m| m.epoch > epoch).await.ok().map(|m| m.clone()) };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(epoch: u64) -> ClusterMap {
        ClusterMap { epoch, ..Default::default() }
    }

    #[tokio::test]
    async fn only_newer_maps_are_installed_and_waiters_see_them() {
        let cell = Arc::new(MapCell::new(map(5)));
        assert!(!cell.install(map(5)));
        assert!(!cell.install(map(4)));
        assert_eq!(cell.newer_than(5, Duration::from_millis(20)).await, None);
        let waiter = {
            let cell = cell.clone();
            tokio::spawn(async move { cell.newer_than(6, Duration::from_secs(5)).await.map(|m| m.epoch) })
        };
        assert!(cell.install(map(6)));
        assert!(cell.install(map(8)));
        assert_eq!(waiter.await.unwrap(), Some(8));
        assert_eq!(cell.current().epoch, 8);
        assert_eq!(cell.newer_than(3, Duration::ZERO).await.map(|m| m.epoch), Some(8), "already newer: no wait");
    }
}
