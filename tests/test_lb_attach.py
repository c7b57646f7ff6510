"""KatranLb in standalone mode attaches its XDP program to the interface, and on
close detaches only its own program (a newer instance may have replaced it)."""

from __future__ import annotations

import os

import pytest

from katran import KatranConfig, KatranLb
from katran.adapter import bpf
from katran.lab.netns import inside, veth_link

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_attach_replace_and_close_only_detaches_own_program(mode):
    with veth_link("ktatt") as link, inside(link.a.netns):
        cfg = KatranConfig(main_interface=link.a.ifname, default_mac=link.b.mac, xdp_attach_mode=mode,
                           max_vips=32, forwarding_cores=[0])
        old, new = KatranLb(cfg), KatranLb(cfg)
        old.start()
        ifindex = link.a.ifindex
        assert bpf.xdp_attached_prog_id(ifindex, mode) == old._obj.program("balancer_ingress").id
        new.start()  # a restart: the new instance replaces the program atomically
        new_id = new._obj.program("balancer_ingress").id
        assert bpf.xdp_attached_prog_id(ifindex, mode) == new_id
        old.close()
        assert bpf.xdp_attached_prog_id(ifindex, mode) == new_id
        new.close()
        assert bpf.xdp_attached_prog_id(ifindex, mode) == 0


def test_unknown_interface_is_a_clear_error():
    lb = KatranLb(KatranConfig(main_interface="no-such-if0", default_mac="02:00:00:00:00:01", max_vips=32))
    with pytest.raises(KeyError, match="no-such-if0"):
        lb.start()
    assert not lb.started
