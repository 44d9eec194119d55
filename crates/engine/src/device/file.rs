//! A regular file or a raw block device, opened with `O_DIRECT` when the filesystem allows it.

use super::{check_io, Device};
use crate::error::DeviceError;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct FileDevice {
    file: File,
    path: PathBuf,
    len: u64,
    direct: bool,
}

impl FileDevice {
    /// Opens an existing file or block device. Tries `O_DIRECT` first and falls back to
    /// buffered I/O (e.g. on tmpfs); `sync` is `fdatasync` either way.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (mut file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false)?, false),
            Err(e) => return Err(e),
        };
        // Works for files and block devices alike.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, path: path.to_owned(), len: len - len % 4096, direct })
    }

    /// Creates (or extends) a regular file of `len` bytes and writes zeros over all of it, then
    /// opens it. Zero-filling (rather than `fallocate`) matters: on ext4 and XFS an allocated
    /// but never-written extent is converted on its first write, and that conversion is a
    /// journal commit inside the next `fdatasync`, which would tax every first write to a
    /// segment.
    pub fn create(path: &Path, len: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let have = file.metadata()?.len();
        if have < len {
            file.set_len(len)?;
        }
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        file.sync_all()?;
        drop(file);
        Self::open(path)
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

impl Device for FileDevice {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_io("read", self.len, offset, buf.as_ptr(), buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(|e| DeviceError::new("read", offset, buf.len() as u64, e))
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        check_io("write", self.len, offset, buf.as_ptr(), buf.len())?;
        self.file.write_all_at(buf, offset).map_err(|e| DeviceError::new("write", offset, buf.len() as u64, e))
    }
    fn sync(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|e| DeviceError::new("fdatasync", 0, 0, e))
    }
    fn describe(&self) -> String {
        format!("{} ({}, {} bytes)", self.path.display(), if self.direct { "O_DIRECT" } else { "buffered" }, self.len)
    }
}
