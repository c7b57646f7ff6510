"""Shared mode: the root XDP program, slot order, fall-through, the firewall example (netns)."""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
]

REPO = Path(__file__).resolve().parents[1]
PORT = 9999
# A stand-in for the balancer until KatranLb can be provisioned here: it takes
# (drops, as the balancer would XDP_TX) UDP to port `take_port` and counts what it saw.
FAKE_BALANCER = r"""
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u16 take_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} seen SEC(".maps");

SEC("xdp")
int fake_balancer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *udp = (void *)(iph + 1);
	__u32 k = 0;
	__u64 *c;

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    iph->protocol != IPPROTO_UDP || udp->dest != bpf_htons(take_port))
		return XDP_PASS;
	c = bpf_map_lookup_elem(&seen, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	return XDP_DROP;
}
char _license[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def objs(tmp_path_factory):
    from katran.build import BPF_DIR, compile_one

    d = tmp_path_factory.mktemp("shared")
    src = d / "fake_balancer.bpf.c"
    src.write_text(FAKE_BALANCER)
    return {
        "root": compile_one(BPF_DIR / "xdp_root.bpf.c", d),
        "fake": compile_one(src, d),
        "firewall": compile_one(REPO / "katran" / "lab" / "examples" / "firewall.bpf.c", d),
    }


def _firewall_module():
    spec = importlib.util.spec_from_file_location("katran_example_firewall", REPO / "katran" / "lab" / "examples" / "firewall.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeBalancer:
    def __init__(self, path: Path) -> None:
        from katran.adapter import bpf

        self.obj = bpf.load_object(path, rodata={"take_port": PORT})

    @property
    def fd(self) -> int:
        return self.obj.program("fake_balancer").fd

    def seen(self) -> int:
        return struct.unpack("=Q", self.obj.map("seen").lookup(b"\0" * 4))[0]

    def close(self) -> None:
        self.obj.close()


@pytest.fixture
def lab(objs):
    """veth link: a = client namespace, b = the LB host with a UDP socket on PORT."""
    from katran.lab import netns

    with netns.veth_link("ktsh", addrs_a=("10.77.0.1/24", "10.78.0.1/24"), addrs_b=("10.77.0.2/24",)) as link:
        with netns.inside(link.b.netns):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("0.0.0.0", PORT))
            rx.settimeout(0.3)
            # ARP / routes: reach 10.77.0.2 from 10.78.0.1 too
            netns.run(link.b.netns, ["ip", "route", "add", "10.78.0.0/24", "dev", link.b.ifname])
        map_path = f"/sys/fs/bpf/ktsh_{os.getpid()}_{link.b.ifname}"
        try:
            yield link, rx, map_path
        finally:
            rx.close()
            for p in (map_path, map_path + "_prog"):
                if os.path.exists(p):
                    os.unlink(p)


def _send(link, src: str, payload: bytes, count: int = 3) -> None:
    from katran.lab import netns

    with netns.inside(link.a.netns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            for _ in range(count):
                s.sendto(payload, (link.b.ip4, PORT))
                time.sleep(0.01)


def _received(rx) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(rx.recv(2048))
        except socket.timeout:
            return got


def test_root_program_test_run(objs):
    """Slot order and fall-through, without any interface: BPF_PROG_TEST_RUN on xdp_root."""
    from katran.adapter import bpf
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=PORT) / b"x")
    root = bpf.load_object(objs["root"], max_entries={"root_array": 4}, rodata={"root_slots": 4})
    fake = FakeBalancer(objs["fake"])
    try:
        arr = root.map("root_array")
        prog = root.program("xdp_root")
        assert prog.test_run(frame).retval == bpf.XDP_PASS  # empty array: pass
        arr.update(struct.pack("=I", 3), struct.pack("=I", fake.fd))  # last slot, 0-2 empty
        assert prog.test_run(frame).retval == bpf.XDP_DROP
        assert fake.seen() == 1
        arr.delete(struct.pack("=I", 3))
        assert prog.test_run(frame).retval == bpf.XDP_PASS
        assert fake.seen() == 1
    finally:
        fake.close()
        root.close()


def test_install_is_idempotent_and_uninstall_cleans(lab, objs):
    from katran import shared
    from katran.adapter import bpf
    from katran.lab import netns

    link, _, map_path = lab
    with netns.inside(link.b.netns):
        first = shared.install(link.b.ifname, map_path=map_path, prog_path=objs["root"])
        again = shared.install(link.b.ifname, map_path=map_path, prog_path=objs["root"])
        assert first.newly_installed and not again.newly_installed
        assert first.prog_id == again.prog_id == bpf.xdp_attached_prog_id(link.b.ifindex)
        assert first.slots == 3 and os.path.exists(map_path)
        assert shared.slots(map_path) == {}
        assert shared.uninstall(link.b.ifname, map_path=map_path)
        assert bpf.xdp_attached_prog_id(link.b.ifindex) == 0
        assert not os.path.exists(map_path) and not os.path.exists(map_path + "_prog")
        assert not shared.uninstall(link.b.ifname, map_path=map_path)


def test_register_validates_position(lab, objs):
    from katran import shared
    from katran.lab import netns
    from katran.errors import NotFoundError, ValidationError

    link, _, map_path = lab
    fake = FakeBalancer(objs["fake"])
    try:
        with pytest.raises(NotFoundError, match="root map"):
            shared.register(fake.fd, map_path, 0)
        with netns.inside(link.b.netns):
            shared.install(link.b.ifname, map_path=map_path, prog_path=objs["root"])
            try:
                with pytest.raises(ValidationError, match="root_map_pos"):
                    shared.register(fake.fd, map_path, 3)
                assert shared.slots(map_path) == {}
            finally:
                shared.uninstall(link.b.ifname, map_path=map_path)
    finally:
        fake.close()


def test_traffic_through_root_firewall_and_fallthrough(lab, objs):
    from katran import shared
    from katran.lab import netns

    link, rx, map_path = lab
    fw_mod = _firewall_module()
    fake = FakeBalancer(objs["fake"])
    fw = None
    with netns.inside(link.b.netns):
        shared.install(link.b.ifname, map_path=map_path, prog_path=objs["root"])
    try:
        # 1. the balancer (slot 2) gets the traffic through the root program
        shared.register(fake.fd, map_path, 2)
        _send(link, "10.77.0.1", b"to-balancer")
        assert fake.seen() == 3
        assert _received(rx) == []  # taken by the balancer, not the stack

        # 2. a firewall in slot 0 drops 10.78.0.0/24 and hands the rest on
        fw = fw_mod.Firewall(map_path, 0, objs["firewall"])
        fw.block(["10.78.0.0/24"])
        fw.register()
        assert set(shared.slots(map_path)) == {0, 2}
        _send(link, "10.78.0.1", b"blocked")
        _send(link, "10.77.0.1", b"allowed")
        assert fw.counters()[0] == 3  # dropped
        assert fake.seen() == 6  # only the allowed three were added
        assert _received(rx) == []

        # 3. balancer removed from its slot: packets fall through to the stack
        assert shared.unregister(map_path, 2)
        _send(link, "10.77.0.1", b"stack")
        assert _received(rx) == [b"stack"] * 3
        assert fake.seen() == 6
        _send(link, "10.78.0.1", b"still-blocked")
        assert _received(rx) == []
    finally:
        if fw is not None:
            fw.close()
        fake.close()
        with netns.inside(link.b.netns):
            shared.uninstall(link.b.ifname, map_path=map_path)


def test_unpinned_array_is_emptied(lab, objs):
    """The prog_array is emptied when its last user reference (pin or fd) goes away."""
    from katran import shared
    from katran.adapter import bpf
    from katran.lab import netns

    link, rx, map_path = lab
    fake = FakeBalancer(objs["fake"])
    with netns.inside(link.b.netns):
        st = shared.install(link.b.ifname, map_path=map_path, prog_path=objs["root"])
    try:
        shared.register(fake.fd, map_path, 1)
        _send(link, "10.77.0.1", b"x", count=1)
        assert fake.seen() == 1
        os.unlink(map_path)  # drop the pin: no user reference left, the root program still runs
        # the kernel empties the array asynchronously (RCU inode free, then a work item)
        deadline = time.monotonic() + 5
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            _send(link, "10.77.0.1", b"y", count=1)
            got = _received(rx)
        assert got == [b"y"], "the unpinned array was never emptied"
        seen = fake.seen()
        _send(link, "10.77.0.1", b"z", count=2)
        assert fake.seen() == seen and _received(rx) == [b"z"] * 2
        with netns.inside(link.b.netns):
            assert bpf.xdp_attached_prog_id(link.b.ifindex) == st.prog_id
    finally:
        fake.close()
        with netns.inside(link.b.netns):
            shared.uninstall(link.b.ifname, map_path=map_path)


def test_katran_balancer_in_shared_mode(lab, objs):
    """KatranLb with root_map_path registers at root_map_pos; close() lets packets fall through."""
    from katran import shared
    from katran.adapter import bpf, hostcfg
    from katran.lab import netns
    from katran.build import BPF_DIR, compile_one

    from katran import KatranConfig, KatranLb, Real, VipKey
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    link, rx, map_path = lab
    a, b = link.a, link.b
    vip, real = "10.77.0.100", "10.200.0.1"
    out = objs["root"].parent
    balancer = compile_one(BPF_DIR / "balancer.bpf.c", out)
    xdp_pass = compile_one(BPF_DIR / "xdp_pass.bpf.c", out)
    # XDP_TX on veth reaches the peer only if the peer runs an XDP program
    peer = bpf.load_object(xdp_pass)
    with netns.inside(a.netns):
        peer.program("xdp_pass").attach_xdp(a.ifindex)
        netns.run(a.netns, ["ip", "route", "add", vip + "/32", "via", b.ip4])
    with netns.inside(b.netns):
        hostcfg.add_host_address("lo", vip)
        shared.install(b.ifname, map_path=map_path, prog_path=objs["root"])
    cfg = KatranConfig(main_interface=b.ifname, default_mac=a.mac, root_map_path=map_path, root_map_pos=2,
                       balancer_prog_path=str(balancer), forwarding_cores=[0])
    try:
        with netns.inside(b.netns):
            lb = KatranLb(cfg)
            lb.start()
        try:
            key = VipKey(vip, PORT, "udp")
            lb.add_vip(key)
            lb.add_real_for_vip(Real(real), key)
            assert set(shared.slots(map_path)) == {2}
            cap = _capture(a)
            with netns.inside(a.netns):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"via-balancer", (vip, PORT))
            frames = _drain(cap)
            encapped = [Ether(f) for f in frames if Ether(f).haslayer(IP) and Ether(f)[IP].proto == 4]
            assert encapped, "no IPIP packet came back from the balancer"
            assert encapped[0][IP].dst == real and encapped[0][IP].payload[UDP].dport == PORT
            assert _received(rx) == []
        finally:
            lb.close()
        assert shared.slots(map_path) == {}
        with netns.inside(a.netns):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"to-stack", (vip, PORT))
        assert _received(rx) == [b"to-stack"]
    finally:
        with netns.inside(b.netns):
            shared.uninstall(b.ifname, map_path=map_path)
        peer.close()


def _capture(end):
    from katran.lab import netns

    with netns.inside(end.netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((end.ifname, 0))
    s.settimeout(0.3)
    return s


def _drain(s) -> list[bytes]:
    frames = []
    try:
        while True:
            frames.append(s.recv(65535))
    except socket.timeout:
        pass
    s.close()
    return frames
