"""AttachmentWatch (issue 12, item 5: detection): is our balancer still what the kernel runs?
Standalone (the interface's XDP program) and shared mode (our slot of the root array), on the
fake kernel; the real-kernel / server path is tests/test_packaging.py."""

from __future__ import annotations

import logging

import pytest

from katran import KatranConfig, KatranLb, shared
from katran.testing import FakeKernel
from katran.watch import AttachmentWatch

MAP_PATH = "/sys/fs/bpf/jmp_eth0"


def _lb(k, **kw) -> KatranLb:
    lb = KatranLb(KatranConfig(main_interface="eth0", default_mac="00:00:00:00:00:01", forwarding_cores=(0,),
                               lru_size=100, **kw), kernel=k)
    lb.start()
    return lb


def _errors(caplog):
    return [r for r in caplog.records if r.name == "katran.watch" and r.levelno >= logging.WARNING]


def test_standalone_detached_replaced_and_back(caplog):
    caplog.set_level(logging.INFO)
    k = FakeKernel()
    lb = _lb(k)
    ours = lb._obj.program("balancer_ingress").id
    w = AttachmentWatch(lb)
    first = w.poll()
    assert first.attached and first.found_id == ours and not _errors(caplog)
    assert w.poll() is None  # no change: nothing logged again
    ifindex = k.ifindex("eth0")
    k.detach_xdp(ifindex)
    gone = w.poll()
    assert not gone.attached and gone.found_id == 0 and "detached: nothing on eth0 (XDP native)" in gone.reason
    assert w.poll() is None
    (err,) = _errors(caplog)
    assert err.levelno == logging.ERROR and err.fields == {"attached": False, "prog_id": ours, "found_prog_id": 0}
    other = KatranLb(KatranConfig(testing=True, forwarding_cores=()), kernel=k)
    other.start()
    other._obj.program("balancer_ingress").attach_xdp(ifindex, "native", replace=True)
    replaced = w.poll()
    theirs = other._obj.program("balancer_ingress").id
    assert not replaced.attached and replaced.found_id == theirs and f"replaced: program id {theirs}" in replaced.reason
    lb._obj.program("balancer_ingress").attach_xdp(ifindex, "native", replace=True)
    back = w.poll()
    assert back.attached and _errors(caplog)[-1].levelno == logging.WARNING
    assert "attached again" in _errors(caplog)[-1].getMessage()
    other.close()
    lb.close()


def test_shared_mode_slot_emptied_or_taken():
    k = FakeKernel()
    shared.install("eth0", map_path=MAP_PATH, kernel=k)
    lb = _lb(k, root_map_path=MAP_PATH, root_map_pos=2)
    w = AttachmentWatch(lb)
    assert w.poll().attached
    shared.unregister(MAP_PATH, 2, kernel=k)
    state = w.poll()
    assert not state.attached and f"nothing on slot 2 of {MAP_PATH}" in state.reason
    other = KatranLb(KatranConfig(testing=True, forwarding_cores=()), kernel=k)
    other.start()
    shared.register(other._obj.program("balancer_ingress").fd, MAP_PATH, 2, kernel=k)
    state = w.poll()
    assert not state.attached and state.found_id == other._obj.program("balancer_ingress").id
    other.close()
    lb.close()


def test_testing_mode_has_nothing_to_watch():
    lb = KatranLb(KatranConfig(testing=True, forwarding_cores=()), kernel=FakeKernel())
    lb.start()
    assert AttachmentWatch(lb).poll() is None
    lb.close()


def test_a_failing_query_counts_as_not_attached():
    k = FakeKernel()
    lb = _lb(k)
    k.fail("xdp_query", err=1)
    state = AttachmentWatch(lb).check()
    assert not state.attached and "cannot read what is attached" in state.reason
    lb.close()
