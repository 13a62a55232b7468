//! The guest kernel command line: a Firecracker-like base, the user's
//! extras, and one `virtio_mmio.device=` declaration per device.

use linux_loader::cmdline::{Cmdline, Error as LoaderCmdlineError};
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Always on the command line, before the user's extras.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule 8250.nr_uarts=1 \
                                i8042.noaux i8042.nomux swiotlb=noforce";

/// Errors while building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// A character or structure Linux cannot take.
    #[error("invalid kernel command line {text:?}: {reason}; use printable ASCII and quote values with spaces")]
    Invalid {
        /// The offending fragment.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// Longer than the kernel accepts.
    #[error("kernel command line is too long (limit {limit} bytes including the base options and devices); shorten --cmdline")]
    TooLong {
        /// The limit in bytes, including the NUL.
        limit: usize,
    },
}

/// A virtio-mmio device slot to declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeclaration {
    /// Base address of the 4 KiB register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its GSI.
    pub irq: u32,
}

fn map_err(text: &str, err: LoaderCmdlineError) -> CmdlineError {
    match err {
        LoaderCmdlineError::TooLarge => CmdlineError::TooLong {
            limit: CMDLINE_MAX_SIZE,
        },
        other => CmdlineError::Invalid {
            text: text.to_owned(),
            reason: other
                .to_string()
                .to_lowercase()
                .trim_end_matches('.')
                .to_owned(),
        },
    }
}

/// Build the command line: base, then `extras` (a `--` in it starts the
/// init arguments), then the virtio-mmio declarations.
pub fn build_cmdline(
    extras: Option<&str>,
    devices: &[MmioDeclaration],
) -> Result<Cmdline, CmdlineError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| map_err("", e))?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(|e| map_err(BASE_CMDLINE, e))?;

    if let Some(extras) = extras {
        let (boot, init) = match extras.split_once("--") {
            Some((boot, init)) if boot.is_empty() || boot.ends_with(' ') => (boot, Some(init)),
            _ => (extras, None),
        };
        if extras.contains('\0') {
            return Err(CmdlineError::Invalid {
                text: extras.to_owned(),
                reason: "it contains a NUL byte".to_owned(),
            });
        }
        let boot = boot.trim();
        if !boot.is_empty() {
            cmdline.insert_str(boot).map_err(|e| map_err(boot, e))?;
        }
        if let Some(init) = init.map(str::trim).filter(|s| !s.is_empty()) {
            cmdline
                .insert_init_args(init)
                .map_err(|e| map_err(init, e))?;
        }
    }

    for dev in devices {
        cmdline
            .add_virtio_mmio_device(dev.size, GuestAddress(dev.base), dev.irq, None)
            .map_err(|e| map_err("virtio_mmio.device", e))?;
    }
    // Cmdline's capacity counts the NUL; check the final string.
    let text = cmdline.as_cstring().map_err(|e| map_err("", e))?;
    if text.as_bytes_with_nul().len() > CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong {
            limit: CMDLINE_MAX_SIZE,
        });
    }
    Ok(cmdline)
}

/// The command line as a Rust string.
pub fn to_string(cmdline: &Cmdline) -> String {
    cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(extras: Option<&str>, devices: &[MmioDeclaration]) -> String {
        to_string(&build_cmdline(extras, devices).unwrap())
    }

    /// What the VMM relies on, in every command line it builds: the serial
    /// console first, a reboot through the i8042 (which the VMM takes as
    /// the guest's exit), a panic that reboots at once, and no user extra
    /// placed before them.
    #[test]
    fn base_options_are_in_every_built_line() {
        assert_eq!(text(None, &[]), BASE_CMDLINE);
        let dev = [MmioDeclaration {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        for (extras, devices) in [
            (None, &[][..]),
            (Some("quiet"), &[][..]),
            (Some("-- --verbose"), &dev[..]),
            (Some("console=hvc0 panic=5 -- x"), &dev[..]),
        ] {
            let s = text(extras, devices);
            let words: Vec<&str> = s.split(' ').collect();
            assert_eq!(words.first(), Some(&"console=ttyS0"), "{s}");
            let at = |w: &str| words.iter().position(|x| *x == w);
            for w in ["reboot=k", "panic=-1", "nomodule"] {
                let i = at(w).unwrap_or_else(|| panic!("no {w} in {s:?}"));
                // Before any extra (the kernel takes the last of a repeated
                // option, so a user's own may still override on purpose).
                if let Some(e) = extras.and_then(|e| e.split_whitespace().next()) {
                    if let Some(j) = at(e) {
                        assert!(i < j, "{w} after the extra {e}: {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn extras_and_devices() {
        let devs = [
            MmioDeclaration {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeclaration {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let s = text(Some("  earlyprintk=serial quiet "), &devs);
        assert_eq!(
            s,
            format!(
                "{BASE_CMDLINE} earlyprintk=serial quiet virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6"
            )
        );
    }

    #[test]
    fn init_args_stay_last() {
        let devs = [MmioDeclaration {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        let s = text(Some("rdinit=/init -- --verbose"), &devs);
        assert!(
            s.ends_with("virtio_mmio.device=4K@0xd0000000:5 -- --verbose"),
            "{s}"
        );
        // A "--" inside a word is not a separator.
        let s = text(Some("foo=a--b"), &[]);
        assert!(s.ends_with("foo=a--b"));
    }

    #[test]
    fn rejects_invalid_characters() {
        assert!(matches!(
            build_cmdline(Some("bad\u{7}bell"), &[]),
            Err(CmdlineError::Invalid { .. })
        ));
        assert!(matches!(
            build_cmdline(Some("caf\u{e9}"), &[]),
            Err(CmdlineError::Invalid { .. })
        ));
        assert!(matches!(
            build_cmdline(Some("nul\0x"), &[]),
            Err(CmdlineError::Invalid { .. })
        ));
        let err = build_cmdline(Some("bad\u{7}"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("printable ASCII"), "{err}");
    }

    #[test]
    fn length_limit() {
        let room = CMDLINE_MAX_SIZE - BASE_CMDLINE.len() - 2; // space + NUL
        assert!(build_cmdline(Some(&"x".repeat(room)), &[]).is_ok());
        let err = build_cmdline(Some(&"x".repeat(room + 1)), &[]).unwrap_err();
        assert!(
            matches!(err, CmdlineError::TooLong { limit: 2048 }),
            "{err:?}"
        );
        let many = vec![
            MmioDeclaration {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5
            };
            100
        ];
        assert!(matches!(
            build_cmdline(None, &many),
            Err(CmdlineError::TooLong { .. })
        ));
    }
}
