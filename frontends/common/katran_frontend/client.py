"""The transport-neutral client side of katran's frontends: the ``KatranClient``
interface katran-cli drives, and its errors.

Values in and out are katran.models values (VipKey, Real, QuicReal, Flow,
LbStats); method names are KatranLb's.  Failures raise:

* ``OperationFailed``: the server refused an update (gRPC: status CANCELLED
  of a Bool RPC, as Katran's C++ server answers; thrift: an exception reply);
  ``code`` is the katran reason code when the server sends it (ours does in
  the trailing metadata, Katran's C++ server does not: "CANCELLED"),
  ``message`` the reason.
* ``RpcFailed``: the call itself failed (status code != OK, server down, ...).

Transports (``katran_grpc.client.GrpcKatranClient``,
``katran_thrift.client.ThriftKatranClient``) implement ``KatranClient`` and are
chosen by name in ``katran_frontend.cli``.  The feature-parity methods (source
routing, inline decap, down reals, feature counters) are not abstract: a
transport that lacks them inherits ``RpcFailed(code="UNIMPLEMENTED")``.
No RPC library is imported here.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Optional, Sequence

from katran.models import Flow, HashFunction, LbStats, ModifyAction, QuicReal, Real, VipKey

if TYPE_CHECKING:
    from katran.healthcheck import HcStats


class KatranClientError(Exception):
    """A call failed; ``code`` is a gRPC status code name (e.g. "NOT_FOUND")."""

    def __init__(self, rpc: str, code: str, message: str) -> None:
        super().__init__(f"{rpc}: {code}: {message}")
        self.rpc = rpc
        self.code = code
        self.message = message


class RpcFailed(KatranClientError):
    """The RPC failed (non-OK status, unreachable server, deadline, ...)."""


class OperationFailed(KatranClientError):
    """The server refused the operation (a failed Bool RPC: status CANCELLED)."""


class RealHealth(NamedTuple):
    """The state of one health check (a real of a VIP) as the server's checker holds it."""

    vip: VipKey
    real: str
    healthy: bool
    reason: str  # the last probe's result: "ok", "connection refused", "not checked yet", ...
    mode: str = ""  # "vip": through the VIP with the real's somark; "real": to the real's address
    somark: int = 0
    checks: int = 0
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    transitions: int = 0
    since: float = 0.0  # unix time of the last transition (or of the start)
    applied: bool = False  # the drain/removal is in effect in the balancer
    last_latency: float = 0.0


class KatranClient(abc.ABC):
    """What katran-cli needs from a transport; names and values as KatranLb's."""

    # Katran's KatranService
    @abc.abstractmethod
    def change_mac(self, mac: str) -> None: ...
    @abc.abstractmethod
    def get_mac(self) -> str: ...
    @abc.abstractmethod
    def add_vip(self, vip: VipKey, flags: int = 0) -> None: ...
    @abc.abstractmethod
    def del_vip(self, vip: VipKey) -> None: ...
    @abc.abstractmethod
    def get_all_vips(self) -> list[VipKey]: ...
    @abc.abstractmethod
    def modify_vip(self, vip: VipKey, flags: int, set_flag: bool = True) -> None: ...
    @abc.abstractmethod
    def get_vip_flags(self, vip: VipKey) -> int: ...
    @abc.abstractmethod
    def modify_real(self, address: str, flags: int, set_flag: bool = True) -> None: ...
    @abc.abstractmethod
    def get_real_flags(self, address: str) -> int: ...
    @abc.abstractmethod
    def add_real_for_vip(self, real: Real, vip: VipKey) -> None: ...
    @abc.abstractmethod
    def del_real_for_vip(self, real: Real, vip: VipKey) -> None: ...
    @abc.abstractmethod
    def modify_reals_for_vip(self, action: ModifyAction, reals: list[Real], vip: VipKey) -> None: ...
    @abc.abstractmethod
    def get_reals_for_vip(self, vip: VipKey) -> list[Real]: ...
    @abc.abstractmethod
    def modify_quic_reals_mapping(self, action: ModifyAction, reals: list[QuicReal]) -> None: ...
    @abc.abstractmethod
    def get_quic_reals_mapping(self) -> list[QuicReal]: ...
    @abc.abstractmethod
    def get_stats_for_vip(self, vip: VipKey) -> LbStats: ...
    @abc.abstractmethod
    def get_lru_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_lru_miss_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_lru_fallback_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_icmp_too_big_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def add_healthchecker_dst(self, somark: int, address: str) -> None: ...
    @abc.abstractmethod
    def del_healthchecker_dst(self, somark: int) -> None: ...
    @abc.abstractmethod
    def get_healthcheckers_dst(self) -> dict[int, str]: ...

    # extensions
    @abc.abstractmethod
    def get_index_for_real(self, address: str) -> int: ...
    @abc.abstractmethod
    def get_real_stats(self, index: int) -> LbStats: ...
    @abc.abstractmethod
    def get_xdp_total_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_xdp_tx_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_xdp_drop_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_xdp_pass_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_ch_drop_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_encap_fail_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_malformed_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_katran_lb_stats(self) -> LbStats: ...
    @abc.abstractmethod
    def get_per_core_packets_stats(self) -> list[int]: ...
    @abc.abstractmethod
    def change_hash_function_for_vip(self, vip: VipKey, hash_function: HashFunction) -> None: ...
    @abc.abstractmethod
    def get_hash_function_for_vip(self, vip: VipKey) -> HashFunction: ...
    @abc.abstractmethod
    def get_real_for_flow(self, flow: Flow) -> Optional[str]: ...
    @abc.abstractmethod
    def get_hc_program_stats(self) -> HcStats: ...

    # feature parity (extension service); a transport without them answers UNIMPLEMENTED
    def _unsupported(self, rpc: str) -> NoReturn:
        raise RpcFailed(rpc, "UNIMPLEMENTED", f"not supported by {type(self).__name__}")

    def capture(self, vip: Optional[VipKey] = None, real: Optional[str] = None, src: Optional[str] = None,
                count: int = 0, snaplen: int = 0):
        """Iterator of katran.capture.CapturedPacket (packet capture, katran-cli -capture)."""
        self._unsupported("capture")

    def add_src_routing_rule(self, srcs: Sequence[str], dst: str) -> None:
        self._unsupported("addSrcRoutingRule")

    def del_src_routing_rule(self, srcs: Sequence[str]) -> None:
        self._unsupported("delSrcRoutingRule")

    def clear_all_src_routing_rules(self) -> None:
        self._unsupported("clearAllSrcRoutingRules")

    def get_src_routing_rule(self) -> dict[str, str]:
        self._unsupported("getSrcRoutingRule")

    def get_src_routing_rule_size(self) -> int:
        self._unsupported("getSrcRoutingRuleSize")

    def get_src_routing_stats(self) -> LbStats:
        self._unsupported("getSrcRoutingStats")

    def add_inline_decap_dst(self, dst: str) -> None:
        self._unsupported("addInlineDecapDst")

    def del_inline_decap_dst(self, dst: str) -> None:
        self._unsupported("delInlineDecapDst")

    def get_inline_decap_dst(self) -> list[str]:
        self._unsupported("getInlineDecapDst")

    def get_inline_decap_stats(self) -> LbStats:
        self._unsupported("getInlineDecapStats")

    def get_decap_stats(self) -> LbStats:
        self._unsupported("getDecapStats")

    def get_xpop_decap_successful_stats(self) -> LbStats:
        self._unsupported("getXpopDecapSuccessfulStats")

    def get_decap_stats_for_vip(self, vip: VipKey) -> LbStats:
        self._unsupported("getDecapStatsForVip")

    def add_down_real(self, vip: VipKey, address: str) -> None:
        self._unsupported("addDownReal")

    def remove_down_real(self, vip: VipKey, address: str) -> None:
        self._unsupported("removeDownReal")

    def clear_down_reals(self, vip: VipKey) -> None:
        self._unsupported("clearDownReals")

    def get_down_reals(self, vip: VipKey) -> list[str]:
        self._unsupported("getDownReals")

    def get_lb_quic_packets_stats(self) -> dict[str, int]:
        self._unsupported("getLbQuicPacketsStats")

    def get_tcp_server_id_routing_stats(self) -> dict[str, int]:
        self._unsupported("getTcpServerIdRoutingStats")

    def get_udp_stable_routing_stats(self) -> dict[str, int]:
        self._unsupported("getUdpStableRoutingStats")

    def get_udp_flow_migration_stats(self) -> LbStats:
        self._unsupported("getUdpFlowMigrationStats")

    def get_global_lru_stats(self) -> LbStats:
        self._unsupported("getGlobalLruStats")

    def get_quic_icmp_stats(self) -> LbStats:
        self._unsupported("getQuicIcmpStats")

    def get_sid_routing_stats_for_vip(self, vip: VipKey) -> LbStats:
        self._unsupported("getSidRoutingStatsForVip")

    # the declarative file (katran.declarative)
    def dump_config(self) -> str:
        """The live state as a declarative file (YAML text)."""
        self._unsupported("dumpConfig")

    def apply_config(self, text: str, dry_run: bool = False, source: str = "") -> tuple[list, list]:
        """Apply a declarative file: (changes made or planned, options needing a restart)."""
        self._unsupported("applyConfig")

    # health checks (katran.daemon's checker)
    def get_health_check_states(self) -> Optional[list[RealHealth]]:
        """The server's health check states; None when it runs no checks."""
        self._unsupported("getHealthCheckStates")

    # the flow table (extension service): katran.flows values
    def lookup_flow(self, flow: Flow, cpu: Optional[int] = None):
        """katran.flows.FlowRoute of ``flow``, computed without side effects."""
        self._unsupported("lookupFlow")

    def list_lru(self, vip: Optional[VipKey] = None, *, real: Optional[str] = None, src: Optional[str] = None,
                 limit: Optional[int] = 1000):
        """katran.flows.LruListing of the entries matching the filters (limit None: all)."""
        self._unsupported("listLru")

    def search_lru(self, vip: VipKey, src: str, src_port: int) -> list:
        self._unsupported("searchLru")

    def delete_lru(self, vip: VipKey, src: str, src_port: int) -> list[str]:
        self._unsupported("deleteLru")

    def purge_vip_lru(self, vip: Optional[VipKey] = None, *, real: Optional[str] = None,
                      src: Optional[str] = None) -> dict[str, int]:
        self._unsupported("purgeLru")

    def drain(self, timeout_ms: int = 0) -> tuple:
        """BGP: withdraw every VIP, wait for the traffic to leave; (draining, seconds waited, announced)."""
        self._unsupported("drain")

    def undrain(self) -> tuple:
        self._unsupported("undrain")

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> "KatranClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
