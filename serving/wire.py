"""``EntityFeatures`` messages written as protobuf wire bytes, many at once.

Every entity's ``values`` map holds the same features in the same order, so the bytes of
a map are a fixed template with eight bytes per feature for its double: numpy writes the
doubles of all entities into copies of the template in one assignment. Building the same
messages through the protobuf API costs a Python call per map entry (1,500 for 100
entities), which was most of a GetFeatures call's own time once its rows were merged.

The bytes are the standard encoding (map entries as ``{1: key, 2: value}`` messages, as
protoc writes them); any protobuf parser reads them, and a test compares them with the
messages the protobuf API builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import FieldDescriptor

from saiki.v1 import features_pb2

FloatArray = npt.NDArray[np.float64]


def varint(value: int) -> bytes:
    """A non-negative int as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [varint(n) for n in range(1 << 14)]  # every length up to 16 KiB: a lookup


# Wire types by field type: 64-bit for doubles, length-delimited for what is used here.
_WIRE_TYPES = {FieldDescriptor.TYPE_DOUBLE: 1, FieldDescriptor.TYPE_STRING: 2}
_WIRE_TYPES[FieldDescriptor.TYPE_MESSAGE] = 2


def tag(field: Any) -> bytes:
    """A field's tag (a ``FieldDescriptor``'s) as it precedes its value on the wire:
    (number << 3) | wire type."""
    return varint(field.number << 3 | _WIRE_TYPES[field.type])


# The tags, taken from the generated descriptors rather than typed in.
_ENTITY = features_pb2.EntityFeatures.DESCRIPTOR.fields_by_name
_ENTRY = features_pb2.EntityFeatures.ValuesEntry.DESCRIPTOR.fields_by_name
_ENTITIES = tag(features_pb2.GetFeaturesResponse.DESCRIPTOR.fields_by_name["entities"])
_ID, _VALUES = tag(_ENTITY["id"]), tag(_ENTITY["values"])
_KEY, _VALUE = tag(_ENTRY["key"]), tag(_ENTRY["value"])


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_SMALL[size] if size < 1 << 14 else varint(size)) + payload


class EntityEncoder:
    """Encodes ``(id, values row)`` pairs as ``GetFeaturesResponse.entities`` elements,
    each an ``EntityFeatures`` whose ``values`` map holds ``names`` in order."""

    def __init__(self, names: Sequence[str]) -> None:
        template = bytearray()
        slots: list[int] = []
        for name in names:
            entry = _field(_KEY, name.encode()) + _VALUE
            template += _VALUES + varint(len(entry) + 8) + entry
            slots.extend(range(len(template), len(template) + 8))
            template += bytes(8)
        self._template = np.frombuffer(bytes(template), dtype=np.uint8)
        self._slots = np.array(slots, dtype=np.int64)
        self._width = len(names)

    def encode(self, ids: Sequence[str], values: FloatArray) -> list[bytes]:
        """One element of the response's ``entities`` per id, as wire bytes."""
        count = len(ids)
        if values.shape != (count, self._width):
            raise ValueError(f"values of shape {values.shape} for {count} ids")
        maps = np.tile(self._template, (count, 1))
        doubles = np.ascontiguousarray(values, dtype="<f8").view(np.uint8)
        maps[:, self._slots] = doubles.reshape(count, 8 * self._width)
        blob = maps.tobytes()
        size = len(self._template)
        field = _field
        return [
            field(_ENTITIES, field(_ID, entity_id.encode()) + blob[n * size : (n + 1) * size])
            for n, entity_id in enumerate(ids)
        ]
