"""Every wire layout round-trips, has the spec's size and offsets, and rejects
malformed payloads with EINVAL."""

import errno

import pytest

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.protocol import messages as m
from vuser.backend import VFIO_REGION_INFO_FLAG_CAPS
from vuser.protocol.consts import Command
from vuser.protocol.messages import Kind, decode, encode

# (struct, size from the spec / linux/vfio.h, {field: offset within the payload})
LAYOUTS = [
    (m.Header, 16, {"msg_id": 0, "command": 2, "size": 4, "flags": 8, "error": 12}),
    (m.VfioUserVersion, 4, {"major": 0, "minor": 2}),
    (m.VfioUserDmaMap, 32, {"argsz": 0, "flags": 4, "offset": 8, "addr": 16, "size": 24}),
    (m.VfioUserDmaUnmap, 24, {"argsz": 0, "flags": 4, "addr": 8, "size": 16}),
    (m.VfioDeviceInfo, 16, {"argsz": 0, "flags": 4, "num_regions": 8, "num_irqs": 12}),
    (m.VfioRegionInfo, 32, {"argsz": 0, "flags": 4, "index": 8, "cap_offset": 12,
                            "size": 16, "offset": 24}),
    (m.VfioInfoCapHeader, 8, {"id": 0, "version": 2, "next": 4}),
    (m.VfioRegionInfoCapSparseMmap, 8, {"nr_areas": 0}),
    (m.VfioRegionSparseMmapArea, 16, {"offset": 0, "size": 8}),
    (m.VfioUserRegionIoFds, 16, {"argsz": 0, "flags": 4, "index": 8, "count": 12}),
    (m.VfioUserSubRegionIoFd, 40, {"offset": 0, "size": 8, "fd_index": 16, "type": 20,
                                   "flags": 24, "datamatch": 32}),
    (m.VfioIrqInfo, 16, {"argsz": 0, "flags": 4, "index": 8, "count": 12}),
    (m.VfioIrqSet, 20, {"argsz": 0, "flags": 4, "index": 8, "start": 12, "count": 16}),
    (m.VfioUserRegionAccess, 16, {"offset": 0, "region": 8, "count": 12}),
    (m.VfioUserDmaRw, 16, {"addr": 0, "count": 8}),   # count u64 @24 of the message
    (m.VfioUserWriteMultiHead, 8, {"wr_cnt": 0}),
    (m.VfioUserWriteMultiEntry, 24, {"offset": 0, "region": 8, "count": 12, "data": 16}),
    (m.VfioDeviceFeature, 8, {"argsz": 0, "flags": 4}),
    (m.VfioUserMigData, 8, {"argsz": 0, "size": 4}),
]


@pytest.mark.parametrize("cls,size,offsets", LAYOUTS, ids=lambda v: getattr(v, "__name__", ""))
def test_struct_size_offsets_and_round_trip(cls, size, offsets):
    assert cls.SIZE == size
    for name, off in offsets.items():
        assert cls.offset_of(name) == off, name
    # Distinct non-zero values in every field, so a swapped field would show.
    values = {}
    for i, name in enumerate(f for f in cls.fields() if not f.startswith("_")):
        default = getattr(cls(), name)
        values[name] = bytes([i + 1]) * len(default) if isinstance(default, bytes) else i + 1
    obj = cls(**values)
    raw = obj.pack()
    assert len(raw) == size
    assert cls.unpack(raw) == obj


def _body_samples():
    rinfo = m.VfioRegionInfo(argsz=32 + 8 + 8 + 32, flags=VFIO_REGION_INFO_FLAG_CAPS | 7,
                             index=2, cap_offset=32, size=0x4000, offset=0x1000)
    sub = m.VfioUserSubRegionIoFd(offset=8, size=4, fd_index=0, type=0, flags=1, datamatch=9)
    entry = m.VfioUserWriteMultiEntry(offset=0x10, region=0, count=4, data=b"\1\2\3\4\0\0\0\0")
    return [
        (Command.VERSION, Kind.REQUEST,
         m.Version(0, 0, {"capabilities": {"max_msg_fds": 16}}), None),
        (Command.VERSION, Kind.REPLY, m.Version(0, 0, None), 4),
        (Command.DMA_MAP, Kind.REQUEST,
         m.VfioUserDmaMap(flags=3, offset=0x1000, addr=0x10000, size=0x2000), 32),
        (Command.DMA_MAP, Kind.REPLY, None, 0),
        (Command.DMA_UNMAP, Kind.REQUEST, m.VfioUserDmaUnmap(addr=0x10000, size=0x2000), 24),
        (Command.DMA_UNMAP, Kind.REPLY, m.VfioUserDmaUnmap(addr=0x10000, size=0x2000), 24),
        (Command.DMA_UNMAP, Kind.REPLY, None, 0),
        (Command.DEVICE_GET_INFO, Kind.REQUEST, m.VfioDeviceInfo(), 16),
        (Command.DEVICE_GET_INFO, Kind.REPLY,
         m.VfioDeviceInfo(flags=3, num_regions=9, num_irqs=5), 16),
        (Command.DEVICE_GET_REGION_INFO, Kind.REQUEST, m.VfioRegionInfo(index=2), 32),
        (Command.DEVICE_GET_REGION_INFO, Kind.REPLY,
         m.RegionInfoReply(rinfo, ((0x1000, 0x2000), (0x3000, 0x1000))), 32 + 16 + 32),
        (Command.DEVICE_GET_REGION_INFO, Kind.REPLY,
         m.RegionInfoReply(m.VfioRegionInfo(flags=3, index=0, size=4096)), 32),
        (Command.DEVICE_GET_REGION_IO_FDS, Kind.REQUEST, m.VfioUserRegionIoFds(index=1), 16),
        (Command.DEVICE_GET_REGION_IO_FDS, Kind.REPLY,
         m.RegionIoFdsReply(m.VfioUserRegionIoFds(argsz=56, index=1, count=1), (sub,)), 56),
        (Command.DEVICE_GET_IRQ_INFO, Kind.REQUEST, m.VfioIrqInfo(index=2), 16),
        (Command.DEVICE_GET_IRQ_INFO, Kind.REPLY, m.VfioIrqInfo(flags=9, index=2, count=4), 16),
        (Command.DEVICE_SET_IRQS, Kind.REQUEST,
         m.SetIrqs(m.VfioIrqSet(argsz=22, flags=0x22, index=2, start=0, count=2), b"\1\0"), 22),
        (Command.DEVICE_SET_IRQS, Kind.REPLY, None, 0),
        (Command.REGION_READ, Kind.REQUEST,
         m.VfioUserRegionAccess(offset=8, region=7, count=4), 16),
        (Command.REGION_READ, Kind.REPLY, m.RegionData.make(7, 8, b"\xaa\xbb\xcc\xdd"), 20),
        (Command.REGION_WRITE, Kind.REQUEST, m.RegionData.make(0, 0x20, b"\1\0\0\0"), 20),
        (Command.REGION_WRITE, Kind.REPLY,
         m.VfioUserRegionAccess(offset=0x20, region=0, count=4), 16),
        (Command.DMA_READ, Kind.REQUEST, m.VfioUserDmaRw(addr=0x1000, count=3), 16),
        (Command.DMA_READ, Kind.REPLY, m.DmaData.make(0x1000, b"abc"), 19),
        (Command.DMA_WRITE, Kind.REQUEST, m.DmaData.make(0x1000, b"abc"), 19),
        (Command.DMA_WRITE, Kind.REPLY, m.VfioUserDmaRw(addr=0x1000, count=3), 16),
        (Command.DEVICE_RESET, Kind.REQUEST, None, 0),
        (Command.DEVICE_RESET, Kind.REPLY, None, 0),
        (Command.REGION_WRITE_MULTI, Kind.REQUEST, m.WriteMulti((entry, entry)), 8 + 48),
        (Command.REGION_WRITE_MULTI, Kind.REPLY, m.VfioUserWriteMultiHead(wr_cnt=2), 8),
        (Command.DEVICE_FEATURE, Kind.REQUEST,
         m.DeviceFeature(m.VfioDeviceFeature(argsz=8, flags=1 | 1 << 18)), 8),
        (Command.DEVICE_FEATURE, Kind.REPLY,
         m.DeviceFeature(m.VfioDeviceFeature(argsz=16, flags=1 | 1 << 16), b"\3" + b"\0" * 7), 16),
        (Command.MIG_DATA_READ, Kind.REQUEST, m.VfioUserMigData(argsz=24, size=16), 8),
        (Command.MIG_DATA_READ, Kind.REPLY, m.MigData(m.VfioUserMigData(size=3), b"xyz"), 11),
        (Command.MIG_DATA_WRITE, Kind.REQUEST, m.MigData(m.VfioUserMigData(size=3), b"xyz"), 11),
        (Command.MIG_DATA_WRITE, Kind.REPLY, None, 0),
    ]


@pytest.mark.parametrize("command,kind,body,size", _body_samples(),
                         ids=lambda v: getattr(v, "name", None) or getattr(v, "value", ""))
def test_every_message_round_trips(command, kind, body, size):
    raw = encode(command, kind, body)
    if size is not None:
        assert len(raw) == size
    assert decode(command, kind, raw) == body


def test_every_command_has_both_layouts_except_obsolete_dirty_pages():
    for command in Command:
        for kind in Kind:
            assert ((command, kind) in m.MESSAGES) == (command is not Command.DIRTY_PAGES)


def test_version_payload_is_nul_terminated_json():
    raw = encode(Command.VERSION, Kind.REQUEST, m.Version(0, 0, {"capabilities": {}}))
    assert raw[:4] == b"\0\0\0\0" and raw[4:] == b'{"capabilities":{}}\0'


def test_dma_rw_count_is_u64_at_message_byte_24():
    raw = encode(Command.DMA_WRITE, Kind.REQUEST, m.DmaData.make(0x1122, b"\x55" * 3))
    # payload offsets + 16 = message offsets: addr @16, count u64 @24, data @32
    assert raw[0:8] == (0x1122).to_bytes(8, "little")
    assert raw[8:16] == (3).to_bytes(8, "little")
    assert raw[16:] == b"\x55" * 3


BAD_PAYLOADS = [
    (Command.VERSION, Kind.REQUEST, b"\0\0\0"),                      # short head
    (Command.VERSION, Kind.REQUEST, b"\0\0\0\0{}"),                  # no NUL
    (Command.VERSION, Kind.REQUEST, b"\0\0\0\0{\0}\0"),              # NUL inside
    (Command.VERSION, Kind.REQUEST, b"\0\0\0\0{bad json}\0"),
    (Command.VERSION, Kind.REQUEST, b"\0\0\0\0[1, 2]\0"),            # not an object
    (Command.VERSION, Kind.REQUEST, b"\0\0\0\0\xff\xfe\0"),          # not UTF-8
    (Command.DMA_MAP, Kind.REQUEST, bytes(31)),
    (Command.DMA_MAP, Kind.REPLY, b"\0"),
    (Command.DMA_UNMAP, Kind.REQUEST, bytes(23)),
    (Command.DEVICE_GET_INFO, Kind.REQUEST, bytes(12)),
    (Command.DEVICE_GET_REGION_INFO, Kind.REQUEST, bytes(31)),
    (Command.DEVICE_GET_IRQ_INFO, Kind.REQUEST, bytes(8)),
    (Command.DEVICE_SET_IRQS, Kind.REQUEST, bytes(19)),
    (Command.REGION_READ, Kind.REQUEST, bytes(15)),
    (Command.REGION_WRITE, Kind.REQUEST, m.VfioUserRegionAccess(count=4).pack() + b"abc"),
    (Command.REGION_WRITE, Kind.REQUEST, m.VfioUserRegionAccess(count=2).pack() + b"abc"),
    (Command.DMA_READ, Kind.REPLY, m.VfioUserDmaRw(count=9).pack() + b"x"),
    (Command.DEVICE_RESET, Kind.REQUEST, b"\0\0\0\0"),
    (Command.REGION_WRITE_MULTI, Kind.REQUEST, (2).to_bytes(8, "little") + bytes(24)),
    (Command.REGION_WRITE_MULTI, Kind.REQUEST, bytes(7)),
    (Command.DEVICE_FEATURE, Kind.REQUEST, bytes(4)),
    (Command.MIG_DATA_WRITE, Kind.REQUEST, m.VfioUserMigData(size=5).pack() + b"x"),
    (Command.DEVICE_GET_REGION_IO_FDS, Kind.REPLY, m.VfioUserRegionIoFds(count=1).pack()),
]


@pytest.mark.parametrize("command,kind,payload", BAD_PAYLOADS)
def test_malformed_payloads_are_einval(command, kind, payload):
    with pytest.raises(RemoteProtocolError) as e:
        decode(command, kind, payload)
    assert e.value.errno == errno.EINVAL


def _region_info_with_cap(cap_offset, nxt=0, nr_areas=1, truncate=0):
    head = m.VfioRegionInfo(argsz=72, flags=VFIO_REGION_INFO_FLAG_CAPS, cap_offset=cap_offset)
    cap = m.VfioInfoCapHeader(id=1, version=1, next=nxt).pack()
    cap += m.VfioRegionInfoCapSparseMmap(nr_areas=nr_areas).pack()
    cap += m.VfioRegionSparseMmapArea(offset=0, size=4096).pack()
    raw = head.pack() + cap
    return raw[:len(raw) - truncate]


@pytest.mark.parametrize("raw", [
    _region_info_with_cap(cap_offset=8),             # points into the head
    _region_info_with_cap(cap_offset=200),           # beyond the payload
    _region_info_with_cap(cap_offset=32, nr_areas=5),  # claims more areas than sent
    _region_info_with_cap(cap_offset=32, nxt=32),    # loops on itself
    _region_info_with_cap(cap_offset=32, truncate=20),
])
def test_bad_capability_chains_are_einval(raw):
    with pytest.raises(RemoteProtocolError) as e:
        decode(Command.DEVICE_GET_REGION_INFO, Kind.REPLY, raw)
    assert e.value.errno == errno.EINVAL


def test_unknown_capabilities_are_skipped():
    head = m.VfioRegionInfo(argsz=32 + 16 + 32, flags=VFIO_REGION_INFO_FLAG_CAPS, cap_offset=32)
    unknown = m.VfioInfoCapHeader(id=0x99, version=1, next=40).pack()
    sparse = (m.VfioInfoCapHeader(id=1, version=1, next=0).pack()
              + m.VfioRegionInfoCapSparseMmap(nr_areas=1).pack()
              + m.VfioRegionSparseMmapArea(offset=4096, size=8192).pack())
    reply = decode(Command.DEVICE_GET_REGION_INFO, Kind.REPLY, head.pack() + unknown + sparse)
    assert reply.sparse_areas == ((4096, 8192),)


def test_encode_rejects_wrong_bodies_and_inconsistent_counts():
    with pytest.raises(LocalProtocolError, match="takes VfioUserDmaMap"):
        encode(Command.DMA_MAP, Kind.REQUEST, m.VfioUserDmaUnmap())
    with pytest.raises(LocalProtocolError, match="count"):
        encode(Command.REGION_WRITE, Kind.REQUEST,
               m.RegionData(m.VfioUserRegionAccess(count=3), b"ab"))
    with pytest.raises(LocalProtocolError, match="does not fit"):
        encode(Command.REGION_READ, Kind.REQUEST, m.VfioUserRegionAccess(count=1 << 32))
    with pytest.raises(LocalProtocolError, match="right after"):
        encode(Command.DEVICE_GET_REGION_INFO, Kind.REPLY,
               m.RegionInfoReply(m.VfioRegionInfo(cap_offset=40), ((0, 1),)))
    with pytest.raises(LocalProtocolError):
        encode(Command.DIRTY_PAGES, Kind.REQUEST, None)
