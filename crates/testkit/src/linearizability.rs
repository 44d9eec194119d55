//! A checker for histories of reads and writes on independent registers (4 KiB blocks).
//!
//! Every write stores a value no other write stores, so a read names the write it saw.
//! A history is linearizable per register (and registers compose) when:
//! 1. **No invented values**: a read returns the initial value or the value of a write that
//!    was invoked before the read completed.
//! 2. **No stale reads**: no write `W2` was acknowledged before the read was invoked while
//!    starting after the write the read saw completed (then `W2` must be ordered between
//!    them, and the read returned an overwritten value). For a read of the initial value:
//!    no write was acknowledged before the read was invoked.
//! 3. **No going back**: if read `R1` completed before read `R2` was invoked, `R2` must not
//!    see a write that completed before the write `R1` saw was invoked.
//!
//! A write that failed or timed out may or may not have taken effect: it has no completion
//! (it stays concurrent with everything after its invocation), and reads may see it.

use std::collections::HashMap;
use std::time::Instant;

/// The value of a block never written.
pub const INITIAL: u64 = 0;

#[derive(Clone, Debug)]
pub enum Op {
    /// `value` is unique per history and never [`INITIAL`]; `acked` is false when the write
    /// failed or its outcome is unknown.
    Write { value: u64, acked: bool },
    /// A successful read that returned `value`.
    Read { value: u64 },
}

#[derive(Clone, Debug)]
pub struct Event {
    pub register: u64,
    pub op: Op,
    pub invoked: Instant,
    pub completed: Instant,
}

/// Checks the history; returns every violation found, described.
pub fn check(history: &[Event]) -> Result<(), Vec<String>> {
    let mut by_reg: HashMap<u64, Vec<&Event>> = HashMap::new();
    for e in history {
        by_reg.entry(e.register).or_default().push(e);
    }
    let mut errors = Vec::new();
    for (reg, events) in by_reg {
        let writes: HashMap<u64, &Event> = events
            .iter()
            .filter_map(|e| match e.op {
                Op::Write { value, .. } => Some((value, *e)),
                _ => None,
            })
            .collect();
        // Completion of an acknowledged write; `None` for failed ones (never completes).
        let done = |w: &Event| match w.op {
            Op::Write { acked: true, .. } => Some(w.completed),
            _ => None,
        };
        let reads: Vec<(&Event, u64)> = events
            .iter()
            .filter_map(|e| match e.op {
                Op::Read { value } => Some((*e, value)),
                _ => None,
            })
            .collect();
        for (r, v) in &reads {
            let seen = if *v == INITIAL { None } else { writes.get(v).copied() };
            if *v != INITIAL {
                match seen {
                    None => {
                        errors.push(format!("register {reg}: read returned {v}, which no write wrote"));
                        continue;
                    }
                    Some(w) if w.invoked > r.completed => {
                        errors.push(format!("register {reg}: read returned {v} before its write was invoked"));
                        continue;
                    }
                    _ => {}
                }
            }
            for w2 in writes.values() {
                let Some(w2_done) = done(w2) else { continue };
                if w2_done >= r.invoked {
                    continue;
                }
                let after_seen = match seen {
                    None => true,
                    Some(w) => !std::ptr::eq(*w2, w) && done(w).is_some_and(|wd| wd < w2.invoked),
                };
                if after_seen {
                    let Op::Write { value: v2, .. } = w2.op else { unreachable!() };
                    errors.push(format!(
                        "register {reg}: stale read of {v}: write {v2} was acknowledged before the read began and after {v} was written"
                    ));
                }
            }
        }
        for (r1, v1) in &reads {
            for (r2, v2) in &reads {
                if r1.completed >= r2.invoked || v1 == v2 {
                    continue;
                }
                let (Some(w1), w2) = (writes.get(v1), if *v2 == INITIAL { None } else { writes.get(v2) }) else { continue };
                let older = match w2 {
                    None => true,
                    Some(w2) => done(w2).is_some_and(|d| d < w1.invoked),
                };
                if older {
                    errors.push(format!("register {reg}: a read saw {v1}, a later read saw the older {v2}"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn w(b: Instant, value: u64, from: u64, to: u64, acked: bool) -> Event {
        Event { register: 1, op: Op::Write { value, acked }, invoked: at(b, from), completed: at(b, to) }
    }

    fn r(b: Instant, value: u64, from: u64, to: u64) -> Event {
        Event { register: 1, op: Op::Read { value }, invoked: at(b, from), completed: at(b, to) }
    }

    #[test]
    fn accepts_linearizable_histories() {
        let b = Instant::now();
        let h =
            vec![r(b, 0, 0, 1), w(b, 5, 2, 4, true), r(b, 5, 5, 6), w(b, 6, 7, 20, true), r(b, 5, 8, 9), r(b, 6, 10, 11), r(b, 6, 21, 22)];
        assert!(check(&h).is_ok());
        // A failed write may be seen, at any later time.
        let h = vec![w(b, 5, 0, 1, true), w(b, 7, 2, 3, false), r(b, 7, 10, 11)];
        assert!(check(&h).is_ok());
        // A concurrent write may or may not be seen.
        let h = vec![w(b, 5, 0, 1, true), w(b, 6, 2, 10, true), r(b, 5, 3, 4), r(b, 6, 5, 6)];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn rejects_lost_stale_invented_and_backward_reads() {
        let b = Instant::now();
        let stale = vec![w(b, 5, 0, 1, true), w(b, 6, 2, 3, true), r(b, 5, 4, 5)];
        assert!(check(&stale).unwrap_err()[0].contains("stale"));
        let lost = vec![w(b, 5, 0, 1, true), r(b, 0, 2, 3)];
        assert!(check(&lost).unwrap_err()[0].contains("stale"));
        let invented = vec![r(b, 9, 0, 1)];
        assert!(check(&invented).unwrap_err()[0].contains("no write"));
        let future = vec![r(b, 5, 0, 1), w(b, 5, 2, 3, true)];
        assert!(check(&future).unwrap_err()[0].contains("before its write"));
        let backward = vec![w(b, 5, 0, 1, true), w(b, 6, 2, 20, true), r(b, 6, 3, 4), r(b, 5, 5, 6)];
        assert!(check(&backward).unwrap_err().iter().any(|e| e.contains("older")));
    }
}
