//! StatsContainer: libcgroups' statistics in protocol form.

use cocoon_agent_protocol::agent::{
    CpuStats, IoStats, MemoryStats, PidsStats, StatsContainerResponse,
};
use libcgroups::common::CgroupManager;
use libcgroups::stats::Stats;

use crate::container::{blocking, AgentState, ContainerError};

pub async fn stats_container(
    state: &AgentState,
    id: &str,
) -> Result<StatsContainerResponse, ContainerError> {
    let cg = state.container(id)?.cgroup()?;
    let stats = blocking(move || {
        cg.stats()
            .map_err(|e| ContainerError::Cgroup("reading statistics", Box::new(e)))
    })
    .await?;
    Ok(to_proto(&stats))
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
