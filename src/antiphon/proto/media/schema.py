"""Pipecat's ``frames.proto`` (``package pipecat``), built at import time without protoc.

Theory of operation
-------------------
Pipecat's protobuf serializer sends each WebSocket message as one ``pipecat.Frame``. To
speak it antiphon needs the same field numbers and types, not Pipecat's generated
``frames_pb2`` (which pins protobuf below 7 and drags in the pipecat package). So this
module writes the schema down as a table, turns it into a ``FileDescriptorProto`` with
``descriptor_pb2`` and asks ``message_factory`` for the classes. That works unchanged on
protobuf 5, 6 and 7, and needs no build step.

The descriptor lives in a *private* ``DescriptorPool``: the default pool is process-wide
and would clash with a ``pipecat.Frame`` registered by an installed pipecat-ai (or by a
test's independent copy of the schema). ``frames.proto`` beside this file is the same
schema as text for readers; a test checks the two agree.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "FIELD_TABLE",
    "FILE_NAME",
    "FRAME_ONEOF",
    "PACKAGE",
    "AudioRawFramePb",
    "FramePb",
    "InterruptionFramePb",
    "MessageFramePb",
    "TextFramePb",
    "TranscriptionFramePb",
    "file_descriptor_proto",
]

PACKAGE: Final = "pipecat"
FILE_NAME: Final = "antiphon/proto/media/frames.proto"  # must differ from pipecat's own file name
FRAME_ONEOF: Final = "frame"

_F = descriptor_pb2.FieldDescriptorProto
_TYPES: Final[dict[str, int]] = {
    "uint64": _F.TYPE_UINT64,
    "uint32": _F.TYPE_UINT32,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

FIELD_TABLE: Final[dict[str, tuple[tuple[str, str, int, bool], ...]]] = {
    # message: ((type, name, number, proto3 optional), ...), in Pipecat's order.
    "TextFrame": (("uint64", "id", 1, False), ("string", "name", 2, False), ("string", "text", 3, False)),
    "AudioRawFrame": (
        ("uint64", "id", 1, False),
        ("string", "name", 2, False),
        ("bytes", "audio", 3, False),
        ("uint32", "sample_rate", 4, False),
        ("uint32", "num_channels", 5, False),
        ("uint64", "pts", 6, True),
    ),
    "TranscriptionFrame": (
        ("uint64", "id", 1, False),
        ("string", "name", 2, False),
        ("string", "text", 3, False),
        ("string", "user_id", 4, False),
        ("string", "timestamp", 5, False),
    ),
    "MessageFrame": (("string", "data", 1, False),),
    "InterruptionFrame": (("uint64", "id", 1, False), ("string", "name", 2, False)),
    # Frame: every field sits in `oneof frame`; the type is a message of this package.
    "Frame": (
        ("TextFrame", "text", 1, False),
        ("AudioRawFrame", "audio", 2, False),
        ("TranscriptionFrame", "transcription", 3, False),
        ("MessageFrame", "message", 4, False),
        ("InterruptionFrame", "interruption", 5, False),
    ),
}
"""The schema as data: the single source the descriptor is built from."""


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The ``FileDescriptorProto`` for the schema in :data:`FIELD_TABLE` (a fresh copy)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    for message_name, fields in FIELD_TABLE.items():
        msg = fdp.message_type.add(name=message_name)
        is_frame = message_name == "Frame"
        if is_frame:
            msg.oneof_decl.add(name=FRAME_ONEOF)
        for type_name, name, number, optional in fields:
            f = msg.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
            if is_frame:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{type_name}"
                f.oneof_index = 0
            else:
                f.type = _TYPES[type_name]  # type: ignore[assignment]
            if optional:
                # proto3 `optional` is a synthetic oneof named `_<field>` holding just it.
                f.proto3_optional = True
                f.oneof_index = len(msg.oneof_decl)
                msg.oneof_decl.add(name=f"_{name}")
    return fdp


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor_proto())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in FIELD_TABLE
    }


_CLASSES: Final = _build()

FramePb: Final[Any] = _CLASSES["Frame"]
TextFramePb: Final[Any] = _CLASSES["TextFrame"]
AudioRawFramePb: Final[Any] = _CLASSES["AudioRawFrame"]
TranscriptionFramePb: Final[Any] = _CLASSES["TranscriptionFrame"]
MessageFramePb: Final[Any] = _CLASSES["MessageFrame"]
InterruptionFramePb: Final[Any] = _CLASSES["InterruptionFrame"]
