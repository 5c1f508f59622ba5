"""Protobuf message classes built at import time from field lists written out here.

Remote write's messages are small and fixed by their specs; describing them here instead of shipping
generated ``_pb2`` modules keeps us off any one protobuf release's generated-code format, and parsing
still runs in protobuf's C backend (upb). Enums are declared as ``int32`` (the same varint on the
wire), so an enum value this build does not know is read as its number instead of being lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

T = descriptor_pb2.FieldDescriptorProto


@dataclass(frozen=True)
class Field:
    """One field of a message.

    Args:
        name: field name.
        number: field number on the wire.
        type: a ``FieldDescriptorProto.TYPE_*`` constant.
        repeated: a repeated field (scalars are packed when written, either form is read).
        message: for ``TYPE_MESSAGE``, the message's name within the same package.
        oneof: name of the oneof the field belongs to ("" for none); presence is then tracked.
    """

    name: str
    number: int
    type: int
    repeated: bool = False
    message: str = ""
    oneof: str = ""


def build(file_name: str, package: str, messages: dict[str, list[Field]]) -> dict[str, Any]:
    """Message classes by name, for messages that may refer to each other by name."""
    fdp = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    for name, fields in messages.items():
        msg = fdp.message_type.add(name=name)
        oneofs: list[str] = []
        for f in fields:
            fd = msg.field.add(
                name=f.name,
                number=f.number,
                type=f.type,
                label=T.LABEL_REPEATED if f.repeated else T.LABEL_OPTIONAL,
            )
            if f.message:
                fd.type_name = f".{package}.{f.message}"
            if f.oneof:
                if f.oneof not in oneofs:
                    oneofs.append(f.oneof)
                    msg.oneof_decl.add(name=f.oneof)
                fd.oneof_index = oneofs.index(f.oneof)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages}


def histogram_messages() -> dict[str, list[Field]]:
    """``Histogram`` and ``BucketSpan``, identical in remote write 1.0 (``prometheus``) and 2.0
    (``io.prometheus.write.v2``); ``start_timestamp`` (17) is 2.0's, unused in 1.0."""
    return {
        "BucketSpan": [Field("offset", 1, T.TYPE_SINT32), Field("length", 2, T.TYPE_UINT32)],
        "Histogram": [
            Field("count_int", 1, T.TYPE_UINT64, oneof="count"),
            Field("count_float", 2, T.TYPE_DOUBLE, oneof="count"),
            Field("sum", 3, T.TYPE_DOUBLE),
            Field("schema", 4, T.TYPE_SINT32),
            Field("zero_threshold", 5, T.TYPE_DOUBLE),
            Field("zero_count_int", 6, T.TYPE_UINT64, oneof="zero_count"),
            Field("zero_count_float", 7, T.TYPE_DOUBLE, oneof="zero_count"),
            Field("negative_spans", 8, T.TYPE_MESSAGE, repeated=True, message="BucketSpan"),
            Field("negative_deltas", 9, T.TYPE_SINT64, repeated=True),
            Field("negative_counts", 10, T.TYPE_DOUBLE, repeated=True),
            Field("positive_spans", 11, T.TYPE_MESSAGE, repeated=True, message="BucketSpan"),
            Field("positive_deltas", 12, T.TYPE_SINT64, repeated=True),
            Field("positive_counts", 13, T.TYPE_DOUBLE, repeated=True),
            Field("reset_hint", 14, T.TYPE_INT32),
            Field("timestamp", 15, T.TYPE_INT64),
            Field("custom_values", 16, T.TYPE_DOUBLE, repeated=True),
            Field("start_timestamp", 17, T.TYPE_INT64),
        ],
    }
