"""``katran-preflight --fix``: the safe changes (one CPU per queue IRQ, the JIT sysctl,
bpffs; irqbalance only when asked), each printed before it is made; when one fails,
the ones made before it are undone."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from typing import Callable, Optional, Sequence

import attrs

from katran.errors import KernelError

from . import discovery as D
from .report import Facts, pinning_problems
from .root import HostRoot

_libc = ctypes.CDLL(None, use_errno=True)


@attrs.define
class Change:
    """One change: ``describe`` is printed before ``apply``; ``undo`` restores the old state."""

    kind: str  # irq_affinity, sysctl, mount, irqbalance
    describe: str
    path: str = ""
    old: Optional[str] = None
    new: str = ""
    init_netns: bool = False
    pids: tuple = ()
    done: bool = False

    def to_dict(self) -> dict:
        return {"kind": self.kind, "change": self.describe, "path": self.path, "old": self.old, "new": self.new,
                "done": self.done}

    # ---------------------------------------------------------------- apply
    def apply(self, root: HostRoot) -> None:
        if self.kind in ("irq_affinity", "sysctl"):
            root.write(self.path, self.new + "\n", init_netns=self.init_netns)
        elif self.kind == "mount":
            target = os.fsencode(str(root.join(self.path)))
            if _libc.mount(b"bpf", target, b"bpf", 0, None) != 0:
                raise OSError(ctypes.get_errno(), f"mount -t bpf bpf {root.join(self.path)}")
        elif self.kind == "irqbalance":
            if self.new == "systemctl":
                res = subprocess.run(["systemctl", "stop", "irqbalance"], capture_output=True, text=True, timeout=30)
                if res.returncode != 0:
                    raise OSError(1, f"systemctl stop irqbalance: {res.stderr.strip()[:200]}")
            else:
                for pid in self.pids:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        self.done = True

    def undo(self, root: HostRoot) -> None:
        if not self.done:
            return
        if self.kind in ("irq_affinity", "sysctl") and self.old is not None:
            root.write(self.path, self.old + "\n", init_netns=self.init_netns)
        elif self.kind == "mount":
            _libc.umount2(os.fsencode(str(root.join(self.path))), 0)
        elif self.kind == "irqbalance" and self.new == "systemctl":
            subprocess.run(["systemctl", "start", "irqbalance"], capture_output=True, timeout=30)
        self.done = False


def assign_cpus(facts: Facts) -> dict[int, int]:
    """Queue -> the CPU its IRQ gets: a queue already alone on one CPU keeps it; the others
    take free CPUs, those of the NIC's NUMA node first.  More queues than CPUs wrap around."""
    qs = facts.queues
    cpus = list(facts.cpus)
    node = facts.nic.numa_node if facts.nic is not None else None
    if node is not None and facts.numa:
        cpus.sort(key=lambda c: (facts.numa.get(c) != node, c))
    single = [q.cpus[0] for q in qs if len(q.cpus) == 1]
    out: dict[int, int] = {}
    used: set[int] = set()
    for q in qs:
        if len(q.cpus) == 1 and single.count(q.cpus[0]) == 1 and q.cpus[0] in cpus:
            out[q.queue] = q.cpus[0]
            used.add(q.cpus[0])
    free = [c for c in cpus if c not in used]
    i = 0
    for q in qs:
        if q.queue in out:
            continue
        if free:
            out[q.queue] = free.pop(0)
        else:  # more queues than CPUs
            out[q.queue] = cpus[i % len(cpus)]
            i += 1
    return out


def plan(facts: Facts, *, stop_irqbalance: bool = False) -> list[Change]:
    """The changes --fix would make on this host (nothing for what is fine already)."""
    root = facts.root
    changes: list[Change] = []
    if facts.queues and pinning_problems(facts):
        pins = assign_cpus(facts)
        for q in facts.queues:
            cpu = pins[q.queue]
            if tuple(q.cpus) == (cpu,):
                continue
            base = f"proc/irq/{q.irq}"
            if root.exists(f"{base}/smp_affinity_list"):
                path, old, new = f"{base}/smp_affinity_list", root.read(f"{base}/smp_affinity_list"), str(cpu)
            else:
                path, old, new = f"{base}/smp_affinity", root.read(f"{base}/smp_affinity"), D.format_cpu_mask([cpu])
            changes.append(Change("irq_affinity", f"pin queue {q.queue} IRQ {q.irq} ({q.name}) to cpu {cpu}: "
                                  f"/{path} {old} -> {new}", path, old, new))
    jit = "proc/sys/net/core/bpf_jit_enable"
    if facts.jit.get("bpf_jit_enable") not in (None, 1):
        old = str(facts.jit["bpf_jit_enable"])
        changes.append(Change("sysctl", f"sysctl net.core.bpf_jit_enable={1} (was {old}): /{jit}", jit, old, "1",
                              init_netns=True))
    if "/sys/fs/bpf" not in facts.bpffs:
        changes.append(Change("mount", f"mount -t bpf bpf {root.join('sys/fs/bpf')}", "sys/fs/bpf", None, "bpf"))
    if stop_irqbalance and facts.irqbalance:
        systemd = root.is_real and shutil.which("systemctl") and os.path.isdir("/run/systemd/system")
        how = "systemctl" if systemd else "signal"
        what = "systemctl stop irqbalance" if systemd else \
            f"stop irqbalance: SIGTERM to pid {', '.join(map(str, facts.irqbalance))}"
        changes.append(Change("irqbalance", what, "", None, how, pids=tuple(facts.irqbalance)))
    return changes


def apply(changes: Sequence[Change], root: HostRoot, out: Callable[[str], None] = print) -> None:
    """Make each change, printing it first; on a failure undo the ones made and raise KernelError."""
    for n, ch in enumerate(changes):
        out(f"fix: {ch.describe}")
        try:
            ch.apply(root)
        except OSError as exc:
            made = [c for c in changes[:n] if c.done]
            out(f"fix: failed: {exc.strerror or exc}; undoing {len(made)} change{'s' * (len(made) != 1)}")
            for c in reversed(made):
                try:
                    c.undo(root)
                    out(f"undo: {c.describe}")
                except OSError as undo_exc:  # pragma: no cover - reported, nothing more to do
                    out(f"undo failed: {c.describe}: {undo_exc}")
            raise KernelError(f"fix {ch.describe}", exc.errno or 5) from None
