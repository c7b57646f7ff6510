"""Defaults that start: both servers run with ``-testing`` and no other flag."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed"),
]


@pytest.mark.parametrize("module", ["katran_grpc.server", "katran_thrift.server"])
def test_server_starts_with_testing_only(module):
    # private network and mount namespaces with an empty /run: the default listener
    # (unix:/run/katran/<server>.sock) can collide with nothing and leaves nothing behind
    cmd = ["unshare", "-n", "-m", "sh", "-c",
           f"ip link set lo up && mount -t tmpfs katran-test /run && exec {sys.executable} -m {module} -testing"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Server listening on" in line:
                break
        assert any("Server listening on" in ln for ln in lines), "".join(lines)
        assert proc.poll() is None, "".join(lines)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_testing_mode_defaults_hc_forwarding_off_unless_asked():
    from katran_frontend.goflags import FlagSet
    from katran_frontend.server_flags import add_server_flags, config_from_flags

    def cfg(*argv):
        return config_from_flags(add_server_flags(FlagSet("t"), "127.0.0.1:0", "").parse(list(argv)))

    assert cfg("-testing").enable_hc is False
    assert cfg("-testing", "-hc_forwarding=true").enable_hc is True
    assert cfg().enable_hc is True  # Katran's default outside testing


def test_hc_forwarding_without_source_says_which_flag():
    from katran import KatranLb, ValidationError
    from katran_frontend.goflags import FlagSet
    from katran_frontend.server_flags import add_server_flags, config_from_flags

    ns = add_server_flags(FlagSet("t"), "127.0.0.1:0", "").parse(
        ["-testing", "-hc_forwarding=true", "-lru_size=1000", "-max_vips=8", "-max_reals=16"])
    lb = KatranLb(config_from_flags(ns))
    with pytest.raises(ValidationError) as err:
        lb.start()
    lb.close()
    assert err.value.field == "katran_src_v4"
    assert "-hc_forwarding=false" in str(err.value) and "-katran_src_v4" in str(err.value)
