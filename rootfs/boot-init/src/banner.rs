//! The banner line that tests and `make bench` look for.

/// The prefix every banner starts with.
pub const PREFIX: &str = "cocoon-init: booted";

/// Formats the banner from /proc/sys/kernel/osrelease, /proc/uptime and
/// /sys/devices/system/cpu/online as read in the guest.
pub fn banner(release: &str, uptime: &str, cpus: &str) -> String {
    let release = release.trim();
    let release = if release.is_empty() {
        "unknown"
    } else {
        release
    };
    let up = uptime.split_whitespace().next().unwrap_or("?");
    let cpus = cpus.trim();
    let cpus = if cpus.is_empty() { "?" } else { cpus };
    format!("{PREFIX} Linux {release}, uptime {up}s, cpus {cpus}")
}

/// The longest `cocoon.hold=` honoured, in seconds.
pub const MAX_HOLD: u64 = 600;

/// The value of `cocoon.hold=SECS` on the kernel command line, if any and
/// valid; capped at [`MAX_HOLD`].
pub fn hold_seconds(cmdline: &str) -> Option<u64> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("cocoon.hold="))
        .next_back()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| s.min(MAX_HOLD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_has_release_and_uptime() {
        let b = banner("6.12.0-cocoon\n", "1.23 0.50\n", "0-1\n");
        assert_eq!(
            b,
            "cocoon-init: booted Linux 6.12.0-cocoon, uptime 1.23s, cpus 0-1"
        );
    }

    #[test]
    fn hold_is_parsed_and_capped() {
        assert_eq!(hold_seconds("console=ttyS0 cocoon.hold=3 quiet"), Some(3));
        assert_eq!(hold_seconds("cocoon.hold=1 cocoon.hold=2"), Some(2));
        assert_eq!(hold_seconds("cocoon.hold=99999"), Some(MAX_HOLD));
        assert_eq!(hold_seconds("cocoon.hold=x"), None);
        assert_eq!(hold_seconds("console=ttyS0"), None);
    }

    #[test]
    fn banner_survives_missing_proc() {
        let b = banner("", "", "");
        assert_eq!(b, "cocoon-init: booted Linux unknown, uptime ?s, cpus ?");
    }
}
