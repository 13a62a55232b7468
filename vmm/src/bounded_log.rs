//! Bounded output for what the guest can make us write: `RingFile`, a
//! two-file ring (`PATH` and `PATH.1`) that keeps the newest bytes under a
//! size limit (the serial console, the VMM's own log), and `LineLimiter`,
//! which passes at most N log lines per second.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default size limit of a console or log file, `PATH` and `PATH.1` together.
pub const DEFAULT_LIMIT: u64 = 1 << 20;
/// Default number of log lines passed per second.
pub const DEFAULT_LINES_PER_SECOND: u32 = 100;

/// Errors opening a `RingFile`.
#[derive(Debug, thiserror::Error)]
pub enum BoundedLogError {
    /// A limit of 0 bytes.
    #[error("the size limit must be at least 1 byte")]
    ZeroLimit,
    /// The file cannot be opened (a symlink is refused).
    #[error("cannot open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An older `PATH.1` cannot be removed.
    #[error("cannot remove the old {path}")]
    RemoveOld {
        /// The `.1` path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Creates or truncates `path` with mode 0600, refusing a symlink.
fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes to `PATH`; when `PATH` would grow past half the limit it becomes
/// `PATH.1` (replacing the older one) and a new `PATH` starts, so the two
/// never hold more than the limit and always hold the newest bytes
/// (`PATH.1` then `PATH`). A single write larger than that keeps its tail.
/// A limit of 1 keeps one byte in `PATH` and no `PATH.1`. A path that is
/// not a regular file (`/dev/null`, a FIFO) is written through uncapped.
#[derive(Debug)]
pub struct RingFile {
    path: PathBuf,
    old: PathBuf,
    file: File,
    len: u64,
    /// Bytes per file; `None` for a non-regular file.
    cap: Option<u64>,
    keep_old: bool,
}

impl RingFile {
    /// Create or truncate `path` (mode 0600, not through a symlink) and
    /// remove a `PATH.1` left from an earlier run.
    pub fn open(path: &Path, limit: u64) -> Result<Self, BoundedLogError> {
        if limit == 0 {
            return Err(BoundedLogError::ZeroLimit);
        }
        let open_err = |source| BoundedLogError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = create(path).map_err(open_err)?;
        let regular = file.metadata().map_err(open_err)?.is_file();
        if regular {
            // `mode` applies only to a new file; an existing one (which
            // becomes PATH.1) gets it too.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(open_err)?;
        }
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let old = PathBuf::from(old);
        if regular {
            match fs::remove_file(&old) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(BoundedLogError::RemoveOld {
                        path: old,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        let keep_old = limit >= 2;
        Ok(RingFile {
            path: path.to_path_buf(),
            old,
            file,
            len: 0,
            cap: regular.then_some(if keep_old { limit / 2 } else { limit }),
            keep_old,
        })
    }

    /// Start `PATH` anew, moving the full one to `PATH.1`.
    fn rotate(&mut self) -> io::Result<()> {
        // Until a new `PATH` is open, nothing more may go to the old one.
        self.len = u64::MAX;
        if self.keep_old {
            match fs::rename(&self.path, &self.old) {
                // Gone (removed, or an earlier rotation stopped half-way).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
            self.file = create(&self.path)?;
        } else {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
        }
        self.len = 0;
        Ok(())
    }

    fn write_capped(&mut self, buf: &[u8], cap: u64) -> io::Result<()> {
        let kept = if self.keep_old { 2 * cap } else { cap };
        let kept = usize::try_from(kept).unwrap_or(usize::MAX);
        // Older bytes would be rotated away before this write ends.
        let mut data = &buf[buf.len().saturating_sub(kept)..];
        while !data.is_empty() {
            // What a fresh file cannot hold goes first, so the last chunk
            // is a full file.
            let chunk = match data.len() as u64 {
                n if n > cap => (n - cap) as usize,
                n => n as usize,
            };
            if self.len.saturating_add(chunk as u64) > cap {
                self.rotate()?;
            }
            if let Err(e) = self.file.write_all(&data[..chunk]) {
                // Part of it may be there: rotate before the next write.
                self.len = u64::MAX;
                return Err(e);
            }
            self.len += chunk as u64;
            data = &data[chunk..];
        }
        Ok(())
    }
}

impl Write for RingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.cap {
            Some(cap) => self.write_capped(buf, cap).map(|()| buf.len()),
            None => self.file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Passes at most `per_second` writes (log lines: `tracing` writes each
/// event in one write) per second to `inner` and drops the rest; the next
/// accepted line is preceded by "cocoon-vmm: K log lines suppressed".
#[derive(Debug)]
pub struct LineLimiter<W> {
    inner: W,
    per_second: u32,
    window: Option<Instant>,
    count: u32,
    suppressed: u64,
}

impl<W: Write> LineLimiter<W> {
    /// Limit writes to `inner`.
    pub fn new(inner: W, per_second: u32) -> Self {
        LineLimiter {
            inner,
            per_second,
            window: None,
            count: 0,
            suppressed: 0,
        }
    }

    fn write_at(&mut self, buf: &[u8], now: Instant) -> io::Result<usize> {
        let new_window = self
            .window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if new_window {
            self.window = Some(now);
            self.count = 0;
            if self.suppressed > 0 {
                let note = format!("cocoon-vmm: {} log lines suppressed\n", self.suppressed);
                self.suppressed = 0;
                self.inner.write_all(note.as_bytes())?;
            }
        }
        if self.count >= self.per_second {
            self.suppressed += 1;
            return Ok(buf.len());
        }
        self.count += 1;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }
}

impl<W: Write> Write for LineLimiter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, Instant::now())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap_or_default()
    }

    /// `PATH.1` then `PATH`.
    fn kept(path: &Path) -> Vec<u8> {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let mut all = read(Path::new(&old));
        all.extend(read(path));
        all
    }

    #[test]
    fn flood_of_writes_stays_under_the_limit_and_keeps_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        for limit in [1u64, 2, 3, 100, 4096] {
            let mut ring = RingFile::open(&path, limit).unwrap();
            let mut stream = Vec::new();
            let mut next = 0u8;
            // Sizes from 1 byte to several times the limit.
            for i in 0..500usize {
                let size = (i * 37) % (3 * limit as usize + 5) + 1;
                let chunk: Vec<u8> = (0..size)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                assert_eq!(ring.write(&chunk).unwrap(), size);
                stream.extend_from_slice(&chunk);
                let all = kept(&path);
                assert!(all.len() as u64 <= limit, "limit {limit}: {}", all.len());
                assert!(
                    stream.ends_with(&all),
                    "limit {limit}: not the newest bytes"
                );
                let half = if limit >= 2 { limit / 2 } else { 1 };
                assert!(all.len() as u64 >= half.min(stream.len() as u64));
            }
        }
    }

    #[test]
    fn one_write_larger_than_the_limit_keeps_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut ring = RingFile::open(&path, 10).unwrap();
        ring.write_all(b"ab").unwrap();
        ring.write_all(b"0123456789abcdefghij").unwrap();
        assert_eq!(read(&dir.path().join("c.1")), b"abcde");
        assert_eq!(read(&path), b"fghij");
    }

    #[test]
    fn rotates_when_half_the_limit_would_be_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut ring = RingFile::open(&path, 8).unwrap();
        ring.write_all(b"abc").unwrap();
        ring.write_all(b"d").unwrap();
        assert_eq!(read(&path), b"abcd");
        ring.write_all(b"ef").unwrap();
        assert_eq!(read(&dir.path().join("c.1")), b"abcd");
        assert_eq!(read(&path), b"ef");
    }

    #[test]
    fn open_truncates_removes_the_old_half_and_creates_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        fs::write(&path, b"previous run").unwrap();
        fs::write(dir.path().join("c.1"), b"older").unwrap();
        let mut ring = RingFile::open(&path, 100).unwrap();
        assert!(read(&path).is_empty());
        assert!(!dir.path().join("c.1").exists());
        ring.write_all(&[b'x'; 80]).unwrap();
        for p in [path.clone(), dir.path().join("c.1")] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert!(matches!(
            RingFile::open(&path, 0),
            Err(BoundedLogError::ZeroLimit)
        ));
    }

    #[test]
    fn refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("console.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = RingFile::open(&link, 100).unwrap_err();
        assert!(matches!(err, BoundedLogError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("console.log"));
        assert_eq!(read(&target), b"keep");
    }

    #[test]
    fn failed_rotation_is_an_error_not_a_panic_and_keeps_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut ring = RingFile::open(&path, 8).unwrap();
        ring.write_all(b"abcd").unwrap();
        // A non-empty directory where PATH.1 goes: the rename fails.
        fs::create_dir(dir.path().join("c.1")).unwrap();
        fs::write(dir.path().join("c.1/x"), b"").unwrap();
        for _ in 0..3 {
            assert!(ring.write(b"efgh").is_err());
        }
        assert_eq!(read(&path), b"abcd");
        fs::remove_dir_all(dir.path().join("c.1")).unwrap();
        ring.write_all(b"ef").unwrap();
        assert_eq!(kept(&path), b"abcdef");
    }

    #[test]
    fn non_regular_files_are_written_through() {
        let mut ring = RingFile::open(Path::new("/dev/null"), 1).unwrap();
        ring.write_all(&[0u8; 100]).unwrap();
        assert!(Path::new("/dev/null").exists());
    }

    #[test]
    fn line_limiter_drops_lines_past_the_rate_and_reports_them() {
        let mut out = LineLimiter::new(Vec::new(), 3);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(out.write_at(format!("{i}\n").as_bytes(), t0).unwrap(), 2);
        }
        assert_eq!(out.inner, b"0\n1\n2\n");
        out.write_at(b"late\n", t0 + Duration::from_millis(999))
            .unwrap();
        out.write_at(b"next\n", t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            String::from_utf8(out.inner.clone()).unwrap(),
            "0\n1\n2\ncocoon-vmm: 8 log lines suppressed\nnext\n"
        );
    }

    #[test]
    fn line_limiter_over_a_ring_file_bounds_lines_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let ring = RingFile::open(&path, 1000).unwrap();
        let mut out = LineLimiter::new(ring, 5);
        let t0 = Instant::now();
        for s in 0..20u64 {
            for i in 0..1000 {
                let line = format!("second {s} line {i}\n");
                out.write_at(line.as_bytes(), t0 + Duration::from_secs(s))
                    .unwrap();
            }
        }
        let all = String::from_utf8(kept(&path)).unwrap();
        assert!(all.len() <= 1000);
        assert!(all.ends_with("second 19 line 4\n"), "{all}");
        assert!(all.contains("cocoon-vmm: 995 log lines suppressed\n"));
    }
}
