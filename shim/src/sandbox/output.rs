//! What a pod's helper processes print (virtiofsd's log, the VMM's
//! stderr) goes through a pipe into a bounded file in the pod directory:
//! the guest can make them print, and a host's /run is a small tmpfs.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;

use cocoon_vmm::bounded_log::RingFile;

use super::SandboxError;

/// A pipe whose read end is copied into `path` (kept under `limit` bytes,
/// `path` + `path.1`, newest kept) by a thread until every writer is gone.
/// Returns the write end as (stdout, stderr) for a child.
pub fn bounded_output(path: &Path, limit: u64) -> Result<(Stdio, Stdio), SandboxError> {
    let io = |what: &str, source: std::io::Error| SandboxError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    let mut ring = RingFile::open(path, limit).map_err(|e| SandboxError::Io {
        what: format!("opening {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io("a pipe for", std::io::Error::from(e)))?;
    let wr2: OwnedFd = wr.try_clone().map_err(|e| io("a pipe for", e))?;
    std::thread::Builder::new()
        .name("bounded-output".into())
        .spawn(move || {
            let mut rd = std::fs::File::from(rd);
            let mut buf = [0u8; 8192];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = ring.write_all(&buf[..n]);
                        let _ = ring.flush();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .map_err(|e| io("a thread for", e))?;
    Ok((Stdio::from(wr), Stdio::from(wr2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_stays_under_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.log");
        let (out, err) = bounded_output(&p, 8192).unwrap();
        let st = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 3000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); done",
            ])
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap();
        assert!(st.success());
        // The copier thread ends at EOF; give it a moment.
        let size = || {
            let older = std::fs::metadata(d.path().join("out.log.1"))
                .map(|m| m.len())
                .unwrap_or(0);
            older + std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
        };
        let mut last = String::new();
        for _ in 0..200 {
            last = std::fs::read_to_string(&p).unwrap_or_default();
            if last.contains("err 2999") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(last.contains("err 2999"), "newest output kept");
        assert!(size() <= 8192, "{} bytes over the limit", size());
    }
}
