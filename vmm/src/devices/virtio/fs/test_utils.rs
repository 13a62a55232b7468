//! Test helpers: a fake vhost-user backend speaking the real protocol (the
//! `vhost` crate's backend side) on a socket pair, and builders for guest
//! FUSE request chains on a `MockSplitQueue` (reusable by a fuzz target).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserLog, VhostUserMemoryRegion,
    VhostUserShMemConfig, VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::FUSE_IN_HEADER_LEN;

/// The features virtiofsd 1.14 offers.
pub const VIRTIOFSD_FEATURES: u64 = (1 << 32) | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 26);

/// The protocol features virtiofsd 1.14 offers (without `--tag`).
pub fn virtiofsd_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::DEVICE_STATE
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// What a vring was given.
#[derive(Debug, Default)]
pub struct VringSeen {
    /// SET_VRING_NUM.
    pub num: u32,
    /// SET_VRING_ADDR (desc, used, avail).
    pub addrs: (u64, u64, u64),
    /// SET_VRING_BASE.
    pub base: u32,
    /// SET_VRING_KICK.
    pub kick: Option<File>,
    /// SET_VRING_CALL.
    pub call: Option<File>,
    /// SET_VRING_ENABLE.
    pub enabled: bool,
}

/// Everything the fake backend received.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Request names, in order.
    pub calls: Vec<&'static str>,
    /// SET_FEATURES.
    pub acked_features: u64,
    /// SET_PROTOCOL_FEATURES.
    pub acked_protocol: u64,
    /// SET_MEM_TABLE regions: (gpa, size, user addr, mmap offset).
    pub regions: Vec<(u64, u64, u64, u64)>,
    /// The memory files received.
    pub mem_files: Vec<File>,
    /// Per vring.
    pub vrings: BTreeMap<u32, VringSeen>,
}

/// How the fake backend behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES.
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM.
    pub queue_num: u64,
    /// Close the connection right after answering this request.
    pub die_after: Option<&'static str>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            features: VIRTIOFSD_FEATURES,
            protocol: virtiofsd_protocol(),
            queue_num: 2,
            die_after: None,
        }
    }
}

struct Fake {
    opts: FakeOptions,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    fn seen(&self, name: &'static str) -> std::sync::MutexGuard<'_, FakeState> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(name);
        s
    }
}

fn unsupported<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation(
        "not supported by the fake backend",
    ))
}

impl VhostUserBackendReqHandlerMut for Fake {
    fn set_owner(&mut self) -> VuResult<()> {
        drop(self.seen("SET_OWNER"));
        Ok(())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        drop(self.seen("RESET_OWNER"));
        Ok(())
    }
    fn reset_device(&mut self) -> VuResult<()> {
        drop(self.seen("RESET_DEVICE"));
        Ok(())
    }
    fn get_features(&mut self) -> VuResult<u64> {
        drop(self.seen("GET_FEATURES"));
        Ok(self.opts.features)
    }
    fn set_features(&mut self, features: u64) -> VuResult<()> {
        self.seen("SET_FEATURES").acked_features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut s = self.seen("SET_MEM_TABLE");
        s.regions = ctx
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset))
            .collect();
        s.mem_files = files;
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.seen("SET_VRING_NUM")
            .vrings
            .entry(index)
            .or_default()
            .num = num;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.seen("SET_VRING_ADDR")
            .vrings
            .entry(index)
            .or_default()
            .addrs = (descriptor, used, available);
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.seen("SET_VRING_BASE")
            .vrings
            .entry(index)
            .or_default()
            .base = base;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let mut s = self.seen("GET_VRING_BASE");
        let v = s.vrings.entry(index).or_default();
        v.kick = None;
        v.call = None;
        Ok(VhostUserVringState::new(index, v.base))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.seen("SET_VRING_KICK")
            .vrings
            .entry(u32::from(index))
            .or_default()
            .kick = fd;
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.seen("SET_VRING_CALL")
            .vrings
            .entry(u32::from(index))
            .or_default()
            .call = fd;
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        drop(self.seen("SET_VRING_ERR"));
        Ok(())
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        drop(self.seen("GET_PROTOCOL_FEATURES"));
        Ok(self.opts.protocol)
    }
    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.seen("SET_PROTOCOL_FEATURES").acked_protocol = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        drop(self.seen("GET_QUEUE_NUM"));
        Ok(self.opts.queue_num)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.seen("SET_VRING_ENABLE")
            .vrings
            .entry(index)
            .or_default()
            .enabled = enable;
        Ok(())
    }
    fn get_config(&mut self, _o: u32, _s: u32, _f: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        unsupported()
    }
    fn set_config(&mut self, _o: u32, _b: &[u8], _f: VhostUserConfigFlags) -> VuResult<()> {
        unsupported()
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VuResult<()> {
        unsupported()
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        unsupported()
    }
    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        unsupported()
    }
    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        unsupported()
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        unsupported()
    }
    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        unsupported()
    }
    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        unsupported()
    }
    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        unsupported()
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        unsupported()
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        unsupported()
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        unsupported()
    }
}

/// A running fake backend.
pub struct FakeBackend {
    /// What it received.
    pub state: Arc<Mutex<FakeState>>,
    conn: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Start a fake backend; returns it and the frontend's end of the socket.
    pub fn spawn(opts: FakeOptions) -> (FakeBackend, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let die_after = opts.die_after;
        let handler = Arc::new(Mutex::new(Fake {
            opts,
            state: state.clone(),
        }));
        let mut req = BackendReqHandler::from_stream(ours, handler);
        let conn = req.try_clone_connection().unwrap();
        let st = state.clone();
        let own = req.try_clone_connection().unwrap();
        let thread = std::thread::spawn(move || loop {
            if req.handle_request().is_err() {
                return;
            }
            let last = st.lock().unwrap().calls.last().copied();
            if die_after.is_some() && last == die_after {
                // As a crashing backend: the frontend sees a hang-up.
                let _ = own.shutdown(std::net::Shutdown::Both);
                return;
            }
        });
        (
            FakeBackend {
                state,
                conn,
                thread: Some(thread),
            },
            theirs,
        )
    }

    /// Kill the backend: close its socket as a crashing virtiofsd would.
    pub fn kill(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The request names seen so far.
    pub fn calls(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().calls.clone()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A FUSE request header with `opcode` and `unique`.
pub fn fuse_in_header(opcode: u32, unique: u64) -> [u8; FUSE_IN_HEADER_LEN] {
    let mut h = [0u8; FUSE_IN_HEADER_LEN];
    h[0..4].copy_from_slice(&(FUSE_IN_HEADER_LEN as u32).to_le_bytes());
    h[4..8].copy_from_slice(&opcode.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// A descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Put a request chain at descriptor `first`: a readable FUSE header at
/// `hdr_addr` and a writable reply buffer of `reply_len` at `reply_addr`.
pub fn add_fuse_request(
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    first: u16,
    (opcode, unique): (u32, u64),
    hdr_addr: u64,
    (reply_addr, reply_len): (u64, u32),
) {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    mem.write_slice(&fuse_in_header(opcode, unique), GuestAddress(hdr_addr))
        .unwrap();
    let descs = [
        desc(
            hdr_addr,
            FUSE_IN_HEADER_LEN as u32,
            VRING_DESC_F_NEXT as u16,
            first + 1,
        ),
        desc(reply_addr, reply_len, VRING_DESC_F_WRITE as u16, 0),
    ];
    q.add_desc_chains(&descs, first).unwrap();
}
