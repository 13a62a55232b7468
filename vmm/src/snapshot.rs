//! A VM snapshot on disk: a directory with `state` (everything but guest
//! RAM) and `memory` (guest RAM as a sparse file, see
//! [`crate::vstate::memory_image`]).
//!
//! `state` is `MAGIC | version (u32 LE) | body length (u64 LE) | body |
//! SHA-256 of everything before it`; the body is [`VmSnapshot`] in
//! postcard. A file that is not ours, of another format version, cut
//! short or changed is refused with an error that says which, before a
//! single byte of it is used.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::virtio::mmio::persist::MmioTransportState;
use crate::vstate::memory_image::ImageIndex;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory image in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The first bytes of a state file.
pub const MAGIC: [u8; 8] = *b"COCOONVM";
/// Bumped whenever [`VmSnapshot`] or anything in it changes shape.
pub const FORMAT_VERSION: u32 = 5;
/// A state file is a few hundred KiB at most; refuse to read more.
const MAX_BODY: u64 = 64 << 20;
const HEADER: usize = 8 + 4 + 8;
const DIGEST: usize = 32;

/// Errors while writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Writing the state file failed.
    #[error("cannot write the snapshot state {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the state file failed.
    #[error("cannot read the snapshot state {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with our magic.
    #[error("{path} is not a cocoon VM snapshot")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// Another format version.
    #[error(
        "{path} is snapshot format version {found}; this cocoon-vmm reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter or longer than its header says.
    #[error("{path} is truncated or padded: its header announces {announced} bytes of state, the file has {actual}")]
    Length {
        /// The file.
        path: PathBuf,
        /// From the header.
        announced: u64,
        /// What follows the header (without the digest).
        actual: u64,
    },
    /// The digest does not match.
    #[error("{path} is corrupt: its SHA-256 does not match its contents")]
    Digest {
        /// The file.
        path: PathBuf,
    },
    /// The body does not decode.
    #[error("{path} has a valid digest but its state does not decode")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: postcard::Error,
    },
    /// Encoding failed.
    #[error("cannot encode the VM state")]
    Encode(#[source] postcard::Error),
}

/// The 16550's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// DLL.
    pub baud_divisor_low: u8,
    /// DLM.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

/// Everything a VM needs besides its RAM to continue where it was paused.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The cocoon-vmm version that wrote it (for humans; the format
    /// version decides compatibility).
    pub vmm_version: String,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// The memory image's data pages and their digests
    /// ([`crate::vstate::memory_image`]).
    pub memory_index: ImageIndex,
    /// Ranges of the image (offsets, lengths; page aligned, ascending)
    /// that restored VMs map from it privately instead of copying: the
    /// booted kernel's text and read-only data
    /// ([`crate::vstate::memory::create_guest_ram_sharing`]).
    pub shared: Vec<(u64, u64)>,
    /// VM-wide KVM state.
    pub vm: VmState,
    /// Per-vCPU KVM state, by index.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// Each virtio-mmio slot's transport, in slot order.
    pub devices: Vec<MmioTransportState>,
}

fn digest(bytes: &[u8]) -> [u8; DIGEST] {
    Sha256::digest(bytes).into()
}

/// Write `snapshot` to `<dir>/state` (which must not exist yet).
pub fn write_state(dir: &Path, snapshot: &VmSnapshot) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let body = postcard::to_stdvec(snapshot).map_err(SnapshotError::Encode)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len() + DIGEST);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let sum = digest(&bytes);
    bytes.extend_from_slice(&sum);
    let werr = |source| SnapshotError::Write {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(werr)?;
    file.write_all(&bytes).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok(())
}

/// Read and check `<dir>/state`.
pub fn read_state(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let rerr = |source| SnapshotError::Read {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(rerr)?;
    let mut bytes = Vec::new();
    file.take(MAX_BODY + (HEADER + DIGEST) as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(rerr)?;
    decode(&path, &bytes)
}

/// Check and decode the bytes of a state file read from `path`.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<VmSnapshot, SnapshotError> {
    if bytes.len() < HEADER || bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_owned(),
        });
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found,
        });
    }
    let announced = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let actual = (bytes.len() - HEADER).saturating_sub(DIGEST) as u64;
    if announced != actual || bytes.len() < HEADER + DIGEST {
        return Err(SnapshotError::Length {
            path: path.to_owned(),
            announced,
            actual,
        });
    }
    let (content, sum) = bytes.split_at(bytes.len() - DIGEST);
    if digest(content) != sum {
        return Err(SnapshotError::Digest {
            path: path.to_owned(),
        });
    }
    postcard::from_bytes(&content[HEADER..]).map_err(|source| SnapshotError::Decode {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm_state::VmState;

    fn sample() -> VmSnapshot {
        VmSnapshot {
            vmm_version: "test".into(),
            vcpu_count: 1,
            memory_bytes: 1 << 20,
            memory_index: ImageIndex::default(),
            shared: vec![(0x10_0000, 0x1000)],
            vm: VmState {
                irqchip: None,
                clock: kvm_bindings::kvm_clock_data {
                    clock: 12345,
                    ..Default::default()
                },
            },
            vcpus: Vec::new(),
            serial: SerialSnapshot {
                interrupt_enable: 3,
                in_buffer: vec![b'x'],
                ..Default::default()
            },
            devices: Vec::new(),
        }
    }

    fn written() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), &sample()).unwrap();
        let bytes = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        (dir, bytes)
    }

    #[test]
    fn state_round_trips() {
        let (dir, _) = written();
        let back = read_state(dir.path()).unwrap();
        assert_eq!(back.vm.clock.clock, 12345);
        assert_eq!(back.serial, sample().serial);
        assert_eq!(back.memory_bytes, 1 << 20);
        assert!(
            matches!(
                write_state(dir.path(), &sample()),
                Err(SnapshotError::Write { .. })
            ),
            "an existing state file must not be overwritten"
        );
    }

    #[test]
    fn damaged_state_is_refused_with_its_reason() {
        let (_dir, bytes) = written();
        let p = Path::new("state");

        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(matches!(
            decode(p, &other),
            Err(SnapshotError::NotASnapshot { .. })
        ));
        assert!(matches!(
            decode(p, b"COCO"),
            Err(SnapshotError::NotASnapshot { .. })
        ));

        let mut version = bytes.clone();
        version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let err = decode(p, &version).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Version { found, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );

        let cut = &bytes[..bytes.len() - 5];
        assert!(matches!(decode(p, cut), Err(SnapshotError::Length { .. })));

        let mut flipped = bytes.clone();
        let mid = HEADER + 3;
        flipped[mid] ^= 0x40;
        assert!(matches!(
            decode(p, &flipped),
            Err(SnapshotError::Digest { .. })
        ));

        // A body that does not decode, with a digest that matches it.
        let mut junk = bytes[..HEADER].to_vec();
        junk[12..20].copy_from_slice(&3u64.to_le_bytes());
        junk.extend_from_slice(&[0xff, 0xff, 0xff]);
        let sum = digest(&junk);
        junk.extend_from_slice(&sum);
        assert!(matches!(
            decode(p, &junk),
            Err(SnapshotError::Decode { .. })
        ));

        assert!(decode(p, &bytes).is_ok());
    }
}
