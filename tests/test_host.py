"""katran.host and katran-preflight on test trees of /proc and /sys (no hardware needed):
the seed's examples, IRQ pinning problems, the other checks, --fix, JSON, auto flags."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from katran.errors import ValidationError
from katran.host import HostRoot, build_report, gather, resolve_auto_flags
from katran.host import discovery as D
from katran.host import fix as F
from katran.host.cli import main as preflight
from katran.host.kernel import Route, parse_ethtool_channels

from host_tree import HostTree, Queue, StaticNet

UNLIMITED = lambda _res: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)  # noqa: E731
GW_MAC = "52:54:00:12:35:02"


def report_of(tree: HostTree, net=None, wanted=None, getrlimit=UNLIMITED, ifname=None):
    facts = gather(ifname or tree.ifname, root=HostRoot(str(tree.base)), net=net or StaticNet(), getrlimit=getrlimit)
    return build_report(facts, wanted)


# ------------------------------------------------------------------ parsing
def test_cpu_lists_and_masks():
    assert D.parse_cpu_list("0-3,6,8-9") == [0, 1, 2, 3, 6, 8, 9]
    assert D.parse_cpu_mask("00000000,0000000f") == [0, 1, 2, 3]
    assert D.parse_cpu_mask("5") == [0, 2]
    assert D.format_cpu_mask([0]) == "00000001"
    assert D.format_cpu_mask([33]) == "00000002,00000000"
    assert D.format_cpu_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(ValueError):
        D.parse_cpu_list("0-x")


def test_ethtool_l_output():
    text = ("Channel parameters for enp0s3:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\n"
            "Combined:\t8\nCurrent hardware settings:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t4\n")
    assert parse_ethtool_channels(text) == 4
    veth = "Pre-set maximums:\nRX:\t\t2\nTX:\t\t2\nCurrent hardware settings:\nRX:\t\t1\nTX:\t\t1\nCombined:\tn/a\n"
    assert parse_ethtool_channels(veth) == 1
    assert parse_ethtool_channels("garbage") is None


# ---------------------------------------------------------- the seed's examples
def test_seed_four_cpus_two_numa_nodes(tmp_path):
    """4 forwarding CPUs 0..3, CPUs 0 and 2 on node 0, 1 and 3 on node 1 (the seed's example)."""
    tree = HostTree(tmp_path, irqbalance=False)
    rep = report_of(tree)
    assert rep.server_flags == f"-default_mac={GW_MAC} -forwarding_cores=0,1,2,3 -numa_nodes=0,1,0,1"
    assert rep.verdict == "ok" and rep.exit_code == 0, rep.format_text()
    assert [(q.queue, q.irq, q.cpus) for q in rep.queues] == [(0, 40, (0,)), (1, 41, (1,)), (2, 42, (2,)),
                                                              (3, 43, (3,))]
    assert rep.check("interface").detail.startswith("eth0: driver ixgbe, device 0000:03:00.0 (pci)")
    assert rep.check("xdp_mode").verdict == "ok"
    assert "4 receive queues" in rep.check("rx_queues").detail
    assert "2 NUMA nodes" in rep.check("numa").detail and "eth0 is on node 0" in rep.check("numa").detail


def test_seed_one_queue_on_four_cpus(tmp_path):
    """One RX queue, IRQ 19 named after the NIC (the seed's enp0s3), pinned to cpu 0."""
    tree = HostTree(tmp_path, ifname="enp0s3", numa=(0, 0, 0, 0), irqbalance=False,
                    queues=[Queue(19, "enp0s3", "0")])
    rep = report_of(tree, net=StaticNet(routes=[Route(4, ("10.0.2.2",), "enp0s3")]))
    assert rep.flags["forwarding_cores"] == [0]
    assert rep.server_flags == f"-default_mac={GW_MAC} -forwarding_cores=0"  # one node: no -numa_nodes
    assert "one CPU" not in rep.check("irq_pinning").detail and rep.check("irq_pinning").verdict == "ok"
    assert "1 receive queue " in rep.check("rx_queues").detail and "for 4 CPUs" in rep.check("rx_queues").detail
    assert "-numa_nodes not needed" in rep.check("numa").detail


def test_seed_one_queue_unpinned_then_fixed(tmp_path, capsys):
    tree = HostTree(tmp_path, ifname="enp0s3", numa=None, irqbalance=False, queues=[Queue(19, "enp0s3", "0-3")])
    rep = report_of(tree, net=StaticNet(routes=[Route(4, ("10.0.2.2",), "enp0s3")]))
    pin = rep.check("irq_pinning")
    assert pin.verdict == "warn" and "may run on cpus 0-3: not pinned" in pin.detail and "--fix" in pin.fix
    assert rep.flags["forwarding_cores"] == [0, 1, 2, 3]
    facts = gather("enp0s3", root=HostRoot(str(tmp_path)), net=StaticNet(routes=[Route(4, ("10.0.2.2",), "enp0s3")]),
                   getrlimit=UNLIMITED)
    changes = F.plan(facts)
    assert [c.describe for c in changes] == ["pin queue 0 IRQ 19 (enp0s3) to cpu 0: /proc/irq/19/smp_affinity_list "
                                             "0-3 -> 0"]
    F.apply(changes, facts.root)
    assert tree.affinity(19) == "0"
    assert capsys.readouterr().out == f"fix: {changes[0].describe}\n"


# --------------------------------------------------------------- IRQ pinning
def test_overlapping_affinities(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False, queues=[Queue(40, "eth0-TxRx-0", "0-1"), Queue(41, "eth0-TxRx-1", "1-2"),
                                                        Queue(42, "eth0-TxRx-2", "3")])
    pin = report_of(tree).check("irq_pinning")
    assert pin.verdict == "warn"
    assert "queue 0 (IRQ 40) may run on cpus 0-1: not pinned to one CPU" in pin.detail
    assert "overlapping affinities: queues 0/1 on cpus 1" in pin.detail
    assert "0/2" not in pin.detail and "1/2" not in pin.detail


def test_several_queues_on_one_cpu(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False, queues=[Queue(40, "eth0-TxRx-0", "1"), Queue(41, "eth0-TxRx-1", "1"),
                                                        Queue(42, "eth0-TxRx-2", "2"), Queue(43, "eth0-TxRx-3", "3")])
    rep = report_of(tree)
    pin = rep.check("irq_pinning")
    assert pin.verdict == "warn" and "several queues on one CPU: cpu 1 serves queues 0, 1" in pin.detail
    assert "overlapping" not in pin.detail
    assert rep.flags["forwarding_cores"] == [1, 2, 3] and rep.flags["numa_nodes"] == [1, 0, 1]
    facts = gather("eth0", root=HostRoot(str(tmp_path)), net=StaticNet(), getrlimit=UNLIMITED)
    # queues 2 and 3 keep their CPUs; 0 and 1 shared cpu 1: they get the free ones, node 0 (the NIC's) first
    assert F.assign_cpus(facts) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_queue_on_no_forwarding_cpu_and_missing_irq(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False, n_rx=4,
                    queues=[Queue(40, "eth0-TxRx-0", "0"), Queue(41, "eth0-TxRx-1", "1"), Queue(42, "eth0-TxRx-2", "3")])
    pin = report_of(tree, wanted=[0, 1]).check("irq_pinning")
    assert "queue 2 (IRQ 42) runs on cpus 3, not forwarding cores (-forwarding_cores=0,1)" in pin.detail
    assert "queues 3 have no IRQ in /proc/interrupts" in pin.detail


def test_irq_names_virtio_and_others(tmp_path):
    """virtio_net: the NIC's virtio device (sys/class/net/IF/device) names its IRQs virtioN-input.Q;
    output queues, config IRQs and other virtio devices are not the NIC's receive queues."""
    tree = HostTree(tmp_path, driver="virtio_net", device="virtio3", bus="virtio", irqbalance=False,
                    queues=[Queue(50, "virtio3-input.0", "0"), Queue(52, "virtio3-input.1", "1")],
                    extra_interrupts=[" 49:  0 0 0 0   PCI-MSIX-0000:00:03.0   0-edge      virtio3-config",
                                      " 51:  0 0 0 0   PCI-MSIX-0000:00:03.0   2-edge      virtio3-output.0",
                                      " 60:  0 0 0 0   PCI-MSIX-0000:00:04.0   1-edge      virtio2-input.0",
                                      " 61:  0 0 0 0   PCI-MSIX-0000:00:05.0   1-edge      eth0-tx-0",
                                      " 62:  0 0 0 0   PCI-MSIX-0000:00:05.0   1-edge      eth01-TxRx-0"])
    rep = report_of(tree)
    assert [(q.queue, q.irq, q.name) for q in rep.queues] == [(0, 50, "virtio3-input.0"), (1, 52, "virtio3-input.1")]
    assert rep.check("interface").detail.startswith("eth0: driver virtio_net, device virtio3 (virtio)")
    assert rep.flags["forwarding_cores"] == [0, 1]


@pytest.mark.parametrize("name,queue", [("eth0-rx-2", 2), ("i40e-eth0-TxRx-3", 3), ("eth0-5", 5),
                                        ("mlx5_comp4@pci:0000:03:00.0", 4)])
def test_irq_name_forms(tmp_path, name, queue):
    tree = HostTree(tmp_path, driver="mlx5_core", irqbalance=False, queues=[Queue(70, name, "1")])
    assert [(q.queue, q.name) for q in report_of(tree).queues] == [(queue, name)]


def test_affinity_mask_without_list_file(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False, affinity_list_files=False,
                    queues=[Queue(40, "eth0-TxRx-0", "2"), Queue(41, "eth0-TxRx-1", "0-1")])
    rep = report_of(tree)
    assert [q.cpus for q in rep.queues] == [(2,), (0, 1)]
    facts = gather("eth0", root=HostRoot(str(tmp_path)), net=StaticNet(), getrlimit=UNLIMITED)
    (change,) = F.plan(facts)
    assert change.path == "proc/irq/41/smp_affinity" and change.new == "00000001"


def test_nic_from_netlink_when_sysfs_lacks_it(tmp_path):
    """/sys/class/net shows another namespace's interfaces: the device comes from netlink's parent
    device (IFLA_PARENT_DEV_NAME / _BUS_NAME) and its driver link under /sys/bus."""
    from katran.host.kernel import Link

    tree = HostTree(tmp_path, irqbalance=False, ifname="eth0", driver="mlx5_core", device="0000:03:00.0",
             queues=[Queue(70 + i, f"mlx5_comp{i}@pci:0000:03:00.0", str(i)) for i in range(2)])
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    os.symlink("../../../devices/pci0000:00/0000:03:00.0", tmp_path / "sys/bus/pci/devices/0000:03:00.0")
    net = StaticNet(links={"ens1": Link("ens1", 7, "0c:42:a1:00:00:01", "", "0000:03:00.0", "pci", 2),
                           "veth7": Link("veth7", 8, "0e:00:00:00:00:08", "veth", "", "", 1)})
    rep = report_of(tree, net=net, ifname="ens1")
    assert rep.check("interface").detail.startswith("ens1: driver mlx5_core, device 0000:03:00.0 (pci), "
                                                    "MAC 0c:42:a1:00:00:01 (from netlink)")
    assert [q.name for q in rep.queues] == ["mlx5_comp0@pci:0000:03:00.0", "mlx5_comp1@pci:0000:03:00.0"]
    assert "eth0 is on node" not in rep.check("numa").detail and "ens1 is on node 0" in rep.check("numa").detail
    virt = report_of(tree, net=net, ifname="veth7")
    assert virt.check("interface").detail.startswith("veth7: driver veth, virtual")
    assert virt.check("irq_pinning").verdict == "ok" and virt.flags["forwarding_cores"] == [0, 1, 2, 3]


def test_numa_from_node_cpulist(tmp_path):
    tree = HostTree(tmp_path, numa_links=False, irqbalance=False)
    rep = report_of(tree)
    assert rep.flags["numa_nodes"] == [0, 1, 0, 1]
    assert "/sys/devices/system/node/nodeM/cpulist" in rep.check("numa").detail


def test_no_irq_found_and_unknown_driver(tmp_path):
    tree = HostTree(tmp_path, driver="e1000", irqbalance=False, queues=[], n_rx=1)
    rep = report_of(tree)
    assert rep.check("irq_pinning").verdict == "warn" and "no IRQ of eth0 found" in rep.check("irq_pinning").detail
    xdp = rep.check("xdp_mode")
    assert xdp.verdict == "warn" and "probably generic XDP only" in xdp.detail and "-xdp_mode=generic" in xdp.fix
    assert rep.flags["forwarding_cores"] == [0, 1, 2, 3]


# ------------------------------------------------------------- other checks
def test_irqbalance_jit_rp_filter_bpffs(tmp_path):
    tree = HostTree(tmp_path, irqbalance=True, jit=(0, 2, 0), rp_filter=(0, 1), bpffs=False)
    rep = report_of(tree)
    assert rep.check("irqbalance").verdict == "warn" and "pid 4242" in rep.check("irqbalance").detail
    assert rep.check("bpf_jit_enable").verdict == "fail"
    assert rep.check("bpf_jit_harden").verdict == "warn"
    assert rep.check("bpf_jit_kallsyms").verdict == "ok" and "= 0" in rep.check("bpf_jit_kallsyms").detail
    assert rep.check("rp_filter").verdict == "warn" and "all=0, eth0=1" in rep.check("rp_filter").detail
    assert rep.check("bpffs").verdict == "warn"
    assert rep.verdict == "fail" and rep.exit_code == 2


def test_memlock_limit_is_injectable(tmp_path):
    old = HostTree(tmp_path / "old", irqbalance=False, release="5.4.0-100-generic")
    low = lambda _res: (64 * 1024, 64 * 1024)  # noqa: E731
    m = report_of(old, getrlimit=low).check("memlock")
    assert m.verdict == "warn" and "RLIMIT_MEMLOCK 64 KiB" in m.detail and "ulimit -l unlimited" in m.fix
    assert report_of(old).check("memlock").verdict == "ok"
    new = HostTree(tmp_path / "new", irqbalance=False, release="6.1.0")
    assert report_of(new, getrlimit=low).check("memlock").verdict == "ok"


def test_missing_interface_fails(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False)
    rep = report_of(tree, ifname="eth9")
    assert rep.check("interface").verdict == "fail" and rep.exit_code == 2
    assert rep.flags["forwarding_cores"] == []


def test_gateway_verdicts_from_the_net_source(tmp_path):
    tree = HostTree(tmp_path, irqbalance=False)
    two = StaticNet(routes=[Route(4, ("10.0.2.2",), "eth0", 100), Route(4, ("10.0.2.3",), "eth0", 200)])
    gw = report_of(tree, net=two).check("default_gateway")
    assert gw.verdict == "fail" and "ambiguous: 2 IPv4 default gateways on eth0" in gw.detail
    unresolved = StaticNet(neighbours={})
    rep = report_of(tree, net=unresolved)
    assert "no neighbour entry for gateway 10.0.2.2 on eth0 after resolving" in rep.check("default_gateway").detail
    assert unresolved.probes > 0 and rep.flags["default_mac"] is None
    assert "-default_mac" not in rep.server_flags


# -------------------------------------------------------------------- CLI
def _cli(capsys, *argv):
    code = preflight(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_schema(tmp_path, capsys, monkeypatch):
    HostTree(tmp_path, irqbalance=True)
    monkeypatch.setattr("katran.host.report.resource.getrlimit", UNLIMITED, raising=False)
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--json")
    doc = json.loads(out)
    assert set(doc) == {"schema", "interface", "netns", "verdict", "checks", "queues", "flags", "server_flags",
                        "changes"}
    assert doc["schema"] == 1 and doc["interface"] == "eth0" and doc["netns"] is None
    assert doc["verdict"] == "warn" and code == 1  # irqbalance runs
    names = [c["name"] for c in doc["checks"]]
    assert names == ["interface", "xdp_mode", "rx_queues", "irq_pinning", "irqbalance", "numa", "forwarding_cores",
                     "bpf_jit_enable", "bpf_jit_harden", "bpf_jit_kallsyms", "rp_filter", "bpffs", "memlock",
                     "default_gateway"]
    for c in doc["checks"]:
        assert set(c) == {"name", "verdict", "detail", "fix"} and c["verdict"] in ("ok", "warn", "fail")
        assert isinstance(c["detail"], str) and c["detail"]
    assert doc["flags"] == {"default_mac": GW_MAC, "forwarding_cores": [0, 1, 2, 3], "numa_nodes": [0, 1, 0, 1]}
    assert doc["queues"][0] == {"queue": 0, "irq": 40, "name": "eth0-TxRx-0", "cpus": [0]}
    assert doc["server_flags"] == f"-default_mac={GW_MAC} -forwarding_cores=0,1,2,3 -numa_nodes=0,1,0,1"
    assert doc["changes"] == []


def test_cli_text_report(tmp_path, capsys, monkeypatch):
    HostTree(tmp_path, irqbalance=False, jit=(0, 0, 1))
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path))
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == "katran-preflight: eth0"
    assert any(ln.startswith("  FAIL  bpf_jit_enable") for ln in lines)
    assert any("fix: sysctl -w net.core.bpf_jit_enable=1" in ln for ln in lines)
    assert lines[-2].startswith("verdict: fail (") and lines[-1].startswith("server flags: -default_mac=")


def test_cli_bad_arguments(tmp_path, capsys):
    code, _, err = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path / "nope"))
    assert code == 3 and "--root" in err and "not a directory" in err
    code, _, err = _cli(capsys, "--intf", "eth0", "--stop-irqbalance")
    assert code == 3 and "only goes with --fix" in err
    code, _, err = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--forwarding-cores", "0,x")
    assert code == 3 and "'0,x'" in err
    code, _, err = _cli(capsys, "--intf", "eth0", "--netns", f"nope{os.getpid()}", "--root", str(tmp_path))
    assert code == 3 and f"network namespace nope{os.getpid()} not found" in err
    code, _, err = _cli(capsys, "--intf", "../../etc", "--root", str(tmp_path))
    assert code == 3 and "--intf '../../etc': not an interface name" in err
    code, _, err = _cli(capsys, "--intf", "e\u00e9" * 20, "--root", str(tmp_path))
    assert code == 3 and "\\xe9" in err and len(err) < 200  # ASCII-safe, truncated
    with pytest.raises(SystemExit) as exc:
        preflight([])
    assert exc.value.code == 3


# -------------------------------------------------------------------- --fix
def test_fix_rewrites_the_tree(tmp_path, capsys, monkeypatch):
    tree = HostTree(tmp_path, irqbalance=True, jit=(0, 0, 1), queues=[Queue(40 + i, f"eth0-TxRx-{i}", "0-3")
                                                                     for i in range(4)])
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix")
    lines = out.splitlines()
    fixes = [ln for ln in lines if ln.startswith("fix: ")]
    # NIC on node 0: cpus 0 and 2 first
    assert fixes == ["fix: pin queue 0 IRQ 40 (eth0-TxRx-0) to cpu 0: /proc/irq/40/smp_affinity_list 0-3 -> 0",
                     "fix: pin queue 1 IRQ 41 (eth0-TxRx-1) to cpu 2: /proc/irq/41/smp_affinity_list 0-3 -> 2",
                     "fix: pin queue 2 IRQ 42 (eth0-TxRx-2) to cpu 1: /proc/irq/42/smp_affinity_list 0-3 -> 1",
                     "fix: pin queue 3 IRQ 43 (eth0-TxRx-3) to cpu 3: /proc/irq/43/smp_affinity_list 0-3 -> 3",
                     "fix: sysctl net.core.bpf_jit_enable=1 (was 0): /proc/sys/net/core/bpf_jit_enable"]
    assert [tree.affinity(i) for i in (40, 41, 42, 43)] == ["0", "2", "1", "3"]
    assert (tmp_path / "proc/sys/net/core/bpf_jit_enable").read_text().strip() == "1"
    # the report after the fix: pinned, JIT on; irqbalance was not stopped (not asked)
    assert "  ok    irq_pinning" in out and "  ok    bpf_jit_enable" in out
    assert "  WARN  irqbalance" in out and code == 1
    assert lines.index(fixes[-1]) < lines.index("katran-preflight: eth0")
    code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix", "--json")
    assert json.loads(out)["changes"] == []


def test_fix_failure_undoes_what_was_written(tmp_path, capsys, monkeypatch):
    """The last IRQ's affinity file refuses writes (a read-only sysfs file): the changes made
    before it are undone, the command exits 3."""
    tree = HostTree(tmp_path, irqbalance=False, jit=(0, 0, 1),
                    queues=[Queue(40 + i, f"eth0-TxRx-{i}", "0-1") for i in range(3)])
    target = tmp_path / "proc/irq/42/smp_affinity_list"
    target.unlink()
    os.symlink("/sys/devices/system/cpu/online", target)  # reads "0-..", writing is refused
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    before = {p: p.read_text() for p in (tmp_path / "proc").rglob("*") if p.is_file()}
    code, out, err = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix")
    assert code == 3
    assert "fix: failed: Permission denied; undoing 2 changes" in out
    assert out.count("undo: pin queue") == 2
    assert "fix /" not in out and "error: fix pin queue 2 IRQ 42" in err
    after = {p: p.read_text() for p in (tmp_path / "proc").rglob("*") if p.is_file()}
    assert after == before
    assert tree.affinity(40) == "0-1"


@pytest.mark.privileged
def test_fix_mounts_bpffs(tmp_path, capsys, monkeypatch):
    HostTree(tmp_path, irqbalance=False, bpffs=False)
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    target = tmp_path / "sys/fs/bpf"
    try:
        code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix")
        assert f"fix: mount -t bpf bpf {target}" in out
        with open("/proc/self/mounts") as f:
            assert any(line.split()[1:3] == [str(target), "bpf"] for line in f)
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_fix_stops_irqbalance_only_when_asked(tmp_path, capsys, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        HostTree(tmp_path, irqbalance=False)
        (tmp_path / f"proc/{proc.pid}").mkdir()
        (tmp_path / f"proc/{proc.pid}/comm").write_text("irqbalance\n")
        monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
        code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix")
        assert "fix: nothing to change" in out and proc.poll() is None
        code, out, _ = _cli(capsys, "--intf", "eth0", "--root", str(tmp_path), "--fix", "--stop-irqbalance")
        assert f"fix: stop irqbalance: SIGTERM to pid {proc.pid}" in out
        assert proc.wait(timeout=10) == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------- auto flags
def test_resolve_auto_flags_on_a_tree(tmp_path, caplog):
    HostTree(tmp_path, irqbalance=False)
    root = HostRoot(str(tmp_path))
    caplog.set_level("INFO", logger="katran.host")
    got = resolve_auto_flags("eth0", "auto", "auto", "auto", root=root, net=StaticNet())
    assert (got.default_mac, got.forwarding_cores, got.numa_nodes) == (GW_MAC, "0,1,2,3", "0,1,0,1")
    text = caplog.text
    assert "-default_mac=auto: IPv4 default gateway 10.0.2.2 on eth0 is 52:54:00:12:35:02 (REACHABLE)" in text
    assert "-forwarding_cores=auto: 0,1,2,3" in text and "-numa_nodes=auto: 0,1,0,1 for cpus 0,1,2,3" in text
    # explicit cores + auto nodes; nothing auto: untouched
    assert resolve_auto_flags("eth0", "aa:bb:cc:dd:ee:ff", "3,0", "auto", root=root, net=StaticNet()).numa_nodes == "1,0"
    same = resolve_auto_flags("eth0", "x", "1", "", root=root, net=None)
    assert (same.default_mac, same.forwarding_cores, same.numa_nodes) == ("x", "1", "")
    # numa auto alone: every online CPU forwards
    got = resolve_auto_flags("eth0", "aa:bb:cc:dd:ee:ff", "", "AUTO", root=root, net=StaticNet())
    assert (got.forwarding_cores, got.numa_nodes) == ("0,1,2,3", "0,1,0,1")


def test_resolve_auto_flags_errors_name_the_flag(tmp_path):
    HostTree(tmp_path, irqbalance=False)
    root = HostRoot(str(tmp_path))
    two = StaticNet(routes=[Route(4, ("10.0.2.2",), "eth0", 100), Route(4, ("10.0.2.3",), "eth0", 200)])
    with pytest.raises(ValidationError) as exc:
        resolve_auto_flags("eth0", "auto", "", "", root=root, net=two)
    assert exc.value.field == "default_mac" and "ambiguous" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        resolve_auto_flags("eth7", "aa:bb:cc:dd:ee:ff", "auto", "", root=root, net=StaticNet())
    assert exc.value.field == "forwarding_cores" and "no interface eth7" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        resolve_auto_flags("eth0", "aa:bb:cc:dd:ee:ff", "0,zz", "auto", root=root, net=StaticNet())
    assert exc.value.field == "forwarding_cores"
    with pytest.raises(ValidationError) as exc:
        resolve_auto_flags("eth0/../x", "auto", "", "", root=root, net=StaticNet())
    assert exc.value.field == "intf" and "not an interface name" in str(exc.value)
    nothing = StaticNet(routes=[], neighbours={})
    with pytest.raises(ValidationError, match="no default route"):
        resolve_auto_flags("eth0", "auto", "", "", root=root, net=nothing, probe_timeout=0.1)


def test_config_from_flags_takes_auto(tmp_path, monkeypatch):
    """The shared server-flag code turns auto into values (discovery patched onto a test tree)."""
    from katran_frontend.goflags import FlagSet
    from katran_frontend.server_flags import add_server_flags, config_from_flags

    HostTree(tmp_path, cpus=2, numa=(0, 1), irqbalance=False,
             queues=[Queue(40, "eth0-TxRx-0", "1"), Queue(41, "eth0-TxRx-1", "0")])
    monkeypatch.setattr("katran.host.auto.HostRoot", lambda netns=None: HostRoot(str(tmp_path)))
    monkeypatch.setattr("katran.host.kernel.KernelNet", lambda netns=None: StaticNet())
    ns = add_server_flags(FlagSet("t", ""), "", "").parse(
        ["-testing", "-default_mac=auto", "-forwarding_cores=auto", "-numa_nodes=auto"])
    cfg = config_from_flags(ns)
    assert cfg.default_mac == bytes.fromhex(GW_MAC.replace(":", ""))
    assert cfg.forwarding_cores == (0, 1) and cfg.numa_nodes == (0, 1)


def test_config_accepts_the_seeds_numa_nodes():
    """-forwarding_cores=0,1 -numa_nodes=0,0 (and the seed's 0,1,0,1): nodes repeat, cores do not."""
    from katran import KatranConfig

    assert KatranConfig(testing=True, forwarding_cores="0,1", numa_nodes="0,0").numa_nodes == (0, 0)
    assert KatranConfig(testing=True, forwarding_cores=[0, 1], numa_nodes="1,0").numa_nodes == (1, 0)
    with pytest.raises(ValidationError, match="listed twice"):
        KatranConfig(testing=True, forwarding_cores="1,1")
