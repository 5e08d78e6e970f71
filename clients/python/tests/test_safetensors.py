"""The numpy safetensors codec: round trips of every dtype, the rules of PROTOCOL section 2, and a
seeded property test that random and mutated blobs raise only SafetensorsError."""

import json
import random
import struct

import numpy as np
import pytest

from dmoe_client import SafetensorsError
from dmoe_client import safetensors as st


def blob(header, data=b""):
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("array", [
    np.array([[1.5, -2.0, 3.25]], dtype=np.float32),
    np.array([1.5, -0.0, 65504.0], dtype=np.float16),
    np.array([[1e300, -1e-300]], dtype=np.float64),
    np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
    np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    np.array([0, 255, 7], dtype=np.uint8),
    np.array([[True, False], [False, True]]),
    np.zeros((0, 3), dtype=np.float32),
    np.array(4.0, dtype=np.float32),
    np.arange(2**8, dtype=np.int32).reshape(2, 2, 2, 2, 2, 2, 2, 2),
], ids=["F32", "F16", "F64", "I64", "I32", "U8", "BOOL", "empty", "scalar", "rank8"])
def test_round_trip_of_every_numpy_dtype(array):
    encoded = st.encode({"t": array, "after": np.array([9], np.uint8)}, {"uid": "ffn.0.1"})
    tensors, metadata = st.decode(encoded)
    assert metadata == {"uid": "ffn.0.1"}
    assert list(tensors) == ["t", "after"]
    assert tensors["t"].dtype == array.dtype and tensors["t"].shape == array.shape
    np.testing.assert_array_equal(tensors["t"], array)
    np.testing.assert_array_equal(tensors["after"], [9])


def test_header_is_padded_to_a_multiple_of_8_as_the_cpp_encoder_does():
    encoded = st.encode({"abc": np.ones(3, np.float32)})
    n = struct.unpack("<Q", encoded[:8])[0]
    assert n % 8 == 0
    assert json.loads(encoded[8:8 + n]) == {"abc": entry("F32", (3,), (0, 12))}


def test_bf16_round_trip_is_exact_for_bfloat16_values():
    values = np.array([0.0, -0.0, 1.0, -2.5, 0.0078125, 3.3895314e38, np.inf, -np.inf], np.float32)
    tensors, _ = st.decode(st.encode({"x": values}, dtypes={"x": "BF16"}))
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], values)


def test_bf16_encoding_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1); 1 + 3 * 2^-8 is
    # halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6; just above a tie rounds up.
    values = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8 + 2**-20),
                       3.4e38, np.nan], np.float32)
    bits = st.float32_to_bf16_bits(values)
    assert [int(b) for b in bits[:5]] == [0x3F80, 0x3F82, 0x3F81, 0xBF81, 0x7F80]
    assert np.isnan(st.bf16_bits_to_float32(bits[5:]))[0]
    raw = st.encode({"x": values[:4]}, dtypes={"x": "BF16"})
    assert raw[-8:] == struct.pack("<4H", 0x3F80, 0x3F82, 0x3F81, 0xBF81)


def test_bf16_decodes_to_float32():
    data = struct.pack("<3H", 0x3F80, 0xC020, 0x7F80)
    tensors, _ = st.decode(blob(json.dumps({"b": entry("BF16", (3,), (0, 6))}), data))
    np.testing.assert_array_equal(tensors["b"], np.array([1.0, -2.5, np.inf], np.float32))


def test_empty_blob_and_metadata_only_are_valid():
    assert st.decode(blob("{}")) == ({}, {})
    assert st.decode(blob('{"__metadata__":{"a":"b"}}  ')) == ({}, {"a": "b"})


def test_an_empty_tensor_on_a_boundary_is_valid():
    header = {"a": entry("F32", (1,), (0, 4)), "e": entry("F32", (0,), (4, 4)), "b": entry("U8", (1,), (4, 5))}
    tensors, _ = st.decode(blob(json.dumps(header), b"\0\0\x80\x3f\x07"))
    assert list(tensors) == ["a", "e", "b"] and tensors["a"][0] == 1.0 and tensors["b"][0] == 7


F4 = b"\0\0\x80\x3f"
REFUSED = {
    "short blob": (b"\x01\x00", "shorter than the 8-byte header length"),
    "header over 1 MiB": (struct.pack("<Q", (1 << 20) + 1) + b"{}", "exceeds 1 MiB"),
    "header past the blob": (struct.pack("<Q", 100) + b"{}", "does not fit"),
    "not an object": (blob("[]"), "must start with '{'"),
    "trailing garbage": (blob("{}x"), "followed only by spaces"),
    "two objects": (blob("{} {}"), "one JSON object"),
    "tab padding": (blob("{}\t"), "followed only by spaces"),
    "raw NUL": (blob("{}\0"), "NUL"),
    "escaped NUL in metadata": (blob(r'{"__metadata__":{"a":"\u0000"}}'), "NUL"),
    "escaped NUL in a name": (blob('{"a\\u0000":' + json.dumps(entry()) + "}", F4), "printable"),
    "duplicate name": (blob('{"a":' + json.dumps(entry()) + ',"a":' + json.dumps(entry()) + "}", F4), "duplicate key"),
    "duplicate metadata key": (blob('{"__metadata__":{"k":"1","k":"2"}}'), "duplicate key"),
    "duplicate entry key": (blob('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', F4), "duplicate key"),
    "empty name": (blob(json.dumps({"": entry()}), F4), "1 to 256 bytes"),
    "257-byte name": (blob(json.dumps({"n" * 257: entry()}), F4), "1 to 256 bytes"),
    "control character in a name": (blob(json.dumps({"a\n": entry()}), F4), "printable"),
    "C1 control in a name": (blob(json.dumps({"a\u0085": entry()}), F4), "printable"),
    "metadata not an object": (blob('{"__metadata__":[]}'), "mapping strings to strings"),
    "metadata null": (blob('{"__metadata__":null}'), "mapping strings to strings"),
    "metadata value a number": (blob('{"__metadata__":{"a":1}}'), "must be a string"),
    "lone surrogate": (blob(r'{"__metadata__":{"a":"\ud800"}}'), "not valid UTF-8"),
    "raw invalid UTF-8": (blob(b'{"__metadata__":{"a":"\xff"}}'), "not valid UTF-8"),
    "entry not an object": (blob('{"a":[1]}'), "must be an object"),
    "extra entry key": (blob('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', F4), "exactly the keys"),
    "missing entry key": (blob('{"a":{"dtype":"F32","shape":[1]}}'), "exactly the keys"),
    "unknown dtype": (blob(json.dumps({"a": entry("U16", (2,), (0, 4))}), F4), "is not one of"),
    "nine dimensions": (blob(json.dumps({"a": entry("U8", (1,) * 9, (0, 1))}), b"\0"), "at most 8"),
    "negative dimension": (blob('{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', b"\0"), "integers"),
    "minus zero": (blob('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'), "integers"),
    "float dimension": (blob('{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"\0"), "integers"),
    "exponent offset": (blob('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}}', b"\0"), "integers"),
    "boolean dimension": (blob('{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,1]}}', b"\0"), "integers"),
    "dimension past 2^63-1": (blob('{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}}'), "integers"),
    "NaN literal": (blob('{"a":{"dtype":"U8","shape":[NaN],"data_offsets":[0,1]}}', b"\0"), "one JSON object"),
    "three offsets": (blob('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}}', b"\0"), "two"),
    "begin after end": (blob(json.dumps({"a": entry("U8", (0,), (1, 0))}), b"\0"), "begin 1 > end 0"),
    "size mismatch": (blob(json.dumps({"a": entry("F32", (2,), (0, 4))}), F4), "needs 8"),
    "size overflow": (blob(json.dumps({"a": entry("F64", (2**62, 4), (0, 0))})), "overflows 64 bits"),
    "gap": (blob(json.dumps({"a": entry("U8", (1,), (1, 2))}), b"\0\0"), "belong to no tensor"),
    "overlap": (blob(json.dumps({"a": entry("U8", (2,), (0, 2)), "b": entry("U8", (1,), (1, 2))}), b"\0\0"), "overlaps"),
    "empty tensor inside another": (blob(json.dumps({"a": entry("U8", (2,), (0, 2)), "e": entry("U8", (0,), (1, 1))}), b"\0\0"), "overlaps"),
    "trailing data": (blob(json.dumps({"a": entry("U8", (1,), (0, 1))}), b"\0\0"), "trailing"),
    "offsets past the data": (blob(json.dumps({"a": entry("U8", (2,), (0, 2))}), b"\0"), "past the data buffer"),
    "BOOL byte 2": (blob(json.dumps({"a": entry("BOOL", (2,), (0, 2))}), b"\x01\x02"), "0 or 1"),
    "reserved name as a tensor": (blob('{"__metadata__":' + json.dumps(entry("U8", (1,), (0, 1))) + "}", b"\0"), "must be a string"),
    "deep nesting": (blob('{"a":' + "[" * 100000 + "]" * 100000 + "}"), "one JSON object"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_decode_refuses_what_the_protocol_refuses(case):
    raw, message = REFUSED[case]
    with pytest.raises(SafetensorsError, match="^safetensors: .*" + _escape(message)):
        st.decode(raw)


def _escape(text):
    import re
    return re.escape(text)


@pytest.mark.parametrize("tensors, kwargs, message", [
    ({"u16": np.zeros(2, np.uint16)}, {}, "has no safetensors dtype"),
    ({"c": np.zeros(2, np.complex64)}, {}, "has no safetensors dtype"),
    ({"deep": np.zeros((1,) * 9, np.float32)}, {}, "more than 8"),
    ({"": np.zeros(1, np.float32)}, {}, "1 to 256 bytes"),
    ({"__metadata__": np.zeros(1, np.float32)}, {}, "reserved"),
    ({"i": np.zeros(1, np.int32)}, {"dtypes": {"i": "BF16"}}, "from a float array"),
    ({"f": np.zeros(1, np.float32)}, {"dtypes": {"f": "F16"}}, "convert it first"),
    ({"a": np.zeros(1, np.float32)}, {"metadata": {"k": 1}}, "must be a string"),
    ({"a": np.zeros(1, np.float32)}, {"metadata": {"k": "\ud800"}}, "not valid UTF-8"),
    ({"a": np.zeros(1, np.float32)}, {"metadata": {"k": "a\0b"}}, "NUL"),
])
def test_encode_refuses_what_decode_would_refuse(tensors, kwargs, message):
    with pytest.raises(SafetensorsError, match=_escape(message)):
        st.encode(tensors, **kwargs)


def _mutate(rng, raw):
    raw = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and raw:  # flip a byte
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif kind == 1 and raw:  # cut
            del raw[rng.randrange(len(raw)):]
        elif kind == 2:  # insert bytes
            at = rng.randrange(len(raw) + 1)
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and len(raw) > 8:  # change the header length
            raw[0:8] = struct.pack("<Q", rng.choice([0, 1, len(raw) - 8, len(raw), 2**20 + 1, 2**64 - 1,
                                                     rng.randrange(len(raw))]))
        else:  # splice a JSON token into the header
            token = rng.choice([b"-0", b"1e3", b"2.0", b"null", b"true", b'"\\ud800"', b"{", b"]", b",",
                                b'"__metadata__"', b"18446744073709551616", b"\\u0000", b"NaN"])
            at = rng.randrange(8, len(raw) + 1) if len(raw) > 8 else 0
            raw[at:at] = token
    return bytes(raw)


def test_random_and_mutated_blobs_raise_only_safetensors_errors():
    rng = random.Random(20261206)
    seeds = [
        st.encode({"x": np.arange(6, dtype=np.float32).reshape(2, 3), "m": np.array([True, False]),
                   "i": np.array([1, 2], np.int64)}, {"uid": "ffn.0.1", "step": "3"}),
        st.encode({"b": np.array([1.5, -2.0], np.float32)}, dtypes={"b": "BF16"}),
        st.encode({"e": np.zeros((0, 4), np.float16), "u": np.array([1], np.uint8)}),
        blob("{}"),
    ]
    outcomes = {"accepted": 0, "refused": 0}
    for i in range(4000):
        if i % 10 == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        else:
            raw = _mutate(rng, rng.choice(seeds))
        try:
            tensors, metadata = st.decode(raw)
        except SafetensorsError:
            outcomes["refused"] += 1
            continue
        # What decodes is well formed: it encodes again and decodes to the same values.
        again, meta_again = st.decode(st.encode(tensors, metadata))
        assert meta_again == metadata and list(again) == list(tensors)
        outcomes["accepted"] += 1
    # The mutations exercise both sides.
    assert outcomes["refused"] > 1000 and outcomes["accepted"] > 10, outcomes


def _cpp_inspect(build_dir, path):
    """`dmoe inspect FILE` (the C++ decoder): its JSON summary, or None when it refuses the file."""
    import os
    import subprocess
    result = subprocess.run([os.path.join(build_dir, "cli/dmoe"), "inspect", str(path)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        assert result.stderr.startswith("error: safetensors: "), result.stderr
        return None
    return json.loads(result.stdout)


def test_the_cpp_decoder_accepts_exactly_what_this_one_accepts(build_dir, tmp_path):
    rng = random.Random(7)
    base = st.encode({"x": np.arange(6, dtype=np.float32).reshape(2, 3), "m": np.array([True, False]),
                      "h": np.array([1.5], np.float16)}, {"uid": "ffn.0.1"})
    blobs = [raw for raw, _ in REFUSED.values()]
    blobs += [st.encode({"t": np.zeros((2, 1), dt)}, {"k": "v"}) for dt in
              (np.float32, np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_)]
    blobs += [st.encode({"b": np.ones(3, np.float32)}, dtypes={"b": "BF16"}), blob("{}")]
    blobs += [_mutate(rng, base) for _ in range(600)]
    for _ in range(40):  # a changed data byte: any in x (24 bytes at -28) is fine, a BOOL byte past 1 is not
        at = rng.choice([rng.randrange(len(base) - 28, len(base) - 4), len(base) - 4 + rng.randrange(2)])
        blobs.append(base[:at] + bytes([rng.randrange(256)]) + base[at + 1:])
    agreed = {"accepted": 0, "refused": 0}
    for i, raw in enumerate(blobs):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(raw)
        cpp = _cpp_inspect(build_dir, path)
        try:
            tensors, metadata = st.decode(raw)
        except SafetensorsError as e:
            assert cpp is None, f"blob {i} {raw[:120]!r}: C++ accepts, Python refuses: {e}"
            agreed["refused"] += 1
            continue
        assert cpp is not None, f"blob {i} {raw[:120]!r}: Python accepts, C++ refuses"
        assert cpp["metadata"] == metadata
        assert {n: t["shape"] for n, t in cpp["tensors"].items()} == {n: list(a.shape) for n, a in tensors.items()}
        for name, t in cpp["tensors"].items():
            expected = "F32" if t["dtype"] == "BF16" else t["dtype"]
            assert st._NUMPY_TO_WIRE[tensors[name].dtype] == expected
        agreed["accepted"] += 1
    assert agreed["accepted"] >= 20 and agreed["refused"] >= 300, agreed
