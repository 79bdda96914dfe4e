"""Reasoner backends. Each turns a batch of :class:`TraceRequest` into raw texts, or a per-item
exception (reported as that item's failure, never aborting the batch).

Chosen by Hydra ``_target_`` (``configs/reasoner/*.yaml``): ``NoReasoner``, ``HFReasoner``,
``FileReasoner``, ``OpenAIReasoner`` (``openai_backend.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import polars as pl
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
)

from tte_recsys.config import settings
from tte_recsys.distributed import resolve_device
from tte_recsys.tte.models import auto_dtype, resolve_model_dir
from tte_recsys.tte.reasoner.penalty import PENALTY_SCOPES, GeneratedRepetitionPenalty
from tte_recsys.tte.vision import ImageInputs, VisionAdapter

if TYPE_CHECKING:
    from tte_recsys.tte.reasoner.decode import LoopDecoder

__all__ = [
    "FileReasoner",
    "GenerationSettings",
    "HFReasoner",
    "LoadSettings",
    "NoReasoner",
    "Reasoner",
    "TraceRequest",
]

_IMAGE_MARK = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen2-VL's image slot in a user turn


@dataclass(frozen=True)
class TraceRequest:
    """One item to reason about: chat ``messages`` and an optional image."""

    item_id: str
    messages: list[dict[str, str]]
    image_path: str | None = None


@runtime_checkable
class Reasoner(Protocol):
    """``reasoner_id`` goes into the cache key; ``calls`` counts model invocations (batches or requests)."""

    reasoner_id: str
    calls: int

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]: ...


class NoReasoner:
    """Embed items as they are: every trace is empty and nothing is cached."""

    reasoner_id = "none"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        return ["" for _ in requests]


class FileReasoner:
    """Traces precomputed elsewhere: a parquet file with ``item_id`` and ``trace`` columns."""

    def __init__(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"reasoner.path={p}: trace file not found (expected parquet: item_id, trace)"
            )
        df = pl.read_parquet(p)
        missing = {"item_id", "trace"} - set(df.columns)
        if missing:
            raise ValueError(f"{p}: missing column(s) {sorted(missing)}; columns present: {df.columns}")
        self._traces = dict(zip(df["item_id"].cast(pl.String).to_list(), df["trace"].to_list(), strict=True))
        self.reasoner_id = f"file:{p.name}"
        self.calls = 0

    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        self.calls += 1
        return [
            self._traces.get(r.item_id, KeyError(f"no trace for item {r.item_id!r} in the file"))
            for r in requests
        ]


ENGINES = ("generate", "loop")


@dataclass(frozen=True)
class GenerationSettings:
    """How :class:`HFReasoner` decodes (``reasoner.generation``); all of it is in the reasoner id.

    Attributes:
        max_new_tokens: generation budget per item (a trace cut here is parsed as ``truncated``).
        batch_size: prompts per ``generate`` call (sorted by length to limit padding).
        do_sample: sample (with ``seed`` per batch, reproducible) instead of greedy decoding.
        repetition_penalty: >1 discourages the loops small models fall into under greedy decoding.
        penalty_scope: ``generated`` (the penalty covers the tokens written so far, not the
            prompt: transformers' own penalty also covers the prompt, so it penalised the
            ``<|im_end|>`` the chat template puts there and traces ran to the cap) or ``all``
            (transformers' behaviour).
        temperature, top_p: of sampling.
    """

    max_new_tokens: int = 96
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    repetition_penalty: float = 1.15
    penalty_scope: str = "generated"

    def __post_init__(self) -> None:
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError(
                f"reasoner.generation.penalty_scope={self.penalty_scope!r}: expected one of {list(PENALTY_SCOPES)}"
            )
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"reasoner.generation: max_new_tokens={self.max_new_tokens} and batch_size={self.batch_size} must be >= 1"
            )


@dataclass(frozen=True)
class LoadSettings:
    """How :class:`HFReasoner` loads and runs its model (``reasoner.load``): throughput and
    placement. The engine and the dtype it runs in are in the reasoner id (their rounding can
    change a greedy trace); the rest is not.

    Attributes:
        gguf_file: a GGUF checkpoint in ``model_path``, loaded (dequantised) directly; converting it
            once with ``tte_recsys.tte.convert`` loads ~15x faster afterwards.
        dtype: ``auto`` (bf16 on a GPU or a CPU with native bf16 (AMX or AVX512-BF16), else fp32), ``float32`` or ``bfloat16``.
        device: ``auto`` (this process's GPU, ``cuda:LOCAL_RANK``, where CUDA is available, else the
            CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        trust_remote_code: run the model folder's own code (off unless asked for).
        engine: ``generate`` (transformers' ``generate``) or ``loop`` (:mod:`.decode`: the shared
            system prompt prefilled once, a preallocated KV cache, finished rows dropped, bf16
            weights prepacked for oneDNN; text-only models). Greedy ``loop`` traces equal
            ``generate``'s in fp32 and differ by bf16 rounding in bf16, as ``generate``'s own do
            between batch sizes; each engine has its own reasoner id.
    """

    dtype: str = "auto"
    device: str = "auto"
    gguf_file: str | None = None
    trust_remote_code: bool = False
    engine: str = "generate"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"reasoner.load.engine={self.engine!r}: expected one of {list(ENGINES)}")


def _weights_tag(d: Path) -> str:
    """``@<sha256 prefix of the weights>`` for a folder with a tte_recsys manifest (a trained
    reasoner's export: two trainings' folders share a name, never a trace-cache key); else ``""``
    (a plain model folder keeps its name-based id)."""
    m = d / "manifest.json"
    if not m.is_file():
        return ""
    files = json.loads(m.read_text(encoding="utf-8")).get("files", {})
    shas = [v["sha256"] for k, v in sorted(files.items()) if k.endswith(".safetensors")]
    return "@" + hashlib.sha256("|".join(shas).encode()).hexdigest()[:12] if shas else ""


class HFReasoner:
    """A local transformers causal LM or vision-language model: batched, left-padded ``generate``.

    Vision-language checkpoints (Qwen2-VL family) get the request's image in the user turn.

    Args:
        model_path: local folder (safetensors), or the folder holding ``load.gguf_file``.
        generation: how it decodes (:class:`GenerationSettings`, or its mapping).
        load: how the model is loaded (:class:`LoadSettings`, or its mapping).
    """

    def __init__(
        self,
        model_path: str,
        generation: GenerationSettings | Mapping[str, Any] | None = None,
        load: LoadSettings | Mapping[str, Any] | None = None,
    ) -> None:
        gen = settings(GenerationSettings, generation, "reasoner.generation")
        how = settings(LoadSettings, load, "reasoner.load")
        gguf_file, trust_remote_code, dtype = how.gguf_file, how.trust_remote_code, how.dtype
        max_new_tokens, do_sample, temperature = gen.max_new_tokens, gen.do_sample, gen.temperature
        top_p, seed, repetition_penalty = gen.top_p, gen.seed, gen.repetition_penalty
        d = resolve_model_dir(model_path) if gguf_file is None else Path(model_path)
        if gguf_file is not None and not (d / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {d / gguf_file} not found")
        extra = {"gguf_file": gguf_file} if gguf_file is not None else {}
        dev = resolve_device(how.device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            d, local_files_only=True, trust_remote_code=trust_remote_code, **extra
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = AutoConfig.from_pretrained(
            d, local_files_only=True, trust_remote_code=trust_remote_code, **extra
        )
        # Vision-language checkpoints (Qwen2-VL family) generate through their image-text-to-text class.
        is_vl = getattr(config, "vision_config", None) is not None
        auto = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
        model = auto.from_pretrained(
            d,
            local_files_only=True,
            dtype=auto_dtype(dtype, dev),
            trust_remote_code=trust_remote_code,
            **extra,
        )
        self.model = cast(PreTrainedModel, nn.Module.to(model, dev)).eval()
        self.vision = VisionAdapter(d, self.tokenizer, config) if is_vl else None
        if how.engine == "loop" and is_vl:
            raise ValueError(
                f"reasoner.load.engine=loop decodes text-only causal LMs; {d.name} is a vision-language "
                "model: use engine=generate"
            )
        self._loop = self._loop_decoder(gen) if how.engine == "loop" else None
        self.max_new_tokens, self.batch_size = max_new_tokens, gen.batch_size
        self.do_sample, self.temperature, self.top_p, self.seed = do_sample, temperature, top_p, seed
        self.repetition_penalty, self.penalty_scope = repetition_penalty, gen.penalty_scope
        mode = f"sample-t{temperature}-p{top_p}-s{seed}" if do_sample else "greedy"
        mode += f"-rp{repetition_penalty}" + ("" if gen.penalty_scope == "all" else "g")
        # the engine and the dtype it ran in change the traces, so they are in the id (the cache key)
        engine = f"{'torch' if self._loop is None else 'loop'}-{str(self.model.dtype).removeprefix('torch.')}"
        self.reasoner_id = f"hf:{d.name}{_weights_tag(d)}:{max_new_tokens}:{mode}:{engine}"
        self.calls = 0

    def _loop_decoder(self, gen: GenerationSettings) -> LoopDecoder:
        """engine=loop: the decoder over this model (its bf16 linears prepacked for oneDNN on a CPU)."""
        from tte_recsys.tte.reasoner.decode import Decoding, LoopDecoder, pack_linears

        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        pack_linears(self.model)
        return LoopDecoder(
            self.model,
            Decoding(
                max_new_tokens=gen.max_new_tokens,
                pad_id=int(self.tokenizer.pad_token_id),
                eos_ids=tuple(
                    int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])
                ),
                do_sample=gen.do_sample,
                temperature=gen.temperature,
                top_p=gen.top_p,
                repetition_penalty=gen.repetition_penalty,
                penalty_scope=gen.penalty_scope,
            ),
        )

    def _inputs(self, r: TraceRequest) -> tuple[list[int], ImageInputs | None]:
        """Prompt token ids; with an image (VL models), the user turn starts with its vision tokens."""
        messages = [dict(m) for m in r.messages]
        image = self.vision.prepare(r.image_path) if self.vision is not None and r.image_path else None
        if image is not None:
            messages[-1]["content"] = _IMAGE_MARK + messages[-1]["content"]
        text = str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if image is not None:
            at = ids.index(image.token_ids[0])  # expand the one <|image_pad|> to the image's patch count
            ids = ids[:at] + image.token_ids + ids[at + 3 :]
        return ids, image

    @torch.inference_mode()
    def generate(self, requests: list[TraceRequest]) -> list[str | Exception]:
        out: list[str | Exception] = [""] * len(requests)
        prepared: dict[int, tuple[list[int], ImageInputs | None]] = {}
        for i, r in enumerate(requests):
            try:
                prepared[i] = self._inputs(r)
            except (OSError, ValueError) as e:  # an unreadable image fails its item, not the batch
                out[i] = e
        order = sorted(prepared, key=lambda i: len(prepared[i][0]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self._loop is not None:
                written = self._loop.generate(
                    [prepared[i][0] for i in idx], seed=self.seed + start if self.do_sample else None
                )
                self.calls += 1
                texts = self.tokenizer.batch_decode(written, skip_special_tokens=True)
                for i, text in zip(idx, texts, strict=True):
                    out[i] = text
                continue
            enc = self.tokenizer.pad(
                {"input_ids": [prepared[i][0] for i in idx]}, padding=True, return_tensors="pt"
            )
            inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            if self.vision is not None:
                images = [im for i in idx if (im := prepared[i][1]) is not None]
                inputs.update(self.vision.batch_extras(inputs["input_ids"], images))
            inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
            if self.do_sample:
                torch.manual_seed(self.seed + start)
            width = int(inputs["input_ids"].shape[1])
            scoped = self.penalty_scope == "generated" and self.repetition_penalty != 1.0
            gen = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.do_sample,
                temperature=self.temperature if self.do_sample else None,
                top_p=self.top_p if self.do_sample else None,
                top_k=None,
                repetition_penalty=None if scoped else self.repetition_penalty,
                logits_processor=LogitsProcessorList(
                    [GeneratedRepetitionPenalty(self.repetition_penalty, width)] if scoped else []
                ),
                pad_token_id=self.tokenizer.pad_token_id,
            )
            self.calls += 1
            new = gen[:, inputs["input_ids"].shape[1] :]  # left padding: every prompt ends at the same column
            for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = text
        return out
