"""Pipecat's frames.proto written down independently of antiphon, with the `protobuf` package only.

The tests speak the wire through this module, so a mistake in antiphon's own schema
(src/antiphon/proto/media/schema.py) cannot hide itself. Its descriptor lives in a pool of
its own: the default pool is process-wide.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FD = descriptor_pb2.FieldDescriptorProto
_U64, _U32, _STR, _BYTES, _MSG = _FD.TYPE_UINT64, _FD.TYPE_UINT32, _FD.TYPE_STRING, _FD.TYPE_BYTES, _FD.TYPE_MESSAGE


def _build() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(name="tests/pipecat_frames.proto", package="pipecat", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype in fields:
            msg.field.add(name=fname, number=number, type=ftype, label=_FD.LABEL_OPTIONAL)
        return msg

    message("TextFrame", ("id", 1, _U64), ("name", 2, _STR), ("text", 3, _STR))
    audio = message(
        "AudioRawFrame",
        ("id", 1, _U64), ("name", 2, _STR), ("audio", 3, _BYTES), ("sample_rate", 4, _U32), ("num_channels", 5, _U32),
    )
    # `optional uint64 pts = 6` is a proto3 optional: a synthetic oneof of its own.
    audio.oneof_decl.add(name="_pts")
    audio.field.add(name="pts", number=6, type=_U64, label=_FD.LABEL_OPTIONAL, oneof_index=0, proto3_optional=True)
    message("TranscriptionFrame", ("id", 1, _U64), ("name", 2, _STR), ("text", 3, _STR), ("user_id", 4, _STR), ("timestamp", 5, _STR))
    message("MessageFrame", ("data", 1, _STR))
    message("InterruptionFrame", ("id", 1, _U64), ("name", 2, _STR))
    frame = fdp.message_type.add(name="Frame")
    frame.oneof_decl.add(name="frame")
    for name, number, type_name in (
        ("text", 1, "TextFrame"), ("audio", 2, "AudioRawFrame"), ("transcription", 3, "TranscriptionFrame"),
        ("message", 4, "MessageFrame"), ("interruption", 5, "InterruptionFrame"),
    ):
        frame.field.add(name=name, number=number, type=_MSG, type_name=f".pipecat.{type_name}",
                        label=_FD.LABEL_OPTIONAL, oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pipecat.Frame"))


Frame = _build()


def text(value: str) -> bytes:
    f = Frame()
    f.text.text = value
    return bytes(f.SerializeToString())


def audio(pcm: bytes, sample_rate: int, num_channels: int) -> bytes:
    f = Frame()
    f.audio.audio, f.audio.sample_rate, f.audio.num_channels = pcm, sample_rate, num_channels
    return bytes(f.SerializeToString())


def transcription(value: str, user_id: str, timestamp: str) -> bytes:
    f = Frame()
    f.transcription.text, f.transcription.user_id, f.transcription.timestamp = value, user_id, timestamp
    return bytes(f.SerializeToString())


def message(obj: Any) -> bytes:
    f = Frame()
    f.message.data = json.dumps(obj)
    return bytes(f.SerializeToString())


def interruption() -> bytes:
    f = Frame()
    f.interruption.SetInParent()
    return bytes(f.SerializeToString())


def decode(data: bytes) -> tuple[str, Any]:
    """``(kind, sub-message)`` of one binary message."""
    f = Frame.FromString(data)
    kind = f.WhichOneof("frame")
    assert kind is not None, f"no frame in {data!r}"
    return kind, getattr(f, kind)
