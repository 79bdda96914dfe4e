"""The reasoner id (the trace-cache key's reasoner part) changes with anything that changes the traces."""

from __future__ import annotations

from pathlib import Path

from tte_recsys.tte.reasoner.backends import HFReasoner


def _id(d: Path, **gen: object) -> str:
    load = {"dtype": str(gen.pop("dtype", "float32")), "device": "cpu"}
    return HFReasoner(str(d), generation={"max_new_tokens": 4, **gen}, load=load).reasoner_id


def test_reasoner_id_names_decoding_engine_and_dtype(tiny_qwen_dir: Path) -> None:
    base = _id(tiny_qwen_dir)
    assert base.endswith(":torch-float32") and "-rp1.15g" in base
    others = {
        "dtype": _id(tiny_qwen_dir, dtype="bfloat16"),
        "penalty over the prompt": _id(tiny_qwen_dir, penalty_scope="all"),
        "penalty": _id(tiny_qwen_dir, repetition_penalty=1.0),
        "length": _id(tiny_qwen_dir, max_new_tokens=8),
        "sampling": _id(tiny_qwen_dir, do_sample=True),
    }
    assert base not in others.values() and len(set(others.values())) == len(others)
    assert others["dtype"].endswith(":torch-bfloat16")
    assert _id(tiny_qwen_dir) == base  # and nothing else does
