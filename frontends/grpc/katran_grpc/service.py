"""The gRPC servicers: each RPC translates its message into katran.models
values, makes exactly one ``KatranLb`` call and translates the result back.

Error reporting:

* Katran's ``KatranService`` keeps Katran's contract for the RPCs returning
  ``Bool``: a failure is status CANCELLED (as Katran's C++ server answers,
  so Katran's Go client prints the error and exits 1); our reason is the
  status details.
* Every other RPC (of both services) fails with a gRPC status code chosen
  from the katran error class (see ``status_code_for``), the message as
  details.
* Both carry trailing metadata: ``katran-error`` (the message) and
  ``katran-error-code`` (the code name the katran error maps to, e.g.
  ALREADY_EXISTS, also for a CANCELLED Bool RPC).
* Every text sent or logged is ASCII and truncated (``katran.errors.safe_text``):
  gRPC metadata must be ASCII, and a 4 MB address must not come back as a
  4 MB reply nor a 4 MB log line.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from katran import capture, errors
from katran.errors import safe_text
from katran.models import Flow, HashFunction, LbStats, ModifyAction, QuicReal, Real, VipKey, format_address

from . import ERROR_CODE_KEY, ERROR_KEY
from . import katran_ext_pb2 as ext_pb
from . import katran_ext_pb2_grpc as ext_grpc
from . import katran_pb2 as pb
from . import katran_pb2_grpc as pb_grpc

log = logging.getLogger("katran_grpc")

# Most specific first: AlreadyExistsError is a ValueError but no ValidationError.
_STATUS_CODES: tuple = (
    (errors.ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FeatureNotEnabledError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KernelError, grpc.StatusCode.INTERNAL),
    (errors.BuildError, grpc.StatusCode.INTERNAL),
)


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code reporting a katran error (INTERNAL for anything else)."""
    if not isinstance(exc, errors.KatranError):
        return grpc.StatusCode.INTERNAL
    for cls, code in _STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.UNKNOWN


def error_message(exc: BaseException) -> str:
    """The ASCII, truncated text reporting ``exc`` to a client."""
    if isinstance(exc, errors.KatranError):
        return safe_text(exc)
    return safe_text(f"internal error: {type(exc).__name__}: {exc}")


def _report(context: grpc.ServicerContext, rpc: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    code = status_code_for(exc)
    message = error_message(exc)
    if isinstance(exc, errors.KatranError):
        log.info("%s failed: %s: %s", rpc, code.name, message)
    else:
        log.error("%s failed: %s", rpc, message, exc_info=(type(exc), exc, None))
    context.set_trailing_metadata(((ERROR_KEY, message), (ERROR_CODE_KEY, code.name)))
    return code, message


class BadRequest:
    """What the request deserializer hands over for bytes that are no valid message."""

    def __init__(self, message_type, data: bytes, error: Exception) -> None:
        self.message_type = message_type
        self.data = data
        self.error = error

    def validation_error(self) -> errors.ValidationError:
        found = _bad_utf8_field(self.message_type, self.data)
        if found is not None:
            field, raw = found
            return errors.ValidationError(field, raw, "not valid UTF-8 text")
        return errors.ValidationError("request", f"<{len(self.data)} bytes>",
                                      f"not a valid {self.message_type.full_name} message: {self.error}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


# message type -> the name katran.models gives its fields' owner ("vip.address", "real.address", ...)
_FIELD_OWNERS = {"lb.katran.Vip": "vip.", "lb.katran.Real": "real.", "lb.katran.QuicReal": "quic_real.",
                 "lb.katran.ext.Flow": "flow."}


def _bad_utf8_field(desc, data: bytes) -> "tuple[str, bytes] | None":
    """(field name, bytes) of the first string field (in nested messages too) that is not UTF-8;
    the name as katran's errors name it (``vip.address``, ``real.address``, ``mac``)."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                continue
            if wire != 2:
                return None
            size, pos = _varint(data, pos)
            chunk, pos = data[pos:pos + size], pos + size
            field = desc.fields_by_number.get(number)
            if field is None:
                continue
            name = _FIELD_OWNERS.get(desc.full_name, "") + field.name
            if field.type == field.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return name, chunk
            elif field.type == field.TYPE_MESSAGE:
                found = _bad_utf8_field(field.message_type, chunk)
                if found is not None:
                    return found
    except ValueError:
        return None
    return None


def _request_deserializer(desc) -> Callable[[bytes], Any]:
    """FromString, but bytes that do not parse become a BadRequest (answered INVALID_ARGUMENT /
    CANCELLED naming the field) instead of gRPC's bare "INTERNAL: Exception deserializing request!"."""
    cls = message_factory.GetMessageClass(desc)

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return BadRequest(desc, data, exc)

    return parse


def _check_request(request) -> None:
    if isinstance(request, BadRequest):
        raise request.validation_error()


CHANGE_PREFIXES = ("add", "del", "remove", "clear", "change", "modify", "set", "update", "apply")


def is_change(rpc: str) -> bool:
    """Does the RPC change the balancer (an audit-trail entry) rather than read it?"""
    return rpc.startswith(CHANGE_PREFIXES)


def caller(context: grpc.ServicerContext) -> tuple[str, str]:
    """(peer, credential) of an RPC: the peer address and how it was authenticated (never the secret)."""
    peer = context.peer() or "unknown"
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name")
    if names:
        return peer, "client certificate " + ",".join(n.decode("utf-8", "replace") for n in names[:2])
    if any(key == "authorization" for key, _ in context.invocation_metadata() or ()):
        return peer, "bearer token"
    if peer.startswith("unix:"):
        return peer, "unix socket"
    return peer, "none (-insecure)"


def _audit(rpc: str, request, context: grpc.ServicerContext) -> None:
    from google.protobuf import text_format

    from katran.logs import audit

    try:
        change = text_format.MessageToString(request, as_one_line=True) or "(empty)"
        peer, credential = caller(context)
    except Exception as exc:  # noqa: BLE001 - the change is done: never fail the RPC for its log line
        change, peer, credential = f"(not printable: {type(exc).__name__})", None, None
    audit(rpc, change, peer=peer, credential=credential, frontend="grpc")


def _bool_rpc(method: Callable[[Any, Any], None]) -> Callable:
    """Katran's Bool contract: success=True, or status CANCELLED with the reason as details."""

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            _check_request(request)
            method(self, request)
        except Exception as exc:  # noqa: BLE001 - every failure is a clean CANCELLED
            _, message = _report(context, method.__name__, exc)
            context.abort(grpc.StatusCode.CANCELLED, message)
        _audit(method.__name__, request, context)  # every Bool RPC is a change
        return pb.Bool(success=True)

    return handler


def _rpc(method: Callable[[Any, Any], Any]) -> Callable:
    """Value-returning RPC: an error aborts with the matching status code."""

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            _check_request(request)
            reply = method(self, request)
        except Exception as exc:  # noqa: BLE001 - never an "Exception calling application" with raw text
            code, message = _report(context, method.__name__, exc)
            context.abort(code, message)
        if is_change(method.__name__):
            _audit(method.__name__, request, context)
        return reply

    return handler


def _rpc_stream(method: Callable[[Any, Any, Any], Any]) -> Callable:
    """Server-streaming RPC: an error (before or while streaming) aborts with the matching status code."""

    @functools.wraps(method)
    def handler(self, request, context):
        try:
            _check_request(request)
            yield from method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            code, message = _report(context, method.__name__, exc)
            context.abort(code, message)

    return handler


# ---------------------------------------------------------------- translation
def _int32(value: int) -> int:
    """Katran's proto carries some u32 values in int32 fields (two's complement)."""
    return value - (1 << 32) if value >= (1 << 31) else value


def vip_from_msg(msg: pb.Vip) -> VipKey:
    return VipKey(msg.address, msg.port, msg.protocol)


def vip_to_msg(vip: VipKey) -> pb.Vip:
    return pb.Vip(address=format_address(vip.address), port=vip.port, protocol=vip.proto)


def real_from_msg(msg: pb.Real) -> Real:
    return Real(msg.address, msg.weight, msg.flags)


def real_to_msg(real: Real) -> pb.Real:
    return pb.Real(address=format_address(real.address), weight=_int32(real.weight), flags=real.flags)


def action_from_msg(value: int) -> ModifyAction:
    try:
        return ModifyAction(value)
    except ValueError:
        raise errors.ValidationError("action", value, "expected ADD (0) or DEL (1)") from None


def hash_function_from_msg(value: int) -> HashFunction:
    try:
        return HashFunction(value)
    except ValueError:
        raise errors.ValidationError("hash_function", value, "expected MAGLEV (0) or MAGLEV_V2 (1)") from None


def stats_to_msg(stats: LbStats) -> pb.Stats:
    return pb.Stats(v1=stats.v1, v2=stats.v2)


def _lru_filter(msg: ext_pb.LruFilter) -> tuple:
    """(vip or None, real or None, src or None) of a LruFilter."""
    return (vip_from_msg(msg.vip) if msg.HasField("vip") else None, msg.real or None, msg.src or None)


def lru_entry_to_msg(e) -> ext_pb.LruEntry:
    msg = ext_pb.LruEntry(source=e.source, src=str(e.src), src_port=e.src_port, dst=str(e.dst), dst_port=e.dst_port,
                          protocol=e.proto, real=str(e.real or ""), real_index=e.real_index, atime_ns=e.atime)
    if e.vip is not None:
        msg.vip.CopyFrom(vip_to_msg(e.vip))
    if e.age_s is not None:
        msg.age_seconds = e.age_s
    return msg


# ---------------------------------------------------------------- services
class KatranServicer(pb_grpc.KatranServiceServicer):
    """lb.katran.KatranService over a KatranLb (wire-compatible with Katran)."""

    def __init__(self, lb) -> None:
        self._lb = lb

    @_bool_rpc
    def changeMac(self, request: pb.Mac) -> None:
        self._lb.change_mac(request.mac)

    @_rpc
    def getMac(self, request: pb.Empty) -> pb.Mac:
        return pb.Mac(mac=self._lb.get_mac())

    @_bool_rpc
    def addVip(self, request: pb.VipMeta) -> None:
        self._lb.add_vip(vip_from_msg(request.vip), request.flags)

    @_bool_rpc
    def delVip(self, request: pb.Vip) -> None:
        self._lb.del_vip(vip_from_msg(request))

    @_rpc
    def getAllVips(self, request: pb.Empty) -> pb.Vips:
        return pb.Vips(vips=[vip_to_msg(v) for v in self._lb.get_all_vips()])

    @_bool_rpc
    def modifyVip(self, request: pb.VipMeta) -> None:
        self._lb.modify_vip(vip_from_msg(request.vip), request.flags, request.setFlag)

    @_bool_rpc
    def modifyReal(self, request: pb.RealMeta) -> None:
        self._lb.modify_real(request.address, request.flags, request.setFlag)

    @_rpc
    def getVipFlags(self, request: pb.Vip) -> pb.Flags:
        return pb.Flags(flags=self._lb.get_vip_flags(vip_from_msg(request)))

    @_rpc
    def getRealFlags(self, request: pb.Real) -> pb.Flags:
        return pb.Flags(flags=self._lb.get_real_flags(request.address))

    @_bool_rpc
    def addRealForVip(self, request: pb.realForVip) -> None:
        self._lb.add_real_for_vip(real_from_msg(request.real), vip_from_msg(request.vip))

    @_bool_rpc
    def delRealForVip(self, request: pb.realForVip) -> None:
        self._lb.del_real_for_vip(real_from_msg(request.real), vip_from_msg(request.vip))

    @_bool_rpc
    def modifyRealsForVip(self, request: pb.modifiedRealsForVip) -> None:
        self._lb.modify_reals_for_vip(
            action_from_msg(request.action),
            [real_from_msg(r) for r in request.real.reals],
            vip_from_msg(request.vip),
        )

    @_rpc
    def getRealsForVip(self, request: pb.Vip) -> pb.Reals:
        reals = self._lb.get_reals_for_vip(vip_from_msg(request))
        return pb.Reals(reals=[real_to_msg(r) for r in reals])

    @_bool_rpc
    def modifyQuicRealsMapping(self, request: pb.modifiedQuicReals) -> None:
        self._lb.modify_quic_reals_mapping(
            action_from_msg(request.action),
            [QuicReal(q.address, q.id) for q in request.reals.qreals],
        )

    @_rpc
    def getQuicRealsMapping(self, request: pb.Empty) -> pb.QuicReals:
        qreals = self._lb.get_quic_reals_mapping()
        return pb.QuicReals(qreals=[pb.QuicReal(address=format_address(q.address), id=_int32(q.id)) for q in qreals])

    @_rpc
    def getStatsForVip(self, request: pb.Vip) -> pb.Stats:
        return stats_to_msg(self._lb.get_stats_for_vip(vip_from_msg(request)))

    @_rpc
    def getLruStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_lru_stats())

    @_rpc
    def getLruMissStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_lru_miss_stats())

    @_rpc
    def getLruFallbackStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_lru_fallback_stats())

    @_rpc
    def getIcmpTooBigStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_icmp_too_big_stats())

    @_bool_rpc
    def addHealthcheckerDst(self, request: pb.Healthcheck) -> None:
        self._lb.add_healthchecker_dst(request.somark, request.address)

    @_bool_rpc
    def delHealthcheckerDst(self, request: pb.Somark) -> None:
        self._lb.del_healthchecker_dst(request.somark)

    @_rpc
    def getHealthcheckersDst(self, request: pb.Empty) -> pb.hcMap:
        dsts = self._lb.get_healthcheckers_dst()
        return pb.hcMap(healthchecks={_int32(somark): format_address(addr) for somark, addr in dsts.items()})


class KatranExtServicer(ext_grpc.KatranExtServiceServicer):
    """lb.katran.ext.KatranExtService: what Katran's proto lacks.

    ``daemon`` (``katran.daemon.Daemon``, set by the server lifecycle) answers drain / undrain
    and the health check states."""

    def __init__(self, lb) -> None:
        self._lb = lb
        self.daemon = None  # katran.daemon.Daemon of a server run by the lifecycle (drain / undrain)

    def _daemon(self):
        if self.daemon is None:
            raise errors.FeatureNotEnabledError("bgp: this server runs without a bgp section in its -config file")
        return self.daemon

    def _drain_state(self, waited: float = 0.0) -> ext_pb.DrainState:
        draining, announced = self._daemon().bgp_state()
        return ext_pb.DrainState(draining=draining, waited=waited, announced=announced)

    @_rpc
    def drain(self, request: ext_pb.DrainRequest) -> ext_pb.DrainState:
        daemon = self._daemon()
        daemon.bgp_state()  # FAILED_PRECONDITION without bgp
        timeout = request.timeout_ms / 1000.0 if request.timeout_ms else None
        waited = daemon.drain(timeout=timeout)
        return self._drain_state(waited or 0.0)

    @_rpc
    def undrain(self, request: pb.Empty) -> ext_pb.DrainState:
        daemon = self._daemon()
        daemon.bgp_state()
        daemon.undrain()
        return self._drain_state()

    @_rpc
    def getIndexForReal(self, request: ext_pb.RealAddress) -> ext_pb.RealIndex:
        return ext_pb.RealIndex(index=self._lb.get_index_for_real(request.address))

    @_rpc
    def getRealStats(self, request: ext_pb.RealIndex) -> pb.Stats:
        return stats_to_msg(self._lb.get_real_stats(request.index))

    @_rpc
    def getXdpTotalStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_xdp_total_stats())

    @_rpc
    def getXdpTxStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_xdp_tx_stats())

    @_rpc
    def getXdpDropStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_xdp_drop_stats())

    @_rpc
    def getXdpPassStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_xdp_pass_stats())

    @_rpc
    def getChDropStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_ch_drop_stats())

    @_rpc
    def getEncapFailStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_encap_fail_stats())

    @_rpc
    def getMalformedStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_malformed_stats())

    @_rpc
    def getFlowCacheStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_flow_cache_stats())

    @_rpc
    def getKatranLbStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_katran_lb_stats())

    @_rpc
    def getPerCorePacketsStats(self, request: pb.Empty) -> ext_pb.PerCoreCounters:
        return ext_pb.PerCoreCounters(packets=self._lb.get_per_core_packets_stats())

    @_rpc
    def changeHashFunctionForVip(self, request: ext_pb.VipHashFunction) -> pb.Empty:
        self._lb.change_hash_function_for_vip(
            vip_from_msg(request.vip), hash_function_from_msg(request.hash_function)
        )
        return pb.Empty()

    @_rpc
    def getHashFunctionForVip(self, request: pb.Vip) -> ext_pb.HashFunctionValue:
        func = self._lb.get_hash_function_for_vip(vip_from_msg(request))
        return ext_pb.HashFunctionValue(hash_function=int(func))

    @_rpc
    def getRealForFlow(self, request: ext_pb.Flow) -> ext_pb.RealForFlow:
        flow = Flow(request.src, request.dst, request.src_port, request.dst_port, request.protocol)
        address = self._lb.get_real_for_flow(flow)
        return ext_pb.RealForFlow(found=address is not None, address="" if address is None else format_address(address))

    @_rpc
    def lookupFlow(self, request: ext_pb.FlowLookup) -> ext_pb.FlowRoute:
        f = request.flow
        flow = Flow(f.src, f.dst, f.src_port, f.dst_port, f.protocol)
        route = self._lb.lookup_flow(flow, cpu=request.cpu if request.HasField("cpu") else None)
        msg = ext_pb.FlowRoute(vip=vip_to_msg(route.vip), found=route.real is not None,
                               real=str(route.real or ""), real_index=route.real_index, source=route.source,
                               lru_source=route.lru_source or "")
        if route.ring_slot is not None:
            msg.ring_slot = route.ring_slot
        return msg

    # ------------------------------------------------------------ the flow table
    @_rpc
    def listLru(self, request: ext_pb.LruFilter) -> ext_pb.LruEntries:
        vip, real, src = _lru_filter(request)
        listing = self._lb.list_lru(vip, real=real, src=src, limit=request.limit or None)
        return ext_pb.LruEntries(entries=[lru_entry_to_msg(e) for e in listing.entries],
                                 per_source=listing.per_source, total=listing.total)

    @_rpc
    def searchLru(self, request: ext_pb.LruFlow) -> ext_pb.LruEntries:
        entries = self._lb.search_lru(vip_from_msg(request.vip), request.src, request.src_port)
        per_source = {e.source: 1 for e in entries}
        return ext_pb.LruEntries(entries=[lru_entry_to_msg(e) for e in entries], per_source=per_source,
                                 total=len(entries))

    @_rpc
    def deleteLru(self, request: ext_pb.LruFlow) -> ext_pb.LruSources:
        return ext_pb.LruSources(sources=self._lb.delete_lru(vip_from_msg(request.vip), request.src, request.src_port))

    @_rpc
    def purgeLru(self, request: ext_pb.LruFilter) -> ext_pb.LruPurged:
        vip, real, src = _lru_filter(request)
        deleted = self._lb.purge_vip_lru(vip, real=real, src=src)
        return ext_pb.LruPurged(per_source=deleted, total=sum(deleted.values()))

    @_rpc
    def getHealthcheckProgramStats(self, request: pb.Empty) -> ext_pb.HcProgramStats:
        s = self._lb.get_hc_program_stats()
        return ext_pb.HcProgramStats(
            packets_processed=s.processed,
            packets_dropped=s.dropped,
            packets_skipped=s.skipped,
            packets_too_big=s.too_big,
            packets_dst_matched=s.dst_matched,
            packets_src_matched=s.src_matched,
        )

    # ------------------------------------------------------------ source routing
    @_rpc
    def addSrcRoutingRule(self, request: ext_pb.SrcRoutingRule) -> pb.Empty:
        self._lb.add_src_routing_rule(list(request.srcs), request.dst)
        return pb.Empty()

    @_rpc
    def delSrcRoutingRule(self, request: ext_pb.SrcPrefixes) -> pb.Empty:
        self._lb.del_src_routing_rule(list(request.srcs))
        return pb.Empty()

    @_rpc
    def clearAllSrcRoutingRules(self, request: pb.Empty) -> pb.Empty:
        self._lb.clear_all_src_routing_rules()
        return pb.Empty()

    @_rpc
    def getSrcRoutingRule(self, request: pb.Empty) -> ext_pb.SrcRoutingRules:
        return ext_pb.SrcRoutingRules(rules=self._lb.get_src_routing_rule())

    @_rpc
    def getSrcRoutingRuleSize(self, request: pb.Empty) -> ext_pb.Count:
        return ext_pb.Count(count=self._lb.get_src_routing_rule_size())

    @_rpc
    def getSrcRoutingStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_src_routing_stats())

    # ------------------------------------------------------------ inline decap
    @_rpc
    def addInlineDecapDst(self, request: ext_pb.DecapDst) -> pb.Empty:
        self._lb.add_inline_decap_dst(request.address)
        return pb.Empty()

    @_rpc
    def delInlineDecapDst(self, request: ext_pb.DecapDst) -> pb.Empty:
        self._lb.del_inline_decap_dst(request.address)
        return pb.Empty()

    @_rpc
    def getInlineDecapDst(self, request: pb.Empty) -> ext_pb.Addresses:
        return ext_pb.Addresses(addresses=self._lb.get_inline_decap_dst())

    @_rpc
    def getInlineDecapStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_inline_decap_stats())

    @_rpc
    def getDecapStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_decap_stats())

    @_rpc
    def getXpopDecapSuccessfulStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_xpop_decap_successful_stats())

    @_rpc
    def getDecapStatsForVip(self, request: pb.Vip) -> pb.Stats:
        return stats_to_msg(self._lb.get_decap_stats_for_vip(vip_from_msg(request)))

    # ------------------------------------------------------------ down reals
    @_rpc
    def addDownReal(self, request: ext_pb.VipReal) -> pb.Empty:
        self._lb.add_down_real(vip_from_msg(request.vip), request.address)
        return pb.Empty()

    @_rpc
    def removeDownReal(self, request: ext_pb.VipReal) -> pb.Empty:
        self._lb.remove_down_real(vip_from_msg(request.vip), request.address)
        return pb.Empty()

    @_rpc
    def clearDownReals(self, request: pb.Vip) -> pb.Empty:
        self._lb.clear_down_reals(vip_from_msg(request))
        return pb.Empty()

    @_rpc
    def getDownReals(self, request: pb.Vip) -> ext_pb.Addresses:
        return ext_pb.Addresses(addresses=self._lb.get_down_reals(vip_from_msg(request)))

    # ------------------------------------------------------------ feature counters
    @_rpc
    def getLbQuicPacketsStats(self, request: pb.Empty) -> ext_pb.QuicPacketsStats:
        return ext_pb.QuicPacketsStats(**self._lb.get_lb_quic_packets_stats())

    @_rpc
    def getTcpServerIdRoutingStats(self, request: pb.Empty) -> ext_pb.TprPacketsStats:
        return ext_pb.TprPacketsStats(**self._lb.get_tcp_server_id_routing_stats())

    @_rpc
    def getUdpStableRoutingStats(self, request: pb.Empty) -> ext_pb.StableRtPacketsStats:
        return ext_pb.StableRtPacketsStats(**self._lb.get_udp_stable_routing_stats())

    @_rpc
    def getUdpFlowMigrationStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_udp_flow_migration_stats())

    @_rpc
    def getGlobalLruStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_global_lru_stats())

    @_rpc
    def getQuicIcmpStats(self, request: pb.Empty) -> pb.Stats:
        return stats_to_msg(self._lb.get_quic_icmp_stats())

    @_rpc
    def getSidRoutingStatsForVip(self, request: pb.Vip) -> pb.Stats:
        return stats_to_msg(self._lb.get_sid_routing_stats_for_vip(vip_from_msg(request)))

    @_rpc
    def dumpConfig(self, request: pb.Empty) -> ext_pb.ConfigText:
        from katran import declarative

        if self.daemon is not None:
            return ext_pb.ConfigText(text=self.daemon.dump())
        return ext_pb.ConfigText(text=declarative.dumps(declarative.snapshot(self._lb)))

    @_rpc
    def applyConfig(self, request: ext_pb.ApplyRequest) -> ext_pb.ApplyReply:
        from katran import declarative

        desired = declarative.loads(request.text, request.source or "<apply>")
        if self.daemon is not None:
            plan = self.daemon.apply(desired, dry_run=request.dry_run)
        else:
            plan = declarative.apply(self._lb, desired, dry_run=request.dry_run)
        return ext_pb.ApplyReply(changes=[c.text for c in plan.changes], needs_restart=list(plan.needs_restart),
                                 applied=not request.dry_run)

    @_rpc
    def getHealthCheckStates(self, request: pb.Empty) -> ext_pb.HealthCheckStates:
        daemon = self.daemon
        if daemon is None or getattr(daemon, "checker", None) is None:
            return ext_pb.HealthCheckStates(enabled=False)
        states = [health_state_to_msg(st) for st in daemon.health()]
        states.sort(key=lambda m: (m.vip.address, m.vip.port, m.vip.protocol, m.real))
        return ext_pb.HealthCheckStates(enabled=True, states=states)

    @_rpc_stream
    def capture(self, request: ext_pb.CaptureFilter, context: grpc.ServicerContext):
        vip = vip_from_msg(request.vip) if request.HasField("vip") else None
        cap = self._lb.capture(vip=vip, real=request.real or None, src=request.src or None,
                               count=request.count or None, snaplen=request.snaplen or capture.DEFAULT_SNAPLEN)
        context.add_callback(cap.close)  # the client cancelled or went away
        with cap:
            while context.is_active() and not cap.done:
                packets = cap.poll(0.2)
                if not packets:
                    continue
                lost = cap.lost
                for p in packets:
                    yield ext_pb.CapturedPacket(
                        direction=ext_pb.CapturedPacket.OUT if p.direction == "out" else ext_pb.CapturedPacket.IN,
                        ifindex=p.ifindex, timestamp_ns=p.timestamp_ns, orig_len=p.orig_len, data=p.data,
                        lost=lost)


def health_state_to_msg(st) -> ext_pb.HealthCheckState:
    """A ``katran.hc_checker.CheckState`` as its message."""
    return ext_pb.HealthCheckState(
        vip=vip_to_msg(st.vip), real=format_address(st.real), healthy=bool(st.healthy),
        reason=safe_text(st.last_reason), mode=st.mode, somark=st.somark & 0xFFFFFFFF, checks=st.checks,
        successes=st.successes, failures=st.failures, transitions=st.transitions, since=st.since,
        applied=st.applied, last_latency=st.last_latency)


def _add_servicer(server: grpc.Server, servicer, service_desc) -> None:
    """What the generated add_*Servicer_to_server does, with our request deserializers."""
    handlers = {
        m.name: (grpc.unary_stream_rpc_method_handler if m.server_streaming else grpc.unary_unary_rpc_method_handler)(
            getattr(servicer, m.name),
            request_deserializer=_request_deserializer(m.input_type),
            response_serializer=lambda msg: msg.SerializeToString(),
        )
        for m in service_desc.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_desc.full_name, handlers),))
    server.add_registered_method_handlers(service_desc.full_name, handlers)


def add_services(server: grpc.Server, lb) -> "KatranExtServicer":
    """Register both katran services over ``lb`` on ``server``; returns the ext servicer."""
    _add_servicer(server, KatranServicer(lb), pb.DESCRIPTOR.services_by_name["KatranService"])
    ext = KatranExtServicer(lb)
    _add_servicer(server, ext, ext_pb.DESCRIPTOR.services_by_name["KatranExtService"])
    return ext
