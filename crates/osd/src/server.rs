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
use tokio::io::AsyncReadExt;
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

/// In-flight budget of one client connection, in units of one request plus one per 64 KiB of
/// payload: once it is spent the connection is not read until answers free some, so a
/// client that sends faster than the OSD answers is slowed by TCP, not queued in memory.
pub const CONNECTION_BUDGET: usize = 2048;
const UNIT_BYTES: usize = 64 << 10;

async fn connection(stream: TcpStream, osd: u32, events: EventSender) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTION_BUDGET));
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
                            let units = (1 + frame.data.len() / UNIT_BYTES).min(CONNECTION_BUDGET) as u32;
                            let Ok(permit) = budget.clone().acquire_many_owned(units).await else { break Err("shutting down".into()) };
                            Event::Request {
                                req,
                                data: frame.data,
                                crcs: frame.block_crcs,
                                reply: Reply::with_budget(tx.clone(), frame.request_id, permit),
                            }
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

/// Frames responses as they complete, coalescing whatever is queued into one vectored
/// write (read payloads are sent from their own buffers).
async fn write_responses(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut out = crate::vectored::Parts::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(Outgoing { request_id: id, resp, data, crcs }) = next.take() {
            let meta = resp.encode();
            let header = FrameHeader::for_data(kind::RESPONSE, 0, id, &meta, &crcs, &data);
            out.copy(&header.0);
            out.copy(&meta);
            out.push(crcs);
            out.push(data);
            if out.len() < (4 << 20) {
                next = rx.try_recv().ok();
            }
        }
        if crate::vectored::write_parts(&mut out, &mut wr).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_wire::{Frame, OpCode, WirePg};
    use tokio::io::AsyncWriteExt;

    /// A client that sends more than its connection's budget without waiting: only
    /// CONNECTION_BUDGET requests reach the store until answers free budget again (the rest
    /// wait in the socket, not in memory).
    #[test]
    fn a_connection_is_not_read_past_its_in_flight_budget() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = crate::store::event_channel();
        rt.spawn(serve(listener, 0, tx));
        let sent = CONNECTION_BUDGET + 500;
        rt.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = Request {
                op: OpCode::Read,
                pg: WirePg { pool: 1, index: 0 },
                epoch: 1,
                volume: 1,
                object: 0,
                snap: u64::MAX,
                offset: 0,
                len: 4096,
                client: 1,
                seq: 0,
                floor: 0,
                snapc: 0,
            };
            for i in 0..sent as u64 {
                let f = Frame {
                    kind: kind::REQUEST,
                    flags: 0,
                    request_id: i,
                    meta: bytes::Bytes::copy_from_slice(&Request { seq: i, ..req }.encode()),
                    data: Default::default(),
                    block_crcs: Default::default(),
                };
                s.write_all(&f.encode()).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let collect = |rx: &mut crate::store::EventReceiver, want: usize| {
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::time::Instant::now() < deadline && got.len() < want + 1 {
                match rx.try_recv() {
                    Ok(Event::Request { reply, .. }) => got.push(reply),
                    _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            got
        };
        let mut held = collect(&mut rx, CONNECTION_BUDGET);
        assert_eq!(held.len(), CONNECTION_BUDGET, "the store got exactly the budget's worth");
        held.truncate(held.len() - 100); // 100 answered (dropped replies free their budget)
        let more = collect(&mut rx, 100);
        assert_eq!(more.len(), 100, "answers free budget for as many more");
        drop((held, more));
    }
}
