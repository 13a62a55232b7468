//! VM state: guest memory, the KVM VM and its vCPUs.

pub mod initrd_pages;
pub mod lazy_ram;
pub mod memory;
pub mod memory_image;
pub mod pause;
pub mod uffd;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
pub mod working_set;
