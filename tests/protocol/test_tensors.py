"""OIP datatype names, numpy dtypes and tensor sizes."""

from __future__ import annotations

import numpy as np
import pytest

from edgecut.errors import BadInputError, ProtocolError
from edgecut.protocol.tensors import OIP_DATATYPES, datatype_of, dtype_of, expected_nbytes


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
def test_datatype_round_trip(datatype: str) -> None:
    dtype = dtype_of(datatype)
    assert datatype_of(dtype) == datatype
    # The wire is little-endian: the table pins it, and big-endian maps to the same name.
    assert dtype.byteorder in ("<", "|", "=")
    assert datatype_of(dtype.newbyteorder(">")) == datatype


def test_table_covers_the_protocol_numeric_types() -> None:
    assert set(OIP_DATATYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
        "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
    }


@pytest.mark.parametrize("dtype", [np.complex64, np.str_, np.object_, np.dtype("V4"),
                                   np.dtype([("a", "<f4")])])
def test_unsupported_numpy_dtype_is_bad_input(dtype: object) -> None:
    with pytest.raises(BadInputError, match="cannot be sent"):
        datatype_of(np.dtype(dtype))


def test_unknown_datatype_lists_known_ones() -> None:
    with pytest.raises(ProtocolError, match=r"unknown tensor datatype 'FP8'.*FP32"):
        dtype_of("FP8")


def test_bytes_datatype_is_named_as_unsupported() -> None:
    with pytest.raises(ProtocolError, match=r"BYTES.*not supported"):
        dtype_of("BYTES")


@pytest.mark.parametrize(
    ("datatype", "shape", "nbytes"),
    [("FP32", (), 4), ("FP32", (2, 3), 24), ("INT8", (0, 7), 0), ("FP64", (5,), 40),
     ("BOOL", (3, 3), 9), ("FP16", [np.int64(4)], 8)],
)
def test_expected_nbytes(datatype: str, shape: tuple[int, ...], nbytes: int) -> None:
    assert expected_nbytes(datatype, shape) == nbytes


def test_expected_nbytes_rejects_negative_dims() -> None:
    with pytest.raises(ProtocolError, match=r"negative dims \[-1\]"):
        expected_nbytes("FP32", (1, -1, 3))


def test_expected_nbytes_rejects_overflowing_shape() -> None:
    with pytest.raises(ProtocolError, match="ceiling"):
        expected_nbytes("FP64", (1 << 31, 1 << 31, 1 << 31))


def test_expected_nbytes_rejects_non_integer_dims() -> None:
    with pytest.raises(ProtocolError, match="non-integer"):
        expected_nbytes("FP32", (2.5, 1))  # type: ignore[arg-type]
