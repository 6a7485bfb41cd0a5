"""iommufd uAPI constants, data layouts and result values (Linux include/uapi/linux/iommufd.h).

Names and values follow ``include/uapi/linux/iommufd.h``. Data blobs that the
kernel takes as structs (VTD_S1 HWPT data, VTD_S1 invalidation entries) are
declared with ``vuser.wire.Struct`` so that callers may pass either the raw
bytes or a plain dict of the same fields; results are dataclasses of ints with
``to_dict()`` for msgpack.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import asdict, dataclass, field
from typing import Any

from vuser.memory import PAGE_SIZE
from vuser.wire import Pad, Struct, u8, u16, u32, u64

from .errors import fail

U64_MAX = (1 << 64) - 1
#: IOMMU_NO_PASID is 0 in the kernel; the model spells "no PASID" as None.
NO_PASID = None
#: ``iotlb_invalidate(pasid=ALL_PASIDS)``: every PASID and the RID.
ALL_PASIDS = -1


#: The model's own type numbers (vIOMMU, vEVENTQ, invalidation data): far
#: from upstream's small values; see docs/iommufd-fidelity.md, "vuser types".
VUSER_TYPE = 0x76550001


class IoasMapFlags(enum.IntFlag):
    """IOMMU_IOAS_MAP_* (also used by IOAS_COPY)."""

    FIXED_IOVA = 1
    WRITEABLE = 2
    READABLE = 4


class OptionId(enum.IntEnum):
    """enum iommufd_option."""

    RLIMIT_MODE = 0
    HUGE_PAGES = 1


class OptionOp(enum.IntEnum):
    """enum iommufd_option_ops."""

    SET = 0
    GET = 1


class HwptAllocFlags(enum.IntFlag):
    """IOMMU_HWPT_ALLOC_*."""

    NEST_PARENT = 1
    DIRTY_TRACKING = 2
    FAULT_ID_VALID = 4
    PASID = 8


class HwptDataType(enum.IntEnum):
    """enum iommu_hwpt_data_type."""

    NONE = 0
    VTD_S1 = 1
    ARM_SMMUV3 = 2
    AMD_GUEST = 3


class VtdS1Flags(enum.IntFlag):
    """IOMMU_VTD_S1_* (struct iommu_hwpt_vtd_s1.flags)."""

    SRE = 1
    EAFE = 2
    WPE = 4


class HwptInvalidateDataType(enum.IntEnum):
    """enum iommu_hwpt_invalidate_data_type."""

    VTD_S1 = 0
    ARM_SMMUV3 = 1
    VUSER_VTD = VUSER_TYPE


#: IOMMU_VTD_INV_FLAGS_LEAF
VTD_INV_FLAGS_LEAF = 1


class HwInfoType(enum.IntEnum):
    """enum iommu_hw_info_type."""

    NONE = 0
    INTEL_VTD = 1
    ARM_SMMUV3 = 2


class HwCapabilities(enum.IntFlag):
    """enum iommufd_hw_capabilities."""

    DIRTY_TRACKING = 1
    PCI_PASID_EXEC = 2
    PCI_PASID_PRIV = 4
    NO_ATS = 8  # IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED


class DirtyBitmapFlags(enum.IntFlag):
    """IOMMU_HWPT_GET_DIRTY_BITMAP_*."""

    NO_CLEAR = 1


class FaultFlags(enum.IntFlag):
    """IOMMU_PGFAULT_FLAGS_*; LOST_EVENTS is the model's overflow mark.

    LOST_EVENTS borrows the vEVENTQ header flag of the same name: it is set on
    the first record read after the queue dropped page requests.
    """

    PASID_VALID = 1
    LAST_PAGE = 2
    LOST_EVENTS = 1 << 31


class FaultPerm(enum.IntFlag):
    """IOMMU_PGFAULT_PERM_* (same values as ``pagetable.Access``)."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


class PageResponseCode(enum.IntEnum):
    """enum iommufd_page_response_code."""

    SUCCESS = 0
    INVALID = 1


class ViommuType(enum.IntEnum):
    """IOMMU_VIOMMU_TYPE_*; DEFAULT (0) is never allocatable; VUSER_VTD is vuser's."""

    DEFAULT = 0
    ARM_SMMUV3 = 1
    TEGRA241_CMDQV = 2
    VUSER_VTD = VUSER_TYPE


class VeventqType(enum.IntEnum):
    """IOMMU_VEVENTQ_TYPE_*; VUSER_VTD is vuser's (stage-1 faults of vDEVICEs)."""

    DEFAULT = 0
    ARM_SMMUV3 = 1
    TEGRA241_CMDQV = 2
    VUSER_VTD = VUSER_TYPE


class VeventqFlags(enum.IntFlag):
    """IOMMU_VEVENTQ_FLAG_*."""

    LOST_EVENTS = 1


class VeventHeader(Struct, size=8):
    """struct iommufd_vevent_header."""

    flags: u32
    sequence: u32


class IommuVeventVuserVtd(Struct, size=24):
    """vuser's VUSER_VTD vEVENT payload: a stage-1 fault of a vDEVICE.

    ``virt_id`` the vRID, ``pasid`` the vPASID (valid if ``flags`` bit 0),
    ``reason`` the VT-d fault reason, ``perm`` the access (R1 W2 X4 P8).
    """

    virt_id: u64
    addr: u64
    pasid: u32
    reason: u8
    perm: u8
    flags: u16


class IommuViommuVuserVtdInvalidate(Struct, size=32):
    """vuser's VUSER_VTD invalidation entry for HWPT_INVALIDATE on a vIOMMU.

    ``flags``: LEAF 1, PASID_VALID 2 (``pasid`` is a vPASID).
    """

    virt_id: u64
    addr: u64
    npages: u64
    pasid: u32
    flags: u16
    reserved: u16


class IommuHwptVtdS1(Struct, size=24):
    """struct iommu_hwpt_vtd_s1 (IOMMU_HWPT_DATA_VTD_S1)."""

    flags: u64
    pgtbl_addr: u64
    addr_width: u32
    _reserved: Pad(4)


class IommuHwptVtdS1Invalidate(Struct, size=24):
    """struct iommu_hwpt_vtd_s1_invalidate (one HWPT_INVALIDATE entry)."""

    addr: u64
    npages: u64
    flags: u32
    reserved: u32


def struct_from(cls: type[Struct], value: Any) -> Struct:
    """Accept a wire ``Struct``, its raw bytes or a dict of its fields.

    Raises ``ValueError`` (short bytes, unknown field) or ``TypeError``.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != cls.SIZE:
            raise ValueError(f"{cls.__name__} is {cls.SIZE} bytes, got {len(value)}")
        return cls.unpack(value)
    if isinstance(value, dict):
        unknown = set(value) - set(cls.fields())
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        obj = cls(**value)
        obj.pack()  # range-checks every field
        return obj
    raise TypeError(f"{cls.__name__} data must be bytes or a dict, not {type(value).__name__}")


def copy_struct_from_user(cls: type[Struct], value: Any) -> Struct:
    """``copy_struct_from_user`` for driver data: bytes or a dict of fields.

    Bytes shorter than the struct: EINVAL (``iommu_copy_struct_from_user``
    asks for the whole struct); longer: the tail must be zero, else E2BIG.
    A dict: unknown fields EINVAL, out-of-range values EINVAL.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) < cls.SIZE:
            raise fail(errno.EINVAL, f"{cls.__name__} is {cls.SIZE} bytes, got {len(raw)}")
        if any(raw[cls.SIZE:]):
            raise fail(errno.E2BIG, f"non-zero bytes after the {cls.SIZE}-byte {cls.__name__}")
        return cls.unpack(raw[:cls.SIZE])
    try:
        return struct_from(cls, value)
    except (ValueError, TypeError) as e:
        raise fail(errno.EINVAL, f"bad {cls.__name__}: {e}") from None


@dataclass(frozen=True)
class IovaRange:
    """One inclusive usable IOVA range (struct iommu_iova_range)."""

    start: int
    last: int


@dataclass(frozen=True)
class IovaRanges:
    """IOMMU_IOAS_IOVA_RANGES result."""

    ranges: list[IovaRange]
    alignment: int

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": [[r.start, r.last] for r in self.ranges], "alignment": self.alignment}


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO result: VT-d data is ``{flags, cap_reg, ecap_reg}``."""

    data_type: int
    data: dict[str, int]
    capabilities: int
    max_pasid_log2: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultRecord:
    """struct iommu_hwpt_pgfault, plus the device label (stream id)."""

    flags: int
    dev_id: int
    label: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    length: int
    cookie: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class FaultQueueStatus:
    """Counters of a fault queue (model extension, for inspection)."""

    depth: int
    queued: int
    pending_groups: int
    lost_events: int
    delivered: int
    responded: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Stats:
    """DMA-path counters of one context (``IoasidContext.stats()``)."""

    translations: int = 0
    hits: int = 0
    misses: int = 0
    walks: int = 0
    faults: int = 0
    invalidations: int = 0
    invalidated_entries: int = 0
    evictions: int = 0
    memory_reads: int = 0
    memory_writes: int = 0
    devtlb_invalidations: int = 0
    page_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d
