"""The preflight report: one check per host fact (ok / warn / fail, detail, suggested fix)
and the server flags to use."""

from __future__ import annotations

import json
import resource
from collections import defaultdict
from typing import Callable, Optional, Sequence

import attrs

from . import discovery as D
from .root import HostRoot

VERDICTS = ("ok", "warn", "fail")
EXIT_CODES = {"ok": 0, "warn": 1, "fail": 2}
SCHEMA_VERSION = 1


@attrs.frozen
class Check:
    name: str
    verdict: str  # ok, warn or fail
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail, "fix": self.fix}


@attrs.define
class Facts:
    """Everything gathered about the host, once (the report, --fix and `auto` share it)."""

    ifname: str
    root: HostRoot
    net: object
    nic: Optional[D.Nic]
    rx_queues: int
    queues_source: str
    queues: list
    cpus: list
    numa: dict
    numa_source: str
    irqbalance: list
    jit: dict
    rp_filter: dict
    bpffs: list
    memlock: tuple
    release: str
    gateway: Optional[D.Gateway]


def gather(ifname: str, *, root: Optional[HostRoot] = None, net=None, getrlimit: Callable = resource.getrlimit,
           gateway: bool = True, probe: bool = True, probe_timeout: float = 3.0) -> Facts:
    """Read every fact the report needs.  ``net`` defaults to netlink in ``root.netns``."""
    root = root or HostRoot()
    if net is None:
        from .kernel import KernelNet

        net = KernelNet(root.netns)
    nic = D.discover_nic(root, net, ifname)
    rx, src = D.rx_queue_count(root, net, nic) if nic else (0, "")
    cpus = D.online_cpus(root)
    numa, numa_src = D.cpu_numa_nodes(root, cpus)
    return Facts(
        ifname=ifname, root=root, net=net, nic=nic, rx_queues=rx, queues_source=src,
        queues=D.queue_irqs(root, nic) if nic else [], cpus=cpus, numa=numa, numa_source=numa_src,
        irqbalance=D.irqbalance_pids(root), jit=D.jit_sysctls(root), rp_filter=D.rp_filter(root, ifname),
        bpffs=D.bpffs_mounts(root), memlock=D.memlock_limit(getrlimit), release=D.kernel_release(root),
        gateway=D.find_gateway(net, ifname, probe=probe, timeout=probe_timeout) if gateway else None,
    )


# ------------------------------------------------------------------ flags
def forwarding_cores(facts: Facts) -> tuple[list, str]:
    """The CPUs that will run the balancer for this NIC, and why."""
    if facts.nic is None:
        return [], f"no interface {facts.ifname}"
    cpus = sorted({c for q in facts.queues for c in q.cpus})
    if cpus:
        n = len(facts.queues)
        return cpus, (f"the CPU{'s' * (len(cpus) != 1)} the {n} receive-queue IRQ{'s' * (n != 1)} of {facts.ifname} "
                      "may run on (smp_affinity)")
    if facts.nic.virtual:
        return list(facts.cpus), (f"{facts.ifname} is a virtual device ({facts.nic.driver or 'no driver'}): XDP runs "
                                  "on the CPU that hands it the packet, so every online CPU")
    return list(facts.cpus), f"no IRQ of {facts.ifname} found: every online CPU"


def numa_nodes(facts: Facts, cores: Sequence[int]) -> list:
    if not facts.numa or any(c not in facts.numa for c in cores):
        return []
    return [facts.numa[c] for c in cores]


def suggested_flags(facts: Facts) -> dict:
    cores, _ = forwarding_cores(facts)
    nodes = numa_nodes(facts, cores)
    multi_node = len(set(facts.numa.values())) > 1
    gw = facts.gateway
    return {
        "default_mac": gw.mac if gw is not None and gw.mac else None,
        "forwarding_cores": cores,
        "numa_nodes": nodes if multi_node else [],
    }


def format_server_flags(flags: dict) -> str:
    parts = []
    if flags.get("default_mac"):
        parts.append(f"-default_mac={flags['default_mac']}")
    if flags.get("forwarding_cores"):
        parts.append("-forwarding_cores=" + D.format_cpu_list(flags["forwarding_cores"]))
    if flags.get("numa_nodes"):
        parts.append("-numa_nodes=" + D.format_cpu_list(flags["numa_nodes"]))
    return " ".join(parts)


# ----------------------------------------------------------------- checks
def _cpus(cpus: Sequence[int]) -> str:
    return D.format_cpu_ranges(cpus) if cpus else "none"


def pinning_problems(facts: Facts, wanted_cores: Optional[Sequence[int]] = None) -> list[str]:
    """What is wrong with the IRQ -> CPU pinning of the NIC's receive queues ([] if nothing)."""
    problems = []
    qs = facts.queues
    for q in qs:
        if not q.cpus:
            problems.append(f"queue {q.queue} (IRQ {q.irq}) has no readable affinity")
        elif len(q.cpus) > 1:
            problems.append(f"queue {q.queue} (IRQ {q.irq}) may run on cpus {_cpus(q.cpus)}: not pinned to one CPU")
    by_cpu = defaultdict(list)
    for q in qs:
        if len(q.cpus) == 1:
            by_cpu[q.cpus[0]].append(q.queue)
    for cpu, queues in sorted(by_cpu.items()):
        if len(queues) > 1:
            problems.append(f"several queues on one CPU: cpu {cpu} serves queues {', '.join(map(str, queues))}")
    overlaps = []
    for i, a in enumerate(qs):
        for b in qs[i + 1:]:
            common = sorted(set(a.cpus) & set(b.cpus))
            if common and (len(a.cpus) > 1 or len(b.cpus) > 1):
                overlaps.append(f"{a.queue}/{b.queue} on cpus {_cpus(common)}")
    if overlaps:
        problems.append("overlapping affinities: queues " + ", ".join(overlaps))
    seen = {q.queue for q in qs}
    missing = [n for n in range(facts.rx_queues) if n not in seen]
    if qs and missing:
        problems.append(f"queues {', '.join(map(str, missing))} have no IRQ in /proc/interrupts")
    if wanted_cores is not None:
        for q in qs:
            off = [c for c in q.cpus if c not in wanted_cores]
            if off:
                problems.append(f"queue {q.queue} (IRQ {q.irq}) runs on cpus {_cpus(off)}, not forwarding cores "
                                f"(-forwarding_cores={D.format_cpu_list(wanted_cores)}): its packets use the "
                                "fallback LRU")
    return problems


def check_pinning(facts: Facts, wanted_cores: Optional[Sequence[int]] = None) -> Check:
    nic = facts.nic
    if not facts.queues:
        if nic.virtual:
            return Check("irq_pinning", "ok", f"{facts.ifname} is a virtual device ({nic.driver or '?'}): no IRQs; "
                         "XDP runs on the CPU that hands it the packet, every CPU forwards")
        return Check("irq_pinning", "warn", f"no IRQ of {facts.ifname} found in /proc/interrupts (looked for "
                     f"{facts.ifname}, {facts.ifname}-TxRx-N, {facts.ifname}-rx-N"
                     + (f", {nic.device}-input.N" if nic.device.startswith("virtio") else "") + ")",
                     "find the NIC's IRQs in /proc/interrupts and pin each to its own CPU "
                     "(echo CPU > /proc/irq/N/smp_affinity_list)")
    desc = ", ".join(f"queue {q.queue}: IRQ {q.irq} ({q.name}) -> cpu {_cpus(q.cpus)}" for q in facts.queues)
    problems = pinning_problems(facts, wanted_cores)
    if problems:
        return Check("irq_pinning", "warn", "; ".join(problems) + f" [{desc}]",
                     f"katran-preflight --intf {facts.ifname} --fix (one CPU per queue IRQ; the seed: "
                     "echo MASK > /proc/irq/N/smp_affinity)")
    return Check("irq_pinning", "ok", f"each queue IRQ on its own CPU: {desc}")


def build_checks(facts: Facts, wanted_cores: Optional[Sequence[int]] = None) -> list[Check]:
    out: list[Check] = []
    nic = facts.nic
    ifn = facts.ifname
    where = f" in netns {facts.root.netns}" if facts.root.netns else ""
    if nic is None:
        out.append(Check("interface", "fail", f"no interface {ifn}{where}", "pass the interface the balancer "
                         "receives on (ip link)"))
    else:
        dev = f", device {nic.device} ({nic.bus})" if nic.device else ", virtual"
        out.append(Check("interface", "ok", f"{ifn}{where}: driver {nic.driver or 'unknown'}{dev}, MAC {nic.mac or '?'}"
                         f" (from {nic.source})"))
        drv = nic.driver
        if drv in D.NATIVE_XDP_DRIVERS:
            out.append(Check("xdp_mode", "ok", f"driver {drv} supports native XDP (-xdp_mode=native)"))
        elif nic.virtual and drv:
            out.append(Check("xdp_mode", "warn", f"{drv} devices have generic XDP only",
                             "-xdp_mode=generic (slow path), or balance on a NIC with a native XDP driver"))
        else:
            out.append(Check("xdp_mode", "warn", f"driver {drv or 'unknown'}: probably generic XDP only (not a driver "
                             "known to support native XDP)",
                             "try the default -xdp_mode=native; if attaching fails use -xdp_mode=generic"))
        ncpu = len(facts.cpus)
        if facts.rx_queues:
            out.append(Check("rx_queues", "ok", f"{facts.rx_queues} receive queue{'s' * (facts.rx_queues != 1)} "
                             f"(from {facts.queues_source}) for {ncpu} CPU{'s' * (ncpu != 1)}"))
        else:
            out.append(Check("rx_queues", "warn", f"receive queue count of {ifn} unknown (no ethtool channels, "
                             "no /sys/class/net/IF/queues/rx-*)", f"ethtool -l {ifn}"))
        out.append(check_pinning(facts, wanted_cores))
    if facts.irqbalance:
        out.append(Check("irqbalance", "warn", f"irqbalance is running (pid {', '.join(map(str, facts.irqbalance))}): "
                         "it moves IRQs, pinning does not hold",
                         "systemctl stop irqbalance; systemctl disable irqbalance (or --fix --stop-irqbalance)"))
    else:
        out.append(Check("irqbalance", "ok", "irqbalance is not running"))
    cores, why = forwarding_cores(facts)
    if facts.numa:
        nodes = sorted(set(facts.numa.values()))
        mapping = ", ".join(f"cpu {c} -> node {facts.numa[c]}" for c in cores if c in facts.numa)
        detail = f"{len(nodes)} NUMA node{'s' * (len(nodes) != 1)} (from {facts.numa_source}); {mapping}"
        if nic is not None and nic.numa_node is not None:
            detail += f"; {ifn} is on node {nic.numa_node}"
        if len(nodes) == 1:
            detail += "; -numa_nodes not needed"
        out.append(Check("numa", "ok", detail))
    else:
        out.append(Check("numa", "ok", "no NUMA topology in /sys (one node): -numa_nodes not needed"))
    out.append(Check("forwarding_cores", "ok" if cores else "fail",
                     (f"cpus {D.format_cpu_list(cores)}: {why}" if cores else why)))
    out.extend(_jit_checks(facts.jit))
    out.append(_rp_filter_check(facts))
    out.append(_bpffs_check(facts.bpffs))
    out.append(_memlock_check(facts))
    out.append(_gateway_check(facts))
    return out


def _jit_checks(jit: dict) -> list[Check]:
    out = []
    en = jit.get("bpf_jit_enable")
    if en == 1:
        out.append(Check("bpf_jit_enable", "ok", "net.core.bpf_jit_enable = 1"))
    elif en == 2:
        out.append(Check("bpf_jit_enable", "warn", "net.core.bpf_jit_enable = 2: JIT on with debug output to the "
                         "kernel log", "sysctl -w net.core.bpf_jit_enable=1"))
    elif en == 0:
        out.append(Check("bpf_jit_enable", "fail", "net.core.bpf_jit_enable = 0: the balancer would run interpreted",
                         "sysctl -w net.core.bpf_jit_enable=1 (or --fix)"))
    else:
        out.append(Check("bpf_jit_enable", "warn", "net.core.bpf_jit_enable not readable: only the initial network "
                         "namespace has it (or the kernel has no BPF JIT)",
                         "run katran-preflight outside the namespace with --netns NS; a kernel with CONFIG_BPF_JIT=y"))
    hd = jit.get("bpf_jit_harden")
    if hd == 2:
        out.append(Check("bpf_jit_harden", "warn", "net.core.bpf_jit_harden = 2: constant blinding for every program, "
                         "the balancer too (slower)", "sysctl -w net.core.bpf_jit_harden=0 (1 hardens only "
                         "unprivileged programs)"))
    else:
        what = {0: "no hardening", 1: "hardening for unprivileged programs only"}.get(hd, "absent")
        out.append(Check("bpf_jit_harden", "ok", f"net.core.bpf_jit_harden = {hd if hd is not None else '-'}: {what}"))
    ks = jit.get("bpf_jit_kallsyms")
    out.append(Check("bpf_jit_kallsyms", "ok",
                     f"net.core.bpf_jit_kallsyms = {ks if ks is not None else '-'}: " +
                     ("JITed programs are named in /proc/kallsyms (perf can profile the balancer)" if ks == 1 else
                      "JITed programs are not in /proc/kallsyms; sysctl -w net.core.bpf_jit_kallsyms=1 to profile")))
    return out


def _rp_filter_check(facts: Facts) -> Check:
    rp = facts.rp_filter
    values = {k: v for k, v in rp.items() if v is not None}
    eff = max(values.values()) if values else None
    shown = ", ".join(f"{k}={v}" for k, v in rp.items() if v is not None) or "not readable"
    if eff == 1:
        return Check("rp_filter", "warn", f"rp_filter {shown}: strict (the larger value applies); packets the "
                     "balancer passes to the stack from asymmetric paths are dropped",
                     f"sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{facts.ifname}.rp_filter=0 (or 2, loose)")
    mode = {0: "off", 2: "loose"}.get(eff, "unknown")
    return Check("rp_filter", "ok", f"rp_filter {shown}: {mode} (XDP sees VIP traffic before it)")


def _bpffs_check(mounts: list) -> Check:
    if "/sys/fs/bpf" in mounts:
        return Check("bpffs", "ok", "bpffs mounted at /sys/fs/bpf")
    if mounts:
        return Check("bpffs", "warn", f"bpffs mounted at {', '.join(mounts)}, not /sys/fs/bpf",
                     "mount -t bpf bpf /sys/fs/bpf (or --fix)")
    return Check("bpffs", "warn", "no bpffs mounted: shared mode (-map_path /sys/fs/bpf/...) and pinned maps need it",
                 "mount -t bpf bpf /sys/fs/bpf (or --fix)")


def _memlock_check(facts: Facts) -> Check:
    soft, hard = facts.memlock
    inf = resource.RLIM_INFINITY

    def show(v: int) -> str:
        return "unlimited" if v == inf or v < 0 else f"{v // 1024} KiB"

    limit = f"RLIMIT_MEMLOCK {show(soft)} (hard {show(hard)})"
    if soft == inf or soft < 0:
        return Check("memlock", "ok", limit)
    if D.kernel_version(facts.release) >= (5, 11):
        return Check("memlock", "ok", f"{limit}; kernel {facts.release} charges BPF memory to the memory cgroup, "
                     "the limit does not apply")
    return Check("memlock", "warn", f"{limit}; kernel {facts.release or '?'} charges BPF maps to it (8M-entry LRUs "
                 "need far more)", "ulimit -l unlimited (LimitMEMLOCK=infinity in a systemd unit)")


def _gateway_check(facts: Facts) -> Check:
    gw = facts.gateway
    if gw is None:
        return Check("default_gateway", "ok", "not checked (--no-gateway)")
    if gw.error:
        return Check("default_gateway", "fail", gw.error,
                     "give -default_mac=<the router's MAC> explicitly (ip route | grep default; ip n show)")
    how = f", resolved after {gw.probes} probe{'s' * (gw.probes != 1)}" if gw.probes else ""
    return Check("default_gateway", "ok", f"IPv{gw.family} default via {gw.ip} dev {facts.ifname}, lladdr {gw.mac} "
                 f"({gw.state}{how})")


# ------------------------------------------------------------------ report
@attrs.define
class Report:
    interface: str
    netns: Optional[str]
    checks: list
    flags: dict
    queues: list
    changes: list = attrs.field(factory=list)

    @property
    def verdict(self) -> str:
        worst = 0
        for c in self.checks:
            worst = max(worst, VERDICTS.index(c.verdict))
        return VERDICTS[worst]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def server_flags(self) -> str:
        return format_server_flags(self.flags)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "interface": self.interface,
            "netns": self.netns,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
            "queues": [{"queue": q.queue, "irq": q.irq, "name": q.name, "cpus": list(q.cpus)} for q in self.queues],
            "flags": dict(self.flags),
            "server_flags": self.server_flags,
            "changes": list(self.changes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_text(self) -> str:
        head = f"katran-preflight: {self.interface}" + (f" (netns {self.netns})" if self.netns else "")
        lines = [head]
        width = max(len(c.name) for c in self.checks)
        for c in self.checks:
            tag = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.verdict]
            lines.append(f"  {tag}  {c.name:<{width}}  {c.detail}")
            if c.fix and c.verdict != "ok":
                lines.append(f"        {'':<{width}}  fix: {c.fix}")
        n_warn = sum(c.verdict == "warn" for c in self.checks)
        n_fail = sum(c.verdict == "fail" for c in self.checks)
        lines.append(f"verdict: {self.verdict} ({n_warn} warning{'s' * (n_warn != 1)}, "
                     f"{n_fail} failure{'s' * (n_fail != 1)})")
        lines.append(f"server flags: {self.server_flags or '(none found)'}")
        return "\n".join(lines)


def build_report(facts: Facts, wanted_cores: Optional[Sequence[int]] = None) -> Report:
    return Report(facts.ifname, facts.root.netns, build_checks(facts, wanted_cores), suggested_flags(facts),
                  list(facts.queues))
