//! What a block device is backed by, and its `--block` command-line form:
//! `path=FILE[,readonly=on|off][,id=SERIAL]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::request::ID_LEN;

/// Size of the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data segments per request we tell the driver about (`seg_max`).
pub const SEG_MAX: u32 = 128;
/// Longest chain: the data segments plus header and status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Bounce buffer between the file and guest memory.
pub const CHUNK: usize = 128 * 1024;

/// `VIRTIO_BLK_F_SEG_MAX`.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Errors in a `--block` specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockConfigError {
    /// No `path=`.
    #[error("--block needs path=FILE (got {0:?})")]
    MissingPath(String),
    /// A key we do not know.
    #[error("--block: unknown option {0:?}; use path=, readonly=on|off, id=")]
    UnknownKey(String),
    /// `readonly=` with another value than on/off.
    #[error("--block: readonly={0:?} is not on or off")]
    BadReadOnly(String),
    /// `id=` too long or not printable ASCII.
    #[error("--block: id={0:?} must be 1 to {ID_LEN} printable ASCII characters without ','")]
    BadId(String),
    /// A part without `=`.
    #[error("--block: {0:?} is not key=value")]
    NotKeyValue(String),
    /// The same key twice.
    #[error("--block: {0}= given twice")]
    Duplicate(&'static str),
}

/// One virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Backing file (a regular file; its size must be a multiple of 512).
    pub path: PathBuf,
    /// Open read-only and offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The id answered to GET_ID (`/sys/block/vdX/serial` in the guest).
    pub serial: Option<String>,
}

impl BlockConfig {
    /// A read-write device on `path` without an id.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlockConfig {
            path: path.into(),
            read_only: false,
            serial: None,
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_LEN && id.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl FromStr for BlockConfig {
    type Err = BlockConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut path, mut read_only, mut serial) = (None, None, None);
        for part in spec.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(BlockConfigError::NotKeyValue(part.to_string()));
            };
            match key {
                "path" => {
                    if path.replace(PathBuf::from(value)).is_some() {
                        return Err(BlockConfigError::Duplicate("path"));
                    }
                }
                "readonly" | "ro" => {
                    let ro = match value {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => return Err(BlockConfigError::BadReadOnly(value.to_string())),
                    };
                    if read_only.replace(ro).is_some() {
                        return Err(BlockConfigError::Duplicate("readonly"));
                    }
                }
                "id" | "serial" => {
                    if !valid_id(value) {
                        return Err(BlockConfigError::BadId(value.to_string()));
                    }
                    if serial.replace(value.to_string()).is_some() {
                        return Err(BlockConfigError::Duplicate("id"));
                    }
                }
                _ => return Err(BlockConfigError::UnknownKey(key.to_string())),
            }
        }
        let path = path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| BlockConfigError::MissingPath(spec.to_string()))?;
        Ok(BlockConfig {
            path,
            read_only: read_only.unwrap_or(false),
            serial,
        })
    }
}

/// The `--block` argument that gives this configuration back (for callers
/// such as the shim that start `cocoon-vmm`).
impl fmt::Display for BlockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.read_only {
            write!(f, ",readonly=on")?;
        }
        if let Some(id) = &self.serial {
            write!(f, ",id={id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let c: BlockConfig = "path=/img/a.raw,readonly=on,id=disk0".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("/img/a.raw"));
        assert!(c.read_only);
        assert_eq!(c.serial.as_deref(), Some("disk0"));
        assert_eq!(c.to_string().parse::<BlockConfig>().unwrap(), c);
        let rw: BlockConfig = "path=/b".parse().unwrap();
        assert_eq!(rw, BlockConfig::new("/b"));
        assert_eq!(rw.to_string(), "path=/b");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| s.parse::<BlockConfig>().unwrap_err();
        assert!(matches!(
            err("readonly=on"),
            BlockConfigError::MissingPath(_)
        ));
        assert!(matches!(err("path="), BlockConfigError::MissingPath(_)));
        assert_eq!(
            err("path=/a,readonly=bogus"),
            BlockConfigError::BadReadOnly("bogus".into())
        );
        assert!(err("path=/a,readonly=bogus")
            .to_string()
            .contains("on or off"));
        assert!(matches!(
            err("path=/a,cache=none"),
            BlockConfigError::UnknownKey(_)
        ));
        assert!(matches!(err("/a"), BlockConfigError::NotKeyValue(_)));
        assert!(matches!(
            err("path=/a,path=/b"),
            BlockConfigError::Duplicate("path")
        ));
        assert!(matches!(
            err("path=/a,id=123456789012345678901"),
            BlockConfigError::BadId(_)
        ));
        assert!(matches!(err("path=/a,id="), BlockConfigError::BadId(_)));
    }
}
