//! Storage backend of the tessera control plane (`tessera mon`).
//!
//! A small, versioned key-value store shaped after etcd's data model, so that the
//! etcd backend is a thin mapping and the embedded backend has the same semantics:
//!
//! * Keys and values are byte strings. Keys must be non-empty.
//! * The store has one `revision: u64`. Every transaction that changes something (a put,
//!   or a delete of a key that exists) advances it by exactly one; all changes of that
//!   transaction carry that revision. Reads and transactions that change nothing leave it.
//! * Every live key carries its `mod_revision`: the revision of its last put. A revision
//!   of `0` means "absent" wherever a revision is compared.
//! * [`MetaStore::txn`] is the only write path: compare-and-swap over any number of keys,
//!   applied atomically (all of the chosen branch or nothing). Every read-modify-write of
//!   the mon goes through it.
//! * [`MetaStore::watch`] streams every change under a prefix, in revision order, without
//!   gaps, from a chosen revision on.
//!
//! Two implementations: [`EmbeddedStore`] (one redb file, single machine, the default) and
//! [`EtcdStore`] (an etcd cluster, production). Both pass the same conformance suite
//! (`tests/conformance.rs`).
//!
//! What the two backends differ in (and callers must not depend on): the revision of a fresh
//! store (etcd starts at 1, the embedded store at 0), and how far back a watch can start.
//!
//! # Leader election
//!
//! [`MetaStore::campaign`] elects one leader per *election key* (e.g. `mon/leader`) among any
//! number of candidates, in any number of processes sharing the store:
//!
//! * The winner gets a [`Leadership`]; while it lasts, the election key holds the winner's
//!   value (anyone can `get` it, e.g. to learn the leader's address) and nobody else can win.
//!   Losers wait inside `campaign`; when the key disappears exactly one of them wins.
//! * Leadership ends when the holder calls [`Leadership::resign`] or drops its `Leadership`
//!   (the key is deleted at once), or — etcd only — when the holder stops renewing its lease
//!   for `ttl` (process killed, network cut): etcd then deletes the key itself. The embedded
//!   store lives inside one process, so there its leases end only with resign/drop, or with the
//!   process: keys held by a previous process are deleted when the file is opened again.
//! * **Fencing.** A leader can always be deposed without knowing it yet (a paused process, a
//!   slow network). So a leader never writes unconditionally: it adds [`Leadership::fence`]
//!   (`Compare::ModRevision` of the election key at the revision it won) to the compares of
//!   every [`Txn`] it makes. Once the key has been deleted or re-created by a successor, the
//!   fence fails and so does every write of the deposed leader, however late it arrives.
//!   [`Leadership::lost`] tells the leader to stop (etcd: possibly before the store expires
//!   it, since the client side counts `ttl` from the last keep-alive it *sent*).
//!   The leader must not itself write its election key: that changes its `mod_revision` and
//!   breaks the fence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

mod election;
mod embedded;
mod error;
mod etcd;

pub use election::Leadership;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{MetaStoreError, Result};
pub use etcd::{EtcdOptions, EtcdStore};

/// A value together with the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    /// Revision of the put that wrote `value`; never 0 for a stored key.
    pub mod_revision: u64,
}

/// A condition evaluated against the state before a transaction; all must hold for the
/// success branch to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; `revision == 0` holds iff the key is absent.
    ModRevision { key: Vec<u8>, revision: u64 },
    /// The key does not exist.
    Absent { key: Vec<u8> },
    /// The key exists and its value equals `value` (false when the key is absent).
    ValueEquals { key: Vec<u8>, value: Bytes },
}

/// A write inside a transaction. A key may appear at most once per branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Bytes,
    },
    /// Deleting an absent key is allowed and changes nothing.
    Delete {
        key: Vec<u8>,
    },
}

/// A compare-and-swap transaction: if every compare holds, apply `success`, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// `put key=value` only if `key` does not exist yet ("create").
    pub fn create(key: impl Into<Vec<u8>>, value: impl Into<Bytes>) -> Self {
        let key = key.into();
        Txn {
            compares: vec![Compare::Absent { key: key.clone() }],
            success: vec![TxnOp::Put { key, value: value.into() }],
            failure: vec![],
        }
    }

    /// Unconditional put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Bytes>) -> Self {
        Txn { compares: vec![], success: vec![TxnOp::Put { key: key.into(), value: value.into() }], failure: vec![] }
    }

    /// Unconditional delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Txn { compares: vec![], success: vec![TxnOp::Delete { key: key.into() }], failure: vec![] }
    }
}

/// Outcome of [`MetaStore::txn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether all compares held (and so the success branch was applied).
    pub succeeded: bool,
    /// Store revision right after the transaction: the revision of its changes if it changed
    /// anything, else the unchanged current revision.
    pub revision: u64,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: Vec<u8>, value: Bytes, mod_revision: u64 },
    Delete { key: Vec<u8>, revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &[u8] {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        }
    }

    /// Revision of the transaction that made this change.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put { mod_revision, .. } => *mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The receiving end of a watch.
///
/// Events arrive in revision order (changes of one transaction in the order of its ops), with
/// no gaps and no duplicates. If the watch cannot go on (the watcher fell too far behind, the
/// requested start was compacted, the backend went away), [`Watch::next`] yields one `Err`
/// and then `None`. Dropping the `Watch` cancels it.
pub struct Watch {
    rx: mpsc::Receiver<WatchEvent>,
    /// Set by the producer before it drops its sender when the watch ends abnormally.
    terminal: Arc<Mutex<Option<MetaStoreError>>>,
    /// Whatever keeps the producer alive (e.g. an abort-on-drop task handle).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Watch {
    pub(crate) fn set_guard(&mut self, guard: Box<dyn Send + Sync>) {
        self._guard = Some(guard);
    }

    /// Next event; `None` once the watch has ended (after any terminal error was returned).
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        match self.rx.recv().await {
            Some(ev) => Some(Ok(ev)),
            None => self.terminal.lock().unwrap_or_else(|p| p.into_inner()).take().map(Err),
        }
    }
}

/// Aborts a spawned task when dropped (ties a background task's life to its owner).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Producer side of a [`Watch`], used by the backends.
pub(crate) struct WatchSender {
    pub(crate) tx: mpsc::Sender<WatchEvent>,
    terminal: Arc<Mutex<Option<MetaStoreError>>>,
}

impl WatchSender {
    /// Ends the watch with `err` (delivered after any events already queued).
    pub(crate) fn fail(self, err: MetaStoreError) {
        *self.terminal.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
    }
}

pub(crate) fn watch_channel(capacity: usize) -> (WatchSender, Watch) {
    let (tx, rx) = mpsc::channel(capacity);
    let terminal = Arc::new(Mutex::new(None));
    (WatchSender { tx, terminal: terminal.clone() }, Watch { rx, terminal, _guard: None })
}

/// The control plane's storage contract. See the crate docs for the data model.
///
/// All methods are cancel-safe in the sense that dropping a pending `txn` future either
/// applies the transaction completely or not at all (the caller just doesn't learn which),
/// and dropping a pending `campaign` future leaves no leadership behind.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Current value of `key`, as of a single consistent point in time.
    async fn get(&self, key: &[u8]) -> Result<Option<Versioned>>;

    /// All keys starting with `prefix` (empty prefix: all keys), sorted by key bytes, as of
    /// a single consistent point in time.
    async fn range(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>>;

    /// The store revision: the revision of the last change.
    async fn current_revision(&self) -> Result<u64>;

    /// Atomically evaluates `compares` and applies `success` or `failure`. When it returns
    /// `Ok`, the change is durable (embedded: fsynced; etcd: committed by a quorum). Linearizable:
    /// of N concurrent `Txn::create` of the same key, exactly one succeeds.
    ///
    /// Errors (`InvalidArgument`) on an empty key or a key that appears twice in one branch,
    /// before anything is applied.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// Streams every change to keys starting with `prefix` whose revision is
    /// `>= from_revision`; `from_revision == 0` means "changes after now". Events already in
    /// the past are replayed first, then live events follow, with no gap in between.
    ///
    /// Errors with `Compacted` (possibly through the stream) when the backend no longer has
    /// the history from `from_revision`: then read the current state with `range` and watch
    /// from its revision + 1.
    async fn watch(&self, prefix: &[u8], from_revision: u64) -> Result<Watch>;

    /// Waits until this caller is the leader of the election named by the key `election`,
    /// then returns its [`Leadership`] (see the crate docs, "Leader election").
    ///
    /// While the leadership lasts, the key `election` holds `value` (anyone can `get` it, e.g.
    /// to learn the leader's address); it is deleted when the leadership ends. The key is an
    /// ordinary key of the store: it shows up in `get`, `range` and `watch`, and it must not be
    /// written by anything but the election (a put by someone else ends the leadership: see
    /// [`Leadership::lost`]).
    ///
    /// `ttl`: how long after the holder stops renewing (process killed, network cut) the key
    /// expires so that another candidate can win. etcd counts in whole seconds (rounded up,
    /// at least 1) and enforces its own minimum on top (`ceil(1.5 × election timeout)`: 2 s
    /// with etcd's default settings); the embedded store ignores it (a lease there lives as
    /// long as the process, see the crate docs).
    ///
    /// Candidates queue: while the key exists, `campaign` waits; when it disappears, exactly
    /// one waiting candidate wins (no fairness among them is promised). A candidate that
    /// finds the key already holding its own earlier leadership also waits: leadership is
    /// never shared or inherited.
    ///
    /// Cancel-safe: dropping the future before it returns leaves no leadership key behind
    /// (if the candidate had already won, the key is released in the background at once;
    /// etcd: its lease is revoked). Errors (`Unavailable`, ...) likewise leave nothing behind;
    /// the caller may simply campaign again. `InvalidArgument` on an empty key.
    async fn campaign(&self, election: &[u8], value: Bytes, ttl: Duration) -> Result<Leadership>;
}

/// Checks the argument rules shared by both backends.
pub(crate) fn validate_txn(txn: &Txn) -> Result<()> {
    for c in &txn.compares {
        let key = match c {
            Compare::ModRevision { key, .. } | Compare::Absent { key } | Compare::ValueEquals { key, .. } => key,
        };
        if key.is_empty() {
            return Err(MetaStoreError::InvalidArgument("empty key in compare".into()));
        }
    }
    for branch in [&txn.success, &txn.failure] {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(branch.len());
        for op in branch {
            let key = match op {
                TxnOp::Put { key, .. } | TxnOp::Delete { key } => key.as_slice(),
            };
            if key.is_empty() {
                return Err(MetaStoreError::InvalidArgument("empty key in txn op".into()));
            }
            keys.push(key);
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(MetaStoreError::InvalidArgument("a key appears twice in one txn branch".into()));
        }
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (empty prefix or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
