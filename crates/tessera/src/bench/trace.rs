//! `tessera bench trace`: the per-stage latency breakdown of sampled requests, joined from
//! the trace files every process wrote with `TESSERA_TRACE=<dir>` ([`tessera_wire::trace`]);
//! `tessera bench clock` prints the clock those files use, so a script can cut one job's
//! window out of them (`scripts/bench-trace.sh`).
//!
//! Sans-IO apart from reading the files: [`breakdown`] turns lines into rows.

use anyhow::{Context, Result};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tessera_wire::trace::{parse_line, stage, Line};

pub const LONG_ABOUT: &str = "\
The per-stage latency breakdown of sampled requests.

Every tessera process started with TESSERA_TRACE=<dir> records the stages of one request in \
TESSERA_TRACE_EVERY (default 64) into <dir>/<name>-<pid>.trace, with a clock every process \
of the machine shares (CLOCK_MONOTONIC). This command joins those files by request \
(client, seq) and prints, for writes and for reads separately, the mean and p99 of each \
stage: from the NBD server's receive, through the client library, the leader's data port, \
its Raft proposal and engine append, the followers' receive and append, both fsyncs, the \
commit, back to the NBD reply. Requests missing a stage (not every process traced, or cut \
by the window) are left out of that stage only.";

pub const EXAMPLES: &str = "\
Examples:
  t0=$(tessera bench clock); fio ...; t1=$(tessera bench clock)
  tessera bench trace /tmp/trace --from $t0 --to $t1 --title 'randwrite QD1'
  scripts/bench-trace.sh        # a cluster with tracing on, four fio jobs, four tables";

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The directory the processes wrote their trace files to (TESSERA_TRACE).
    pub dir: PathBuf,
    /// Only requests whose first stage is at or after this clock value (ns, `tessera bench clock`).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Only requests whose first stage is before this clock value (ns).
    #[arg(long, default_value_t = u64::MAX)]
    pub to: u64,
    /// A heading for the tables.
    #[arg(long, default_value = "")]
    pub title: String,
}

/// One request's stages: `(stage, node) -> earliest ns`.
type Stages = HashMap<(String, Option<u32>), u64>;

/// One row of the breakdown: a stage's name, the samples' mean and p99 (µs) and count.
#[derive(Clone, Debug, PartialEq)]
pub struct StageRow {
    pub name: &'static str,
    pub mean_us: f64,
    pub p99_us: f64,
    pub samples: usize,
}

/// The breakdown of the writes and the reads among `lines` whose first stage lies in
/// `[from, to)`.
pub fn breakdown(lines: &[Line], from: u64, to: u64) -> (Vec<StageRow>, Vec<StageRow>) {
    let mut by_req: HashMap<(u64, u64), Stages> = HashMap::new();
    for l in lines {
        let e = by_req.entry((l.client, l.seq)).or_default().entry((l.stage.clone(), l.at.node)).or_insert(l.ns);
        *e = (*e).min(l.ns);
    }
    let mut writes: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut reads: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for st in by_req.values() {
        let first = st.values().copied().min().unwrap_or(0);
        if first < from || first >= to {
            continue;
        }
        let any = |s: &str| st.iter().filter(|((n, _), _)| n == s).map(|(_, t)| *t).min();
        let on = |s: &str, node: Option<u32>| st.get(&(s.to_string(), node)).copied();
        let is_write = st.keys().any(|(s, _)| s == stage::PROPOSE);
        let (rows, order) = if is_write { (&mut writes, WRITE_ROWS) } else { (&mut reads, READ_ROWS) };
        // The leader: the OSD that proposed (writes) or served the read.
        let leader = st.keys().find(|(s, _)| s == if is_write { stage::PROPOSE } else { stage::READ_DONE }).and_then(|(_, n)| *n);
        let leader_at = |s: &str| leader.and_then(|l| on(s, Some(l)));
        // Followers: other OSDs that appended the entry; the first to make it durable is the
        // one the commit waited for (with 3 replicas, a majority is the leader plus one).
        let mut followers: Vec<u32> =
            st.keys().filter(|(s, n)| s == stage::APPEND && n.is_some() && *n != leader).filter_map(|(_, n)| *n).collect();
        followers.sort_by_key(|f| on(stage::DURABLE, Some(*f)).unwrap_or(u64::MAX));
        let f = followers.first().copied();
        let f_at = |s: &str| f.and_then(|f| on(s, Some(f)));
        let quorum_durable = match (leader_at(stage::DURABLE), f_at(stage::DURABLE)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let spans: Vec<(&'static str, Option<u64>, Option<u64>)> = if is_write {
            vec![
                ("nbd: receive -> client library", any(stage::NBD_RECV), any(stage::CLIENT_SEND)),
                ("client -> leader data port", any(stage::CLIENT_SEND), leader_at(stage::OSD_RECV)),
                ("leader: data port -> proposed", leader_at(stage::OSD_RECV), leader_at(stage::PROPOSE)),
                ("leader: proposed -> appended", leader_at(stage::PROPOSE), leader_at(stage::APPEND)),
                ("leader: append -> durable (fsync)", leader_at(stage::APPEND), leader_at(stage::DURABLE)),
                ("leader append -> follower receive", leader_at(stage::APPEND), f_at(stage::RAFT_RECV)),
                ("follower: receive -> appended", f_at(stage::RAFT_RECV), f_at(stage::APPEND)),
                ("follower: append -> durable (fsync)", f_at(stage::APPEND), f_at(stage::DURABLE)),
                ("both durable -> commit at leader", quorum_durable, leader_at(stage::COMMIT)),
                ("leader commit -> client has answer", leader_at(stage::COMMIT), any(stage::CLIENT_RECV)),
                ("client answer -> nbd reply", any(stage::CLIENT_RECV), any(stage::NBD_REPLY)),
                ("total: nbd receive -> nbd reply", any(stage::NBD_RECV), any(stage::NBD_REPLY)),
                ("total: client library", any(stage::CLIENT_SEND), any(stage::CLIENT_RECV)),
            ]
        } else {
            vec![
                ("nbd: receive -> client library", any(stage::NBD_RECV), any(stage::CLIENT_SEND)),
                ("client -> leader data port", any(stage::CLIENT_SEND), leader_at(stage::OSD_RECV)),
                ("leader: data port -> may read", leader_at(stage::OSD_RECV), leader_at(stage::READ_READY)),
                ("leader: engine read", leader_at(stage::READ_READY), leader_at(stage::READ_DONE)),
                ("leader read -> client has answer", leader_at(stage::READ_DONE), any(stage::CLIENT_RECV)),
                ("client answer -> nbd reply", any(stage::CLIENT_RECV), any(stage::NBD_REPLY)),
                ("total: nbd receive -> nbd reply", any(stage::NBD_RECV), any(stage::NBD_REPLY)),
                ("total: client library", any(stage::CLIENT_SEND), any(stage::CLIENT_RECV)),
            ]
        };
        debug_assert!(spans.iter().all(|(n, _, _)| order.contains(n)));
        for (name, a, b) in spans {
            if let (Some(a), Some(b)) = (a, b) {
                rows.entry(name).or_default().push(b.saturating_sub(a) as f64 / 1000.0);
            }
        }
    }
    let finish = |m: BTreeMap<&'static str, Vec<f64>>, order: &[&'static str]| {
        order
            .iter()
            .filter_map(|name| {
                let mut v = m.get(name)?.clone();
                v.sort_by(f64::total_cmp);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
                Some(StageRow { name, mean_us: mean, p99_us: p99, samples: v.len() })
            })
            .collect()
    };
    (finish(writes, WRITE_ROWS), finish(reads, READ_ROWS))
}

const WRITE_ROWS: &[&str] = &[
    "nbd: receive -> client library",
    "client -> leader data port",
    "leader: data port -> proposed",
    "leader: proposed -> appended",
    "leader: append -> durable (fsync)",
    "leader append -> follower receive",
    "follower: receive -> appended",
    "follower: append -> durable (fsync)",
    "both durable -> commit at leader",
    "leader commit -> client has answer",
    "client answer -> nbd reply",
    "total: nbd receive -> nbd reply",
    "total: client library",
];

const READ_ROWS: &[&str] = &[
    "nbd: receive -> client library",
    "client -> leader data port",
    "leader: data port -> may read",
    "leader: engine read",
    "leader read -> client has answer",
    "client answer -> nbd reply",
    "total: nbd receive -> nbd reply",
    "total: client library",
];

fn table(title: &str, what: &str, rows: &[StageRow]) -> String {
    let mut s = format!(
        "\n{what}{}{title}\n\n| stage | mean µs | p99 µs | samples |\n|---|---|---|---|\n",
        if title.is_empty() { "" } else { ": " }
    );
    for r in rows {
        s.push_str(&format!("| {} | {:.1} | {:.1} | {} |\n", r.name, r.mean_us, r.p99_us, r.samples));
    }
    s
}

pub fn run(a: &TraceArgs) -> Result<()> {
    let mut lines = Vec::new();
    let dir = std::fs::read_dir(&a.dir).with_context(|| format!("reading trace directory {}", a.dir.display()))?;
    for e in dir {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "trace") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            lines.extend(text.lines().filter_map(parse_line));
        }
    }
    anyhow::ensure!(!lines.is_empty(), "no trace lines in {} (were the processes started with TESSERA_TRACE={0}?)", a.dir.display());
    let (writes, reads) = breakdown(&lines, a.from, a.to);
    anyhow::ensure!(!writes.is_empty() || !reads.is_empty(), "no sampled request in the window [{}, {})", a.from, a.to);
    if !writes.is_empty() {
        print!("{}", table(&a.title, "writes", &writes));
    }
    if !reads.is_empty() {
        print!("{}", table(&a.title, "reads", &reads));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_wire::trace::At;

    fn line(stage: &str, node: Option<u32>, seq: u64, ns: u64) -> Line {
        Line { stage: stage.into(), at: At { node, entry: None }, client: 7, seq, ns }
    }

    #[test]
    fn a_write_is_cut_into_its_stages_with_the_first_durable_follower() {
        let us = |n: u64| n * 1000;
        let mut l = vec![
            line(stage::NBD_RECV, None, 64, us(0)),
            line(stage::CLIENT_SEND, None, 64, us(5)),
            line(stage::OSD_RECV, Some(1), 64, us(40)),
            line(stage::PROPOSE, Some(1), 64, us(50)),
            line(stage::APPEND, Some(1), 64, us(60)),
            line(stage::RAFT_RECV, Some(2), 64, us(90)),
            line(stage::RAFT_RECV, Some(3), 64, us(95)),
            line(stage::APPEND, Some(2), 64, us(100)),
            line(stage::APPEND, Some(3), 64, us(100)),
            line(stage::DURABLE, Some(1), 64, us(160)),
            line(stage::DURABLE, Some(3), 64, us(180)), // the faster follower
            line(stage::DURABLE, Some(2), 64, us(400)),
            line(stage::COMMIT, Some(1), 64, us(230)),
            line(stage::CLIENT_RECV, None, 64, us(270)),
            line(stage::NBD_REPLY, None, 64, us(275)),
        ];
        // Retries record a stage twice: the earliest counts.
        l.push(line(stage::OSD_RECV, Some(1), 64, us(500)));
        let (w, r) = breakdown(&l, 0, u64::MAX);
        assert!(r.is_empty());
        let get = |name: &str| w.iter().find(|x| x.name == name).map(|x| x.mean_us);
        assert_eq!(get("client -> leader data port"), Some(35.0));
        assert_eq!(get("leader: append -> durable (fsync)"), Some(100.0));
        assert_eq!(get("follower: append -> durable (fsync)"), Some(80.0), "osd 3 was durable first");
        assert_eq!(get("leader append -> follower receive"), Some(35.0));
        assert_eq!(get("both durable -> commit at leader"), Some(50.0));
        assert_eq!(get("total: nbd receive -> nbd reply"), Some(275.0));
        assert_eq!(get("total: client library"), Some(265.0));
        assert_eq!(breakdown(&l, us(1), u64::MAX).0, vec![], "outside the window");
    }

    #[test]
    fn reads_and_missing_stages() {
        let l = vec![
            line(stage::CLIENT_SEND, None, 128, 1_000),
            line(stage::OSD_RECV, Some(2), 128, 11_000),
            line(stage::READ_READY, Some(2), 128, 31_000),
            line(stage::READ_DONE, Some(2), 128, 41_000),
            line(stage::CLIENT_RECV, None, 128, 61_000),
        ];
        let (w, r) = breakdown(&l, 0, u64::MAX);
        assert!(w.is_empty());
        let names: Vec<&str> = r.iter().map(|x| x.name).collect();
        assert_eq!(
            names,
            vec![
                "client -> leader data port",
                "leader: data port -> may read",
                "leader: engine read",
                "leader read -> client has answer",
                "total: client library"
            ],
            "no NBD stages recorded: those rows are left out"
        );
        assert_eq!(r[4].mean_us, 60.0);
        let many: Vec<Line> = (0..200)
            .map(|i| line(stage::CLIENT_SEND, None, i, 0))
            .chain((0..200).map(|i| line(stage::CLIENT_RECV, None, i, i * 1000)))
            .collect();
        let (_, r) = breakdown(&many, 0, u64::MAX);
        assert_eq!(r[0].samples, 200);
        assert_eq!(r[0].p99_us, 197.0);
    }
}
