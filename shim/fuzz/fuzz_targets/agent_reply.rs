//! The shim's decoding of what the agent (a guest that may be hostile)
//! answers: arbitrary bytes parsed as each agent reply and event message,
//! optionally inside ttrpc's `Response` envelope as the ttrpc client
//! receives it (an error status there becomes the shim's own ttrpc error),
//! then the shim's own conversion of each: exit statuses and times
//! (`WaitProcess`), process lists (`ListProcesses`), cgroup stats into
//! containerd metrics (`StatsContainer`), OOM events through the pod's
//! gate, pids, the share path, and the stream attach status byte. What the
//! shim would send on to containerd is encoded and decoded again.
//!
//! Input: `[selector: bits 0-2 message type, bit 7 ttrpc Response
//! envelope] [protobuf bytes...]`.
#![no_main]

use cocoon_agent_protocol::agent::{
    CreateSandboxResponse, ListProcessesResponse, OOMEvent, ProcessResponse,
    StatsContainerResponse, WaitProcessResponse,
};
use cocoon_agent_protocol::stream_header::AttachStatus;
use cocoon_shim::agent_client::AgentError;
use cocoon_shim::task::reply::{exit_info, metrics, pids};
use cocoon_shim::task::rpc_error::from_agent;
use cocoon_shim::task::OomGate;
use containerd_shim_protos::api::PidsResponse;
use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM, TaskStart};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

/// Parse `bytes` as `M` as the generated ttrpc client does.
fn parse<M: Message>(bytes: &[u8]) -> Option<M> {
    M::parse_from_bytes(bytes).ok()
}

/// Encode what goes to containerd; it must decode to the same value.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.write_to_bytes().expect("encode for containerd");
    assert_eq!(&M::parse_from_bytes(&bytes).expect("decode"), m);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let envelope;
    let body = if selector & 0x80 != 0 {
        let Some(r) = parse::<ttrpc::Response>(rest) else {
            return;
        };
        let status = r.status();
        if status.code() != ttrpc::Code::OK {
            let e = from_agent(AgentError::Rpc {
                rpc: "WaitProcess",
                source: ttrpc::Error::RpcStatus(status.clone()),
            });
            let _ = e.to_string();
            return;
        }
        envelope = r.payload;
        &envelope[..]
    } else {
        rest
    };
    match selector & 7 {
        0 => {
            let Some(w) = parse::<WaitProcessResponse>(body) else {
                return;
            };
            let info = exit_info(&w);
            assert!(info.status <= 255, "exit status {}", info.status);
            assert!(info.at_nanos > 0);
            let event = TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 42,
                exit_status: info.status,
                exited_at: Some(info.timestamp()).into(),
                ..Default::default()
            };
            let t = event.exited_at.as_ref().expect("timestamp");
            assert!((0..1_000_000_000).contains(&t.nanos));
            round_trip(&event);
        }
        1 => {
            let Some(s) = parse::<StatsContainerResponse>(body) else {
                return;
            };
            round_trip::<Metrics>(&metrics(&s));
        }
        2 => {
            let Some(l) = parse::<ListProcessesResponse>(body) else {
                return;
            };
            let n = l.processes.len();
            let r = PidsResponse {
                processes: pids(l.processes),
                ..Default::default()
            };
            assert_eq!(r.processes.len(), n);
            round_trip(&r);
        }
        3 => {
            let Some(e) = parse::<OOMEvent>(body) else {
                return;
            };
            let gate = OomGate::new();
            let known = ["c1", "c2"].contains(&e.container_id.as_str());
            if gate.admit("pod", &e.container_id, known) {
                assert!(known, "an OOM event for a foreign container passed");
                round_trip(&TaskOOM {
                    container_id: e.container_id,
                    ..Default::default()
                });
            }
        }
        4 => {
            let Some(p) = parse::<ProcessResponse>(body) else {
                return;
            };
            round_trip(&TaskStart {
                container_id: "c1".into(),
                pid: p.pid,
                ..Default::default()
            });
        }
        5 => {
            let Some(s) = parse::<CreateSandboxResponse>(body) else {
                return;
            };
            let share = std::path::PathBuf::from(&s.share_mount_point);
            let _ = share.join("c1");
        }
        6 => {
            let Some(status) = parse::<ttrpc::Status>(body) else {
                return;
            };
            let e = from_agent(AgentError::Rpc {
                rpc: "StatsContainer",
                source: ttrpc::Error::RpcStatus(status),
            });
            let _ = e.to_string();
        }
        _ => {
            let b = body.first().copied().unwrap_or(0);
            let s = AttachStatus::from_byte(b);
            // Only 0 attaches; anything else is refused.
            assert_eq!(s == AttachStatus::Ok, b == 0);
        }
    }
});
