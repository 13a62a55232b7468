//! Template VMs through `ctr`: pods start from a snapshot of a VM booted
//! once per (kernel, initrd, VMM, vCPUs, memory, kernel parameters); a
//! corrupt template is rebuilt, never used (a corrupt state file before
//! the restore, a corrupt memory image by the VMM, and then the pod
//! boots); another kernel gets a template of its own. (The other ctr tests run on restored pods too:
//! templates are on by default.)
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{Containerd, Pods};

/// The complete templates in `dir` (those with their meta.json).
fn templates(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("meta.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

const BUILT: &str = "template built";
const FROM_TEMPLATE: &str = "the pod's VM starts from a template";
const RECORDED: &str = "the template's working set is recorded";
const PREFETCHED: &str = "the pod's VM loads the template's working set first";

/// Random bytes, the boot id and the guest's uptime, from a container.
const PROBE: &[&str] = &[
    "sh",
    "-c",
    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/uptime",
];

/// A containerd of its own whose shim keeps templates in a fresh
/// directory (so the test sees each template built); the directory too.
fn containerd_with_own_templates(tag: &str) -> (tempfile::TempDir, PathBuf, Containerd) {
    let work = tempfile::Builder::new()
        .prefix("cocoon-e2e-templates")
        .tempdir()
        .unwrap();
    let dir = work.path().join("templates");
    let c = Containerd::start_with(tag, &format!("template_dir = \"{}\"\n", dir.display()));
    (work, dir, c)
}

#[test]
fn pods_restored_from_one_template_run_and_draw_different_random_numbers() {
    require_supported_vmm!();
    let (_work, dir, c) = containerd_with_own_templates("tpl");
    let pods = Pods::on(&c, &["tpl-a", "tpl-b", "tpl-c", "tpl-d"]);
    let mut seen = Vec::new();
    for id in ["tpl-a", "tpl-b"] {
        let (rc, out, err) = pods.run(id, &[], PROBE);
        assert_eq!(rc, 0, "{id}: {err}\n{}", pods.log());
        let random = out.lines().next().unwrap_or_default().to_string();
        assert_eq!(random.len(), 32, "{id}: {out:?}");
        seen.push(random);
    }
    let log = pods.log();
    assert_eq!(
        count(&log, BUILT),
        1,
        "one template, built by the first pod:\n{log}"
    );
    assert_eq!(count(&log, FROM_TEMPLATE), 2, "both pods restored:\n{log}");
    assert_eq!(templates(&dir).len(), 1, "{:?}", templates(&dir));
    // The first restored pod recorded the template's working set (once
    // its container was created); the second loaded it before its guest
    // ran.
    assert_eq!(count(&log, RECORDED), 1, "{log}");
    assert_eq!(count(&log, PREFETCHED), 1, "{log}");
    let ws = std::fs::read(templates(&dir)[0].join("working-set")).unwrap_or_default();
    assert!(
        ws.starts_with(b"COCOONWS") && ws.len() > 24 + 8 * 100,
        "the template's working set: {} bytes",
        ws.len()
    );
    // Clones of one snapshot start with one RNG state; the agent reseeds
    // it from the host before the container runs.
    assert_ne!(
        seen[0], seen[1],
        "two restored pods drew the same random bytes"
    );
    // The template shares the pages holding the agent (the initrd's one
    // file) besides the kernel's text: every page of it the guest holds
    // is in the state file's shared ranges of the memory image.
    let snapshot = templates(&dir)[0].join("snapshot");
    let state = cocoon_vmm::snapshot::read_state(&snapshot).unwrap();
    let cpio = std::fs::read(std::env::var("COCOON_AGENT_INITRD").unwrap()).unwrap();
    let blocks = cocoon_vmm::vstate::initrd_pages::file_blocks(&cpio);
    let image = std::fs::File::open(snapshot.join("memory")).unwrap();
    let mut covered = std::collections::HashSet::new();
    let mut page = vec![0u8; 4096];
    for &(start, len) in &state.shared {
        for at in (start..start + len).step_by(4096) {
            std::os::unix::fs::FileExt::read_exact_at(&image, &mut page, at).unwrap();
            let h = cocoon_vmm::vstate::initrd_pages::page_hash(&page);
            if blocks.contains(&h) {
                covered.insert(h);
            }
        }
    }
    assert!(
        blocks.len() > 100 && covered.len() * 10 >= blocks.len() * 9,
        "{} of the agent's {} pages are shared ({:x?})",
        covered.len(),
        blocks.len(),
        state.shared
    );
    // Two restored pods side by side: both VMMs map the template's memory
    // image (its kernel text, the agent) and share its clean pages: one
    // copy in the page cache, not one per pod.
    let image = templates(&dir)[0].join("snapshot/memory");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&image).unwrap());
    for id in ["tpl-c", "tpl-d"] {
        pods.run_detached(id);
    }
    let mapping = processes_mapping(inode);
    for id in ["tpl-c", "tpl-d"] {
        let (rc, _, err) = pods.ctr(&["task", "kill", "-s", "KILL", id]);
        assert_eq!(rc, 0, "{err}");
        pods.wait_stopped(id, "killed");
        pods.remove(id);
    }
    assert_eq!(
        mapping.len(),
        2,
        "VMMs sharing pages of the template's image (inode {inode}): {mapping:?}"
    );
    pods.assert_clean();
}

/// The processes with a mapping of the file with inode `inode` holding
/// pages that another process maps too (from /proc/PID/smaps).
fn processes_mapping(inode: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for (pid, _) in common::processes() {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            continue;
        };
        let mut in_image = false;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 5 && fields[0].contains('-') && fields[0].len() > 8 {
                in_image = fields[4].parse::<u64>().ok() == Some(inode);
            } else if in_image
                // Shared_Clean on a disk, Shared_Dirty on tmpfs (whose
                // pages are always dirty): page-cache pages another process
                // maps too.
                && matches!(fields.first(), Some(&"Shared_Clean:") | Some(&"Shared_Dirty:"))
                && fields
                    .get(1)
                    .and_then(|k| k.parse::<u64>().ok())
                    .unwrap_or(0)
                    > 0
            {
                out.push(pid);
                break;
            }
        }
    }
    out
}

#[test]
fn a_corrupt_template_is_rebuilt_or_booted_around_and_another_kernel_gets_its_own() {
    require_supported_vmm!();
    let (work, dir, c) = containerd_with_own_templates("tplc");
    let pods = Pods::on(&c, &["tplc-a", "tplc-b", "tplc-c"]);
    let (rc, _, err) = pods.run("tplc-a", &[], &["true"]);
    assert_eq!(rc, 0, "{err}\n{}", pods.log());
    let first = templates(&dir);
    assert_eq!(first.len(), 1, "{first:?}");

    // One flipped byte in the saved state: refused by its digest, built
    // again, and the pod still starts from a (new) template.
    let state = first[0].join("snapshot/state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&state, &bytes).unwrap();
    let (rc, _, err) = pods.run("tplc-b", &[], &["true"]);
    assert_eq!(rc, 0, "{err}\n{}", pods.log());
    let log = pods.log();
    assert!(log.contains("template unusable; rebuilding"), "{log}");
    assert_eq!(count(&log, BUILT), 2, "{log}");
    assert_eq!(count(&log, FROM_TEMPLATE), 2, "{log}");
    assert_ne!(
        std::fs::read(&state).unwrap(),
        bytes,
        "the corrupt state is still there"
    );

    // Another kernel (a copy: another file): a template of its own, the
    // first one untouched.
    let kernel = work.path().join("vmlinux-copy");
    std::fs::copy(std::env::var("COCOON_KERNEL").unwrap(), &kernel).unwrap();
    let cfg = c.dir.join("cocoon.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("kernel ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, format!("{text}kernel = \"{}\"\n", kernel.display())).unwrap();
    let (rc, _, err) = pods.run("tplc-c", &[], &["true"]);
    assert_eq!(rc, 0, "{err}\n{}", pods.log());
    let now = templates(&dir);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.contains(&first[0]),
        "the first kernel's template went: {now:?}"
    );
    let other = now.iter().find(|p| **p != first[0]).unwrap().clone();
    let meta = std::fs::read_to_string(other.join("meta.json")).unwrap();
    assert!(meta.contains("vmlinux-copy"), "{meta}");

    // One changed byte in every page of the memory image (its state file
    // intact): the first page the restored guest touches fails its digest,
    // the VMM ends before the agent answers, the template goes and the
    // pod boots.
    flip_a_byte_of_every_data_page(&other.join("snapshot/memory"));
    let (rc, out, err) = pods.run("tplc-d", &[], &["echo", "booted instead"]);
    assert_eq!(
        rc,
        0,
        "{err}
{}",
        pods.log()
    );
    assert_eq!(out, "booted instead\n");
    let log = pods.log();
    assert!(
        log.contains("did not start from its template, booting it instead"),
        "{log}"
    );
    assert!(
        log.contains("is corrupt"),
        "the VMM's reason is not in the log:\n{log}"
    );
    assert_eq!(
        templates(&dir),
        vec![first[0].clone()],
        "the corrupt template stayed"
    );
    pods.assert_clean();
}

/// XOR one byte of every data page of the sparse file at `path` (a page
/// is checked only when a guest touches it: every page, so that the first
/// one it touches fails).
fn flip_a_byte_of_every_data_page(path: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let size = f.metadata().unwrap().len();
    let (mut pos, mut flipped) = (0i64, 0u64);
    loop {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size } else { hole as u64 };
        for page in (data as u64 / 4096)..end.div_ceil(4096) {
            let at = page * 4096 + 100;
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
            flipped += 1;
        }
        pos = end as i64;
    }
    assert!(flipped > 0, "{} has no data", path.display());
}
