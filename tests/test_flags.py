"""Flag parsing: the servers take Katran's gflags command lines and flag files; katran-cli keeps Go's syntax."""

from __future__ import annotations

import pytest

from katran_frontend.goflags import FlagError, FlagSet
from katran_frontend.server_flags import add_server_flags, config_from_flags

SERVERS = []
try:
    from katran_grpc import server as grpc_server

    SERVERS.append(pytest.param(grpc_server, id="grpc"))
except ImportError:  # grpcio missing: only the thrift server
    pass
try:
    from katran_thrift import server as thrift_server

    SERVERS.append(pytest.param(thrift_server, id="thrift"))
except ImportError:
    pass


def server_flags() -> FlagSet:
    return add_server_flags(FlagSet("katran-server-grpc"), "127.0.0.1:50051", "listen address")


def write(path, *lines: str):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gflags_spellings():
    fs = server_flags()
    ns = fs.parse(["-nohc_forwarding", "--lru_size=5", "-intf", "veth0", "--priority", "9", "-testing=yes"])
    assert (ns.hc_forwarding, ns.lru_size, ns.intf, ns.priority, ns.testing) == (False, 5, "veth0", 9, True)
    assert ns.is_set("hc_forwarding") and not ns.is_set("max_vips")
    assert fs.parse(["--nohc_forwarding", "--hc_forwarding"]).hc_forwarding is True  # the last one wins
    assert fs.parse(["--hc_forwarding=No"]).hc_forwarding is False
    assert fs.parse(["--notesting"]).testing is False
    ns = fs.parse(["-intf=a", "stray", "-lru_size=3"])  # gflags goes on after a non-flag argument
    assert (ns.intf, ns.lru_size, ns.args) == ("a", 3, ["stray"])


@pytest.mark.parametrize("argv, needle", [
    (["-nolru_size"], "-lru_size is not a boolean flag"),
    (["--nohc_forwarding=true"], "-no<flag> takes no value"),
    (["-noexist"], "flag provided but not defined: -noexist"),
    (["--flagfile"], "flag needs an argument: -flagfile"),
    (["--hc_forwarding=maybe"], 'invalid boolean value "maybe"'),
])
def test_gflags_errors(argv, needle):
    with pytest.raises(FlagError, match=needle.replace("<", ".").replace(">", ".")):
        server_flags().parse(argv)


def test_flagfile(tmp_path):
    path = write(tmp_path / "katran.flags",
                 "# Katran's server, as deployed", "--intf=eth7", "", "   --nohc_forwarding  ",
                 "--lru_size=100", "--forwarding_cores=0,1", "--default_mac=02:00:00:00:00:09")
    fs = server_flags()
    ns = fs.parse([f"--flagfile={path}"])
    assert (ns.intf, ns.hc_forwarding, ns.lru_size, ns.forwarding_cores) == ("eth7", False, 100, "0,1")
    cfg = config_from_flags(ns)
    assert cfg.main_interface == "eth7" and cfg.enable_hc is False and cfg.lru_size == 100
    assert cfg.default_mac == bytes.fromhex("020000000009")
    # in place: later arguments override the file, the file overrides earlier ones
    assert fs.parse([f"--flagfile={path}", "--lru_size=7"]).lru_size == 7
    assert fs.parse(["--lru_size=7", "-flagfile", str(path)]).lru_size == 100


def test_flagfile_includes_filters_and_lists(tmp_path):
    inner = write(tmp_path / "inner.flags", "--max_vips=9")
    other = write(tmp_path / "other.flags", "--priority=3")
    outer = write(tmp_path / "outer.flags",
                  f"--flagfile={inner}", "--intf=eth1",
                  "katran_server_grpc some_other_tool",  # gflags: flags below only for these programs
                  "--lru_size=1",
                  "katran-server-*",
                  "--ch_ring_size=13")
    ns = server_flags().parse([f"--flagfile={outer},{other}"])
    assert (ns.max_vips, ns.intf, ns.priority, ns.ch_ring_size) == (9, "eth1", 3, 13)
    assert ns.lru_size == 8000000  # its filter names other programs


@pytest.mark.parametrize("lines, needle", [
    (["--lru_size"], "katran.flags:1: flag needs an argument: -lru_size"),  # never takes the next line
    (["# ok", "--lru_size=abc"], 'katran.flags:2: invalid value "abc" for flag -lru_size'),
    (["--intf eth0"], "katran.flags:1: flag provided but not defined: -intf eth0"),  # one line, one argument
    (["--nolru_size"], "katran.flags:1: -nolru_size: -lru_size is not a boolean flag"),
])
def test_flagfile_errors_name_file_and_line(tmp_path, lines, needle):
    path = write(tmp_path / "katran.flags", *lines)
    with pytest.raises(FlagError) as info:
        server_flags().parse([f"--flagfile={path}"])
    assert needle in str(info.value)


def test_flagfile_unreadable_or_recursive(tmp_path):
    with pytest.raises(FlagError, match="missing.flags: cannot read: No such file or directory"):
        server_flags().parse([f"--flagfile={tmp_path / 'missing.flags'}"])
    loop = tmp_path / "loop.flags"
    write(loop, f"--flagfile={loop}")
    with pytest.raises(FlagError, match="include each other too deeply"):
        server_flags().parse([f"--flagfile={loop}"])


def test_go_style_flag_sets_keep_go_syntax():
    """katran-cli parses like Go's flag package: no -noflag, no flag files, stops at the first argument."""
    fs = FlagSet("katran-cli")
    fs.bool("A", False, "add")
    fs.string("t", "", "tcp vip")
    with pytest.raises(FlagError, match="flag provided but not defined: -noA"):
        fs.parse(["-noA"])
    with pytest.raises(FlagError, match="flag provided but not defined: -flagfile"):
        fs.parse(["-flagfile=x"])
    ns = fs.parse(["-A", "stray", "-t", "10.0.0.1:80"])
    assert ns.A is True and ns.t == "" and ns.args == ["stray", "-t", "10.0.0.1:80"]


@pytest.mark.parametrize("server", SERVERS)
def test_servers_take_katran_command_lines_and_flag_files(server, tmp_path):
    path = write(tmp_path / "katran.flags", "--intf=eth7", "--nohc_forwarding", "--lru_size=1000")
    ns = server.build_flags().parse([f"--flagfile={path}", "-testing"])
    cfg = config_from_flags(ns)
    assert (cfg.main_interface, cfg.enable_hc, cfg.lru_size, cfg.testing) == ("eth7", False, 1000, True)


@pytest.mark.parametrize("server", SERVERS)
def test_servers_report_flagfile_errors_with_exit_2(server, tmp_path, capsys):
    path = write(tmp_path / "katran.flags", "--intf=eth7", "--lru_size=lots")
    assert server.main([f"--flagfile={path}"]) == 2
    err = capsys.readouterr().err
    assert 'katran.flags:2: invalid value "lots" for flag -lru_size' in err.splitlines()[0]
