"""--vxlan and --vxlan-fdb, and [segment.vxlan] in a TOML file: what each accepts, the one-line error
for each thing it refuses, and the tunnel's MTU against the underlay's."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest

from vswitch.cli import parse, topology_from_args
from vswitch.config.topology import (
    ConfigError,
    Request,
    SegmentSpec,
    VxlanSpec,
    build,
    parse_segment,
    parse_vxlan,
    parse_vxlan_fdb,
    request_from_toml,
    underlay_mtu_check,
)

LOCAL, RA, RB, RC = "198.18.5.1", "198.18.5.2", "198.18.5.3", "198.18.5.4"
MAC = "02:00:00:00:09:01"


def addr(text: str) -> IPv4Address:
    return IPv4Address(text)


# --- parse_vxlan ----------------------------------------------------------------------------------
def test_one_remote_and_the_defaults() -> None:
    name, spec = parse_vxlan(f"lan=42,local={LOCAL},remote={RA}")
    assert name == "lan"
    assert spec == VxlanSpec(42, addr(LOCAL), None, (addr(RA),), 4789, 64, ())


def test_several_remotes_in_order_and_every_option() -> None:
    name, spec = parse_vxlan(
        f" dmz = 16777215 , local = {LOCAL} , netns=under , remote={RB},remote={RA},remote={RC},"
        "dstport=8472,ttl=9"
    )
    assert name == "dmz"
    assert (spec.vni, spec.local, spec.netns) == (16777215, addr(LOCAL), "under")
    assert spec.remotes == (addr(RB), addr(RA), addr(RC))
    assert (spec.dstport, spec.ttl) == (8472, 9)


@pytest.mark.parametrize(("option", "value"), [("dstport", 1), ("dstport", 65535), ("ttl", 1), ("ttl", 255)])
def test_the_limits_of_dstport_and_ttl_are_accepted(option: str, value: int) -> None:
    _, spec = parse_vxlan(f"lan=0,local={LOCAL},remote={RA},{option}={value}")
    assert getattr(spec, option) == value


def test_no_remote_is_accepted_here_and_left_to_build() -> None:
    """A tunnel may name its remotes by --vxlan-fdb only: build() decides once it has seen those."""
    _, spec = parse_vxlan(f"lan=1,local={LOCAL}")
    assert spec.remotes == ()


BAD_VXLAN = {
    "no-equals": ("lan", "expected SEGMENT=VNI"),
    "bad-segment-name": (f"l/an=1,local={LOCAL},remote={RA}", "expected SEGMENT=VNI"),
    "vni-not-a-number": (f"lan=x,local={LOCAL},remote={RA}", "the VNI must be a number from 0 to 16777215"),
    "vni-negative": (f"lan=-1,local={LOCAL},remote={RA}", "the VNI must be a number"),
    "vni-2**24": (f"lan={2**24},local={LOCAL},remote={RA}", "not '16777216'"),
    "vni-empty": (f"lan=,local={LOCAL},remote={RA}", "the VNI must be a number"),
    "vni-superscript": (f"lan=\u00b2,local={LOCAL},remote={RA}", "the VNI must be a number"),
    "missing-local": (f"lan=1,remote={RA}", "local=ADDR is required"),
    "local-twice": (f"lan=1,local={LOCAL},local={RC},remote={RA}", "local= is given twice"),
    "local-not-an-address": (f"lan=1,local=here,remote={RA}", "local address"),
    "local-is-a-remote": (f"lan=1,local={LOCAL},remote={LOCAL}", "cannot be a remote too"),
    "duplicate-remote": (f"lan=1,local={LOCAL},remote={RA},remote={RA}", "a remote is named twice"),
    "multicast-remote": (f"lan=1,local={LOCAL},remote=239.1.1.1", "239.1.1.1 must be a unicast address"),
    "broadcast-remote": (f"lan=1,local={LOCAL},remote=255.255.255.255", "must be a unicast address"),
    "unspecified-local": (f"lan=1,local=0.0.0.0,remote={RA}", "must be a unicast address"),
    "ipv6-remote": (f"lan=1,local={LOCAL},remote=fd00::1", "remote address"),
    "group-unicast": (f"lan=1,local={LOCAL},group=10.9.9.9", "must be an IPv4 multicast address"),
    "group-twice": (f"lan=1,local={LOCAL},group=239.1.1.1,group=239.1.1.2", "group= is given twice"),
    "unknown-key": (f"lan=1,local={LOCAL},remote={RA},port=4789", "unknown option 'port=4789'"),
    "option-without-equals": (f"lan=1,local={LOCAL},remote={RA},learning", "unknown option 'learning'"),
    "ttl-0": (f"lan=1,local={LOCAL},remote={RA},ttl=0", "ttl must be from 1 to 255, not '0'"),
    "ttl-256": (f"lan=1,local={LOCAL},remote={RA},ttl=256", "ttl must be from 1 to 255, not '256'"),
    "ttl-word": (f"lan=1,local={LOCAL},remote={RA},ttl=many", "ttl must be from 1 to 255"),
    "ttl-superscript": (f"lan=1,local={LOCAL},remote={RA},ttl=\u00b2", "ttl must be from 1 to 255"),
    "dstport-0": (f"lan=1,local={LOCAL},remote={RA},dstport=0", "dstport must be a UDP port from 1 to 65535"),
    "dstport-65536": (f"lan=1,local={LOCAL},remote={RA},dstport=65536", "not '65536'"),
    "dstport-superscript": (f"lan=1,local={LOCAL},remote={RA},dstport=\u00b2", "dstport must be a UDP port"),
    "bad-netns": (f"lan=1,local={LOCAL},netns=a/b,remote={RA}", "invalid namespace name 'a/b'"),
}


@pytest.mark.parametrize("case", list(BAD_VXLAN))
def test_a_bad_vxlan_option_is_one_config_error_naming_the_problem(case: str) -> None:
    text, message = BAD_VXLAN[case]
    with pytest.raises(ConfigError) as error:
        parse_vxlan(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


# --- parse_vxlan_fdb -------------------------------------------------------------------------------
def test_a_static_entry_names_its_segment_mac_and_remote() -> None:
    assert parse_vxlan_fdb(f"lan={MAC}@{RA}") == ("lan", bytes.fromhex("020000000901"), addr(RA))
    assert parse_vxlan_fdb(f" dmz = 02-00-00-00-09-0A @ {RB}") == (
        "dmz",
        bytes.fromhex("02000000090a"),
        addr(RB),
    )


BAD_FDB = {
    "missing-at": (f"lan={MAC}", "expected SEGMENT=MAC@ADDR"),
    "missing-equals": (f"{MAC}@{RA}", "expected SEGMENT=MAC@ADDR"),
    "bad-mac": (f"lan=02:00:00:00:09@{RA}", "invalid MAC address '02:00:00:00:09'"),
    "not-hex": (f"lan=02:00:00:00:09:zz@{RA}", "invalid MAC address"),
    "multicast-mac": (f"lan=01:00:5e:00:00:01@{RA}", "a static entry needs a unicast MAC"),
    "broadcast-mac": (f"lan=ff:ff:ff:ff:ff:ff@{RA}", "a static entry needs a unicast MAC"),
    "zero-mac": (f"lan=00:00:00:00:00:00@{RA}", "a static entry needs a unicast MAC"),
    "multicast-remote": (f"lan={MAC}@224.0.0.1", "must be a unicast address"),
    "bad-remote": (f"lan={MAC}@somewhere", "remote address"),
}


@pytest.mark.parametrize("case", list(BAD_FDB))
def test_a_bad_static_entry_is_one_config_error_naming_the_problem(case: str) -> None:
    text, message = BAD_FDB[case]
    with pytest.raises(ConfigError) as error:
        parse_vxlan_fdb(text)
    assert message in str(error.value)


# --- build: the tunnel on its segment --------------------------------------------------------------
def request(
    vxlan: Sequence[str], fdb: Sequence[str] = (), segments: Sequence[str] = ("lan=a,b", "dmz=c")
) -> Request:
    req = Request(segments=[parse_segment(s) for s in segments])
    for text in vxlan:
        name, spec = parse_vxlan(text)
        req.vxlan[name] = spec
    req.vxlan_fdb.extend(parse_vxlan_fdb(text) for text in fdb)
    return req


def test_build_puts_the_tunnel_and_its_static_entries_on_the_segment() -> None:
    topo = build(
        request([f"lan=42,local={LOCAL},remote={RA}"], [f"lan={MAC}@{RB}", f"lan=02:00:00:00:09:02@{RA}"])
    )
    lan, dmz = topo.segments
    assert dmz.vxlan is None
    assert lan.vxlan is not None
    assert (lan.vxlan.vni, lan.vxlan.remotes) == (42, (addr(RA),))
    assert lan.vxlan.fdb == (
        (bytes.fromhex("020000000901"), addr(RB)),
        (bytes.fromhex("020000000902"), addr(RA)),
    )


def test_all_remotes_floods_the_named_ones_and_not_those_only_in_static_entries() -> None:
    spec = VxlanSpec(
        1,
        addr(LOCAL),
        None,
        (addr(RA), addr(RB)),
        fdb=((b"\x02\0\0\0\0\1", addr(RC)), (b"\x02\0\0\0\0\2", addr(RA)), (b"\x02\0\0\0\0\3", addr(RC))),
    )
    assert spec.all_remotes == [(addr(RA), True), (addr(RB), True), (addr(RC), False)]


def test_a_tunnel_with_static_entries_only_has_only_unflooded_remotes() -> None:
    topo = build(request([f"lan=42,local={LOCAL}"], [f"lan={MAC}@{RB}"]))
    spec = topo.segments[0].vxlan
    assert spec is not None and spec.all_remotes == [(addr(RB), False)]


BAD_BUILDS = {
    "no-such-segment": (([f"wan=1,local={LOCAL},remote={RA}"], []), "--vxlan wan: there is no segment 'wan'"),
    "vni-twice": (
        ([f"lan=7,local={LOCAL},remote={RA}", f"dmz=7,local={LOCAL},remote={RB}"], []),
        "VNI 7 is already segment lan's",
    ),
    "fdb-without-vxlan": (
        ([f"lan=7,local={LOCAL},remote={RA}"], [f"dmz={MAC}@{RA}"]),
        "--vxlan-fdb dmz: segment 'dmz' has no --vxlan tunnel",
    ),
    "no-remote-no-fdb": (([f"lan=7,local={LOCAL}"], []), "name at least one remote=ADDR"),
    "fdb-to-the-local-address": (
        ([f"lan=7,local={LOCAL},remote={RA}"], [f"lan={MAC}@{LOCAL}"]),
        f"{LOCAL} is the local address, not a remote",
    ),
    "fdb-mac-twice": (
        ([f"lan=7,local={LOCAL},remote={RA}"], [f"lan={MAC}@{RA}", f"lan={MAC}@{RB}"]),
        f"MAC {MAC} is given twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BUILDS))
def test_build_refuses_a_tunnel_that_cannot_be(case: str) -> None:
    (vxlan, fdb), message = BAD_BUILDS[case]
    with pytest.raises(ConfigError) as error:
        build(request(vxlan, fdb))
    assert message in str(error.value)


def test_the_same_vni_on_two_segments_of_different_underlays_is_still_refused() -> None:
    """The VNI names the segment across the whole overlay, whatever socket carries it."""
    req = request([f"lan=7,local={LOCAL},remote={RA}", "dmz=7,local=198.18.6.1,remote=198.18.6.2"])
    with pytest.raises(ConfigError, match="VNI 7"):
        build(req)


# --- TOML: the same tunnel as the command line ------------------------------------------------------
TOML = f"""
[[segment]]
name = "lan"
ports = ["a", "b"]

[segment.vxlan]
vni = 42
local = "{LOCAL}"
netns = "under"
remote = ["{RA}", "{RB}"]
dstport = 8472
ttl = 9
fdb = ["{MAC}@{RC}", "02:00:00:00:09:02@{RA}"]

[[segment]]
name = "dmz"
ports = ["c"]
"""
COMMAND_LINE = [
    "up",
    "--segment",
    "lan=a,b",
    "--segment",
    "dmz=c",
    "--vxlan",
    f"lan=42,local={LOCAL},netns=under,remote={RA},remote={RB},dstport=8472,ttl=9",
    "--vxlan-fdb",
    f"lan={MAC}@{RC}",
    "--vxlan-fdb",
    f"lan=02:00:00:00:09:02@{RA}",
]


def test_the_toml_tunnel_is_the_same_request_as_the_command_lines() -> None:
    from_toml = request_from_toml(TOML)
    by_hand = request(
        [f"lan=42,local={LOCAL},netns=under,remote={RA},remote={RB},dstport=8472,ttl=9"],
        [f"lan={MAC}@{RC}", f"lan=02:00:00:00:09:02@{RA}"],
    )
    assert from_toml == by_hand
    spec = from_toml.vxlan["lan"]
    assert (spec.netns, spec.dstport, spec.ttl, spec.remotes) == ("under", 8472, 9, (addr(RA), addr(RB)))


def test_the_toml_tunnel_builds_the_same_topology_as_the_real_command_line() -> None:
    from_cli = topology_from_args(parse(COMMAND_LINE))
    assert build(request_from_toml(TOML)) == from_cli
    spec = from_cli.segments[0].vxlan
    assert spec is not None
    assert spec.all_remotes == [(addr(RA), True), (addr(RB), True), (addr(RC), False)]


def test_a_toml_remote_may_be_one_string_and_the_options_may_be_left_out() -> None:
    text = f'[[segment]]\nname = "lan"\nports = ["a"]\n[segment.vxlan]\nvni = 5\nlocal = "{LOCAL}"\n'
    text += f'remote = "{RA}"\n'
    assert request_from_toml(text).vxlan == {"lan": VxlanSpec(5, addr(LOCAL), None, (addr(RA),))}


BAD_TOML = {
    "vni-string": ('vni = "5"', "vni must be a whole number"),
    "vni-missing": ("", "vni must be a whole number"),
    "vni-bool": ("vni = true", "vni must be a whole number"),
    "vni-too-big": (f"vni = {2**24}", "the VNI must be a number from 0 to 16777215"),
    "unknown-key": ("vni = 5\nlearning = true", "unknown key(s) in [segment.vxlan] of lan: learning"),
    "ttl-0": ("vni = 5\nttl = 0", "ttl must be from 1 to 255"),
    "ttl-list": ("vni = 5\nttl = [1]", "ttl must be a string or a number"),
    "dstport-65536": ("vni = 5\ndstport = 65536", "dstport must be a UDP port"),
    "group-unicast": (
        'vni = 5\nlocal = "10.250.0.1"\ngroup = "10.9.9.9"',
        "must be an IPv4 multicast address",
    ),
    "bad-fdb": ('vni = 5\nfdb = ["01:00:5e:00:00:01@198.18.5.2"]', "a static entry needs a unicast MAC"),
    "remote-number": ("vni = 5\nremote = [5]", "remote must be a list of strings"),
}


@pytest.mark.parametrize("case", list(BAD_TOML))
def test_a_bad_toml_tunnel_is_one_config_error(case: str) -> None:
    body, message = BAD_TOML[case]
    local = f'local = "{LOCAL}"\n' if "local" not in body else ""
    text = f'[[segment]]\nname = "lan"\nports = ["a"]\n[segment.vxlan]\n{local}{body}\n'
    with pytest.raises(ConfigError) as error:
        request_from_toml(text)
    assert message in str(error.value)


def test_vxlan_as_a_plain_value_in_toml_is_refused() -> None:
    text = '[[segment]]\nname = "lan"\nports = ["a"]\nvxlan = 5\n'
    with pytest.raises(ConfigError, match=r"must be a table"):
        request_from_toml(text)


# --- the tunnel's MTU against the underlay's --------------------------------------------------------
def tunnel_segment(args: list[str]) -> SegmentSpec:
    topo = topology_from_args(
        parse(["up", "--segment", "lan=a", "--vxlan", f"lan=1,local={LOCAL},remote={RA}", *args])
    )
    return topo.segments[0]


def test_without_an_mtu_the_tunnel_takes_the_underlays_minus_50() -> None:
    """Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8, as the kernel's vxlan device takes it."""
    assert underlay_mtu_check(tunnel_segment([]), 1500) == 1450
    assert underlay_mtu_check(tunnel_segment([]), 9000) == 8950


@pytest.mark.parametrize("mtu_option", ["1400", "lan=1400", "1450", "lan=1450"])
def test_a_given_mtu_that_fits_is_kept(mtu_option: str) -> None:
    given = int(mtu_option.rpartition("=")[2])
    assert underlay_mtu_check(tunnel_segment(["--mtu", mtu_option]), 1500) == given


@pytest.mark.parametrize("mtu_option", ["1451", "lan=1500"])
def test_a_given_mtu_larger_than_the_tunnel_allows_is_refused_naming_both(mtu_option: str) -> None:
    given = mtu_option.rpartition("=")[2]
    with pytest.raises(ConfigError) as error:
        underlay_mtu_check(tunnel_segment(["--mtu", mtu_option]), 1500)
    message = str(error.value)
    assert f"mtu {given}" in message and "1450" in message and "segment lan" in message


def test_an_underlay_too_small_for_any_tunnel_is_refused() -> None:
    with pytest.raises(ConfigError, match="leaves 67"):
        underlay_mtu_check(tunnel_segment([]), 117)
    assert underlay_mtu_check(tunnel_segment([]), 118) == 68


def test_the_python_api_takes_a_tunnel_as_the_command_line_does() -> None:
    """api.Switch(vxlan={segment: spec}) builds the same VxlanSpec as --vxlan segment=spec; a bad one
    is the same ConfigError, raised before anything is made."""
    from vswitch import api

    spec = "42,local=10.250.0.1,netns=ha,remote=10.250.0.2,ttl=9"
    made = api.Switch(["n1"], vxlan={"lan": spec}, name="apivx")
    (segment,) = made.topology.segments
    assert segment.vxlan == parse_vxlan(f"lan={spec}")[1]
    assert segment.vxlan is not None and segment.vxlan.ttl == 9
    with pytest.raises(ConfigError, match="no segment 'dmz'"):
        api.Switch(["n1"], vxlan={"dmz": spec})


def test_a_group_is_a_flooded_remote_and_its_ttl_is_1_unless_given() -> None:
    """group= alone is enough (no remote=); floods go to it; its packets leave with TTL 1, as the
    kernel's vxlan sends to a group, unless ttl= says otherwise."""
    _, spec = parse_vxlan(f"lan=42,local={LOCAL},group=239.1.1.1")
    assert (str(spec.group), spec.group_ttl, spec.ttl) == ("239.1.1.1", 1, 64)
    assert [(str(a), flooded) for a, flooded in spec.all_remotes] == [("239.1.1.1", True)]
    _, spec = parse_vxlan(f"lan=42,local={LOCAL},group=239.1.1.1,ttl=5")
    assert (spec.group_ttl, spec.ttl) == (5, 5)
