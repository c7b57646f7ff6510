"""Bad-input battery: every method of both RPC services with invalid values.

gRPC ``lb.katran.KatranService`` + ``lb.katran.ext.KatranExtService`` and
thrift ``KatranService``, all over loopback against one real KatranLb
(testing mode: BPF maps loaded, nothing attached) holding a known state
(VIPs, reals, flags, hash functions, QUIC mappings, healthcheck dsts, source
routes, inline decap dsts, down reals, MAC).

Every case is one call.  Its outcome is one of

* ``error``   - refused with a clear error: the text names the field, is
  ASCII and short (the value is truncated), and the state dump is unchanged;
* ``unclear`` - refused, but the text does not name the field, is not ASCII,
  is too long, or is an internal error;
* ``crash``   - the connection dropped or the server does not answer after;
* ``changed`` - accepted, and the state dump changed;
* ``accepted`` - accepted without a state change.

``changed`` and ``accepted`` are fine only for the cases listed in
``DOCUMENTED`` (each is described in docs/internals.md, "Behaviour we chose
where Katran differs").  Log lines written while the battery runs must stay
short too (a 1 MB address must not become a 1 MB log line).

``python -m pytest tests/test_bad_input.py -s`` prints the counts.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
from typing import Any, Callable, Iterable, NamedTuple, Optional

import pytest
from conftest import privileged_fixture

grpc = pytest.importorskip("grpc", reason="grpcio not installed")
pytest.importorskip("thrift", reason="Apache Thrift's Python library is not installed")

from google.protobuf import message_factory  # noqa: E402
from thrift.protocol.THeaderProtocol import THeaderProtocol  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID  # noqa: E402

from katran import KatranConfig, KatranLb  # noqa: E402
from katran.models import ModifyAction, QuicReal, Real, RealFlag, VipFlag, VipKey  # noqa: E402
from katran_grpc import katran_ext_pb2 as ext_pb  # noqa: E402
from katran_grpc import katran_pb2 as pb  # noqa: E402
from katran_grpc.server import KatranGrpcServer  # noqa: E402
from katran_thrift.gen import KatranService as TKatranService  # noqa: E402
from katran_thrift.gen import ttypes as tt  # noqa: E402
from katran_thrift.handler import KatranThriftHandler  # noqa: E402
from katran_thrift.server import KatranThriftServer  # noqa: E402

MAC = "00:00:de:ad:be:af"
MAX_ERROR_LEN = 1000  # an error text longer than this is "unclear" (the value was not truncated)
MAX_LOG_LEN = 2000
HUGE = "1" * 1_000_000  # 1 MB (the gRPC default message limit is 4 MB)
HUGE_UNICODE = "\u00e9" * 200_000  # 400 kB of UTF-8
BAD_UTF8 = b"\xff\xfe\xc3"
BATCH = 10_000

V4 = ("10.0.0.1", 80, 6)
V6 = ("fc00::1", 443, 17)
NEW_V4 = ("10.0.0.5", 80, 6)
UNKNOWN_V4 = ("10.0.0.9", 80, 6)
REAL1, REAL2, REAL6 = "10.1.1.1", "10.1.1.2", "fc00:1::1"
SRC_PREFIX = "192.168.0.0/16"
DECAP_DST = "10.9.9.9"


# ------------------------------------------------------------------ state
def setup_state(lb: KatranLb) -> None:
    lb.change_mac(MAC)
    v4, v6 = VipKey(*V4), VipKey(*V6)
    lb.add_vip(v4, int(VipFlag.NO_SPORT))
    lb.add_vip(v6, int(VipFlag.UDP_FLOW_MIGRATION))
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(REAL1, 10), Real(REAL2, 1, int(RealFlag.LOCAL_REAL))], v4)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(REAL6, 5)], v6)
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal(REAL1, 100)])
    lb.add_healthchecker_dst(1000, REAL1)
    lb.add_src_routing_rule([SRC_PREFIX], REAL2)
    lb.add_inline_decap_dst(DECAP_DST)
    lb.add_down_real(v4, REAL2)


def clear_state(lb: KatranLb) -> None:
    lb.clear_all_src_routing_rules()
    for dst in lb.get_inline_decap_dst():
        lb.del_inline_decap_dst(dst)
    for vip in lb.get_all_vips():
        lb.del_vip(vip)
    quic = lb.get_quic_reals_mapping()
    if quic:
        lb.modify_quic_reals_mapping(ModifyAction.DEL, quic)
    for somark in list(lb.get_healthcheckers_dst()):
        lb.del_healthchecker_dst(somark)


def dump(lb: KatranLb) -> dict:
    """Everything a client can read back, in one comparable value."""
    vips = {}
    addresses = set()
    for vip in lb.get_all_vips():
        reals = sorted((repr(r.address), r.weight, r.flags) for r in lb.get_reals_for_vip(vip))
        addresses.update(r.address for r in lb.get_reals_for_vip(vip))
        vips[repr(vip)] = dict(flags=lb.get_vip_flags(vip), hash=int(lb.get_hash_function_for_vip(vip)),
                               reals=reals, down=lb.get_down_reals(vip))
    quic = [(repr(q.address), q.id) for q in lb.get_quic_reals_mapping()]
    addresses.update(q.address for q in lb.get_quic_reals_mapping())
    src = lb.get_src_routing_rule()
    addresses.update(ipaddress.ip_address(a) for a in src.values())
    reals = {repr(a): (lb.get_index_for_real(a), lb.get_real_flags(a)) for a in addresses}
    return dict(mac=lb.get_mac(), vips=vips, quic=quic, reals=reals, hc=lb.get_healthcheckers_dst(), src=src,
                decap=lb.get_inline_decap_dst())


def normalized(state: dict) -> dict:
    """A dump without the real indices (a rebuilt state numbers its reals in another order)."""
    reals = state["reals"]
    indices = [index for index, _ in reals.values()]
    assert len(set(indices)) == len(indices), reals
    return {**state, "reals": {a: flags for a, (_, flags) in reals.items()}}


# ------------------------------------------------------------------ bad values
BAD_ADDRESSES = [
    ("empty", ""), ("non_ascii", "\u00e9t\u00e9"), ("octet_256", "10.0.0.256"), ("garbage", "garbage"),
    ("leading_space", " 10.0.0.5"), ("trailing_space", "10.0.0.5 "), ("scoped_v6", "fe80::1%a"),
    ("prefix", "10.0.0.0/24"), ("nul", "10.0.0.5\x00"), ("huge", HUGE), ("huge_unicode", HUGE_UNICODE),
    ("bad_utf8", b"10.0.0.5" + BAD_UTF8),  # bytes: sent as is, not UTF-8
]
# the same, aimed at an existing object (a space-padded / scoped form of it must not find it)
BAD_EXISTING = [
    ("leading_space", " 10.0.0.1"), ("trailing_space", "10.0.0.1 "), ("scoped_v6", "fc00::1%eth0"),
]
BAD_PORTS = [("minus_1", -1), ("65536", 65536), ("70000", 70000), ("int32_max", 2**31 - 1),
             ("int32_min", -2**31), ("2^32", 2**32)]
BAD_PROTOS = [("0", 0), ("1", 1), ("255", 255), ("256", 256), ("minus_1", -1)]
BAD_VIP_FLAGS = [("minus_1", -1), ("unknown_bit", 1 << 10), ("2^32", 2**32), ("int64_max", 2**63 - 1)]
BAD_REAL_FLAGS = [("minus_1", -1), ("256", 256), ("2^20", 1 << 20)]
BAD_WEIGHTS = [("minus_1", -1), ("int32_min", -2**31)]
BAD_MACS = [("empty", ""), ("non_ascii", "\u00e9:11:22:33:44:55"), ("garbage", "garbage"),
            ("five", "00:11:22:33:44"), ("seven", "00:11:22:33:44:55:66"), ("bad_hex", "zz:11:22:33:44:55"),
            ("three_digits", "001:11:22:33:44:55"), ("huge", HUGE), ("leading_space", " 00:11:22:33:44:55"),
            ("bad_utf8", BAD_UTF8)]
BAD_HASHES = [("minus_1", -1), ("2", 2), ("int32_max", 2**31 - 1)]
BAD_ACTIONS = [("2", 2), ("minus_1", -1)]
BAD_QUIC_IDS = [("0", 0), ("minus_1", -1), ("2^24", 1 << 24), ("int32_max", 2**31 - 1)]
BAD_SOMARKS = [("0", 0), ("minus_1", -1), ("2^32", 2**32)]
BAD_PREFIXES = [("empty", ""), ("non_ascii", "\u00e9t\u00e9/8"), ("len_33", "10.0.0.0/33"), ("garbage", "garbage"),
                ("scoped", "fe80::%a/64"), ("huge", HUGE), ("space", " 10.0.0.0/8"), ("bad_utf8", BAD_UTF8)]

# Accepted on purpose; each one is described in docs/internals.md ("Behaviour we chose where Katran
# differs or is silent").  A value that does not fit its protobuf field (an int32 port sent as 2^32,
# a uint32 somark sent as -1) is cut to the field's width by the protobuf decoder before any server
# code runs - in Katran's C++ server as in ours: the call then acts on the cut value.
_WIRE = "protobuf decoder truncates the varint to the field width"
DOCUMENTED: dict[str, str] = {
    "grpc addVip vip.port=2^32": _WIRE + " (port 0: a VIP for every port)",
    "grpc addHealthcheckerDst somark=minus_1": _WIRE + " (somark 4294967295)",
    "grpc getRealStats index=2^32": _WIRE + " (index 0)",
    "grpc getRealForFlow src_port=2^32": _WIRE + " (port 0)",
    "grpc getRealForFlow dst_port=2^32": _WIRE + " (port 0)",
    "grpc lookupFlow src_port=2^32": _WIRE + " (port 0)",
    "grpc searchLru src_port=2^32": _WIRE + " (port 0)",
    "grpc deleteLru src_port=2^32": _WIRE + " (port 0)",
}


# Methods without a bad-input case: no argument, and a valid call changes the state.
NOT_CALLED = {"clearAllSrcRoutingRules": "takes no argument; a call deletes every rule (test_grpc_frontend)"}


def grpc_method_names() -> set[str]:
    return {m.name for file, service in ((pb, "KatranService"), (ext_pb, "KatranExtService"))
            for m in file.DESCRIPTOR.services_by_name[service].methods}


def thrift_method_names() -> set[str]:
    return {name for name in dir(TKatranService.Iface) if not name.startswith("_")}


def covered(cases: list, prefix: str) -> set[str]:
    return {c.name.split(" ")[1] for c in cases if c.name.startswith(prefix)}


class Case(NamedTuple):
    name: str
    call: Callable[[], Any]
    fields: tuple  # an error text must name one of these


class Outcome(NamedTuple):
    case: str
    kind: str
    text: str


def vip_variants(base: tuple, existing: bool) -> Iterable[tuple[str, dict, tuple]]:
    """(label, vip dict, fields) for every bad address / port / protocol of the VIP ``base``."""
    addr, port, proto = base
    for label, value in BAD_ADDRESSES + (BAD_EXISTING if existing else []):
        yield f"vip.address={label}", dict(address=value, port=port, protocol=proto), ("vip",)
    for label, value in BAD_PORTS:
        # 2^32 reaches the server as port 0 (see DOCUMENTED): the error names the VIP it got
        fields = ("vip",) if value == 2**32 else ("vip.port",)
        yield f"vip.port={label}", dict(address=addr, port=value, protocol=proto), fields
    for label, value in BAD_PROTOS:
        yield f"vip.proto={label}", dict(address=addr, port=port, protocol=value), ("vip.proto", "proto")


# ------------------------------------------------------------------ gRPC plumbing
_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _U64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(desc, values: dict) -> bytes:
    """Protobuf wire encoding of ``values`` without range checks (an int32 field may get 2^32)."""
    out = bytearray()
    for name, value in values.items():
        field = desc.fields_by_name[name]
        items = value if field.is_repeated else [value]
        for item in items:
            if field.type == field.TYPE_MESSAGE:
                payload = encode(field.message_type, item)
            elif field.type == field.TYPE_STRING:
                payload = item if isinstance(item, bytes) else item.encode("utf-8")  # bytes: maybe not UTF-8
            else:
                out += _varint(field.number << 3) + _varint(int(item))
                continue
            out += _varint(field.number << 3 | 2) + _varint(len(payload)) + payload
    return bytes(out)


class GrpcTarget:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def method(self, service: str, name: str):
        file = pb if service == "KatranService" else ext_pb
        full = "lb.katran." + ("" if service == "KatranService" else "ext.") + service
        desc = file.DESCRIPTOR.services_by_name[service].methods_by_name[name]
        return full, desc

    def call(self, service: str, name: str, request: Optional[dict] = None):
        """(status code, text, response); a request that does not fit the field types goes raw."""
        full, desc = self.method(service, name)
        in_cls = message_factory.GetMessageClass(desc.input_type)
        out_cls = message_factory.GetMessageClass(desc.output_type)
        raw = encode(desc.input_type, request or {})
        mc = self.channel.unary_unary(f"/{full}/{name}", request_serializer=lambda b: b,
                                      response_deserializer=out_cls.FromString)
        if BAD_UTF8 not in raw:
            assert in_cls.FromString(raw) is not None
        try:
            response, call = mc.with_call(raw, timeout=60)
        except grpc.RpcError as exc:
            meta = {m.key: m.value for m in exc.trailing_metadata() or ()}
            return exc.code(), exc.details() or "", None, meta
        meta = {m.key: m.value for m in call.trailing_metadata() or ()}
        return grpc.StatusCode.OK, "", response, meta


def grpc_cases(target: GrpcTarget) -> list[Case]:
    cases: list[Case] = []

    def add(service: str, name: str, label: str, request: Optional[dict], fields: tuple) -> None:
        cases.append(Case(f"grpc {name} {label}", lambda: target.call(service, name, request), fields))

    K, X = "KatranService", "KatranExtService"
    vip = lambda b: dict(address=b[0], port=b[1], protocol=b[2])  # noqa: E731
    # ---------------- KatranService
    for label, value in BAD_MACS:
        add(K, "changeMac", f"mac={label}", dict(mac=value), ("mac",))
    add(K, "getMac", "ok", {}, ())
    for label, v, fields in vip_variants(NEW_V4, False):
        add(K, "addVip", label, dict(vip=v, flags=0), fields)
    for label, value in BAD_VIP_FLAGS:
        add(K, "addVip", f"flags={label}", dict(vip=vip(NEW_V4), flags=value), ("flags",))
    add(K, "addVip", "exists", dict(vip=vip(V4), flags=0), ("vip",))
    for label, v, fields in vip_variants(V4, True):
        add(K, "delVip", label, v, fields)
    add(K, "delVip", "unknown", vip(UNKNOWN_V4), ("vip",))
    add(K, "getAllVips", "ok", {}, ())
    for label, v, fields in vip_variants(V4, True):
        add(K, "modifyVip", label, dict(vip=v, flags=1, setFlag=True), fields)
    for label, value in BAD_VIP_FLAGS:
        add(K, "modifyVip", f"flags={label}", dict(vip=vip(V4), flags=value, setFlag=True), ("flags",))
    add(K, "modifyVip", "unknown", dict(vip=vip(UNKNOWN_V4), flags=1, setFlag=True), ("vip",))
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add(K, "modifyReal", f"address={label}", dict(address=value, flags=2, setFlag=True), ("address",))
    for label, value in BAD_REAL_FLAGS:
        add(K, "modifyReal", f"flags={label}", dict(address=REAL1, flags=value, setFlag=True), ("flags",))
    add(K, "modifyReal", "unknown", dict(address="10.7.7.7", flags=2, setFlag=True), ("real",))
    for label, v, fields in vip_variants(V4, True):
        add(K, "getVipFlags", label, v, fields)
    add(K, "getVipFlags", "unknown", vip(UNKNOWN_V4), ("vip",))
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add(K, "getRealFlags", f"address={label}", dict(address=value), ("address",))
    add(K, "getRealFlags", "unknown", dict(address="10.7.7.7"), ("real",))
    for rpc in ("addRealForVip", "delRealForVip"):
        for label, v, fields in vip_variants(V4, True):
            add(K, rpc, label, dict(real=dict(address=REAL1, weight=1), vip=v), fields)
        for label, value in BAD_ADDRESSES + BAD_EXISTING:
            add(K, rpc, f"real.address={label}", dict(real=dict(address=value, weight=1), vip=vip(V4)),
                ("real.address",))
        add(K, rpc, "unknown_vip", dict(real=dict(address=REAL1, weight=1), vip=vip(UNKNOWN_V4)), ("vip",))
    for label, value in BAD_WEIGHTS:
        add(K, "addRealForVip", f"real.weight={label}", dict(real=dict(address=REAL1, weight=value), vip=vip(V4)),
            ("real.weight", "weight"))
    for label, value in BAD_REAL_FLAGS:
        add(K, "addRealForVip", f"real.flags={label}",
            dict(real=dict(address="10.1.1.5", weight=1, flags=value), vip=vip(V4)), ("real.flags", "flags"))
    add(K, "addRealForVip", "v4_real_for_v6_vip", dict(real=dict(address=REAL1, weight=1), vip=vip(V6)),
        ("real.address",))
    add(K, "delRealForVip", "not_of_vip", dict(real=dict(address=REAL6, weight=1), vip=vip(V4)), ("real",))
    for label, value in BAD_ACTIONS:
        add(K, "modifyRealsForVip", f"action={label}",
            dict(action=value, real=dict(reals=[dict(address="10.1.1.5", weight=1)]), vip=vip(V4)), ("action",))
    for label, v, fields in vip_variants(V4, True):
        add(K, "modifyRealsForVip", label,
            dict(action=0, real=dict(reals=[dict(address="10.1.1.5", weight=1)]), vip=v), fields)
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        reals = [dict(address="10.1.1.5", weight=1), dict(address=value, weight=1)]
        add(K, "modifyRealsForVip", f"real.address={label}", dict(action=0, real=dict(reals=reals), vip=vip(V4)),
            ("real.address",))
    for label, value in BAD_WEIGHTS:
        reals = [dict(address="10.1.1.5", weight=1), dict(address="10.1.1.6", weight=value)]
        add(K, "modifyRealsForVip", f"real.weight={label}", dict(action=0, real=dict(reals=reals), vip=vip(V4)),
            ("real.weight", "weight"))
    big = [dict(address=f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}", weight=1) for i in range(BATCH)]
    add(K, "modifyRealsForVip", "batch_10000_over_max_reals", dict(action=0, real=dict(reals=big), vip=vip(V4)),
        ("max_reals",))
    add(K, "modifyRealsForVip", "batch_10000_last_bad",
        dict(action=0, real=dict(reals=big[:100] * 100 + [dict(address="\u00e9t\u00e9", weight=1)]), vip=vip(V4)),
        ("real.address",))
    add(K, "modifyRealsForVip", "batch_10000_del_unknown", dict(action=1, real=dict(reals=big), vip=vip(V4)),
        ("real",))
    for label, v, fields in vip_variants(V4, True):
        add(K, "getRealsForVip", label, v, fields)
    add(K, "getRealsForVip", "unknown", vip(UNKNOWN_V4), ("vip",))
    for label, value in BAD_ACTIONS:
        add(K, "modifyQuicRealsMapping", f"action={label}",
            dict(action=value, reals=dict(qreals=[dict(address=REAL1, id=200)])), ("action",))
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add(K, "modifyQuicRealsMapping", f"address={label}",
            dict(action=0, reals=dict(qreals=[dict(address=value, id=200)])), ("quic_real.address", "address"))
    for label, value in BAD_QUIC_IDS:
        add(K, "modifyQuicRealsMapping", f"id={label}",
            dict(action=0, reals=dict(qreals=[dict(address=REAL1, id=value)])), ("quic_real.id", "id"))
    qbig = [dict(address=REAL1, id=1000 + i) for i in range(BATCH - 1)] + [dict(address=REAL1, id=0)]
    add(K, "modifyQuicRealsMapping", "batch_10000_last_bad", dict(action=0, reals=dict(qreals=qbig)),
        ("quic_real.id",))
    add(K, "modifyQuicRealsMapping", "batch_10000_del_unknown", dict(action=1, reals=dict(qreals=qbig[:-1])),
        ("quic real",))
    add(K, "getQuicRealsMapping", "ok", {}, ())
    for label, v, fields in vip_variants(V4, True):
        add(K, "getStatsForVip", label, v, fields)
    add(K, "getStatsForVip", "unknown", vip(UNKNOWN_V4), ("vip",))
    for rpc in ("getLruStats", "getLruMissStats", "getLruFallbackStats", "getIcmpTooBigStats",
                "getHealthcheckersDst"):
        add(K, rpc, "ok", {}, ())
    for label, value in BAD_ADDRESSES:
        add(K, "addHealthcheckerDst", f"address={label}", dict(somark=1001, address=value), ("address",))
    for label, value in BAD_SOMARKS:
        add(K, "addHealthcheckerDst", f"somark={label}", dict(somark=value, address=REAL1), ("somark",))
    for label, value in BAD_SOMARKS + [("unknown", 7)]:
        add(K, "delHealthcheckerDst", f"somark={label}", dict(somark=value), ("somark",))
    # ---------------- KatranExtService
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add(X, "getIndexForReal", f"address={label}", dict(address=value), ("address",))
    add(X, "getIndexForReal", "unknown", dict(address="10.7.7.7"), ("real",))
    for label, value in [("max_reals", 4096), ("u32_max", 2**32 - 1), ("2^32", 2**32)]:
        add(X, "getRealStats", f"index={label}", dict(index=value), ("index",))
    for rpc in ("getXdpTotalStats", "getXdpTxStats", "getXdpDropStats", "getXdpPassStats", "getChDropStats",
                "getEncapFailStats", "getKatranLbStats", "getPerCorePacketsStats", "getHealthcheckProgramStats",
                "getSrcRoutingRule", "getSrcRoutingRuleSize", "getSrcRoutingStats", "getInlineDecapDst",
                "getInlineDecapStats", "getDecapStats", "getXpopDecapSuccessfulStats", "getLbQuicPacketsStats",
                "getTcpServerIdRoutingStats", "getUdpStableRoutingStats", "getUdpFlowMigrationStats",
                "getGlobalLruStats", "getQuicIcmpStats", "getMalformedStats", "getFlowCacheStats",
                "getHealthCheckStates"):
        add(X, rpc, "ok", {}, ())
    for label, v, fields in vip_variants(V4, True):
        add(X, "changeHashFunctionForVip", label, dict(vip=v, hash_function=1), fields)
    for label, value in BAD_HASHES:
        add(X, "changeHashFunctionForVip", f"hash_function={label}", dict(vip=vip(V4), hash_function=value),
            ("hash_function",))
    add(X, "changeHashFunctionForVip", "unknown", dict(vip=vip(UNKNOWN_V4), hash_function=1), ("vip",))
    for rpc in ("getHashFunctionForVip", "getDecapStatsForVip", "getSidRoutingStatsForVip", "getDownReals",
                "clearDownReals"):
        for label, v, fields in vip_variants(V4, True):
            add(X, rpc, label, v, fields)
        add(X, rpc, "unknown", vip(UNKNOWN_V4), ("vip",))
    flow = dict(src="192.168.1.1", dst=V4[0], src_port=1234, dst_port=V4[1], protocol=6)
    for key in ("src", "dst"):
        for label, value in BAD_ADDRESSES:
            add(X, "getRealForFlow", f"{key}={label}", {**flow, key: value}, (f"flow.{key}",))
    for key in ("src_port", "dst_port"):
        for label, value in BAD_PORTS:
            add(X, "getRealForFlow", f"{key}={label}", {**flow, key: value}, (f"flow.{key}",))
    for label, value in BAD_PROTOS:
        add(X, "getRealForFlow", f"protocol={label}", {**flow, "protocol": value}, ("flow.proto",))
    # the flow table (lookupFlow: the same flow without side effects; a flow to no VIP is NOT_FOUND)
    for key in ("src", "dst"):
        for label, value in BAD_ADDRESSES:
            add(X, "lookupFlow", f"{key}={label}", dict(flow={**flow, key: value}), (f"flow.{key}",))
    for key in ("src_port", "dst_port"):
        for label, value in BAD_PORTS:
            # dst_port 2^32 arrives as port 0: a VIP that does not exist
            fields = (f"flow.{key}", "vip") if value == 2**32 else (f"flow.{key}",)
            add(X, "lookupFlow", f"{key}={label}", dict(flow={**flow, key: value}), fields)
    for label, value in BAD_PROTOS:
        add(X, "lookupFlow", f"protocol={label}", dict(flow={**flow, "protocol": value}), ("flow.proto",))
    add(X, "lookupFlow", "unknown_vip", dict(flow={**flow, "dst": UNKNOWN_V4[0]}), ("vip",))
    for rpc in ("listLru", "purgeLru"):
        for label, v, fields in vip_variants(V4, True):
            add(X, rpc, label, dict(vip=v), fields)
        add(X, rpc, "unknown", dict(vip=vip(UNKNOWN_V4)), ("vip",))
        # an empty real / src is proto3's unset field: no filter
        for label, value in [b for b in BAD_ADDRESSES if b[0] != "empty"] + [("unknown", "10.7.7.7")]:
            add(X, rpc, f"real={label}", dict(vip=vip(V4), real=value), ("real",))
        for label, value in [b for b in BAD_PREFIXES if b[0] != "empty"]:
            add(X, rpc, f"src={label}", dict(vip=vip(V4), src=value), ("src",))
    add(X, "purgeLru", "no_filter", {}, ("filter",))
    for rpc in ("searchLru", "deleteLru"):
        for label, v, fields in vip_variants(V4, True):
            add(X, rpc, label, dict(vip=v, src="192.168.1.1", src_port=1), fields)
        add(X, rpc, "unknown", dict(vip=vip(UNKNOWN_V4), src="192.168.1.1", src_port=1), ("vip",))
        for label, value in BAD_ADDRESSES:
            add(X, rpc, f"src={label}", dict(vip=vip(V4), src=value, src_port=1), ("src",))
        add(X, rpc, "src=other_family", dict(vip=vip(V4), src="fc00::1", src_port=1), ("src",))
        for label, value in BAD_PORTS:
            add(X, rpc, f"src_port={label}", dict(vip=vip(V4), src="192.168.1.1", src_port=value), ("src_port",))
    for label, value in BAD_PREFIXES:
        add(X, "addSrcRoutingRule", f"src={label}", dict(srcs=["10.0.0.0/8", value], dst=REAL1), ("src",))
        add(X, "delSrcRoutingRule", f"src={label}", dict(srcs=[SRC_PREFIX, value]), ("src",))
    for label, value in BAD_ADDRESSES:
        add(X, "addSrcRoutingRule", f"dst={label}", dict(srcs=["10.0.0.0/8"], dst=value), ("dst",))
    # capture (server streaming): every bad filter is refused before anything streams
    for label, v, fields in vip_variants(V4, True):
        add(X, "capture", label, dict(vip=v), fields)
    add(X, "capture", "vip unknown", dict(vip=vip(UNKNOWN_V4)), ("vip",))
    # ("" is the proto's "no filter on it": a valid capture, not a case)
    for label, value in BAD_ADDRESSES:
        if value != "":
            add(X, "capture", f"real={label}", dict(real=value), ("real",))
    add(X, "capture", "real unknown", dict(real="10.7.7.7"), ("real",))
    for label, value in BAD_PREFIXES:
        if value != "":
            add(X, "capture", f"src={label}", dict(src=value), ("src",))
    add(X, "capture", "snaplen=65536", dict(snaplen=65536), ("snaplen",))
    sbig = [f"10.{i // 256}.{i % 256}.0/24" for i in range(BATCH)]
    add(X, "addSrcRoutingRule", "batch_10000_over_max", dict(srcs=sbig, dst=REAL1), ("max_lpm_src_size",))
    add(X, "addSrcRoutingRule", "batch_10000_last_bad", dict(srcs=sbig[:20] * 500 + ["\u00e9"], dst=REAL1), ("src",))
    add(X, "delSrcRoutingRule", "batch_10000_unknown", dict(srcs=[SRC_PREFIX] + sbig[1:]), ("src",))
    for label, value in BAD_ADDRESSES:
        add(X, "addInlineDecapDst", f"address={label}", dict(address=value), ("dst", "address"))
    for label, value in BAD_ADDRESSES + [("space_existing", " 10.9.9.9")]:
        add(X, "delInlineDecapDst", f"address={label}", dict(address=value), ("dst", "address"))
    for rpc in ("addDownReal", "removeDownReal"):
        for label, v, fields in vip_variants(V4, True):
            add(X, rpc, label, dict(vip=v, address=REAL1), fields)
        for label, value in BAD_ADDRESSES + BAD_EXISTING:
            add(X, rpc, f"address={label}", dict(vip=vip(V4), address=value), ("address",))
    # the declarative file (docs/config.md): every bad file is refused naming its field, nothing changes
    good = "version: 1\nvips:\n  - {address: 10.100.9.9, port: 80, proto: tcp, reals: [10.200.9.2]}\n"
    add(X, "dumpConfig", "ok", {}, ())
    for label, text, fields in (
            ("weight_minus_1", good.replace("reals: [10.200.9.2]", "reals: [{address: 10.200.9.2, weight: -1}]"),
             ("weight",)),
            ("address_bad", good.replace("10.100.9.9", "10.100.9.999"), ("address",)),
            ("port_70000", good.replace("port: 80", "port: 70000"), ("port",)),
            ("unknown_key", good + "colour: blue\n", ("colour",)),
            ("not_yaml", "vips: [\n", ("yaml",)),
            ("huge", HUGE, ("document",)),
            ("non_ascii", good.replace("10.100.9.9", "\u00e9t\u00e9"), ("address",)),
            ("version_7", "version: 7\n", ("version",))):
        add(X, "applyConfig", label, dict(text=text), fields)
    # bgp (docs/fleet.md): this server has no bgp section, so both are refused naming it
    add(X, "drain", "no_bgp", dict(timeout_ms=1), ("bgp",))
    add(X, "undrain", "no_bgp", {}, ("bgp",))
    return cases


def grpc_outcome(case: Case, result) -> tuple[str, str]:
    code, text, response, meta = result
    if code == grpc.StatusCode.OK:
        if isinstance(response, pb.Bool) and not response.success:
            return "refused", meta.get("katran-error", "")
        return "ok", ""
    if code in (grpc.StatusCode.UNAVAILABLE,):
        return "crash", f"{code.name}: {text}"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return "internal", f"{code.name}: {text}"
    return "refused", text


# ------------------------------------------------------------------ thrift plumbing
class ThriftTarget:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client = None
        self.trans = None
        self.connect()

    def connect(self) -> None:
        sock = TSocket.TSocket("127.0.0.1", self.port)  # (bytes values are sent as is: see _write_string)
        sock.setTimeout(60_000)
        proto = THeaderProtocol(sock, [THeaderClientType.HEADERS], THeaderSubprotocolID.COMPACT)
        self.trans = proto.trans
        self.trans.open()
        self.client = TKatranService.Client(proto)

    def close(self) -> None:
        self.trans.close()

    def call(self, name: str, *args):
        try:
            return "ok", getattr(self.client, name)(*args)
        except TApplicationException as exc:
            return "refused", exc.message or ""
        except (TTransport.TTransportException, EOFError, OSError) as exc:
            self.close()
            self.connect()
            return "crash", f"{type(exc).__name__}: {exc}"


def thrift_cases(t: ThriftTarget) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, label: str, fields: tuple, *args) -> None:
        cases.append(Case(f"thrift {name} {label}", lambda: t.call(name, *args), fields))

    def fits(v: dict) -> bool:
        return all(-2**31 <= x < 2**31 for x in v.values() if isinstance(x, int))

    tvip = lambda b: tt.Vip(address=b[0], port=b[1], protocol=b[2])  # noqa: E731
    vv = lambda base, existing: [(lab, tt.Vip(**v), f) for lab, v, f in vip_variants(base, existing) if fits(v)]  # noqa

    for label, value in BAD_MACS:
        add("changeMac", f"mac={label}", ("mac",), tt.Mac(mac=value))
    add("getMac", "ok", ())
    for label, v, fields in vv(NEW_V4, False):
        add("addVip", label, fields, tt.VipMeta(vip=v, flags=0))
    for label, value in BAD_VIP_FLAGS:
        add("addVip", f"flags={label}", ("flags",), tt.VipMeta(vip=tvip(NEW_V4), flags=value))
    add("addVip", "exists", ("vip",), tt.VipMeta(vip=tvip(V4), flags=0))
    add("addVip", "missing_vip", ("vip",), tt.VipMeta(flags=0))
    for label, v, fields in vv(V4, True):
        add("delVip", label, fields, v)
    add("delVip", "unknown", ("vip",), tvip(UNKNOWN_V4))
    add("getAllVips", "ok", ())
    for label, v, fields in vv(V4, True):
        add("modifyVip", label, fields, tt.VipMeta(vip=v, flags=1, setFlag=True))
    for label, value in BAD_VIP_FLAGS:
        add("modifyVip", f"flags={label}", ("flags",), tt.VipMeta(vip=tvip(V4), flags=value, setFlag=True))
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add("modifyReal", f"address={label}", ("address",), tt.RealMeta(address=value, flags=2, setFlag=True))
    for label, value in BAD_REAL_FLAGS:
        add("modifyReal", f"flags={label}", ("flags",), tt.RealMeta(address=REAL1, flags=value, setFlag=True))
    for label, v, fields in vv(V4, True):
        add("getVipFlags", label, fields, v)
    add("getVipFlags", "unknown", ("vip",), tvip(UNKNOWN_V4))
    for name in ("addRealForVip", "delRealForVip"):
        for label, v, fields in vv(V4, True):
            add(name, label, fields, tt.Real(address=REAL1, weight=1, flags=0), v)
        for label, value in BAD_ADDRESSES + BAD_EXISTING:
            add(name, f"real.address={label}", ("real.address",), tt.Real(address=value, weight=1, flags=0), tvip(V4))
        add(name, "missing_real", ("real",), None, tvip(V4))
    for label, value in BAD_WEIGHTS:
        add("addRealForVip", f"real.weight={label}", ("weight",), tt.Real(address=REAL1, weight=value, flags=0),
            tvip(V4))
    for label, value in BAD_REAL_FLAGS:
        add("addRealForVip", f"real.flags={label}", ("flags",), tt.Real(address="10.1.1.5", weight=1, flags=value),
            tvip(V4))
    for label, value in BAD_ACTIONS:
        add("modifyRealsForVip", f"action={label}", ("action",), value, [tt.Real(address="10.1.1.5", weight=1)],
            tvip(V4))
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add("modifyRealsForVip", f"real.address={label}", ("real.address",), 0,
            [tt.Real(address="10.1.1.5", weight=1), tt.Real(address=value, weight=1)], tvip(V4))
    big = [tt.Real(address=f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}", weight=1) for i in range(BATCH)]
    add("modifyRealsForVip", "batch_10000_over_max_reals", ("max_reals",), 0, big, tvip(V4))
    add("modifyRealsForVip", "batch_10000_last_bad", ("real.address",), 0,
        big[:100] * 100 + [tt.Real(address="\u00e9t\u00e9", weight=1)], tvip(V4))
    for label, v, fields in vv(V4, True):
        add("getRealsForVip", label, fields, v)
    for label, value in BAD_ACTIONS:
        add("modifyQuicRealsMapping", f"action={label}", ("action",), value, [tt.QuicReal(address=REAL1, id=200)])
    for label, value in BAD_ADDRESSES + BAD_EXISTING:
        add("modifyQuicRealsMapping", f"address={label}", ("address",), 0, [tt.QuicReal(address=value, id=200)])
    for label, value in BAD_QUIC_IDS:
        add("modifyQuicRealsMapping", f"id={label}", ("id",), 0, [tt.QuicReal(address=REAL1, id=value)])
    qbig = [tt.QuicReal(address=REAL1, id=1000 + i) for i in range(BATCH - 1)] + [tt.QuicReal(address=REAL1, id=0)]
    add("modifyQuicRealsMapping", "batch_10000_last_bad", ("quic_real.id",), 0, qbig)
    add("getQuicRealsMapping", "ok", ())
    for label, v, fields in vv(V4, True):
        add("getStatsForVip", label, fields, v)
    add("getStatsForVip", "unknown", ("vip",), tvip(UNKNOWN_V4))
    for name in ("getLruStats", "getLruMissStats", "getLruFallbackStats", "getIcmpTooBigStats",
                 "getHealthcheckersDst"):
        add(name, "ok", ())
    for label, value in BAD_ADDRESSES:
        add("addHealthcheckerDst", f"address={label}", ("address",), tt.Healthcheck(somark=1001, address=value))
    for label, value in BAD_SOMARKS[:2]:
        add("addHealthcheckerDst", f"somark={label}", ("somark",), tt.Healthcheck(somark=value, address=REAL1))
    for label, value in BAD_SOMARKS[:2] + [("unknown", 7)]:
        add("delHealthcheckerDst", f"somark={label}", ("somark",), value)
    return cases


# ------------------------------------------------------------------ the battery
def is_clear(text: str, fields: tuple) -> bool:
    return (bool(text) and text.isascii() and len(text) <= MAX_ERROR_LEN
            and any(f.lower() in text.lower() for f in fields))


class _LogLengths(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.longest = 0
        self.long_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            n = len(self.format(record))
        except Exception:  # noqa: BLE001
            n = 0
        self.longest = max(self.longest, n)
        self.long_lines += n > MAX_LOG_LEN


@pytest.fixture(scope="module")
@privileged_fixture
def lb():
    cfg = KatranConfig(testing=True, default_mac=MAC, lru_size=1000, max_vips=64, enable_hc=True,
                       lpm_src_lookup=True, inline_decap_ipip=True, max_decap_dst=4, max_lpm_src_size=64,
                       katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    with KatranLb(cfg) as lb:
        setup_state(lb)
        lb.baseline = dump(lb)
        yield lb


def run_battery(lb: KatranLb, cases: list[Case], alive: Callable[[], bool], outcome) -> list[Outcome]:
    handler = _LogLengths()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    results: list[Outcome] = []
    try:
        for case in cases:
            before = dump(lb)
            status, text = outcome(case.call())
            after = dump(lb)
            if not case.fields:  # a valid call (a method without arguments): must just work
                kind = "ok" if status == "ok" and after == before else "unclear"
            elif not alive():
                kind = "crash"
            elif status == "crash":
                kind = "crash"
            elif status == "ok":
                kind = "changed" if after != before else "accepted"
            elif status == "internal" or not is_clear(text, case.fields):
                kind = "unclear"
            else:
                kind = "error" if after == before else "changed"
            results.append(Outcome(case.name, kind, text[:200]))
            if after != before:
                clear_state(lb)
                setup_state(lb)
                assert normalized(dump(lb)) == normalized(lb.baseline)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    results.append(Outcome("log lines", "long_log" if handler.long_lines else "ok",
                           f"{handler.long_lines} lines over {MAX_LOG_LEN} chars, longest {handler.longest}"))
    return results


def report(title: str, results: list[Outcome]) -> list[Outcome]:
    counts = collections.Counter(r.kind for r in results if r.case != "log lines")
    print(f"\n{title}: {sum(counts.values())} calls: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  {results[-1].text}")
    bad = [r for r in results
           if r.kind in ("crash", "unclear", "long_log") or (r.kind in ("changed", "accepted")
                                                             and r.case not in DOCUMENTED)]
    for r in bad:
        print(f"  {r.kind:9} {r.case}: {r.text[:160]!r}")
    return bad


def test_grpc_battery(lb):
    server = KatranGrpcServer(lb, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 8 << 20),
                                                            ("grpc.max_send_message_length", 8 << 20)]) as ch:
            target = GrpcTarget(ch)

            def alive() -> bool:
                code, _, response, _ = target.call("KatranService", "getMac")
                return code == grpc.StatusCode.OK and response.mac == lb.get_mac()

            cases = grpc_cases(target)
            assert covered(cases, "grpc ") | set(NOT_CALLED) == grpc_method_names()
            bad = report("gRPC battery", run_battery(lb, cases, alive, lambda r: grpc_outcome(None, r)))
    finally:
        server.stop(0)
    assert normalized(dump(lb)) == normalized(lb.baseline)
    assert not bad, "\n".join(f"{r.kind} {r.case}: {r.text[:160]!r}" for r in bad)


def _write_string(self, value) -> None:
    """TProtocolBase.writeString that sends bytes unchanged (to send text that is not UTF-8)."""
    self.writeBinary(value if isinstance(value, bytes) else value.encode("utf-8"))


def test_thrift_battery(lb, monkeypatch):
    from thrift.protocol.TProtocol import TProtocolBase

    monkeypatch.setattr(TProtocolBase, "writeString", _write_string)
    server = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0)
    thread = server.start()
    target = ThriftTarget(server.port)
    try:
        def alive() -> bool:
            status, mac = target.call("getMac")
            return status == "ok" and mac.mac == lb.get_mac()

        cases = thrift_cases(target)
        assert covered(cases, "thrift ") == thrift_method_names()
        bad = report("thrift battery", run_battery(lb, cases, alive, lambda r: r if r[0] != "ok" else ("ok", "")))
    finally:
        target.close()
        server.shutdown()
        thread.join(10)
    assert normalized(dump(lb)) == normalized(lb.baseline)
    assert not bad, "\n".join(f"{r.kind} {r.case}: {r.text[:160]!r}" for r in bad)

