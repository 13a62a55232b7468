//! What the agent answers, turned into containerd's values. The guest is
//! not trusted: every function here takes whatever a compromised agent can
//! send, and the fuzz target of `shim/fuzz` runs exactly these.

use containerd_shim_protos::api::ProcessInfo;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::MessageField;

use cocoon_agent_protocol::agent::{self, StatsContainerResponse, WaitProcessResponse};

use super::exit::LOST_STATUS;
use super::state::{now_nanos, ExitInfo};

/// The exit of a process as containerd sees it: statuses are 0..=255 (a
/// guest could send any i32; anything else counts as lost), and a missing
/// or negative time is now.
pub fn exit_info(w: &WaitProcessResponse) -> ExitInfo {
    ExitInfo {
        status: u32::try_from(w.exit_status)
            .ok()
            .filter(|s| *s <= 255)
            .unwrap_or(LOST_STATUS),
        at_nanos: if w.exited_at_unix_nanos > 0 {
            w.exited_at_unix_nanos
        } else {
            now_nanos()
        },
    }
}

/// The processes of a container for `Pids` (the pids are the guest's).
pub fn pids(procs: Vec<agent::ProcessInfo>) -> Vec<ProcessInfo> {
    procs
        .into_iter()
        .map(|p| ProcessInfo {
            pid: p.pid,
            ..Default::default()
        })
        .collect()
}

/// The agent's cgroup statistics as containerd's cgroup v2 metrics.
pub fn metrics(s: &StatsContainerResponse) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = MessageField::some(v2::CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(x) = s.memory.as_ref() {
        m.memory = MessageField::some(v2::MemoryStat {
            usage: x.usage_bytes,
            usage_limit: x.limit_bytes,
            max_usage: x.max_usage_bytes,
            swap_usage: x.swap_usage_bytes,
            swap_limit: x.swap_limit_bytes,
            file: x.cache_bytes,
            ..Default::default()
        });
        m.memory_events = MessageField::some(v2::MemoryEvents {
            oom_kill: x.oom_kills,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(v2::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(io) = s.io.as_ref() {
        let mut e = v2::IOEntry::new();
        e.rbytes = io.read_bytes;
        e.wbytes = io.write_bytes;
        e.rios = io.read_ios;
        e.wios = io.write_ios;
        m.io = MessageField::some(v2::IOStat {
            usage: vec![e],
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(status: i32, at: i64) -> WaitProcessResponse {
        let mut w = WaitProcessResponse::new();
        w.exit_status = status;
        w.exited_at_unix_nanos = at;
        w
    }

    #[test]
    fn exit_statuses_out_of_range_are_lost() {
        assert_eq!(exit_info(&wait(137, 5)).status, 137);
        assert_eq!(exit_info(&wait(-1, 5)).status, LOST_STATUS);
        assert_eq!(exit_info(&wait(256, 5)).status, LOST_STATUS);
        assert_eq!(exit_info(&wait(0, 5)).at_nanos, 5);
        assert!(exit_info(&wait(0, i64::MIN)).at_nanos > 0);
    }

    #[test]
    fn metrics_keep_what_the_agent_sent() {
        let mut s = StatsContainerResponse::new();
        let mut pids = agent::PidsStats::new();
        pids.current = 3;
        s.pids = MessageField::some(pids);
        let m = metrics(&s);
        assert_eq!(m.pids.current, 3);
        assert!(m.cpu.is_none() && m.memory.is_none() && m.io.is_none());
    }
}
