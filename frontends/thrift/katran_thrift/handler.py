"""KatranService handler: each thrift method is one call into ``KatranLb``.

Translation only: thrift structs -> katran value classes and back.  Every
error (bad input, unknown VIP, ...) is re-raised as a
``TApplicationException(INTERNAL_ERROR, message)``, which the generated
processor sends to the client as a regular thrift exception reply.  The
message (and the log line) is ASCII and truncated
(``katran.errors.safe_text``, the same helper as the gRPC server's).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, List, Optional, TypeVar

from thrift.Thrift import TApplicationException

from katran import KatranError, KatranLb, LbStats, ModifyAction, QuicReal, Real, ValidationError, VipKey
from katran.errors import safe_text
from katran.models import format_address

from .gen import KatranService
from .gen.ttypes import Action, Healthcheck, Mac, QuicReal as TQuicReal, Real as TReal
from .gen.ttypes import RealMeta, Stats, Vip, VipMeta

log = logging.getLogger("katran_thrift")

F = TypeVar("F", bound=Callable[..., Any])

_I32_SPAN = 1 << 32


def _i32(value: int) -> int:
    """Unsigned 32-bit value -> thrift i32 (two's complement, as Katran's C++)."""
    return value - _I32_SPAN if value >= 1 << 31 else value


def _int(value: Optional[int]) -> int:
    """An unset thrift integer field reads as 0 (C++ clients always send it)."""
    return 0 if value is None else value


def _required(value: Any, field: str) -> Any:
    if value is None:
        raise ValidationError(field, value, "missing")
    return value


def rpc(method: F) -> F:
    """Turn any error of a handler method into a TApplicationException with its message."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
            if is_change(method.__name__):
                _audit(method.__name__, args[1:], kwargs)
            return result
        except KatranError as exc:
            message, cause = safe_text(exc), exc
            log.info("%s failed: %s", method.__name__, message)
        except Exception as exc:  # noqa: BLE001 - the client must get a message, never a bare drop
            message, cause = safe_text(f"internal error: {type(exc).__name__}: {exc}"), exc
            log.error("%s failed: %s", method.__name__, message, exc_info=(type(exc), exc, None))
        error = TApplicationException(TApplicationException.INTERNAL_ERROR, message)
        error.katran_error = cause  # for the RPC metrics (katran_thrift.metrics)
        raise error

    return wrapper  # type: ignore[return-value]


CHANGE_PREFIXES = ("add", "del", "remove", "clear", "change", "modify", "set", "update")


def is_change(name: str) -> bool:
    """Does the method change the balancer (an audit-trail entry) rather than read it?"""
    return name.startswith(CHANGE_PREFIXES)


def _audit(name: str, args: tuple, kwargs: dict) -> None:
    from katran.logs import audit

    from .transport import current_caller

    peer, credential = current_caller()
    change = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]) or "(no arguments)"
    audit(name, change, peer=peer, credential=credential, frontend="thrift")


def vip_key(vip: Optional[Vip]) -> VipKey:
    vip = _required(vip, "vip")
    return VipKey(vip.address, _int(vip.port), _int(vip.protocol))


def vip_struct(vip: VipKey) -> Vip:
    return Vip(address=format_address(vip.address), port=vip.port, protocol=vip.proto)


def real_value(real: Optional[TReal]) -> Real:
    real = _required(real, "real")
    return Real(real.address, _int(real.weight), _int(real.flags))


def real_struct(real: Real) -> TReal:
    return TReal(address=format_address(real.address), weight=_i32(real.weight), flags=real.flags)


def quic_real_value(real: Optional[TQuicReal]) -> QuicReal:
    real = _required(real, "quic_real")
    return QuicReal(real.address, _int(real.id))


def quic_real_struct(real: QuicReal) -> TQuicReal:
    return TQuicReal(address=format_address(real.address), id=_i32(real.id))


def modify_action(action: Optional[int]) -> ModifyAction:
    if action not in Action._VALUES_TO_NAMES:
        raise ValidationError("action", action, "expected ADD (0) or DEL (1)")
    return ModifyAction(action)


def stats_struct(stats: LbStats) -> Stats:
    return Stats(v1=stats.v1, v2=stats.v2)


def _set_flag(value: Optional[bool]) -> bool:
    return True if value is None else bool(value)


class KatranThriftHandler(KatranService.Iface):
    """Implements ``KatranService.Iface`` over a started ``KatranLb``."""

    def __init__(self, lb: KatranLb) -> None:
        self.lb = lb

    @rpc
    def changeMac(self, newMac: Optional[Mac]) -> bool:
        self.lb.change_mac(_required(newMac, "newMac").mac)
        return True

    @rpc
    def getMac(self) -> Mac:
        return Mac(mac=self.lb.get_mac())

    @rpc
    def addVip(self, vipMeta: Optional[VipMeta]) -> bool:
        meta = _required(vipMeta, "vipMeta")
        self.lb.add_vip(vip_key(meta.vip), _int(meta.flags))
        return True

    @rpc
    def delVip(self, vip: Optional[Vip]) -> bool:
        self.lb.del_vip(vip_key(vip))
        return True

    @rpc
    def getAllVips(self) -> List[Vip]:
        return [vip_struct(v) for v in self.lb.get_all_vips()]

    @rpc
    def modifyVip(self, vipMeta: Optional[VipMeta]) -> bool:
        meta = _required(vipMeta, "vipMeta")
        self.lb.modify_vip(vip_key(meta.vip), _int(meta.flags), _set_flag(meta.setFlag))
        return True

    @rpc
    def modifyReal(self, realMeta: Optional[RealMeta]) -> bool:
        meta = _required(realMeta, "realMeta")
        self.lb.modify_real(meta.address, _int(meta.flags), _set_flag(meta.setFlag))
        return True

    @rpc
    def getVipFlags(self, vip: Optional[Vip]) -> int:
        return self.lb.get_vip_flags(vip_key(vip))

    @rpc
    def addRealForVip(self, real: Optional[TReal], vip: Optional[Vip]) -> bool:
        self.lb.add_real_for_vip(real_value(real), vip_key(vip))
        return True

    @rpc
    def delRealForVip(self, real: Optional[TReal], vip: Optional[Vip]) -> bool:
        self.lb.del_real_for_vip(real_value(real), vip_key(vip))
        return True

    @rpc
    def modifyRealsForVip(self, action: Optional[int], real: Optional[List[TReal]], vip: Optional[Vip]) -> bool:
        reals = [real_value(r) for r in (real or [])]
        self.lb.modify_reals_for_vip(modify_action(action), reals, vip_key(vip))
        return True

    @rpc
    def getRealsForVip(self, vip: Optional[Vip]) -> List[TReal]:
        return [real_struct(r) for r in self.lb.get_reals_for_vip(vip_key(vip))]

    @rpc
    def modifyQuicRealsMapping(self, action: Optional[int], reals: Optional[List[TQuicReal]]) -> bool:
        values = [quic_real_value(r) for r in (reals or [])]
        self.lb.modify_quic_reals_mapping(modify_action(action), values)
        return True

    @rpc
    def getQuicRealsMapping(self) -> List[TQuicReal]:
        return [quic_real_struct(r) for r in self.lb.get_quic_reals_mapping()]

    @rpc
    def getStatsForVip(self, vip: Optional[Vip]) -> Stats:
        return stats_struct(self.lb.get_stats_for_vip(vip_key(vip)))

    @rpc
    def getLruStats(self) -> Stats:
        return stats_struct(self.lb.get_lru_stats())

    @rpc
    def getLruMissStats(self) -> Stats:
        return stats_struct(self.lb.get_lru_miss_stats())

    @rpc
    def getLruFallbackStats(self) -> Stats:
        return stats_struct(self.lb.get_lru_fallback_stats())

    @rpc
    def getIcmpTooBigStats(self) -> Stats:
        return stats_struct(self.lb.get_icmp_too_big_stats())

    @rpc
    def addHealthcheckerDst(self, healthcheck: Optional[Healthcheck]) -> bool:
        hc = _required(healthcheck, "healthcheck")
        self.lb.add_healthchecker_dst(_int(hc.somark), hc.address)
        return True

    @rpc
    def delHealthcheckerDst(self, somark: Optional[int]) -> bool:
        self.lb.del_healthchecker_dst(_int(somark))
        return True

    @rpc
    def getHealthcheckersDst(self) -> Dict[int, str]:
        return {_i32(k): format_address(v) for k, v in self.lb.get_healthcheckers_dst().items()}
