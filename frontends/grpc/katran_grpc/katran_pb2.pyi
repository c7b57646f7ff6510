from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADD: _ClassVar[Action]
    DEL: _ClassVar[Action]
ADD: Action
DEL: Action

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Bool(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class Vip(_message.Message):
    __slots__ = ("address", "port", "protocol")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    protocol: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[int] = ...) -> None: ...

class VipMeta(_message.Message):
    __slots__ = ("vip", "flags", "setFlag")
    VIP_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SETFLAG_FIELD_NUMBER: _ClassVar[int]
    vip: Vip
    flags: int
    setFlag: bool
    def __init__(self, vip: _Optional[_Union[Vip, _Mapping]] = ..., flags: _Optional[int] = ..., setFlag: _Optional[bool] = ...) -> None: ...

class RealMeta(_message.Message):
    __slots__ = ("address", "flags", "setFlag")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SETFLAG_FIELD_NUMBER: _ClassVar[int]
    address: str
    flags: int
    setFlag: bool
    def __init__(self, address: _Optional[str] = ..., flags: _Optional[int] = ..., setFlag: _Optional[bool] = ...) -> None: ...

class Real(_message.Message):
    __slots__ = ("address", "weight", "flags")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    address: str
    weight: int
    flags: int
    def __init__(self, address: _Optional[str] = ..., weight: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class QuicReal(_message.Message):
    __slots__ = ("address", "id")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    address: str
    id: int
    def __init__(self, address: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class Mac(_message.Message):
    __slots__ = ("mac",)
    MAC_FIELD_NUMBER: _ClassVar[int]
    mac: str
    def __init__(self, mac: _Optional[str] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("v1", "v2")
    V1_FIELD_NUMBER: _ClassVar[int]
    V2_FIELD_NUMBER: _ClassVar[int]
    v1: int
    v2: int
    def __init__(self, v1: _Optional[int] = ..., v2: _Optional[int] = ...) -> None: ...

class Healthcheck(_message.Message):
    __slots__ = ("somark", "address")
    SOMARK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    somark: int
    address: str
    def __init__(self, somark: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class hcMap(_message.Message):
    __slots__ = ("healthchecks",)
    class HealthchecksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    HEALTHCHECKS_FIELD_NUMBER: _ClassVar[int]
    healthchecks: _containers.ScalarMap[int, str]
    def __init__(self, healthchecks: _Optional[_Mapping[int, str]] = ...) -> None: ...

class Reals(_message.Message):
    __slots__ = ("reals",)
    REALS_FIELD_NUMBER: _ClassVar[int]
    reals: _containers.RepeatedCompositeFieldContainer[Real]
    def __init__(self, reals: _Optional[_Iterable[_Union[Real, _Mapping]]] = ...) -> None: ...

class Vips(_message.Message):
    __slots__ = ("vips",)
    VIPS_FIELD_NUMBER: _ClassVar[int]
    vips: _containers.RepeatedCompositeFieldContainer[Vip]
    def __init__(self, vips: _Optional[_Iterable[_Union[Vip, _Mapping]]] = ...) -> None: ...

class QuicReals(_message.Message):
    __slots__ = ("qreals",)
    QREALS_FIELD_NUMBER: _ClassVar[int]
    qreals: _containers.RepeatedCompositeFieldContainer[QuicReal]
    def __init__(self, qreals: _Optional[_Iterable[_Union[QuicReal, _Mapping]]] = ...) -> None: ...

class modifiedRealsForVip(_message.Message):
    __slots__ = ("action", "real", "vip")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    action: Action
    real: Reals
    vip: Vip
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., real: _Optional[_Union[Reals, _Mapping]] = ..., vip: _Optional[_Union[Vip, _Mapping]] = ...) -> None: ...

class modifiedQuicReals(_message.Message):
    __slots__ = ("action", "reals")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REALS_FIELD_NUMBER: _ClassVar[int]
    action: Action
    reals: QuicReals
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., reals: _Optional[_Union[QuicReals, _Mapping]] = ...) -> None: ...

class realForVip(_message.Message):
    __slots__ = ("real", "vip")
    REAL_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    real: Real
    vip: Vip
    def __init__(self, real: _Optional[_Union[Real, _Mapping]] = ..., vip: _Optional[_Union[Vip, _Mapping]] = ...) -> None: ...

class Flags(_message.Message):
    __slots__ = ("flags",)
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    flags: int
    def __init__(self, flags: _Optional[int] = ...) -> None: ...

class Somark(_message.Message):
    __slots__ = ("somark",)
    SOMARK_FIELD_NUMBER: _ClassVar[int]
    somark: int
    def __init__(self, somark: _Optional[int] = ...) -> None: ...
