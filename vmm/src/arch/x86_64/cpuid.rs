//! Per-vCPU CPUID normalisation, applied on top of `KVM_GET_SUPPORTED_CPUID`.
//!
//! What we change (see Firecracker `cpu_config/x86_64/cpuid/normalize.rs`):
//! - leaf 1: initial APIC id, CLFLUSH size, logical CPU count and HTT,
//!   hypervisor and TSC-deadline bits on, PDCM and VMX off;
//! - leaf 4 (Intel caches): cores per package and threads per cache;
//! - leaf 6: turbo boost and energy-performance-bias bits off;
//! - leaves 0xB / 0x1F: one thread per core, `vcpus` cores per package;
//! - AMD: SVM off, 0x8000_0008 core count, 0x8000_001E extended APIC id.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 1 ECX: perfmon and debug capability.
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX: TSC deadline timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: hyper-threading (more than one logical CPU per package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX: turbo boost.
const LEAF6_EAX_TURBO: u32 = 1 << 1;
/// Leaf 6 ECX: energy performance bias.
const LEAF6_ECX_EPB: u32 = 1 << 3;
/// Leaf 0x8000_0001 ECX: SVM.
const LEAF_EXT1_ECX_SVM: u32 = 1 << 2;
/// Extended topology level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// CPU vendor, read from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine).
    Amd,
    /// Anything else.
    Other,
}

/// Read the vendor from leaf 0 of a CPUID list.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = Vec::with_capacity(12);
    for reg in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
        id.extend_from_slice(&reg.to_le_bytes());
    }
    match id.as_slice() {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to hold values `0..count`.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn normalize_leaf1(e: &mut kvm_cpuid_entry2, vcpu_id: u8, vcpu_count: u8) {
    let apic_id = u32::from(vcpu_id);
    let logical = if vcpu_count > 1 {
        1u32 << id_bits(u32::from(vcpu_count))
    } else {
        1
    };
    // EBX: [31:24] initial APIC id, [23:16] logical CPUs, [15:8] CLFLUSH = 8 qwords.
    e.ebx = (apic_id << 24) | ((logical & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
    e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
    e.ecx &= !(LEAF1_ECX_PDCM | LEAF1_ECX_VMX);
    if vcpu_count > 1 {
        e.edx |= LEAF1_EDX_HTT;
    } else {
        e.edx &= !LEAF1_EDX_HTT;
    }
}

fn normalize_leaf4(e: &mut kvm_cpuid_entry2, vcpu_count: u8) {
    let cache_type = e.eax & 0x1f;
    if cache_type == 0 {
        return;
    }
    let level = (e.eax >> 5) & 0x7;
    let cores_minus_one = u32::from(vcpu_count.max(1) - 1).min(63);
    // Threads sharing the cache: one per core for L1/L2, all for L3.
    let sharing_minus_one = if level >= 3 { cores_minus_one } else { 0 };
    e.eax = (e.eax & 0x3fff) | (sharing_minus_one << 14) | (cores_minus_one << 26);
}

fn normalize_topology(e: &mut kvm_cpuid_entry2, vcpu_id: u8, vcpu_count: u8) {
    let count = u32::from(vcpu_count.max(1));
    e.edx = u32::from(vcpu_id);
    match e.index {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
        }
        1 => {
            e.eax = id_bits(count);
            e.ebx = count;
            e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
        }
        _ => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = e.index;
        }
    }
}

/// Make sure an extended topology leaf that KVM lists has the SMT (0),
/// core (1) and terminating (2) subleaves: KVM only lists the subleaves the
/// host reports, and a guest that finds leaf 0xB without a core level puts
/// every vCPU in its own package.
fn ensure_topology_subleaves(cpuid: &mut CpuId, function: u32) {
    if !cpuid.as_slice().iter().any(|e| e.function == function) {
        return;
    }
    for index in 0..=2 {
        if cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == function && e.index == index)
        {
            continue;
        }
        let entry = kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        };
        if cpuid.push(entry).is_err() {
            tracing::warn!(
                function,
                index,
                "cpuid list is full; guest topology may be wrong"
            );
            return;
        }
    }
}

/// Normalise a copy of the supported CPUID for vCPU `vcpu_id` of `vcpu_count`.
pub fn normalize(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8) {
    let vendor = vendor(cpuid);
    ensure_topology_subleaves(cpuid, 0xb);
    ensure_topology_subleaves(cpuid, 0x1f);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => normalize_leaf1(e, vcpu_id, vcpu_count),
            0x4 if vendor == Vendor::Intel => normalize_leaf4(e, vcpu_count),
            0x6 => {
                e.eax &= !LEAF6_EAX_TURBO;
                e.ecx &= !LEAF6_ECX_EPB;
            }
            0xb | 0x1f => normalize_topology(e, vcpu_id, vcpu_count),
            0x8000_0001 => e.ecx &= !LEAF_EXT1_ECX_SVM,
            0x8000_0008 if vendor == Vendor::Amd => {
                let count = u32::from(vcpu_count.max(1));
                // ECX: [15:12] APIC id size, [7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                // EAX extended APIC id; EBX one thread per compute unit, unit id = vCPU.
                e.eax = u32::from(vcpu_id);
                e.ebx = u32::from(vcpu_id);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let reg = |i: usize| u32::from_le_bytes(id[i * 4..i * 4 + 4].try_into().unwrap());
        entry(0, 0, 0x1f, reg(0), reg(2), reg(1))
    }

    fn synthetic(id: &[u8; 12]) -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(id),
            entry(
                1,
                0,
                0x806f8,
                0xff00_0800,
                LEAF1_ECX_PDCM | LEAF1_ECX_VMX,
                LEAF1_EDX_HTT,
            ),
            entry(4, 0, 0x121, 0, 0, 0),
            entry(4, 3, 0x163, 0, 0, 0),
            entry(6, 0, 0x7, 0, 0x9, 0),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0xb, 2, 0, 0, 2, 7),
            entry(0x8000_0001, 0, 0, 0, LEAF_EXT1_ECX_SVM | 1, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0xf0ff, 0),
            entry(0x8000_001e, 0, 9, 9, 9, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(&synthetic(b"GenuineIntel")), Vendor::Intel);
        assert_eq!(vendor(&synthetic(b"AuthenticAMD")), Vendor::Amd);
        assert_eq!(vendor(&synthetic(b"SomethingXYZ")), Vendor::Other);
    }

    #[test]
    fn leaf1_per_vcpu() {
        let mut cpuid = synthetic(b"GenuineIntel");
        normalize(&mut cpuid, 3, 4);
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & (LEAF1_ECX_PDCM | LEAF1_ECX_VMX), 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let mut single = synthetic(b"GenuineIntel");
        normalize(&mut single, 0, 1);
        let l1 = find(&single, 1, 0);
        assert_eq!(l1.ebx >> 24, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology() {
        let mut cpuid = synthetic(b"GenuineIntel");
        normalize(&mut cpuid, 2, 3);
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let invalid = find(&cpuid, 0xb, 2);
        assert_eq!(
            (invalid.eax, invalid.ebx, invalid.ecx, invalid.edx),
            (0, 0, 2, 2)
        );
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        // Like KVM on a host whose leaf 0xB has only the SMT level.
        let mut cpuid =
            CpuId::from_entries(&[vendor_leaf(b"AuthenticAMD"), entry(0xb, 0, 0, 1, 0x100, 0)])
                .unwrap();
        normalize(&mut cpuid, 1, 4);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 1));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        let end = find(&cpuid, 0xb, 2);
        assert_eq!((end.ebx, end.ecx), (0, 2));
        // No leaf 0x1F invented when KVM has none.
        assert!(cpuid.as_slice().iter().all(|e| e.function != 0x1f));
    }

    #[test]
    fn intel_caches_and_power() {
        let mut cpuid = synthetic(b"GenuineIntel");
        normalize(&mut cpuid, 0, 2);
        let l1d = find(&cpuid, 4, 0);
        assert_eq!(l1d.eax >> 26, 1);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        let l3 = find(&cpuid, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 1);
        assert_eq!(l3.eax & 0x3fff, 0x163);
        let l6 = find(&cpuid, 6, 0);
        assert_eq!(l6.eax & LEAF6_EAX_TURBO, 0);
        assert_eq!(l6.ecx & LEAF6_ECX_EPB, 0);
    }

    #[test]
    fn amd_leaves() {
        let mut cpuid = synthetic(b"AuthenticAMD");
        normalize(&mut cpuid, 1, 2);
        assert_eq!(find(&cpuid, 0x8000_0001, 0).ecx, 1);
        let l8 = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 1);
        assert_eq!((l8.ecx >> 12) & 0xf, 1);
        let l1e = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((l1e.eax, l1e.ebx, l1e.ecx), (1, 1, 0));
        // Intel-only leaf 4 left alone on AMD.
        assert_eq!(find(&cpuid, 4, 0).eax, 0x121);
    }

    #[test]
    fn id_bit_widths() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
