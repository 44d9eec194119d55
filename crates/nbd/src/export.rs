//! What an NBD connection serves: an [`Export`] (one block device) found by name in a
//! [`Catalog`]. Real implementation: [`crate::volume`] (tessera volumes through the client
//! library); in-memory: [`crate::mem`]; fault-injecting: [`crate::mem::Faulty`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{ExportError, OpenError};

/// One exported block device. Calls may run concurrently.
///
/// Contract: the server only calls with ranges inside `size()` (checked before), and never
/// calls the writing methods of a read-only export.
#[async_trait]
pub trait Export: Send + Sync {
    fn name(&self) -> &str;
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// A line for humans (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    fn description(&self) -> String {
        String::new()
    }
    /// Exactly `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError>;
    /// Returns once the data is written; what "written" means for durability is the
    /// export's to state ([`Export::flush`] makes it durable in any case).
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), ExportError>;
    /// Makes the range read as zeros. With `punch` the export may free the space (trim);
    /// without it the space must stay allocated.
    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), ExportError>;
    /// Returns once every write that returned before this call is durable.
    async fn flush(&self) -> Result<(), ExportError>;
}

/// One line of an export list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportEntry {
    pub name: String,
    pub description: String,
}

/// Finds exports by name.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Opens the export named `name`, fresh: a resized volume shows its new size here.
    async fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError>;
    async fn list(&self) -> Result<Vec<ExportEntry>, OpenError>;
}
