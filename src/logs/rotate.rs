//! A log file that rotates by size (as Python's `RotatingFileHandler`: `app.log`,
//! `app.log.1` ... `app.log.N`) or by time (daily or hourly: `app.log.2026-11-27`,
//! `app.log.2026-11-27T03`), keeping a fixed number of backups.
//!
//! Written here because `tracing-appender` rotates by time only.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// When a log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Never: one file that grows.
    Never,
    /// Before a line would take the file past this many bytes.
    Size(u64),
    /// At the start of every UTC hour.
    Hourly,
    /// At the start of every UTC day.
    Daily,
}

impl Rotation {
    /// The period `now` falls in (hours or days since the epoch), for the time
    /// rotations.
    fn period(self, now: SystemTime) -> Option<u64> {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        match self {
            Rotation::Hourly => Some(secs / 3600),
            Rotation::Daily => Some(secs / 86_400),
            Rotation::Never | Rotation::Size(_) => None,
        }
    }

    /// The suffix of the backup of `period`.
    fn suffix(self, period: u64) -> String {
        match self {
            Rotation::Hourly => {
                let (y, m, d) = civil_from_days((period / 24) as i64);
                format!("{y:04}-{m:02}-{d:02}T{:02}", period % 24)
            }
            _ => {
                let (y, m, d) = civil_from_days(period as i64);
                format!("{y:04}-{m:02}-{d:02}")
            }
        }
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes of at least this many bytes skip the `BufWriter` (one copy less).
const DIRECT_WRITE: usize = 16 * 1024;

/// The open log file and its rotation state.
#[derive(Debug)]
pub(crate) struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    backups: usize,
    file: BufWriter<File>,
    size: u64,
    period: Option<u64>,
    /// Whether the file is synced to disk before it is renamed away.
    sync_on_rotate: bool,
}

impl RotatingFile {
    /// Opens (appending) or creates `path`. Fails when its directory does not
    /// exist or is not writable.
    pub(crate) fn open(path: &Path, rotation: Rotation, backups: usize, now: SystemTime) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            rotation,
            backups,
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
            period: rotation.period(now),
            sync_on_rotate: false,
        })
    }

    /// Syncs the file to disk before each rotation, so lines written but not yet
    /// synced are not left behind in a backup the OS has not written out.
    pub(crate) fn sync_on_rotate(mut self) -> Self {
        self.sync_on_rotate = true;
        self
    }

    /// Writes whole lines, back to back in `bytes`, rotating before any line
    /// that is due to start a new file: a line is never split between two files,
    /// and one longer than the size limit gets a file to itself.
    pub(crate) fn write_lines(&mut self, mut bytes: &[u8], now: SystemTime) -> io::Result<()> {
        match self.rotation {
            Rotation::Size(max) => {
                while self.size + bytes.len() as u64 > max {
                    let room = usize::try_from(max.saturating_sub(self.size)).unwrap_or(usize::MAX);
                    // The whole lines that still fit in this file.
                    let fit = bytes[..room.min(bytes.len())]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    if fit > 0 {
                        self.put(&bytes[..fit])?;
                        bytes = &bytes[fit..];
                    } else if self.size == 0 {
                        let line = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
                        self.put(&bytes[..line])?;
                        bytes = &bytes[line..];
                    }
                    if bytes.is_empty() {
                        return Ok(());
                    }
                    self.rotate_numbered()?;
                }
            }
            Rotation::Hourly | Rotation::Daily => {
                let period = self.rotation.period(now);
                if period != self.period {
                    if let Some(old) = self.period {
                        self.rotate_dated(old)?;
                    }
                    self.period = period;
                }
            }
            Rotation::Never => {}
        }
        self.put(bytes)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_WRITE {
            // A batch of lines goes to the file as it is, not through the buffer.
            self.file.flush()?;
            self.file.get_mut().write_all(bytes)?;
        } else {
            self.file.write_all(bytes)?;
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Writes out the buffered lines. When that fails (a full disk) the
    /// buffered lines are discarded, so memory stays bounded and a line is never
    /// written twice; the caller counts them as lost.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let result = self.file.flush();
        if result.is_err() {
            let file = self.file.get_ref().try_clone()?;
            // The old writer's buffer goes with it; its `Drop` would retry the
            // write, so it is forgotten through `into_parts`.
            let old = std::mem::replace(&mut self.file, BufWriter::with_capacity(64 * 1024, file));
            drop(old.into_parts());
        }
        result
    }

    /// Writes out the buffered lines, then syncs the file's data to disk.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.get_ref().sync_data()
    }

    /// Writes one whole line (rotating first when due) and hands it to the OS,
    /// with nothing else buffered. When that fails (a full disk) the file is cut
    /// back to where the line began, so it never keeps part of a line and the
    /// next one starts clean.
    pub(crate) fn write_line_through(&mut self, line: &[u8], now: SystemTime) -> io::Result<()> {
        self.flush()?;
        let (result, start) = match self.write_lines(line, now) {
            // `put` counted the line; a failed flush has dropped it from the buffer.
            Ok(()) => (self.flush(), self.size - line.len() as u64),
            Err(e) => (Err(e), self.size),
        };
        if result.is_err() {
            // Best effort: a device such as /dev/full cannot be cut.
            let _ = self.file.get_ref().set_len(start);
            self.size = start;
        }
        result
    }

    fn backup(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        PathBuf::from(name)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        Ok(())
    }

    /// `app.log.N-1` -> `app.log.N` ... `app.log` -> `app.log.1`; the oldest goes.
    fn rotate_numbered(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.sync_on_rotate {
            self.file.get_ref().sync_data()?;
        }
        if self.backups > 0 {
            let _ = std::fs::remove_file(self.backup(&self.backups.to_string()));
            for i in (1..self.backups).rev() {
                let from = self.backup(&i.to_string());
                if from.exists() {
                    std::fs::rename(&from, self.backup(&(i + 1).to_string()))?;
                }
            }
            std::fs::rename(&self.path, self.backup("1"))?;
        }
        self.reopen()
    }

    /// `app.log` -> `app.log.<period>`; beyond `backups` dated files, the oldest go.
    fn rotate_dated(&mut self, old: u64) -> io::Result<()> {
        self.file.flush()?;
        if self.sync_on_rotate {
            self.file.get_ref().sync_data()?;
        }
        std::fs::rename(&self.path, self.backup(&self.rotation.suffix(old)))?;
        self.prune_dated()?;
        self.reopen()
    }

    fn prune_dated(&self) -> io::Result<()> {
        let mut dated = backups(&self.path)?;
        // The suffixes are ISO dates: their order is their age.
        dated.sort();
        let excess = dated.len().saturating_sub(self.backups);
        for old in &dated[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// The backups of `path` in its directory, numbered or dated (`app.log.<digit>...`),
/// in no particular order.
pub(crate) fn backups(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .and_then(|n| {
                    n.strip_prefix(&prefix)
                        .map(|s| s.starts_with(|c: char| c.is_ascii_digit()))
                })
                .unwrap_or(false)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tower-apm-rotate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The file names in `d`, sorted.
    fn names(d: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn size_rotation_keeps_whole_lines_under_the_limit_and_the_backup_count() {
        let d = dir("size");
        let path = d.join("app.log");
        let now = SystemTime::now();
        let mut f = RotatingFile::open(&path, Rotation::Size(100), 2, now).unwrap();
        for i in 0..20 {
            f.write_lines(format!("line {i:02} .........................\n").as_bytes(), now)
                .unwrap();
        }
        f.flush().unwrap();
        let names = names(&d);
        assert_eq!(names, ["app.log", "app.log.1", "app.log.2"]);
        for n in &names {
            let text = std::fs::read_to_string(d.join(n)).unwrap();
            assert!(text.len() <= 100, "{n}: {} bytes", text.len());
            assert!(text.ends_with('\n'), "{n}");
            assert!(
                text.lines()
                    .all(|l| l.starts_with("line ") && l.ends_with('.') && l.len() == 33),
                "{n}: whole lines only: {text:?}"
            );
        }
        // The newest lines are in app.log, the ones before in app.log.1.
        assert!(std::fs::read_to_string(&path).unwrap().contains("line 19"));
        assert!(
            std::fs::read_to_string(d.join("app.log.1"))
                .unwrap()
                .contains("line 17")
        );
    }

    #[test]
    fn a_batch_of_lines_rotates_at_the_same_line_boundaries_as_single_lines() {
        let now = SystemTime::now();
        // Lines of 12, 33 and 150 bytes (longer than the limit: a file of its own).
        let lines: Vec<String> = (0..30)
            .map(|i| match i % 7 {
                3 => format!("long {i:02} {}\n", "x".repeat(141)),
                5 => format!("s {i:02} ......\n"),
                _ => format!("line {i:02} .........................\n"),
            })
            .collect();
        let contents = |name: &str, batched: bool| {
            let d = dir(name);
            let path = d.join("app.log");
            let mut f = RotatingFile::open(&path, Rotation::Size(100), 40, now).unwrap();
            if batched {
                f.write_lines(lines.concat().as_bytes(), now).unwrap();
            } else {
                for l in &lines {
                    f.write_lines(l.as_bytes(), now).unwrap();
                }
            }
            f.flush().unwrap();
            names(&d)
                .into_iter()
                .map(|n| std::fs::read_to_string(d.join(&n)).unwrap())
                .collect::<Vec<_>>()
        };
        let one_by_one = contents("lines", false);
        assert_eq!(contents("batch", true), one_by_one);
        assert!(one_by_one.len() > 5, "{one_by_one:?}");
        for text in &one_by_one {
            assert!(text.ends_with('\n'));
            assert!(text.len() <= 100 || text.lines().count() == 1, "{text:?}");
        }
    }

    #[test]
    fn daily_rotation_renames_at_midnight_utc_and_prunes_old_days() {
        let d = dir("daily");
        let path = d.join("app.log");
        let day = |n: u64| UNIX_EPOCH + Duration::from_secs(20_784 * 86_400 + n * 86_400 + 5);
        let mut f = RotatingFile::open(&path, Rotation::Daily, 2, day(0)).unwrap();
        for n in 0..4 {
            f.write_lines(format!("day {n}\n").as_bytes(), day(n)).unwrap();
            f.write_lines(
                format!("day {n} again\n").as_bytes(),
                day(n) + Duration::from_secs(3600),
            )
            .unwrap();
        }
        f.flush().unwrap();
        let names = names(&d);
        assert_eq!(names, ["app.log", "app.log.2026-11-28", "app.log.2026-11-29"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "day 3\nday 3 again\n");
        assert_eq!(
            std::fs::read_to_string(d.join("app.log.2026-11-29")).unwrap(),
            "day 2\nday 2 again\n"
        );
    }

    #[test]
    fn hourly_suffix_names_the_hour() {
        assert_eq!(Rotation::Hourly.suffix(20_784 * 24 + 3), "2026-11-27T03");
    }
}
