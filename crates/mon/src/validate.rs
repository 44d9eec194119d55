//! Rules for names and sizes, shared by the API decoders and the service (which re-checks:
//! the service is also called directly, e.g. by `tessera up`).

use crate::error::{MonError, Result};

/// Volumes are at most 1 PiB (thin; the limit keeps object indexes and NBD sizes far from
/// overflow).
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;
/// Data is addressed in 4 KiB blocks end to end (NBD, objects, the engine).
pub const SIZE_ALIGN: u64 = 4096;
pub const DEFAULT_OBJECT_SIZE: u64 = 4 << 20;
pub const MIN_OBJECT_SIZE: u64 = 64 << 10;
pub const MAX_OBJECT_SIZE: u64 = 64 << 20;
/// PG tables are stored as one value per pool; 16,384 PGs keep it well under etcd's default
/// 1.5 MiB request limit.
pub const MAX_PG_COUNT: u32 = 16_384;
pub const MAX_REPLICAS: u32 = 7;
pub const MAX_NAME_LEN: usize = 64;
/// Snapshots per volume (every write carries the volume's snapshot context; OSDs keep one
/// version of an object per snapshot that saw it change).
pub const MAX_SNAPSHOTS: usize = 256;
/// Volumes one client session may hold open.
pub const MAX_SESSION_VOLUMES: usize = 1024;
/// Snapshots one client session may hold open read-only.
pub const MAX_SESSION_SNAPSHOTS: usize = 1024;
/// Longest session agent label.
pub const MAX_AGENT_LEN: usize = 128;

/// Names of pools, volumes and snapshots: 1 to 64 characters of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` or `-` (so they are safe in URLs, keys and shell commands).
pub fn name(field: &'static str, s: &str) -> Result<()> {
    let bad = |reason: &str| Err(MonError::invalid(field, format!("{s:?} {reason}")));
    if s.is_empty() {
        return bad("is empty");
    }
    if s.len() > MAX_NAME_LEN {
        return bad(&format!("is longer than {MAX_NAME_LEN} characters"));
    }
    if s.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("contains {c:?}; allowed are letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

pub fn volume_size(size: u64) -> Result<()> {
    if size == 0 {
        return Err(MonError::invalid("size", "must be greater than 0"));
    }
    if !size.is_multiple_of(SIZE_ALIGN) {
        return Err(MonError::invalid("size", format!("{size} bytes is not a multiple of {SIZE_ALIGN}")));
    }
    if size > MAX_VOLUME_SIZE {
        return Err(MonError::invalid("size", format!("{size} bytes exceeds the maximum volume size of {MAX_VOLUME_SIZE} bytes (1 PiB)")));
    }
    Ok(())
}

pub fn object_size(size: u64) -> Result<()> {
    if !size.is_power_of_two() || !(MIN_OBJECT_SIZE..=MAX_OBJECT_SIZE).contains(&size) {
        return Err(MonError::invalid(
            "object_size",
            format!("{size} bytes; it must be a power of two between {MIN_OBJECT_SIZE} (64 KiB) and {MAX_OBJECT_SIZE} (64 MiB)"),
        ));
    }
    Ok(())
}

pub fn pool_shape(replicas: u32, pg_count: u32) -> Result<()> {
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(MonError::invalid("replicas", format!("{replicas}; it must be between 1 and {MAX_REPLICAS}")));
    }
    if pg_count == 0 || pg_count > MAX_PG_COUNT {
        return Err(MonError::invalid("pg_count", format!("{pg_count}; it must be between 1 and {MAX_PG_COUNT}")));
    }
    Ok(())
}

/// OSD weights: finite, `>= 0`, at most the placement limit.
pub fn weight(w: f64) -> Result<()> {
    if !w.is_finite() || !(0.0..=tessera_placement::MAX_WEIGHT).contains(&w) {
        return Err(MonError::invalid(
            "weight",
            format!("{w}; it must be a finite number between 0 and {}", tessera_placement::MAX_WEIGHT),
        ));
    }
    Ok(())
}

/// Free-form labels (host, rack, device, address, uuid): 1..=255 printable ASCII bytes.
pub fn label(field: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MonError::invalid(field, format!("{s:?}; it must be 1 to 255 printable ASCII characters without spaces")));
    }
    Ok(())
}

/// A session's agent label (what the client is, for operators): 1 to 128 printable ASCII
/// characters, spaces allowed.
pub fn agent(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_AGENT_LEN || !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(MonError::invalid("agent", format!("{s:?}; it must be 1 to {MAX_AGENT_LEN} printable ASCII characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vol-1", "db.data_2", &"x".repeat(64)] {
            name("name", ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", "ü", &"x".repeat(65), "a\0"] {
            assert!(matches!(name("name", bad), Err(MonError::Invalid { .. })), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        volume_size(4096).unwrap();
        volume_size(MAX_VOLUME_SIZE).unwrap();
        for bad in [0, 4095, 4097, MAX_VOLUME_SIZE + 4096, u64::MAX] {
            assert!(volume_size(bad).is_err(), "{bad}");
        }
        object_size(4 << 20).unwrap();
        for bad in [0, 3 << 20, 32 << 10, 128 << 20] {
            assert!(object_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agents() {
        agent("nbd@host1 pid 42").unwrap();
        agent(&"a".repeat(MAX_AGENT_LEN)).unwrap();
        for bad in ["", "a\nb", "ü", &"a".repeat(MAX_AGENT_LEN + 1)] {
            assert!(matches!(agent(bad), Err(MonError::Invalid { .. })), "{bad:?}");
        }
    }
}
