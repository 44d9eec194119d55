//! Outgoing Raft batches with write payloads carried by reference.
//!
//! A batch is one destination's encoded [`tessera_wire::RaftItem`]s, held as an ordered list
//! of buffers: the small parts (item headers, the protobuf fields of each message and entry)
//! copied together, and each large entry payload as the very `Bytes` the Raft log holds. The
//! transport sends the list with vectored writes, so a payload is not copied in user space on
//! its way from the leader's log to the socket (before, it was copied by protobuf's encoder,
//! into the batch, and into the connection's write buffer).
//!
//! The bytes on the wire are a valid protobuf encoding of each message, read by the
//! receiver's ordinary parser (zero-copy there too: entries' data are slices of the received
//! frame). They differ from `write_to_bytes` only in field order: a message's entries come
//! after its other fields, and an entry's data after its other fields, which protobuf
//! parsers accept (fields may come in any order; repeated fields keep theirs).

use bytes::{BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tessera_wire::WirePg;

use crate::vectored::Parts;

/// Largest batch data per frame: well under the receiver's `MAX_DATA` (one Raft message is
/// at most `max_size_per_msg` plus one entry). A single larger item travels alone.
pub const FRAME_ITEMS_BYTES: usize = 8 << 20;

/// One frame's worth of encoded items, as buffers to send in order.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub parts: Vec<Bytes>,
    len: usize,
}

impl Batch {
    /// A batch of already encoded items.
    pub fn from_bytes(items: Bytes) -> Batch {
        Batch { len: items.len(), parts: vec![items] }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The items in one buffer (in-process delivery and tests; copies).
    pub fn to_bytes(&self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts[0].clone();
        }
        let mut b = BytesMut::with_capacity(self.len);
        for p in &self.parts {
            b.put_slice(p);
        }
        b.freeze()
    }
}

/// Builds the batches for one destination: items are appended whole, and a new batch
/// (frame) is started when the current one would pass [`FRAME_ITEMS_BYTES`].
#[derive(Default)]
pub struct BatchBuilder {
    done: Vec<Batch>,
    /// The current batch.
    cur: Parts,
}

impl BatchBuilder {
    /// Appends an item whose message is already encoded (copied).
    pub fn put_item(&mut self, pg: WirePg, msg: &[u8]) {
        self.start_item(12 + msg.len());
        self.put_header(pg, msg.len());
        self.cur.copy(msg);
    }

    /// Appends a Raft message as one item, its entries' large payloads by reference.
    pub fn put_message(&mut self, pg: WirePg, mut m: Message) -> Result<(), protobuf::ProtobufError> {
        let entries = std::mem::take(&mut m.entries);
        let head = m.write_to_bytes()?;
        // Each entry: the field prefix and the entry's other fields (small), then its data.
        let mut pieces = Vec::with_capacity(entries.len());
        let mut len = head.len();
        for mut e in entries.into_iter() {
            let data = std::mem::take(&mut e.data);
            let mut fields = e.write_to_bytes()?;
            if !data.is_empty() {
                fields.push(ENTRY_DATA_TAG);
                put_varint(&mut fields, data.len() as u64);
            }
            let inner = fields.len() + data.len();
            let mut piece = Vec::with_capacity(fields.len() + 11);
            piece.push(MESSAGE_ENTRIES_TAG);
            put_varint(&mut piece, inner as u64);
            piece.extend_from_slice(&fields);
            len += piece.len() + data.len();
            pieces.push((piece, data));
        }
        self.start_item(12 + len);
        self.put_header(pg, len);
        self.cur.copy(&head);
        for (piece, data) in pieces {
            self.cur.copy(&piece);
            self.cur.push(data);
        }
        Ok(())
    }

    /// The batches, in order (none if nothing was put).
    pub fn finish(mut self) -> Vec<Batch> {
        self.cut();
        self.done
    }

    fn start_item(&mut self, item_len: usize) {
        if !self.cur.is_empty() && self.cur.len() + item_len > FRAME_ITEMS_BYTES {
            self.cut();
        }
    }

    fn put_header(&mut self, pg: WirePg, msg_len: usize) {
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&pg.pool.to_le_bytes());
        h[4..8].copy_from_slice(&pg.index.to_le_bytes());
        h[8..12].copy_from_slice(&(msg_len as u32).to_le_bytes());
        self.cur.copy(&h);
    }

    fn cut(&mut self) {
        let len = self.cur.len();
        if len > 0 {
            self.done.push(Batch { parts: self.cur.take(), len });
        }
    }
}

/// `Message.entries` (field 7, length-delimited).
const MESSAGE_ENTRIES_TAG: u8 = 7 << 3 | 2;
/// `Entry.data` (field 4, length-delimited).
const ENTRY_DATA_TAG: u8 = 4 << 3 | 2;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, EntryType, MessageType};

    fn message(entries: &[(u64, usize)], context: usize) -> Message {
        let mut m = Message {
            to: 2,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            commit: 40,
            context: vec![9u8; context].into(),
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgAppend);
        for (i, (term, len)) in entries.iter().enumerate() {
            let mut e = Entry {
                term: *term,
                index: 42 + i as u64,
                data: (0..*len).map(|b| b as u8).collect::<Vec<u8>>().into(),
                ..Default::default()
            };
            e.set_entry_type(if i % 3 == 2 { EntryType::EntryConfChangeV2 } else { EntryType::EntryNormal });
            if i % 2 == 1 {
                e.context = vec![1, 2, 3].into();
            }
            m.entries.push(e);
        }
        m
    }

    /// The messages of items of pool 1, and the other items as they are.
    fn decode(batches: &[Batch]) -> (Vec<(WirePg, Message)>, Vec<tessera_wire::RaftItem>) {
        let items = batches.iter().flat_map(|b| tessera_wire::msg::decode_raft_items(&b.to_bytes()).unwrap());
        let (msgs, other): (Vec<_>, Vec<_>) = items.partition(|i| i.pg.pool == 1);
        (msgs.into_iter().map(|i| (i.pg, Message::parse_from_carllerche_bytes(&i.msg).unwrap())).collect(), other)
    }

    proptest! {
        /// Whatever the messages, the receiver's parser reads back exactly what was sent,
        /// and the encoding has the length protobuf computes for it.
        #[test]
        fn messages_read_back_as_sent(
            msgs in proptest::collection::vec((proptest::collection::vec((1u64..5, 0usize..9000), 0..6), 0usize..40), 1..5),
        ) {
            let mut b = BatchBuilder::default();
            let mut sent = Vec::new();
            for (i, (entries, ctx)) in msgs.iter().enumerate() {
                let m = message(entries, *ctx);
                let pg = WirePg { pool: 1, index: i as u32 };
                sent.push((pg, m.clone()));
                b.put_message(pg, m).unwrap();
            }
            b.put_item(WirePg { pool: 5, index: 0 }, b"raw");
            let batches = b.finish();
            let total: usize = batches.iter().map(|b| b.len()).sum();
            prop_assert_eq!(total, batches.iter().map(|b| b.to_bytes().len()).sum::<usize>());
            let (got, other) = decode(&batches);
            prop_assert_eq!(other.len(), 1);
            prop_assert_eq!(other[0].pg, WirePg { pool: 5, index: 0 });
            prop_assert_eq!(&other[0].msg[..], b"raw");
            prop_assert_eq!(got.len(), sent.len());
            for ((gp, gm), (sp, sm)) in got.iter().zip(&sent) {
                prop_assert_eq!(gp, sp);
                prop_assert_eq!(gm, sm);
                prop_assert_eq!(sm.compute_size() as usize, sm.write_to_bytes().unwrap().len());
            }
        }
    }

    #[test]
    fn large_payloads_are_the_log_buffers_themselves() {
        let m = message(&[(5, 128 << 10), (5, 100), (5, 4096)], 0);
        let payloads: Vec<Bytes> = m.entries.iter().map(|e| e.data.clone()).collect();
        let mut b = BatchBuilder::default();
        b.put_message(WirePg { pool: 1, index: 0 }, m).unwrap();
        let batches = b.finish();
        assert_eq!(batches.len(), 1);
        let by_ref: Vec<&Bytes> =
            batches[0].parts.iter().filter(|p| payloads.iter().any(|d| d.as_ptr() == p.as_ptr() && d.len() == p.len())).collect();
        assert_eq!(by_ref.len(), 2, "the 128 KiB and 4 KiB payloads are not copied; the 100-byte one is");
    }

    #[test]
    fn batches_are_cut_into_frames_at_item_boundaries() {
        let mut b = BatchBuilder::default();
        let big = vec![7u8; 3 << 20];
        for i in 0..7 {
            b.put_item(WirePg { pool: 1, index: i }, &big);
        }
        b.put_item(WirePg { pool: 1, index: 99 }, &vec![1u8; FRAME_ITEMS_BYTES + 1]);
        let frames = b.finish();
        assert!(frames.len() >= 4);
        let mut n = 0;
        for f in &frames {
            let decoded = tessera_wire::msg::decode_raft_items(&f.to_bytes()).unwrap();
            assert!(f.len() <= FRAME_ITEMS_BYTES || decoded.len() == 1, "only a single oversized item may exceed the limit");
            assert!(f.len() <= tessera_wire::msg::MAX_DATA as usize);
            n += decoded.len();
        }
        assert_eq!(n, 8);
        assert!(BatchBuilder::default().finish().is_empty());
    }
}
