"""Logs an operator can use: text or JSON lines, a start-up summary, an audit trail.

* :func:`setup` configures the root logger of a server or tool: ``text`` (one readable line,
  structured fields appended as ``key=value``) or ``json`` (one JSON object per line with
  ``time``, ``level``, ``logger``, ``message`` and the record's structured fields).
  Structured fields are passed as ``log.info(msg, extra={"fields": {...}})``.  Every message
  and every string field is ASCII and truncated (:func:`katran.errors.safe_text`): a 4 MB
  input never becomes a 4 MB log line.
* :func:`map_memory` estimates the kernel memory of every balancer map from the configured
  sizes (:func:`katran.dataplane.map_sizes`), the key/value sizes of :mod:`katran.contract`
  and the number of CPUs (per-CPU maps), with the kernel's own accounting (the ``memlock``
  of ``/proc/PID/fdinfo``; within ~1% of it).
* :func:`startup_summary` is the one line a server logs once it is started: interface, mode
  (standalone / shared + slot), program id, attach mode, map memory per map and in total,
  and what the connection table (``lru_size``) costs when it dominates.
* :func:`audit` logs one successful change (logger ``katran.audit``): the RPC, the caller
  (peer, credential) and what changed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, Mapping, Optional, TextIO

from .errors import MAX_VALUE_TEXT, safe_text

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
AUDIT_LOGGER = "katran.audit"
MAX_FIELD_TEXT = 256  # longest string field value in a log line


# ------------------------------------------------------------------ formatting
def _field(value: Any) -> Any:
    """A structured field value safe for a log line (JSON types; strings ASCII and truncated)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {safe_text(k, MAX_VALUE_TEXT): _field(v) for k, v in list(value.items())[:64]}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        out = [_field(v) for v in items[:64]]
        if len(items) > 64:
            out.append(f"... ({len(items)} items)")
        return out
    return safe_text(value, MAX_FIELD_TEXT)


def record_fields(record: logging.LogRecord) -> dict:
    fields = getattr(record, "fields", None)
    return {safe_text(k, MAX_VALUE_TEXT): _field(v) for k, v in fields.items()} if isinstance(fields, Mapping) else {}


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception as exc:  # noqa: BLE001 - a bad format string must not lose the record
        text = f"{record.msg!r} (unformattable: {exc})"
    return safe_text(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, ms), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        out = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = safe_text(self.formatException(record.exc_info), 4096)
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...`` (values ASCII and truncated)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _message(record)
        line = super().formatMessage(record)
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={json.dumps(v, ensure_ascii=True, separators=(',', ':'))}"
                                   if not isinstance(v, str) or " " in v or not v else f"{k}={v}"
                                   for k, v in fields.items())
        return line


def check_log_flags(log_format: str, log_level: str) -> None:
    """ValidationError naming the flag unless both values are known."""
    from .errors import ValidationError

    if log_format not in LOG_FORMATS:
        raise ValidationError("log_format", log_format, f"expected one of {', '.join(LOG_FORMATS)}")
    if log_level.lower() not in LOG_LEVELS:
        raise ValidationError("log_level", log_level, f"expected one of {', '.join(LOG_LEVELS)}")


def setup(log_format: str = "text", log_level: str = "info", stream: Optional[TextIO] = None) -> logging.Handler:
    """Route every log record (root logger) to ``stream`` (stderr) in ``log_format``; returns the handler.

    Replaces the handlers a previous ``setup`` installed (a server started twice in one process)."""
    check_log_flags(log_format, log_level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._katran = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_katran", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    handler._katran_old_level = root.level  # type: ignore[attr-defined]
    root.setLevel(log_level.upper())
    return handler


def remove(handler: logging.Handler) -> None:
    """Undo :func:`setup` (the handler it returned)."""
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(getattr(handler, "_katran_old_level", root.level))
    handler.close()


# ------------------------------------------------------------------ audit trail
def audit(rpc: str, change: Any, *, peer: Optional[str] = None, credential: Optional[str] = None,
          frontend: Optional[str] = None, logger: Optional[logging.Logger] = None) -> None:
    """Log one successful change: ``<rpc> by <peer>: <change>`` with the same as fields."""
    fields = {"audit": True, "rpc": rpc, "peer": peer, "credential": credential, "frontend": frontend,
              "change": safe_text(change, MAX_FIELD_TEXT)}
    who = peer or "local"
    (logger or logging.getLogger(AUDIT_LOGGER)).info(
        "%s by %s: %s", rpc, who, safe_text(change, MAX_FIELD_TEXT),
        extra={"fields": {k: v for k, v in fields.items() if v is not None}})


# ------------------------------------------------------------------ map memory
HTAB_ELEM = 48  # struct htab_elem (kernel/bpf/hashtab.c), before the key
HTAB_BUCKET = 16  # struct bucket
MAP_OVERHEAD = 900  # struct bpf_htab / bpf_array and per-CPU locks: a few hundred bytes per map


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def map_bytes(map_type: int, key_size: int, value_size: int, max_entries: int, ncpus: int) -> int:
    """Kernel memory (bytes) of one map as the kernel accounts it (preallocated maps)."""
    from .contract import MapType

    value = _round8(value_size)
    t = MapType(map_type)
    if t in (MapType.ARRAY, MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS):
        return MAP_OVERHEAD + (8 if t != MapType.ARRAY else value) * max_entries
    if t == MapType.PERCPU_ARRAY:
        return MAP_OVERHEAD + max_entries * (8 + value * ncpus)
    if t == MapType.LPM_TRIE:
        return 0  # not preallocated: grows with its entries
    if t == MapType.HASH_OF_MAPS:
        return MAP_OVERHEAD + HTAB_BUCKET * _pow2(max_entries)  # not preallocated: the buckets only
    if t in (MapType.HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH):
        percpu = t == MapType.LRU_PERCPU_HASH
        elems = max_entries + (ncpus if t == MapType.HASH else 0)
        elem = HTAB_ELEM + _round8(key_size) + (8 if percpu else value)
        return (MAP_OVERHEAD + HTAB_BUCKET * _pow2(max_entries) + elem * elems
                + (value * ncpus * max_entries if percpu else 0))
    if t == MapType.RINGBUF:
        return MAP_OVERHEAD + max_entries + 2 * 4096  # the data pages, the consumer and producer pages
    raise ValueError(f"no memory model for map type {t.name}")


def map_memory(cfg, ncpus: Optional[int] = None, *, abi=None, forwarding_cores: Optional[tuple] = None,
               entries: Optional[Mapping[str, int]] = None) -> dict:
    """{map name: bytes} of the balancer's maps (and ``lru[N cpus]`` for the per-CPU connection
    tables, ``global_lru[N cpus]`` with the global LRU), from ``cfg``'s sizes.

    ``abi``: only the maps the loaded object has (default: all of the contract's);
    ``forwarding_cores``: the cores that get a connection table (default: every CPU, or none with
    ``testing``; as ``DataPlane.forwarding_cores``); ``entries``: max_entries of the maps
    ``map_sizes`` does not size (the loaded object's; default: our object's)."""
    from . import contract
    from .contract import MapType
    from .dataplane import map_sizes

    ncpus = ncpus or os.cpu_count() or 1
    sizes = map_sizes(cfg)
    out: dict[str, int] = {}
    for name, mdef in contract.BALANCER_MAPS.items():
        if abi is not None and not abi.has_map(name):
            continue
        if name in ("lpm_src_v4", "lpm_src_v6") and not cfg.lpm_src_lookup:
            continue
        mtype = mdef.type
        if name == "server_id_map" and cfg.enable_cid_v3:
            mtype = MapType.HASH
        n = sizes.get(name) or (entries or {}).get(name) or _object_entries(name)
        if n is None:
            continue
        out[name] = map_bytes(mtype, mdef.key_size, mdef.value_size, n, ncpus)
    cores = forwarding_cores
    if cores is None:
        cores = () if cfg.testing and cfg.forwarding_cores is None else (cfg.forwarding_cores or tuple(range(ncpus)))
    if cores:
        per_core = max(1, cfg.lru_size // len(cores))
        lru = contract.BALANCER_MAPS["lru_mapping"].inner
        out[f"lru[{len(cores)} cpus]"] = len(cores) * map_bytes(
            lru.type, lru.key_size, lru.value_size, per_core, ncpus)
        if cfg.global_lru:
            glru = contract.BALANCER_MAPS["global_lru_maps"].inner
            out[f"global_lru[{len(cores)} cpus]"] = len(cores) * map_bytes(
                glru.type, glru.key_size, glru.value_size, cfg.global_lru_size, ncpus)
    return out


def _object_entries(name: str) -> Optional[int]:
    """max_entries the object itself gives a map we do not size (small fixed maps)."""
    from .contract import BALANCER_MAPS

    fixed = {"lru_mapping": 1024, "global_lru_maps": 1024, "vip_miss_stats": 1, "quic_stats_map": 1,
             "stable_rt_stats": 1, "tpr_stats_map": 1, "ctl_array": 16, "subprograms": 2, "pckt_srcs": 2,
             "fallback_glru": 1000, "capture_scratch": 1, "capture_stats": 1,
             "flow_cache_stale": 1, "hot_stats": 1}
    return fixed.get(name) if name in BALANCER_MAPS else None


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def startup_summary(lb) -> tuple[str, dict]:
    """(message, fields) of the start-up summary line of a started ``KatranLb``."""
    dp = lb._dp
    cfg = dp.config
    ncpus = os.cpu_count() or 1
    loaded = {name: m.max_entries for name, m in dp.obj.maps.items()} if dp.obj is not None else {}
    memory = map_memory(cfg, ncpus, abi=dp.abi, forwarding_cores=dp.forwarding_cores(), entries=loaded)
    total = sum(memory.values())
    shared = bool(cfg.root_map_path)
    try:
        prog_id = dp.program().id
    except Exception:  # noqa: BLE001 - a fake kernel's program may have no id
        prog_id = None
    fields = {
        "interface": cfg.main_interface or None,
        "mode": "testing" if cfg.testing else ("shared" if shared else "standalone"),
        "slot": cfg.root_map_pos if shared else None,
        "root_map": cfg.root_map_path if shared else None,
        "prog_id": prog_id,
        "attach_mode": None if cfg.testing or shared else cfg.xdp_attach_mode,
        "ncpus": ncpus,
        "map_memory": memory,
        "map_memory_total": total,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    where = cfg.main_interface or "(no interface)"
    mode = fields["mode"] + (f" slot {cfg.root_map_pos} of {cfg.root_map_path}" if shared else "")
    message = (f"Katran started on {where}: {mode}, program id {prog_id}"
               + (f", XDP {cfg.xdp_attach_mode}" if "attach_mode" in fields else "")
               + f", maps {human_bytes(total)}")
    lru = sum(v for k, v in memory.items() if k.startswith("lru[") or k == "fallback_cache")
    if total and lru * 2 > total:
        fields["lru_memory"] = lru
        message += (f"; lru_size={cfg.lru_size} costs {human_bytes(lru)} on this {ncpus}-CPU host"
                    f" ({100 * lru // total}% of it)")
    return message, fields


def log_startup_summary(lb, logger: Optional[logging.Logger] = None) -> None:
    message, fields = startup_summary(lb)
    (logger or logging.getLogger("katran")).info("%s", message, extra={"fields": fields})
