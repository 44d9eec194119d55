//! [`NbdServer`]: accepts TCP connections and serves each one (handshake, then
//! transmission) until the client leaves or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ConnError;
use crate::export::Catalog;
use crate::handshake::{self, Outcome};
use crate::option::BlockSizes;
use crate::stats::{Stats, StatsSnapshot};
use crate::transmission;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Minimum block size advertised and enforced: 1 (any byte range; partial 4 KiB blocks
    /// are read-modify-written by the client library), 512 or 4096. Requests not aligned
    /// to it are answered `EINVAL`.
    pub min_block: u32,
    /// The export served to clients that ask for the empty name.
    pub default_export: Option<String>,
    /// A connection that has not picked an export within this long is closed.
    pub handshake_timeout: Duration,
    /// In-flight budget of one connection: one unit per request plus one per 64 KiB of
    /// payload or read data (1,024 units: up to 1,024 small requests or 64 MiB).
    pub max_in_flight_units: usize,
    /// The same budget for all connections together (8,192 units: 512 MiB).
    pub max_in_flight_units_total: usize,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A client that reads no reply for this long is disconnected.
    pub reply_timeout: Duration,
    /// At shutdown, how long connections get to answer the requests they started.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            min_block: 1,
            default_export: None,
            handshake_timeout: Duration::from_secs(30),
            max_in_flight_units: 1024,
            max_in_flight_units_total: 8192,
            max_connections: 1024,
            reply_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// Checks the values a user can set.
    pub fn validate(&self) -> Result<(), String> {
        if ![1, 512, 4096].contains(&self.min_block) {
            return Err(format!("minimum block size {} must be 1, 512 or 4096", self.min_block));
        }
        Ok(())
    }

    pub fn block_sizes(&self) -> BlockSizes {
        BlockSizes::new(self.min_block)
    }
}

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) cfg: ServerConfig,
    pub(crate) stats: Arc<Stats>,
    /// Becomes `true` when the server shuts down.
    pub(crate) stop: watch::Sender<bool>,
    /// The server-wide in-flight budget (`max_in_flight_units_total`).
    pub(crate) budget: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn new(catalog: Arc<dyn Catalog>, cfg: ServerConfig) -> Shared {
        let (stop, _) = watch::channel(false);
        let budget = Arc::new(tokio::sync::Semaphore::new(cfg.max_in_flight_units_total.max(1)));
        Shared { catalog, cfg, stats: Arc::default(), stop, budget }
    }
}

/// A running NBD server.
pub struct NbdServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl NbdServer {
    /// Listens on `addr` and serves exports of `catalog`. Must be called inside a tokio
    /// runtime. Fails on an invalid config or when the address cannot be bound.
    pub async fn start(addr: SocketAddr, catalog: Arc<dyn Catalog>, cfg: ServerConfig) -> std::io::Result<NbdServer> {
        cfg.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(catalog, cfg));
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(NbdServer { addr, shared, task })
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Stops accepting; each connection stops reading requests, answers the ones it
    /// started, and closes; connections still busy after `shutdown_grace` are dropped.
    /// Returns when all connections are closed.
    pub async fn shutdown(self) {
        let _ = self.shared.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    let mut stop = shared.stop.subscribe();
    loop {
        while conns.try_join_next().is_some() {}
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        if shared.stats.connections_open.load(std::sync::atomic::Ordering::Relaxed) >= shared.cfg.max_connections as u64 {
            tracing::warn!(%peer, limit = shared.cfg.max_connections, "too many connections; closing the new one");
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        conns.spawn(async move {
            if let Err(e) = serve_connection(sock, shared).await {
                tracing::info!(%peer, "connection closed: {e}");
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

/// Serves one connection of any byte stream (TCP in production; in-memory pipes in tests).
pub(crate) async fn serve_connection<S>(mut stream: S, shared: Arc<Shared>) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Stats::add(&shared.stats.connections_total, 1);
    Stats::add(&shared.stats.connections_open, 1);
    let result = async {
        let timeout = shared.cfg.handshake_timeout;
        let outcome = match tokio::time::timeout(timeout, handshake::negotiate(&mut stream, &shared)).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::HandshakeTimeout(timeout)),
        };
        let Outcome::Serve(export) = outcome else {
            return Ok(());
        };
        tracing::debug!(export = export.name(), size = export.size(), "transmission starts");
        let (rd, wr) = tokio::io::split(stream);
        transmission::serve(rd, wr, export, shared.clone()).await
    }
    .await;
    shared.stats.connections_open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if matches!(result, Err(ConnError::Protocol(_))) {
        Stats::add(&shared.stats.violations, 1);
    }
    result
}

/// Serves one in-memory stream with a private server state (tests and fuzzing). Returns how
/// the connection ended.
pub async fn serve_stream<S>(stream: S, catalog: Arc<dyn Catalog>, cfg: ServerConfig) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection(stream, Arc::new(Shared::new(catalog, cfg))).await
}

/// Serves one connection whose client sends exactly `input` and then closes its side;
/// returns how the connection ended and every byte the server sent. For fuzzing and
/// property tests: any input must end (no hang, no panic).
pub async fn serve_bytes(input: Vec<u8>, catalog: Arc<dyn Catalog>, cfg: ServerConfig) -> (Result<(), ConnError>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(client);
    let feed = async move {
        // The server may close before reading everything; that is fine.
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
    };
    let mut output = Vec::new();
    let (result, _, _) = tokio::join!(serve_stream(server, catalog, cfg), feed, rd.read_to_end(&mut output));
    (result, output)
}

/// Returns once the server is shutting down.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Dropping the guard `wait_for` returns here keeps callers' futures `Send`. An error
    // means the sender is gone, i.e. the server too.
    let _ = rx.wait_for(|s| *s).await;
}
