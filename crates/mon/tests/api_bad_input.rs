//! Bad input over the API gets a 4xx with a message, never a 500, a panic or a hung server:
//! property tests of the request decoders on arbitrary bytes, and a real mon (embedded
//! store, real HTTP over loopback) fed malformed bodies, wrong types, negative and huge
//! numbers, unknown ids, random paths and raw garbage instead of HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tessera_metastore::EmbeddedStore;
use tessera_mon::api::decode::{self, CloneSnapshot, CreateSnapshot, Heartbeat, Resize};
use tessera_mon::service::{CreatePool, CreateVolume, RegisterOsd, SessionUpdate};
use tessera_mon::MonConfig;
use tessera_testkit::process::http;

fn assert_4xx<T: std::fmt::Debug>(r: Result<T, tessera_mon::MonError>) {
    if let Err(e) = r {
        assert!((400..500).contains(&e.status()), "decoder error must be 4xx: {e}");
        assert!(!e.to_string().is_empty());
    }
}

/// JSON-ish bodies: mutations of valid requests (wrong types, signs, magnitudes, extra
/// fields, truncation) and plain garbage.
fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
        Just("340282366920938463463374607431768211456".to_string()),
        Just("4096.5".to_string()),
        Just("null".into()),
        Just("true".into()),
        Just("[]".into()),
        Just("{}".into()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "[a-z./ \\\\\"]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    let field = prop_oneof![
        Just("name"),
        Just("pool"),
        Just("size"),
        Just("object_size"),
        Just("replicas"),
        Just("pg_count"),
        Just("failure_domain"),
        Just("uuid"),
        Just("addr"),
        Just("host"),
        Just("device"),
        Just("capacity_bytes"),
        Just("weight"),
        Just("allow_shrink"),
        Just("epoch"),
        Just("volumes"),
        Just("agent"),
        Just("bogus"),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec((field.clone(), value), 0..8).prop_map(|kv| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        }),
        (prop::collection::vec((field, any::<u32>()), 0..6), any::<usize>()).prop_map(|(kv, cut)| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let s = format!("{{{}}}", inner.join(","));
            s.as_bytes()[..cut % (s.len() + 1)].to_vec()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_and_reject_with_4xx(bytes in body_strategy(), raw in ".{0,40}") {
        assert_4xx(decode::body::<CreateVolume>(&bytes));
        assert_4xx(decode::body::<CreatePool>(&bytes));
        assert_4xx(decode::body::<RegisterOsd>(&bytes));
        assert_4xx(decode::body::<Resize>(&bytes));
        assert_4xx(decode::body::<Heartbeat>(&bytes));
        assert_4xx(decode::body::<CreateSnapshot>(&bytes));
        assert_4xx(decode::body::<CloneSnapshot>(&bytes));
        assert_4xx(decode::map_query(Some(&raw)));
        assert_4xx(decode::osd_id(&raw));
        assert_4xx(decode::client_id(&raw));
        assert_4xx(tessera_mon::validate::name("name", &raw));
        // Whatever decodes is then validated with 4xx errors too.
        if let Ok(v) = decode::body::<CreateVolume>(&bytes) {
            assert_4xx(tessera_mon::validate::volume_size(v.size));
            assert_4xx(tessera_mon::validate::object_size(v.object_size));
            assert_4xx(tessera_mon::validate::name("volume name", &v.name));
        }
        assert_4xx(decode::body::<SessionUpdate>(&bytes));
        if let Ok(u) = decode::body::<SessionUpdate>(&bytes) {
            assert_4xx(tessera_mon::validate::agent(&u.agent));
        }
        if let Ok(p) = decode::body::<CreatePool>(&bytes) {
            assert_4xx(tessera_mon::validate::pool_shape(p.replicas, p.pg_count));
        }
        if let Ok(o) = decode::body::<RegisterOsd>(&bytes) {
            if let Some(w) = o.weight {
                assert_4xx(tessera_mon::validate::weight(w));
            }
        }
    }
}

/// A real mon with 3 OSDs, a pool `p` and a volume `v`.
async fn mon_with_data() -> (tessera_mon::MonHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path().join("mon.redb")).await.unwrap());
    let mon = tessera_mon::start(store, MonConfig::new("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let svc = mon.shared.service().clone();
    for i in 0..3 {
        let req = RegisterOsd {
            uuid: format!("u{i}"),
            addr: format!("127.0.0.1:{}", 9000 + i),
            host: format!("h{i}"),
            rack: None,
            device: "/dev/x".into(),
            capacity_bytes: 1 << 40,
            weight: None,
        };
        svc.register_osd(&req).await.unwrap();
    }
    svc.create_pool(&CreatePool { name: "p".into(), replicas: 3, pg_count: 8, failure_domain: Default::default() }).await.unwrap();
    svc.create_volume(&CreateVolume { name: "v".into(), pool: "p".into(), size: 1 << 30, object_size: 4 << 20 }).await.unwrap();
    (mon, dir)
}

async fn call(port: u16, method: &'static str, path: String, body: Option<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || http(port, method, &path, body.as_deref()).expect("mon answers")).await.unwrap()
}

/// Asserts a 4xx JSON error with a message and a code.
fn assert_client_error(case: &str, (status, body): (u16, String), expect_status: u16, expect_in_message: &str) {
    assert_eq!(status, expect_status, "{case}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{case}: error body is not JSON ({e}): {body}"));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{case}: no error message: {body}"));
    assert!(v["code"].is_string(), "{case}: no code: {body}");
    assert!(msg.contains(expect_in_message), "{case}: message {msg:?} lacks {expect_in_message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_a_message() {
    let (mon, _dir) = mon_with_data().await;
    let port = mon.addr.port();
    let post = |path: &str, body: &str| call(port, "POST", path.to_string(), Some(body.to_string()));
    let vol = |body: &str| post("/api/v1/volumes", body);
    assert_client_error("malformed JSON", vol("{\"name\": ").await, 400, "malformed JSON");
    assert_client_error("empty body", vol("").await, 400, "empty");
    assert_client_error("not an object", vol("[1,2]").await, 400, "invalid request body");
    assert_client_error("negative size", vol(r#"{"name":"x","pool":"p","size":-4096}"#).await, 400, "-4096");
    assert_client_error("huge size", vol(r#"{"name":"x","pool":"p","size":99999999999999999999999}"#).await, 400, "invalid request body");
    assert_client_error("too large", vol(r#"{"name":"x","pool":"p","size":1152921504606846976}"#).await, 400, "maximum volume size");
    assert_client_error("unaligned", vol(r#"{"name":"x","pool":"p","size":4097}"#).await, 400, "multiple of 4096");
    assert_client_error("size as string", vol(r#"{"name":"x","pool":"p","size":"10G"}"#).await, 400, "invalid type");
    assert_client_error("unknown field", vol(r#"{"name":"x","pool":"p","size":4096,"color":"red"}"#).await, 400, "unknown field");
    assert_client_error("bad name", vol(r#"{"name":"../etc","pool":"p","size":4096}"#).await, 400, "must not start");
    assert_client_error("object size", vol(r#"{"name":"x","pool":"p","size":4096,"object_size":3}"#).await, 400, "power of two");
    assert_client_error("unknown pool", vol(r#"{"name":"x","pool":"nope","size":4096}"#).await, 404, "no pool named \"nope\"");
    assert_client_error("duplicate", vol(r#"{"name":"v","pool":"p","size":4096}"#).await, 409, "already exists");
    let pool = |body: &str| post("/api/v1/pools", body);
    assert_client_error("too few hosts", pool(r#"{"name":"q","replicas":4}"#).await, 409, "needs 4 hosts");
    assert_client_error("zero replicas", pool(r#"{"name":"q","replicas":0}"#).await, 400, "replicas");
    assert_client_error("pg count", pool(r#"{"name":"q","pg_count":100000}"#).await, 400, "pg_count");
    assert_client_error("domain", pool(r#"{"name":"q","failure_domain":"planet"}"#).await, 400, "unknown variant");
    let osd = |body: &str| post("/api/v1/osds", body);
    assert_client_error(
        "osd weight",
        osd(r#"{"uuid":"z","addr":"a:1","host":"h","device":"d","capacity_bytes":1,"weight":-1}"#).await,
        400,
        "weight",
    );
    assert_client_error("osd host", osd(r#"{"uuid":"z","addr":"a:1","host":"a b","device":"d","capacity_bytes":1}"#).await, 400, "host");
    assert_client_error("unknown volume", call(port, "GET", "/api/v1/volumes/ghost".into(), None).await, 404, "no volume named");
    assert_client_error("unknown osd", call(port, "GET", "/api/v1/osds/42".into(), None).await, 404, "no OSD with id 42");
    assert_client_error("bad osd id", call(port, "POST", "/api/v1/osds/-1/out".into(), Some("{}".into())).await, 400, "not an OSD id");
    assert_client_error("osd id overflow", call(port, "GET", "/api/v1/osds/99999999999".into(), None).await, 400, "not an OSD id");
    assert_client_error("heartbeat unknown", post("/api/v1/osds/42/heartbeat", "{}").await, 404, "no OSD with id 42");
    assert_client_error("resize shrink", post("/api/v1/volumes/v/resize", r#"{"size":4096}"#).await, 409, "allow_shrink");
    assert_client_error("resize negative", post("/api/v1/volumes/v/resize", r#"{"size":-1}"#).await, 400, "-1");
    assert_client_error("delete non-empty pool", call(port, "DELETE", "/api/v1/pools/p".into(), None).await, 409, "still holds 1 volume");
    assert_client_error("long poll", call(port, "GET", "/api/v1/map?newer_than=x".into(), None).await, 400, "whole number");
    assert_client_error("no route", call(port, "GET", "/api/v2/anything".into(), None).await, 404, "no such API endpoint");
    assert_client_error("wrong method", call(port, "PATCH", "/api/v1/volumes".into(), None).await, 405, "PATCH");

    // Snapshots, clones, rollback, delete/purge.
    let snap = |body: &str| post("/api/v1/volumes/v/snapshots", body);
    assert_client_error("snapshot name", snap(r#"{"name":"../x"}"#).await, 400, "must not start");
    assert_client_error("snapshot no name", snap("{}").await, 400, "missing field");
    assert_client_error("snapshot extra", snap(r#"{"name":"s","size":1}"#).await, 400, "unknown field");
    assert_client_error("snapshot name type", snap(r#"{"name":7}"#).await, 400, "invalid type");
    assert_client_error("snapshot empty body", snap("").await, 400, "empty");
    assert_client_error("snapshot of ghost", post("/api/v1/volumes/ghost/snapshots", r#"{"name":"s"}"#).await, 404, "no volume named");
    assert_client_error("list ghost", call(port, "GET", "/api/v1/volumes/ghost/snapshots".into(), None).await, 404, "no volume named");
    let unknown_snap = "no snapshot named \"nope\"";
    assert_client_error("delete unknown", call(port, "DELETE", "/api/v1/volumes/v/snapshots/nope".into(), None).await, 404, unknown_snap);
    assert_client_error("rollback unknown", post("/api/v1/volumes/v/snapshots/nope/rollback", "{}").await, 404, unknown_snap);
    assert_client_error("clone unknown", post("/api/v1/volumes/v/snapshots/nope/clone", r#"{"name":"c"}"#).await, 404, unknown_snap);
    assert_client_error("clone body", post("/api/v1/volumes/v/snapshots/nope/clone", r#"{"nam":"c"}"#).await, 400, "unknown field");
    assert_client_error("clone name", post("/api/v1/volumes/v/snapshots/nope/clone", r#"{"name":"a/b"}"#).await, 400, "contains '/'");
    assert_client_error("rollback-done active", post("/api/v1/volumes/v/rollback-done", "{}").await, 400, "not being rolled back");
    assert_client_error("purge active", post("/api/v1/volumes/v/purge", "{}").await, 400, "not being deleted");
    assert_client_error("flatten ghost", post("/api/v1/volumes/ghost/flatten-done", "{}").await, 404, "no volume named");
    assert_client_error("snapshots method", call(port, "PUT", "/api/v1/volumes/v/snapshots".into(), None).await, 405, "PUT");

    // Sessions.
    let sess = |client: &str, body: &str| call(port, "PUT", format!("/api/v1/sessions/{client}"), Some(body.to_string()));
    let ok_body = r#"{"epoch":1,"volumes":[0],"agent":"nbd@h1"}"#;
    assert_client_error("client id", sess("-1", ok_body).await, 400, "not a client id");
    assert_client_error("client id overflow", sess("18446744073709551616", ok_body).await, 400, "not a client id");
    assert_client_error("session extra", sess("1", r#"{"epoch":1,"volumes":[],"agent":"a","ttl":5}"#).await, 400, "unknown field");
    assert_client_error("session missing", sess("1", r#"{"epoch":1,"agent":"a"}"#).await, 400, "missing field");
    assert_client_error("session epoch", sess("1", r#"{"epoch":-1,"volumes":[],"agent":"a"}"#).await, 400, "-1");
    assert_client_error("session volumes", sess("1", r#"{"epoch":1,"volumes":"v","agent":"a"}"#).await, 400, "invalid type");
    assert_client_error("session agent", sess("1", r#"{"epoch":1,"volumes":[],"agent":""}"#).await, 400, "agent");
    let long_agent = format!(r#"{{"epoch":1,"volumes":[],"agent":"{}"}}"#, "a".repeat(129));
    assert_client_error("session agent length", sess("1", &long_agent).await, 400, "agent");
    let many = format!(r#"{{"epoch":1,"volumes":[{}],"agent":"a"}}"#, vec!["1"; 1025].join(","));
    assert_client_error("session volumes count", sess("1", &many).await, 400, "1025 volumes");
    assert_client_error("delete session id", call(port, "DELETE", "/api/v1/sessions/abc".into(), None).await, 400, "not a client id");
    assert_client_error("sessions method", post("/api/v1/sessions", "{}").await, 405, "POST");
    let (status, body) = sess("1", ok_body).await;
    assert_eq!(status, 200, "{body}");
    assert_client_error("in use", call(port, "DELETE", "/api/v1/volumes/v".into(), None).await, 409, "open by 1 client(s)");
    let (status, body) = call(port, "DELETE", "/api/v1/sessions/1".into(), None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"deleted":true}"#));
    let (status, _) = post("/api/v1/volumes", &"x".repeat(200_000)).await;
    assert_eq!(status, 413, "oversized body");

    // Raw garbage instead of HTTP: the connection is closed (or answered 400); the mon lives on.
    for garbage in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /api/v1/volumes HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let g = garbage.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&g);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            assert!(buf.is_empty() || text.starts_with("HTTP/1.1 4"), "garbage answered with: {text}");
        })
        .await
        .unwrap();
    }
    // Nothing stored was harmed, and the mon still serves.
    let (status, body) = call(port, "GET", "/api/v1/volumes/v".into(), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"size\":1073741824"));
    mon.shutdown().await;
}

/// Well-typed bodies with adversarial values, per route (so they pass decoding and reach
/// validation and the service).
fn shaped_body(route: usize) -> BoxedStrategy<String> {
    let name = prop_oneof![Just("v".to_string()), Just("p".to_string()), "[a-z0-9./_ -]{0,10}", ".{0,70}"];
    let size = prop_oneof![Just(0u64), Just(4095), (1u64..1 << 20).prop_map(|k| k * 4096), any::<u64>(), Just((1 << 50) + 4096)];
    match route {
        0 => (name, prop_oneof![Just("p"), Just("nope")], size.clone(), proptest::option::of(prop_oneof![Just(4u64 << 20), any::<u64>()]))
            .prop_map(|(n, p, s, o)| match o {
                Some(o) => format!(r#"{{"name":{n:?},"pool":"{p}","size":{s},"object_size":{o}}}"#),
                None => format!(r#"{{"name":{n:?},"pool":"{p}","size":{s}}}"#),
            })
            .boxed(),
        1 => (name, 0u32..10, prop_oneof![0u32..300, any::<u32>()], prop_oneof![Just("osd"), Just("host"), Just("rack")])
            .prop_map(|(n, r, g, d)| format!(r#"{{"name":{n:?},"replicas":{r},"pg_count":{g},"failure_domain":"{d}"}}"#))
            .boxed(),
        2 => (name.clone(), name, any::<u64>(), proptest::option::of(prop_oneof![any::<f64>(), 0.0..10.0]))
            .prop_map(|(u, h, c, w)| {
                let w = w.filter(|w| w.is_finite()).map_or(String::new(), |w| format!(r#","weight":{w:?}"#));
                format!(r#"{{"uuid":{u:?},"addr":"127.0.0.1:1","host":{h:?},"device":"d","capacity_bytes":{c}{w}}}"#)
            })
            .boxed(),
        3 => (size, any::<bool>()).prop_map(|(s, a)| format!(r#"{{"size":{s},"allow_shrink":{a}}}"#)).boxed(),
        6 | 7 => name.prop_map(|n| format!(r#"{{"name":{n:?}}}"#)).boxed(),
        // Volume ids far from any created here: a session holding `v` at an old epoch
        // would hold every snapshot of it for the session TTL.
        8 => (any::<u64>(), prop::collection::vec(1u64 << 40.., 0..4), ".{0,140}")
            .prop_map(|(e, v, a)| format!(r#"{{"epoch":{e},"volumes":{v:?},"agent":{a:?}}}"#))
            .boxed(),
        _ => any::<u64>().prop_map(|e| format!(r#"{{"epoch":{e}}}"#)).boxed(),
    }
}

/// Random bodies against every route of a live mon that reads a body: never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_on_every_body_route_never_get_5xx() {
    let (mon, _dir) = mon_with_data().await;
    let port = mon.addr.port();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    let routes = [
        ("POST", "/api/v1/volumes"),
        ("POST", "/api/v1/pools"),
        ("POST", "/api/v1/osds"),
        ("POST", "/api/v1/volumes/v/resize"),
        ("POST", "/api/v1/osds/0/heartbeat"),
        ("POST", "/api/v1/osds/0/out"),
        ("POST", "/api/v1/volumes/v/snapshots"),
        ("POST", "/api/v1/volumes/v/snapshots/s/clone"),
        ("PUT", "/api/v1/sessions/1"),
    ];
    let strategy = (body_strategy(), 0..routes.len());
    for i in 0..600 {
        let (raw, r) = strategy.new_tree(&mut runner).unwrap().current();
        let body =
            if i % 2 == 0 { String::from_utf8_lossy(&raw).into_owned() } else { shaped_body(r).new_tree(&mut runner).unwrap().current() };
        let (method, path) = routes[r];
        let (status, resp) = call(port, method, path.to_string(), Some(body.clone())).await;
        assert!((200..500).contains(&status), "{method} {path} {body:?} -> {status} {resp}");
    }
    mon.shutdown().await;
}
