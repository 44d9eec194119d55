//! Repair of a PG replica whose data failed a checksum: the rules, sans-IO. The store runs
//! them (`store/repair.rs`).
//!
//! # Protocol
//! 1. **Damage.** A checksum failure in the replica's data of a PG (a client read on the
//!    leader, a scrub digest, or a copy another replica pulls from it) marks the PG
//!    *damaged*: `damaged/<pool>.<index>` in the engine's global metadata (so a restart
//!    remembers it), committed before anything else happens. The read that hit it is
//!    answered `Retry` (the client asks again, by then at a healthy leader), never with the
//!    bytes and not `Io`, unless no healthy replica can take over (below).
//! 2. **Hand-over.** A damaged leader transfers leadership ([`handover_target`]) to a voter
//!    that is not itself repairing (it has asked for a ticket in the last 10 s), preferring
//!    the most caught-up one, once it has led for a second (so that damaged followers have
//!    announced themselves: leadership does not bounce between damaged replicas); raft-rs
//!    then brings the target up to date and has it campaign at once. The old leader repairs
//!    once it is a follower. Safe: a leadership transfer is ordinary Raft (the target still
//!    needs a majority's votes, the old leader steps down on the higher term).
//! 3. **Ticket.** A damaged follower stops accepting new log entries (it drops appends, as a
//!    lossy network would: safe) and asks the leader for a ticket (`OpCode::Ticket`, with its
//!    last log index `last`). The leader answers only if it leads, is not damaged, the group
//!    keeps a quorum of active voters without the requester ([`quorum_without`]), and its
//!    durable applied index has reached `last`; it then pins its image at its durable
//!    applied index `s` ([`crate::snapshot::make`]), **reads the whole image with checksum
//!    verification** (a copy of a corrupt image would fail half way, after the follower
//!    dropped its own data; this way a leader that is damaged too finds out first, marks
//!    itself and refuses), and returns the Raft snapshot (index `s`, its term, the
//!    configuration, the ticket naming the pin).
//! 4. **Accept.** The follower accepts only if `s >= last` ([`ticket_covers_log`]), else it
//!    asks again later (the leader's pin of a refused ticket idles out).
//! 5. **Reinstall.** It removes its in-memory peer (waiting requests are redirected; Raft
//!    messages for the PG are ignored meanwhile and never re-create the replica), waits for
//!    reads it dispatched as leader to finish, and runs the snapshot install
//!    ([`crate::snapshot::install`]): drop the PG and its log keeping term and vote (with the
//!    `installing` marker), copy every version from the pinned image, then one transaction
//!    with log start `s`, configuration, hard state (`commit = s`), applied index, dedup
//!    table, and the deletion of both the marker and `damaged/<pg>`. Then it reopens the
//!    peer from storage.
//!
//! # Why accepting `s >= last` is safe
//! Raft's safety rests on two things a replica must never lose: its term and vote (kept by
//! the install), and log entries it acknowledged (a leader may have counted them towards a
//! commit). Every entry this replica ever acknowledged has an index `<= last` (it persists
//! before acknowledging, and stopped taking appends before measuring `last`). The leader's
//! entries up to `s >= last` are committed (it applied them), so at each index `<= s`
//! exactly one entry can ever be committed, and it is the one in the leader's image: an
//! acknowledged entry of ours at such an index was either that same entry (its effect is in
//! the image) or one that can never commit (dropping it changes nothing). Restarting the log
//! at `s` with `commit = s` is therefore exactly a log compaction of a log that is already
//! committed up to `s`: what Raft's InstallSnapshot does for any follower, and allowed at
//! any time. The replica's matched index at the leader is at most `last <= s`, so the leader
//! never believes it holds an entry it does not.
//!
//! # Crash safety
//! The damaged flag is durable before the repair starts and is removed only in the
//! transaction that completes an install. A crash before the install's first step leaves a
//! replica with its log and the flag: it repairs again on restart. A crash after it leaves
//! the `installing` marker (the replica refuses to vote, its log is empty) holding the
//! snapshot index `s` it accepted: it asks for a ticket again, now covering `s` (every entry
//! it ever acknowledged is at or below it; see `Peer::acknowledged_bound`). It cannot wait
//! for the leader to notice: the leader may believe it up to date (matched at its old last
//! index) and an idle PG sends it nothing to reject. A Raft snapshot install, if one comes
//! first, also clears the flag. A failed copy (source gone, pin expired) is treated the same
//! way as a crash.
//!
//! # Limits
//! If every replica holds a corrupt copy of a block there is nothing to repair from: each
//! damaged replica that leads hands over while a healthy-looking voter remains; the last one
//! keeps leading and reads of the corrupt blocks fail with `Io` (other objects are served).
//! Likewise while the only other replicas are damaged or down. A checksum failure in a log
//! entry's data (`LogChecksum`) is not repaired here: a leader that must send the entry sends
//! a snapshot instead (raft-rs), but a replica that must still apply it after a restart stops
//! (raft-rs treats that read error as fatal).

use bytes::Bytes;
use tessera_engine::PgId;

const DAMAGED_PREFIX: &str = "damaged/";

/// Global metadata key marking `pg` damaged on this OSD.
pub fn damaged_key(pg: PgId) -> Bytes {
    Bytes::from(format!("{DAMAGED_PREFIX}{}.{}", pg.pool, pg.index))
}

pub fn parse_damaged_key(k: &[u8]) -> Option<PgId> {
    let s = std::str::from_utf8(k).ok()?.strip_prefix(DAMAGED_PREFIX)?;
    let (a, b) = s.split_once('.')?;
    Some(PgId::new(a.parse().ok()?, b.parse().ok()?))
}

/// Whether a repair ticket at index `s` may replace a log whose last index is `last` (see
/// the module docs: every entry the replica may have acknowledged is then committed and
/// contained in the image).
pub fn ticket_covers_log(s: u64, last: u64) -> bool {
    s >= last
}

/// Whether the voters other than `requester` that are active (the leader counts itself)
/// still form a majority of `voters`: only then may the leader let `requester` drop out for
/// a repair without stalling the group.
pub fn quorum_without(voters: &[u64], requester: u64, active: impl Fn(u64) -> bool) -> bool {
    let up = voters.iter().filter(|v| **v != requester && active(**v)).count();
    up * 2 > voters.len()
}

/// The voter a damaged leader `me` hands leadership to: not itself, not `excluded` (known to
/// be repairing), the most caught-up one (`matched`), lowest id among equals.
pub fn handover_target(me: u64, voters: &[u64], matched: impl Fn(u64) -> u64, excluded: impl Fn(u64) -> bool) -> Option<u64> {
    voters.iter().copied().filter(|v| *v != me && !excluded(*v)).max_by_key(|v| (matched(*v), std::cmp::Reverse(*v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_keys_round_trip() {
        let pg = PgId::new(3, 17);
        assert_eq!(parse_damaged_key(&damaged_key(pg)), Some(pg));
        assert_eq!(parse_damaged_key(b"pg/3.17"), None);
        assert_eq!(parse_damaged_key(b"damaged/3"), None);
    }

    #[test]
    fn a_ticket_must_cover_every_entry_the_replica_holds() {
        assert!(ticket_covers_log(10, 10));
        assert!(ticket_covers_log(11, 10));
        assert!(!ticket_covers_log(9, 10), "entry 10 may have been acknowledged and not be in the image");
    }

    #[test]
    fn the_group_keeps_a_quorum_without_the_repairing_replica() {
        assert!(quorum_without(&[1, 2, 3], 3, |_| true));
        assert!(!quorum_without(&[1, 2, 3], 3, |v| v != 2), "only the leader would be left");
        assert!(!quorum_without(&[1, 2], 2, |_| true));
        assert!(quorum_without(&[1, 2, 3, 4, 5], 5, |v| v != 4));
    }

    #[test]
    fn handover_prefers_the_most_caught_up_healthy_voter() {
        let matched = |v: u64| [0, 50, 90, 90, 99][v as usize];
        assert_eq!(handover_target(1, &[1, 2, 3, 4], matched, |_| false), Some(4));
        assert_eq!(handover_target(1, &[1, 2, 3, 4], matched, |v| v == 4), Some(2), "2 and 3 tie: lower id");
        assert_eq!(handover_target(1, &[1, 2, 3, 4], matched, |v| v == 4 || v == 2), Some(3));
        assert_eq!(handover_target(1, &[1, 4], matched, |v| v == 4), None);
        assert_eq!(handover_target(1, &[1], matched, |_| false), None);
    }
}
