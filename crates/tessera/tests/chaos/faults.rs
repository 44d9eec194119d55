//! The faults of the chaos suite and how each is injected and healed on a [`TestCluster`]
//! whose daemons run in their own network namespaces and whose OSDs use the
//! fault-injecting device (`tessera osd run --fault-control FILE`: unsynced writes live in
//! process memory only, so every kill -9 of an OSD is a power cut of its drive).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tessera_testkit::cluster::{TestCluster, MON_NODE};
use tessera_testkit::process::Daemon;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the OSD leading a random PG (a power cut of its drive), restart.
    KillLeader,
    /// kill -9 of an OSD following a random PG, restart.
    KillFollower,
    /// kill -9 of the mon, restart.
    KillMon,
    /// kill -9 of the NBD server the workload uses, restart.
    KillNbd,
    /// SIGSTOP, then SIGCONT: a hung OSD.
    PauseOsd,
    /// SIGSTOP, then SIGCONT: a hung mon.
    PauseMon,
    /// The OSD leading a random PG is cut off from every other node (leader isolated from
    /// its followers, the mon and the NBD servers).
    IsolateLeader,
    /// A follower OSD cut off.
    IsolateFollower,
    /// The mon cut off.
    IsolateMon,
    /// Every I/O of an OSD's device delayed.
    SlowDisk,
    /// An OSD's device fails a fraction of its reads or of its writes (a failed write or
    /// sync stops the OSD, which is restarted; a read failing twice marks the replica
    /// damaged, the client is served by another).
    DiskErrors,
    /// Writes torn at sector granularity, then a power cut (kill -9).
    TornPowerCut,
    /// Bits flipped in object data blocks of a stopped OSD's device.
    BitFlips,
    /// Operator: a new OSD joins (its PGs are backfilled onto it); when the spare slot is
    /// taken, that OSD is retired instead (`osd out`, moved off, stopped, `osd rm`).
    JoinOrRetireOsd,
    /// Operator: `osd out` of the OSD leading the most PGs (they move while IO runs), then
    /// `osd in`.
    OutInLeader,
    /// Operator: an OSD's device is wiped and the OSD comes back as a new one; the old id is
    /// taken out and removed (`osd out`, `osd rm`).
    ReplaceOsd,
    /// A follower's device is full (`space_full=1`: it takes no new data), then has room again.
    FullFollower,
    /// kill -9 of the active mon (of three on etcd): a standby takes over.
    KillActiveMon,
    /// The etcd under the mons stopped (SIGSTOP), then continued: the control plane is away.
    StopEtcd,
    /// The device of the OSD leading a random PG (or of any OSD) fails every read for a
    /// while: clients are served by other replicas, the replica is rebuilt.
    FailingReads,
}

pub const ALL: [Fault; 20] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillMon,
    Fault::KillNbd,
    Fault::PauseOsd,
    Fault::PauseMon,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::IsolateMon,
    Fault::SlowDisk,
    Fault::DiskErrors,
    Fault::TornPowerCut,
    Fault::BitFlips,
    Fault::JoinOrRetireOsd,
    Fault::OutInLeader,
    Fault::ReplaceOsd,
    Fault::FullFollower,
    Fault::KillActiveMon,
    Fault::StopEtcd,
    Fault::FailingReads,
];

/// The longest a single client request (one that got an answer) may take while `fault` is
/// injected and healed. A crash, hang or partition of a PG leader costs an election (1-2 s
/// of election timeout) plus the client's attempt timeout (2 s) and retry pause; what takes
/// the disk away (errors, power cuts) adds an OSD restart. Operator actions, a full device
/// and the control plane must cost no more than a crash (issue 14).
pub fn request_bound(fault: Fault) -> Duration {
    let secs = match fault {
        Fault::KillMon | Fault::PauseMon | Fault::IsolateMon | Fault::KillActiveMon | Fault::StopEtcd => 3,
        Fault::JoinOrRetireOsd | Fault::OutInLeader | Fault::ReplaceOsd | Fault::FullFollower => 6,
        Fault::KillNbd => 6,
        Fault::SlowDisk => 6,
        _ => 8,
    };
    Duration::from_secs(secs)
}

/// How long `fault` lasts: kills long enough for the restart to matter, hangs and
/// partitions often past the 1-2 s Raft election timeout (so leaders move) and sometimes
/// past the mon's 2 s down detection.
pub fn hold(fault: Fault, rng: &mut StdRng) -> Duration {
    let ms = match fault {
        Fault::PauseOsd | Fault::PauseMon | Fault::IsolateLeader | Fault::IsolateFollower | Fault::IsolateMon => rng.gen_range(1500..5000),
        Fault::SlowDisk | Fault::DiskErrors | Fault::TornPowerCut | Fault::FullFollower | Fault::FailingReads => rng.gen_range(1000..4000),
        Fault::StopEtcd => rng.gen_range(2000..8000),
        Fault::OutInLeader => rng.gen_range(2000..6000),
        _ => rng.gen_range(300..3000),
    };
    Duration::from_millis(ms)
}

/// The daemons the chaos suite runs besides the cluster's own.
pub struct Extra {
    /// The NBD server the workload uses (killed by [`Fault::KillNbd`]).
    pub nbd: Daemon,
    /// The id of the volume written once and never again: bit flips in its blocks stay
    /// until a read or a scrub finds them.
    pub cold_volume: u64,
    /// Bits flipped in the cold volume's blocks so far.
    pub cold_flips: usize,
    /// OSD processes the cluster started with (the next slot is the joining OSD's).
    pub initial_osds: usize,
}

pub fn control_file(dir: &Path, osd: usize) -> PathBuf {
    dir.join(format!("osd{osd}.faults"))
}

fn set_faults(dir: &Path, osd: usize, text: &str) {
    std::fs::write(control_file(dir, osd), text).expect("write the fault control file");
}

/// `(leader, followers)` of a random PG, as the mon reports them (`None` while it cannot).
fn pick_pg(cluster: &TestCluster, rng: &mut StdRng) -> Option<(u32, Vec<u32>)> {
    let out = cluster.cli(&["cluster", "pgs", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let pgs: Vec<(u32, Vec<u32>)> = v
        .as_array()?
        .iter()
        .filter_map(|p| {
            let leader = p["leader"].as_u64()? as u32;
            let voters = p["voters"].as_array()?.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).filter(|o| *o != leader).collect();
            Some((leader, voters))
        })
        .collect();
    if pgs.is_empty() {
        return None;
    }
    Some(pgs[rng.gen_range(0..pgs.len())].clone())
}

/// The process indexes of OSDs that are part of the cluster (not retired).
pub fn live_osds(cluster: &TestCluster) -> Vec<usize> {
    (0..cluster.osds.len()).filter(|i| !cluster.osds[*i].retired).collect()
}

fn any_osd(cluster: &TestCluster, rng: &mut StdRng) -> usize {
    let live = live_osds(cluster);
    live[rng.gen_range(0..live.len())]
}

/// The process index of an OSD: the leader (or a follower) of a random PG, else any.
fn pick_osd(cluster: &TestCluster, rng: &mut StdRng, leader: bool) -> usize {
    if let Some((l, followers)) = pick_pg(cluster, rng) {
        let id = if leader || followers.is_empty() { l } else { followers[rng.gen_range(0..followers.len())] };
        if let Some(i) = cluster.index_of(id).filter(|i| !cluster.osds[*i].retired) {
            return i;
        }
    }
    any_osd(cluster, rng)
}

/// The mon id of OSD process `i` (`None` while the mon cannot tell).
fn id_of(cluster: &TestCluster, i: usize) -> Option<u32> {
    let addr = cluster.osd_addr(i);
    let out = cluster.cli(&["osd", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|o| o["addr"].as_str() == Some(&addr)).and_then(|o| o["id"].as_u64()).map(|x| x as u32)
}

/// The OSD id leading the most PGs (`None` while the mon cannot tell).
fn busiest_leader(cluster: &TestCluster) -> Option<u32> {
    let out = cluster.cli(&["cluster", "pgs", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut count: std::collections::BTreeMap<u32, usize> = Default::default();
    for p in v.as_array()? {
        if let Some(l) = p["leader"].as_u64() {
            *count.entry(l as u32).or_default() += 1;
        }
    }
    count.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

/// Runs the CLI until it succeeds (the mon may be electing); panics after `within`.
fn cli_until_ok(cluster: &TestCluster, args: &[&str], within: Duration) -> String {
    let t = std::time::Instant::now();
    loop {
        let out = cluster.cli(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(t.elapsed() < within, "tessera {args:?} kept failing: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until no PG's group counts OSD `id` as a member and every PG is clean.
fn wait_moved_off(cluster: &TestCluster, id: u32, within: Duration) {
    let t = std::time::Instant::now();
    loop {
        let states = crate::common::pg_states(cluster);
        if !states.is_empty() && states.iter().all(|s| s.1 == "active+clean" && !s.2.contains(&id) && !s.3.contains(&id)) {
            return;
        }
        assert!(t.elapsed() < within, "PGs did not move off osd {id} within {within:?}: {states:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes OSD `id` (process `i`) for good: out, moved off, stopped, `osd rm`.
fn retire(cluster: &mut TestCluster, i: usize, id: u32) {
    cli_until_ok(cluster, &["osd", "out", &id.to_string()], Duration::from_secs(20));
    wait_moved_off(cluster, id, Duration::from_secs(60));
    cluster.kill9(i);
    cluster.osds[i].retired = true;
    cli_until_ok(cluster, &["osd", "rm", &id.to_string()], Duration::from_secs(30));
}

/// The index of the active mon (`None` while none is elected).
fn active_mon(cluster: &mut TestCluster) -> Option<usize> {
    let out = cluster.cli(&["cluster", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let url = v["active_mon"].as_str()?.to_string();
    (0..cluster.mon_count()).find(|k| url.ends_with(&format!(":{}", cluster.mon_mut(*k).1)))
}

/// Injects `fault`, holds it for `hold`, heals it. Returns a description for the log.
pub fn inject(fault: Fault, cluster: &mut TestCluster, extra: &mut Extra, rng: &mut StdRng, hold: Duration) -> String {
    let dir = cluster.dir.clone();
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let i = pick_osd(cluster, rng, fault == Fault::KillLeader);
            cluster.kill9(i);
            std::thread::sleep(hold);
            cluster.osds[i].daemon.restart();
            format!("kill -9 osd{i} ({}), power cut", if fault == Fault::KillLeader { "a PG leader" } else { "a PG follower" })
        }
        Fault::KillMon => {
            let k = rng.gen_range(0..cluster.mon_count());
            cluster.mon_mut(k).0.kill9();
            std::thread::sleep(hold);
            cluster.mon_mut(k).0.restart();
            format!("kill -9 mon{k}")
        }
        Fault::KillNbd => {
            extra.nbd.kill9();
            std::thread::sleep(hold);
            extra.nbd.restart();
            "kill -9 nbd server".into()
        }
        Fault::PauseOsd => {
            let i = any_osd(cluster, rng);
            cluster.pause(i);
            std::thread::sleep(hold);
            cluster.resume(i);
            format!("SIGSTOP/SIGCONT osd{i}")
        }
        Fault::PauseMon => {
            let k = rng.gen_range(0..cluster.mon_count());
            signal(cluster.mon_mut(k).0, libc::SIGSTOP);
            std::thread::sleep(hold);
            signal(cluster.mon_mut(k).0, libc::SIGCONT);
            format!("SIGSTOP/SIGCONT mon{k}")
        }
        Fault::IsolateLeader | Fault::IsolateFollower => {
            let i = pick_osd(cluster, rng, fault == Fault::IsolateLeader);
            let net = cluster.net.as_ref().expect("the chaos cluster runs in network namespaces");
            net.cut(1 + i).expect("cut");
            std::thread::sleep(hold);
            net.heal(1 + i).expect("heal");
            format!("partition: osd{i} ({}) cut off", if fault == Fault::IsolateLeader { "a PG leader" } else { "a PG follower" })
        }
        Fault::IsolateMon => {
            let net = cluster.net.as_ref().expect("network");
            net.cut(MON_NODE).expect("cut");
            std::thread::sleep(hold);
            net.heal(MON_NODE).expect("heal");
            "partition: the mons cut off".into()
        }
        Fault::SlowDisk => {
            let i = any_osd(cluster, rng);
            let ms = rng.gen_range(5..40);
            set_faults(&dir, i, &format!("delay_ms={ms}\n"));
            std::thread::sleep(hold);
            set_faults(&dir, i, "");
            format!("slow disk on osd{i} ({ms} ms per I/O)")
        }
        Fault::DiskErrors => {
            let i = any_osd(cluster, rng);
            // A failed write or sync stops the OSD (a clean failover); a read failing twice
            // marks the replica damaged and the client is served by another (issue 16).
            let (key, p) = if rng.gen_bool(0.5) { ("read_error", 0.02) } else { ("write_error", 0.02) };
            let after = faulty_for(cluster, &dir, i, &format!("{key}={p}\n"), hold);
            format!("disk errors on osd{i} ({key}={p}){after}")
        }
        Fault::TornPowerCut => {
            let i = any_osd(cluster, rng);
            set_faults(&dir, i, "torn=0.5\n");
            std::thread::sleep(hold);
            cluster.kill9(i);
            set_faults(&dir, i, "");
            cluster.osds[i].daemon.restart();
            format!("torn writes then power cut on osd{i}")
        }
        Fault::BitFlips => {
            let i = any_osd(cluster, rng);
            cluster.kill9(i);
            let (flipped, cold) = flip_bits(cluster, i, rng, 4, extra.cold_volume);
            extra.cold_flips += cold;
            std::thread::sleep(hold);
            cluster.osds[i].daemon.restart();
            format!("kill -9 osd{i}, {flipped} bits flipped in its object data blocks, restart")
        }
        Fault::JoinOrRetireOsd => {
            let spare = cluster.osds.len() > extra.initial_osds;
            let slot = extra.initial_osds;
            if !spare || cluster.osds[slot].retired {
                if spare {
                    // The slot's old device belonged to a removed OSD: a fresh one.
                    let _ = std::fs::remove_file(&cluster.osds[slot].data);
                    cluster.osds[slot].daemon.restart();
                    cluster.osds[slot].retired = false;
                } else {
                    cluster.add_osd();
                }
                std::thread::sleep(hold);
                format!("osd{slot} joins as a new OSD")
            } else {
                let Some(id) = id_of(cluster, slot) else { return "osd join/retire skipped: the mon could not tell the id".into() };
                retire(cluster, slot, id);
                format!("osd{slot} (id {id}) retired: out, moved off, stopped, osd rm")
            }
        }
        Fault::OutInLeader => {
            let Some(id) = busiest_leader(cluster) else { return "out/in skipped: no PG leader reported".into() };
            cli_until_ok(cluster, &["osd", "out", &id.to_string()], Duration::from_secs(20));
            std::thread::sleep(hold);
            cli_until_ok(cluster, &["osd", "in", &id.to_string()], Duration::from_secs(20));
            format!("osd out/in of osd id {id}, the busiest PG leader")
        }
        Fault::ReplaceOsd => {
            let i = any_osd(cluster, rng);
            let Some(old) = id_of(cluster, i) else { return "replace skipped: the mon could not tell the id".into() };
            cluster.wipe(i);
            std::thread::sleep(hold);
            cluster.osds[i].daemon.restart();
            cli_until_ok(cluster, &["osd", "out", &old.to_string()], Duration::from_secs(20));
            wait_moved_off(cluster, old, Duration::from_secs(60));
            cli_until_ok(cluster, &["osd", "rm", &old.to_string()], Duration::from_secs(30));
            format!("osd{i} wiped and replaced (old id {old} out and removed)")
        }
        Fault::FullFollower => {
            let i = pick_osd(cluster, rng, false);
            set_faults(&dir, i, "space_full=1\n");
            std::thread::sleep(hold);
            set_faults(&dir, i, "");
            format!("osd{i} (a PG follower) full, then room again")
        }
        Fault::KillActiveMon => {
            let k = active_mon(cluster).unwrap_or(0);
            cluster.mon_mut(k).0.kill9();
            std::thread::sleep(hold);
            cluster.mon_mut(k).0.restart();
            format!("kill -9 mon{k}, the active one")
        }
        Fault::StopEtcd => {
            let etcd = cluster.etcd.as_ref().expect("the chaos mons run on etcd");
            etcd.pause();
            std::thread::sleep(hold);
            etcd.resume();
            "etcd stopped (SIGSTOP), then continued".into()
        }
        Fault::FailingReads => {
            let leader = rng.gen_bool(0.5);
            let i = pick_osd(cluster, rng, leader);
            // A Raft log read (a follower caught up from the device) fails inside raft-rs,
            // which stops the OSD with an error: restarted like a failed write.
            let after = faulty_for(cluster, &dir, i, "read_error=1\n", hold);
            format!("osd{i}'s device failed every read{after}")
        }
    }
}

/// Puts `faults` in OSD process `i`'s control file for `hold`, clears it, and restarts the
/// OSD if a fault stopped it; returns what to add to the fault's description.
fn faulty_for(cluster: &mut TestCluster, dir: &Path, i: usize, faults: &str, hold: Duration) -> &'static str {
    set_faults(dir, i, faults);
    std::thread::sleep(hold);
    set_faults(dir, i, "");
    if cluster.osds[i].daemon.is_running() {
        return "";
    }
    cluster.osds[i].daemon.restart();
    ": it stopped and was restarted"
}

fn signal(d: &Daemon, sig: i32) {
    if let Some(pid) = d.pid() {
        // SAFETY: signals a child process the fixture spawned.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

/// Flips one random bit in each of `n` random object data blocks of stopped OSD `i`, as
/// listed by `tessera osd blocks`. `--checkpoint` first writes a checkpoint, so no listed
/// block is in the log tail that recovery replays: recovery takes a bad block there for a
/// torn write and ends the log (a known engine limit, see ARCHITECTURE.md); the suite tests
/// corruption of stored data, which reads must detect and replicas repair. Returns how many
/// bits were flipped, and how many of them in blocks of volume `cold` (half of them are
/// aimed there when it has blocks on this OSD).
fn flip_bits(cluster: &TestCluster, i: usize, rng: &mut StdRng, n: usize, cold: u64) -> (usize, usize) {
    let dev = cluster.osds[i].data.clone();
    let out = std::process::Command::new(super::BIN)
        .args(["osd", "blocks", "--checkpoint", "--json", "--data"])
        .arg(&dev)
        .output()
        .expect("run tessera osd blocks");
    assert!(out.status.success(), "tessera osd blocks failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("osd blocks --json");
    let blocks = v.as_array().expect("array");
    let offsets: Vec<u64> = blocks.iter().filter_map(|b| b["device_offset"].as_u64()).collect();
    let cold_offsets: Vec<u64> =
        blocks.iter().filter(|b| b["volume"].as_u64() == Some(cold)).filter_map(|b| b["device_offset"].as_u64()).collect();
    if offsets.is_empty() {
        return (0, 0);
    }
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&dev).expect("open the device file");
    let mut in_cold = 0;
    for k in 0..n {
        let pool = if k % 2 == 0 && !cold_offsets.is_empty() {
            in_cold += 1;
            &cold_offsets
        } else {
            &offsets
        };
        let at = pool[rng.gen_range(0..pool.len())] + rng.gen_range(0..4096);
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        b[0] ^= 1 << rng.gen_range(0..8);
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&b).unwrap();
    }
    f.sync_all().unwrap();
    (n, in_cold)
}
