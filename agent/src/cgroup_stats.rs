//! StatsContainer: a container's cgroup statistics in protocol form.
//!
//! cgroup v2 (the guest) is read here, file by file, tolerating files the
//! kernel does not have: a minimal guest kernel has no swap, hugetlb or PSI,
//! and libcgroups' reader fails the whole call on the first missing one.
//! cgroup v1 (only the host tests) goes through libcgroups.

use cocoon_agent_protocol::agent::{
    CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};
use std::collections::HashMap;
use std::path::Path;

use libcgroups::common::CgroupManager;
use libcgroups::stats::Stats;

use crate::container::{blocking, AgentState, ContainerError};

pub async fn stats_container(
    state: &AgentState,
    id: &str,
) -> Result<StatsContainerResponse, ContainerError> {
    let c = state.container(id)?;
    if matches!(
        libcgroups::common::get_cgroup_setup(),
        Ok(libcgroups::common::CgroupSetup::Unified)
    ) {
        let rel = c.cgroup_path.strip_prefix("/").unwrap_or(&c.cgroup_path);
        let dir = Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel);
        return blocking(move || read_v2(&dir)).await;
    }
    let cg = c.cgroup()?;
    let stats = blocking(move || {
        cg.stats()
            .map_err(|e| ContainerError::Cgroup("reading statistics", Box::new(e)))
    })
    .await?;
    Ok(to_proto(&stats))
}

/// Reads a v2 cgroup directory. Only a missing directory (the container's
/// cgroup is gone) is an error; a missing file leaves its fields at zero.
pub fn read_v2(dir: &Path) -> Result<StatsContainerResponse, ContainerError> {
    if !dir.join("cgroup.procs").exists() {
        return Err(ContainerError::Cgroup(
            "reading statistics",
            Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a cgroup", dir.display()),
            )),
        ));
    }
    let keyed = |name: &str| -> HashMap<String, u64> {
        std::fs::read_to_string(dir.join(name))
            .map(|t| {
                t.lines()
                    .filter_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        Some((k.to_string(), v.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // "max" is no limit: u64::MAX, as runc reports it.
    let single = |name: &str| -> Option<u64> {
        let t = std::fs::read_to_string(dir.join(name)).ok()?;
        match t.trim() {
            "max" => Some(u64::MAX),
            v => v.parse().ok(),
        }
    };

    let c = keyed("cpu.stat");
    let mut cpu = CpuStats::new();
    cpu.usage_usec = c.get("usage_usec").copied().unwrap_or_default();
    cpu.user_usec = c.get("user_usec").copied().unwrap_or_default();
    cpu.system_usec = c.get("system_usec").copied().unwrap_or_default();
    cpu.nr_periods = c.get("nr_periods").copied().unwrap_or_default();
    cpu.nr_throttled = c.get("nr_throttled").copied().unwrap_or_default();
    cpu.throttled_usec = c.get("throttled_usec").copied().unwrap_or_default();

    let m = keyed("memory.stat");
    let mut mem = MemoryStats::new();
    mem.usage_bytes = single("memory.current").unwrap_or_default();
    mem.limit_bytes = single("memory.max").unwrap_or(u64::MAX);
    mem.max_usage_bytes = single("memory.peak").unwrap_or_default();
    mem.swap_usage_bytes = single("memory.swap.current").unwrap_or_default();
    mem.swap_limit_bytes = single("memory.swap.max").unwrap_or_default();
    mem.cache_bytes = m.get("file").copied().unwrap_or_default();
    mem.oom_kills = keyed("memory.events")
        .get("oom_kill")
        .copied()
        .unwrap_or_default();

    let mut pids = PidsStats::new();
    pids.current = single("pids.current").unwrap_or_default();
    pids.limit = match single("pids.max") {
        Some(u64::MAX) | None => 0,
        Some(n) => n,
    };

    // io.stat: "<maj>:<min> rbytes=.. wbytes=.. rios=.. wios=.. ..." per device.
    let mut io = IoStats::new();
    for line in std::fs::read_to_string(dir.join("io.stat"))
        .unwrap_or_default()
        .lines()
    {
        for kv in line.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or_default();
            match k {
                "rbytes" => io.read_bytes += v,
                "wbytes" => io.write_bytes += v,
                "rios" => io.read_ios += v,
                "wios" => io.write_ios += v,
                _ => {}
            }
        }
    }

    let mut out = StatsContainerResponse::new();
    out.cpu = protobuf::MessageField::some(cpu);
    out.memory = protobuf::MessageField::some(mem);
    out.pids = protobuf::MessageField::some(pids);
    out.io = protobuf::MessageField::some(io);
    Ok(out)
}

/// libcgroups reports cpu time in nanoseconds for v1 and v2 alike.
pub fn to_proto(s: &Stats) -> StatsContainerResponse {
    let mut io = IoStats::new();
    for d in &s.blkio.service_bytes {
        match d.op_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => io.read_bytes += d.value,
            Some("write") => io.write_bytes += d.value,
            _ => {}
        }
    }
    for d in &s.blkio.serviced {
        match d.op_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => io.read_ios += d.value,
            Some("write") => io.write_ios += d.value,
            _ => {}
        }
    }
    let mut cpu = CpuStats::new();
    cpu.usage_usec = s.cpu.usage.usage_total / 1000;
    cpu.user_usec = s.cpu.usage.usage_user / 1000;
    cpu.system_usec = s.cpu.usage.usage_kernel / 1000;
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = s.cpu.throttling.throttled_time / 1000;

    let mut mem = MemoryStats::new();
    mem.usage_bytes = s.memory.memory.usage;
    mem.limit_bytes = s.memory.memory.limit;
    mem.max_usage_bytes = s.memory.memory.max_usage;
    mem.swap_usage_bytes = s.memory.memswap.usage;
    mem.swap_limit_bytes = s.memory.memswap.limit;
    mem.cache_bytes = s.memory.cache;
    mem.oom_kills = s.memory.stats.get("oom_kill").copied().unwrap_or_default();

    let mut pids = PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;

    let mut out = StatsContainerResponse::new();
    out.cpu = protobuf::MessageField::some(cpu);
    out.memory = protobuf::MessageField::some(mem);
    out.pids = protobuf::MessageField::some(pids);
    out.io = protobuf::MessageField::some(io);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_reads_what_is_there_and_zeroes_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(d.path().join(n), t).unwrap();
        w("cgroup.procs", "12\n");
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 40\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "16777216\n");
        w("memory.stat", "anon 1024\nfile 2048\n");
        w("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        w("pids.current", "2\n");
        w("pids.max", "max\n");
        w(
            "io.stat",
            "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=1 wbytes=2 rios=3 wios=4\n",
        );
        // No memory.swap.*, memory.peak, hugetlb or pressure files.
        let s = read_v2(d.path()).unwrap();
        let cpu = s.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (3, 1, 40)
        );
        let m = s.memory.as_ref().unwrap();
        assert_eq!(
            (m.usage_bytes, m.limit_bytes, m.cache_bytes),
            (4096, 16 << 20, 2048)
        );
        assert_eq!(
            (m.swap_usage_bytes, m.max_usage_bytes, m.oom_kills),
            (0, 0, 1)
        );
        let p = s.pids.as_ref().unwrap();
        assert_eq!((p.current, p.limit), (2, 0));
        let io = s.io.as_ref().unwrap();
        assert_eq!(
            (io.read_bytes, io.write_bytes, io.read_ios, io.write_ios),
            (101, 202, 4, 6)
        );
    }

    #[test]
    fn v2_unlimited_memory_is_max_and_a_missing_cgroup_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        std::fs::write(d.path().join("memory.max"), "max\n").unwrap();
        let s = read_v2(d.path()).unwrap();
        assert_eq!(s.memory.as_ref().unwrap().limit_bytes, u64::MAX);
        let e = read_v2(&d.path().join("gone")).unwrap_err();
        assert!(format!("{e:?}").contains("is not a cgroup"), "{e:?}");
    }
}
