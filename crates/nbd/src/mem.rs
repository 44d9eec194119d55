//! In-memory exports for tests and fuzzing: [`MemExport`] (a byte array that counts the
//! bytes it holds, trims free them), [`MemCatalog`], and [`Faulty`], a wrapper that fails
//! chosen operations with chosen errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::error::{ExportError, OpenError};
use crate::export::{Catalog, Export, ExportEntry};

const CHUNK: u64 = 4096;

/// A sparse in-memory device: 4 KiB chunks exist only once written with non-punched data.
pub struct MemExport {
    name: String,
    size: u64,
    read_only: bool,
    chunks: Mutex<BTreeMap<u64, Box<[u8; CHUNK as usize]>>>,
    /// Flushes seen (a test can check FLUSH reached the export).
    pub flushes: AtomicU64,
}

impl MemExport {
    pub fn new(name: &str, size: u64, read_only: bool) -> Arc<MemExport> {
        Arc::new(MemExport { name: name.into(), size, read_only, chunks: Mutex::default(), flushes: AtomicU64::new(0) })
    }

    /// Bytes held in allocated chunks.
    pub fn allocated(&self) -> u64 {
        self.chunks.lock().unwrap().len() as u64 * CHUNK
    }

    /// The whole device (tests compare it against a model).
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size as usize];
        for (idx, c) in self.chunks.lock().unwrap().iter() {
            let start = (idx * CHUNK) as usize;
            let end = (start + CHUNK as usize).min(out.len());
            out[start..end].copy_from_slice(&c[..end - start]);
        }
        out
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::OutOfRange { offset, len, size: self.size }),
        }
    }

    /// Applies `f(chunk bytes, range within chunk, range within the call)` to every chunk
    /// the range touches; `alloc` creates missing chunks.
    fn each(&self, offset: u64, len: u64, alloc: bool, mut f: impl FnMut(Option<&mut [u8; CHUNK as usize]>, usize, usize, usize)) {
        let mut chunks = self.chunks.lock().unwrap();
        let mut pos = offset;
        while pos < offset + len {
            let idx = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let n = ((CHUNK as usize - within) as u64).min(offset + len - pos) as usize;
            let at = (pos - offset) as usize;
            if alloc {
                let c = chunks.entry(idx).or_insert_with(|| Box::new([0u8; CHUNK as usize]));
                f(Some(c), within, n, at);
            } else {
                f(chunks.get_mut(&idx).map(|c| &mut **c), within, n, at);
            }
            pos += n as u64;
        }
    }
}

#[async_trait]
impl Export for MemExport {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError> {
        self.check(offset, len as u64)?;
        let mut out = BytesMut::zeroed(len as usize);
        self.each(offset, len as u64, false, |c, within, n, at| {
            if let Some(c) = c {
                out[at..at + n].copy_from_slice(&c[within..within + n]);
            }
        });
        Ok(out.freeze())
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), ExportError> {
        self.check(offset, data.len() as u64)?;
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        self.each(offset, data.len() as u64, true, |c, within, n, at| c.unwrap()[within..within + n].copy_from_slice(&data[at..at + n]));
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), ExportError> {
        self.check(offset, len)?;
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        self.each(offset, len, !punch, |c, within, n, _| {
            if let Some(c) = c {
                c[within..within + n].fill(0)
            }
        });
        if punch {
            // Free chunks the range covers entirely.
            let first = offset.div_ceil(CHUNK);
            let end = (offset + len) / CHUNK;
            let mut chunks = self.chunks.lock().unwrap();
            let doomed: Vec<u64> = chunks.range(first..end.max(first)).map(|(k, _)| *k).collect();
            for k in doomed {
                chunks.remove(&k);
            }
        }
        Ok(())
    }
    async fn flush(&self) -> Result<(), ExportError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A fixed set of exports.
#[derive(Default)]
pub struct MemCatalog {
    exports: Mutex<BTreeMap<String, Arc<dyn Export>>>,
}

impl MemCatalog {
    pub fn with(exports: Vec<Arc<dyn Export>>) -> Arc<MemCatalog> {
        let c = MemCatalog::default();
        for e in exports {
            c.exports.lock().unwrap().insert(e.name().to_string(), e);
        }
        Arc::new(c)
    }
}

#[async_trait]
impl Catalog for MemCatalog {
    async fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError> {
        self.exports.lock().unwrap().get(name).cloned().ok_or_else(|| OpenError::NotFound(name.into()))
    }
    async fn list(&self) -> Result<Vec<ExportEntry>, OpenError> {
        Ok(self.exports.lock().unwrap().values().map(|e| ExportEntry { name: e.name().into(), description: e.description() }).collect())
    }
}

/// Which calls of a [`Faulty`] export fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reads overlapping `[offset, offset + len)` fail with the error.
    Read { offset: u64, len: u64, error: ExportError },
    /// Writes and write-zeroes overlapping the range fail with the error, changing nothing.
    Write { offset: u64, len: u64, error: ExportError },
    /// Every flush fails.
    Flush(ExportError),
    /// Calls overlapping the range (reads and writes) take `delay` longer: a slow disk.
    Slow { offset: u64, len: u64, delay: std::time::Duration },
    /// Writes overlapping the range panic: a bug in an export must not hang the server.
    Panic { offset: u64, len: u64 },
}

/// Wraps an export and fails the calls its faults name.
pub struct Faulty {
    inner: Arc<dyn Export>,
    faults: Mutex<Vec<Fault>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Export>, faults: Vec<Fault>) -> Arc<Faulty> {
        Arc::new(Faulty { inner, faults: Mutex::new(faults) })
    }

    async fn hit(&self, write: bool, offset: u64, len: u64) -> Result<(), ExportError> {
        let overlaps = |o: u64, l: u64| offset < o.saturating_add(l) && o < offset.saturating_add(len.max(1));
        let mut delay = std::time::Duration::ZERO;
        let mut failure = None;
        let mut explode = false;
        for f in self.faults.lock().unwrap().iter() {
            match f {
                Fault::Read { offset: o, len: l, error } if !write && overlaps(*o, *l) => failure = failure.or(Some(error.clone())),
                Fault::Write { offset: o, len: l, error } if write && overlaps(*o, *l) => failure = failure.or(Some(error.clone())),
                Fault::Slow { offset: o, len: l, delay: d } if overlaps(*o, *l) => delay = delay.max(*d),
                Fault::Panic { offset: o, len: l } if write && overlaps(*o, *l) => explode = true,
                _ => {}
            }
        }
        // Outside the lock, so the panic poisons nothing.
        if explode {
            panic!("injected export panic at offset {offset}");
        }
        tokio::time::sleep(delay).await;
        failure.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Export for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError> {
        self.hit(false, offset, len as u64).await?;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), ExportError> {
        self.hit(true, offset, data.len() as u64).await?;
        self.inner.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), ExportError> {
        self.hit(true, offset, len).await?;
        self.inner.write_zeroes(offset, len, punch).await
    }
    async fn flush(&self) -> Result<(), ExportError> {
        if let Some(Fault::Flush(e)) = self.faults.lock().unwrap().iter().find(|f| matches!(f, Fault::Flush(_))) {
            return Err(e.clone());
        }
        self.inner.flush().await
    }
}
