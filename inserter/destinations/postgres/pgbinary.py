"""Arrow record batches → PostgreSQL ``COPY … (FORMAT BINARY)`` bytes, column-at-a-time.

psycopg's ``Copy.write_row`` needs one Python object per value (``to_pylist``), which caps a load
near 100k rows/s on this machine. Here every column becomes an Arrow array of its COPY *pieces*
(4-byte big-endian length + value bytes, or ``-1`` for NULL) with vectorized Arrow kernels and
``array.byteswap`` (the values are little-endian in Arrow, big-endian on the wire); one
``binary_join_element_wise`` then concatenates the pieces of each row behind the field count.
The joined array's data buffer *is* the COPY body: no per-value Python at all.

Pure functions over Arrow data; no I/O. Wire formats (``src/backend/utils/adt/*`` ``*_send``):
int2/int4/int8/float8 big-endian; bool one byte; timestamptz int64 µs since 2000-01-01 UTC;
uuid 16 bytes; text its UTF-8 bytes; jsonb a version byte (1) followed by the JSON text.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"
NULL_PIECE: Final = b"\xff\xff\xff\xff"
#: Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000

#: Staging (wire) types this encoder writes, with the array typecode of their fixed-width value.
FIXED: Final = {"smallint": ("h", 2), "integer": ("i", 4), "bigint": ("q", 8), "double precision": ("d", 8)}
WIRE_TYPES: Final = frozenset({*FIXED, "boolean", "timestamptz", "uuid", "text", "jsonb"})

_LITTLE: Final = sys.byteorder == "little"
_EMPTY: Final = pa.scalar(b"", pa.large_binary())
_NULL: Final = pa.scalar(NULL_PIECE, pa.large_binary())


class EncodeError(ValueError):
    """A value cannot be written as its column's PostgreSQL type (e.g. an event_id that is not a
    UUID). Terminal: the object's content is wrong, retrying cannot help."""


@dataclass(frozen=True, slots=True)
class Column:
    """One COPY column: its name in the batch and its staging (wire) type."""

    name: str
    wire_type: str

    def __post_init__(self) -> None:
        if self.wire_type not in WIRE_TYPES:
            raise ValueError(f"no binary COPY encoder for {self.wire_type!r} (column {self.name})")


def constant_piece(value: int) -> bytes:
    """The COPY piece of an ``integer`` constant (the staging table's object ordinal)."""
    return struct.pack(">ii", 4, value)


def encode_batch(
    batch: Any,
    columns: Sequence[Column],
    constants: Sequence[bytes] = (),
    *,
    keep: dict[str, Any] | None = None,
) -> bytes:
    """The COPY tuples of ``batch`` (no header/trailer): ``columns`` in order, then ``constants``
    (pieces appended to every row, e.g. from :func:`constant_piece`). ``keep``: filled with
    each column's pieces by name — the values exactly as PostgreSQL will read them."""
    n = batch.num_rows
    if n == 0:
        return b""
    count = pa.scalar(struct.pack(">h", len(columns) + len(constants)), pa.large_binary())
    pieces: list[Any] = [count]
    for col in columns:
        pieces.append(encode_column(_combined(batch.column(col.name)), col.wire_type, col.name))
        if keep is not None:
            keep[col.name] = pieces[-1]
    pieces.extend(pa.scalar(c, pa.large_binary()) for c in constants)
    rows = pc.binary_join_element_wise(*pieces, _EMPTY)
    return _body(rows)


def encode_column(arr: Any, wire_type: str, name: str = "?") -> Any:
    """large_binary array of this column's COPY pieces (length prefix + value, or NULL)."""
    if wire_type in FIXED:
        typecode, width = FIXED[wire_type]
        target = {"h": pa.int16(), "i": pa.int32(), "q": pa.int64(), "d": pa.float64()}[typecode]
        return _fixed(_cast(arr, target, name), typecode, width)
    if wire_type == "timestamptz":
        micros = _cast(arr, pa.timestamp("us", tz="UTC"), name).cast(pa.int64())
        return _fixed(pc.subtract(micros, PG_EPOCH_OFFSET_US), "q", 8)
    if wire_type == "boolean":
        values = _cast(arr, pa.bool_(), name).cast(pa.uint8())
        return _with_nulls(arr, _prefixed(_fixed_binary(_values(values, 1), 1, len(values)), 1))
    if wire_type == "uuid":
        return _uuid(arr, name)
    if wire_type == "jsonb":
        return _variable(_text(arr, name), version=b"\x01")
    return _variable(_text(arr, name))


# -- helpers -------------------------------------------------------------------------------------


def _combined(col: Any) -> Any:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _cast(arr: Any, target: Any, name: str) -> Any:
    if arr.type == target:
        return arr
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise EncodeError(f"column {name}: cannot write {arr.type} as {target}: {exc}") from exc


def _text(arr: Any, name: str) -> Any:
    if pa.types.is_decimal(arr.type) or not (
        pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type)
    ):
        arr = _cast(arr, pa.string(), name)  # numeric travels as its text (cast in the merge)
    return arr.cast(pa.large_binary())


def _values(arr: Any, width: int) -> memoryview:
    """The raw little-endian value bytes of a fixed-width array (respecting its offset)."""
    if arr.type.bit_width != 8 * width:
        raise TypeError(f"expected {width}-byte values, got {arr.type}")
    buf = arr.buffers()[1]
    start = arr.offset * width
    return memoryview(buf)[start : start + len(arr) * width]


def _fixed_binary(data: Any, width: int, n: int) -> Any:
    return pa.Array.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])


def _fixed(arr: Any, typecode: str, width: int) -> Any:
    """Pieces of a fixed-width numeric column: big-endian ``width`` then the big-endian value."""
    values = array.array(typecode)
    values.frombytes(_values(arr, width))
    if _LITTLE:
        values.byteswap()
    return _with_nulls(arr, _prefixed(_fixed_binary(values, width, len(arr)), width))


def _prefixed(fixed: Any, width: int) -> Any:
    prefix = pa.scalar(struct.pack(">i", width), pa.large_binary())
    return pc.binary_join_element_wise(prefix, fixed.cast(pa.large_binary()), _EMPTY)


def _with_nulls(source: Any, pieces: Any) -> Any:
    if source.null_count == 0:
        return pieces
    return pc.if_else(source.is_null(), _NULL, pieces)


def _variable(values: Any, version: bytes = b"") -> Any:
    """Pieces of a variable-width column: big-endian length (incl. ``version``) + bytes."""
    lengths = pc.binary_length(values).fill_null(0)
    if version:
        lengths = pc.add(lengths, len(version))
    lengths = lengths.cast(pa.int32())
    prefix = array.array("i")
    prefix.frombytes(_values(lengths, 4))
    if _LITTLE:
        prefix.byteswap()
    parts = [_fixed_binary(prefix, 4, len(values)).cast(pa.large_binary())]
    if version:
        parts.append(pa.scalar(version, pa.large_binary()))
    parts.append(values)
    joined = pc.binary_join_element_wise(*parts, _EMPTY)  # null where the value is null
    return joined.fill_null(_NULL) if values.null_count else joined


def _uuid(arr: Any, name: str) -> Any:
    """Canonical UUID text → 16 raw bytes, vectorized: drop hyphens, one ``bytes.fromhex``."""
    text = _text(arr, name)
    n = len(text)
    if text.null_count:
        raise EncodeError(f"column {name}: {text.null_count} null UUID(s)")
    lengths = pc.binary_length(text)
    if pc.min_max(lengths).as_py() != {"min": 36, "max": 36}:
        raise EncodeError(f"column {name}: a value is not a 36-character UUID")
    hexes = pc.replace_substring(text, b"-", b"")
    if pc.max(pc.binary_length(hexes)).as_py() != 32:
        raise EncodeError(f"column {name}: a value is not a hyphenated UUID")
    offsets = hexes.buffers()[1]
    (start,) = struct.unpack_from("<q", offsets, 8 * hexes.offset)
    data = memoryview(hexes.buffers()[2])[start : start + 32 * n]
    try:
        raw = bytes.fromhex(str(data, "ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EncodeError(f"column {name}: a value is not a hex UUID: {exc}") from exc
    return _prefixed(_fixed_binary(raw, 16, n), 16)


def _body(rows: Any) -> bytes:
    """The bytes of a large_binary array's values, back to back (the array is fresh from a join)."""
    offsets = rows.buffers()[1]
    first, last = (
        struct.unpack_from("<q", offsets, 8 * rows.offset)[0],
        struct.unpack_from("<q", offsets, 8 * (rows.offset + len(rows)))[0],
    )
    return memoryview(rows.buffers()[2])[first:last].tobytes()
