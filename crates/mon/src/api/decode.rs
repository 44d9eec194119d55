//! Decoders of everything the API reads from a request (bodies, query strings, path ids).
//! Contract: never panic; every rejection is a `MonError` that maps to a 4xx status and
//! says what was wrong. Property-tested in `tests/api_decoders.rs` on arbitrary bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{MonError, Result};

/// Largest request body read (bigger ones get 413 before reaching a handler).
pub const MAX_BODY: usize = 64 << 10;
/// Longest long-poll wait on `GET /api/v1/map`.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Decodes a JSON request body into `T` (which rejects unknown fields).
pub fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(MonError::BadRequest("the request body is empty; expected a JSON object".into()));
    }
    if bytes.len() > MAX_BODY {
        return Err(MonError::BadRequest(format!("the request body is {} bytes; the limit is {MAX_BODY}", bytes.len())));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => "malformed JSON",
            serde_json::error::Category::Data => "invalid request body",
        };
        MonError::BadRequest(format!("{what}: {e}"))
    })
}

/// An OSD id from a URL path segment.
pub fn osd_id(s: &str) -> Result<u32> {
    s.parse::<u32>().map_err(|_| MonError::invalid("osd id", format!("{s:?} is not an OSD id (a number from 0 to {})", u32::MAX)))
}

/// A client (session) id from a URL path segment.
pub fn client_id(s: &str) -> Result<u64> {
    s.parse::<u64>().map_err(|_| MonError::invalid("client id", format!("{s:?} is not a client id (a number from 0 to {})", u64::MAX)))
}

/// Query of `GET /api/v1/map`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapQuery {
    /// Answer only once the map epoch is greater than this (long poll).
    pub newer_than: Option<u64>,
    /// How long to wait for that, in milliseconds (default 30 s, at most 60 s); on timeout
    /// the current map is returned.
    pub wait_ms: u64,
}

pub fn map_query(raw: Option<&str>) -> Result<MapQuery> {
    let mut q = MapQuery { newer_than: None, wait_ms: 30_000 };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |field: &'static str| v.parse::<u64>().map_err(|_| MonError::invalid(field, format!("{v:?} is not a whole number")));
        match k {
            "newer_than" => q.newer_than = Some(num("newer_than")?),
            "wait_ms" => {
                let w = num("wait_ms")?;
                if w > MAX_WAIT_MS {
                    return Err(MonError::invalid("wait_ms", format!("{w}; at most {MAX_WAIT_MS}")));
                }
                q.wait_ms = w;
            }
            _ => return Err(MonError::BadRequest(format!("unknown query parameter {k:?}; known: newer_than, wait_ms"))),
        }
    }
    Ok(q)
}

/// Body of `POST /api/v1/volumes/{name}/resize`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    pub size: u64,
    #[serde(default)]
    pub allow_shrink: bool,
}

/// Body of `POST /api/v1/volumes/{name}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// The snapshot's name (unique per volume).
    pub name: String,
}

/// Body of `POST /api/v1/volumes/{name}/snapshots/{snap}/clone`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloneSnapshot {
    /// The new volume's name.
    pub name: String,
}

/// Body of `POST /api/v1/osds/{id}/heartbeat` (may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The map epoch the OSD runs with.
    #[serde(default)]
    pub epoch: u64,
    /// Reports of the PGs this OSD leads (at most [`MAX_PG_REPORTS`] per heartbeat).
    #[serde(default)]
    pub pgs: Vec<crate::pgstate::PgReport>,
    /// The OSD's device fullness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<crate::space::SpaceReport>,
    /// PGs (`pool.index`, index in hex) whose replica on this OSD is marked damaged
    /// (corrupt data or a device failing reads; repair pending or under way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

/// PG reports per heartbeat; an OSD leading more PGs reports them in turns.
pub const MAX_PG_REPORTS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::CreateVolume;

    #[test]
    fn bodies() {
        let v: CreateVolume = body(br#"{"name":"a","pool":"p","size":4096}"#).unwrap();
        assert_eq!(v.object_size, 4 << 20);
        for bad in [
            &b""[..],
            b"  ",
            b"{",
            b"[]",
            b"null",
            br#"{"name":"a","pool":"p","size":-1}"#,
            br#"{"name":"a","pool":"p","size":1e30}"#,
            br#"{"name":"a","pool":"p","size":4096,"extra":1}"#,
            br#"{"name":"a","pool":"p","size":18446744073709551616}"#,
        ] {
            let e = body::<CreateVolume>(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
        }
    }

    #[test]
    fn queries() {
        assert_eq!(map_query(None).unwrap(), MapQuery { newer_than: None, wait_ms: 30_000 });
        assert_eq!(map_query(Some("newer_than=5&wait_ms=10")).unwrap(), MapQuery { newer_than: Some(5), wait_ms: 10 });
        for bad in ["x=1", "newer_than=-1", "wait_ms=99999999", "newer_than", "wait_ms=1e3"] {
            assert_eq!(map_query(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
        assert_eq!(osd_id("7").unwrap(), 7);
        assert!(osd_id("-1").is_err() && osd_id("4294967296").is_err() && osd_id("").is_err());
        assert_eq!(client_id("18446744073709551615").unwrap(), u64::MAX);
        for bad in ["-1", "18446744073709551616", "", "1e3", " 1"] {
            assert_eq!(client_id(bad).unwrap_err().status(), 400, "{bad}");
        }
    }
}
