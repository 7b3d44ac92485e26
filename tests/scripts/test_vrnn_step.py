"""benchmarks/vrnn_step.py: ``--variants`` picks the rows to measure (it was once ignored, so a one-row run at batch 8
measured the slow rolled rows first and printed nothing for many minutes)."""

import pytest

from benchmarks.vrnn_step import VARIANTS, selected_variants


def test_all_rows_by_default_in_order():
    assert selected_variants("conv", []) == list(VARIANTS)


def test_named_rows_only_in_the_table_order():
    assert selected_variants("conv", ["phases:unrolled", "lax:rolled"]) == [("lax", False), ("phases", True)]


def test_mlp_has_no_transposed_convolutions():
    assert selected_variants("mlp", []) == [("phases", False), ("phases", True)]
    with pytest.raises(ValueError, match="nothing to measure"):
        selected_variants("mlp", ["lax:unrolled"])


def test_unknown_row_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        selected_variants("conv", ["phases:unroled"])
