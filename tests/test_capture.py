"""Packet capture from the data plane, on the real kernel through BPF_PROG_TEST_RUN.

The balancer records a balanced packet that matches the capture filter twice: as it
came in and as it goes out (encapsulated towards the real). Filters by VIP, real and
source prefix; ``count``; ``snaplen``; the lost counter of a full ring; the pcap file
read back by tcpdump; bad input. The netns tests with real traffic are in
tests/test_capture_netns.py.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
from katran.capture import MAX_SNAPLEN, CaptureBusyError, CapturedPacket, PcapWriter
from katran.errors import FeatureNotEnabledError, NotFoundError, ValidationError

pytestmark = pytest.mark.privileged

MAC = "02:00:00:00:00:02"
VIP_A = VipKey("10.200.1.1", 80, 6)
VIP_B = VipKey("10.200.1.2", 53, 17)
VIP_6 = VipKey("fc00:1::1", 80, 6)
REAL_A, REAL_B, REAL_6 = "10.0.0.2", "10.0.0.3", "fc00:2::2"


def tcp4(src="192.168.1.1", dst=VIP_A.address, sport=1000, payload=b"hello") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst=MAC) / IP(src=src, dst=str(dst))
                 / TCP(sport=sport, dport=80, flags="S") / payload)


def udp4(src="192.168.1.1", sport=1000) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst=MAC) / IP(src=src, dst=str(VIP_B.address))
                 / UDP(sport=sport, dport=53) / b"query")


def tcp6(src="fc00:3::1", sport=1000) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst=MAC) / IPv6(src=src, dst=str(VIP_6.address))
                 / TCP(sport=sport, dport=80, flags="S") / b"hello6")


def _make_lb(**cfg) -> KatranLb:
    lb = KatranLb(KatranConfig(testing=True, default_mac=MAC, max_vips=16, max_reals=64, ch_ring_size=1031,
                               forwarding_cores=(), **cfg))
    lb.start()
    lb.add_vip(VIP_A)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(REAL_A, 1)], VIP_A)
    lb.add_vip(VIP_B)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(REAL_B, 1)], VIP_B)
    lb.add_vip(VIP_6)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(REAL_6, 1)], VIP_6)
    return lb


@pytest.fixture(scope="module")
def lb():
    lb = _make_lb()
    yield lb
    lb.close()


def run(lb, frame: bytes) -> int:
    return lb._dp.test_run(frame).retval


def test_records_the_packet_in_and_encapsulated_out(lb):
    frame = tcp4()
    with lb.capture() as cap:
        assert run(lb, frame) == 3  # XDP_TX
        got = cap.poll(1.0)
        assert cap.stats() == (2, 0)
    assert [p.direction for p in got] == ["in", "out"]
    inp, out = got
    assert inp.data == frame and inp.orig_len == len(frame)
    assert inp.ifindex == out.ifindex == 1  # test runs come in on lo
    outer = Ether(out.data)
    assert outer[IP].proto == 4 and outer[IP].dst == REAL_A  # IPIP towards the real
    assert bytes(outer[IP].payload) == frame[14:]  # the client's packet inside
    assert out.orig_len == len(frame) + 20
    assert 0 <= out.timestamp_ns - inp.timestamp_ns < 10**9


def test_capture_off_records_nothing(lb):
    with lb.capture() as cap:
        pass
    assert cap.closed and lb._capture is None
    run(lb, tcp4())
    with lb.capture() as cap2:
        assert cap2.poll(0.05) == []  # the earlier packet was not recorded
        assert cap2.stats() == (0, 0)


def test_ipv6_client_to_ipv6_real(lb):
    frame = tcp6()
    with lb.capture(vip=VIP_6) as cap:
        assert run(lb, frame) == 3
        got = cap.poll(1.0)
    assert [p.direction for p in got] == ["in", "out"]
    assert got[0].data == frame
    outer = Ether(got[1].data)
    assert outer[IPv6].nh == 41 and outer[IPv6].dst == REAL_6


@pytest.mark.parametrize("kw, hits", [
    ({"vip": VIP_A}, ["tcp4"]),
    ({"vip": VIP_B}, ["udp4"]),
    ({"real": REAL_B}, ["udp4"]),
    ({"real": REAL_6}, ["tcp6"]),
    ({"src": "192.168.1.0/24"}, ["tcp4", "udp4"]),
    ({"src": "192.168.1.1"}, ["tcp4", "udp4"]),
    ({"src": "192.168.2.0/24"}, []),
    ({"src": "fc00:3::/64"}, ["tcp6"]),
    ({"vip": VIP_A, "src": "192.168.1.0/24"}, ["tcp4"]),
    ({"vip": VIP_A, "real": REAL_B}, []),
    ({}, ["tcp4", "udp4", "tcp6"]),
])
def test_filters(lb, kw, hits):
    frames = {"tcp4": tcp4(), "udp4": udp4(), "tcp6": tcp6()}
    with lb.capture(**kw) as cap:
        for f in frames.values():
            assert run(lb, f) == 3
        got = cap.poll(0.5) if hits else cap.poll(0.05)
    ins = [p.data for p in got if p.direction == "in"]
    assert ins == [frames[h] for h in hits]
    assert len(got) == 2 * len(hits)


def test_count_stops_after_n_records_and_turns_the_filter_off(lb):
    with lb.capture(count=3) as cap:
        for sport in range(2000, 2004):
            run(lb, tcp4(sport=sport))
        got = list(cap.packets(timeout=2.0))
        assert len(got) == 3 and cap.done
        written = cap.stats()[0]
        run(lb, tcp4(sport=3000))  # after the count: the filter is off
        assert cap.stats()[0] == written
    assert [p.direction for p in got] == ["in", "out", "in"]


def test_snaplen_keeps_the_first_bytes(lb):
    frame = tcp4(payload=b"p" * 500)
    with lb.capture(snaplen=60) as cap:
        run(lb, frame)
        got = cap.poll(1.0)
    assert [len(p.data) for p in got] == [60, 60]
    assert got[0].data == frame[:60] and got[0].orig_len == len(frame)
    # a snaplen beyond the record buffer keeps MAX_SNAPLEN bytes (frames here are shorter)
    with lb.capture(snaplen=65535) as cap:
        run(lb, frame)
        assert cap.poll(1.0)[0].data == frame
    assert MAX_SNAPLEN == 4096


def test_one_capture_at_a_time(lb):
    with lb.capture():
        with pytest.raises(CaptureBusyError, match="already running"):
            lb.capture()
    with lb.capture():  # free again once closed
        pass


@pytest.mark.parametrize("kw, field", [
    ({"vip": VipKey("10.9.9.9", 80, 6)}, "vip"),
    ({"real": "10.9.9.9"}, "real"),
    ({"real": "not-an-ip"}, "real"),
    ({"src": "10.0.0.0/33"}, "src"),
    ({"src": "bogus"}, "src"),
    ({"snaplen": 0}, "snaplen"),
    ({"snaplen": 70000}, "snaplen"),
    ({"count": -1}, "count"),
])
def test_bad_input_names_the_field_and_changes_nothing(lb, kw, field):
    with pytest.raises((ValidationError, NotFoundError)) as e:
        lb.capture(**kw)
    assert field in str(e.value)
    assert lb._capture is None
    with lb.capture() as cap:  # the filter stayed off, capture still works
        assert cap.poll(0.01) == []


def test_tiny_ring_counts_lost_records_without_slowing_the_fast_path():
    lb = _make_lb(capture_ring_size=4096)
    try:
        frame = tcp4(payload=b"z" * 200)
        with lb.capture() as cap:
            for sport in range(100):
                assert run(lb, tcp4(sport=5000 + sport, payload=b"z" * 200)) == 3  # still forwarded
            written, lost = cap.stats()
            got = cap.poll(0.5)
        assert written + lost == 200
        assert lost > 150  # a 4 KiB ring holds ~14 records of ~280 bytes
        assert len(got) == written
        assert all(len(p.data) in (len(frame), len(frame) + 20) for p in got)
    finally:
        lb.close()


def test_capture_ring_size_is_validated():
    for bad in (1000, 4097, 0):
        with pytest.raises(ValidationError, match="capture_ring_size"):
            KatranConfig(testing=True, capture_ring_size=bad)


def test_lb_close_stops_the_capture():
    lb = _make_lb()
    cap = lb.capture()
    lb.close()
    assert cap.closed


def test_fake_kernel_has_no_capture():
    from katran.testing import FakeKernel

    lb = KatranLb(KatranConfig(testing=True, default_mac=MAC), kernel=FakeKernel())
    lb.start()
    try:
        with pytest.raises(FeatureNotEnabledError, match="ring buffers"):
            lb.capture()
        assert lb._capture is None
    finally:
        lb.close()


def _pcap(packets) -> bytes:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    for p in packets:
        w.write(p)
    return buf.getvalue()


def test_pcap_writer_format():
    p = CapturedPacket("in", 1, 1_700_000_000_123_456_789, 100, b"\xaa" * 60)
    raw = _pcap([p])
    magic, vmaj, vmin, _, _, snaplen, linktype = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, vmaj, vmin, snaplen, linktype) == (0xA1B2C3D4, 2, 4, 65535, 1)
    assert struct.unpack("<IIII", raw[24:40]) == (1_700_000_000, 123_456, 60, 100)
    assert raw[40:] == b"\xaa" * 60


def test_tcpdump_reads_the_capture(lb, tmp_path):
    tcpdump = shutil.which("tcpdump")
    assert tcpdump, "tcpdump is installed by scripts/setup.sh"
    with lb.capture(vip=VIP_A) as cap:
        run(lb, tcp4(src="192.168.7.7", sport=4242))
        got = cap.poll(1.0)
    path = tmp_path / "out.pcap"
    path.write_bytes(_pcap(got))
    out = subprocess.run([tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "192.168.7.7.4242 > 10.200.1.1.80" in lines[0] and "IP-in-IP" not in lines[0]
    # the encapsulated one: tcpdump shows the outer header towards the real and the inner flow
    assert REAL_A in lines[1] and "192.168.7.7.4242 > 10.200.1.1.80" in lines[1]


# ------------------------------------------------------------------ katran-cli -capture (no server)
class _FakeCaptureClient:
    """A KatranClient stand-in recording the capture call; yields the given packets."""

    def __init__(self, packets=(), fail=None):
        self.packets, self.fail, self.calls = list(packets), fail, []
        self.capture_lost = 3

    def capture(self, **kw):
        self.calls.append(kw)
        if self.fail:
            raise self.fail
        yield from self.packets

    def close(self):
        pass


def test_cli_capture_writes_pcap_and_passes_the_filter(tmp_path, capsys):
    from katran_frontend import cli

    pkts = [CapturedPacket("in", 2, 10**18, 60, b"\x01" * 60), CapturedPacket("out", 2, 10**18 + 1000, 80, b"\x02" * 80)]
    fake = _FakeCaptureClient(pkts)
    out = tmp_path / "c.pcap"
    rc = cli.main(["-capture", "-vip", "10.0.0.1:53/udp", "-r", "10.1.1.1", "-src", "10.2.0.0/16", "-count", "2",
                   "-snaplen", "100", "-w", str(out)], client_factory=lambda ns: fake)
    o, e = capsys.readouterr()
    assert rc == 0 and o == "" and "2 packets captured, 3 lost" in e
    assert fake.calls == [dict(vip=VipKey("10.0.0.1", 53, 17), real="10.1.1.1", src="10.2.0.0/16", count=2,
                               snaplen=100)]
    raw = out.read_bytes()
    assert raw[:4] == b"\xd4\xc3\xb2\xa1" and len(raw) == 24 + 16 + 60 + 16 + 80
    # -t works as the VIP too; -w= form
    rc = cli.main(["-capture", "-t", "10.0.0.1:80", f"-w={out}"], client_factory=lambda ns: _FakeCaptureClient())
    assert rc == 0 and len(out.read_bytes()) == 24


@pytest.mark.parametrize("argv, text", [
    (["-capture"], "-capture needs -w FILE"),
    (["-capture", "-vip", "10.0.0.1:80/sctp", "-w", "x.pcap"], "protocol must be tcp or udp"),
    (["-capture", "-vip", "10.0.0.1", "-w", "x.pcap"], "10.0.0.1"),
    (["-capture", "-count", "-1", "-w", "x.pcap"], "must be >= 0"),
    (["-capture", "-w", "/nonexistent-dir/x.pcap"], "cannot write /nonexistent-dir/x.pcap"),
])
def test_cli_capture_bad_input(argv, text, capsys, tmp_path, monkeypatch):
    from katran_frontend import cli

    monkeypatch.chdir(tmp_path)
    fake = _FakeCaptureClient()
    assert cli.main(argv, client_factory=lambda ns: fake) == 1
    assert text in capsys.readouterr().err
    assert fake.calls == []


def test_cli_capture_server_error_is_fatal(tmp_path, capsys):
    from katran_frontend import cli
    from katran_frontend.client import RpcFailed

    fake = _FakeCaptureClient(fail=RpcFailed("capture", "ALREADY_EXISTS", "a packet capture is already running"))
    rc = cli.main(["-capture", "-w", str(tmp_path / "x.pcap")], client_factory=lambda ns: fake)
    assert rc == 1 and "already running" in capsys.readouterr().err


def test_w_stays_the_weight_without_capture():
    from katran_frontend.cli import capture_argv

    assert capture_argv(["-a", "-w", "5"]) == ["-a", "-w", "5"]
    assert capture_argv(["-capture", "-w", "f.pcap"]) == ["-capture", "-write", "f.pcap"]
    assert capture_argv(["--capture", "--w=-"]) == ["--capture", "-write=-"]
