"""--trunk and [[trunk]] in a TOML file: what each accepts, the one-line error for each thing it
refuses, and build()'s checks against the segments and namespaces around it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from vswitch.cli import parse, topology_from_args
from vswitch.config.topology import (
    DEFAULT_IFNAME,
    ConfigError,
    Request,
    TrunkSpec,
    build,
    check_vid,
    parse_segment,
    parse_trunk,
    parse_uplink,
    request_from_toml,
)


# --- parse_trunk: the forms it accepts --------------------------------------------------------------
def test_a_trunk_names_its_namespace_and_each_segments_vid_in_order() -> None:
    assert parse_trunk("T=lan:10,dmz:20") == TrunkSpec("T", (("lan", 10), ("dmz", 20)), None, DEFAULT_IFNAME)
    assert parse_trunk("T=dmz:20,lan:10").vlans == (("dmz", 20), ("lan", 10))


def test_an_interface_name_after_the_namespace() -> None:
    assert parse_trunk("T:eth1=lan:10") == TrunkSpec("T", (("lan", 10),), None, "eth1")


def test_a_native_segment_beside_tagged_ones_or_alone() -> None:
    spec = parse_trunk("T=lan:10,native=dmz")
    assert spec == TrunkSpec("T", (("lan", 10),), "dmz", DEFAULT_IFNAME)
    assert spec.segments == ["lan", "dmz"]
    assert parse_trunk("T=native=dmz,lan:10") == spec  # native may come first
    assert parse_trunk("T=native=lan") == TrunkSpec("T", (), "lan", DEFAULT_IFNAME)


def test_spaces_around_items_and_the_limits_of_a_vid_are_accepted() -> None:
    assert parse_trunk(" T = lan:1 , dmz:4094 , native=lab ").vlans == (("lan", 1), ("dmz", 4094))
    assert parse_trunk(" T = lan:1 , dmz:4094 , native=lab ").native == "lab"
    assert parse_trunk("T=lan: 7").vlans == (("lan", 7),)


# --- parse_trunk: what it refuses, each in one line that names the problem --------------------------
BAD_TRUNK = {
    "vid-0": ("T=lan:0", "VLAN of lan must be a VLAN ID from 1 to 4094, not '0'"),
    "vid-4095": ("T=lan:4095", "VLAN of lan must be a VLAN ID from 1 to 4094, not '4095'"),
    "vid-4096": ("T=lan:4096", "not '4096'"),
    "vid-x": ("T=lan:x", "VLAN of lan must be a VLAN ID from 1 to 4094, not 'x'"),
    "vid-empty": ("T=lan:", "must be a VLAN ID"),
    "vid-negative": ("T=lan:-1", "must be a VLAN ID"),
    "vid-hex": ("T=lan:0x10", "must be a VLAN ID"),
    "vid-superscript": ("T=lan:\u00b2", "must be a VLAN ID"),
    "vid-arabic-indic": ("T=lan:\u0661\u0660", "must be a VLAN ID"),
    "segment-twice": ("T=lan:10,lan:20", "segment lan is given twice"),
    "vid-twice": ("T=lan:10,dmz:10", "VLAN 10 is given twice"),
    "native-also-tagged": ("T=lan:10,native=lan", "segment lan cannot be both native (untagged) and tagged"),
    "native-twice": ("T=native=lan,native=dmz", "'native=dmz'"),
    "native-empty": ("T=lan:10,native=", "'native='"),
    "no-vlans": ("T=", "expected PORT=SEGMENT:VID"),
    "no-equals": ("T", "expected PORT=SEGMENT:VID"),
    "only-spaces": ("T=  ", "expected PORT=SEGMENT:VID"),
    "bad-key": ("T=lan:10,pvid=dmz", "'pvid=dmz'"),
    "no-colon": ("T=lan", "'lan': expected PORT=SEGMENT:VID"),
    "empty-item": ("T=lan:10,", "'': expected PORT=SEGMENT:VID"),
    "bad-segment-name": ("T=l/an:10", "'l/an:10'"),
    "bad-namespace": ("a/b=lan:10", "invalid namespace name 'a/b'"),
    "empty-namespace": ("=lan:10", "invalid namespace name ''"),
    "empty-ifname": ("T:=lan:10", "invalid interface name ''"),
    "bad-ifname": ("T:a/b=lan:10", "invalid interface name 'a/b'"),
}


@pytest.mark.parametrize("case", list(BAD_TRUNK))
def test_a_bad_trunk_is_one_config_error_naming_the_problem(case: str) -> None:
    text, message = BAD_TRUNK[case]
    with pytest.raises(ConfigError) as error:
        parse_trunk(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", [0, 4095, 4096, -1, True, False, 10.0, "x", "", None, [10]])
def test_check_vid_refuses_what_is_not_a_vlan_id(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^VLAN of lan must be a VLAN ID from 1 to 4094, not "):
        check_vid(value, "VLAN of lan")


@pytest.mark.parametrize(("value", "vid"), [(1, 1), (4094, 4094), ("10", 10), (" 20 ", 20)])
def test_check_vid_takes_numbers_and_digit_strings(value: object, vid: int) -> None:
    assert check_vid(value, "VLAN") == vid


# --- build: the trunk against the segments and namespaces --------------------------------------------
def request(trunks: Sequence[str], segments: Sequence[str] = ("lan=a", "dmz=b", "lab=c")) -> Request:
    return Request(segments=[parse_segment(s) for s in segments], trunks=[parse_trunk(t) for t in trunks])


def test_build_keeps_the_trunks_in_order() -> None:
    topology = build(request(["T=lan:10,dmz:20", "U:eth1=lan:30,native=lab"]))
    assert topology.trunks == [
        TrunkSpec("T", (("lan", 10), ("dmz", 20)), None, DEFAULT_IFNAME),
        TrunkSpec("U", (("lan", 30),), "lab", "eth1"),
    ]


@pytest.mark.parametrize(
    ("trunk", "missing"),
    [("T=lan:10,wan:30", "wan"), ("T=lan:10,native=nowhere", "nowhere"), ("T=native=void", "void")],
)
def test_build_refuses_a_trunk_naming_a_segment_that_does_not_exist(trunk: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--trunk T: there is no segment '{missing}'$"):
        build(request([trunk]))


@pytest.mark.parametrize("namespace", ["a", "c"])
def test_build_refuses_a_trunk_in_a_namespace_that_is_a_port(namespace: str) -> None:
    with pytest.raises(ConfigError, match=rf"^namespace {namespace} is listed twice$"):
        build(request([f"{namespace}=lan:10"]))


def test_build_refuses_two_trunks_in_one_namespace_and_a_trunk_in_the_uplinks() -> None:
    with pytest.raises(ConfigError, match=r"^namespace T is listed twice$"):
        build(request(["T=lan:10", "T:eth1=dmz:20"]))
    req = request(["up=lan:10"])
    req.uplink = parse_uplink("up")
    with pytest.raises(ConfigError, match=r"^namespace up is listed twice$"):
        build(req)


def test_the_command_line_builds_the_same_trunks() -> None:
    args = ["up", "--segment", "lan=a", "--segment", "dmz=b", "--segment", "lab=c"]
    args += ["--trunk", "T:eth1=lan:10,dmz:20,native=lab", "--trunk", "U=lan:30"]
    topology = topology_from_args(parse(args))
    assert topology.trunks == [
        TrunkSpec("T", (("lan", 10), ("dmz", 20)), "lab", "eth1"),
        TrunkSpec("U", (("lan", 30),), None, DEFAULT_IFNAME),
    ]


# --- [[trunk]] in a TOML file ------------------------------------------------------------------------
SEGMENTS = """
[[segment]]
name = "lan"
ports = ["a"]

[[segment]]
name = "dmz"
ports = ["b"]

[[segment]]
name = "lab"
ports = ["c"]
"""


def toml(*trunk_tables: str) -> str:
    return SEGMENTS + "".join(f"\n[[trunk]]\n{table}\n" for table in trunk_tables)


def test_a_toml_trunk_is_the_same_trunk_spec_as_the_command_line() -> None:
    text = toml(
        'port = "T:eth1"\nvlans = {lan = 10, dmz = 20}\nnative = "lab"', 'port = "U"\nvlans = {lan = 30}'
    )
    req = request_from_toml(text)
    assert req.trunks == [parse_trunk("T:eth1=lan:10,dmz:20,native=lab"), parse_trunk("U=lan:30")]
    args = ["up", "--segment", "lan=a", "--segment", "dmz=b", "--segment", "lab=c"]
    args += ["--trunk", "T:eth1=lan:10,dmz:20,native=lab", "--trunk", "U=lan:30"]
    assert build(req) == topology_from_args(parse(args))


def test_a_toml_trunk_as_a_sub_table_and_with_native_only() -> None:
    text = toml('port = "T"\nnative = "lab"\n[trunk.vlans]\nlan = 10\ndmz = 20')
    assert request_from_toml(text).trunks == [parse_trunk("T=lan:10,dmz:20,native=lab")]
    assert request_from_toml(toml('port = "T"\nnative = "lab"')).trunks == [parse_trunk("T=native=lab")]


def test_no_trunk_in_a_toml_file_is_no_trunk() -> None:
    assert request_from_toml(SEGMENTS).trunks == []


BAD_TOML = {
    "vlans-not-a-table": ('port = "T"\nvlans = 10', "vlans is a table of segment = VID"),
    "vlans-a-list": ('port = "T"\nvlans = [10, 20]', "vlans is a table of segment = VID"),
    "vid-bool": (
        'port = "T"\nvlans = {lan = true}',
        "VLAN of lan must be a VLAN ID from 1 to 4094, not True",
    ),
    "vid-float": (
        'port = "T"\nvlans = {lan = 10.0}',
        "VLAN of lan must be a VLAN ID from 1 to 4094, not 10.0",
    ),
    "vid-string": (
        'port = "T"\nvlans = {lan = "x"}',
        "VLAN of lan must be a VLAN ID from 1 to 4094, not 'x'",
    ),
    "vid-0": ('port = "T"\nvlans = {lan = 0}', "not 0"),
    "vid-4095": ('port = "T"\nvlans = {lan = 4095}', "not 4095"),
    "vid-table": ('port = "T"\nvlans = {lan = {vid = 10}}', "must be a VLAN ID"),
    "vid-twice": ('port = "T"\nvlans = {lan = 10, dmz = 10}', "VLAN 10 is given twice"),
    "native-also-tagged": ('port = "T"\nvlans = {lan = 10}\nnative = "lan"', "cannot be both native"),
    "native-not-a-string": ('port = "T"\nvlans = {lan = 10}\nnative = 5', "native is a segment name, not 5"),
    "native-bad-name": ('port = "T"\nvlans = {lan = 10}\nnative = "a b"', "native is a segment name"),
    "bad-segment-name": ('port = "T"\nvlans = {"l an" = 10}', "invalid segment name 'l an'"),
    "no-vlans": ('port = "T"', "name at least one SEGMENT:VID"),
    "empty-vlans": ('port = "T"\nvlans = {}', "name at least one SEGMENT:VID"),
    "no-port": ("vlans = {lan = 10}", "invalid namespace name ''"),
    "port-not-a-string": ("port = 5\nvlans = {lan = 10}", "port must be a string"),
    "bad-ifname": ('port = "T:a/b"\nvlans = {lan = 10}', "invalid interface name 'a/b'"),
    "unknown-key": ('port = "T"\nvlans = {lan = 10}\npvid = 1', "unknown key(s) in [[trunk]]: pvid"),
}


@pytest.mark.parametrize("case", list(BAD_TOML))
def test_a_bad_toml_trunk_is_one_config_error_naming_the_problem(case: str) -> None:
    table, message = BAD_TOML[case]
    with pytest.raises(ConfigError) as error:
        request_from_toml(toml(table))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ['"T=lan:10"', "[1, 2]", '{port = "T"}'])
def test_trunk_must_be_a_list_of_tables(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^trunk must be a list of tables"):
        request_from_toml(f"trunk = {value}\n" + SEGMENTS)


def test_a_toml_trunk_naming_a_missing_segment_is_refused_by_build() -> None:
    req = request_from_toml(toml('port = "T"\nvlans = {lan = 10, wan = 30}'))
    with pytest.raises(ConfigError, match=r"there is no segment 'wan'"):
        build(req)
