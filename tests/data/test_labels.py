from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.conftest import make_dataset
from tte_recsys.config import LabelConfig
from tte_recsys.data.dataset import Dataset
from tte_recsys.data.labels import RelevanceLabeler


def _ds() -> Dataset:
    ds = make_dataset(
        [("u", "1", 1)], items={"1": ["a", "b"], "2": ["b", "c"], "3": [], "4": ["a", "b", "a"]}
    )
    return Dataset.build(
        "t", ds.items.with_columns(pl.Series("brand", [["x"], ["x"], ["y"], []])), ds.interactions
    )


def test_jaccard_by_hand() -> None:
    lab = RelevanceLabeler.from_dataset(_ds(), LabelConfig(fields={"genres": 1.0}))
    got = lab.pairs(np.array([0, 0, 2, 0, 0]), np.array([1, 2, 2, 3, -1]))
    # {a,b} vs {b,c} = 1/3; vs {} = 0; {} vs {} = 0; {a,b} vs {a,b,a} = 1 (duplicates count once); padding 0
    np.testing.assert_allclose(got, [1 / 3, 0, 0, 1, 0], rtol=1e-6)


def test_weighted_fields_and_matrix_agree_with_pairs() -> None:
    lab = RelevanceLabeler.from_dataset(_ds(), LabelConfig(fields={"genres": 1.0, "brand": 3.0}))
    # items 0,1: genres 1/3, brand 1 -> (1/3 * 1 + 1 * 3) / 4
    np.testing.assert_allclose(lab.pairs(np.array([0]), np.array([1])), [(1 / 3 + 3) / 4], rtol=1e-6)
    ids = np.array([0, 1, 2, 3])
    m = lab.matrix(ids)
    a, b = np.meshgrid(ids, ids, indexing="ij")
    np.testing.assert_allclose(m, lab.pairs(a.ravel(), b.ravel()).reshape(4, 4), rtol=1e-6)
    np.testing.assert_allclose(
        lab.topk(np.array([0]), np.array([[1, -1]])), [[(1 / 3 + 3) / 4, 0]], rtol=1e-6
    )


def test_relation_labels_are_symmetric() -> None:
    ds = _ds()
    rel = pl.DataFrame({"src_item_id": ["1"], "dst_item_id": ["3"], "relation": ["also_viewed"]})
    ds = Dataset.build("t", ds.items, ds.interactions, rel)
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(relation="also_viewed"))
    np.testing.assert_array_equal(lab.pairs(np.array([0, 2, 0]), np.array([2, 0, 1])), [1, 1, 0])
    with pytest.raises(
        ValueError, match=r"labels.relation='also_bought': dataset 't' has relations \['also_viewed'\]"
    ):
        RelevanceLabeler.from_dataset(ds, LabelConfig(relation="also_bought"))


def test_unknown_label_field_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"\['colour'\] not attribute columns of dataset 't'; valid: \['genres', 'brand'\]"
    ):
        RelevanceLabeler.from_dataset(_ds(), LabelConfig(fields={"colour": 1.0}))
