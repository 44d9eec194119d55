//! Tessera volumes as NBD exports, through the client library.
//!
//! Durability: [`Export::write`] and [`Export::write_zeroes`] return only after the client
//! library's acknowledgement (the data is fsynced in the logs of a majority of the PG's
//! replicas), so [`Export::flush`] has nothing left to do.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tessera_client::{Client, ClientError, Volume};

use crate::error::{ExportError, OpenError};
use crate::export::{Catalog, Export, ExportEntry};

/// Zeros written by WRITE_ZEROES with NO_HOLE, one piece at a time.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The one mapping from client library errors to export errors (and so, through
/// [`ExportError::errno`], to NBD error values).
pub fn export_error(e: ClientError) -> ExportError {
    match e {
        ClientError::OutOfRange { offset, len, size, .. } => ExportError::OutOfRange { offset, len, size },
        ClientError::BadRequest { .. } | ClientError::Invalid { .. } => ExportError::Invalid(e.to_string()),
        ClientError::NoSpace { .. } => ExportError::NoSpace(e.to_string()),
        ClientError::Timeout { .. } => ExportError::Timeout(e.to_string()),
        ClientError::ReadOnly { .. } => ExportError::ReadOnly,
        ClientError::StaleContext { .. }
        | ClientError::Busy { .. }
        | ClientError::Io { .. }
        | ClientError::Protocol { .. }
        | ClientError::Mon { .. }
        | ClientError::NoMon { .. }
        | ClientError::NoPool { .. }
        | ClientError::BadVolume { .. } => ExportError::Io(e.to_string()),
    }
}

/// One volume (writable) or one snapshot of it (`VOLUME@SNAPSHOT`, read-only).
pub struct VolumeExport {
    volume: Volume,
}

impl VolumeExport {
    pub fn new(volume: Volume) -> VolumeExport {
        VolumeExport { volume }
    }
}

#[async_trait]
impl Export for VolumeExport {
    fn name(&self) -> &str {
        self.volume.name()
    }
    fn size(&self) -> u64 {
        self.volume.size()
    }
    fn read_only(&self) -> bool {
        self.volume.read_only()
    }
    fn description(&self) -> String {
        let r = self.volume.record();
        let what = match self.volume.snapshot() {
            Some(id) => format!("read-only snapshot {id} of tessera volume"),
            None => "tessera volume".into(),
        };
        format!("{what} {} (id {}, pool {}, {} KiB objects)", r.name, r.id, r.pool_id, r.object_size / 1024)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError> {
        traced(self.volume.read(offset, len as u64)).await.map_err(export_error)
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), ExportError> {
        traced(self.volume.write(offset, data)).await.map_err(export_error)
    }
    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), ExportError> {
        if punch {
            return self.volume.write_zeroes(offset, len).await.map_err(export_error);
        }
        // NO_HOLE: the blocks must stay allocated, so write real zeros.
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(ZEROS.len() as u64);
            self.volume.write(pos, Bytes::from_static(&ZEROS[..n as usize])).await.map_err(export_error)?;
            pos += n;
        }
        Ok(())
    }
    async fn flush(&self) -> Result<(), ExportError> {
        // Every write returned only once durable on a majority.
        Ok(())
    }
}

/// Runs a volume call; with the latency trace on, records this server's stages of the
/// sampled requests the call sent (received: set by the transmission loop).
async fn traced<T>(f: impl std::future::Future<Output = T>) -> T {
    use tessera_wire::trace;
    let Ok(received) = crate::trace::RECEIVED.try_with(|r| *r) else { return f.await };
    let (out, sampled) = tessera_client::trace::collect(f).await;
    let now = trace::now_ns();
    for (client, seq) in sampled {
        trace::record(trace::stage::NBD_RECV, client, seq, trace::At::default(), received);
        trace::record(trace::stage::NBD_REPLY, client, seq, trace::At::default(), now);
    }
    out
}

/// How long an open waits for a mon that cannot answer (connection refused, timeout, 5xx).
pub const MON_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Every volume of the cluster, by name, looked up on the mon at each open (a resized
/// volume shows its new size on the next connection).
pub struct VolumeCatalog {
    client: Client,
}

impl VolumeCatalog {
    /// `client` must have been built with [`Client::connect`] (it needs the mon).
    pub fn new(client: Client) -> VolumeCatalog {
        VolumeCatalog { client }
    }
}

#[async_trait]
impl Catalog for VolumeCatalog {
    /// Waits up to [`MON_PATIENCE`] while the mon cannot answer (down, restarting, cut off):
    /// NBD has no "try again" reply, and clients (libnbd) report `NBD_REP_ERR_UNKNOWN` as
    /// "no export named ...", so answering at once would tell them the volume does not exist.
    async fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError> {
        let deadline = tokio::time::Instant::now() + MON_PATIENCE;
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match self.client.open_volume(name).await {
                Ok(v) => return Ok(Arc::new(VolumeExport::new(v))),
                Err(ClientError::Mon { source, .. }) if source.status() == Some(404) => return Err(OpenError::NotFound(name.into())),
                Err(e @ (ClientError::BadVolume { .. } | ClientError::Busy { .. })) => return Err(OpenError::Invalid(e.to_string())),
                Err(ClientError::Mon { source, .. })
                    if source.status().is_none_or(|s| s >= 500) && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(export = name, "the mon cannot answer yet ({source}); retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(OpenError::Unavailable(e.to_string())),
            }
        }
    }

    async fn list(&self) -> Result<Vec<ExportEntry>, OpenError> {
        let mon = self.client.mon().ok_or_else(|| OpenError::Unavailable("this client has no mon".into()))?;
        let volumes = mon.volumes().await.map_err(|e| OpenError::Unavailable(e.to_string()))?;
        Ok(volumes
            .into_iter()
            .map(|v| ExportEntry { description: format!("{} bytes, pool {}", v.volume.size, v.pool), name: v.volume.name })
            .collect())
    }
}
