//! Prometheus text exposition for the mon: API request counts and latency histograms
//! (recorded per route), plus gauges computed from the current map at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::model::{ClusterMap, PgHealth, SpaceState};
use crate::server::OsdSpace;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct ApiMetrics {
    /// (method, route, status) -> count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (method, route) -> latency
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Escapes a label value per the exposition format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ApiMetrics {
    /// Records one request. `route` is the matched route template (e.g.
    /// `/api/v1/volumes/{name}`), never the raw path, so label cardinality stays bounded.
    pub fn record(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests).entry((method.to_string(), route.to_string(), status)).or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = lock(&self.latency);
        let h = lat.entry((method.to_string(), route.to_string())).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The full exposition: map gauges from `map`, leadership, OSD fullness (`space`: the
    /// active mon's fresh reports; empty elsewhere), API metrics.
    pub fn render(
        &self,
        map: &ClusterMap,
        is_leader: bool,
        space: &std::collections::HashMap<u32, OsdSpace>,
        damage: &std::collections::HashMap<u32, Vec<String>>,
    ) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP tessera_osd_used_bytes Bytes of live data on each OSD's device (active mon only).\n# TYPE tessera_osd_used_bytes gauge"
        );
        let mut ids: Vec<&u32> = space.keys().collect();
        ids.sort();
        for id in &ids {
            let _ = writeln!(w, "tessera_osd_used_bytes{{osd=\"{id}\"}} {}", space[id].used_bytes);
        }
        let _ = writeln!(
            w,
            "# HELP tessera_osd_capacity_bytes Capacity of each OSD's device (active mon only).\n# TYPE tessera_osd_capacity_bytes gauge"
        );
        for id in &ids {
            let _ = writeln!(w, "tessera_osd_capacity_bytes{{osd=\"{id}\"}} {}", space[id].capacity_bytes);
        }
        let _ = writeln!(
            w,
            "# HELP tessera_osds_space OSDs by fullness (ok, nearfull, backfillfull, full; active mon only).\n# TYPE tessera_osds_space gauge"
        );
        for st in [SpaceState::Ok, SpaceState::Nearfull, SpaceState::Backfillfull, SpaceState::Full] {
            let n = space.values().filter(|s| s.state == st).count();
            let _ = writeln!(w, "tessera_osds_space{{state=\"{}\"}} {n}", st.as_str());
        }
        let _ = writeln!(
            w,
            "# HELP tessera_osd_damaged_pgs PG replicas each OSD has marked damaged, repair pending or under way (active mon only).\n# TYPE tessera_osd_damaged_pgs gauge"
        );
        for id in &ids {
            let _ = writeln!(w, "tessera_osd_damaged_pgs{{osd=\"{id}\"}} {}", damage.get(id).map_or(0, Vec::len));
        }
        let _ = writeln!(w, "# HELP tessera_mon_map_epoch Current cluster map epoch.\n# TYPE tessera_mon_map_epoch gauge");
        let _ = writeln!(w, "tessera_mon_map_epoch {}", map.epoch);
        let _ = writeln!(w, "# HELP tessera_mon_is_leader 1 if this mon is the active one.\n# TYPE tessera_mon_is_leader gauge");
        let _ = writeln!(w, "tessera_mon_is_leader {}", u8::from(is_leader));
        let _ = writeln!(w, "# HELP tessera_osds OSDs by liveness and membership.\n# TYPE tessera_osds gauge");
        for (up, in_) in [(true, true), (true, false), (false, true), (false, false)] {
            let n = map.osds.iter().filter(|o| o.up == up && o.in_ == in_).count();
            let _ = writeln!(w, "tessera_osds{{up=\"{up}\",in=\"{in_}\"}} {n}");
        }
        let _ = writeln!(w, "# HELP tessera_pgs PGs by health as seen from OSD liveness.\n# TYPE tessera_pgs gauge");
        let mut by: BTreeMap<&str, u64> = [("healthy", 0), ("degraded", 0), ("unavailable", 0)].into_iter().collect();
        for t in &map.pg_tables {
            for e in &t.pgs {
                *by.entry(PgHealth::of(e, map).as_str()).or_insert(0) += 1;
            }
        }
        for (h, n) in by {
            let _ = writeln!(w, "tessera_pgs{{health=\"{h}\"}} {n}");
        }
        let _ = writeln!(w, "# HELP tessera_pools Pools.\n# TYPE tessera_pools gauge\ntessera_pools {}", map.pools.len());
        let _ = writeln!(
            w,
            "# HELP tessera_mon_api_requests_total API requests by route and status.\n# TYPE tessera_mon_api_requests_total counter"
        );
        for ((m, r, s), n) in lock(&self.requests).iter() {
            let _ = writeln!(w, "tessera_mon_api_requests_total{{method=\"{}\",route=\"{}\",status=\"{s}\"}} {n}", esc(m), esc(r));
        }
        let _ = writeln!(
            w,
            "# HELP tessera_mon_api_request_duration_seconds API latency.\n# TYPE tessera_mon_api_request_duration_seconds histogram"
        );
        for ((m, r), h) in lock(&self.latency).iter() {
            let labels = format!("method=\"{}\",route=\"{}\"", esc(m), esc(r));
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(w, "tessera_mon_api_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(w, "tessera_mon_api_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(w, "tessera_mon_api_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(w, "tessera_mon_api_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = ApiMetrics::default();
        m.record("GET", "/a", 200, Duration::from_micros(300));
        m.record("GET", "/a", 404, Duration::from_millis(20));
        let mut space = std::collections::HashMap::new();
        space.insert(3, OsdSpace { used_bytes: 90, capacity_bytes: 100, state: SpaceState::Full, backfill_waiting: vec![] });
        let damage = [(3, vec!["1.a".to_string(), "2.0".to_string()])].into_iter().collect();
        let text = m.render(&ClusterMap::default(), false, &space, &damage);
        assert!(text.contains("tessera_osd_used_bytes{osd=\"3\"} 90"), "{text}");
        assert!(text.contains("tessera_osd_damaged_pgs{osd=\"3\"} 2"), "{text}");
        assert!(text.contains("tessera_osds_space{state=\"full\"} 1"), "{text}");
        assert!(text.contains("tessera_osds_space{state=\"nearfull\"} 0"), "{text}");
        assert!(text.contains("tessera_mon_api_requests_total{method=\"GET\",route=\"/a\",status=\"404\"} 1"), "{text}");
        assert!(text.contains("le=\"0.0005\"} 1"), "{text}");
        assert!(text.contains("le=\"0.025\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("tessera_pgs{health=\"degraded\"} 0"));
    }
}
