"""Address parsing / formatting and the error-text helpers (pure Python, no kernel)."""

from __future__ import annotations

import ipaddress

import pytest

from katran.errors import AlreadyExistsError, NotFoundError, ValidationError, safe_repr, safe_text
from katran.models import (
    Flow,
    QuicReal,
    Real,
    VipKey,
    format_address,
    format_prefix,
    parse_address,
    parse_mac,
    parse_prefix,
)


@pytest.mark.parametrize("text, reason", [
    (" 10.0.0.1", "whitespace"), ("10.0.0.1 ", "whitespace"), ("\t10.0.0.1", "whitespace"),
    ("fc00::1\n", "whitespace"), ("fe80::1%a", "scoped"), ("fe80::1%eth0", "scoped"), ("[fe80::1%1]", "scoped"),
    ("\u00e9t\u00e9", "non-ASCII"), ("10.0.0.1\u200b", "non-ASCII"), ("10.0.0.256", "not a valid"),
    ("", "not a valid"), ("10.0.0.0/24", "not a valid"),
])
def test_bad_address_text_is_refused_naming_field_and_value(text, reason):
    with pytest.raises(ValidationError) as info:
        parse_address(text, "vip.address")
    msg = str(info.value)
    assert msg.startswith(f"vip.address={ascii(text)}: ") and reason in msg and msg.isascii(), msg


def test_scoped_address_objects_are_refused_too():
    with pytest.raises(ValidationError, match="scoped"):
        parse_address(ipaddress.IPv6Address("fe80::1%a"), "real.address")


@pytest.mark.parametrize("build", [
    lambda: VipKey("fe80::1%a", 80, 6), lambda: Real("fc00::77%x"), lambda: QuicReal("fc00::77%x", 5),
    lambda: Flow("fe80::1%a", "fc00::1", 1, 2, 6),
])
def test_every_value_class_refuses_scoped_addresses(build):
    with pytest.raises(ValidationError, match="scoped"):
        build()


def test_good_addresses_still_parse():
    assert parse_address("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert parse_address("[fc00::1]") == ipaddress.IPv6Address("fc00::1")
    assert parse_address("::ffff:10.0.0.77") == ipaddress.IPv6Address("::ffff:a00:4d")


@pytest.mark.parametrize("text, reason", [
    ("fe80::%a/64", "scoped"), (" 10.0.0.0/8", "whitespace"), ("10.0.0.0/33", "not a valid"),
    ("\u00e9/8", "non-ASCII"),
])
def test_bad_prefixes(text, reason):
    with pytest.raises(ValidationError) as info:
        parse_prefix(text, "src")
    assert str(info.value).startswith("src=") and reason in str(info.value)


def test_ipv4_mapped_addresses_print_as_katran():
    assert format_address(parse_address("::ffff:10.0.0.77")) == "::ffff:10.0.0.77"
    assert format_address("::ffff:a00:4d") == "::ffff:10.0.0.77"
    assert format_address(parse_address("fc00::1")) == "fc00::1"
    assert format_address(parse_address("10.0.0.77")) == "10.0.0.77"
    assert str(VipKey("::ffff:10.0.0.77", 80, 6)) == "[::ffff:10.0.0.77]:80/tcp"
    assert format_prefix(parse_prefix("::ffff:10.0.0.0/104")) == "::ffff:10.0.0.0/104"


@pytest.mark.parametrize("text", [
    " 00:11:22:33:44:55", "00:11:22:33:44:55 ", "\u00e9:11:22:33:44:55", "00: 1:22:33:44:55", "+0:11:22:33:44:55",
    "garbage", "00:11:22:33:44", "001:11:22:33:44:55",
])
def test_bad_macs(text):
    with pytest.raises(ValidationError) as info:
        parse_mac(text, "mac")
    assert str(info.value).startswith(f"mac={ascii(text)}: ") and str(info.value).isascii()


def test_mac_forms_still_accepted():
    assert parse_mac("0:1:22:33:44:AA") == bytes([0, 1, 0x22, 0x33, 0x44, 0xAA])
    assert parse_mac("00-11-22-33-44-55") == bytes([0, 0x11, 0x22, 0x33, 0x44, 0x55])


def test_huge_values_are_truncated_in_error_texts():
    huge = "1" * 4_000_000
    msg = str(ValidationError("vip.address", huge, "not a valid IPv4 or IPv6 address"))
    assert len(msg) < 200 and "(4000000 chars)" in msg and msg.startswith("vip.address='1111")
    msg = str(ValidationError("mac", "\u00e9" * 1_000_000, "bad"))
    assert msg.isascii() and len(msg) < 400 and "(1000000 chars)" in msg
    assert len(str(NotFoundError("real", huge))) < 300
    assert len(str(AlreadyExistsError("vip", huge))) < 300


def test_safe_text_and_repr():
    assert safe_text("vip \u00e9t\u00e9\x00\n") == "vip \\xe9t\\xe9\\x00\\n"
    assert safe_text("x" * 10_000).endswith("... (10000 chars)") and len(safe_text("x" * 10_000)) < 600
    assert len(safe_text("\u00e9" * 10_000)) < 600 and safe_text("\u00e9" * 10_000).isascii()
    assert safe_repr("short") == "'short'"
    assert safe_repr(b"\xff" * 100).startswith("b'\\xff") and "(100 chars)" in safe_repr(b"\xff" * 100)
    assert safe_repr(list(range(1000))).endswith(" chars)")
