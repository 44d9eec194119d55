//! Fault settings for a running process, read from a control file (for tests only).
//!
//! The file holds `key=value` lines; `#` starts a comment (whole line or after a value),
//! blank lines are ignored, a key given twice takes its last value, a missing key is 0:
//!
//! | key           | value          | effect                                                        |
//! |---------------|----------------|---------------------------------------------------------------|
//! | `read_error`  | 0.0..=1.0      | probability that a read fails with an injected `DeviceError`  |
//! | `write_error` | 0.0..=1.0      | probability that a write fails (nothing of it is written)     |
//! | `sync_error`  | 0.0..=1.0      | probability that a sync fails (nothing is made durable)       |
//! | `delay_ms`    | 0..=3600000    | sleep this long before every read, write and sync (slow disk) |
//! | `torn`        | 0.0..=1.0      | probability that a write also puts a random subset of its     |
//! |               |                | 512-byte sectors on the inner device at once (torn on crash)  |
//! | `retry_writes`| 0 or 1         | read by the OSD, not the device: answer `Retry` to every     |
//! |               |                | client write (a PG that cannot take writes for a while)       |
//! | `space_full`  | 0 or 1         | read by the OSD: it behaves as if its device were full (takes |
//! |               |                | no new data, drops appends that carry data)                   |
//! | `corrupt_appends` | 0.0..=1.0  | read by the OSD: probability that it flips a bit in a log     |
//! |               |                | entry's payload after receiving it, before its engine (memory |
//! |               |                | corruption inside the OSD; end-to-end checksums must refuse it)|
//! | `corrupt_reads`| 0.0..=1.0     | read by the OSD: probability that it flips a bit in a read's  |
//! |               |                | data after its engine verified it (the client must catch it)  |
//!
//! An empty (or missing) file means no faults. A line that does not parse is logged with
//! `tracing::warn` and ignored; nothing here panics on any input. [`FaultControl`] re-reads
//! the file when it changes, checking its modification time (and size and inode) at most every
//! [`CHECK_INTERVAL`], from whichever I/O call asks for the settings.

use parking_lot::Mutex;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often [`FaultControl::settings`] looks at the control file at most.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Largest accepted `delay_ms` (one hour: long enough to model a hung disk).
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// The keys of a control file, in the order [`FaultSettings::to_text`] writes them.
pub const KEYS: [&str; 9] =
    ["read_error", "write_error", "sync_error", "delay_ms", "torn", "retry_writes", "space_full", "corrupt_appends", "corrupt_reads"];

/// One set of fault settings (all zero: no faults). Probabilities are within `0.0..=1.0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultSettings {
    /// Probability that a read fails.
    pub read_error: f64,
    /// Probability that a write fails (before anything of it is written).
    pub write_error: f64,
    /// Probability that a sync fails (before anything is made durable).
    pub sync_error: f64,
    /// Delay before every read, write and sync, in milliseconds.
    pub delay_ms: u64,
    /// Probability that a write also tears through to the inner device (see the module docs).
    pub torn: f64,
    /// The OSD answers `Retry` to every client write (see the module docs).
    pub retry_writes: bool,
    /// The OSD behaves as if its device were full (see the module docs).
    pub space_full: bool,
    /// Probability that the OSD corrupts a log entry's payload before its engine.
    pub corrupt_appends: f64,
    /// Probability that the OSD corrupts a read's data after its engine.
    pub corrupt_reads: f64,
}

impl FaultSettings {
    /// Whether these settings inject nothing.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    /// Parses a control file. Returns the settings and one message per ignored line (the
    /// caller logs them). Never panics; invalid UTF-8 is replaced, not rejected.
    pub fn parse(text: &[u8]) -> (FaultSettings, Vec<String>) {
        let text = String::from_utf8_lossy(text);
        let mut s = FaultSettings::default();
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Err(why) = s.set_line(line) {
                let shown: String = raw.chars().take(80).collect();
                bad.push(format!("line {}: {why}: {shown:?}", i + 1));
            }
        }
        (s, bad)
    }

    fn set_line(&mut self, line: &str) -> Result<(), String> {
        let (key, value) = line.split_once('=').ok_or("expected key=value")?;
        let (key, value) = (key.trim(), value.trim());
        let prob = |v: &str| match v.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
            _ => Err(format!("{key} must be a probability between 0 and 1")),
        };
        match key {
            "read_error" => self.read_error = prob(value)?,
            "write_error" => self.write_error = prob(value)?,
            "sync_error" => self.sync_error = prob(value)?,
            "torn" => self.torn = prob(value)?,
            "corrupt_appends" => self.corrupt_appends = prob(value)?,
            "corrupt_reads" => self.corrupt_reads = prob(value)?,
            "retry_writes" | "space_full" => {
                let on = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("{key} must be 0 or 1")),
                };
                if key == "retry_writes" {
                    self.retry_writes = on;
                } else {
                    self.space_full = on;
                }
            }
            "delay_ms" => {
                self.delay_ms = match value.parse::<u64>() {
                    Ok(ms) if ms <= MAX_DELAY_MS => ms,
                    _ => return Err(format!("delay_ms must be a whole number of milliseconds up to {MAX_DELAY_MS}")),
                }
            }
            _ => return Err(format!("unknown key (known: {})", KEYS.join(", "))),
        }
        Ok(())
    }

    /// `key=value` of every key, in [`KEYS`] order.
    fn pairs(&self) -> [String; 9] {
        let flag = |b: bool| u8::from(b).to_string();
        let values = [
            self.read_error.to_string(),
            self.write_error.to_string(),
            self.sync_error.to_string(),
            self.delay_ms.to_string(),
            self.torn.to_string(),
            flag(self.retry_writes),
            flag(self.space_full),
            self.corrupt_appends.to_string(),
            self.corrupt_reads.to_string(),
        ];
        std::array::from_fn(|i| format!("{}={}", KEYS[i], values[i]))
    }

    /// The settings as control file text; [`FaultSettings::parse`] gives them back exactly.
    pub fn to_text(&self) -> String {
        self.pairs().iter().map(|p| format!("{p}\n")).collect()
    }
}

impl fmt::Display for FaultSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("no faults");
        }
        f.write_str(&self.pairs().join(" "))
    }
}

/// What identifies one version of the control file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

struct Watch {
    settings: FaultSettings,
    checked: Instant,
    stamp: Option<Stamp>,
    /// The file was missing or unreadable at the last check (warned once per episode).
    unreadable: bool,
    /// The file's contents at the last read (bad lines are logged once per change).
    text: Vec<u8>,
}

/// The current [`FaultSettings`]: fixed, or following a control file.
pub struct FaultControl {
    path: Option<PathBuf>,
    watch: Mutex<Watch>,
}

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultControl").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FaultControl {
    /// Settings that never change (except through [`FaultControl::set`]).
    pub fn fixed(settings: FaultSettings) -> Self {
        Self {
            path: None,
            watch: Mutex::new(Watch { settings, checked: Instant::now(), stamp: None, unreadable: false, text: Vec::new() }),
        }
    }

    /// Follows the control file at `path`, creating it empty (no faults) if absent, and reads
    /// it now. Later changes are picked up within [`CHECK_INTERVAL`] of the next I/O; a file
    /// deleted later counts as empty.
    pub fn from_file(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        std::fs::OpenOptions::new().append(true).create(true).open(&path)?;
        let c = Self {
            path: Some(path),
            watch: Mutex::new(Watch {
                settings: FaultSettings::default(),
                checked: Instant::now(),
                stamp: None,
                unreadable: false,
                text: Vec::new(),
            }),
        };
        c.reload(&mut c.watch.lock());
        Ok(c)
    }

    /// The control file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Replaces the settings until the control file next changes.
    pub fn set(&self, settings: FaultSettings) {
        self.watch.lock().settings = settings;
    }

    /// The settings now, after re-reading the control file if it changed (looked at no more
    /// often than every [`CHECK_INTERVAL`]).
    pub fn settings(&self) -> FaultSettings {
        let mut w = self.watch.lock();
        if self.path.is_some() && w.checked.elapsed() >= CHECK_INTERVAL {
            self.reload(&mut w);
        }
        w.settings
    }

    fn reload(&self, w: &mut Watch) {
        let Some(path) = &self.path else { return };
        w.checked = Instant::now();
        let stamp = match std::fs::metadata(path) {
            Ok(m) => Stamp { mtime: m.modified().ok(), len: m.len(), ino: m.ino() },
            Err(e) => {
                if !w.unreadable {
                    tracing::warn!(path = %path.display(), "fault control file unreadable ({e}); injecting no faults");
                }
                w.unreadable = true;
                w.stamp = None;
                w.text.clear();
                self.apply(w, FaultSettings::default());
                return;
            }
        };
        // Modification times are coarse (a few ms, or a second on some filesystems): a file
        // changed again within that tick keeps its stamp, so a recent one is re-read anyway.
        let recent = stamp.mtime.and_then(|t| t.elapsed().ok()).is_none_or(|age| age < Duration::from_secs(2));
        if w.stamp == Some(stamp) && !recent && !w.unreadable {
            return;
        }
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) => {
                if !w.unreadable {
                    tracing::warn!(path = %path.display(), "cannot read the fault control file ({e}); keeping {}", w.settings);
                }
                w.unreadable = true;
                return;
            }
        };
        w.unreadable = false;
        w.stamp = Some(stamp);
        if text == w.text {
            return;
        }
        let (settings, bad) = FaultSettings::parse(&text);
        for b in &bad {
            tracing::warn!(path = %path.display(), "fault control file: ignoring {b}");
        }
        w.text = text;
        self.apply(w, settings);
    }

    fn apply(&self, w: &mut Watch, settings: FaultSettings) {
        if settings != w.settings {
            let path = self.path.as_deref().unwrap_or(Path::new("-")).display().to_string();
            if settings.is_none() {
                tracing::warn!(%path, "fault injection: now injecting no faults");
            } else {
                tracing::warn!(%path, "fault injection: now injecting {settings}");
            }
            w.settings = settings;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_keys_comments_and_blank_lines() {
        let text =
            b"# slow and flaky\n\nread_error = 0.25\nwrite_error=1 # always\r\nsync_error=0\ndelay_ms=20\ntorn=0.5\nretry_writes=1\n";
        let (s, bad) = FaultSettings::parse(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            s,
            FaultSettings {
                read_error: 0.25,
                write_error: 1.0,
                sync_error: 0.0,
                delay_ms: 20,
                torn: 0.5,
                retry_writes: true,
                space_full: false,
                corrupt_appends: 0.0,
                corrupt_reads: 0.0,
            }
        );
        assert_eq!(FaultSettings::parse(b"retry_writes=2").1.len(), 1, "0 or 1 only");
    }

    #[test]
    fn empty_file_is_no_faults() {
        let (s, bad) = FaultSettings::parse(b"");
        assert!(s.is_none() && bad.is_empty());
        assert_eq!(s.to_string(), "no faults");
    }

    #[test]
    fn bad_lines_are_reported_and_ignored() {
        let text = "read_error=2\nwrite_error=-0.1\nsync_error=nan\ntorn=inf\ndelay_ms=1.5\ndelay_ms=3600001\nbogus=1\nno equals sign\n\
                    =0.5\nread_error\ntorn=0.5\n\u{fffd}=1\n";
        let (s, bad) = FaultSettings::parse(text.as_bytes());
        assert_eq!(s, FaultSettings { torn: 0.5, ..Default::default() });
        assert_eq!(bad.len(), 11, "{bad:?}");
        assert!(bad[0].starts_with("line 1: read_error must be a probability"), "{}", bad[0]);
        assert!(bad[6].contains("unknown key"), "{}", bad[6]);
    }

    #[test]
    fn last_value_of_a_key_wins() {
        let (s, _) = FaultSettings::parse(b"delay_ms=5\ndelay_ms=7\n");
        assert_eq!(s.delay_ms, 7);
    }

    #[test]
    fn control_file_is_created_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let c = FaultControl::from_file(&path).unwrap();
        assert!(path.exists(), "created if absent");
        assert!(c.settings().is_none());
        std::fs::write(&path, "read_error=1\n").unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(20));
        assert_eq!(c.settings().read_error, 1.0);
        // Same length, changed within the same coarse mtime tick: still seen.
        std::fs::write(&path, "read_error=0\n").unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(20));
        assert!(c.settings().is_none());
        std::fs::write(&path, "delay_ms=3\nwhat\n").unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(20));
        assert_eq!(c.settings().delay_ms, 3);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(20));
        assert!(c.settings().is_none(), "a deleted file means no faults");
    }

    #[test]
    fn an_existing_file_is_kept_and_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        std::fs::write(&path, "sync_error=0.5\n").unwrap();
        let c = FaultControl::from_file(&path).unwrap();
        assert_eq!(c.settings().sync_error, 0.5);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sync_error=0.5\n");
    }

    fn settings() -> impl Strategy<Value = FaultSettings> {
        let p = prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64];
        (p.clone(), p.clone(), p.clone(), 0..=MAX_DELAY_MS, p.clone(), any::<bool>(), any::<bool>(), p.clone(), p).prop_map(
            |(read_error, write_error, sync_error, delay_ms, torn, retry_writes, space_full, corrupt_appends, corrupt_reads)| {
                FaultSettings {
                    read_error,
                    write_error,
                    sync_error,
                    delay_ms,
                    torn,
                    retry_writes,
                    space_full,
                    corrupt_appends,
                    corrupt_reads,
                }
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (s, _) = FaultSettings::parse(&bytes);
            for p in [s.read_error, s.write_error, s.sync_error, s.torn] {
                prop_assert!((0.0..=1.0).contains(&p));
            }
            prop_assert!(s.delay_ms <= MAX_DELAY_MS);
        }

        #[test]
        fn key_like_lines_never_panic(lines in proptest::collection::vec(
            "(read_error|write_error|sync_error|delay_ms|torn|x)? *=? *[-+0-9.eEinfaNn#]{0,12}", 0..8)) {
            let _ = FaultSettings::parse(lines.join("\n").as_bytes());
        }

        #[test]
        fn valid_settings_round_trip(s in settings()) {
            let (back, bad) = FaultSettings::parse(s.to_text().as_bytes());
            prop_assert!(bad.is_empty(), "{:?}", bad);
            prop_assert_eq!(back, s);
        }

        #[test]
        fn round_trip_ignores_comments_blanks_and_order(s in settings(), order in Just(KEYS.to_vec()).prop_shuffle(), pad in 0..3usize) {
            let text = s.to_text();
            let lines: Vec<&str> = text.lines().collect();
            let sp = " ".repeat(pad);
            let mut out = String::from("# generated\n\n");
            for k in order {
                let line = lines.iter().find(|l| l.starts_with(&format!("{k}="))).unwrap();
                let (key, value) = line.split_once('=').unwrap();
                out.push_str(&format!("{sp}{key}{sp}={sp}{value}{sp}# {k}\n\n"));
            }
            let (back, bad) = FaultSettings::parse(out.as_bytes());
            prop_assert!(bad.is_empty(), "{:?}", bad);
            prop_assert_eq!(back, s);
        }
    }
}
