"""Where bytes that do not decode as a protobuf message go wrong: the field to name.

protobuf's decoder says only that a message did not parse ("String field had bad UTF-8"), not
which field. A caller must be told which, so on that failure path the bytes are walked again
against the message's descriptor: each known field's wire type and length, and the UTF-8 of
every string, nested messages included. The first field whose bytes are at fault is named by its
path (`person.name`, `agencies[2]`); a fault the walk cannot place (an unreadable tag, an unknown
field, a group) is the message's as a whole.

The walk runs only after the decoder refused the bytes, and stops after `MAX_FIELDS` fields: a
request bounded in size (gateway.core.limits) costs a bounded walk.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.core.errors import FieldViolation, InvalidMessage

MAX_FIELDS: Final = 20_000  # more than a table of 600 periods holds (about 4,200)
_MAX_DEPTH: Final = 32      # the contracts nest a few levels; protobuf itself stops at 100
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


def undecodable(descriptor: Descriptor, data: bytes, *, prefix: str = "", whole: str = "request",
                reason: str = "PAYLOAD_UNDECODABLE") -> InvalidMessage:
    """The InvalidMessage for `data` that the decoder refused as a `descriptor` message. It names
    the first field at fault by its path within the request, after `prefix` (`payload.` for a
    message inside a field), or `whole` when the fault is the message's as a whole."""
    found = _Walk().fault(descriptor, data, prefix, 0)
    if found is None or found[0] == prefix:
        what = f": it {found[1]}" if found is not None else ""
        return InvalidMessage([FieldViolation(whole, f"is not a valid {descriptor.name}{what}")], reason=reason)
    path, what = found
    return InvalidMessage([FieldViolation(path.rstrip("."), what)], reason=reason)


class _Walk:
    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields = 0

    def fault(self, descriptor: Descriptor, data: bytes, prefix: str, depth: int) -> tuple[str, str] | None:
        """(path, what is wrong) of the first fault in `data`, or None if the walk finds none."""
        if depth > _MAX_DEPTH:
            return None
        seen: dict[int, int] = {}
        pos, end = 0, len(data)
        while pos < end:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                return None
            tag, pos = _varint(data, pos)
            if tag is None or tag >> 3 == 0:
                return prefix, "is truncated or malformed"
            number, wire = tag >> 3, tag & 7
            field = descriptor.fields_by_number.get(number)
            index = seen.get(number, 0)
            seen[number] = index + 1
            path = prefix if field is None else (
                f"{prefix}{field.name}[{index}]" if field.is_repeated else f"{prefix}{field.name}")
            if wire == _VARINT:
                value, pos = _varint(data, pos)
                if value is None:
                    return path, "is truncated or malformed"
            elif wire in (_FIXED64, _FIXED32):
                pos += 8 if wire == _FIXED64 else 4
                if pos > end:
                    return path, "is truncated"
            elif wire == _LENGTH:
                length, pos = _varint(data, pos)
                if length is None or pos + length > end:
                    return path, "is truncated"
                chunk, pos = data[pos:pos + length], pos + length
                if field is None:
                    continue
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path, "is not valid UTF-8"
                elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                    inner = self.fault(field.message_type, chunk, f"{path}.", depth + 1)
                    if inner is not None:
                        return inner
            elif wire in (_START_GROUP, _END_GROUP):
                return None  # groups: valid in unknown fields, not worth following
            else:
                return path, "has an invalid wire type"
        return None


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    """(value, position after it), or (None, pos) if the bytes end first or it runs past 10 bytes."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None, pos
