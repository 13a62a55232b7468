//! What an fs device is configured with (`--fs tag=..,socket=..`), and its
//! virtio configuration space: `tag[36]` (UTF-8, NUL-padded, not
//! NUL-terminated when full) followed by `le32 num_request_queues`.

use std::path::PathBuf;

use super::FsError;

/// Bytes of the tag field in the configuration space.
pub const TAG_LEN: usize = 36;
/// Size of the configuration space we expose (no notification buffer).
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;
/// Default number of request queues (virtiofsd 1.14 serves exactly one).
pub const DEFAULT_REQUEST_QUEUES: u16 = 1;
/// Most request queues we accept on the command line (the vhost-user
/// protocol allows 0x8000 vrings; any backend must still agree).
pub const MAX_REQUEST_QUEUES: u16 = 64;
/// Default queue size, for the hiprio and every request queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Largest queue size virtiofsd accepts (its `QUEUE_SIZE`).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A validated virtio-fs tag: 1..=36 bytes of UTF-8 without NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    /// Validate raw bytes as a tag.
    pub fn new(bytes: &[u8]) -> Result<Self, FsError> {
        let s = std::str::from_utf8(bytes).map_err(|_| FsError::TagNotUtf8)?;
        if s.is_empty() {
            return Err(FsError::TagEmpty);
        }
        if s.len() > TAG_LEN {
            return Err(FsError::TagTooLong(s.len()));
        }
        if s.contains('\0') {
            return Err(FsError::TagHasNul);
        }
        Ok(Tag(s.to_string()))
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One virtio-fs device: a tag for the guest and a virtiofsd socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// What the guest mounts (`mount -t virtiofs <tag> <dir>`).
    pub tag: Tag,
    /// The vhost-user socket virtiofsd listens on (`--socket-path`).
    pub socket: PathBuf,
    /// Request queues (the hiprio queue comes on top).
    pub request_queues: u16,
    /// Size of every queue (power of two).
    pub queue_size: u16,
}

impl FsConfig {
    /// A device with the default queue layout.
    pub fn new(tag: &str, socket: impl Into<PathBuf>) -> Result<Self, FsError> {
        Ok(FsConfig {
            tag: Tag::new(tag.as_bytes())?,
            socket: socket.into(),
            request_queues: DEFAULT_REQUEST_QUEUES,
            queue_size: DEFAULT_QUEUE_SIZE,
        })
    }

    /// All queues: hiprio plus the request queues.
    pub fn total_queues(&self) -> usize {
        1 + usize::from(self.request_queues)
    }

    /// Check the numbers.
    pub fn validate(&self) -> Result<(), FsError> {
        if self.request_queues == 0 || self.request_queues > MAX_REQUEST_QUEUES {
            return Err(FsError::BadQueues(u32::from(self.request_queues)));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 2 {
            return Err(FsError::BadQueueSize(u32::from(self.queue_size)));
        }
        Ok(())
    }

    /// The configuration space bytes.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        encode_config_space(&self.tag, u32::from(self.request_queues))
    }
}

/// Encode `tag[36]` + `le32 num_request_queues`.
pub fn encode_config_space(tag: &Tag, request_queues: u32) -> [u8; CONFIG_SPACE_LEN] {
    let mut out = [0u8; CONFIG_SPACE_LEN];
    let bytes = tag.as_str().as_bytes();
    out[..bytes.len()].copy_from_slice(bytes);
    out[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    out
}

/// Copy `data.len()` bytes at `offset` of `space` into `data`; bytes past
/// the end are left as they are (the transport zeroes them).
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let n = data.len().min(space.len() - start);
    data[..n].copy_from_slice(&space[start..start + n]);
}

/// Parse `tag=<tag>,socket=<path>[,queues=N][,queue_size=N]` (the value of
/// `--fs`). Public for the command line, the shim and a fuzz target.
pub fn parse_fs_options(s: &str) -> Result<FsConfig, FsError> {
    let (mut tag, mut socket, mut queues, mut queue_size) = (None, None, None, None);
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| FsError::Option(format!("'{part}' is not key=value")))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| FsError::Option(format!("{key}={v} is not a number")))
        };
        let slot_taken = match key {
            "tag" => tag.replace(value.to_string()).is_some(),
            "socket" => socket.replace(PathBuf::from(value)).is_some(),
            "queues" => queues.replace(number(value)?).is_some(),
            "queue_size" => queue_size.replace(number(value)?).is_some(),
            _ => {
                return Err(FsError::Option(format!(
                    "unknown key '{key}' (expected tag, socket, queues, queue_size)"
                )))
            }
        };
        if slot_taken {
            return Err(FsError::Option(format!("'{key}' given twice")));
        }
    }
    let tag = tag.ok_or_else(|| FsError::Option("tag=<tag> is missing".into()))?;
    let socket = socket.ok_or_else(|| FsError::Option("socket=<path> is missing".into()))?;
    if socket.as_os_str().is_empty() {
        return Err(FsError::Option("socket= is empty".into()));
    }
    let queues = queues.unwrap_or(u32::from(DEFAULT_REQUEST_QUEUES));
    let queue_size = queue_size.unwrap_or(u32::from(DEFAULT_QUEUE_SIZE));
    let cfg = FsConfig {
        tag: Tag::new(tag.as_bytes())?,
        socket,
        request_queues: u16::try_from(queues).map_err(|_| FsError::BadQueues(queues))?,
        queue_size: u16::try_from(queue_size).map_err(|_| FsError::BadQueueSize(queue_size))?,
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_nul_padded() {
        let space = encode_config_space(&Tag::new(b"share").unwrap(), 1);
        assert_eq!(&space[..5], b"share");
        assert!(space[5..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &1u32.to_le_bytes());
    }

    #[test]
    fn full_length_tag_is_not_nul_terminated() {
        let tag = "a".repeat(TAG_LEN);
        let space = encode_config_space(&Tag::new(tag.as_bytes()).unwrap(), 3);
        assert_eq!(&space[..TAG_LEN], tag.as_bytes());
        assert_eq!(&space[TAG_LEN..], &3u32.to_le_bytes());
    }

    #[test]
    fn bad_tags_are_rejected() {
        assert_eq!(
            Tag::new("a".repeat(37).as_bytes()),
            Err(FsError::TagTooLong(37))
        );
        assert_eq!(Tag::new(b""), Err(FsError::TagEmpty));
        assert_eq!(Tag::new(b"\xff\xfe"), Err(FsError::TagNotUtf8));
        assert_eq!(Tag::new(b"a\0b"), Err(FsError::TagHasNul));
        // 36 bytes of multi-byte UTF-8 are fine, 38 are not.
        assert!(Tag::new("é".repeat(18).as_bytes()).is_ok());
        assert!(Tag::new("é".repeat(19).as_bytes()).is_err());
    }

    #[test]
    fn config_reads_are_bounded() {
        let space = encode_config_space(&Tag::new(b"t").unwrap(), 1);
        let mut four = [0xaa; 4];
        read_config_space(&space, 36, &mut four);
        assert_eq!(four, [1, 0, 0, 0]);
        let mut eight = [0u8; 8];
        read_config_space(&space, 36, &mut eight);
        assert_eq!(eight, [1, 0, 0, 0, 0, 0, 0, 0]);
        let mut past = [0x55u8; 4];
        read_config_space(&space, 40, &mut past);
        assert_eq!(past, [0x55; 4]);
        read_config_space(&space, u64::MAX, &mut past);
        assert_eq!(past, [0x55; 4]);
    }

    #[test]
    fn options_parse() {
        let c = parse_fs_options("tag=share,socket=/run/v.sock").unwrap();
        assert_eq!(c.tag.as_str(), "share");
        assert_eq!(c.socket, PathBuf::from("/run/v.sock"));
        assert_eq!((c.request_queues, c.queue_size), (1, 1024));
        assert_eq!(c.total_queues(), 2);
        let c = parse_fs_options("socket=/s,tag=x,queues=2,queue_size=128").unwrap();
        assert_eq!((c.request_queues, c.queue_size), (2, 128));
    }

    #[test]
    fn bad_options_are_named() {
        let err = |s: &str| parse_fs_options(s).unwrap_err().to_string();
        assert!(err("socket=/s").contains("tag="));
        assert!(err("tag=x").contains("socket="));
        assert!(err("tag=x,socket=").contains("empty"));
        assert!(err("tag=x,socket=/s,colour=red").contains("colour"));
        assert!(err("tag=x,socket=/s,tag=y").contains("twice"));
        assert!(err("tag=x,socket=/s,queues").contains("key=value"));
        assert!(err("tag=x,socket=/s,queues=0").contains("queues"));
        assert!(err("tag=x,socket=/s,queues=99999").contains("queues"));
        assert!(err("tag=x,socket=/s,queue_size=100").contains("power of two"));
        assert!(err("tag=x,socket=/s,queue_size=65536").contains("queue size"));
        assert!(err("tag=x,socket=/s,queue_size=-1").contains("number"));
        assert!(err(&format!("tag={},socket=/s", "t".repeat(40))).contains("36"));
    }
}
