//! Serving [`tessera_wire::OpCode::Digest`]: any replica (leader or not, no read index)
//! digests a pinned image of its PG on the blocking pool ([`crate::scrub`]), page by page
//! under one pin, and releases the pin after the last page (or when it idles out).

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use tessera_engine::{ObjectKey, PgId};
use tessera_wire::{Request, Response, Status};

use super::{Event, Store};
use crate::reply::Reply;

/// Pins taken for digests (only these may be named to continue one).
#[derive(Default)]
pub(super) struct DigestPins(Mutex<HashSet<u64>>);

impl Store {
    pub(super) fn serve_digest(&self, req: Request, reply: Reply) {
        let epoch = self.map.epoch;
        let pg = PgId::new(req.pg.pool, req.pg.index);
        if let Some(source) = self.repairing.get(&pg) {
            return reply.error(Status::Retry, epoch, format!("pg {pg} is being repaired on osd {} from osd {source}", self.osd));
        }
        let Some(p) = self.peers.get(&pg) else {
            return reply.error(Status::NoPg, epoch, format!("osd {} has no replica of pg {pg}", self.osd));
        };
        if p.installing() {
            return reply.error(Status::Retry, epoch, format!("a snapshot of pg {pg} is being installed on osd {}", self.osd));
        }
        let damaged = self.damaged.contains_key(&pg);
        let (engine, events, pins) = (self.engine.clone(), self.events.clone(), self.digest_pins.clone());
        self.rt.spawn_blocking(move || {
            let (pin, applied) = if req.snapc == 0 {
                match engine.pin_pg(pg) {
                    Ok(x) => {
                        pins.0.lock().insert(x.0);
                        x
                    }
                    Err(e) => return reply.error(Status::Io, epoch, e.to_string()),
                }
            } else {
                let known = pins.0.lock().contains(&req.snapc);
                match engine.pins().into_iter().find(|(id, p, _)| known && *id == req.snapc && *p == pg) {
                    Some((id, _, applied)) => (id, applied),
                    None => {
                        pins.0.lock().remove(&req.snapc);
                        return reply.error(Status::Retry, epoch, format!("pg {pg}: digest image {} is gone; start over", req.snapc));
                    }
                }
            };
            let release = || {
                pins.0.lock().remove(&pin);
                engine.unpin(pin);
            };
            let start = ObjectKey::at_snap(req.volume, req.object, req.snap);
            match crate::scrub::digest_page(&engine, pg, pin, applied, start) {
                Ok((mut page, corrupt)) => {
                    if let Some(first) = corrupt.first() {
                        let what = format!("{first}; found by a scrub, {} corrupt version(s) in this page", corrupt.len());
                        let _ = events.send(Event::Damaged { pg, what, reply: None });
                    }
                    page.damaged = damaged || !corrupt.is_empty();
                    if page.next.is_none() {
                        release();
                    }
                    reply.send(Response::ok(epoch), Bytes::from(page.encode()))
                }
                Err((status, why)) => {
                    release();
                    reply.error(status, epoch, why)
                }
            }
        });
    }
}
