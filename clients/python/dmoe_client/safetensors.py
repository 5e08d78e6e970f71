"""safetensors in numpy, with the acceptance rules of PROTOCOL section 2 (and section 7's choices).

`decode(blob)` returns `(tensors, metadata)`: a dict of numpy arrays in the order of their data
offsets and a dict of strings. It accepts exactly what the C++ decoder (tensor/safetensors.h)
accepts and raises SafetensorsError, whose message names the broken rule, for anything else: the
8-byte length, a header of at most 1 MiB that fits the blob, starts with '{', is one JSON object
padded only with spaces, holds no NUL (raw or escaped), no duplicate key, no number that is not a
plain non-negative integer, and valid UTF-8 (a lone surrogate escape is refused); tensor names of 1
to 256 bytes without control characters, `__metadata__` a string-to-string object; entries with
exactly dtype, shape (at most 8 dimensions) and data_offsets, each spanning product(shape) *
itemsize bytes; tensors covering the data buffer with no gap, overlap or trailing byte; BOOL bytes
0 or 1.

dtypes: F32, F16, F64, I64, I32, U8 and BOOL map to numpy's float32, float16, float64, int64,
int32, uint8 and bool. numpy has no bfloat16: a BF16 tensor decodes to float32 (exactly: every
bfloat16 is a float32), and `encode(..., dtypes={"x": "BF16"})` rounds a float array to bfloat16
with round-to-nearest-even, as torch does (NaN stays NaN, a value past the largest bfloat16 becomes
infinity). These are the protocol's eight dtypes; the C++ codec knows no others (no U16).

`encode(tensors, metadata)` writes the tensors in the given order, `__metadata__` first, and pads
the header with spaces to a multiple of 8 bytes, as the C++ encoder does; it refuses what decode
would refuse. Both functions are pure and thread-safe.
"""

import json

import numpy as np

from dmoe_client.errors import SafetensorsError

MAX_HEADER_BYTES = 1 << 20
MAX_RANK = 8
MAX_NAME_BYTES = 256
METADATA_KEY = "__metadata__"

# Wire name -> numpy dtype of the decoded array, and the item size on the wire.
_DTYPES = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<f4"), 2),
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("bool"), 1),
}
DTYPES = tuple(_DTYPES)
_NUMPY_TO_WIRE = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_INT_RULE = "JSON integers in [0, 2^63-1] (no sign, fraction or exponent)"
_MAX_I63 = (1 << 63) - 1
_MAX_U64 = (1 << 64) - 1


class _Refused(Exception):
    """Raised inside json's hooks; turned into SafetensorsError by _parse_json."""


def _refuse(message):
    return SafetensorsError("safetensors: " + message)


def _quote(s, limit=80):
    text = repr(s)
    return text if len(text) <= limit else text[:limit] + "..."


def bf16_bits_to_float32(bits):
    """uint16 bfloat16 bit patterns -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values):
    """float values -> uint16 bfloat16 bit patterns, rounding to nearest, ties to even."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    quiet = ((u >> 16) | 0x40).astype(np.uint16)  # keep the sign, set the quiet bit
    return np.where(nan, quiet, rounded).astype(np.uint16)


def _is_control(ch):
    o = ord(ch)
    return o <= 0x1F or 0x7F <= o <= 0x9F


def _utf8(s, what):
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(f"{what} {_quote(s)} is not valid UTF-8 (lone surrogate escapes are refused)")


def _check_string(s, what):
    """Metadata strings: valid UTF-8 without NUL."""
    if not isinstance(s, str):
        raise _refuse(f"__metadata__ {what} must be a string, got {type(s).__name__}")
    _utf8(s, f"__metadata__ {what}")
    if "\x00" in s:
        raise _refuse(f"__metadata__ {what} {_quote(s)} holds a NUL character; NUL is refused")


def check_tensor_name(name):
    """Raises SafetensorsError unless `name` is 1 to 256 bytes of printable UTF-8, not __metadata__."""
    if not isinstance(name, str):
        raise _refuse(f"tensor name must be a string, got {type(name).__name__}")
    raw = _utf8(name, "tensor name")
    if not 1 <= len(raw) <= MAX_NAME_BYTES:
        raise _refuse(f"tensor name must be 1 to 256 bytes, got {len(raw)}")
    if name == METADATA_KEY:
        raise _refuse("tensor name '__metadata__' is reserved")
    if any(_is_control(c) for c in name):
        raise _refuse(f"tensor name {_quote(name)} is not printable UTF-8 (it holds a control character)")


def _tensor_bytes(itemsize, shape):
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
    return total if total <= _MAX_U64 else None


def _pairs_hook(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {_quote(key)} in header")
        out[key] = value
    return out


def _parse_int(literal):
    if literal.startswith("-"):
        raise _Refused(f"numbers must be {_INT_RULE}, got {_quote(literal)}")
    return int(literal)


def _parse_float(literal):
    raise _Refused(f"numbers must be {_INT_RULE}, got {_quote(literal)}")


def _parse_constant(literal):
    raise _Refused(f"header must be one JSON object, got {literal}")


def _parse_json(text):
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook, parse_int=_parse_int,
                          parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as e:
        raise _refuse(str(e)) from None
    except RecursionError:
        raise _refuse("header must be one JSON object (it nests too deeply)") from None
    except ValueError as e:  # json.JSONDecodeError, and int() of a too-long literal
        raise _refuse(f"header must be one JSON object followed only by spaces: {e}") from None


def _json_int(value, maximum):
    return type(value) is int and 0 <= value <= maximum


def _parse_entry(name, entry):
    tensor = f"tensor {_quote(name)}"
    if not isinstance(entry, dict):
        raise _refuse(f"{tensor} must be an object with keys dtype, shape, data_offsets")
    keys = set(entry)
    if keys != {"dtype", "shape", "data_offsets"}:
        extra = sorted(keys - {"dtype", "shape", "data_offsets"})
        what = f"has key {_quote(extra[0])}" if extra else "is missing a key"
        raise _refuse(f"{tensor} {what}; an entry has exactly the keys dtype, shape, data_offsets")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _refuse(f"{tensor}: dtype {_quote(dtype)} is not one of {', '.join(DTYPES)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise _refuse(f"{tensor}: shape must be a list of at most 8 integers")
    if not all(_json_int(d, _MAX_I63) for d in shape):
        raise _refuse(f"{tensor}: shape entries must be {_INT_RULE}, got {shape!r}")
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_json_int(o, _MAX_U64) for o in offsets):
        raise _refuse(f"{tensor}: data_offsets must be a list of two {_INT_RULE}")
    begin, end = offsets
    if begin > end:
        raise _refuse(f"{tensor}: data_offsets begin {begin} > end {end}")
    nbytes = _tensor_bytes(_DTYPES[dtype][1], shape)
    if nbytes is None:
        raise _refuse(f"{tensor}: shape {shape} of {dtype} overflows 64 bits")
    if end - begin != nbytes:
        raise _refuse(f"{tensor}: data_offsets span {end - begin} bytes but shape {shape} of {dtype} needs {nbytes}")
    return (name, dtype, tuple(shape), begin, end)


def _parse_header(raw):
    if b"\x00" in raw:
        raise _refuse(f"header holds a NUL byte at offset {raw.index(0)}; NUL bytes are refused")
    if not raw.startswith(b"{"):
        raise _refuse("header must start with '{'")
    body = raw.rstrip(b" ")
    if not body.endswith(b"}"):
        raise _refuse("header must be one JSON object followed only by spaces (0x20)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse(f"header is not valid UTF-8: {e}") from None
    header = _parse_json(text)
    metadata = {}
    entries = []
    for key, value in header.items():
        if key == METADATA_KEY:
            if not isinstance(value, dict):
                raise _refuse("__metadata__ must be an object mapping strings to strings")
            for mkey, mvalue in value.items():
                _check_string(mkey, "key")
                _check_string(mvalue, f"value of key {_quote(mkey)}")
            metadata = value
            continue
        check_tensor_name(key)
        entries.append(_parse_entry(key, value))
    return entries, metadata


def decode(blob):
    """Validates and decodes a safetensors blob -> (dict name -> numpy array, dict metadata)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise _refuse(f"a blob must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 8:
        raise _refuse(f"blob of {len(blob)} bytes is shorter than the 8-byte header length")
    n = int.from_bytes(blob[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _refuse(f"header length {n} exceeds 1 MiB")
    if n > len(blob) - 8:
        raise _refuse(f"header length {n} does not fit in a blob of {len(blob)} bytes")
    entries, metadata = _parse_header(blob[8:8 + n])
    data = memoryview(blob)[8 + n:]
    for name, _, _, _, end in entries:
        if end > len(data):
            raise _refuse(f"tensor {_quote(name)}: data_offsets go past the data buffer of {len(data)} bytes")
    ordered = sorted(entries, key=lambda e: (e[3], e[4]))  # stable: ties keep header order
    cursor = 0
    for name, _, _, begin, end in ordered:
        if begin > cursor:
            raise _refuse(f"data bytes [{cursor}, {begin}) belong to no tensor; tensors must cover the data buffer without gaps")
        if begin < cursor:
            raise _refuse(f"tensor {_quote(name)} (begin {begin}) overlaps the tensor before it (end {cursor})")
        cursor = end
    if cursor != len(data):
        raise _refuse(f"{len(data) - cursor} trailing data bytes after the last tensor")
    tensors = {}
    for name, dtype, shape, begin, end in ordered:
        chunk = data[begin:end]
        if dtype == "BOOL" and len(chunk) and np.frombuffer(chunk, dtype=np.uint8).max() > 1:
            raise _refuse(f"BOOL tensor {_quote(name)} has a byte other than 0 or 1")
        if dtype == "BF16":
            array = bf16_bits_to_float32(np.frombuffer(chunk, dtype="<u2"))
        else:
            array = np.frombuffer(chunk, dtype=_DTYPES[dtype][0]).copy()
        tensors[name] = array.reshape(shape)
    return tensors, dict(metadata)


def _wire_bytes(name, array, wire):
    """The little-endian bytes of `array` as the wire dtype `wire`."""
    tensor = f"tensor {_quote(name)}"
    if wire not in _DTYPES:
        raise _refuse(f"{tensor}: dtype {_quote(wire)} is not one of {', '.join(DTYPES)}")
    if wire == "BF16":
        if array.dtype.kind != "f":
            raise _refuse(f"{tensor}: BF16 is encoded from a float array, got {array.dtype}")
        return float32_to_bf16_bits(array).astype("<u2").tobytes()
    if _NUMPY_TO_WIRE.get(array.dtype.newbyteorder("=")) != wire:
        raise _refuse(f"{tensor}: an array of {array.dtype} cannot be sent as {wire}; convert it first")
    if wire == "BOOL":
        return array.astype(np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=_DTYPES[wire][0]).tobytes()


def encode(tensors, metadata=None, dtypes=None):
    """Encodes {name: array} (in the given order) and {str: str} metadata into one blob.

    The wire dtype is the array's own (float32 -> F32, ...); `dtypes` maps a name to "BF16" to send a
    float array as bfloat16 (round-to-nearest-even). Raises SafetensorsError for a bad name, an
    unsupported dtype, a rank above 8, a metadata value that is not a string, or a header past 1 MiB.
    """
    dtypes = dtypes or {}
    parts = []
    if metadata:
        items = []
        for key, value in metadata.items():
            _check_string(key, "key")
            _check_string(value, f"value of key {_quote(key)}")
            items.append(json.dumps(key, ensure_ascii=False) + ":" + json.dumps(value, ensure_ascii=False))
        parts.append('"__metadata__":{' + ",".join(items) + "}")
    chunks = []
    offset = 0
    for name, value in tensors.items():
        check_tensor_name(name)
        array = np.asarray(value)
        if array.ndim > MAX_RANK:
            raise _refuse(f"tensor {_quote(name)}: shape has {array.ndim} dimensions, more than 8")
        wire = dtypes.get(name) or _NUMPY_TO_WIRE.get(array.dtype.newbyteorder("="))
        if wire is None:
            raise _refuse(f"tensor {_quote(name)}: numpy dtype {array.dtype} has no safetensors dtype "
                          f"(allowed: float32, float16, float64, int64, int32, uint8, bool; BF16 via dtypes=)")
        raw = _wire_bytes(name, array, wire)
        shape = ",".join(str(d) for d in array.shape)
        parts.append(f'{json.dumps(name, ensure_ascii=False)}:{{"dtype":"{wire}","shape":[{shape}],'
                     f'"data_offsets":[{offset},{offset + len(raw)}]}}')
        chunks.append(raw)
        offset += len(raw)
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    if len(header) > MAX_HEADER_BYTES:
        raise _refuse(f"header length {len(header)} exceeds 1 MiB")
    return len(header).to_bytes(8, "little") + header + b"".join(chunks)
