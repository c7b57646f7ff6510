"""A fake host for katran.host: /proc and /sys as files under a directory, the way the
kernel lays them out (cpuN/nodeM and device/driver are symlinks, as in sysfs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import attrs

from katran.host.kernel import Neighbour, Route


@attrs.define
class Queue:
    irq: int
    name: str  # its /proc/interrupts name: eth0-TxRx-0, virtio3-input.0, enp0s3
    affinity: str  # smp_affinity_list text: "0", "0-3"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


class HostTree:
    """Builds the tree; every knob has the seed's defaults (4 CPUs, 2 NUMA nodes, a NIC
    ``eth0`` (ixgbe, PCI 0000:03:00.0) with 4 queues pinned one per CPU, irqbalance running)."""

    def __init__(self, base: Path, *, cpus: int = 4, numa: Optional[Sequence[int]] = (0, 1, 0, 1),
                 numa_links: bool = True, ifname: str = "eth0", driver: str = "ixgbe",
                 device: str = "0000:03:00.0", bus: str = "pci", nic_numa: int = 0,
                 queues: Optional[Sequence[Queue]] = None, n_rx: Optional[int] = None,
                 irqbalance: bool = True, jit: Sequence[int] = (1, 0, 1), rp_filter: Sequence[int] = (0, 0),
                 bpffs: bool = True, release: str = "6.18.0", affinity_list_files: bool = True,
                 extra_interrupts: Sequence[str] = ()) -> None:
        self.base = base
        self.ifname = ifname
        if queues is None:
            queues = [Queue(40 + i, f"{ifname}-TxRx-{i}", str(i)) for i in range(4)]
        self.queues = list(queues)
        # cpus and NUMA
        _write(base / "sys/devices/system/cpu/online", f"0-{cpus - 1}\n")
        for c in range(cpus):
            (base / f"sys/devices/system/cpu/cpu{c}/topology").mkdir(parents=True)
            if numa is not None and numa_links:
                _link(base / f"sys/devices/system/cpu/cpu{c}/node{numa[c]}", f"../../node/node{numa[c]}")
        if numa is not None:
            for node in sorted(set(numa)):
                cpulist = ",".join(str(c) for c in range(cpus) if numa[c] == node)
                _write(base / f"sys/devices/system/node/node{node}/cpulist", cpulist + "\n")
        # the NIC
        net = base / f"sys/class/net/{ifname}"
        net.mkdir(parents=True)
        _write(net / "ifindex", "2\n")
        _write(net / "address", "52:54:00:12:34:56\n")
        rx = len(self.queues) if n_rx is None else n_rx
        for i in range(rx):
            (net / f"queues/rx-{i}").mkdir(parents=True)
            (net / f"queues/tx-{i}").mkdir(parents=True)
        if device:
            devdir = base / (f"sys/devices/pci0000:00/{device}" if bus == "pci" else f"sys/devices/{device}")
            devdir.mkdir(parents=True)
            _write(devdir / "numa_node", f"{nic_numa}\n")
            (base / f"sys/bus/{bus}/drivers/{driver}").mkdir(parents=True)
            _link(devdir / "driver", os.path.relpath(base / f"sys/bus/{bus}/drivers/{driver}", devdir))
            _link(devdir / "subsystem", os.path.relpath(base / f"sys/bus/{bus}", devdir))
            _link(net / "device", os.path.relpath(devdir, net))
        # interrupts and affinity
        header = "           " + "".join(f"CPU{c:<7}" for c in range(cpus))
        lines = [header, f"  9:{'          0' * cpus}   IO-APIC    9-fasteoi   acpi"]
        for q in self.queues:
            lines.append(f"{q.irq:>3}:{'       1234' * cpus}   PCI-MSIX-{device or 'virt'}   {q.irq}-edge      {q.name}")
            irqdir = base / f"proc/irq/{q.irq}"
            if affinity_list_files:
                _write(irqdir / "smp_affinity_list", q.affinity + "\n")
            from katran.host.discovery import format_cpu_mask, parse_cpu_list

            _write(irqdir / "smp_affinity", format_cpu_mask(parse_cpu_list(q.affinity)) + "\n")
        lines.extend(extra_interrupts)
        lines.append(f"NMI:{'          0' * cpus}   Non-maskable interrupts")
        _write(base / "proc/interrupts", "\n".join(lines) + "\n")
        # processes
        _write(base / "proc/1/comm", "systemd\n")
        _write(base / "proc/77/comm", "sshd\n")
        if irqbalance:
            _write(base / "proc/4242/comm", "irqbalance\n")
        (base / "proc/self").mkdir(parents=True, exist_ok=True)
        # sysctls
        for name, value in zip(("bpf_jit_enable", "bpf_jit_harden", "bpf_jit_kallsyms"), jit):
            _write(base / f"proc/sys/net/core/{name}", f"{value}\n")
        _write(base / "proc/sys/net/ipv4/conf/all/rp_filter", f"{rp_filter[0]}\n")
        _write(base / f"proc/sys/net/ipv4/conf/{ifname}/rp_filter", f"{rp_filter[1]}\n")
        _write(base / "proc/sys/kernel/osrelease", release + "\n")
        mounts = ["sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0",
                  "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0"]
        if bpffs:
            mounts.append("bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0")
        _write(base / "proc/mounts", "\n".join(mounts) + "\n")
        (base / "sys/fs/bpf").mkdir(parents=True)

    def affinity(self, irq: int) -> str:
        return (self.base / f"proc/irq/{irq}/smp_affinity_list").read_text().strip()


@attrs.define
class StaticNet:
    """Routes and neighbours as data, for the tests of the /proc and /sys logic (the
    netlink side has its own tests in network namespaces)."""

    routes: list = attrs.field(factory=lambda: [Route(4, ("10.0.2.2",), "eth0")])
    neighbours: dict = attrs.field(factory=lambda: {"10.0.2.2": Neighbour("10.0.2.2", "52:54:00:12:35:02",
                                                                          "REACHABLE")})
    links: dict = attrs.field(factory=dict)
    probes: int = 0

    def link(self, ifname):
        return self.links.get(ifname)

    def default_routes(self, family):
        return [r for r in self.routes if r.family == family]

    def neighbour(self, ip, ifname):
        return self.neighbours.get(ip)

    def probe(self, ip, ifname):
        self.probes += 1

    def channels(self, ifname):  # a test tree has no kernel behind it
        raise AssertionError("channels() asked for a test tree")
