"""Prometheus metrics of a KatranLb: a custom collector that reads the BPF maps live.

A scrape takes one ``KatranLb.counter_snapshot()`` (under the balancer's lock:
the VIP and real numbers, then one batch read of every counter map, per-CPU
values summed) and turns it into metric families. Names follow Prometheus'
conventions: ``katran_`` prefix, ``_total`` counters, labels ``vip``
("10.0.0.1:80/tcp", "[fc00::1]:443/udp"), ``real`` (address), ``class``.
The metric table is ``docs/observability.md``.

The control plane adds ``RpcMetrics`` (RPCs by method and status, a latency
histogram; fed by the frontends) and ``MetricsEndpoint`` (an HTTP server for
``/metrics``, what the servers' ``-metrics_addr`` starts).
"""

from __future__ import annotations

import gc
import ipaddress
import operator
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import attrs
import numpy as np

from . import structs
from .errors import KatranError, ValidationError
from .models import VipKey

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

DEFAULT_METRICS_HOST = "127.0.0.1"
# the largest values buffer of one batch-read syscall (bytes)
_BATCH_BYTES = 16 << 20
# latency buckets of the RPC histogram (seconds): control-plane calls take 0.1 ms .. seconds
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
               2.5, 5.0, 10.0)


# ------------------------------------------------------------------ reading the maps
def read_u64_table(bpf_map, per_cpu_row: Optional[int] = None, per_cpu_field: int = 0) -> tuple[np.ndarray, list]:
    """A map of structs of __u64 counters as an array (max_entries x fields), CPUs summed,
    and field ``per_cpu_field`` of row ``per_cpu_row`` for each CPU (``[]`` when not asked for).

    One batch lookup (a loop of lookups where the kernel has no batch op); rows of
    absent keys are zero. Keys must be u32 indices (arrays).
    """
    from .adapter import bpf

    fields = bpf_map.value_size // 8
    slot = (bpf_map.value_size + 7) // 8  # per-CPU values are 8-byte aligned
    ncpu = bpf.num_possible_cpus() if bpf_map.per_cpu else 1
    chunk = max(1, min(bpf_map.max_entries, _BATCH_BYTES // (slot * 8 * ncpu)))
    batch = getattr(bpf_map, "lookup_batch_raw", None)
    raw = batch(chunk) if batch is not None else None
    if raw is None:  # no batch op (old kernels; a test kernel): one lookup per element
        items = list(bpf_map.items())
        pad = slot * 8
        raw = (b"".join(k for k, _ in items),
               b"".join(b"".join(x.ljust(pad, b"\0") for x in (v if bpf_map.per_cpu else [v])) for _, v in items),
               len(items))
    keys, values, n = raw
    out = np.zeros((bpf_map.max_entries, fields), dtype=np.uint64)
    if n == 0:
        return out, [0] * ncpu if per_cpu_row is not None else []
    idx = np.frombuffer(keys, dtype="<u4", count=n)
    vals = np.frombuffer(values, dtype="<u8").reshape(n, ncpu, slot)[:, :, :fields]
    out[idx] = vals.sum(axis=1, dtype=np.uint64)
    per_cpu = []
    if per_cpu_row is not None:
        hit = np.flatnonzero(idx == per_cpu_row)
        per_cpu = vals[hit[0], :, per_cpu_field].tolist() if len(hit) else [0] * ncpu
    return out, per_cpu


@attrs.frozen
class CounterSnapshot:
    """Everything one scrape shows, read at one point in time (``KatranLb.counter_snapshot``).

    Tables are numpy arrays (rows = map index, columns = counter fields, CPUs summed).
    """

    started: bool
    attached: bool
    config_generation: int
    vips: Optional[list] = None  # (VipKey, vip number); None: unchanged since the caller's version
    reals: Optional[list] = None  # (address, real number); None likewise
    max_vips: int = 0
    stats: Optional[np.ndarray] = None  # `stats`: per-VIP rows, then globals at max_vips + N
    per_cpu_packets: list = attrs.field(factory=list)
    reals_stats: Optional[np.ndarray] = None
    decap_vip_stats: Optional[np.ndarray] = None
    server_id_stats: Optional[np.ndarray] = None
    quic: Optional[dict] = None
    tpr: Optional[dict] = None
    stable_rt: Optional[dict] = None
    hc: Any = None  # healthcheck.HcStats or None
    lb_stats: tuple = (0, 0)  # failed bpf calls, failed address validations
    read_seconds: float = 0.0
    version: int = 0  # KatranLb's state version (VIPs and reals change only with it)

    def global_counter(self, which: int) -> tuple[int, int]:
        row = self.stats[self.max_vips + which]
        return int(row[0]), int(row[1])


def _fields_of(table: np.ndarray, fields: tuple) -> dict:
    return {name: int(v) for name, v in zip(fields, table[0])}


# What katran.watch last saw (None: no watch runs; the server process runs one balancer).
_watched_attached: Optional[bool] = None


def set_dataplane_attached(attached: bool) -> None:
    """Called by katran.watch each time it checks who is attached."""
    global _watched_attached
    _watched_attached = bool(attached)


def read_snapshot(obj, *, vips: Optional[list], reals: Optional[list], max_vips: int, hc, lb_stats: tuple,
                  config_generation: int, attached: bool, version: int) -> CounterSnapshot:
    """Read every counter map of a loaded balancer object (``KatranLb`` calls this under its lock)."""
    t0 = time.perf_counter()
    maps = obj.maps
    stats, per_cpu = read_u64_table(maps["stats"], per_cpu_row=max_vips + structs.XDP_TOTAL_CNTR)
    if "hot_stats" in maps:  # the global counters the per-packet path keeps there (dataplane.percpu_global)
        hot, hot_cpu = read_u64_table(maps["hot_stats"], per_cpu_row=0, per_cpu_field=2 * structs.XDP_TOTAL_CNTR)
        pairs = hot[0].reshape(-1, 2)
        stats[max_vips:max_vips + len(pairs)] += pairs
        per_cpu = [a + b for a, b in zip(per_cpu, hot_cpu)]

    def table(name: str) -> Optional[np.ndarray]:
        return read_u64_table(maps[name])[0] if name in maps else None

    def counters(name: str, fields: tuple) -> Optional[dict]:
        t = table(name)
        return None if t is None else _fields_of(t, fields)

    return CounterSnapshot(
        started=True,
        attached=attached,
        config_generation=config_generation,
        vips=vips,
        reals=reals,
        max_vips=max_vips,
        stats=stats,
        per_cpu_packets=per_cpu,
        reals_stats=table("reals_stats"),
        decap_vip_stats=table("decap_vip_stats"),
        server_id_stats=table("server_id_stats"),
        quic=counters("quic_stats_map", structs.QUIC_STATS_FIELDS),
        tpr=counters("tpr_stats_map", structs.TPR_STATS_FIELDS),
        stable_rt=counters("stable_rt_stats", structs.STABLE_RT_STATS_FIELDS),
        hc=hc.stats() if hc is not None else None,
        lb_stats=tuple(lb_stats),
        read_seconds=time.perf_counter() - t0,
        version=version,
    )


# ------------------------------------------------------------------ the metric table
# Global counters of `stats[max_vips + N]`: (counter index, metric, help, label, (v1 label value,
# v2 label value)); a None label value leaves that half out. Label None: v1 and v2 are two metrics.
GLOBAL_COUNTERS: tuple = (
    (structs.LRU_CNTRS, "katran_lru_lookups", "Packets to a VIP that reached the connection-table (LRU) step",
     None, None),
    (structs.FALLBACK_LRU_CNTR, "katran_lru_fallback_packets",
     "Packets balanced with the fallback LRU (their CPU has no per-CPU LRU)", None, None),
    (structs.CH_DROP_STATS, "katran_ch_drops", "Packets dropped by the consistent-hashing step",
     "reason", ("real_invalid", "ring_slot_empty")),
    (structs.ENCAP_FAIL_CNTR, "katran_encap_failures", "Packets that could not be encapsulated, by real family",
     "family", ("ipv4", "ipv6")),
    (structs.ICMP_TOOBIG_CNTRS, "katran_icmp_too_big", "ICMP too-big / packet-too-big sent for oversized packets",
     "family", ("ipv4", "ipv6")),
    (structs.LPM_SRC_CNTRS, "katran_src_routing_packets",
     "Packets to SRC_ROUTING VIPs, by source-routing result", "result", ("no_match", "routed")),
    (structs.REMOTE_ENCAP_CNTRS, "katran_inline_decap_dst_packets",
     "Packets to an inline-decap destination address", None, None),
    (structs.DECAP_CNTR, "katran_decap_packets", "Packets decapsulated, by outer IP family",
     "family", ("ipv4", "ipv6")),
    (structs.XPOP_DECAP_SUCCESSFUL, "katran_xpop_decap_packets",
     "Decapsulated packets balanced again, by inner IP family", "family", ("ipv4", "ipv6")),
    (structs.UDP_FLOW_MIGRATION_STATS, "katran_udp_flow_migrations",
     "UDP connection-table entries ignored because their real is down", None, None),
    (structs.GLOBAL_LRU_CNTR, "katran_global_lru_packets", "Global LRU lookups, by result",
     "result", ("no_map", "routed")),
    (structs.QUIC_ICMP_STATS, "katran_quic_icmp_packets", "ICMP errors to QUIC VIPs",
     "class", ("all", "ignorable")),
)
# not in Katran: packets to a VIP dropped as malformed; the per-cpu flow cache in front of the LRU
GLOBAL_COUNTERS += (
    (structs.MALFORMED_CNTR, "katran_malformed_packets", "Packets to a VIP dropped as malformed", "reason",
     ("bad_ip_length", "martian_source")),
    (structs.FLOW_CACHE_CNTR, "katran_flow_cache",
     "Flow-cache events: packets routed from a slot (hit), slots filled from the LRU (fill)", "event",
     ("hit", "fill")),
)
XDP_ACTIONS = ((structs.XDP_TX_CNTR, "tx"), (structs.XDP_PASS_CNTR, "pass"), (structs.XDP_DROP_CNTR, "drop"))


def vip_label(vip: VipKey) -> str:
    """The ``vip`` label value: "10.0.0.1:80/tcp", "[fc00::1]:443/udp"."""
    return str(vip)


@attrs.frozen
class _Layout:
    """Label values of the per-VIP and per-real series for one KatranLb state version."""

    version: int
    vip_labels: list
    vip_nums: np.ndarray
    real_labels: list
    real_nums: np.ndarray
    prefixes: dict = attrs.field(factory=dict)  # family name -> exposition line prefixes
    names: dict = attrs.field(factory=dict)  # ("vip"|"real", number) -> (key object, label string)


def _labels(kind: str, items: list, old: dict, new: dict, name) -> tuple[list, np.ndarray]:
    labels = []
    for key, num in items:
        hit = old.get((kind, num))
        if hit is None or hit[0] is not key:  # the same object still holds that number: same label
            hit = (key, name(key))
        new[(kind, num)] = hit
        labels.append(hit[1])
    return labels, np.fromiter((num for _, num in items), dtype=np.int64, count=len(items))


def _layout(version: int, vips: list, reals: list, previous: Optional[_Layout] = None) -> _Layout:
    old = previous.names if previous is not None else {}
    names: dict = {}
    vip_labels, vip_nums = _labels("vip", vips, old, names, vip_label)
    real_labels, real_nums = _labels("real", reals, old, names, str)
    if (previous is not None and vip_labels == previous.vip_labels and real_labels == previous.real_labels
            and np.array_equal(vip_nums, previous.vip_nums) and np.array_equal(real_nums, previous.real_nums)):
        return attrs.evolve(previous, version=version)  # same series: keep the line prefixes too
    return _Layout(version, vip_labels, vip_nums, real_labels, real_nums, names=names)


class KatranCollector(Collector):
    """A prometheus_client collector over one KatranLb: every scrape reads the maps live.

    The label values of the per-VIP and per-real series are kept between scrapes
    while the VIPs and reals stay the same (``KatranLb`` state version).
    """

    def __init__(self, lb) -> None:
        self._lb = lb
        self._layout: Optional[_Layout] = None

    def describe(self) -> list:
        return []  # no fixed set of series: VIPs and reals come and go

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        layout = self._layout
        try:
            snap = self._lb.counter_snapshot(known_version=layout.version if layout else None)
        except KatranError:
            snap = None
        if snap is not None and snap.started:
            if snap.vips is not None or layout is None:
                layout = self._layout = _layout(snap.version, snap.vips or [], snap.reals or [], layout)
        yield from self.families(snap, layout)
        g = GaugeMetricFamily("katran_scrape_duration_seconds",
                              "Time this scrape took to read the balancer's maps and build the metrics")
        g.add_metric([], time.perf_counter() - t0)
        yield g

    def families(self, snap: Optional[CounterSnapshot], layout: Optional[_Layout] = None) -> Iterator[Metric]:
        up = GaugeMetricFamily("katran_dataplane_loaded", "1 when the balancer programs are loaded")
        up.add_metric([], 1 if snap is not None and snap.started else 0)
        yield up
        attached = GaugeMetricFamily("katran_dataplane_attached",
                                     "1 when the balancer is attached to its interface or root program "
                                     "(0 once the attachment watch sees it detached or replaced)")
        seen = _watched_attached is not False  # katran.watch: what is really attached now
        attached.add_metric([], 1 if snap is not None and snap.attached and seen else 0)
        yield attached
        gen = CounterMetricFamily("katran_config_generation",
                                  "Successful configuration changes of the load balancer since start")
        gen.add_metric([], snap.config_generation if snap is not None else self._lb.config_generation)
        yield gen
        if snap is None or not snap.started:
            return
        if layout is None or layout.version != snap.version:
            layout = _layout(snap.version, snap.vips or [], snap.reals or [], layout)
        yield from self._vip_families(snap, layout)
        yield from self._real_families(snap, layout)
        yield from self._global_families(snap)
        yield from self._feature_families(snap)

    # -------------------------------------------------------------- per VIP / per real
    def _vip_families(self, snap: CounterSnapshot, layout: _Layout) -> Iterator[Metric]:
        n_vips = GaugeMetricFamily("katran_vips", "Configured VIPs")
        n_vips.add_metric([], len(layout.vip_labels))
        yield n_vips
        tables = (
            (snap.stats, "katran_vip_packets", "katran_vip_bytes", "Packets balanced for the VIP",
             "Bytes balanced for the VIP"),
            (snap.decap_vip_stats, "katran_vip_decap_packets", None,
             "Packets to the VIP decapsulated (inline decap) and passed", None),
            (snap.server_id_stats, "katran_vip_sid_new_connections", "katran_vip_sid_lru_mismatches",
             "New connections of the VIP that will be server-id routed (QUIC initial, TPR SYN)",
             "Server-id routed packets of the VIP whose LRU entry named another real"),
        )
        for table, name1, name2, help1, help2 in tables:
            if table is None:
                continue
            rows = table[layout.vip_nums]
            yield BulkCounterFamily(name1, help1, "vip", layout.vip_labels, rows[:, 0], layout.prefixes)
            if name2:
                yield BulkCounterFamily(name2, help2, "vip", layout.vip_labels, rows[:, 1], layout.prefixes)

    def _real_families(self, snap: CounterSnapshot, layout: _Layout) -> Iterator[Metric]:
        n_reals = GaugeMetricFamily("katran_reals", "Reals in use (by VIPs, source routing or QUIC ids)")
        n_reals.add_metric([], len(layout.real_labels))
        yield n_reals
        if snap.reals_stats is None:
            return
        rows = snap.reals_stats[layout.real_nums]
        yield BulkCounterFamily("katran_real_packets", "Packets sent to the real", "real", layout.real_labels,
                                rows[:, 0], layout.prefixes)
        yield BulkCounterFamily("katran_real_bytes", "Bytes sent to the real", "real", layout.real_labels,
                                rows[:, 1], layout.prefixes)

    # -------------------------------------------------------------- globals
    def _global_families(self, snap: CounterSnapshot) -> Iterator[Metric]:
        total = snap.global_counter(structs.XDP_TOTAL_CNTR)
        fam = CounterMetricFamily("katran_xdp_input_packets", "Frames the balancer program ran on")
        fam.add_metric([], total[0])
        yield fam
        fam = CounterMetricFamily("katran_xdp_input_bytes", "Bytes of the frames the balancer program ran on")
        fam.add_metric([], total[1])
        yield fam
        pk = CounterMetricFamily("katran_xdp_packets", "Frames by XDP verdict", labels=["action"])
        by = CounterMetricFamily("katran_xdp_bytes", "Bytes by XDP verdict", labels=["action"])
        for which, action in XDP_ACTIONS:
            v1, v2 = snap.global_counter(which)
            pk.add_metric([action], v1)
            by.add_metric([action], v2)
        yield pk
        yield by
        cpu = CounterMetricFamily("katran_cpu_packets", "Frames the balancer program ran on, by CPU",
                                  labels=["cpu"])
        for i, v in enumerate(snap.per_cpu_packets):
            cpu.add_metric([str(i)], v)
        yield cpu

        lookups, misses = snap.global_counter(structs.LRU_CNTRS)
        syn, non_syn = snap.global_counter(structs.LRU_MISS_CNTR)
        fam = CounterMetricFamily("katran_lru_misses", "Packets to VIPs not found in the connection table (LRU)")
        fam.add_metric([], misses)
        yield fam
        fam = CounterMetricFamily("katran_lru_tcp_misses", "TCP LRU misses by class (SYN / non-SYN)",
                                  labels=["class"])
        fam.add_metric(["syn"], syn)
        fam.add_metric(["non_syn"], non_syn)
        yield fam
        for which, name, help_, label, values in GLOBAL_COUNTERS:
            v1, v2 = snap.global_counter(which)
            if label is None:
                fam = CounterMetricFamily(name, help_)
                fam.add_metric([], v1)
            else:
                fam = CounterMetricFamily(name, help_, labels=[label])
                fam.add_metric([values[0]], v1)
                fam.add_metric([values[1]], v2)
            yield fam

    # -------------------------------------------------------------- feature structs, hc, control plane
    def _feature_families(self, snap: CounterSnapshot) -> Iterator[Metric]:
        for prefix, what, values in (("katran_quic", "QUIC routing", snap.quic),
                                     ("katran_tpr", "TCP server-id routing", snap.tpr),
                                     ("katran_stable_rt", "UDP stable routing", snap.stable_rt)):
            if values is None:
                continue
            for field, v in values.items():
                if field == "cid_invalid_server_id_sample":
                    fam = GaugeMetricFamily(f"{prefix}_{field}",
                                            f"{what}: last invalid server id seen (summed over CPUs)")
                else:
                    fam = CounterMetricFamily(f"{prefix}_{field}", f"{what}: {field.replace('_', ' ')}")
                fam.add_metric([], v)
                yield fam
        if snap.hc is not None:
            fam = CounterMetricFamily("katran_hc_packets", "Packets of the healthcheck forwarding program, by result",
                                      labels=["result"])
            for field in attrs.fields(type(snap.hc)):
                fam.add_metric([field.name], getattr(snap.hc, field.name))
            yield fam
        fam = CounterMetricFamily("katran_bpf_failed_calls", "Failed BPF map updates of the control plane")
        fam.add_metric([], snap.lb_stats[0])
        yield fam
        fam = CounterMetricFamily("katran_addr_validation_failures", "Addresses the control plane rejected")
        fam.add_metric([], snap.lb_stats[1])
        yield fam


class BulkCounterFamily(Metric):
    """A counter family of many series with one label (per VIP, per real).

    ``samples`` are built only when a generic consumer asks for them;
    ``render_text`` writes the exposition lines straight from the arrays.
    Label values here are addresses and VIP names: nothing to escape.
    """

    def __init__(self, name: str, documentation: str, label: str, label_values: list, values: np.ndarray,
                 prefix_cache: Optional[dict] = None) -> None:
        self._built = None
        super().__init__(name, documentation, "counter")
        self.label = label
        self.label_values = label_values
        self.values = values
        self._prefix_cache = prefix_cache if prefix_cache is not None else {}

    @property
    def samples(self) -> list:
        if self._built is None:
            sample_name = self.name + "_total"
            self._built = [Sample(sample_name, {self.label: lv}, float(v), None, None)
                           for lv, v in zip(self.label_values, self.values.tolist())]
        return self._built

    @samples.setter
    def samples(self, value: list) -> None:
        self._built = list(value) if value else None

    def render_text(self) -> str:
        name = self.name + "_total"
        head = f"# HELP {name} {self.documentation}\n# TYPE {name} counter\n"
        if not self.label_values:
            return head
        prefixes = self._prefix_cache.get(name)
        if prefixes is None:
            prefixes = self._prefix_cache[name] = [f'{name}{{{self.label}="{lv}"}} ' for lv in self.label_values]
        return head + "\n".join(map(operator.add, prefixes, map(str, self.values.tolist()))) + "\n"


class _One:
    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> list:
        return [self._family]


def render_text(families: Iterable[Metric]) -> str:
    """The text exposition of ``families``, as ``generate_latest`` writes it (bulk families fast).

    The cyclic garbage collector is paused meanwhile: a big scrape makes hundreds of
    thousands of short-lived strings, whose allocation would start full collections over
    the whole heap (about a third of the time of a 200,000-sample scrape); nothing made
    here is cyclic.
    """
    from prometheus_client import generate_latest

    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        out = []
        for fam in families:
            if isinstance(fam, BulkCounterFamily):
                out.append(fam.render_text())
            else:
                out.append(generate_latest(_One(fam)).decode())
        return "".join(out)
    finally:
        if paused:
            gc.enable()


class HcCheckerCollector(Collector):
    """Health-check state of a ``katran.hc_checker.HcChecker``: per VIP and real."""

    def __init__(self, checker) -> None:
        # a checker, or a callable returning the current one (None: no checks)
        self._checker = checker if callable(checker) and not hasattr(checker, "states") else (lambda: checker)

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        checker = self._checker()
        if checker is None:
            return
        labels = ["vip", "real"]
        healthy = GaugeMetricFamily("katran_real_healthy", "1 when the real passes its health check",
                                    labels=labels)
        applied = GaugeMetricFamily("katran_hc_check_action_applied",
                                    "1 when the checker's drain/remove of the real is in effect", labels=labels)
        latency = GaugeMetricFamily("katran_healthcheck_duration_seconds", "Duration of the last health check of the real", labels=labels)
        checks = CounterMetricFamily("katran_hc_checks", "Health checks run", labels=labels)
        transitions = CounterMetricFamily("katran_hc_check_transitions", "Health changes", labels=labels)
        for st in checker.states():
            lv = [vip_label(st.vip), str(st.real)]
            healthy.add_metric(lv, 1 if st.healthy else 0)
            applied.add_metric(lv, 1 if st.applied else 0)
            latency.add_metric(lv, st.last_latency)
            checks.add_metric(lv, st.checks)
            transitions.add_metric(lv, st.transitions)
        yield from (healthy, applied, latency, checks, transitions)


# ------------------------------------------------------------------ RPC metrics
def status_for_exception(exc: BaseException) -> str:
    """The status label of an RPC that raised ``exc`` (gRPC code names for katran errors)."""
    from . import errors

    for cls, name in ((errors.ValidationError, "INVALID_ARGUMENT"), (errors.NotFoundError, "NOT_FOUND"),
                      (errors.AlreadyExistsError, "ALREADY_EXISTS"), (errors.CapacityError, "RESOURCE_EXHAUSTED"),
                      (errors.FeatureNotEnabledError, "FAILED_PRECONDITION"), (errors.KernelError, "INTERNAL"),
                      (errors.BuildError, "INTERNAL")):
        if isinstance(exc, cls):
            return name
    return "UNKNOWN"


class RpcMetrics:
    """``katran_rpc_requests_total{frontend,method,status}`` and
    ``katran_rpc_duration_seconds{frontend,method}`` in ``registry``."""

    def __init__(self, registry: CollectorRegistry, frontend: str) -> None:
        self.frontend = frontend
        self.requests = Counter("katran_rpc_requests", "RPCs handled, by method and status",
                                ["frontend", "method", "status"], registry=registry)
        self.duration = Histogram("katran_rpc_duration_seconds", "Time to handle an RPC, by method",
                                  ["frontend", "method"], registry=registry, buckets=RPC_BUCKETS)

    def observe(self, method: str, status: str, seconds: float) -> None:
        self.requests.labels(self.frontend, method, status).inc()
        self.duration.labels(self.frontend, method).observe(seconds)

    def timed(self, method: str, call: Callable[[], Any], status_of_result: Callable[[Any], str] = lambda r: "OK"):
        """Run ``call()`` and record it; exceptions are recorded with their status and re-raised."""
        t0 = time.perf_counter()
        try:
            result = call()
        except BaseException as exc:
            self.observe(method, status_for_exception(exc), time.perf_counter() - t0)
            raise
        self.observe(method, status_of_result(result), time.perf_counter() - t0)
        return result


# ------------------------------------------------------------------ the /metrics endpoint
def parse_metrics_addr(value: object, field: str = "metrics_addr") -> tuple[str, int]:
    """"HOST:PORT", "[v6]:PORT", ":PORT" or "PORT" -> (host, port); no host means loopback."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, value, "expected HOST:PORT (or :PORT / PORT for loopback)")
    text = value.strip()
    host, port_s = DEFAULT_METRICS_HOST, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValidationError(field, value, "an IPv6 host needs brackets and a port: [::1]:9100")
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        host, port_s = text.rsplit(":", 1)
        if ":" in host:
            raise ValidationError(field, value, "an IPv6 host needs brackets: [::1]:9100")
        host = host or DEFAULT_METRICS_HOST
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValidationError(field, value, "the port must be a number in [0, 65535]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValidationError(field, value, f"host {host[:64]!r} is not an IP address") from None
    return host, int(port_s)


class _Forward(Collector):
    """Collects another registry (the RPC metrics) inside the endpoint's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return self._registry.collect()


class MetricsEndpoint:
    """``/metrics`` over HTTP: the collector of ``lb`` plus the RPC metrics of a frontend.

    ``addr`` is parsed by ``parse_metrics_addr``; port 0 picks a free port (see ``port``).
    ``registry`` holds everything (usable with any prometheus_client exporter);
    the endpoint renders it with ``render_text``.
    """

    def __init__(self, lb, addr: str, frontend: str) -> None:
        self.host, self.port = parse_metrics_addr(addr)
        self.collector = KatranCollector(lb)
        self.rpc_registry = CollectorRegistry(auto_describe=False)
        self.rpc = RpcMetrics(self.rpc_registry, frontend)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.registry.register(_Forward(self.rpc_registry))
        self._httpd = None
        self._thread = None

    def add_hc_checker(self, checker) -> None:
        """Also serve the health-check state of ``checker`` (a katran.hc_checker.HcChecker, or a
        callable returning the current one or None)."""
        self.registry.register(HcCheckerCollector(checker))

    def render(self) -> bytes:
        return render_text(self.registry.collect()).encode()

    def _app(self, environ, start_response):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        if environ.get("PATH_INFO", "/") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        body = self.render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        import socket
        import socketserver
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        try:
            self._httpd = make_server(self.host, self.port, self._app, Server, handler_class=Quiet)
        except OSError as exc:
            raise ValidationError("metrics_addr", f"{self.host}:{self.port}",
                                  f"cannot listen: {exc.strerror or exc}") from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="katran-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def scrape_text(lb) -> str:
    """One scrape of ``lb`` in the text exposition format (no HTTP)."""
    return render_text(KatranCollector(lb).collect())
