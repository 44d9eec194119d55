//! The checks every [`Export`] implementation must pass, run against the in-memory export
//! here and against a tessera volume on a real cluster (`crates/tessera/tests/nbd.rs`).
//!
//! A seeded sequence of aligned and unaligned writes, punched and unpunched write-zeroes
//! and flushes over the first `span` bytes, each followed by reads compared with a model.

use bytes::Bytes;

use crate::export::Export;

/// Small deterministic generator (xorshift), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs `steps` random operations on `[0, span)` of a writable export (which must start
/// zeroed there) and checks every read against a model. Returns the first mismatch or error.
pub async fn check(export: &dyn Export, span: u64, steps: usize, seed: u64) -> Result<(), String> {
    if export.read_only() || span > export.size() || span < 16384 {
        return Err(format!("conformance needs a writable export of at least {span} bytes (and span >= 16 KiB)"));
    }
    let mut rng = Rng(seed | 1);
    let mut model = vec![0u8; span as usize];
    for step in 0..steps {
        let aligned = rng.below(2) == 0;
        let (offset, len) = if aligned {
            let blocks = span / 4096;
            let o = rng.below(blocks) * 4096;
            (o, ((rng.below(4) + 1) * 4096).min(span - o))
        } else {
            let o = rng.below(span - 1);
            (o, (rng.below(9000) + 1).min(span - o))
        };
        let what = rng.below(10);
        let ctx = |op: &str| format!("seed {seed} step {step}: {op} at {offset} len {len}");
        match what {
            0..=5 => {
                let byte = (rng.next() % 251) as u8 + 1;
                let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                export.write(offset, Bytes::from(data.clone())).await.map_err(|e| format!("{}: {e}", ctx("write")))?;
                model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            6 | 7 => {
                let punch = what == 6;
                export.write_zeroes(offset, len, punch).await.map_err(|e| format!("{}: {e}", ctx("write_zeroes")))?;
                model[offset as usize..(offset + len) as usize].fill(0);
            }
            _ => export.flush().await.map_err(|e| format!("{}: {e}", ctx("flush")))?,
        }
        // Read back the touched range with a margin, and a random other range.
        let lo = offset.saturating_sub(100);
        let hi = (offset + len + 100).min(span);
        let other = rng.below(span - 4096);
        for (o, l) in [(lo, hi - lo), (other, 4096 + rng.below(4000).min(span - other - 4096))] {
            let got = export.read(o, l as u32).await.map_err(|e| format!("{}: read back {o}+{l}: {e}", ctx("check")))?;
            let want = &model[o as usize..(o + l) as usize];
            if got[..] != want[..] {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!("{}: read {o}+{l} differs from the model at byte {}", ctx("check"), o + at as u64));
            }
        }
    }
    let whole = export.read(0, span as u32).await.map_err(|e| format!("seed {seed}: final read: {e}"))?;
    if whole[..] != model[..] {
        return Err(format!("seed {seed}: final contents differ from the model"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::mem::{Fault, Faulty, MemExport};
    use crate::ExportError;

    #[tokio::test]
    async fn mem_export_conforms() {
        for seed in 1..6 {
            let e = MemExport::new("m", 1 << 20, false);
            super::check(&*e, 256 * 1024, 300, seed).await.unwrap();
        }
    }

    #[tokio::test]
    async fn punched_zeroes_free_whole_chunks_only() {
        use crate::export::Export;
        let e = MemExport::new("m", 1 << 20, false);
        e.write(0, bytes::Bytes::from(vec![1u8; 16384])).await.unwrap();
        assert_eq!(e.allocated(), 16384);
        e.write_zeroes(100, 9000, true).await.unwrap();
        // Chunk 1 (4096..8192) is covered entirely and freed; chunks 0 and 2 are partial.
        assert_eq!(e.allocated(), 12288);
        e.write_zeroes(0, 16384, false).await.unwrap();
        assert_eq!(e.allocated(), 16384, "NO_HOLE zeroes allocate");
    }

    #[tokio::test]
    async fn faulty_export_fails_the_conformance_check() {
        let inner = MemExport::new("m", 1 << 20, false);
        let f = Faulty::new(inner, vec![Fault::Write { offset: 0, len: 1 << 20, error: ExportError::Io("injected".into()) }]);
        let err = super::check(&*f, 256 * 1024, 50, 3).await.unwrap_err();
        assert!(err.contains("injected"), "{err}");
    }
}
