#!/usr/bin/env python3
"""Writes the checked-in seed corpus of the VMM fuzz targets (corpus/<target>/).

Each seed is a small, valid input in the format the target's doc comment
describes (a register sequence, a queue layout with descriptor chains, a
packet stream, a vhost-user reply stream), so the fuzzer starts from the
paths a well-behaved guest or backend takes. Run from anywhere:
`vmm/fuzz/gen_corpus.py`; it rewrites the seeds it owns and leaves other
files alone.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# The queue layout of cocoon_vmm_fuzz::fill_queues.
QUEUE_SLOT = 0x2000
AVAIL = 0x800
USED = 0x1000
DATA = 0x8000
F_NEXT, F_WRITE = 1, 2


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def qsel(size):
    return size.bit_length() - 1


def queue(size, chains):
    """Descriptor table + avail ring (flags, idx, ring, used_event) for
    `chains`, each a list of (addr, len, flags), stored from index 0."""
    table = []
    heads = []
    for chain in chains:
        heads.append(len(table))
        for i, (addr, ln, fl) in enumerate(chain):
            nxt = 0
            if i + 1 < len(chain):
                fl |= F_NEXT
                nxt = len(table) + 1
            table.append(struct.pack("<QIHH", addr, ln, fl, nxt))
    assert len(table) <= size
    table += [bytes(16)] * (size - len(table))
    ring = heads + [0] * (size - len(heads))
    avail = struct.pack("<HH", 0, len(heads)) + struct.pack("<%dH" % size, *ring) + b"\0\0"
    return b"".join(table) + avail


def data_at(parts):
    """The data region: {offset from DATA: bytes}."""
    end = max(off + len(b) for off, b in parts.items()) if parts else 0
    buf = bytearray(end)
    for off, b in parts.items():
        buf[off:off + len(b)] = b
    return bytes(buf)


# virtio-rng
def rng():
    w = [(DATA, 64, F_WRITE)]
    write("chain_rng", "one-buffer", [qsel(4)] + list(queue(4, [w])))
    two = [[(DATA, 16, F_WRITE), (DATA + 0x100, 32, F_WRITE)], [(DATA + 0x200, 8, F_WRITE)]]
    write("chain_rng", "two-chains", [qsel(8)] + list(queue(8, two)))
    write("chain_rng", "readable-refused", [qsel(2)] + list(queue(2, [[(DATA, 8, 0)]])))


# virtio-blk: header (readable), data, status (writable)
def blk_header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def blk():
    hdr, buf, st = DATA, DATA + 0x100, DATA + 0x80
    cases = {
        "read": (0, 1, [(hdr, 16, 0), (buf, 512, F_WRITE), (st, 1, F_WRITE)], 0),
        "write": (1, 2, [(hdr, 16, 0), (buf, 1024, 0), (st, 1, F_WRITE)], 0),
        "write-ro": (1, 2, [(hdr, 16, 0), (buf, 512, 0), (st, 1, F_WRITE)], 1),
        "flush": (4, 0, [(hdr, 16, 0), (st, 1, F_WRITE)], 0),
        "get-id": (8, 0, [(hdr, 16, 0), (buf, 20, F_WRITE), (st, 1, F_WRITE)], 2),
        "past-end": (0, 63, [(hdr, 16, 0), (buf, 1024, F_WRITE), (st, 1, F_WRITE)], 0),
    }
    for name, (kind, sector, chain, flags) in cases.items():
        data = data_at({0: blk_header(kind, sector), 0x100: bytes(range(256)) * 4})
        write("chain_blk", name, [qsel(4), flags] + list(queue(4, [chain])) + list(data))


# virtio-net: rx queue, tx queue
def net():
    frame = b"\xff" * 6 + bytes(range(54))
    tx = [[(DATA, 12, 0), (DATA + 0x100, len(frame), 0)]]
    rx = [[(DATA + 0x1000, 1526, F_WRITE)]]
    data = data_at({0: bytes(12), 0x100: frame})
    lens = struct.pack("<HHH", 100, 1514, 60)
    write("chain_net", "tx-and-rx", [qsel(4), 2] + list(lens) + list(queue(4, rx)) + list(queue(4, tx)) + list(data))
    small = [[(DATA + 0x1000, 64, F_WRITE)], [(DATA + 0x2000, 2048, F_WRITE)]]
    write("chain_net", "rx-too-small", [qsel(4), 1] + list(lens) + list(queue(4, small)) + list(queue(4, [])) + list(data))


# virtio-vsock: rx, tx, event queues
def vsock_hdr(op, src_port, dst_port, length=0, flags=0, src_cid=3, dst_cid=2):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, 1, op, flags, 65536, 0)


def vsock():
    req = vsock_hdr(1, 49152, 1024)
    rw = vsock_hdr(5, 49152, 1024, 5)
    tx = [[(DATA, 44, 0)], [(DATA + 0x100, 44, 0), (DATA + 0x200, 5, 0)]]
    rx = [[(DATA + 0x1000, 44 + 4096, F_WRITE)], [(DATA + 0x3000, 20, F_WRITE), (DATA + 0x3100, 1024, F_WRITE)]]
    data = data_at({0: req, 0x100: rw, 0x200: b"hello"})
    lens = struct.pack("<HHH", 100, 3000, 0)
    write("chain_vsock", "request-rw-and-rx", [qsel(4), 2] + list(lens) + list(queue(4, rx)) + list(queue(4, tx)) + list(queue(4, [])) + list(data))
    spoof = vsock_hdr(1, 49152, 1024, src_cid=7)
    write("chain_vsock", "spoofed-busy", [qsel(2), 4] + list(lens) + list(queue(2, [])) + list(queue(2, [[(DATA, 44, 0)]])) + list(queue(2, [])) + list(data_at({0: spoof})))


# virtio-fs: FUSE requests on the hiprio and request queues
def fuse_in(opcode, unique, length=40):
    return struct.pack("<IIQQIIII", length, opcode, unique, 1, 0, 0, 0, 0)


def fs():
    hi = [[(DATA, 40, 0)]]
    req = [[(DATA + 0x100, 40, 0), (DATA + 0x200, 16, F_WRITE)], [(DATA + 0x300, 40, 0), (DATA + 0x400, 4096, F_WRITE)]]
    data = data_at({0: fuse_in(2, 1), 0x100: fuse_in(1, 7), 0x300: fuse_in(15, 8)})
    write("chain_fs", "forget-and-requests", [qsel(4), 1] + list(struct.pack("<HH", 0, 0)) + list(queue(4, hi)) + list(queue(4, req)) + list(data))
    split = [[(DATA + 0x100, 20, 0), (DATA + 0x114, 20, 0), (DATA + 0x200, 8, F_WRITE), (DATA + 0x208, 8, F_WRITE)]]
    write("chain_fs", "split-header-event-idx", [qsel(4), 3] + list(struct.pack("<HH", 0, 0)) + list(queue(4, [])) + list(queue(4, split)) + list(data))
    # fs_request: descriptors (addr/2, len, flags) then memory from 0.
    def descs(ds):
        return [len(ds)] + [b for a, ln, fl in ds for b in struct.pack("<HHB", a // 2, ln, fl)]
    mem = data_at({0: fuse_in(1, 0x1234)})
    write("fs_request", "lookup", [0] + descs([(0, 40, 0), (0x100, 16, F_WRITE)]) + list(mem))
    write("fs_request", "hiprio-forget", [1] + descs([(0, 40, 0)]) + list(data_at({0: fuse_in(2, 9)})))
    write("fs_request", "split", [0] + descs([(0, 10, 0), (10, 30, 0), (0x100, 8, F_WRITE), (0x108, 8, F_WRITE)]) + list(mem))


# mmio_transport: a driver bringing a device up and using one queue
def mmio_ops():
    ops = []

    def w(reg, val):
        ops.extend([0, reg // 4] + list(struct.pack("<I", val)))

    def r(reg):
        ops.extend([1, reg // 4])

    def mem(addr, data):
        for off in range(0, len(data), 255):
            chunk = data[off:off + 255]
            ops.extend([3] + list(struct.pack("<HB", addr + off, len(chunk))) + list(chunk))

    def cfg(off, size_sel, wr, val=0):
        ops.extend([2, 0x80 | off, size_sel, wr] + list(struct.pack("<Q", val)))

    return ops, w, r, mem, cfg


def mmio_bringup(w, r, queues):
    r(0x000)
    r(0x004)
    r(0x008)
    w(0x070, 1)
    w(0x070, 3)
    w(0x014, 0)
    r(0x010)
    w(0x014, 1)
    r(0x010)
    w(0x024, 1)
    w(0x020, 1)  # VERSION_1
    w(0x070, 0xB)
    r(0x070)
    for i in range(queues):
        w(0x030, i)
        r(0x034)
        w(0x038, 16)
        w(0x080, i * QUEUE_SLOT)
        w(0x084, 0)
        w(0x090, i * QUEUE_SLOT + AVAIL)
        w(0x094, 0)
        w(0x0A0, i * QUEUE_SLOT + USED)
        w(0x0A4, 0)
        w(0x044, 1)
        r(0x044)
    w(0x070, 0xF)


def mmio():
    # rng: one writable buffer
    ops, w, r, mem, cfg = mmio_ops()
    mmio_bringup(w, r, 1)
    mem(0, queue(16, [[(DATA, 64, F_WRITE)]])[:16 * 16])
    mem(AVAIL, queue(16, [[(DATA, 64, F_WRITE)]])[16 * 16:])
    w(0x050, 0)
    r(0x060)
    w(0x064, 1)
    r(0x070)
    cfg(0, 2, 0)
    write("mmio_transport", "rng", [0] + ops)
    # blk: read sector 1, then config reads
    ops, w, r, mem, cfg = mmio_ops()
    mmio_bringup(w, r, 1)
    q = queue(16, [[(DATA, 16, 0), (DATA + 0x100, 512, F_WRITE), (DATA + 0x80, 1, F_WRITE)]])
    mem(DATA, blk_header(0, 1))
    mem(0, q[:256])
    mem(AVAIL, q[256:])
    w(0x050, 0)
    r(0x060)
    cfg(0, 4, 0)
    cfg(12, 3, 0)
    cfg(20, 2, 1, 7)
    w(0x070, 0)
    r(0x070)
    write("mmio_transport", "blk", [1] + ops)
    # vsock: three queues, a REQUEST on tx and an rx buffer
    ops, w, r, mem, cfg = mmio_ops()
    mmio_bringup(w, r, 3)
    rxq = queue(16, [[(DATA + 0x1000, 44 + 1024, F_WRITE)]])
    txq = queue(16, [[(DATA, 44, 0)]])
    mem(DATA, vsock_hdr(1, 49152, 1024))
    mem(0, rxq[:256])
    mem(AVAIL, rxq[256:])
    mem(QUEUE_SLOT, txq[:256])
    mem(QUEUE_SLOT + AVAIL, txq[256:])
    w(0x050, 1)
    w(0x050, 0)
    cfg(0, 4, 0)
    r(0x060)
    write("mmio_transport", "vsock", [2] + ops)
    # out of order status bits and a queue outside memory
    ops, w, r, mem, cfg = mmio_ops()
    w(0x070, 4)
    w(0x070, 1)
    w(0x070, 3)
    w(0x020, 0)
    w(0x070, 0xB)
    w(0x024, 1)
    w(0x020, 1)
    w(0x070, 0xB)
    w(0x030, 0)
    w(0x038, 256)
    w(0x084, 1)
    w(0x044, 1)
    w(0x070, 0xF)
    r(0x070)
    w(0x050, 0)
    write("mmio_transport", "bad-driver", [0] + ops)


# vsock_muxer: guest packets and host socket actions
def muxer():
    def pkt(op, src=0, dst=0, flags=0, credit=2, fwd=0, ln=0, high=0, typ=0):
        ports = src | (dst << 2) | (typ << 6) | (high << 7)
        return [0, op, ports, flags, credit] + list(struct.pack("<I", fwd)) + [ln]

    def drain(cap=0x1000):
        return [1] + list(struct.pack("<H", cap))

    guest = (pkt(1) + [3] + drain() + pkt(5, ln=1) + [5, 0] + [4, 0, 2] + [2] + drain()
             + pkt(6) + pkt(7) + drain() + pkt(4, flags=3) + [2] + drain() + pkt(3))
    write("vsock_muxer", "guest-connection", guest)
    host = ([7, 2, 0] + [2] + drain() + pkt(2, src=2, dst=3) + [5, 0] + [4, 0, 4] + [2] + drain()
            + pkt(5, src=2, dst=3, ln=2) + [5, 0] + [6, 0, 0] + [2] + drain() + pkt(3, src=2, dst=3))
    write("vsock_muxer", "host-connection", host)
    refused = pkt(1, dst=2) + drain() + pkt(5, src=1, dst=1) + pkt(1, typ=1) + drain() + [7, 3, 3] + [7, 1, 2] + [2] + drain()
    write("vsock_muxer", "resets", refused)
    credit = (pkt(1, dst=1, credit=0) + [3] + drain() + [4, 0, 255] + [2] + drain() + pkt(6, dst=1, credit=2)
              + [2] + drain(64) + pkt(5, dst=1, ln=255) + pkt(5, dst=1, ln=255) + [2] + drain())
    write("vsock_muxer", "credit", credit)
    # A header-only rx buffer while host data waits (once taken for the
    # host's EOF: SHUTDOWN to the guest).
    header_only = pkt(1) + [3] + drain() + [4, 0, 1] + [2] + drain(0) + drain() + pkt(5, ln=1)
    write("vsock_muxer", "header-only-rx", header_only)


# fs_vhost_user: the backend's replies
def vu_reply(req, body):
    return struct.pack("<III", req, 0x5, len(body)) + body


def vhost_user():
    u64 = lambda v: struct.pack("<Q", v)
    features = (1 << 32) | (1 << 28) | (1 << 29) | (1 << 30)
    mq, reply_ack, reset = 0x1, 0x8, 0x2000
    hand = vu_reply(1, u64(features)) + vu_reply(15, u64(mq | reply_ack | reset)) + vu_reply(17, u64(2))
    ack = lambda req: vu_reply(req, u64(0))
    start = ack(2) + ack(5)
    for _ in range(2):
        start += ack(8) + ack(9) + ack(10) + ack(13) + ack(12)
    start += ack(18) + ack(18)
    stop = b""
    for i in range(2):
        stop += ack(18) + vu_reply(11, struct.pack("<II", i, 0))
    stop += ack(0x22)  # RESET_DEVICE is request 34
    write("fs_vhost_user", "lifecycle-reply-ack", [0x0E] + list(hand + start + stop))
    plain = vu_reply(1, u64(features)) + vu_reply(15, u64(mq)) + vu_reply(17, u64(2))
    plain_stop = vu_reply(11, struct.pack("<II", 0, 0)) + vu_reply(11, struct.pack("<II", 1, 0))
    write("fs_vhost_user", "lifecycle-no-ack", [0x0E] + list(plain + plain_stop))
    write("fs_vhost_user", "no-mq-three-queues", [0x01] + list(vu_reply(1, u64(features)) + vu_reply(15, u64(reply_ack))))
    write("fs_vhost_user", "no-version-1", [0x00] + list(vu_reply(1, u64(1 << 30)) + vu_reply(15, u64(0))))


# The two parsers of the existing targets.
def parsers():
    # le64 readable length, le64 writable length, then the header.
    write("block_request", "read", struct.pack("<QQ", 16, 513) + blk_header(0, 8))
    write("block_request", "get-id", struct.pack("<QQ", 16, 21) + blk_header(8, 0))
    write("vsock_packet", "request", vsock_hdr(1, 49152, 1024))
    write("vsock_packet", "rw-spoofed", vsock_hdr(5, 1, 2, length=100, src_cid=9))


if __name__ == "__main__":
    rng()
    blk()
    net()
    vsock()
    fs()
    mmio()
    muxer()
    vhost_user()
    parsers()
