//! cocoon-agent binary: PID 1 in the guest, or a plain server on the host.

fn main() {
    cocoon_agent::entry::agent_main()
}
