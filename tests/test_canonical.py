"""canonical: RFC 8785 canonical JSON (the RFC's own test vectors) and the digest of it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct

import pytest

from airflow_hitl.canonical import canonical_json, content_digest, digest_problem

# RFC 8785, appendix B: IEEE 754 doubles (as hex) and how ECMAScript, hence JCS, writes them.
NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


class TestRfc8785Vectors:
    """The examples and test vectors of RFC 8785 itself."""

    @pytest.mark.parametrize(("bits", "expected"), NUMBERS, ids=[bits for bits, _ in NUMBERS])
    def test_numbers_as_ecmascript_writes_them(self, bits, expected):
        assert canonical_json(_double(bits)) == expected.encode()

    def test_the_serialisation_example_of_section_3_2_4(self):
        # Parsed from the RFC's JSON text, exactly as written there (3.2.2, 3.2.4).
        source = (
            '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
            ' "literals": [null, true, false]}'
        )
        expected = bytes.fromhex(
            "7b226c69746572616c73223a5b6e756c6c2c747275652c66616c73655d2c226e756d62657273223a"
            "5b3333333333333333332e333333333333332c3165"
            "2b33302c342e352c302e3030322c31652d32375d2c22737472696e67223a22e282ac245c7530303066"
            "5c6e4127425c225c5c5c5c5c222f227d"
        )
        assert canonical_json(json.loads(source)) == expected
        assert expected.decode() == (
            '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
            '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
        )

    def test_keys_sort_by_utf16_code_units(self):
        # 3.2.3: the emoji (a surrogate pair, 0xD83D...) sorts before U+FB33, unlike by code point.
        source = {
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\U0001f600": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis",
        }
        keys = list(json.loads(canonical_json(source)))
        assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]

    def test_no_white_space_and_nested_objects_sorted_too(self):
        assert canonical_json({"b": [1, {"z": 1, "a": 2}], "a": "x y"}) == b'{"a":"x y","b":[1,{"a":2,"z":1}]}'


class TestWhatAStoreHolds:
    """Values a JSON column can hold but an IEEE double cannot: a digest all the same, never an error."""

    def test_an_integer_past_2_53_is_the_double_a_json_parser_reads(self):
        # A JavaScript client parsing the item reads 2**53 + 1 as 2**53.
        assert canonical_json(2**53 + 1) == b"9007199254740992"
        assert canonical_json(-(2**53) - 1) == b"-9007199254740992"
        assert canonical_json(2**53 - 1) == b"9007199254740991"

    def test_an_integer_no_double_holds_is_its_text(self):
        assert canonical_json(10**400) == json.dumps(str(10**400)).encode()

    @pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
    def test_a_number_json_cannot_carry_is_its_text(self, value):
        assert canonical_json(value) == json.dumps(str(value)).encode()

    def test_integers_and_floats_of_one_value_agree(self):
        # Numbers are doubles: 1 and 1.0 are one number, as they are once read back from JSON.
        assert canonical_json({"n": 1}) == canonical_json({"n": 1.0}) == b'{"n":1}'

    def test_tuples_and_times_read_as_their_json(self):
        when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        assert canonical_json({"t": (1, when)}) == b'{"t":[1,"2026-01-02T03:04:05+00:00"]}'


class TestDigest:
    """content_digest: SHA-256 in hex of the canonical JSON."""

    def test_it_is_sha256_of_the_canonical_text(self):
        assert content_digest({"b": 1, "a": [True, None]}) == hashlib.sha256(b'{"a":[true,null],"b":1}').hexdigest()

    def test_key_order_and_spacing_of_the_source_do_not_matter(self):
        one = json.loads('{"a": 1, "b": {"c": [1, 2], "d": "é"}}')
        two = json.loads('{"b":{"d":"\\u00e9","c":[1,2.0]},"a":1.0}')
        assert content_digest(one) == content_digest(two)

    def test_any_change_changes_it(self):
        assert content_digest({"a": [1, 2]}) != content_digest({"a": [2, 1]})
        assert content_digest({"a": None}) != content_digest({})


class TestDigestProblem:
    """digest_problem: what a decision may carry as ``content_digest``."""

    @pytest.mark.parametrize("value", ["a" * 64, "0123456789ABCDEF" * 4], ids=["lower", "upper"])
    def test_hex_sha256_is_accepted(self, value):
        assert digest_problem(value) is None

    @pytest.mark.parametrize(
        "value",
        ["a" * 63, "a" * 65, "g" * 64, "", " " + "a" * 63, "a" * 63 + "\n", 7, None],
        ids=["short", "long", "not-hex", "empty", "space", "newline", "number", "none"],
    )
    def test_anything_else_is_refused(self, value):
        assert digest_problem(value) == "must be a SHA-256 digest: 64 hexadecimal characters"
