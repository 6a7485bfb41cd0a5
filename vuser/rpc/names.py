"""The uAPI's flag and enum names as RPC parameter values.

A parameter listed here takes its number or the names of its enum:
``hwpt_alloc flags=NEST_PARENT``, ``ioas_map flags=READABLE|WRITEABLE``,
``translate access=write``. Names are case-insensitive, with or without the
uAPI's prefix (``IOMMU_HWPT_ALLOC_NEST_PARENT``); flags are ``|``-joined, an
enum takes one name. An unknown name is an EINVAL error listing the valid ones.
The values are those of include/uapi/linux/iommufd.h.
"""

from __future__ import annotations

import enum
import errno

from vuser.errors import RemoteProtocolError
from vuser.iommu import (
    Access, DirtyBitmapFlags, FaultPerm, HwInfoType, HwptAllocFlags, HwptDataType,
    HwptInvalidateDataType, IoasMapFlags, OptionId, OptionOp, PageResponseCode,
    VeventqType, ViommuType,
)

#: (method, parameter) -> (the enum its value takes, the uAPI prefix of its names).
ENUM_PARAMS: dict[tuple[str, str], tuple[type[enum.IntEnum] | type[enum.IntFlag], str]] = {
    ("hwpt_alloc", "flags"): (HwptAllocFlags, "IOMMU_HWPT_ALLOC_"),
    ("hwpt_alloc", "data_type"): (HwptDataType, "IOMMU_HWPT_DATA_"),
    ("hwpt_invalidate", "data_type"): (HwptInvalidateDataType, "IOMMU_HWPT_INVALIDATE_DATA_"),
    ("hwpt_get_dirty_bitmap", "flags"): (DirtyBitmapFlags, "IOMMU_HWPT_GET_DIRTY_BITMAP_"),
    ("get_hw_info", "in_data_type"): (HwInfoType, "IOMMU_HW_INFO_TYPE_"),
    ("ioas_map", "flags"): (IoasMapFlags, "IOMMU_IOAS_MAP_"),
    ("ioas_map_file", "flags"): (IoasMapFlags, "IOMMU_IOAS_MAP_"),
    ("ioas_copy", "flags"): (IoasMapFlags, "IOMMU_IOAS_MAP_"),
    ("ioas_option", "option_id"): (OptionId, "IOMMU_OPTION_"),
    ("ioas_option", "op"): (OptionOp, "IOMMU_OPTION_OP_"),
    ("fault_respond", "code"): (PageResponseCode, "IOMMUFD_PAGE_RESP_"),
    ("viommu_alloc", "viommu_type"): (ViommuType, "IOMMU_VIOMMU_TYPE_"),
    ("veventq_alloc", "veventq_type"): (VeventqType, "IOMMU_VEVENTQ_TYPE_"),
    ("page_request", "perm"): (FaultPerm, "IOMMU_PGFAULT_PERM_"),
    ("translate", "access"): (Access, ""),
    ("ats_translate", "access"): (Access, ""),
    ("read", "access"): (Access, ""),
    ("write", "access"): (Access, ""),
}


def from_names(method: str, param: str, names: tuple[type[enum.IntEnum] | type[enum.IntFlag], str],
               text: str) -> int:
    """The number that ``text`` (names, ``|``-joined for flags) stands for in
    ``names`` (an ``ENUM_PARAMS`` value); EINVAL otherwise."""
    kind, prefix = names
    is_flag = issubclass(kind, enum.IntFlag)
    words = [w.strip() for w in text.split("|")]
    if not is_flag and len(words) != 1:
        raise RemoteProtocolError(errno.EINVAL, f"{method}: param {param!r} takes one name, "
                                                f"not {text!r}")
    value = 0
    for word in words:
        name = word.upper()
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        member = kind.__members__.get(name)
        if member is None:
            valid = ", ".join(kind.__members__) + (", |-joined" if is_flag else "")
            raise RemoteProtocolError(
                errno.EINVAL, f"{method}: param {param!r} has no {'flag' if is_flag else 'name'} "
                              f"{word!r} (valid: {valid}, or a number)")
        value |= int(member)
    return value
