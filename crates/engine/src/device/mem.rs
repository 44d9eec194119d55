//! A device held in memory: every write is immediately "durable". For unit tests and models.

use super::{check_io, Device};
use crate::error::DeviceError;
use parking_lot::RwLock;

pub struct MemDevice {
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled device of `len` bytes (rounded down to 4096).
    pub fn new(len: u64) -> Self {
        Self { data: RwLock::new(vec![0; (len - len % 4096) as usize]) }
    }
}

impl Device for MemDevice {
    fn len(&self) -> u64 {
        self.data.read().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let data = self.data.read();
        check_io("read", data.len() as u64, offset, buf.as_ptr(), buf.len())?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut data = self.data.write();
        check_io("write", data.len() as u64, offset, buf.as_ptr(), buf.len())?;
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.len())
    }
}
