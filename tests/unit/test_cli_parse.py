"""The command line as a user types it: options anywhere, one error line for anything unknown."""

from __future__ import annotations

import pytest

from vswitch.cli import parse


def test_trace_takes_its_packet_after_an_option() -> None:
    args = parse(["trace", "ns1", "--name", "lab", "Ether()/IP()"])
    assert (args.port, args.packet, args.name) == ("ns1", "Ether()/IP()", "lab")
    args = parse(["trace", "ns1", "Ether()/IP()", "--name", "lab"])
    assert (args.port, args.packet, args.name) == ("ns1", "Ether()/IP()", "lab")


def test_unknown_arguments_are_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["up", "--ports", "a,b", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["vswitch: error: unrecognized arguments: --bogus (see 'vswitch --help')"]


def test_a_second_stray_word_is_still_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["trace", "ns1", "--name", "lab", "Ether()", "extra"])
    assert "unrecognized arguments: Ether() extra" in capsys.readouterr().err


def test_bench_help_names_every_contender() -> None:
    from vswitch.tools.bench import CONTENDER_NAMES, OPTIONAL_NAMES
    from vswitch.tools.bench.topologies import BUILDABLE_OPTIONAL, CONTENDERS

    assert CONTENDER_NAMES.split(",") == list(CONTENDERS)
    assert OPTIONAL_NAMES.split(",") == list(BUILDABLE_OPTIONAL)


def test_flow_cache_option_reaches_the_topology() -> None:
    from vswitch.cli import topology_from_args

    args = parse(["up", "--ports", "a,b", "--flow-cache", "0"])
    assert topology_from_args(args).flow_cache == 0


def test_mtu_options_reach_the_topology() -> None:
    from vswitch.cli import topology_from_args

    args = parse(["up", "--segment", "lan=a", "--segment", "dmz=b", "--mtu", "9000", "--mtu", "dmz=1280"])
    assert {s.name: s.mtu for s in topology_from_args(args).segments} == {"lan": 9000, "dmz": 1280}
