//! Times placing a pool on a large cluster and reports data movement for cluster changes.
//!
//! `cargo run --release -p tessera-placement --example placement_bench [hosts] [osds_per_host] [pgs]`
//! (defaults: 100 hosts x 10 OSDs, 100,000 PGs, 3 replicas, host failure domain). Prints
//! timings and movement; asserts nothing about time.

use std::time::Instant;

use tessera_placement::{diff, FailureDomain, OsdInfo, PoolPlacement, PoolRule, Topology};

fn arg(i: usize, default: u32) -> u32 {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn cluster(hosts: u32, per_host: u32) -> Vec<OsdInfo> {
    (0..hosts * per_host)
        .map(|id| OsdInfo::new(id, 1.0, format!("host-{}", id / per_host)).with_rack(format!("rack-{}", id / per_host % 10)))
        .collect()
}

fn place(osds: &[OsdInfo], rule: &PoolRule) -> (PoolPlacement, f64) {
    let start = Instant::now();
    let topology = Topology::new(osds).expect("valid topology");
    let placement = topology.place_pool(rule).expect("placement");
    (placement, start.elapsed().as_secs_f64())
}

/// Prints the movement from `base` to a placement on `changed`; `touched` are the OSDs the
/// change added or removed (every moved replica should go to or come from one of them).
fn report(what: &str, base: &PoolPlacement, changed: &[OsdInfo], rule: &PoolRule, ideal: f64, touched: &[u32]) {
    let (new, secs) = place(changed, rule);
    let stats = diff(base, &new).expect("same shape");
    let sum = |m: &std::collections::BTreeMap<u32, u64>| touched.iter().map(|id| m.get(id).copied().unwrap_or(0)).sum::<u64>();
    let unexplained = stats.moved_replicas - sum(&stats.gained).max(sum(&stats.lost));
    println!(
        "{what:<30} moved {:>6} / {} replicas = {:.4}%  (ideal {:.4}%, ratio {:.3}), not to/from changed OSDs {unexplained}, PGs changed {}, leader changes {}, placed in {:.0} ms",
        stats.moved_replicas,
        stats.total_replicas,
        100.0 * stats.moved_fraction(),
        100.0 * ideal,
        stats.moved_fraction() / ideal,
        stats.pgs_changed,
        stats.primary_changes,
        secs * 1e3
    );
}

fn main() {
    let (hosts, per_host, pgs) = (arg(1, 100), arg(2, 10), arg(3, 100_000));
    let n = hosts * per_host;
    let osds = cluster(hosts, per_host);
    let rule = PoolRule { pool_id: 1, pg_count: pgs, replicas: 3, failure_domain: FailureDomain::Host };
    println!("cluster: {hosts} hosts x {per_host} OSDs = {n} OSDs, pool: {pgs} PGs x 3 replicas, failure domain host");

    let start = Instant::now();
    let topology = Topology::new(&osds).expect("valid topology");
    let built = start.elapsed();
    let mut runs = Vec::new();
    let mut base = None;
    for _ in 0..5 {
        let start = Instant::now();
        base = Some(topology.place_pool(&rule).expect("placement"));
        runs.push(start.elapsed().as_secs_f64());
    }
    let base = base.expect("placed at least once");
    runs.sort_by(f64::total_cmp);
    println!(
        "topology build {:.2} ms; place_pool: best {:.1} ms, median {:.1} ms ({:.2} us/PG)",
        built.as_secs_f64() * 1e3,
        runs[0] * 1e3,
        runs[2] * 1e3,
        runs[2] * 1e6 / f64::from(pgs)
    );
    let rack_rule = PoolRule { failure_domain: FailureDomain::Rack, ..rule };
    let start = Instant::now();
    topology.place_pool(&rack_rule).expect("rack placement");
    println!("place_pool with rack failure domain: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);

    let counts = base.replica_counts();
    let mean = counts.values().sum::<u64>() as f64 / f64::from(n);
    let (min, max) = (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
    let var = counts.values().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / f64::from(n);
    println!("replicas per OSD: mean {mean:.1}, min {min}, max {max}, stddev {:.1} (Poisson would be {:.1})", var.sqrt(), mean.sqrt());

    let mut add_osd = osds.clone();
    add_osd.push(OsdInfo::new(n, 1.0, "host-0").with_rack("rack-0"));
    report("add 1 OSD to an existing host", &base, &add_osd, &rule, 1.0 / f64::from(n + 1), &[n]);

    let mut add_host = osds.clone();
    let new_host: Vec<u32> = (n..n + per_host).collect();
    add_host.extend(new_host.iter().map(|&id| OsdInfo::new(id, 1.0, "host-new").with_rack("rack-new")));
    report("add 1 host", &base, &add_host, &rule, f64::from(per_host) / f64::from(n + per_host), &new_host);

    let mut out_osd = osds.clone();
    out_osd[0].in_ = false;
    report("mark 1 OSD out", &base, &out_osd, &rule, 1.0 / f64::from(n), &[0]);

    let mut out_host = osds.clone();
    out_host.iter_mut().filter(|o| o.host == "host-0").for_each(|o| o.in_ = false);
    let host0: Vec<u32> = (0..per_host).collect();
    report("mark 1 host out", &base, &out_host, &rule, f64::from(per_host) / f64::from(n), &host0);

    let mut reweight = osds.clone();
    reweight[0].weight = 1.5;
    report("reweight 1 OSD 1.0 -> 1.5", &base, &reweight, &rule, 0.5 / (f64::from(n) + 0.5), &[0]);

    let mut down = osds.clone();
    down.iter_mut().filter(|o| o.host == "host-0").for_each(|o| o.up = false);
    let (down_placement, _) = place(&down, &rule);
    println!("mark 1 host down (still in)     moved {} replicas", diff(&base, &down_placement).expect("same shape").moved_replicas);
}
