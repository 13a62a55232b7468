//! What a pod's helper processes print (virtiofsd's log, the VMM's
//! stderr) goes through a pipe into a bounded file in the pod directory:
//! the guest can make them print, and a host's /run is a small tmpfs.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;

use cocoon_vmm::bounded_log::RingFile;

use super::SandboxError;

/// The write end of a [`bounded_output`] pipe, for a child's stdout and
/// stderr, and the signal that everything written to it is in the file.
pub struct BoundedOutput {
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Fires when the copier has read the pipe to its end (every writer,
    /// the child's own children included, is gone) and written it all.
    pub drained: tokio::sync::oneshot::Receiver<()>,
}

/// A pipe whose read end is copied into `path` (kept under `limit` bytes,
/// `path` + `path.1`, newest kept) by a thread until every writer is gone.
pub fn bounded_output(path: &Path, limit: u64) -> Result<BoundedOutput, SandboxError> {
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
    let (drained_tx, drained) = tokio::sync::oneshot::channel();
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
            let _ = drained_tx.send(());
        })
        .map_err(|e| io("a thread for", e))?;
    Ok(BoundedOutput {
        stdout: Stdio::from(wr),
        stderr: Stdio::from(wr2),
        drained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VMM's monitor exits after the VMM it forked has written its last
    /// line: `drained` waits for every writer, not the first to exit.
    #[test]
    fn drained_waits_for_a_writer_that_outlives_the_child() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("err.log");
        let o = bounded_output(&p, 8192).unwrap();
        let st = std::process::Command::new("sh")
            .args(["-c", "(sleep 0.5; echo last words >&2) & echo first >&2"])
            .stdout(o.stdout)
            .stderr(o.stderr)
            .status()
            .unwrap();
        assert!(st.success());
        o.drained.blocking_recv().expect("the copier ended");
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "first\nlast words\n");
    }

    #[test]
    fn a_flood_stays_under_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.log");
        let BoundedOutput {
            stdout: out,
            stderr: err,
            drained,
        } = bounded_output(&p, 8192).unwrap();
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
        // Everything the child wrote is in the file once `drained` fires.
        drained.blocking_recv().expect("the copier ended");
        let size = || {
            let older = std::fs::metadata(d.path().join("out.log.1"))
                .map(|m| m.len())
                .unwrap_or(0);
            older + std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
        };
        let last = std::fs::read_to_string(&p).unwrap();
        assert!(last.contains("err 2999"), "newest output kept");
        assert!(size() <= 8192, "{} bytes over the limit", size());
    }
}
