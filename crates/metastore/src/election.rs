//! [`Leadership`]: what the winner of [`MetaStore::campaign`](crate::MetaStore::campaign) holds.
//!
//! The type is shared by both backends; what keeps the leadership alive (etcd: a lease and its
//! keep-alives; embedded: nothing) and how it is given up is behind the crate-private [`Hold`].

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Compare, Result};

/// Backend side of a [`Leadership`]: owns whatever keeps it alive and releases it.
///
/// Dropping a `Hold` that was not successfully resigned must release the leadership in the
/// background (best effort), and must stop every background task it owns.
#[async_trait]
pub(crate) trait Hold: Send + Sync {
    /// Ends the leadership now: the election key is deleted when this returns `Ok`. Called at
    /// most once per hold; after `Ok`, dropping the hold releases nothing more.
    async fn resign(&mut self) -> Result<()>;

    /// Test hook behind [`Leadership::freeze_for_test`].
    fn freeze(&self) {}
}

/// Held by the winner of an election; see [`MetaStore::campaign`](crate::MetaStore::campaign)
/// and the crate docs ("Leader election").
///
/// Leadership ends with [`Leadership::resign`], with dropping this value, or when it is lost
/// ([`Leadership::lost`]). Dropping releases the key in the background, on the current tokio
/// runtime (etcd revokes the lease, the embedded store deletes the key); a drop outside any
/// runtime still ends the leadership, but etcd's key then lasts until its `ttl` runs out. A leader writes only through transactions that include
/// [`Leadership::fence`], so its writes fail once it has been deposed.
pub struct Leadership {
    key: Vec<u8>,
    revision: u64,
    /// `true` once the backend knows the leadership is lost. Closed (all senders gone) only if
    /// the backend's watchdog died, which is also reported as lost.
    lost: watch::Receiver<bool>,
    hold: Box<dyn Hold>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("key", &self.key).field("revision", &self.revision).field("lost", &self.is_lost()).finish()
    }
}

impl Leadership {
    pub(crate) fn new(key: Vec<u8>, revision: u64, lost: watch::Receiver<bool>, hold: Box<dyn Hold>) -> Self {
        Leadership { key, revision, lost, hold }
    }

    /// The election key, as passed to `campaign`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Revision at which this leadership's key was created (its `mod_revision` for as long as
    /// the leadership is current).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A compare that holds only while this leadership is current:
    /// `Compare::ModRevision { key, revision }`. Put it into every transaction the leader makes,
    /// so that a deposed leader's writes fail (fencing). It also fails after `resign`/drop.
    pub fn fence(&self) -> Compare {
        Compare::ModRevision { key: self.key.clone(), revision: self.revision }
    }

    /// Resolves once the leadership is known to be lost; never resolves while it is current.
    ///
    /// etcd: the lease's keep-alive was refused (lease expired or revoked) or no keep-alive
    /// succeeded for `ttl` (counted from when the last successful one was sent, so this fires
    /// no later than etcd expires the lease), or the key was deleted or replaced. Embedded:
    /// the key was deleted or overwritten by someone else (leases do not expire there).
    ///
    /// Once lost, a leadership never comes back; campaign again for a new one. Cancel-safe;
    /// may be awaited repeatedly (resolves at once after the first time).
    pub async fn lost(&mut self) {
        // Err only when every sender is gone, i.e. the watchdog ended without a verdict: that
        // is treated as lost (see `is_lost`), never as "current forever".
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Whether [`Leadership::lost`] would resolve at once. `false` does not prove the
    /// leadership is still current (only the fence does, atomically with a write).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Gives leadership up now: when this returns `Ok`, the key is deleted (etcd: the lease is
    /// revoked) and a waiting candidate can win at once. If the key is already gone (expired,
    /// deleted) that is `Ok` too. On `Err` (store unreachable) the release is retried in the
    /// background as for a drop; etcd deletes the key after `ttl` at the latest.
    pub async fn resign(mut self) -> Result<()> {
        self.hold.resign().await
    }

    /// Test hook: stops renewing the lease as if the network to etcd were cut, without
    /// revoking it, so that it expires after `ttl`. No effect on the embedded backend.
    #[doc(hidden)]
    pub fn freeze_for_test(&self) {
        self.hold.freeze();
    }
}
