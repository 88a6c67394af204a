"""Caffe's message classes, made at run time from ``caffe.desc`` (the compiled ``caffe.proto`` beside it).

A FileDescriptorSet rather than protoc-generated ``_pb2`` code: generated code is tied to the protobuf release
that made it, and this package runs on protobuf 3.20 (the worker image, kept there by pycaffe) up to 7.x.  The
messages live in a private descriptor pool, apart from pycaffe's own ``caffe`` package in the default pool.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "ssnet.caffe"


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(resources.files(__package__).joinpath("caffe.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


@cache
def message_class(name: str) -> Any:
    """The class of message ``name`` (``NetParameter``, ``BlobProto``, ...)."""
    descriptor = _pool().FindMessageTypeByName(f"{PACKAGE}.{name}")
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:  # protobuf >= 4.21
        return get_class(descriptor)
    return message_factory.MessageFactory(_pool()).GetPrototype(descriptor)  # protobuf 3.20


def net_parameter() -> Any:
    """A new, empty ``NetParameter``."""
    return message_class("NetParameter")()
