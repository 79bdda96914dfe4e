"""Item features and training batches: KJT contents, rank slices of one global batch, labels, logQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_dataset
from tte_recsys.config import LabelConfig
from tte_recsys.data.labels import RelevanceLabeler
from tte_recsys.losses.mtmh import LossConfig, mtmh_loss
from tte_recsys.models.mtmh import ItemFeatures, ModelConfig
from tte_recsys.training.batches import (
    BatchConfig,
    PackedBatch,
    PairBatches,
    batch_loader,
    collate,
    epoch_pairs,
    mixed_log_q,
)
from tte_recsys.training.loop import TrainerConfig

GENRES = {"a": ["x", "y"], "b": [], "c": ["y"], "d": ["z"], "e": ["x"]}


def _ds():  # type: ignore[no-untyped-def]
    rows = [("u", i, t) for t, i in enumerate("abcde")]
    return make_dataset(rows, GENRES)


def test_features_lookup_feature_major() -> None:
    f = ItemFeatures.from_items(_ds().items, ["genres"])
    assert f.vocab == {"genres": ["x", "y", "z"]}
    values, lengths = f.lookup(np.array([0, 1, 2]))  # items a, b, c
    # item_id values [0, 1, 2] (one each), then genres: a -> x, y; b -> none; c -> y
    assert lengths.tolist() == [1, 1, 1, 2, 0, 1]
    assert values.tolist() == [0, 1, 2, 0, 1, 1]
    kjt = f.kjt(np.array([3]))
    assert kjt.keys() == ["item_id", "genres"]
    assert kjt["genres"].values().tolist() == [2]


def test_features_error_names_the_column() -> None:
    with pytest.raises(ValueError, match="'title' is not a list-of-strings column"):
        ItemFeatures.from_items(_ds().items, ["title"])


def test_two_ranks_split_the_one_rank_batch() -> None:
    ds = _ds()
    f = ItemFeatures.from_items(ds.items, ["genres"])
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    one = PairBatches(src, dst, f, lab, BatchConfig(batch_size=8, seed=3))
    halves = [
        PairBatches(src, dst, f, lab, BatchConfig(batch_size=8, seed=3), rank=r, world_size=2) for r in (0, 1)
    ]
    assert len(one) == 5
    for step in (0, 4, 7):  # step 7 is in epoch 1: another permutation
        full, parts = one[step], [h[step] for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), full["labels"])
        np.testing.assert_array_equal(np.concatenate([p["pos"] for p in parts]), full["pos"])
        np.testing.assert_array_equal(parts[0]["log_q"], full["log_q"])
        q = full["codes"][:8]
        assert np.concatenate([p["codes"][:4] for p in parts]).tolist() == q.tolist()
        # labels are trigger x every global candidate; the mask marks the positive's duplicates
        t = full["codes"][8:]
        np.testing.assert_array_equal(full["cand"], t)
        assert all(p["cand"].tolist() == t.tolist() for p in parts)
        np.testing.assert_array_equal(full["labels"], lab.cross(q, t))
        np.testing.assert_array_equal(collate(f, full).mask.numpy(), t[:, None] == t[None, :])
        half = collate(f, parts[1]).mask.numpy()
        np.testing.assert_array_equal(half, t[4:, None] == t[None, :])
        assert "labels" not in one.arrays(step, labels=False)
    assert not np.array_equal(one.pairs_of_step(0), one.pairs_of_step(5))  # epochs differ


def test_log_q_is_target_frequency_and_collate_builds_a_kjt() -> None:
    ds = _ds()
    f = ItemFeatures.from_items(ds.items, ["genres"])
    src, dst = np.array([0, 1, 2, 3]), np.array([1, 1, 1, 4])
    b = PairBatches(src, dst, f, None, BatchConfig(batch_size=4))
    arrays = b[0]
    assert "labels" not in arrays
    expect = {1: np.log(0.75), 4: np.log(0.25)}
    assert np.allclose(arrays["log_q"], [expect[int(d)] for d in dst[b.pairs_of_step(0)]])
    batch = collate(f, arrays)
    assert batch.features.keys() == ["item_id", "genres"]
    assert batch.features["item_id"].values().tolist() == arrays["codes"].tolist()


def test_packed_batch_is_the_arrays_and_the_kjt_of_the_features() -> None:
    """One buffer crosses from the loader's worker; unpacked, it is every array bit for bit and the
    KJT ``ItemFeatures`` builds (offsets and per-key lengths included), with or without labels."""
    ds = _ds()
    f = ItemFeatures.from_items(ds.items, ["genres"])
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    src, dst = np.arange(40) % 5, (np.arange(40) + 2) % 5
    for labeler in (lab, None):
        pb = PairBatches(src, dst, f, labeler, BatchConfig(batch_size=8, id_dropout=0.3))
        for step in range(3):
            arrays = pb[step]
            packed = PackedBatch.pack(f.names, arrays)
            assert all(off % 64 == 0 for _, _, _, off, _ in packed.layout)
            batch = packed.to("cpu")
            for name in ("codes", "pos", "log_q", "cand", *(["labels"] if labeler else [])):
                got = getattr(batch, name).numpy()
                assert got.dtype == arrays[name].dtype and got.shape == arrays[name].shape, name
                np.testing.assert_array_equal(got, arrays[name])
            assert (batch.labels is None) == (labeler is None)
            want = f.kjt_from_arrays(arrays["values"], arrays["lengths"])
            kjt = batch.features
            assert kjt.keys() == want.keys() and kjt.stride() == want.stride() == 16
            for t in ("values", "lengths", "offsets"):
                assert getattr(kjt, t)().dtype == getattr(want, t)().dtype, t
                assert getattr(kjt, t)().tolist() == getattr(want, t)().tolist(), t
            assert kjt.length_per_key() == want.length_per_key()
            for key in f.names:
                assert kjt[key].values().tolist() == want[key].values().tolist()
    # through a loader worker process: the same batches, in step order
    pb = PairBatches(src, dst, f, lab, BatchConfig(batch_size=8))
    loaded = [b.to("cpu") for b in batch_loader(pb, 2, 6, num_workers=1)]
    for step, b in zip(range(2, 6), loaded, strict=True):
        np.testing.assert_array_equal(b.labels.numpy(), pb[step]["labels"])
        assert b.features.values().tolist() == collate(f, pb[step]).features.values().tolist()


def test_batch_errors() -> None:
    f = ItemFeatures.from_items(_ds().items, [])
    with pytest.raises(ValueError, match="divisible by the world size"):
        PairBatches(np.zeros(10), np.zeros(10), f, None, BatchConfig(batch_size=5), world_size=2)
    with pytest.raises(ValueError, match="lower the batch size"):
        PairBatches(np.zeros(3), np.zeros(3), f, None, BatchConfig(batch_size=4))


def test_model_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown: \\['ctr'\\]"):
        ModelConfig(heads=("coeng", "ctr"))
    with pytest.raises(ValueError, match=r"model\.content"):
        ModelConfig(content="cached")
    with pytest.raises(ValueError, match=r"model\.min_id_count=-1: expected >= 0"):
        ModelConfig(min_id_count=-1)


def test_items_below_min_id_count_have_no_id() -> None:
    counts = np.array([0, 1, 2, 3, 7])
    assert ModelConfig().no_id(counts) is None
    assert ModelConfig(cold_without_id=True).no_id(counts).tolist() == [True, False, False, False, False]
    assert ModelConfig(min_id_count=3).no_id(counts).tolist() == [True, True, True, False, False]
    # cold_without_id is min_id_count 1: it never raises a higher threshold
    assert (
        ModelConfig(min_id_count=3, cold_without_id=True).no_id(counts).tolist() == [True] * 3 + [False] * 2
    )


def test_cold_items_without_id_and_id_dropout() -> None:
    ds = _ds()
    no_id = np.array([False, True, False, False, True])  # items b and e never trained
    f = ItemFeatures.from_items(ds.items, ["genres"], no_id=no_id)
    values, lengths = f.lookup(np.array([0, 1, 4]))
    assert lengths[:3].tolist() == [1, 0, 0]  # an empty id bag: SUM pooling gives a zero vector
    assert values[:1].tolist() == [0]
    assert f.kjt(np.array([1]))["item_id"].values().tolist() == []
    src, dst = np.arange(40) % 5, (np.arange(40) + 1) % 5
    plain = ItemFeatures.from_items(ds.items, [])
    b = PairBatches(src, dst, plain, None, BatchConfig(batch_size=40, id_dropout=0.5))[0]
    kept = b["lengths"][:80]
    assert 20 < kept.sum() < 60  # about half the 80 items keep their id
    assert b["values"].tolist() == b["codes"][kept.astype(bool)].tolist()
    again = PairBatches(src, dst, plain, None, BatchConfig(batch_size=40, id_dropout=0.5))[0]
    assert again["lengths"].tolist() == b["lengths"].tolist()  # seeded by step: resumable
    with pytest.raises(ValueError, match="id_dropout"):
        PairBatches(src, dst, plain, None, BatchConfig(batch_size=40, id_dropout=1.0))


def test_count_weighting_repeats_each_pair_by_its_count_and_moves_log_q() -> None:
    f = ItemFeatures.from_items(_ds().items, ["genres"])
    pairs = {"src": np.array([0, 1, 2]), "dst": np.array([1, 2, 3]), "count": np.array([3, 1, 2])}
    u_src, u_dst = epoch_pairs(pairs, "unique")
    assert (u_src.tolist(), u_dst.tolist()) == ([0, 1, 2], [1, 2, 3])
    c_src, c_dst = epoch_pairs(pairs, "count")
    assert list(zip(c_src.tolist(), c_dst.tolist(), strict=True)) == [(0, 1)] * 3 + [(1, 2)] + [(2, 3)] * 2
    # One epoch of 6 pairs; target 1 is now half the targets, so its logQ is log(1/2), not log(1/3).
    b = PairBatches(c_src, c_dst, f, None, BatchConfig(batch_size=6))
    got = dict(zip(b[0]["cand"].tolist(), b[0]["log_q"].tolist(), strict=True))
    assert got == pytest.approx({1: np.log(3 / 6), 2: np.log(1 / 6), 3: np.log(2 / 6)})
    with pytest.raises(ValueError, match="pair counts must be >= 1"):
        epoch_pairs({**pairs, "count": np.array([1, 0, 2])}, "count")


def test_trainer_config_rejects_an_unknown_pair_weight() -> None:
    with pytest.raises(
        ValueError, match=r"trainer\.pair_weight='sqrt': expected one of \['unique', 'count'\]"
    ):
        TrainerConfig(pair_weight="sqrt")


def test_mixed_log_q_is_the_expected_count_among_the_candidates() -> None:
    counts = np.array([3.0, 1.0, 0.0, 0.0])
    # no uniform negatives: the target frequency, -inf where an item is never a target
    np.testing.assert_allclose(mixed_log_q(counts, 2, 0), np.log([0.75, 0.25, 0.0, 0.0]))
    # 2 targets and 2 uniform draws over 4 items: item j is expected 2 p_j + 2 / 4 times;
    # divided by the batch size 2: p_j + 1/4
    np.testing.assert_allclose(mixed_log_q(counts, 2, 2), np.log([1.0, 0.5, 0.25, 0.25]), rtol=1e-6)


def test_uniform_negatives_join_the_candidates_of_every_rank() -> None:
    """Each rank adds its share of the step's uniform draws; the global candidates, labels, logQ,
    duplicate mask and positives line up, so two ranks' losses average to the one-rank loss."""
    ds = _ds()
    f = ItemFeatures.from_items(ds.items, ["genres"])
    lab = RelevanceLabeler.from_dataset(ds, LabelConfig(fields={"genres": 1.0}))
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, 5, 40), rng.integers(0, 3, 40)  # items 3 and 4 are never targets
    one = PairBatches(src, dst, f, lab, BatchConfig(batch_size=8, seed=3, uniform_negatives=6))
    halves = [
        PairBatches(
            src, dst, f, lab, BatchConfig(batch_size=8, seed=3, uniform_negatives=6), rank=r, world_size=2
        )
        for r in (0, 1)
    ]
    table = torch.nn.functional.normalize(
        torch.randn(f.num_items, 4, generator=torch.Generator().manual_seed(0))
    )
    cfg = LossConfig(lam=1.0, alpha=0.5)
    seen_cold = False
    for step in (0, 3, 6):
        full, parts = one[step], [h[step] for h in halves]
        neg = full["codes"][16:]
        assert len(neg) == 6 and len(full["cand"]) == 14
        seen_cold |= bool(np.isin(neg, [3, 4]).any())
        np.testing.assert_array_equal(full["cand"], np.concatenate([full["codes"][8:16], neg]))
        np.testing.assert_array_equal(full["cand"][full["pos"]], full["codes"][8:16])  # own targets
        np.testing.assert_array_equal(full["log_q"], one.log_q[full["cand"]])
        assert np.isfinite(full["log_q"]).all()  # never-target items are candidates now
        np.testing.assert_array_equal(full["labels"], lab.cross(full["codes"][:8], full["cand"]))
        batch = collate(f, full)
        np.testing.assert_array_equal(batch.mask.numpy(), full["codes"][8:16, None] == full["cand"][None, :])
        assert batch.features.stride() == 22
        # rank r holds (triggers, targets, negatives) of its share; the gathered candidates are
        # each rank's targets then its negatives, the order the loop's all_gather produces
        gathered = np.concatenate([p["codes"][4:] for p in parts])
        for p in parts:
            np.testing.assert_array_equal(p["cand"], gathered)
            np.testing.assert_array_equal(p["cand"][p["pos"]], p["codes"][4:8])
        assert sorted(gathered.tolist()) == sorted(full["cand"].tolist())

        def loss(arrays: dict[str, np.ndarray], cand: np.ndarray) -> torch.Tensor:
            b = collate(f, arrays)
            e = table[torch.from_numpy(arrays["codes"])]
            heads = {h: e[: len(b.pos)] for h in ("coeng", "semantic")}
            c = {h: table[torch.from_numpy(cand)] for h in ("coeng", "semantic")}
            return mtmh_loss(heads, c, b.pos, b.labels, cfg, b.log_q, b.mask)["loss"]

        two = (loss(parts[0], gathered) + loss(parts[1], gathered)) / 2
        torch.testing.assert_close(two, loss(full, full["cand"]))
    assert seen_cold
    with pytest.raises(ValueError, match=r"trainer\.uniform_negatives=3: expected >= 0 and divisible"):
        PairBatches(src, dst, f, lab, BatchConfig(batch_size=8, uniform_negatives=3), world_size=2)
    with pytest.raises(ValueError, match=r"trainer\.uniform_negatives=-1: expected >= 0"):
        TrainerConfig(uniform_negatives=-1)
