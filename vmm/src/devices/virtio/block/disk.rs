//! The backing file of a block device: opened, checked, locked, and read or
//! written with positioned I/O (`pread`/`pwrite`), so no file offset is shared.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::config::BlockConfig;
use super::request::SECTOR_SIZE;

/// Errors opening a backing file.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The device's queue EventFd could not be made.
    #[error("cannot create the virtio-blk queue eventfd")]
    QueueEvents(#[source] std::io::Error),
    /// The file does not exist.
    #[error("block backing file {0} does not exist")]
    Missing(PathBuf),
    /// open(2) failed (permissions, a read-only file system for read-write...).
    #[error("cannot open block backing file {path} {mode}")]
    Open {
        /// The path.
        path: PathBuf,
        /// "read-only" or "read-write".
        mode: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory, socket, FIFO, device...
    #[error("block backing file {path} is a {kind}, not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Another process holds a conflicting lock.
    #[error("block backing file {0} is in use by another process (flock)")]
    Locked(PathBuf),
    /// fstat or flock failed otherwise.
    #[error("cannot inspect block backing file {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An open, locked backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    capacity_sectors: u64,
    read_only: bool,
}

fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

impl Disk {
    /// Open the file `config` names, read-only or read-write, and take a
    /// shared (read-only) or exclusive (read-write) `flock`.
    pub fn open(config: &BlockConfig) -> Result<Self, BlockError> {
        let path = &config.path;
        let meta = std::fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BlockError::Missing(path.clone())
            } else {
                BlockError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        if !meta.file_type().is_file() {
            return Err(BlockError::NotRegular {
                path: path.clone(),
                kind: file_kind(meta.file_type()),
            });
        }
        let mode = if config.read_only {
            "read-only"
        } else {
            "read-write"
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                mode,
                source,
            })?;
        lock(&file, path, config.read_only)?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len % SECTOR_SIZE != 0 {
            tracing::warn!(
                path = %path.display(),
                len,
                "block backing file size is not a multiple of 512; the tail is not visible"
            );
        }
        Ok(Disk {
            file,
            path: path.clone(),
            capacity_sectors: len / SECTOR_SIZE,
            read_only: config.read_only,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether the file is open read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `pread` exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// `pwrite` all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// `fdatasync`.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn lock(file: &File, path: &Path, shared: bool) -> Result<(), BlockError> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    // SAFETY: flock only takes the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(BlockError::Locked(path.to_owned()))
    } else {
        Err(BlockError::Io {
            path: path.to_owned(),
            source: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn open_errors_are_specific() {
        let missing = BlockConfig::new("/nonexistent/cocoon.img");
        assert!(matches!(Disk::open(&missing), Err(BlockError::Missing(_))));
        let dir = BlockConfig::new("/tmp");
        let e = Disk::open(&dir).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let chr = BlockConfig::new("/dev/null");
        assert!(Disk::open(&chr)
            .unwrap_err()
            .to_string()
            .contains("character device"));
    }

    #[test]
    fn capacity_io_and_locks() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(4096 + 100).unwrap();
        let cfg = BlockConfig::new(tmp.as_path());
        let disk = Disk::open(&cfg).unwrap();
        assert_eq!(disk.capacity_sectors(), 8);
        disk.write_at(b"hello", 512).unwrap();
        let mut back = [0u8; 5];
        disk.read_at(&mut back, 512).unwrap();
        assert_eq!(&back, b"hello");
        disk.flush().unwrap();
        // A second writer is refused while the first holds the lock.
        assert!(matches!(Disk::open(&cfg), Err(BlockError::Locked(_))));
        drop(disk);
        let ro = BlockConfig {
            read_only: true,
            ..cfg.clone()
        };
        let a = Disk::open(&ro).unwrap();
        let b = Disk::open(&ro).unwrap();
        assert!(a.read_only() && b.read_only());
        assert!(a.write_at(b"x", 0).is_err());
    }
}
