"""The few pieces of protobuf carmask needs to read an ONNX file's metadata and weights, and to
add its checksum, without the `onnx` package (which the plain install does not have)."""

from __future__ import annotations


def scan(data: memoryview):
    """(field number, wire type, value, start, end) of each field of a protobuf message, its
    bytes being data[start:end]: the value is an int (varint), else a view of its bytes."""
    position = 0
    while position < len(data):
        start = position
        key, position = varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = varint(data, position)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = data[position:position + size], position + size
        elif wire == 2:
            length, position = varint(data, position)
            value, position = data[position:position + length], position + length
        else:
            raise ValueError(f"wire type {wire}")
        if position > len(data):
            raise ValueError("field runs past the end")
        yield number, wire, value, start, position


def varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def metadata_entry(data: memoryview, key: str) -> tuple[bytes, int, int] | None:
    """(value, start, end) of the metadata_props entry `key` of an ONNX file (field 14 at the
    top level, read without loading the graph), its bytes being data[start:end]; None when it
    has none. IndexError or ValueError when the protobuf does not parse."""
    for number, wire, value, start, end in scan(data):
        if number == 14 and wire == 2:
            entry = {field: bytes(item) for field, kind, item, _, _ in scan(value) if kind == 2}
            if entry.get(1) == key.encode():
                return entry.get(2, b""), start, end
    return None


def length_delimited(number: int, value: bytes) -> bytes:
    return varint_bytes(number << 3 | 2) + varint_bytes(len(value)) + value


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
