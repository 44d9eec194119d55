//! Embedded backend: one redb file on the local machine.
//!
//! Layout: table `kv` maps key -> (8-byte little-endian mod_revision ++ value); table `meta`
//! holds the store revision under `"revision"`. Each [`MetaStore::txn`] is one redb write
//! transaction committed with redb's default `Durability::Immediate` (fsync) before `txn`
//! returns, so a returned `txn` survives a crash.
//!
//! Threading: redb calls block, so every call runs on tokio's blocking pool
//! (`tokio::task::spawn_blocking`); the store must be used from inside a tokio runtime.
//! Writers are serialized by one mutex (redb allows a single writer anyway), which is also
//! what orders the watch events.
//!
//! Watches: in-process only. The store keeps the events of the last
//! [`EmbeddedOptions::watch_history`] changes made *since this process opened the file*
//! (history is not persisted). A watch from a revision inside that window replays the
//! missed events and then goes live; a watch from an older revision fails at once with
//! [`MetaStoreError::Compacted`] (no snapshot is synthesized: the caller does `range` and
//! watches from its revision + 1). A watcher whose buffer
//! ([`EmbeddedOptions::watch_buffer`] events) overflows is ended with `Compacted` too.
//!
//! Elections ([`MetaStore::campaign`]): the store belongs to one process, so a lease cannot
//! expire while that process lives, and `ttl` is ignored. A candidate tries
//! `txn(Absent(key) -> put(key, value))`; if the key is taken it waits for the key's delete
//! and tries again. Table `ephemeral` maps each held election key to the revision it was won
//! at, written in the same redb transaction as the key. Resign/drop deletes the key (if it is
//! still the one won) and its `ephemeral` entry. When the process dies, the holders die with
//! it: [`EmbeddedStore::open`] deletes every key still recorded in `ephemeral` with its
//! recorded revision, and clears the table, in one write transaction that advances the
//! revision like a normal delete. A [`Leadership`] does not keep the file open: once the last
//! store clone is dropped it reports itself lost, and its key is deleted at the next open.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use crate::election::Hold;
use crate::{
    prefix_end, validate_txn, watch_channel, AbortOnDrop, Compare, Leadership, MetaStore, MetaStoreError, Result, Txn, TxnOp, TxnResult,
    Versioned, Watch, WatchEvent, WatchSender,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Election keys currently held -> revision they were won at.
const EPHEMERAL: TableDefinition<&[u8], u64> = TableDefinition::new("ephemeral");
const REVISION_KEY: &str = "revision";

/// Tuning of [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many past change events are kept in memory for watches that start in the past.
    pub watch_history: usize,
    /// How many undelivered events a watcher may have before it is ended with `Compacted`.
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { watch_history: 10_000, watch_buffer: 4_096 }
    }
}

/// [`MetaStore`] in one local redb file. Cheap to clone (clones share the open database).
/// The file is closed when the last clone is dropped and no call is in flight.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    opts: EmbeddedOptions,
    /// Held for the whole write transaction plus event publication.
    write_lock: Mutex<()>,
    hub: Mutex<Hub>,
}

struct Hub {
    /// Revision of the last committed change (the store revision).
    revision: u64,
    /// Every revision `>= first_available` has all its events in `history`.
    first_available: u64,
    history: VecDeque<WatchEvent>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: Vec<u8>,
    /// Only the key equal to `prefix`, not every key starting with it.
    exact: bool,
    from_revision: u64,
    sender: WatchSender,
}

fn key_matches(key: &[u8], prefix: &[u8], exact: bool) -> bool {
    if exact {
        key == prefix
    } else {
        key.starts_with(prefix)
    }
}

/// Bookkeeping of held election keys (table `ephemeral`), done by [`Inner::txn_with`] in the
/// same write transaction as the txn itself.
enum Ephemeral {
    /// If the txn succeeds: record `key` as held since the txn's revision.
    Hold(Vec<u8>),
    /// Whether or not the txn succeeds: forget `key` if it is recorded as held since `revision`.
    Release(Vec<u8>, u64),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    /// Opens (creating if missing) the store file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    pub async fn open_with(path: impl AsRef<Path>, opts: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, opts)).await.map_err(join_error)?
    }

    fn open_blocking(path: PathBuf, opts: EmbeddedOptions) -> Result<Self> {
        let endpoint = path.display().to_string();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                MetaStoreError::Unavailable { endpoint: endpoint.clone(), reason: "database is already open (locked)".into() }
            }
            other => map_redb(other),
        })?;
        let wtx = db.begin_write().map_err(map_redb)?;
        let revision = {
            let mut kv = wtx.open_table(KV).map_err(map_redb)?;
            let mut meta = wtx.open_table(META).map_err(map_redb)?;
            let mut ephemeral = wtx.open_table(EPHEMERAL).map_err(map_redb)?;
            let mut revision = meta.get(REVISION_KEY).map_err(map_redb)?.map(|g| g.value()).unwrap_or(0);
            // Election keys still held by a previous process: their holders died with it.
            let mut held = Vec::new();
            for item in ephemeral.iter().map_err(map_redb)? {
                let (key, won_at) = item.map_err(map_redb)?;
                held.push((key.value().to_vec(), won_at.value()));
            }
            let mut deleted = false;
            for (key, won_at) in &held {
                let current = kv.get(key.as_slice()).map_err(map_redb)?.map(|g| decode(g.value())).transpose()?;
                // Only if it is still the key that was won (not re-written by someone since).
                if current.is_some_and(|v| v.mod_revision == *won_at) {
                    kv.remove(key.as_slice()).map_err(map_redb)?;
                    deleted = true;
                }
                ephemeral.remove(key.as_slice()).map_err(map_redb)?;
            }
            if deleted {
                revision += 1;
                meta.insert(REVISION_KEY, revision).map_err(map_redb)?;
            }
            revision
        };
        wtx.commit().map_err(map_redb)?;
        let hub = Hub { revision, first_available: revision + 1, history: VecDeque::new(), watchers: Vec::new() };
        Ok(EmbeddedStore { inner: Arc::new(Inner { db, path, opts, write_lock: Mutex::new(()), hub: Mutex::new(hub) }) })
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(join_error)?
    }
}

fn join_error(e: tokio::task::JoinError) -> MetaStoreError {
    MetaStoreError::Backend(format!("embedded store task failed: {e}"))
}

fn map_redb(e: impl Into<redb::Error>) -> MetaStoreError {
    match e.into() {
        redb::Error::Io(io) => MetaStoreError::Io(io),
        redb::Error::Corrupted(msg) => MetaStoreError::Corrupt(msg),
        other => MetaStoreError::Backend(other.to_string()),
    }
}

fn encode(mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + value.len());
    buf.extend_from_slice(&mod_revision.to_le_bytes());
    buf.extend_from_slice(value);
    buf
}

fn decode(raw: &[u8]) -> Result<Versioned> {
    if raw.len() < 8 {
        return Err(MetaStoreError::Corrupt(format!("stored value of {} bytes is shorter than its 8-byte revision header", raw.len())));
    }
    let (rev, value) = raw.split_at(8);
    let mod_revision = u64::from_le_bytes(rev.try_into().expect("split_at(8) gives 8 bytes"));
    if mod_revision == 0 {
        return Err(MetaStoreError::Corrupt("stored value has mod_revision 0".into()));
    }
    Ok(Versioned { value: Bytes::copy_from_slice(value), mod_revision })
}

impl Inner {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let rtx = self.db.begin_read().map_err(map_redb)?;
        let kv = rtx.open_table(KV).map_err(map_redb)?;
        let got = kv.get(key).map_err(map_redb)?;
        got.map(|g| decode(g.value())).transpose()
    }

    fn range(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let rtx = self.db.begin_read().map_err(map_redb)?;
        let kv = rtx.open_table(KV).map_err(map_redb)?;
        let iter = match prefix_end(prefix) {
            Some(end) => kv.range::<&[u8]>(prefix..end.as_slice()),
            None => kv.range::<&[u8]>(prefix..),
        }
        .map_err(map_redb)?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(map_redb)?;
            out.push((k.value().to_vec(), decode(v.value())?));
        }
        Ok(out)
    }

    fn txn_with(&self, txn: Txn, ephemeral: Option<Ephemeral>) -> Result<TxnResult> {
        let _writer = lock(&self.write_lock);
        let wtx = self.db.begin_write().map_err(map_redb)?;
        let (succeeded, current, events, ephemeral_changed) = {
            let mut kv = wtx.open_table(KV).map_err(map_redb)?;
            let mut meta = wtx.open_table(META).map_err(map_redb)?;
            let current = meta.get(REVISION_KEY).map_err(map_redb)?.map(|g| g.value()).unwrap_or(0);
            let mut succeeded = true;
            for c in &txn.compares {
                let holds = match c {
                    Compare::ModRevision { key, revision } => {
                        let got = kv.get(key.as_slice()).map_err(map_redb)?.map(|g| decode(g.value())).transpose()?;
                        got.map_or(0, |v| v.mod_revision) == *revision
                    }
                    Compare::Absent { key } => kv.get(key.as_slice()).map_err(map_redb)?.is_none(),
                    Compare::ValueEquals { key, value } => {
                        let got = kv.get(key.as_slice()).map_err(map_redb)?.map(|g| decode(g.value())).transpose()?;
                        got.is_some_and(|v| v.value == *value)
                    }
                };
                if !holds {
                    succeeded = false;
                    break;
                }
            }
            let new_rev = current + 1;
            let mut events = Vec::new();
            for op in if succeeded { &txn.success } else { &txn.failure } {
                match op {
                    TxnOp::Put { key, value } => {
                        kv.insert(key.as_slice(), encode(new_rev, value).as_slice()).map_err(map_redb)?;
                        events.push(WatchEvent::Put { key: key.clone(), value: value.clone(), mod_revision: new_rev });
                    }
                    TxnOp::Delete { key } => {
                        if kv.remove(key.as_slice()).map_err(map_redb)?.is_some() {
                            events.push(WatchEvent::Delete { key: key.clone(), revision: new_rev });
                        }
                    }
                }
            }
            if !events.is_empty() {
                meta.insert(REVISION_KEY, new_rev).map_err(map_redb)?;
            }
            let ephemeral_changed = match ephemeral {
                None => false,
                Some(Ephemeral::Hold(key)) => {
                    if succeeded {
                        wtx.open_table(EPHEMERAL).map_err(map_redb)?.insert(key.as_slice(), new_rev).map_err(map_redb)?;
                    }
                    succeeded
                }
                Some(Ephemeral::Release(key, revision)) => {
                    let mut table = wtx.open_table(EPHEMERAL).map_err(map_redb)?;
                    let recorded = table.get(key.as_slice()).map_err(map_redb)?.map(|g| g.value());
                    if recorded == Some(revision) {
                        table.remove(key.as_slice()).map_err(map_redb)?;
                    }
                    recorded == Some(revision)
                }
            };
            (succeeded, current, events, ephemeral_changed)
        };
        if events.is_empty() {
            if ephemeral_changed {
                wtx.commit().map_err(map_redb)?;
            } else {
                wtx.abort().map_err(map_redb)?;
            }
            return Ok(TxnResult { succeeded, revision: current });
        }
        wtx.commit().map_err(map_redb)?;
        let revision = current + 1;
        self.publish(revision, events);
        Ok(TxnResult { succeeded, revision })
    }

    /// Records the events of a committed revision and hands them to the watchers.
    /// Called with `write_lock` held, so revisions are published in order.
    fn publish(&self, revision: u64, events: Vec<WatchEvent>) {
        let mut hub = lock(&self.hub);
        hub.revision = revision;
        let watchers = std::mem::take(&mut hub.watchers);
        let mut kept = Vec::with_capacity(watchers.len());
        'watchers: for w in watchers {
            if revision >= w.from_revision {
                for ev in events.iter().filter(|ev| key_matches(ev.key(), &w.prefix, w.exact)) {
                    match w.sender.tx.try_send(ev.clone()) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => continue 'watchers,
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            w.sender.fail(MetaStoreError::Compacted { revision: 0 });
                            continue 'watchers;
                        }
                    }
                }
            }
            kept.push(w);
        }
        hub.watchers = kept;
        hub.history.extend(events);
        while hub.history.len() > self.opts.watch_history {
            let Some(old) = hub.history.pop_front() else { break };
            // Keep whole revisions only: drop the rest of `old`'s revision too.
            let rev = old.revision();
            while hub.history.front().is_some_and(|e| e.revision() == rev) {
                hub.history.pop_front();
            }
            hub.first_available = rev + 1;
        }
    }

    /// [`MetaStore::watch`]; `exact`: of the key equal to `prefix` only.
    fn watch(&self, prefix: &[u8], exact: bool, from_revision: u64) -> Result<Watch> {
        let mut hub = lock(&self.hub);
        let from_revision = if from_revision == 0 { hub.revision + 1 } else { from_revision };
        if from_revision < hub.first_available {
            return Err(MetaStoreError::Compacted { revision: hub.first_available });
        }
        let replay: Vec<WatchEvent> =
            hub.history.iter().filter(|e| e.revision() >= from_revision && key_matches(e.key(), prefix, exact)).cloned().collect();
        let (sender, watch) = watch_channel(replay.len() + self.opts.watch_buffer.max(1));
        for ev in replay {
            // Capacity was sized for the replay; the receiver is still held by us.
            if sender.tx.try_send(ev).is_err() {
                return Err(MetaStoreError::Backend("watch replay overflowed its buffer".into()));
            }
        }
        hub.watchers.push(Watcher { prefix: prefix.to_vec(), exact, from_revision, sender });
        Ok(watch)
    }
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        if key.is_empty() {
            return Err(MetaStoreError::InvalidArgument("empty key".into()));
        }
        let key = key.to_vec();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn range(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let prefix = prefix.to_vec();
        self.blocking(move |inner| inner.range(&prefix)).await
    }

    async fn current_revision(&self) -> Result<u64> {
        Ok(lock(&self.inner.hub).revision)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        validate_txn(&txn)?;
        self.blocking(move |inner| inner.txn_with(txn, None)).await
    }

    async fn watch(&self, prefix: &[u8], from_revision: u64) -> Result<Watch> {
        self.inner.watch(prefix, false, from_revision)
    }

    async fn campaign(&self, election: &[u8], value: Bytes, _ttl: Duration) -> Result<Leadership> {
        self.campaign_impl(election, value).await
    }
}

// ---- elections ----

/// Pause before retrying after a failed re-subscription of a leadership's key watch.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What a won campaign attempt hands back: the hold, and a watch of its key from the winning
/// revision on (`None` if the key already changed again).
type Won = (EmbeddedHold, Option<Watch>);

impl EmbeddedStore {
    async fn campaign_impl(&self, election: &[u8], value: Bytes) -> Result<Leadership> {
        if election.is_empty() {
            return Err(MetaStoreError::InvalidArgument("empty election key".into()));
        }
        let key = election.to_vec();
        loop {
            // Subscribe before trying, so that a delete right after a failed try is seen.
            let mut taken = self.inner.watch(&key, true, 0)?;
            let (tx, rx) = oneshot::channel::<Result<Option<Won>>>();
            let (inner, k, v) = (self.inner.clone(), key.clone(), value.clone());
            tokio::task::spawn_blocking(move || {
                let outcome = inner.try_hold(k, v);
                // If this campaign was dropped meanwhile, `send` hands the outcome back, and
                // dropping it releases a key that was won (so none is left behind).
                drop(tx.send(outcome));
            });
            let outcome = rx.await.map_err(|_| MetaStoreError::Backend("embedded campaign task failed".into()))?;
            if let Some((mut hold, watch)) = outcome? {
                let (lost_tx, lost_rx) = watch::channel(false);
                match watch {
                    Some(w) => {
                        let guard = guard_key(hold.inner.clone(), hold.key.clone(), hold.revision, w, lost_tx);
                        hold.task = Some(AbortOnDrop(tokio::spawn(guard)));
                    }
                    None => {
                        lost_tx.send_replace(true);
                    }
                }
                return Ok(Leadership::new(hold.key.clone(), hold.revision, lost_rx, Box::new(hold)));
            }
            // Taken: wait for its delete. A broken watch (overflow) just means: try again.
            loop {
                match taken.next().await {
                    Some(Ok(WatchEvent::Delete { .. })) | Some(Err(_)) | None => break,
                    Some(Ok(WatchEvent::Put { .. })) => {}
                }
            }
        }
    }
}

impl Inner {
    /// One campaign attempt: creates `key` if absent and records it as held.
    fn try_hold(self: &Arc<Self>, key: Vec<u8>, value: Bytes) -> Result<Option<Won>> {
        let r = self.txn_with(Txn::create(key.clone(), value), Some(Ephemeral::Hold(key.clone())))?;
        if !r.succeeded {
            return Ok(None);
        }
        let hold = EmbeddedHold { inner: Arc::downgrade(self), key, revision: r.revision, released: false, task: None };
        // On error `hold` is dropped, which releases the key.
        let watch = self.watch_held(&hold.key, hold.revision)?;
        Ok(Some((hold, watch)))
    }

    /// A watch of exactly `key` that sees every change after `revision`, or `None` if the key
    /// has changed since `revision` already.
    fn watch_held(&self, key: &[u8], revision: u64) -> Result<Option<Watch>> {
        match self.watch(key, true, revision + 1) {
            Ok(w) => Ok(Some(w)),
            Err(MetaStoreError::Compacted { .. }) => {
                // Subscribe first, then look: a change is either seen here or delivered there.
                let w = self.watch(key, true, 0)?;
                let current = self.get(key)?;
                Ok(current.is_some_and(|v| v.mod_revision == revision).then_some(w))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes election key `key` if it is still the one won at `revision`, and forgets it.
    fn release(&self, key: &[u8], revision: u64) -> Result<()> {
        let txn = Txn {
            compares: vec![Compare::ModRevision { key: key.to_vec(), revision }],
            success: vec![TxnOp::Delete { key: key.to_vec() }],
            failure: vec![],
        };
        self.txn_with(txn, Some(Ephemeral::Release(key.to_vec(), revision))).map(|_| ())
    }
}

/// An embedded leadership. Does not keep the store open (`Weak`): once the store is closed
/// there is nothing to release; the next `open` deletes the key.
struct EmbeddedHold {
    inner: Weak<Inner>,
    key: Vec<u8>,
    revision: u64,
    released: bool,
    /// The key watchdog ([`guard_key`]).
    task: Option<AbortOnDrop>,
}

#[async_trait]
impl Hold for EmbeddedHold {
    async fn resign(&mut self) -> Result<()> {
        self.task = None;
        let Some(inner) = self.inner.upgrade() else {
            let reason = "store closed; the key is deleted when it is opened again".into();
            return Err(MetaStoreError::Unavailable { endpoint: "embedded store".into(), reason });
        };
        let (key, revision) = (self.key.clone(), self.revision);
        tokio::task::spawn_blocking(move || inner.release(&key, revision)).await.map_err(join_error)??;
        self.released = true;
        Ok(())
    }
}

impl Drop for EmbeddedHold {
    fn drop(&mut self) {
        self.task = None;
        if self.released {
            return;
        }
        let (inner, key, revision) = (self.inner.clone(), std::mem::take(&mut self.key), self.revision);
        let release = move || {
            if let Some(inner) = inner.upgrade() {
                // Best effort: if this fails, the next `open` deletes the key.
                let _ = inner.release(&key, revision);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

/// Sets `lost` once the leadership key (`key`, won at `revision`) is deleted or overwritten,
/// or the store is closed. `w` watches exactly `key` from `revision + 1` on.
async fn guard_key(inner: Weak<Inner>, key: Vec<u8>, revision: u64, mut w: Watch, lost: watch::Sender<bool>) {
    loop {
        match w.next().await {
            // Any change of the key after `revision`: a delete or someone else's put.
            Some(Ok(_)) => break,
            // The watch overflowed or the store was closed: subscribe again, and look at what
            // was missed.
            Some(Err(_)) | None => {
                let Some(strong) = inner.upgrade() else { break };
                let k = key.clone();
                match tokio::task::spawn_blocking(move || strong.watch_held(&k, revision)).await {
                    Ok(Ok(Some(again))) => w = again,
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) | Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        }
    }
    lost.send_replace(true);
}
