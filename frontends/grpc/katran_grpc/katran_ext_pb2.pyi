from . import katran_pb2 as _katran_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAGLEV: _ClassVar[HashFunction]
    MAGLEV_V2: _ClassVar[HashFunction]
MAGLEV: HashFunction
MAGLEV_V2: HashFunction

class RealAddress(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RealIndex(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class PerCoreCounters(_message.Message):
    __slots__ = ("packets",)
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    packets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, packets: _Optional[_Iterable[int]] = ...) -> None: ...

class VipHashFunction(_message.Message):
    __slots__ = ("vip", "hash_function")
    VIP_FIELD_NUMBER: _ClassVar[int]
    HASH_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    hash_function: HashFunction
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., hash_function: _Optional[_Union[HashFunction, str]] = ...) -> None: ...

class HashFunctionValue(_message.Message):
    __slots__ = ("hash_function",)
    HASH_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    hash_function: HashFunction
    def __init__(self, hash_function: _Optional[_Union[HashFunction, str]] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("src", "dst", "src_port", "dst_port", "protocol")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    src_port: int
    dst_port: int
    protocol: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., src_port: _Optional[int] = ..., dst_port: _Optional[int] = ..., protocol: _Optional[int] = ...) -> None: ...

class RealForFlow(_message.Message):
    __slots__ = ("found", "address")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    address: str
    def __init__(self, found: _Optional[bool] = ..., address: _Optional[str] = ...) -> None: ...

class HcProgramStats(_message.Message):
    __slots__ = ("packets_processed", "packets_dropped", "packets_skipped", "packets_too_big", "packets_dst_matched", "packets_src_matched")
    PACKETS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_TOO_BIG_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DST_MATCHED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SRC_MATCHED_FIELD_NUMBER: _ClassVar[int]
    packets_processed: int
    packets_dropped: int
    packets_skipped: int
    packets_too_big: int
    packets_dst_matched: int
    packets_src_matched: int
    def __init__(self, packets_processed: _Optional[int] = ..., packets_dropped: _Optional[int] = ..., packets_skipped: _Optional[int] = ..., packets_too_big: _Optional[int] = ..., packets_dst_matched: _Optional[int] = ..., packets_src_matched: _Optional[int] = ...) -> None: ...
