//! The files a bench run writes: the engine's device file and fio's peer file beside it.
//!
//! Contract: an existing `--path` is used only if it is an empty regular file or an earlier
//! tessera device (superblock magic), so a typo cannot destroy unrelated data. On drop both
//! files (and the scratch directory, if this run created it) are removed unless `keep`.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// First bytes of every formatted tessera device (the superblock magic).
const DEVICE_MAGIC: &[u8; 8] = b"TSRSUPER";

pub struct Scratch {
    pub engine_file: PathBuf,
    pub fio_file: PathBuf,
    /// The directory this run created for the files, if `--path` was not given.
    dir: Option<PathBuf>,
    keep: bool,
}

impl Scratch {
    /// Chooses and checks the file paths; creates a scratch directory under the current
    /// directory when `path` is `None`.
    pub fn new(path: Option<&Path>, keep: bool) -> Result<Scratch> {
        let (engine_file, dir) = match path {
            Some(p) => {
                check_reusable(p)?;
                (p.to_owned(), None)
            }
            None => {
                let dir =
                    std::env::current_dir().context("reading the current directory")?.join(format!("tessera-bench-{}", std::process::id()));
                std::fs::create_dir(&dir).with_context(|| format!("creating scratch directory {}", dir.display()))?;
                (dir.join("engine.dev"), Some(dir))
            }
        };
        let mut fio_name = engine_file.file_name().unwrap_or_default().to_os_string();
        fio_name.push(".fio-peer");
        let fio_file = engine_file.with_file_name(fio_name);
        if fio_file.exists() && !fio_file.is_file() {
            bail!("{} exists and is not a regular file; choose another --path", fio_file.display());
        }
        Ok(Scratch { engine_file, fio_file, dir, keep })
    }
}

fn check_reusable(p: &Path) -> Result<()> {
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking --path {}", p.display())),
    };
    if !meta.is_file() {
        bail!("--path {} is not a regular file (block devices are not supported by the bench)", p.display());
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut head = [0u8; 8];
    let read = std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || &head != DEVICE_MAGIC {
        bail!("--path {} exists and is not a tessera device; refusing to overwrite it (remove it or pick another path)", p.display());
    }
    Ok(())
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {} and {}", self.engine_file.display(), self.fio_file.display());
            return;
        }
        for f in [&self.engine_file, &self.fio_file] {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("warning: could not remove {}: {e}", f.display());
                }
            }
        }
        if let Some(d) = &self.dir {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("warning: could not remove {}: {e}", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_overwrite_unrelated_files_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"precious").unwrap();
        let e = Scratch::new(Some(&other), false).err().unwrap().to_string();
        assert!(e.contains("refusing"), "{e}");
        assert!(Scratch::new(Some(dir.path()), false).err().unwrap().to_string().contains("not a regular file"));

        let dev = dir.path().join("bench.dev");
        let mut sb = DEVICE_MAGIC.to_vec();
        sb.resize(4096, 0);
        std::fs::write(&dev, &sb).unwrap();
        let s = Scratch::new(Some(&dev), false).unwrap();
        assert_eq!(s.fio_file, dir.path().join("bench.dev.fio-peer"));
        std::fs::write(&s.fio_file, b"x").unwrap();
        drop(s);
        assert!(!dev.exists() && !dir.path().join("bench.dev.fio-peer").exists());
        assert!(other.exists());
    }
}
