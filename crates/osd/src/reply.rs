//! Answering a client request: the response goes to the writer task of the connection it
//! came on, tagged with the request's id (responses leave in completion order).

use bytes::Bytes;
use tessera_wire::{Response, Status};
use tokio::sync::mpsc;

/// A response ready to be framed.
#[derive(Debug)]
pub struct Outgoing {
    pub request_id: u64,
    pub resp: Response,
    pub data: Bytes,
    /// Empty, or the checksum table of `data` (whole 4 KiB blocks): sent with
    /// [`tessera_wire::FLAG_BLOCK_CRCS`] instead of one checksum of the data.
    pub crcs: Bytes,
}

/// The one-shot right to answer a request. Dropping it without answering leaves the client
/// to time out, so every path answers.
#[derive(Debug)]
pub struct Reply {
    tx: mpsc::UnboundedSender<Outgoing>,
    request_id: u64,
    /// The connection's in-flight budget this request holds until it is answered.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reply {
    pub fn new(tx: mpsc::UnboundedSender<Outgoing>, request_id: u64) -> Self {
        Self { tx, request_id, _budget: None }
    }
    /// A reply that holds `budget` until it is sent (or dropped).
    pub fn with_budget(tx: mpsc::UnboundedSender<Outgoing>, request_id: u64, budget: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self { tx, request_id, _budget: Some(budget) }
    }
    /// Sends the response; a closed connection is not an error (the client retries).
    pub fn send(self, resp: Response, data: Bytes) {
        self.send_blocks(resp, data, Bytes::new())
    }
    /// Sends block data with its checksum table (see [`Outgoing::crcs`]).
    pub fn send_blocks(self, resp: Response, data: Bytes, crcs: Bytes) {
        let _ = self.tx.send(Outgoing { request_id: self.request_id, resp, data, crcs });
    }
    pub fn ok(self, epoch: u64) {
        self.send(Response::ok(epoch), Bytes::new())
    }
    pub fn error(self, status: Status, epoch: u64, message: impl Into<String>) {
        self.send(Response::error(status, epoch, message), Bytes::new())
    }
    /// The write's snapshot context is older than the PG's `seq` for the volume.
    pub fn stale_context(self, seq: u64, epoch: u64) {
        let mut r = Response::error(Status::StaleContext, epoch, format!("snapshot context older than the volume's newest snapshot {seq}"));
        r.snapc = seq;
        self.send(r, Bytes::new())
    }

    pub fn not_leader(self, leader: Option<u32>, epoch: u64) {
        let mut r = Response::error(Status::NotLeader, epoch, "not the leader of this pg");
        r.leader = leader;
        self.send(r, Bytes::new())
    }
}
