//! The OSD's data port: accepts TCP connections from clients and peer OSDs and turns their
//! frames into store events.
//!
//! One connection carries either client requests (answered on the same connection, in
//! completion order, tagged with the request id) or Raft batches from one peer OSD. Any
//! malformed frame or message closes the connection (the peer reconnects); the OSD keeps
//! serving everyone else.

use bytes::BytesMut;
use tessera_wire::msg::{decode_raft_items, MAX_DATA, MAX_META};
use tessera_wire::{kind, trace, FrameDecoder, FrameHeader, RaftBatch, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::reply::{Outgoing, Reply};
use crate::store::{Event, EventSender};

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, osd: u32, events: EventSender) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(why) = connection(stream, osd, events).await {
                        tracing::info!(%peer, "closing connection: {why}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, osd: u32, events: EventSender) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(write_responses(wr, rx));
    let mut dec = FrameDecoder::new(MAX_META, MAX_DATA);
    let mut buf = BytesMut::with_capacity(256 << 10);
    let result = loop {
        match dec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let ev = match frame.kind {
                    kind::REQUEST => match Request::decode(&frame.meta) {
                        Ok(req) => {
                            if trace::sampled(req.client, req.seq) {
                                trace::record(
                                    trace::stage::OSD_RECV,
                                    req.client,
                                    req.seq,
                                    trace::At { node: Some(osd), entry: None },
                                    trace::now_ns(),
                                );
                            }
                            Event::Request { req, data: frame.data, reply: Reply::new(tx.clone(), frame.request_id) }
                        }
                        Err(e) => break Err(e.to_string()),
                    },
                    kind::RAFT => {
                        let batch = match RaftBatch::decode(&frame.meta) {
                            Ok(b) => b,
                            Err(e) => break Err(e.to_string()),
                        };
                        if batch.to != osd {
                            break Err(format!("raft batch for osd {} arrived at osd {osd}", batch.to));
                        }
                        match decode_raft_items(&frame.data) {
                            Ok(items) => Event::Raft { from: batch.from, items },
                            Err(e) => break Err(e.to_string()),
                        }
                    }
                    k => break Err(format!("unexpected frame kind {k}")),
                };
                if events.send(ev).is_err() {
                    break Err("OSD is shutting down".into());
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        if buf.capacity() - buf.len() < 64 << 10 {
            buf.reserve(256 << 10);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => break Ok(()),
            Ok(0) => break Err("connection closed mid-frame".into()),
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    drop(tx);
    writer.abort();
    result
}

/// Frames responses as they complete, coalescing whatever is queued into one write.
async fn write_responses(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut buf = Vec::with_capacity(256 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some((id, resp, data)) = next.take() {
            let meta = resp.encode();
            let header = FrameHeader::new(kind::RESPONSE, 0, id, &meta, &[&data]);
            buf.extend_from_slice(&header.0);
            buf.extend_from_slice(&meta);
            buf.extend_from_slice(&data);
            if buf.len() < (4 << 20) {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}
