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

class SrcPrefixes(_message.Message):
    __slots__ = ("srcs",)
    SRCS_FIELD_NUMBER: _ClassVar[int]
    srcs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, srcs: _Optional[_Iterable[str]] = ...) -> None: ...

class SrcRoutingRule(_message.Message):
    __slots__ = ("srcs", "dst")
    SRCS_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    srcs: _containers.RepeatedScalarFieldContainer[str]
    dst: str
    def __init__(self, srcs: _Optional[_Iterable[str]] = ..., dst: _Optional[str] = ...) -> None: ...

class SrcRoutingRules(_message.Message):
    __slots__ = ("rules",)
    class RulesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.ScalarMap[str, str]
    def __init__(self, rules: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class DecapDst(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class Addresses(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class VipReal(_message.Message):
    __slots__ = ("vip", "address")
    VIP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    address: str
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., address: _Optional[str] = ...) -> None: ...

class QuicPacketsStats(_message.Message):
    __slots__ = ("ch_routed", "cid_initial", "cid_invalid_server_id", "cid_invalid_server_id_sample", "cid_routed", "cid_unknown_real_dropped", "cid_v0", "cid_v1", "cid_v2", "cid_v3", "dst_match_in_lru", "dst_mismatch_in_lru", "dst_not_found_in_lru")
    CH_ROUTED_FIELD_NUMBER: _ClassVar[int]
    CID_INITIAL_FIELD_NUMBER: _ClassVar[int]
    CID_INVALID_SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    CID_INVALID_SERVER_ID_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    CID_ROUTED_FIELD_NUMBER: _ClassVar[int]
    CID_UNKNOWN_REAL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    CID_V0_FIELD_NUMBER: _ClassVar[int]
    CID_V1_FIELD_NUMBER: _ClassVar[int]
    CID_V2_FIELD_NUMBER: _ClassVar[int]
    CID_V3_FIELD_NUMBER: _ClassVar[int]
    DST_MATCH_IN_LRU_FIELD_NUMBER: _ClassVar[int]
    DST_MISMATCH_IN_LRU_FIELD_NUMBER: _ClassVar[int]
    DST_NOT_FOUND_IN_LRU_FIELD_NUMBER: _ClassVar[int]
    ch_routed: int
    cid_initial: int
    cid_invalid_server_id: int
    cid_invalid_server_id_sample: int
    cid_routed: int
    cid_unknown_real_dropped: int
    cid_v0: int
    cid_v1: int
    cid_v2: int
    cid_v3: int
    dst_match_in_lru: int
    dst_mismatch_in_lru: int
    dst_not_found_in_lru: int
    def __init__(self, ch_routed: _Optional[int] = ..., cid_initial: _Optional[int] = ..., cid_invalid_server_id: _Optional[int] = ..., cid_invalid_server_id_sample: _Optional[int] = ..., cid_routed: _Optional[int] = ..., cid_unknown_real_dropped: _Optional[int] = ..., cid_v0: _Optional[int] = ..., cid_v1: _Optional[int] = ..., cid_v2: _Optional[int] = ..., cid_v3: _Optional[int] = ..., dst_match_in_lru: _Optional[int] = ..., dst_mismatch_in_lru: _Optional[int] = ..., dst_not_found_in_lru: _Optional[int] = ...) -> None: ...

class TprPacketsStats(_message.Message):
    __slots__ = ("ch_routed", "dst_mismatch_in_lru", "sid_routed", "tcp_syn")
    CH_ROUTED_FIELD_NUMBER: _ClassVar[int]
    DST_MISMATCH_IN_LRU_FIELD_NUMBER: _ClassVar[int]
    SID_ROUTED_FIELD_NUMBER: _ClassVar[int]
    TCP_SYN_FIELD_NUMBER: _ClassVar[int]
    ch_routed: int
    dst_mismatch_in_lru: int
    sid_routed: int
    tcp_syn: int
    def __init__(self, ch_routed: _Optional[int] = ..., dst_mismatch_in_lru: _Optional[int] = ..., sid_routed: _Optional[int] = ..., tcp_syn: _Optional[int] = ...) -> None: ...

class StableRtPacketsStats(_message.Message):
    __slots__ = ("ch_routed", "cid_routed", "cid_invalid_server_id", "cid_unknown_real_dropped", "invalid_packet_type")
    CH_ROUTED_FIELD_NUMBER: _ClassVar[int]
    CID_ROUTED_FIELD_NUMBER: _ClassVar[int]
    CID_INVALID_SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    CID_UNKNOWN_REAL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    INVALID_PACKET_TYPE_FIELD_NUMBER: _ClassVar[int]
    ch_routed: int
    cid_routed: int
    cid_invalid_server_id: int
    cid_unknown_real_dropped: int
    invalid_packet_type: int
    def __init__(self, ch_routed: _Optional[int] = ..., cid_routed: _Optional[int] = ..., cid_invalid_server_id: _Optional[int] = ..., cid_unknown_real_dropped: _Optional[int] = ..., invalid_packet_type: _Optional[int] = ...) -> None: ...

class HealthCheckState(_message.Message):
    __slots__ = ("vip", "real", "healthy", "reason", "mode", "somark", "checks", "successes", "failures", "transitions", "since", "applied", "last_latency")
    VIP_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOMARK_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_LATENCY_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    real: str
    healthy: bool
    reason: str
    mode: str
    somark: int
    checks: int
    successes: int
    failures: int
    transitions: int
    since: float
    applied: bool
    last_latency: float
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., real: _Optional[str] = ..., healthy: _Optional[bool] = ..., reason: _Optional[str] = ..., mode: _Optional[str] = ..., somark: _Optional[int] = ..., checks: _Optional[int] = ..., successes: _Optional[int] = ..., failures: _Optional[int] = ..., transitions: _Optional[int] = ..., since: _Optional[float] = ..., applied: _Optional[bool] = ..., last_latency: _Optional[float] = ...) -> None: ...

class HealthCheckStates(_message.Message):
    __slots__ = ("enabled", "states")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    states: _containers.RepeatedCompositeFieldContainer[HealthCheckState]
    def __init__(self, enabled: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[HealthCheckState, _Mapping]]] = ...) -> None: ...

class CaptureFilter(_message.Message):
    __slots__ = ("vip", "real", "src", "count", "snaplen")
    VIP_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SNAPLEN_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    real: str
    src: str
    count: int
    snaplen: int
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., real: _Optional[str] = ..., src: _Optional[str] = ..., count: _Optional[int] = ..., snaplen: _Optional[int] = ...) -> None: ...

class CapturedPacket(_message.Message):
    __slots__ = ("direction", "ifindex", "timestamp_ns", "orig_len", "data", "lost")
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        IN: _ClassVar[CapturedPacket.Direction]
        OUT: _ClassVar[CapturedPacket.Direction]
    IN: CapturedPacket.Direction
    OUT: CapturedPacket.Direction
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    ORIG_LEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    direction: CapturedPacket.Direction
    ifindex: int
    timestamp_ns: int
    orig_len: int
    data: bytes
    lost: int
    def __init__(self, direction: _Optional[_Union[CapturedPacket.Direction, str]] = ..., ifindex: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., orig_len: _Optional[int] = ..., data: _Optional[bytes] = ..., lost: _Optional[int] = ...) -> None: ...

class LruFilter(_message.Message):
    __slots__ = ("vip", "real", "src", "limit")
    VIP_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    real: str
    src: str
    limit: int
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., real: _Optional[str] = ..., src: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class LruEntry(_message.Message):
    __slots__ = ("source", "vip", "src", "src_port", "dst", "dst_port", "protocol", "real", "real_index", "atime_ns", "age_seconds")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    REAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    source: str
    vip: _katran_pb2.Vip
    src: str
    src_port: int
    dst: str
    dst_port: int
    protocol: int
    real: str
    real_index: int
    atime_ns: int
    age_seconds: float
    def __init__(self, source: _Optional[str] = ..., vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., src: _Optional[str] = ..., src_port: _Optional[int] = ..., dst: _Optional[str] = ..., dst_port: _Optional[int] = ..., protocol: _Optional[int] = ..., real: _Optional[str] = ..., real_index: _Optional[int] = ..., atime_ns: _Optional[int] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class LruEntries(_message.Message):
    __slots__ = ("entries", "per_source", "total")
    class PerSourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LruEntry]
    per_source: _containers.ScalarMap[str, int]
    total: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LruEntry, _Mapping]]] = ..., per_source: _Optional[_Mapping[str, int]] = ..., total: _Optional[int] = ...) -> None: ...

class LruFlow(_message.Message):
    __slots__ = ("vip", "src", "src_port")
    VIP_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    src: str
    src_port: int
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., src: _Optional[str] = ..., src_port: _Optional[int] = ...) -> None: ...

class LruSources(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sources: _Optional[_Iterable[str]] = ...) -> None: ...

class LruPurged(_message.Message):
    __slots__ = ("per_source", "total")
    class PerSourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    per_source: _containers.ScalarMap[str, int]
    total: int
    def __init__(self, per_source: _Optional[_Mapping[str, int]] = ..., total: _Optional[int] = ...) -> None: ...

class FlowLookup(_message.Message):
    __slots__ = ("flow", "cpu")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    flow: Flow
    cpu: int
    def __init__(self, flow: _Optional[_Union[Flow, _Mapping]] = ..., cpu: _Optional[int] = ...) -> None: ...

class FlowRoute(_message.Message):
    __slots__ = ("vip", "found", "real", "real_index", "source", "lru_source", "ring_slot")
    VIP_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    REAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LRU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    RING_SLOT_FIELD_NUMBER: _ClassVar[int]
    vip: _katran_pb2.Vip
    found: bool
    real: str
    real_index: int
    source: str
    lru_source: str
    ring_slot: int
    def __init__(self, vip: _Optional[_Union[_katran_pb2.Vip, _Mapping]] = ..., found: _Optional[bool] = ..., real: _Optional[str] = ..., real_index: _Optional[int] = ..., source: _Optional[str] = ..., lru_source: _Optional[str] = ..., ring_slot: _Optional[int] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("timeout_ms",)
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    def __init__(self, timeout_ms: _Optional[int] = ...) -> None: ...

class DrainState(_message.Message):
    __slots__ = ("draining", "waited", "announced")
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    waited: float
    announced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, draining: _Optional[bool] = ..., waited: _Optional[float] = ..., announced: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfigText(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("text", "dry_run", "source")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    dry_run: bool
    source: str
    def __init__(self, text: _Optional[str] = ..., dry_run: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class ApplyReply(_message.Message):
    __slots__ = ("changes", "needs_restart", "applied")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEEDS_RESTART_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedScalarFieldContainer[str]
    needs_restart: _containers.RepeatedScalarFieldContainer[str]
    applied: bool
    def __init__(self, changes: _Optional[_Iterable[str]] = ..., needs_restart: _Optional[_Iterable[str]] = ..., applied: _Optional[bool] = ...) -> None: ...
