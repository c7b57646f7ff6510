"""``auto`` values of the server flags -default_mac, -forwarding_cores, -numa_nodes:
the preflight's discovery, logged; ambiguity is an error naming the flag."""

from __future__ import annotations

import logging
from typing import Optional

import attrs

from katran.errors import KatranError, ValidationError

from . import discovery as D
from .report import forwarding_cores as _forwarding_cores
from .report import gather, pinning_problems
from .root import HostRoot

AUTO = "auto"
log = logging.getLogger("katran.host")


@attrs.frozen
class AutoFlags:
    """The three flag values with every ``auto`` replaced (flag syntax: '' = not set)."""

    default_mac: str
    forwarding_cores: str
    numa_nodes: str


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def resolve_auto_flags(intf: str, default_mac: str, forwarding_cores: str = "", numa_nodes: str = "", *,
                       netns: Optional[str] = None, root: Optional[HostRoot] = None, net=None,
                       probe_timeout: float = 3.0, logger: Optional[logging.Logger] = None) -> AutoFlags:
    """Replace ``auto`` in the three flags by what the host shows for ``intf``.

    -default_mac=auto: the MAC of the default route's gateway on ``intf`` (resolved when
    the neighbour table lacks it); -forwarding_cores=auto: the CPUs the NIC's receive
    queue IRQs are pinned to (every online CPU for a virtual device); -numa_nodes=auto: the
    NUMA node of each forwarding core (every online CPU when -forwarding_cores is empty).
    Raises ValidationError (field = the flag) when discovery fails or is ambiguous.
    """
    lg = logger or log
    want_mac, want_cores, want_nodes = is_auto(default_mac), is_auto(forwarding_cores), is_auto(numa_nodes)
    if not (want_mac or want_cores or want_nodes):
        return AutoFlags(default_mac, forwarding_cores, numa_nodes)
    D.check_ifname(intf, "intf")
    root = root or HostRoot(netns=netns)
    if net is None:
        from .kernel import KernelNet

        try:
            net = KernelNet(netns)
        except KatranError as exc:
            raise ValidationError("intf", intf, str(exc)) from None
    where = f" (netns {netns})" if netns else ""
    if want_mac:
        gw = D.find_gateway(net, intf, timeout=probe_timeout)
        if gw.error:
            raise ValidationError("default_mac", AUTO, gw.error + where)
        how = f", resolved after {gw.probes} probe{'s' * (gw.probes != 1)}" if gw.probes else ""
        lg.info("-default_mac=auto: IPv%d default gateway %s on %s%s is %s (%s%s)", gw.family, gw.ip, intf, where,
                gw.mac, gw.state, how)
        default_mac = gw.mac
    cores: list = []
    if want_cores or want_nodes:
        facts = gather(intf, root=root, net=net, gateway=False)
        field = "forwarding_cores" if want_cores else "numa_nodes"
        if facts.nic is None:
            raise ValidationError(field, AUTO, f"no interface {intf}{where}")
        if not facts.cpus:
            raise ValidationError(field, AUTO, "no online CPU found in /sys/devices/system/cpu")
    if want_cores:
        cores, why = _forwarding_cores(facts)
        lg.info("-forwarding_cores=auto: %s (%s)", D.format_cpu_list(cores), why)
        for problem in pinning_problems(facts):
            lg.warning("-forwarding_cores=auto: %s (katran-preflight --intf %s --fix pins them)", problem, intf)
        if facts.irqbalance:
            lg.warning("-forwarding_cores=auto: irqbalance is running and may move the IRQs")
        forwarding_cores = D.format_cpu_list(cores)
    if want_nodes:
        if want_cores:
            pass  # the cores just found
        elif forwarding_cores.strip():
            try:
                cores = [int(c) for c in forwarding_cores.replace(" ", "").split(",") if c]
            except ValueError:
                shown = forwarding_cores[:100].encode("ascii", "backslashreplace").decode()
                raise ValidationError("forwarding_cores", shown, "not a comma separated list of CPUs") from None
        else:
            cores = list(facts.cpus)
            forwarding_cores = D.format_cpu_list(cores)
            lg.info("-numa_nodes=auto without -forwarding_cores: every online CPU forwards: %s", forwarding_cores)
        numa, source = facts.numa, facts.numa_source
        if not numa:
            lg.info("-numa_nodes=auto: no NUMA topology in /sys: -numa_nodes left empty")
            numa_nodes = ""
        else:
            missing = [c for c in cores if c not in numa]
            if missing:
                raise ValidationError("numa_nodes", AUTO, f"no NUMA node for cpus {D.format_cpu_list(missing)} "
                                      "(offline or absent)")
            numa_nodes = D.format_cpu_list([numa[c] for c in cores])
            lg.info("-numa_nodes=auto: %s for cpus %s (from %s)", numa_nodes, D.format_cpu_list(cores), source)
    return AutoFlags(default_mac, forwarding_cores, numa_nodes)
