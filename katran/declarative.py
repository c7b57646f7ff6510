"""The declarative configuration: one YAML file holding the balancer's options and its
desired state, the live state read back in the same shape (``katran-cli -dump``, like
``ipvsadm-save``), and the minimal difference between the two applied all-or-nothing
(``katran-cli -apply FILE``, like ``ipvsadm-restore`` / ``kubectl apply``).

File format (version 1)::

    version: 1
    balancer:                 # KatranConfig fields: what a server flag can say, and every knob
      main_interface: eth0
      default_mac: 52:54:00:12:35:02
      lru_size: 1000000
      tcp_server_id_routing: true
    vips:
      - address: 10.100.1.1
        port: 80
        proto: tcp
        flags: [NO_SPORT]     # VipFlag names (or a number)
        hash_function: maglev_v2
        reals:
          - address: 10.200.1.2
            weight: 2
          - 10.200.1.3        # weight 1
        down_reals: [10.200.1.3]
    real_flags: {10.200.1.2: [LOCAL_REAL]}
    hc_dsts: {1000: 10.200.1.2}          # somark -> real
    quic_reals: {1234: 10.200.1.2}       # server id -> real
    src_routes: {10.9.0.0/16: 10.200.1.2}
    decap_dsts: [10.100.1.1]

Every error names the file, the line and the field (``ConfigFileError``); a file with an
error changes nothing. ``apply`` undoes what it wrote when the kernel fails halfway.
Only the domain API of :class:`~katran.lb.KatranLb` is used here.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Optional

import attrs

from .config import KatranConfig
from .errors import KatranError, ValidationError
from .bgp import BgpConfig, BgpPeer
from .hc_checker import CHECK_FIELDS, CheckSpec, HcConfig
from .models import (
    HashFunction,
    IPAddress,
    ModifyAction,
    QuicReal,
    Real,
    RealFlag,
    VipFlag,
    VipKey,
    check_int,
    format_mac,
    parse_address,
)

FORMAT_VERSION = 1
TOP_KEYS = ("version", "balancer", "vips", "real_flags", "hc_dsts", "quic_reals", "src_routes", "decap_dsts",
            "healthchecks", "bgp")
BGP_KEYS = ("router_id", "local_as", "local_address", "peers", "communities", "min_healthy", "bfd",
            "bfd_interval_ms", "bfd_multiplier", "hold_time", "keepalive_time", "state_dir")
BGP_PEER_KEYS = ("address", "asn")
VIP_KEYS = ("address", "port", "proto", "flags", "hash_function", "reals", "down_reals", "healthcheck")
REAL_KEYS = ("address", "weight", "healthcheck")
HEALTHCHECKS_KEYS = ("action", "all_down", "concurrency", "defaults")
CONFIG_FIELDS = tuple(a.name for a in attrs.fields(KatranConfig))
# options a running balancer can change without a restart
RUNTIME_FIELDS = ("default_mac", "flow_cache")
_MAX_TEXT = 120


class ConfigFileError(ValidationError):
    """A declarative file is invalid: names the file, the line and the field."""

    def __init__(self, source: str, line: Optional[int], field: str, value: object, reason: str) -> None:
        self.source = source
        self.line = line
        shown = repr(value)
        if len(shown) > _MAX_TEXT:
            shown = shown[:_MAX_TEXT] + "..."
        where = f"{source}:{line}" if line else source
        ValueError.__init__(self, f"{where}: {field}={shown}: {reason}")
        self.field, self.value, self.reason = field, value, reason


# ----------------------------------------------------------------------------- model
@attrs.frozen
class VipSpec:
    flags: int = 0
    hash_function: Optional[HashFunction] = None  # None: the balancer's default
    reals: dict = attrs.field(factory=dict)  # address -> weight
    down_reals: frozenset = frozenset()


@attrs.frozen
class Desired:
    """A whole configuration: balancer options (only those given) and the state."""

    balancer: dict = attrs.field(factory=dict)  # KatranConfig field -> value (as given)
    vips: dict = attrs.field(factory=dict)  # VipKey -> VipSpec
    real_flags: dict = attrs.field(factory=dict)  # address -> RealFlag bits (without IPV6)
    hc_dsts: dict = attrs.field(factory=dict)  # somark -> address
    quic_reals: dict = attrs.field(factory=dict)  # server id -> address
    src_routes: dict = attrs.field(factory=dict)  # ip_network -> address
    decap_dsts: frozenset = frozenset()
    healthchecks: Optional[HcConfig] = None  # the active health checks (katran.hc_checker)
    bgp: Optional[BgpConfig] = None  # the VIP announcement (katran.bgp)

    def katran_config(self, **overrides) -> KatranConfig:
        """The KatranConfig of the ``balancer`` section (``overrides`` win)."""
        return KatranConfig(**{**self.balancer, **overrides})


# ----------------------------------------------------------------------------- parsing
class _Doc:
    """A YAML document as plain values, remembering each value's line."""

    def __init__(self, text: str, source: str) -> None:
        import yaml

        self.source = source
        self.lines: dict[tuple, int] = {}
        try:
            node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when present
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigFileError(source, mark.line + 1 if mark else None, "yaml", "",
                                  str(getattr(exc, "problem", None) or exc)) from None
        self.loader = yaml.SafeLoader("")
        self.value = self._build(node, ()) if node is not None else {}

    def _build(self, node, path: tuple):
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for knode, vnode in node.value:
                key = self._scalar(knode, path)
                if key in out:
                    raise ConfigFileError(self.source, knode.start_mark.line + 1, _path_text(path + (key,)),
                                          key, "given twice")
                self.lines[path + (key,)] = knode.start_mark.line + 1
                out[key] = self._build(vnode, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(v, path + (i,)) for i, v in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node, path: tuple):
        import yaml

        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. an integer of a million digits
            raise ConfigFileError(self.source, node.start_mark.line + 1, _path_text(path), node.value,
                                  f"cannot be read: {str(exc)[:100]}") from None

    def error(self, path: tuple, value: object, reason: str) -> ConfigFileError:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line:
                break
        return ConfigFileError(self.source, line, _path_text(path), value, reason)


def _path_text(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _flags(doc: _Doc, path: tuple, value: object, enum_cls, limit: int) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return check_int(value, _path_text(path), 0, limit)
        except ValidationError as exc:
            raise doc.error(path, value, exc.reason) from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise doc.error(path, value, f"expected a list of {enum_cls.__name__} names or a number")
    out = 0
    for i, name in enumerate(value):
        try:
            out |= enum_cls[str(name).upper()]
        except KeyError:
            names = ", ".join(m.name for m in enum_cls)
            raise doc.error(path + (i,), name, f"unknown flag (one of {names})") from None
    return int(out)


def _mapping(doc: _Doc, path: tuple, value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(path, value, "expected a mapping")
    return value


def _list(doc: _Doc, path: tuple, value: object) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error(path, value, "expected a list")
    return value


def _unknown_keys(doc: _Doc, path: tuple, mapping: dict, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise doc.error(path + (key,), key, f"unknown key (expected one of {', '.join(allowed)})")


def _convert(doc: _Doc, path: tuple, fn: Callable, *args):
    try:
        return fn(*args)
    except ValidationError as exc:
        raise doc.error(path, exc.value, exc.reason) from None


def _address(doc: _Doc, path: tuple, value: object) -> IPAddress:
    return _convert(doc, path, parse_address, value if not isinstance(value, (int, float)) else str(value),
                    _path_text(path))


def _hash_function(doc: _Doc, path: tuple, value: object) -> Optional[HashFunction]:
    if value is None:
        return None
    names = {"maglev": HashFunction.MAGLEV, "maglev_v2": HashFunction.MAGLEV_V2}
    if isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return HashFunction(value)
    raise doc.error(path, value, "expected maglev or maglev_v2")


AUTO_FIELDS = ("default_mac", "forwarding_cores", "numa_nodes")


def _resolve_auto(doc: "_Doc", balancer: dict, netns: Optional[str]) -> dict:
    """``auto`` as the value of default_mac / forwarding_cores / numa_nodes: what the host
    shows for main_interface (katran.host, as the servers' -default_mac=auto)."""
    from .host import is_auto, resolve_auto_flags

    if not any(is_auto(balancer.get(k)) for k in AUTO_FIELDS):
        return balancer

    def text(value) -> str:
        if value is None:
            return ""
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)

    try:
        got = resolve_auto_flags(text(balancer.get("main_interface")), *(text(balancer.get(k)) for k in AUTO_FIELDS),
                                 netns=netns)
    except ValidationError as exc:
        field = "main_interface" if exc.field == "intf" else exc.field
        raise doc.error(("balancer", field) if field in balancer else ("balancer",), exc.value, exc.reason) from None
    out = dict(balancer)
    for k in AUTO_FIELDS:
        if is_auto(balancer.get(k)):
            out[k] = getattr(got, k) or None
    return out


def loads(text: str, source: str = "<config>", *, netns: Optional[str] = None) -> Desired:
    """Parse and validate a declarative file's text (raises ConfigFileError).  ``auto`` values
    of default_mac / forwarding_cores / numa_nodes are discovered on this host (in ``netns``)."""
    doc = _Doc(text, source)
    top = _mapping(doc, (), doc.value)
    _unknown_keys(doc, (), top, TOP_KEYS)
    version = top.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise doc.error(("version",), version, f"unsupported format version (this katran reads {FORMAT_VERSION})")

    balancer = _mapping(doc, ("balancer",), top.get("balancer"))
    _unknown_keys(doc, ("balancer",), balancer, CONFIG_FIELDS)
    balancer = _resolve_auto(doc, balancer, netns)
    if "hash_function" in balancer:  # a name, as dumps writes it, or 0/1
        hf = _hash_function(doc, ("balancer", "hash_function"), balancer["hash_function"])
        balancer = {**balancer, "hash_function": hf if hf is not None else HashFunction.MAGLEV}
    try:
        KatranConfig(**{"testing": True, **balancer})
    except ValidationError as exc:
        path = ("balancer", exc.field) if exc.field in balancer else ("balancer",)
        raise doc.error(path, exc.value, exc.reason) from None
    except (TypeError, ValueError) as exc:  # a converter that is not ours to name the field
        raise doc.error(("balancer",), "", str(exc)) from None

    vips: dict = {}
    real_flags: dict = {}
    hc_checks: dict = {}  # vip -> (path, given fields)
    hc_overrides: dict = {}  # vip -> {real: (path, given fields)}
    for i, entry in enumerate(_list(doc, ("vips",), top.get("vips"))):
        path = ("vips", i)
        entry = _mapping(doc, path, entry)
        _unknown_keys(doc, path, entry, VIP_KEYS)
        for key in ("address", "port", "proto"):
            if key not in entry:
                raise doc.error(path, entry, f"a vip needs {key}")
        try:
            vip = VipKey(str(entry["address"]), entry["port"], entry["proto"])
        except ValidationError as exc:  # field "vip.port" -> vips[i].port
            raise doc.error(path + (exc.field.rpartition(".")[2],), exc.value, exc.reason) from None
        if vip in vips:
            raise doc.error(path, str(vip), "vip listed twice")
        reals: dict = {}
        for j, real in enumerate(_list(doc, path + ("reals",), entry.get("reals"))):
            rpath = path + ("reals", j)
            if isinstance(real, dict):
                _unknown_keys(doc, rpath, real, REAL_KEYS)
                if "address" not in real:
                    raise doc.error(rpath, real, "a real needs address")
                addr = _address(doc, rpath + ("address",), real["address"])
                weight = _convert(doc, rpath + ("weight",), check_int, real.get("weight", 1),
                                  _path_text(rpath + ("weight",)), 0, 2**32 - 1)
                if "healthcheck" in real:
                    hc_overrides.setdefault(vip, {})[addr] = (rpath + ("healthcheck",), real["healthcheck"])
            else:
                addr, weight = _address(doc, rpath, real), 1
            if addr in reals:
                raise doc.error(rpath, str(addr), "real listed twice for this vip")
            reals[addr] = weight
        down = set()
        for j, addr in enumerate(_list(doc, path + ("down_reals",), entry.get("down_reals"))):
            a = _address(doc, path + ("down_reals", j), addr)
            if a not in reals:
                raise doc.error(path + ("down_reals", j), str(a), "a down real must be a real of this vip")
            down.add(a)
        if "healthcheck" in entry:
            hc_checks[vip] = (path + ("healthcheck",), entry["healthcheck"])
        elif vip in hc_overrides:
            path_, _ = next(iter(hc_overrides[vip].values()))
            raise doc.error(path_, "", "a real's healthcheck needs one on its vip")
        vips[vip] = VipSpec(
            flags=_flags(doc, path + ("flags",), entry.get("flags"), VipFlag, 2**32 - 1),
            hash_function=_hash_function(doc, path + ("hash_function",), entry.get("hash_function")),
            reals=reals, down_reals=frozenset(down))

    for key, value in _mapping(doc, ("real_flags",), top.get("real_flags")).items():
        addr = _address(doc, ("real_flags", key), key)
        bits = _flags(doc, ("real_flags", key), value, RealFlag, 255)
        if bits & RealFlag.IPV6:
            raise doc.error(("real_flags", key), value, "IPV6 is set by katran itself")
        real_flags[addr] = bits

    hc_dsts = {}
    for key, value in _mapping(doc, ("hc_dsts",), top.get("hc_dsts")).items():
        somark = _convert(doc, ("hc_dsts", key), check_int, key, "hc_dsts somark", 1, 2**32 - 1)
        hc_dsts[somark] = _address(doc, ("hc_dsts", key), value)

    quic = {}
    for key, value in _mapping(doc, ("quic_reals",), top.get("quic_reals")).items():
        q = _convert(doc, ("quic_reals", key), QuicReal, value if isinstance(value, str) else str(value), key)
        quic[q.id] = q.address

    routes = {}
    for key, value in _mapping(doc, ("src_routes",), top.get("src_routes")).items():
        try:
            net = ipaddress.ip_network(str(key), strict=True)
        except ValueError as exc:
            raise doc.error(("src_routes", key), key, f"not a network prefix ({exc})") from None
        routes[net] = _address(doc, ("src_routes", key), value)

    decap = frozenset(_address(doc, ("decap_dsts", j), a)
                      for j, a in enumerate(_list(doc, ("decap_dsts",), top.get("decap_dsts"))))
    return Desired(balancer=dict(balancer), vips=vips, real_flags=real_flags, hc_dsts=hc_dsts,
                   quic_reals=quic, src_routes=routes, decap_dsts=decap,
                   healthchecks=_healthchecks(doc, top, hc_checks, hc_overrides),
                   bgp=_bgp(doc, top, balancer, netns))


def _auto_address(doc: _Doc, path: tuple, balancer: dict, netns: Optional[str], what: str) -> str:
    """``auto`` in the bgp section: this host's address on main_interface (router_id,
    local_address) or its default gateway (a peer's address), so one file serves a fleet."""
    from .adapter import netlink

    intf = balancer.get("main_interface") or "eth0"
    try:
        if what == "gateway":
            gw = netlink.default_gateway(4, netns) or netlink.default_gateway(6, netns)
            if gw is None:
                raise doc.error(path, "auto", "no default gateway on this host to peer with")
            return gw[0]
        found = netlink.interface_addresses(str(intf), netns, 4)
    except KatranError as exc:
        raise doc.error(path, "auto", f"cannot read main_interface {str(intf)[:40]}: {exc}") from None
    if not found:
        raise doc.error(path, "auto", f"main_interface {str(intf)[:40]} has no IPv4 address")
    return found[0]


def _bgp(doc: _Doc, top: dict, balancer: dict, netns: Optional[str]) -> Optional[BgpConfig]:
    if "bgp" not in top:
        return None
    path = ("bgp",)
    section = _mapping(doc, path, top.get("bgp"))
    _unknown_keys(doc, path, section, BGP_KEYS)
    for key in ("router_id", "local_as", "peers"):
        if key not in section:
            raise doc.error(path, section, f"bgp needs {key}")
    given = dict(section)
    for key in ("router_id", "local_address"):
        if isinstance(given.get(key), str) and given[key].lower() == "auto":
            given[key] = _auto_address(doc, path + (key,), balancer, netns, "address")
    peers = []
    for i, peer in enumerate(_list(doc, path + ("peers",), section["peers"])):
        ppath = path + ("peers", i)
        peer = _mapping(doc, ppath, peer)
        _unknown_keys(doc, ppath, peer, BGP_PEER_KEYS)
        for key in BGP_PEER_KEYS:
            if key not in peer:
                raise doc.error(ppath, peer, f"a peer needs {key}")
        addr = peer["address"]
        if isinstance(addr, str) and addr.lower() == "auto":
            addr = _auto_address(doc, ppath + ("address",), balancer, netns, "gateway")
        try:
            peers.append(BgpPeer(address=str(addr), asn=peer["asn"]))
        except ValidationError as exc:
            raise doc.error(ppath + (exc.field.rpartition(".")[2],), exc.value, exc.reason) from None
    given["peers"] = peers
    if "communities" in given:
        given["communities"] = _list(doc, path + ("communities",), given["communities"])
    if "bfd" in given and not isinstance(given["bfd"], bool):
        raise doc.error(path + ("bfd",), given["bfd"], "expected true or false")
    try:
        return BgpConfig(**given)
    except ValidationError as exc:
        key = exc.field.rpartition(".")[2]
        raise doc.error(path + ((key,) if key in section else ()), exc.value, exc.reason) from None


def _check_spec(doc: _Doc, path: tuple, value: object, base: dict) -> CheckSpec:
    given = _mapping(doc, path, value)
    _unknown_keys(doc, path, given, CHECK_FIELDS)
    try:
        return CheckSpec(**{**base, **given})
    except ValidationError as exc:
        key = exc.field.rpartition(".")[2]
        raise doc.error(path + ((key,) if key in given else ()), exc.value, exc.reason) from None


def _healthchecks(doc: _Doc, top: dict, checks: dict, overrides: dict) -> Optional[HcConfig]:
    section = _mapping(doc, ("healthchecks",), top.get("healthchecks"))
    _unknown_keys(doc, ("healthchecks",), section, HEALTHCHECKS_KEYS)
    if not section and not checks:
        return None
    defaults = _mapping(doc, ("healthchecks", "defaults"), section.get("defaults"))
    _check_spec(doc, ("healthchecks", "defaults"), defaults, {})
    specs, per_real = {}, {}
    for vip, (path, given) in checks.items():
        specs[vip] = _check_spec(doc, path, given, defaults)
        vip_fields = {**defaults, **_mapping(doc, path, given)}
        for real, (rpath, rgiven) in overrides.get(vip, {}).items():
            per_real[(vip, real)] = _check_spec(doc, rpath, rgiven, vip_fields)
    try:
        return HcConfig(checks=specs, overrides=per_real, **{k: v for k, v in section.items() if k != "defaults"})
    except ValidationError as exc:
        raise doc.error(("healthchecks", exc.field), exc.value, exc.reason) from None


def load(path: str, *, netns: Optional[str] = None) -> Desired:
    """Read and validate a declarative file (raises ConfigFileError naming the file and line)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(path, None, "file", path, exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(path, None, "file", path, f"not UTF-8 text ({exc.reason})") from None
    return loads(text, path, netns=netns)


# ----------------------------------------------------------------------------- live state
def snapshot(lb, healthchecks: Optional[HcConfig] = None, bgp: Optional[BgpConfig] = None) -> Desired:
    """The live state of a started KatranLb, in the declarative shape (with the checker's config)."""
    cfg = lb.config
    balancer = {}
    for a in attrs.fields(KatranConfig):
        value = getattr(cfg, a.name)
        if a.name == "default_mac":
            value = lb.get_mac()
        if value != a.default and a.name not in ("testing",):
            balancer[a.name] = _plain(value)
    vips = {}
    real_flags = {}
    for vip in sorted(lb.get_all_vips(), key=_vip_order):
        reals = {}
        for r in lb.get_reals_for_vip(vip):
            reals[r.address] = r.weight
            bits = r.flags & ~RealFlag.IPV6
            if bits:
                real_flags[r.address] = int(bits)
        hash_fn = lb.get_hash_function_for_vip(vip)
        vips[vip] = VipSpec(
            flags=lb.get_vip_flags(vip),
            hash_function=hash_fn,
            reals=reals,
            down_reals=frozenset(parse_address(a) for a in lb.get_down_reals(vip)),
        )
    hc = {int(k): parse_address(v) for k, v in lb.get_healthcheckers_dst().items()} if cfg.enable_hc else {}
    quic = {q.id: q.address for q in lb.get_quic_reals_mapping()}
    routes = ({ipaddress.ip_network(k): parse_address(v) for k, v in lb.get_src_routing_rule().items()}
              if cfg.lpm_src_lookup else {})
    decap = (frozenset(parse_address(a) for a in lb.get_inline_decap_dst())
             if (cfg.inline_decap_ipip or cfg.inline_decap_gue) else frozenset())
    return Desired(balancer=balancer, vips=vips, real_flags=real_flags, hc_dsts=hc, quic_reals=quic,
                   src_routes=routes, decap_dsts=decap, healthchecks=healthchecks, bgp=bgp)


def _addr_order(addr) -> tuple:  # v4 and v6 addresses (or networks) in one sorted list
    return (addr.version, addr)


def _vip_order(vip: VipKey) -> tuple:
    return (vip.address.version, vip.address, vip.port, vip.proto)


def _plain(value):
    if isinstance(value, (bytes, bytearray)) and len(value) == 6:
        return format_mac(bytes(value))
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, HashFunction):
        return value.name.lower()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


def _spec_fields(spec: CheckSpec, base: CheckSpec) -> dict:
    """The fields of ``spec`` that differ from ``base`` (bytes as text)."""
    out = {}
    for name in CHECK_FIELDS:
        value = getattr(spec, name)
        if value != getattr(base, name):
            out[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


def _bgp_dict(cfg: BgpConfig) -> dict:
    """The bgp section: the required keys, then those that differ from the defaults."""
    out: dict[str, Any] = {"router_id": str(cfg.router_id), "local_as": cfg.local_as}
    if cfg.local_address is not None:
        out["local_address"] = str(cfg.local_address)
    out["peers"] = [{"address": str(p.address), "asn": p.asn} for p in cfg.peers]
    if cfg.communities:
        out["communities"] = [f"{a}:{b}" for a, b in cfg.communities]
    for a in attrs.fields(BgpConfig):
        if a.name in out or a.name in ("peers", "communities", "local_address"):
            continue
        value = getattr(cfg, a.name)
        if value != a.default:
            out[a.name] = value
    return out


def _flag_names(bits: int, enum_cls) -> list:
    return [m.name for m in enum_cls if m & bits]


def dumps(desired: Desired) -> str:
    """The declarative file of a configuration (stable order; ``loads(dumps(d)) == d``)."""
    import yaml

    doc: dict[str, Any] = {"version": FORMAT_VERSION}
    if desired.balancer:
        doc["balancer"] = {k: _plain(v) for k, v in desired.balancer.items()}
    vips = []
    for vip in sorted(desired.vips, key=_vip_order):
        spec = desired.vips[vip]
        entry: dict[str, Any] = {"address": str(vip.address), "port": vip.port,
                                 "proto": {6: "tcp", 17: "udp"}[vip.proto]}
        if spec.flags:
            entry["flags"] = _flag_names(spec.flags, VipFlag)
        if spec.hash_function is not None:
            entry["hash_function"] = spec.hash_function.name.lower()
        entry["reals"] = [{"address": str(a), "weight": w}
                          for a, w in sorted(spec.reals.items(), key=lambda kv: _addr_order(kv[0]))]
        if spec.down_reals:
            entry["down_reals"] = [str(a) for a in sorted(spec.down_reals, key=_addr_order)]
        hc = desired.healthchecks
        if hc is not None and vip in hc.checks:
            entry["healthcheck"] = _spec_fields(hc.checks[vip], CheckSpec())
            for r in entry["reals"]:
                override = hc.overrides.get((vip, parse_address(r["address"])))
                if override is not None:
                    r["healthcheck"] = _spec_fields(override, hc.checks[vip])
        vips.append(entry)
    if vips:
        doc["vips"] = vips
    if desired.real_flags:
        doc["real_flags"] = {str(a): _flag_names(b, RealFlag) for a, b in sorted(desired.real_flags.items(),
                                                                                key=lambda kv: _addr_order(kv[0]))}
    if desired.hc_dsts:
        doc["hc_dsts"] = {k: str(v) for k, v in sorted(desired.hc_dsts.items())}
    if desired.quic_reals:
        doc["quic_reals"] = {k: str(v) for k, v in sorted(desired.quic_reals.items())}
    if desired.src_routes:
        doc["src_routes"] = {str(k): str(v) for k, v in sorted(desired.src_routes.items(),
                                                               key=lambda kv: _addr_order(kv[0]))}
    if desired.decap_dsts:
        doc["decap_dsts"] = [str(a) for a in sorted(desired.decap_dsts, key=_addr_order)]
    if desired.healthchecks is not None:
        hc = desired.healthchecks
        doc["healthchecks"] = {"action": hc.action, "all_down": hc.all_down, "concurrency": hc.concurrency}
    if desired.bgp is not None:
        doc["bgp"] = _bgp_dict(desired.bgp)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present
    return "# katran declarative configuration\n" + yaml.dump(doc, Dumper=dumper, sort_keys=False,
                                                              default_flow_style=False)


# ----------------------------------------------------------------------------- the difference
@attrs.frozen
class Change:
    """One step of a plan: what it does (for the operator and the audit log) and its inverse."""

    text: str
    do: Callable[[], None] = attrs.field(repr=False, eq=False)
    undo: Callable[[], None] = attrs.field(repr=False, eq=False)


@attrs.frozen
class Plan:
    changes: tuple = ()
    needs_restart: tuple = ()  # balancer options that differ but only take effect on a restart

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        return [c.text for c in self.changes] + [f"needs a restart (not applied): {t}" for t in self.needs_restart]


class ApplyError(KatranError):
    """A plan failed halfway; what it had written was undone (``undo_errors`` lists any undo that failed)."""

    def __init__(self, change: str, cause: BaseException, undo_errors: list) -> None:
        self.change, self.cause, self.undo_errors = change, cause, undo_errors
        msg = f"apply failed at '{change}': {cause}; the earlier changes were undone"
        if undo_errors:
            msg += f" except {len(undo_errors)}: " + "; ".join(undo_errors)
        super().__init__(msg)


def plan(lb, desired: Desired) -> Plan:
    """The minimal list of changes that turns ``lb``'s live state into ``desired``."""
    current = snapshot(lb)
    steps: list[Change] = []
    add = steps.append
    cfg = lb.config

    restart = []
    for name, value in desired.balancer.items():
        if name in RUNTIME_FIELDS or name == "testing":
            continue
        live = _plain(getattr(cfg, name))
        want = _plain(getattr(KatranConfig(**{"testing": True, name: value}), name))
        if live != want:
            restart.append(f"balancer.{name}: running {live!r}, file {want!r}")
    if "flow_cache" in desired.balancer:
        want_fc = KatranConfig(testing=True, flow_cache=desired.balancer["flow_cache"]).flow_cache
        old_fc = cfg.flow_cache
        if want_fc != old_fc:
            add(Change(f"flow cache {'on' if want_fc else 'off'}",
                       lambda v=want_fc: lb.set_flow_cache(v), lambda v=old_fc: lb.set_flow_cache(v)))
    if "default_mac" in desired.balancer:
        want_mac = format_mac(KatranConfig(testing=True, default_mac=desired.balancer["default_mac"]).default_mac)
        old_mac = lb.get_mac()
        if want_mac != old_mac:
            add(Change(f"change mac {old_mac} -> {want_mac}",
                       lambda m=want_mac: lb.change_mac(m), lambda m=old_mac: lb.change_mac(m)))

    default_hash = cfg.hash_function
    new_vips = [v for v in sorted(desired.vips, key=_vip_order) if v not in current.vips]
    gone_vips = [v for v in sorted(current.vips, key=_vip_order) if v not in desired.vips]

    # real flags that must hold before a real is first added (flags travel with Real on add)
    def real(addr, weight):
        return Real(addr, weight, desired.real_flags.get(addr, current.real_flags.get(addr, 0)))

    for vip in new_vips:
        spec = desired.vips[vip]
        add(Change(f"add vip {vip} flags {spec.flags:#x}",
                   lambda v=vip, f=spec.flags: lb.add_vip(v, f), lambda v=vip: lb.del_vip(v)))
        if spec.hash_function is not None and spec.hash_function != default_hash:
            add(Change(f"set hash function of {vip} to {spec.hash_function.name.lower()}",
                       lambda v=vip, h=spec.hash_function: lb.change_hash_function_for_vip(v, h),
                       lambda: None))
    for vip in sorted(desired.vips, key=_vip_order):
        if vip in new_vips:
            continue
        spec, live = desired.vips[vip], current.vips[vip]
        if spec.flags != live.flags:
            on, off = spec.flags & ~live.flags, live.flags & ~spec.flags
            add(Change(f"modify vip {vip} flags {live.flags:#x} -> {spec.flags:#x}",
                       lambda v=vip, on=on, off=off: _set_bits(lb.modify_vip, v, on, off),
                       lambda v=vip, on=on, off=off: _set_bits(lb.modify_vip, v, off, on)))
        want_hash = spec.hash_function if spec.hash_function is not None else live.hash_function
        if want_hash != live.hash_function:
            add(Change(f"set hash function of {vip} to {want_hash.name.lower()}",
                       lambda v=vip, h=want_hash: lb.change_hash_function_for_vip(v, h),
                       lambda v=vip, h=live.hash_function: lb.change_hash_function_for_vip(v, h)))

    for vip in sorted(desired.vips, key=_vip_order):
        spec = desired.vips[vip]
        live = current.vips.get(vip, VipSpec())
        upsert = [real(a, w) for a, w in spec.reals.items() if live.reals.get(a) != w]
        remove = [Real(a, w) for a, w in live.reals.items() if a not in spec.reals]
        if upsert:
            old = [Real(a, live.reals[a]) for a in (r.address for r in upsert) if a in live.reals]
            fresh = [r for r in upsert if r.address not in live.reals]
            add(Change(f"add/reweight reals of {vip}: " + ", ".join(f"{r.address} w{r.weight}" for r in upsert),
                       lambda v=vip, u=upsert: lb.modify_reals_for_vip(ModifyAction.ADD, u, v),
                       lambda v=vip, o=old, f=fresh: (o and lb.modify_reals_for_vip(ModifyAction.ADD, o, v),
                                                      f and lb.modify_reals_for_vip(ModifyAction.DEL, f, v))))
        for addr in sorted(spec.down_reals - live.down_reals, key=_addr_order):
            add(Change(f"mark real {addr} of {vip} down",
                       lambda v=vip, a=addr: lb.add_down_real(v, a), lambda v=vip, a=addr: lb.remove_down_real(v, a)))
        for addr in sorted(live.down_reals - spec.down_reals, key=_addr_order):  # also before a down real is removed
            add(Change(f"mark real {addr} of {vip} up",
                       lambda v=vip, a=addr: lb.remove_down_real(v, a), lambda v=vip, a=addr: lb.add_down_real(v, a)))
        if remove:
            add(Change(f"remove reals of {vip}: " + ", ".join(str(r.address) for r in remove),
                       lambda v=vip, r=remove: lb.modify_reals_for_vip(ModifyAction.DEL, r, v),
                       lambda v=vip, r=remove: lb.modify_reals_for_vip(ModifyAction.ADD, r, v)))

    for addr, bits in sorted(desired.real_flags.items(), key=lambda kv: _addr_order(kv[0])):
        live_bits = current.real_flags.get(addr, 0)
        in_use = any(addr in s.reals for s in desired.vips.values())
        if bits != live_bits and in_use and any(addr in s.reals for s in current.vips.values()):
            on, off = bits & ~live_bits, live_bits & ~bits
            add(Change(f"modify real {addr} flags {live_bits:#x} -> {bits:#x}",
                       lambda a=addr, on=on, off=off: _set_bits(lb.modify_real, a, on, off),
                       lambda a=addr, on=on, off=off: _set_bits(lb.modify_real, a, off, on)))

    for somark, addr in sorted(desired.hc_dsts.items()):
        old = current.hc_dsts.get(somark)
        if old != addr:
            add(Change(f"hc dst somark {somark} -> {addr}",
                       lambda s=somark, a=addr: lb.add_healthchecker_dst(s, a),
                       (lambda s=somark, a=old: lb.add_healthchecker_dst(s, a)) if old is not None
                       else (lambda s=somark: lb.del_healthchecker_dst(s))))
    for somark in sorted(set(current.hc_dsts) - set(desired.hc_dsts)):
        add(Change(f"remove hc dst somark {somark}",
                   lambda s=somark: lb.del_healthchecker_dst(s),
                   lambda s=somark, a=current.hc_dsts[somark]: lb.add_healthchecker_dst(s, a)))

    quic_del = [QuicReal(a, i) for i, a in sorted(current.quic_reals.items()) if desired.quic_reals.get(i) != a]
    quic_add = [QuicReal(a, i) for i, a in sorted(desired.quic_reals.items()) if current.quic_reals.get(i) != a]
    if quic_del:
        add(Change("remove quic mappings " + ", ".join(f"{q.id}={q.address}" for q in quic_del),
                   lambda q=quic_del: lb.modify_quic_reals_mapping(ModifyAction.DEL, q),
                   lambda q=quic_del: lb.modify_quic_reals_mapping(ModifyAction.ADD, q)))
    if quic_add:
        add(Change("add quic mappings " + ", ".join(f"{q.id}={q.address}" for q in quic_add),
                   lambda q=quic_add: lb.modify_quic_reals_mapping(ModifyAction.ADD, q),
                   lambda q=quic_add: lb.modify_quic_reals_mapping(ModifyAction.DEL, q)))

    route_del = [n for n, a in current.src_routes.items() if desired.src_routes.get(n) != a]
    if route_del:
        add(Change("remove src routes " + ", ".join(map(str, route_del)),
                   lambda n=route_del: lb.del_src_routing_rule([str(x) for x in n]),
                   lambda n=route_del: [lb.add_src_routing_rule([str(x)], str(current.src_routes[x])) for x in n]))
    by_dst: dict = {}
    for n, a in desired.src_routes.items():
        if current.src_routes.get(n) != a:
            by_dst.setdefault(a, []).append(n)
    for dst, nets in sorted(by_dst.items(), key=lambda kv: _addr_order(kv[0])):
        add(Change(f"add src routes {', '.join(map(str, nets))} -> {dst}",
                   lambda n=nets, d=dst: lb.add_src_routing_rule([str(x) for x in n], str(d)),
                   lambda n=nets: lb.del_src_routing_rule([str(x) for x in n])))

    for addr in sorted(desired.decap_dsts - current.decap_dsts, key=_addr_order):
        add(Change(f"add inline decap dst {addr}", lambda a=addr: lb.add_inline_decap_dst(a),
                   lambda a=addr: lb.del_inline_decap_dst(a)))
    for addr in sorted(current.decap_dsts - desired.decap_dsts, key=_addr_order):
        add(Change(f"remove inline decap dst {addr}", lambda a=addr: lb.del_inline_decap_dst(a),
                   lambda a=addr: lb.add_inline_decap_dst(a)))

    for vip in gone_vips:
        live = current.vips[vip]
        add(Change(f"delete vip {vip} ({len(live.reals)} reals)", lambda v=vip: lb.del_vip(v),
                   lambda v=vip, s=live: _recreate_vip(lb, v, s, current.real_flags)))
    return Plan(changes=tuple(steps), needs_restart=tuple(restart))


def _set_bits(setter: Callable, key, on: int, off: int) -> None:
    """``setter(key, bits, set_flag)`` for the bits to turn on, then for those to turn off."""
    if on:
        setter(key, on, True)
    if off:
        setter(key, off, False)


def _recreate_vip(lb, vip: VipKey, spec: VipSpec, real_flags: dict) -> None:
    lb.add_vip(vip, spec.flags)
    if spec.hash_function is not None:
        lb.change_hash_function_for_vip(vip, spec.hash_function)
    if spec.reals:
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(a, w, real_flags.get(a, 0)) for a, w in spec.reals.items()],
                                vip)
    for addr in spec.down_reals:
        lb.add_down_real(vip, addr)


def apply(lb, desired: Desired, dry_run: bool = False) -> Plan:
    """Compute the plan and (unless ``dry_run``) apply it; on any failure undo and raise ApplyError."""
    p = plan(lb, desired)
    if dry_run:
        return p
    done: list[Change] = []
    for change in p.changes:
        try:
            change.do()
        except Exception as exc:  # noqa: BLE001 - every failure is undone, then re-raised
            undo_errors = []
            for prev in reversed(done):
                try:
                    prev.undo()
                except Exception as uexc:  # noqa: BLE001
                    undo_errors.append(f"{prev.text}: {uexc}")
            raise ApplyError(change.text, exc, undo_errors) from exc
        done.append(change)
    return p
