"""The object table of an iommufd context (iommufd ``main.c``).

Objects are built completely first and enter the table only when nothing
more can fail (``commit``, the analogue of ``iommufd_object_finalize``); until
then they are invisible to ``get``. Callers pass integer ids; ``get`` of a
missing id, or of an object of another type, raises ENOENT.

``users`` counts the references other objects and attachments hold on an
object; DESTROY of an object with users gives EBUSY. Ids are never reused
within a context, so a stale id always gives ENOENT.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .errors import fail

if TYPE_CHECKING:
    from .context import IoasidContext


class ObjType(enum.Enum):
    """enum iommufd_object_type (the ones the model has)."""

    IOAS = "ioas"
    HWPT_PAGING = "hwpt_paging"
    HWPT_NESTED = "hwpt_nested"
    DEVICE = "device"
    FAULT = "fault"
    VIOMMU = "viommu"
    VDEVICE = "vdevice"
    VEVENTQ = "veventq"
    ACCESS = "access"


class IommufdObject:
    """Common part of every object (``struct iommufd_object``)."""

    TYPE: ClassVar[ObjType]

    def __init__(self) -> None:
        self.id = 0
        self.users = 0

    def release(self, ctx: IoasidContext) -> None:
        """Drop what this object holds on others. Called once, on destroy."""

    def describe(self) -> dict[str, object]:
        """A msgpack-friendly summary for listings."""
        return {"id": self.id, "type": self.TYPE.value, "users": self.users}


T = TypeVar("T", bound=IommufdObject)


class ObjectTable:
    """Objects of one context by id."""

    def __init__(self) -> None:
        self._objs: dict[int, IommufdObject] = {}
        self._next_id = 1

    def commit(self, obj: T) -> T:
        """Give ``obj`` an id and make it visible; nothing may fail after this."""
        obj.id = self._next_id
        self._next_id += 1
        self._objs[obj.id] = obj
        return obj

    def get(self, obj_id: int, *types: type[T]) -> T:
        """The object ``obj_id`` if it is one of ``types`` (any if none), else ENOENT."""
        obj = self._objs.get(obj_id) if isinstance(obj_id, int) else None
        if obj is None or (types and not isinstance(obj, types)):
            raise fail(errno.ENOENT, f"no such object {obj_id!r}"
                       + (f" of type {'/'.join(t.TYPE.value for t in types)}" if types else ""))
        return obj  # type: ignore[return-value]

    def get_of(self, obj_id: int, kind: ObjType) -> Any:
        """``iommufd_get_object(ictx, id, type)``: the object ``obj_id`` if its
        ``TYPE`` is ``kind``, else ENOENT. For an object file that the class's
        own file imports (a HWPT's commands name devices and vIOMMUs)."""
        obj = self._objs.get(obj_id) if isinstance(obj_id, int) else None
        if obj is None or obj.TYPE is not kind:
            raise fail(errno.ENOENT, f"no such object {obj_id!r} of type {kind.value}")
        return obj

    def find(self, obj_id: int) -> IommufdObject | None:
        return self._objs.get(obj_id)

    def remove(self, obj: IommufdObject) -> None:
        del self._objs[obj.id]

    def of_type(self, cls: type[T]) -> list[T]:
        return [o for o in self._objs.values() if isinstance(o, cls)]

    def of_kind(self, kind: ObjType) -> list[Any]:
        """The objects whose ``TYPE`` is ``kind``, by id (``get_of``'s listing)."""
        return [o for o in self._objs.values() if o.TYPE is kind]

    def __iter__(self) -> Iterator[IommufdObject]:
        return iter(list(self._objs.values()))

    def __len__(self) -> int:
        return len(self._objs)
