from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tests.helpers import make_dataset
from tte_recsys.artifacts import write_manifest, write_parquet
from tte_recsys.config import LabelConfig
from tte_recsys.data import labels
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


@pytest.mark.parametrize("dense_vocab", [64, 0])  # genres/brand take the dense path, then the sparse one
def test_batch_label_matrix_by_hand_on_both_paths(dense_vocab: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels, "_DENSE_VOCAB", dense_vocab)
    lab = RelevanceLabeler.from_dataset(_ds(), LabelConfig(fields={"genres": 1.0, "brand": 3.0}))
    assert all((d is not None) == (dense_vocab > 0) for d in lab._dense)
    got = lab.cross(np.array([0, 2]), np.array([1, 2, 3, 0]))
    # row 0 {a,b}/{x}: vs 1 {b,c}/{x} (1/3 + 3)/4; vs 2 {}/{y} 0; vs 3 {a,b}/{} 1/4; vs itself 1
    # row 2 {}/{y}: vs 1 0; vs itself (empty genres give 0, brand 1) 3/4; vs 3 0 (both empty: 0); vs 0 0
    want = [[(1 / 3 + 3) / 4, 0, 1 / 4, 1], [0, 3 / 4, 0, 0]]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32
    # the training device's copy gives the same numbers as either path, bit for bit
    on_device = lab.on_device("cpu")
    assert on_device is not None
    rng = np.random.default_rng(0)
    r, c = rng.integers(0, 4, 50), rng.integers(0, 4, 70)
    dev = on_device(torch.from_numpy(r), torch.from_numpy(c))
    assert dev.dtype == torch.float32
    np.testing.assert_array_equal(dev.numpy(), lab.cross(r, c))
    monkeypatch.setattr(labels, "_DEVICE_TABLE_BYTES", 4 * 4 * 2)  # genres (4 x 3) no longer fits
    assert lab.on_device("cpu") is None


def test_relation_labels_are_symmetric() -> None:
    ds = _ds()
    rel = pl.DataFrame({"src_item_id": ["1"], "dst_item_id": ["3"], "relation": ["also_viewed"]})
    ds = Dataset.build("t", ds.items, ds.interactions, rel)
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(relation="also_viewed"))
    np.testing.assert_array_equal(lab.pairs(np.array([0, 2, 0]), np.array([2, 0, 1])), [1, 1, 0])
    rows, cols = np.array([0, 2, 1, 3, 0]), np.array([2, 0, 0, 1, 3, 2])
    on_device = lab.on_device("cpu")
    assert on_device is not None
    got = on_device(torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    np.testing.assert_array_equal(got, lab.cross(rows, cols))
    assert got.sum() == 6  # rows 0, 2, 0 (items 0, 2, 0) each meet their partner twice among the columns
    with pytest.raises(
        ValueError, match=r"labels.relation='also_bought': dataset 't' has relations \['also_viewed'\]"
    ):
        RelevanceLabeler.from_dataset(ds, LabelConfig(relation="also_bought"))


def test_unknown_label_field_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"\['colour'\] not attribute columns of dataset 't'; valid: \['genres', 'brand'\]"
    ):
        RelevanceLabeler.from_dataset(_ds(), LabelConfig(fields={"colour": 1.0}))


def _teacher_folder(path: Path, ids: list[str], vecs: np.ndarray) -> Path:
    """An embed_items-style folder (shards + manifest) holding ``vecs`` for ``ids``."""
    write_parquet(
        path / "shards" / "part-00000.parquet",
        pl.DataFrame({"item_id": ids, "vector": pl.Series(vecs, dtype=pl.Array(pl.Float32, vecs.shape[1]))}),
    )
    write_manifest(path, "embed_items", {"model_id": "teacher", "trace_version": "none"})
    return path


def test_teacher_labels_are_clipped_cosines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels, "_CHUNK", 3)  # pairs are dotted in chunks: several here
    # items 1..4: unit x; length-5 vector at 53.13 degrees (cos 0.6); -x; the zero vector
    vecs = np.array([[1, 0], [3, 4], [-2, 0], [0, 0]], dtype=np.float32)
    folder = _teacher_folder(tmp_path / "t", ["4", "3", "2", "1"], vecs[::-1].copy())  # any order
    lab = RelevanceLabeler.from_dataset(_ds(), LabelConfig(teacher=str(folder)))
    got = lab.pairs(np.array([0, 0, 0, 1, 3, 0]), np.array([1, 2, 0, 1, 0, -1]))
    # cos 0.6; cos -1 clipped to 0; self 1; self 1; zero vector 0; padding 0
    np.testing.assert_allclose(got, [0.6, 0, 1, 1, 0, 0], rtol=1e-6)
    ids = np.array([0, 1, 2, 3])
    a, b = np.meshgrid(ids, ids, indexing="ij")
    np.testing.assert_allclose(lab.matrix(ids), lab.pairs(a.ravel(), b.ravel()).reshape(4, 4), rtol=1e-6)
    on_device = lab.on_device("cpu")
    assert on_device is not None
    np.testing.assert_allclose(
        on_device(torch.from_numpy(ids), torch.from_numpy(ids)).numpy(), lab.matrix(ids), atol=1e-6
    )
    monkeypatch.setattr(labels, "_DEVICE_TABLE_BYTES", 4 * 2 * 4 - 1)  # 4 items x 2 dims no longer fit
    assert lab.on_device("cpu") is None


def test_teacher_folder_errors_name_the_folder_and_items(tmp_path: Path) -> None:
    partial = _teacher_folder(tmp_path / "p", ["1", "2"], np.eye(2, dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"labels.teacher='.*p': 2 item\(s\) have no vector \(e.g. \['3', '4'\]\)"
    ):
        RelevanceLabeler.from_dataset(_ds(), LabelConfig(teacher=str(partial)))
    with pytest.raises(FileNotFoundError, match=r"labels.teacher='.*nowhere': no such folder"):
        RelevanceLabeler.from_dataset(_ds(), LabelConfig(teacher=str(tmp_path / "nowhere")))
    with pytest.raises(
        ValueError, match=r"teacher=content names the content vectors of a pipelines\.train_i2i run"
    ):
        RelevanceLabeler.from_dataset(_ds(), LabelConfig(teacher="content"))


def test_label_config_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="set one label source"):
        LabelConfig(relation="also_viewed", teacher="t")
    with pytest.raises(ValueError, match=r"labels.fields='\?\?\?': name at least one attribute column"):
        LabelConfig(fields="???")  # type: ignore[arg-type]  # the tabular config left unfilled
    assert LabelConfig(fields="???", teacher="t").fields == {}  # type: ignore[arg-type]
