"""A minimal ONNX writer: the protobuf fields a feed-forward graph of standard operators needs,
so that a network can be handed to OpenCV's DNN module without torch or the onnx package.

Field numbers are those of onnx/onnx.proto (ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, ValueInfoProto).
"""

from __future__ import annotations

import struct

import numpy as np

OPSET = 13
IR_VERSION = 8
_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are written as their two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto holding ``array`` (float32 or int64) as raw little-endian data."""
    array = np.ascontiguousarray(array)
    kinds = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, kinds[array.dtype]) + _bytes(8, name) + _bytes(9, array.tobytes())


def _attribute(name: str, value: int | float | str | list[int]) -> bytes:
    if isinstance(value, str):
        return _bytes(1, name) + _bytes(4, value) + _int(20, _ATTR_STRING)
    if isinstance(value, float):
        return (
            _bytes(1, name) + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
        )
    if isinstance(value, int):
        return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)
    return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)


def node(op: str, inputs: list[str], outputs: list[str], name: str, **attributes) -> bytes:
    """A NodeProto: operator ``op`` from ``inputs`` to ``outputs`` ("" = an omitted input)."""
    return (
        b"".join(_bytes(1, i) for i in inputs)
        + b"".join(_bytes(2, o) for o in outputs)
        + _bytes(3, name)
        + _bytes(4, op)
        + b"".join(_bytes(5, _attribute(k, v)) for k, v in attributes.items())
    )


def value_info(name: str, shape: list[int | str]) -> bytes:
    """A float32 graph input or output; a str dimension is a symbolic (free) size."""
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in shape)
    tensor_type = _int(1, _FLOAT) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(
    nodes: list[bytes], initializers: list[bytes], inputs: list[bytes], outputs: list[bytes]
) -> bytes:
    """A serialised ModelProto of one graph, in the default operator domain at ``OPSET``."""
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "graph")
        + b"".join(_bytes(5, t) for t in initializers)
        + b"".join(_bytes(11, v) for v in inputs)
        + b"".join(_bytes(12, v) for v in outputs)
    )
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(8, opset) + _bytes(7, graph)
