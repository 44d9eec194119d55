//! Volume-wide data operations for the admin CLI: each is one replicated request per PG of
//! the volume's pool (or per object), sent concurrently. They are idempotent, so a command
//! interrupted half way is completed by running it again.
//!
//! Every PG op goes through the PG's Raft log, so a replica that is down while it runs
//! catches up from the log (or a snapshot of the PG) when it returns and applies it too: a
//! deleted volume's data never comes back with a returning OSD.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use tessera_mon::model::VolumeRecord;
use tessera_wire::{OpCode, UsageEntry};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::fanout;
use crate::route::ObjectRequest;
use crate::volume::Volume;
use crate::SNAP_HEAD;

/// Space of one volume summed over its pool's PGs (one replica's worth; multiply by the
/// replica count for raw space).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    /// Bytes allocated in the volume's current data (heads).
    pub head_bytes: u64,
    /// Bytes held by the volume and its snapshots together (blocks shared between versions
    /// count once).
    pub used_bytes: u64,
}

fn pool_pgs(client: &Client, pool: u32) -> Result<u32> {
    let map = client.map();
    map.pool(pool).map(|p| p.pg_count).ok_or(ClientError::NoPool { volume: 0, pool, epoch: map.epoch })
}

/// Sends `op` for `volume` to every PG of `pool`, concurrently; returns the answers' data.
async fn each_pg(client: &Client, pool: u32, op: OpCode, volume: u64, snap: u64, snapc: u64, data: Bytes) -> Result<Vec<Bytes>> {
    let n = pool_pgs(client, pool)?;
    let deadline = Instant::now() + client.options().op_timeout;
    let futures = (0..n)
        .map(|pg| {
            let (client, data) = (client.clone(), data.clone());
            async move {
                let req = ObjectRequest { snapc, pg: Some(pg), ..ObjectRequest::new(op, pool, volume, 0, snap, 0, 0) };
                client.inner.execute(&req, data, deadline).await.map(|(_, d)| d)
            }
        })
        .collect();
    fanout::try_join(futures).await
}

/// Space used by every volume with data in `pool`, by volume id.
pub async fn pool_usage(client: &Client, pool: u32) -> Result<BTreeMap<u64, Usage>> {
    let mut out: BTreeMap<u64, Usage> = BTreeMap::new();
    for data in each_pg(client, pool, OpCode::Usage, 0, SNAP_HEAD, 0, Bytes::new()).await? {
        let entries = UsageEntry::decode_all(&data).map_err(|e| ClientError::Protocol {
            at: crate::Location { volume: 0, object: 0, offset: 0, pg: None },
            osd: 0,
            why: e.to_string(),
        })?;
        for e in entries {
            let u = out.entry(e.volume).or_default();
            u.objects += e.objects;
            u.head_bytes += e.head_blocks * crate::BLOCK_SIZE;
            u.used_bytes += e.unique_blocks * crate::BLOCK_SIZE;
        }
    }
    Ok(out)
}

/// Space used by one volume.
pub async fn volume_usage(client: &Client, rec: &VolumeRecord) -> Result<Usage> {
    Ok(pool_usage(client, rec.pool_id).await?.remove(&rec.id).unwrap_or_default())
}

/// Removes every version of every object of the volume on every replica.
pub async fn drop_volume(client: &Client, rec: &VolumeRecord) -> Result<()> {
    each_pg(client, rec.pool_id, OpCode::DropVolume, rec.id, SNAP_HEAD, 0, Bytes::new()).await.map(drop)
}

/// Tells every PG of the volume's pool its snapshot context (`snap_seq`, set at map epoch
/// `snap_epoch`): from then on each PG refuses writes of the volume with an older one.
pub async fn push_context(client: &Client, rec: &VolumeRecord) -> Result<()> {
    each_pg(client, rec.pool_id, OpCode::SnapSeq, rec.id, rec.snap_epoch.max(1), rec.snap_seq, Bytes::new()).await.map(drop)
}

/// Frees the object versions below `horizon` that no snapshot in `keep` (the volume's live
/// snapshot ids, read when the newest snapshot id was below `horizon`) reads.
pub async fn trim_versions(client: &Client, rec: &VolumeRecord, keep: &[u64], horizon: u64) -> Result<()> {
    if keep.len() > tessera_wire::MAX_KEEP {
        return Err(ClientError::BadVolume { volume: rec.id, why: format!("{} snapshots (max {})", keep.len(), tessera_wire::MAX_KEEP) });
    }
    let data = Bytes::from(tessera_wire::encode_keep(keep));
    each_pg(client, rec.pool_id, OpCode::TrimVersions, rec.id, horizon, 0, data).await.map(drop)
}

/// Makes every object of the volume read as snapshot `snap` again. `seq` is the volume's
/// current snapshot context (snapshots newer than `snap` keep their data).
pub async fn rollback(client: &Client, rec: &VolumeRecord, snap: u64, seq: u64) -> Result<()> {
    each_pg(client, rec.pool_id, OpCode::Rollback, rec.id, snap, seq, Bytes::new()).await.map(drop)
}

/// Copies into the clone every object it still reads from its parents (objects it has
/// written are left alone). `progress(done, total)` is called after each object. After
/// this the clone no longer needs its parents: the caller then clears its parent on the mon.
pub async fn flatten(vol: &Volume, mut progress: impl FnMut(u64, u64)) -> Result<()> {
    let os = vol.object_size();
    let total = vol.size().div_ceil(os);
    let deadline_each = vol.client().options().op_timeout;
    const BATCH: u64 = 16;
    let mut done = 0;
    while done < total {
        let end = (done + BATCH).min(total);
        let futures = (done..end)
            .map(|o| {
                let v = vol.clone();
                async move { v.copy_up(o, Instant::now() + deadline_each).await }
            })
            .collect();
        fanout::try_join(futures).await?;
        done = end;
        progress(done, total);
    }
    Ok(())
}

/// Discards the data of `rec` from byte `from` to `to` (a shrink's cut-off tail): whole
/// objects are deleted, a partial first object is zeroed from `from`. Preserves snapshots
/// like any write (`snapc`).
pub async fn discard_tail(client: &Client, rec: &VolumeRecord, from: u64, to: u64) -> Result<()> {
    let os = rec.object_size;
    let deadline = Instant::now() + client.options().op_timeout;
    let mut futures = Vec::new();
    let first = from / os;
    let last = to.div_ceil(os);
    for object in first..last {
        let within = if object == first { from % os } else { 0 };
        let (pool, id, snapc) = (rec.pool_id, rec.id, rec.snap_seq);
        let client = client.clone();
        futures.push(async move {
            let req = if within == 0 {
                ObjectRequest { snapc, ..ObjectRequest::new(OpCode::Delete, pool, id, object, SNAP_HEAD, 0, 0) }
            } else {
                ObjectRequest { snapc, ..ObjectRequest::new(OpCode::WriteZeroes, pool, id, object, SNAP_HEAD, within, os - within) }
            };
            client.inner.execute(&req, Bytes::new(), deadline).await.map(drop)
        });
    }
    fanout::try_join(futures).await.map(drop)
}

// ---- whole commands: the mon's record and the data path, in the order that keeps each
// ---- step safe to repeat. The CLI runs exactly these.

fn mon_err(what: impl Into<String>) -> impl FnOnce(tessera_mon::ClientError) -> ClientError {
    let what = what.into();
    move |source| ClientError::Mon { what, source }
}

/// How long a lifecycle command waits for clients that just closed a volume or snapshot to
/// leave their sessions (an NBD connection's session is updated a few ms after it closes)
/// before it reports "in use".
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `f` until it is not refused as in use (HTTP 409 `volume_in_use`/`snapshot_in_use`)
/// or [`IN_USE_GRACE`] has passed.
async fn past_closing<T, F, Fut>(f: F) -> std::result::Result<T, tessera_mon::ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tessera_mon::ClientError>>,
{
    let deadline = Instant::now() + IN_USE_GRACE;
    loop {
        match f().await {
            Err(tessera_mon::ClientError::Api { code, .. })
                if (code == "volume_in_use" || code == "snapshot_in_use") && Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            r => return r,
        }
    }
}

fn mon_of(client: &Client) -> Result<std::sync::Arc<tessera_mon::MonClient>> {
    client.mon().ok_or_else(|| ClientError::NoMon { what: "volume lifecycle command".into() })
}

/// `snapshot create`: the mon records the snapshot and the volume's new context (and waits,
/// bounded, for open sessions to switch to it), then every PG of the pool is told the new
/// context; only then does the snapshot never change (a write still carrying the old
/// context, however late, is refused by its PG and re-issued with the new one).
///
/// A snapshot that already exists and is the volume's newest (an earlier run was
/// interrupted before every PG was told) is finished: its context is pushed again. A fence
/// timeout on the mon (a client that did not acknowledge in time) is not an error any more:
/// the PGs refuse that client's stale writes. Returns the snapshot and whether the fence
/// timed out.
pub async fn create_snapshot(client: &Client, volume: &str, snap: &str) -> Result<(tessera_mon::model::SnapshotRecord, bool)> {
    let mon = mon_of(client)?;
    let (rec, fence_timed_out) = match mon.create_snapshot(volume, snap).await {
        Ok(s) => (s, false),
        Err(tessera_mon::ClientError::Api { code, .. }) if code == "fence_timeout" || code == "snapshot_exists" => {
            let (v, s) = find_snapshot(&mon, volume, snap).await?;
            if code == "snapshot_exists" && v.snap_seq != s.id {
                return Err(mon_err(format!("create snapshot {volume}@{snap}"))(tessera_mon::ClientError::Api {
                    status: 409,
                    code,
                    message: format!("volume {volume:?} already has a snapshot named {snap:?}; choose another name"),
                    leader: None,
                }));
            }
            (s, code == "fence_timeout")
        }
        Err(e) => return Err(mon_err(format!("create snapshot {volume}@{snap}"))(e)),
    };
    let v = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?;
    push_context(client, &v.volume).await?;
    Ok((rec, fence_timed_out))
}

async fn find_snapshot(
    mon: &tessera_mon::MonClient,
    volume: &str,
    snap: &str,
) -> Result<(VolumeRecord, tessera_mon::model::SnapshotRecord)> {
    let v = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?;
    let snaps = mon.snapshots(volume).await.map_err(mon_err("list snapshots"))?;
    let s = snaps
        .into_iter()
        .find(|s| s.name == snap)
        .ok_or_else(|| ClientError::Busy { volume: v.volume.id, why: format!("snapshot {snap:?} vanished while it was being created") })?;
    Ok((v.volume, s))
}

/// `snapshot delete`: removes the record (the mon refuses while clones use it), then frees
/// the versions no remaining snapshot reads.
/// A snapshot already gone on the mon (an earlier run was interrupted after the mon's
/// part) is not an error: its versions are trimmed again. Returns `None` then.
pub async fn delete_snapshot(client: &Client, volume: &str, snap: &str) -> Result<Option<tessera_mon::model::SnapshotRecord>> {
    let mon = mon_of(client)?;
    let s = match past_closing(|| mon.delete_snapshot(volume, snap)).await {
        Ok(s) => Some(s),
        Err(e) if e.status() == Some(404) && mon.volume(volume).await.is_ok() => None,
        Err(e) if e.status() == Some(503) && matches!(&e, tessera_mon::ClientError::Api { code, .. } if code == "fence_timeout") => None,
        Err(e) => return Err(mon_err(format!("delete snapshot {volume}@{snap}"))(e)),
    };
    // The volume's context went back to its newest remaining snapshot: tell the PGs, or
    // they would refuse writes under it (clients would then take the PGs' higher context).
    let v = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?;
    push_context(client, &v.volume).await?;
    trim_deleted(client, volume).await?;
    Ok(s)
}

/// Frees the versions of `volume` that none of its remaining snapshots reads. The mon's
/// next snapshot id is read before the snapshot list, and ids only grow, so a snapshot
/// taken after the list was read has an id at or above it: that is the trim's horizon, and
/// versions of newer snapshots are never trimmed.
pub async fn trim_deleted(client: &Client, volume: &str) -> Result<()> {
    let mon = mon_of(client)?;
    let horizon = mon.status().await.map_err(mon_err("read the cluster status"))?.next_snapshot_id;
    let v = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?;
    let snaps = mon.snapshots(volume).await.map_err(mon_err("list snapshots"))?;
    let keep: Vec<u64> = snaps.iter().map(|s| s.id).collect();
    trim_versions(client, &v.volume, &keep, horizon).await
}

/// `snapshot rollback`: the mon marks the volume rolling back (refused while it is open),
/// every PG restores the snapshot's versions, then the volume is active again.
pub async fn rollback_volume(client: &Client, volume: &str, snap: &str) -> Result<tessera_mon::api::RollbackView> {
    let mon = mon_of(client)?;
    let r = past_closing(|| mon.begin_rollback(volume, snap)).await.map_err(mon_err(format!("roll back {volume} to {snap}")))?;
    rollback(client, &r.volume.volume, r.snapshot.id, r.volume.volume.snap_seq).await?;
    mon.finish_rollback(volume).await.map_err(mon_err(format!("finish rolling back {volume}")))?;
    Ok(r)
}

/// `volume delete`: the mon marks the volume deleting (refused while it has snapshots or is
/// open), every PG drops its objects, then the record is removed.
pub async fn delete_volume(client: &Client, volume: &str) -> Result<VolumeRecord> {
    let mon = mon_of(client)?;
    let v = past_closing(|| mon.delete_volume(volume)).await.map_err(mon_err(format!("delete volume {volume}")))?;
    drop_volume(client, &v.volume).await?;
    mon.purge_volume(volume).await.map_err(mon_err(format!("purge volume {volume}")))?;
    Ok(v.volume)
}

/// `volume resize`: the record first; a shrink then discards the cut tail, so a later grow
/// reads zeros there.
pub async fn resize_volume(client: &Client, volume: &str, size: u64, allow_shrink: bool) -> Result<VolumeRecord> {
    let mon = mon_of(client)?;
    let old = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?.volume.size;
    let v = mon.resize_volume(volume, size, allow_shrink).await.map_err(mon_err(format!("resize volume {volume}")))?;
    if size < old {
        let os = v.volume.object_size;
        if v.volume.parent.is_some() && !size.is_multiple_of(os) {
            // A clone's partial last object must hold the parent's data below the new end
            // before its tail is zeroed (the mon lowered the parent overlap to `size`, so
            // nothing past it reads through any more).
            let h = client.open_volume(volume).await?;
            h.copy_up(size / os, Instant::now() + client.options().op_timeout).await?;
        }
        discard_tail(client, &v.volume, size, old).await?;
    }
    Ok(v.volume)
}

/// `volume flatten`: copies what the clone still reads from its parents, then clears its
/// parent on the mon. Refused while the clone has snapshots (they read through to the parent
/// as well).
pub async fn flatten_volume(client: &Client, volume: &str, progress: impl FnMut(u64, u64)) -> Result<VolumeRecord> {
    let mon = mon_of(client)?;
    let v = mon.volume(volume).await.map_err(mon_err(format!("look up volume {volume}")))?;
    if v.volume.parent.is_none() {
        return Ok(v.volume);
    }
    let snaps = mon.snapshots(volume).await.map_err(mon_err("list snapshots"))?;
    if !snaps.is_empty() {
        return Err(ClientError::BadVolume {
            volume: v.volume.id,
            why: format!(
                "volume {volume} has {} snapshot(s), which read through to its parent too; delete them before flattening",
                snaps.len()
            ),
        });
    }
    let vol = client.open_volume(volume).await?;
    flatten(&vol, progress).await?;
    drop(vol);
    let v = mon.flatten_done(volume).await.map_err(mon_err(format!("detach {volume} from its parent")))?;
    Ok(v.volume)
}
