//! Model-based test of the volume lifecycle on a real cluster (mon + 3 OSD processes): a
//! seeded random sequence of write / trim / snapshot / snapshot delete / clone / rollback /
//! resize / flatten / volume delete, each checked against a model of volumes and snapshots
//! as plain byte arrays, with every volume and every snapshot read back in full after every
//! step. `TESSERA_MODEL_SEED` replays a run; `TESSERA_MODEL_STEPS` makes it longer.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::BIN;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_client::{admin, Client, ClientError, ClientOptions, Volume};
use tessera_testkit::cluster::TestCluster;

const OBJECT: u64 = 64 << 10;
const MAX_SIZE: u64 = 6 * OBJECT;
const MAX_VOLUMES: usize = 6;

#[derive(Clone, Debug)]
struct MVol {
    data: Vec<u8>,
    snaps: BTreeMap<String, Vec<u8>>,
    parent: Option<(String, String)>,
}

struct Run {
    rt: tokio::runtime::Runtime,
    client: Client,
    open: BTreeMap<String, Volume>,
    model: BTreeMap<String, MVol>,
    next_name: u64,
    log: Vec<String>,
}

impl Run {
    fn vol(&mut self, name: &str) -> Volume {
        if let Some(v) = self.open.get(name) {
            return v.clone();
        }
        let v = self.rt.block_on(self.client.open_volume(name)).unwrap_or_else(|e| panic!("open {name}: {e}\n{}", self.log.join("\n")));
        self.open.insert(name.to_string(), v.clone());
        v
    }

    /// Closes this client's handle and waits until the mon no longer counts the volume as
    /// open, retrying `f` while it is refused as in use.
    fn closed<T>(&mut self, name: &str, f: impl Fn(&Client) -> Result<T, ClientError>) -> T {
        self.open.remove(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match f(&self.client) {
                Ok(t) => return t,
                Err(ClientError::Mon { source, .. }) if source.status() == Some(409) && source.to_string().contains("open") => {
                    assert!(Instant::now() < deadline, "{name} still counted as open");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{name}: {e}\n{}", self.log.join("\n")),
            }
        }
    }

    fn check(&mut self) {
        let names: Vec<String> = self.model.keys().cloned().collect();
        for name in names {
            let m = self.model[&name].clone();
            let v = self.vol(&name);
            assert_eq!(v.size(), m.data.len() as u64, "{name} size\n{}", self.log.join("\n"));
            let got = self.rt.block_on(v.read(0, m.data.len() as u64)).unwrap();
            assert!(got[..] == m.data[..], "{name} differs at byte {:?}\n{}", first_diff(&got, &m.data), self.log.join("\n"));
            for (s, want) in &m.snaps {
                let sv = self.rt.block_on(self.client.open_volume(&format!("{name}@{s}"))).unwrap();
                assert_eq!(sv.size(), want.len() as u64);
                let got = self.rt.block_on(sv.read(0, want.len() as u64)).unwrap();
                assert!(got[..] == want[..], "{name}@{s} differs at byte {:?}\n{}", first_diff(&got, want), self.log.join("\n"));
            }
        }
    }

    fn step(&mut self, rng: &mut StdRng) {
        let names: Vec<String> = self.model.keys().cloned().collect();
        let name = names[rng.gen_range(0..names.len())].clone();
        let size = self.model[&name].data.len() as u64;
        match rng.gen_range(0..100) {
            0..35 => {
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(3 * OBJECT / 2));
                let byte = rng.gen_range(1..=255u8);
                self.log.push(format!("write {name} {off}+{len} = {byte}"));
                let v = self.vol(&name);
                self.rt.block_on(v.write(off, Bytes::from(vec![byte; len as usize]))).unwrap();
                self.model.get_mut(&name).unwrap().data[off as usize..(off + len) as usize].fill(byte);
            }
            35..45 => {
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off));
                self.log.push(format!("trim {name} {off}+{len}"));
                let v = self.vol(&name);
                self.rt.block_on(v.write_zeroes(off, len)).unwrap();
                self.model.get_mut(&name).unwrap().data[off as usize..(off + len) as usize].fill(0);
            }
            45..57 => {
                let s = format!("s{}", self.next_name);
                self.next_name += 1;
                self.log.push(format!("snapshot {name}@{s}"));
                let mon = self.client.mon().unwrap();
                self.rt.block_on(mon.create_snapshot(&name, &s)).unwrap();
                let m = self.model.get_mut(&name).unwrap();
                m.snaps.insert(s, m.data.clone());
            }
            57..65 => {
                let Some(s) = self.model[&name].snaps.keys().next().cloned() else { return };
                let used = self.model.values().any(|m| m.parent == Some((name.clone(), s.clone())));
                self.log.push(format!("delete snapshot {name}@{s} (clones: {used})"));
                // The check's read-only views of the snapshot leave the session shortly after
                // they are dropped; until then the mon refuses (snapshot_in_use).
                let deadline = Instant::now() + Duration::from_secs(20);
                let r = loop {
                    match self.rt.block_on(admin::delete_snapshot(&self.client, &name, &s)) {
                        Err(ClientError::Mon { source, .. })
                            if source.to_string().contains("snapshot_in_use") && Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        r => break r,
                    }
                };
                match (r, used) {
                    (Ok(_), false) => {
                        self.model.get_mut(&name).unwrap().snaps.remove(&s);
                    }
                    (Err(ClientError::Mon { source, .. }), true) => assert_eq!(source.status(), Some(409), "{source}"),
                    (r, _) => panic!("delete snapshot {name}@{s}: {r:?}\n{}", self.log.join("\n")),
                }
            }
            65..73 => {
                let Some(s) = self.model[&name].snaps.keys().last().cloned() else { return };
                if self.model.len() >= MAX_VOLUMES {
                    return;
                }
                let new = format!("v{}", self.next_name);
                self.next_name += 1;
                self.log.push(format!("clone {name}@{s} -> {new}"));
                let mon = self.client.mon().unwrap();
                self.rt.block_on(mon.clone_snapshot(&name, &s, &new)).unwrap();
                let data = self.model[&name].snaps[&s].clone();
                self.model.insert(new, MVol { data, snaps: BTreeMap::new(), parent: Some((name, s)) });
            }
            73..80 => {
                let snaps: Vec<String> = self.model[&name].snaps.keys().cloned().collect();
                if snaps.is_empty() {
                    return;
                }
                let s = snaps[rng.gen_range(0..snaps.len())].clone();
                self.log.push(format!("rollback {name}@{s}"));
                let rt = tokio::runtime::Handle::clone(self.rt.handle());
                self.closed(&name, |c| rt.block_on(admin::rollback_volume(c, &name, &s)));
                let m = self.model.get_mut(&name).unwrap();
                m.data = m.snaps[&s].clone();
            }
            80..88 => {
                let new = rng.gen_range(1..=MAX_SIZE / 4096) * 4096;
                self.log.push(format!("resize {name} {size} -> {new}"));
                self.open.remove(&name); // reopened with the new size
                self.rt.block_on(admin::resize_volume(&self.client, &name, new, true)).unwrap();
                self.model.get_mut(&name).unwrap().data.resize(new as usize, 0);
            }
            88..94 => {
                let m = &self.model[&name];
                if m.parent.is_none() || !m.snaps.is_empty() {
                    return;
                }
                self.log.push(format!("flatten {name}"));
                self.rt.block_on(admin::flatten_volume(&self.client, &name, |_, _| {})).unwrap();
                self.model.get_mut(&name).unwrap().parent = None;
            }
            _ => {
                if !self.model[&name].snaps.is_empty() || self.model.len() == 1 {
                    return;
                }
                self.log.push(format!("delete volume {name}"));
                let rt = tokio::runtime::Handle::clone(self.rt.handle());
                self.closed(&name, |c| rt.block_on(admin::delete_volume(c, &name)));
                self.model.remove(&name);
            }
        }
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn random_lifecycle_operations_match_a_byte_array_model() {
    let seed: u64 = std::env::var("TESSERA_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let steps: usize = std::env::var("TESSERA_MODEL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    eprintln!("lifecycle model: seed {seed} ({steps} steps); replay with TESSERA_MODEL_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(BIN, dir.path(), Default::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "v0", "--size", &(MAX_SIZE / 2).to_string(), "--object-size", &OBJECT.to_string()]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opts = ClientOptions { op_timeout: Duration::from_secs(20), ..Default::default() };
    let client = rt.block_on(Client::connect(&[cluster.mon_addr()], opts)).unwrap();
    let mut run = Run { rt, client, open: BTreeMap::new(), model: BTreeMap::new(), next_name: 1, log: Vec::new() };
    run.model.insert("v0".into(), MVol { data: vec![0; (MAX_SIZE / 2) as usize], snaps: BTreeMap::new(), parent: None });
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..steps {
        run.step(&mut rng);
        if i % 3 == 2 || i + 1 == steps {
            run.check();
        }
    }
    eprintln!("lifecycle model: {} steps, {} volumes at the end:\n{}", steps, run.model.len(), run.log.join("\n"));
}
