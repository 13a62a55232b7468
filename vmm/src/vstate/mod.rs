//! VM state: guest memory, the KVM VM and its vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
