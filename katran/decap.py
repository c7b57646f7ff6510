"""Decap for the real servers: attach the XDP decap program, put the VIPs on ``lo``.

A real behind katran receives IPIP / IP6IP6 / IPv4-in-IPv6 packets; the decap
program strips the outer header so the stack delivers the inner packet to a socket
bound to the VIP (which must be a local address, hence ``lo``).

The program and its maps are pinned under ``<pin_root>/decap_<intf>/`` so that
``install`` is idempotent and ``stats``/``uninstall`` work from another process.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import attrs

from . import contract
from .errors import KernelError, NotFoundError, ValidationError
from .kernel import Kernel, resolve
from .models import PacketResult, check_int, parse_address

DECAP_PROG_NAME = "xdp_decap"
DEFAULT_OBJECT = Path(__file__).resolve().parent / "bpf" / "obj" / "decap.bpf.o"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/katran"
PINNED_MAPS = tuple(contract.DECAP.maps)  # decap_counters, tpr_server_id, decap_host_addrs
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

_U32 = struct.Struct("=I")
_STATS = contract.DECAP_STATS
_HOST_V4 = contract.DECAP_HOST_SLOTS.value("DECAP_HOST_V4")
_HOST_V6 = contract.DECAP_HOST_SLOTS.value("DECAP_HOST_V6")


@attrs.frozen
class DecapStats:
    """decap_counters summed over CPUs."""

    decap_v4: int = 0
    decap_v6: int = 0
    total: int = 0
    tpr_misrouted: int = 0
    tpr_total: int = 0
    passed: int = 0


def sum_stats(per_cpu: Sequence[bytes]) -> DecapStats:
    totals = [0] * len(_STATS.fields)
    for raw in per_cpu:
        for i, v in enumerate(_STATS.unpack(raw)):
            totals[i] += v
    return DecapStats(*totals)


def pin_dir(intf: str, pin_root: Union[str, os.PathLike] = DEFAULT_PIN_ROOT) -> Path:
    return Path(pin_root) / f"decap_{intf}"


def load_decap(
    prog_path: Optional[Union[str, os.PathLike]] = None,
    *,
    gue_dport: int = 0,
    strict_dst: bool = False,
    host_v4: Optional[str] = None,
    host_v6: Optional[str] = None,
    server_id: int = 0,
    kernel: Optional[Kernel] = None,
):
    """Open, set the knobs, load and provision the decap object -> LoadedObject."""
    k = resolve(kernel)
    gue_dport = check_int(gue_dport, "gue_dport", 0, 65535)
    server_id = check_int(server_id, "server_id", 0, 2**32 - 1)
    v4 = parse_address(host_v4, "host_v4") if host_v4 else None
    v6 = parse_address(host_v6, "host_v6") if host_v6 else None
    if v4 is not None and v4.version != 4:
        raise ValidationError("host_v4", host_v4, "expected an IPv4 address")
    if v6 is not None and v6.version != 6:
        raise ValidationError("host_v6", host_v6, "expected an IPv6 address")
    if strict_dst and v4 is None and v6 is None:
        raise ValidationError("strict_dst", strict_dst, "needs host_v4 and/or host_v6")
    spec = k.open_object(prog_path or DEFAULT_OBJECT)
    try:
        contract.DECAP.check(prog_path or DEFAULT_OBJECT)  # missing map / knob / layout: ContractError
        spec.set_rodata("decap_gue_dport", gue_dport)
        spec.set_rodata("decap_strict_dst", int(bool(strict_dst)))
        obj = spec.load()
    finally:
        spec.close()
    try:
        if server_id:
            obj.map("tpr_server_id").update(_U32.pack(0), _U32.pack(server_id))
        if v4 is not None:
            host = contract.DECAP_HOST_ADDR.pack(v4.packed.ljust(16, b"\0"))
            obj.map("decap_host_addrs").update(_U32.pack(_HOST_V4), host)
        if v6 is not None:
            obj.map("decap_host_addrs").update(_U32.pack(_HOST_V6), contract.DECAP_HOST_ADDR.pack(v6.packed))
    except Exception:
        obj.close()
        raise
    return obj


def run_packet(obj, data: bytes) -> PacketResult:
    """One frame through a loaded decap object (BPF_PROG_TEST_RUN)."""
    res = obj.program(DECAP_PROG_NAME).test_run(bytes(data))
    return PacketResult(XDP_VERDICTS.get(res.retval, str(res.retval)), res.retval, res.data, res.duration_ns)


def stats_of(obj) -> DecapStats:
    return sum_stats(obj.map("decap_counters").lookup(_U32.pack(0)) or [])


@attrs.frozen
class DecapStatus:
    intf: str
    prog_id: int
    newly_attached: bool
    vips_added: tuple
    rp_filter: dict
    warnings: tuple


def _vips(vips: Iterable[str]) -> list[str]:
    return [str(parse_address(v, "vip")) for v in vips]


def check_rp_filter(intf: str, kernel: Optional[Kernel] = None) -> tuple[dict, list[str]]:
    """rp_filter values and a warning when strict mode would drop decapsulated packets."""
    values = resolve(kernel).rp_filter(intf)
    warnings = []
    if max(values.values()) == 1:
        warnings.append(
            f"rp_filter is strict (all={values['all']}, {intf}={values[intf]}): decapsulated packets "
            f"whose client address is not routed via {intf} will be dropped; set it to 0 or 2"
        )
    return values, warnings


def install(
    intf: str,
    vips: Iterable[str] = (),
    *,
    prog_path: Optional[Union[str, os.PathLike]] = None,
    mode: str = "native",
    pin_root: Union[str, os.PathLike] = DEFAULT_PIN_ROOT,
    lo: str = "lo",
    fix_rp_filter: Optional[int] = None,
    kernel: Optional[Kernel] = None,
    **knobs,
) -> DecapStatus:
    """Attach the decap program to ``intf`` (once) and put ``vips`` on ``lo`` (idempotent)."""
    k = resolve(kernel)
    vip_list = _vips(vips)
    ifindex = k.ifindex(intf)
    pins = pin_dir(intf, pin_root)
    attached = k.xdp_attached_prog_id(ifindex, mode)
    ours = _pinned_prog_id(pins, k)
    newly = False
    if attached and attached == ours:
        prog_id = ours
    elif attached:
        raise KernelError(f"install decap on {intf}", errno.EBUSY,
                          f"another XDP program (id {attached}) is attached; remove it first")
    else:
        k.ensure_bpffs()
        k.remove_pin_dir(pins)
        obj = load_decap(prog_path, kernel=k, **knobs)
        try:
            prog = obj.program(DECAP_PROG_NAME)
            prog.attach_xdp(ifindex, mode)
            try:
                k.make_pin_dir(pins)
                prog.pin(pins / "prog")
                for name in PINNED_MAPS:
                    obj.map(name).pin(pins / name)
            except Exception:
                k.detach_xdp(ifindex, mode)
                k.remove_pin_dir(pins)
                raise
            prog_id = prog.id
            newly = True
        finally:
            obj.close()
    added = tuple(v for v in vip_list if k.add_host_address(lo, v))
    if fix_rp_filter is not None:
        k.set_rp_filter(intf, check_int(fix_rp_filter, "rp_filter", 0, 2))
        if k.rp_filter(intf)["all"] == 1 and fix_rp_filter != 1:
            k.set_rp_filter("all", fix_rp_filter)
    values, warnings = check_rp_filter(intf, k)
    return DecapStatus(intf, prog_id, newly, added, values, tuple(warnings))


def uninstall(
    intf: str,
    vips: Iterable[str] = (),
    *,
    mode: str = "native",
    pin_root: Union[str, os.PathLike] = DEFAULT_PIN_ROOT,
    lo: str = "lo",
    kernel: Optional[Kernel] = None,
) -> bool:
    """Detach our program (if attached), drop the pins and the ``vips`` from ``lo``.

    Returns True when something was removed; a second call is a no-op.
    """
    k = resolve(kernel)
    vip_list = _vips(vips)
    pins = pin_dir(intf, pin_root)
    removed = False
    try:
        ifindex = k.ifindex(intf)
    except NotFoundError:
        ifindex = 0
    ours = _pinned_prog_id(pins, k)
    if ifindex and ours and k.xdp_attached_prog_id(ifindex, mode) == ours:
        k.detach_xdp(ifindex, mode)
        removed = True
    removed |= k.remove_pin_dir(pins)
    for v in vip_list:
        removed |= k.del_host_address(lo, v)
    return removed


def stats(intf: str, pin_root: Union[str, os.PathLike] = DEFAULT_PIN_ROOT,
          kernel: Optional[Kernel] = None) -> DecapStats:
    """Counters of the decap program installed on ``intf``."""
    k = resolve(kernel)
    path = pin_dir(intf, pin_root) / "decap_counters"
    if not k.is_pinned(path):
        raise NotFoundError("decap program on interface", intf)
    with k.map_by_pin(path) as m:
        return sum_stats(m.lookup(_U32.pack(0)) or [])


def _pinned_prog_id(pins: Path, k: Kernel) -> int:
    if not k.is_pinned(pins / "prog"):
        return 0
    with k.program_by_pin(pins / "prog") as prog:
        return prog.id
