"""Image inputs for Qwen2-VL-style embedders: the image processor, and the text-side
``<|vision_start|> <|image_pad|> x N <|vision_end|>`` expansion the multimodal processor would do
(its video half needs torchvision, which this stack cannot install; images need only this)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["ImageInputs", "VisionAdapter"]


@dataclass(frozen=True)
class ImageInputs:
    """Image(s) of one input: token ids (vision start, pads, end per image), patches (P, C) and grids (n, 3)."""

    token_ids: list[int]
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


class VisionAdapter:
    """Turns image paths into model inputs for a Qwen2-VL-family checkpoint folder."""

    def __init__(self, model_dir: Path, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
        self.processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.image_token_id = int(config.image_token_id)
        self.start_id = int(config.vision_start_token_id)
        self.end_id = int(config.vision_end_token_id)
        self.merge = int(config.vision_config.spatial_merge_size)

    def prepare(self, path: str | Sequence[str]) -> ImageInputs:
        """One image, or several in order (a video's frames: each its own vision block)."""
        if not isinstance(path, str):
            parts = [self.prepare(p) for p in path]
            if not parts:
                raise ValueError("prepare: an empty list of images")
            return ImageInputs(
                [t for im in parts for t in im.token_ids],
                torch.cat([im.pixel_values for im in parts]),
                torch.cat([im.grid_thw for im in parts]),
            )
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"image {p} not found")
        try:
            img = Image.open(p).convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {p} cannot be read: {e}") from e
        out = self.processor(images=[img], return_tensors="pt")
        grid = out["image_grid_thw"]  # (1, 3)
        n = int(grid.prod()) // self.merge**2
        return ImageInputs(
            [self.start_id, *([self.image_token_id] * n), self.end_id], out["pixel_values"], grid
        )

    def batch_extras(self, input_ids: torch.Tensor, images: list[ImageInputs]) -> dict[str, torch.Tensor]:
        """Model kwargs for a padded batch whose rows hold ``images`` (in row order)."""
        if not images:
            return {}
        return {
            "pixel_values": torch.cat([im.pixel_values for im in images]),
            "image_grid_thw": torch.cat([im.grid_thw for im in images]),
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }
