"""The backbone forward alone on a GPU, fp32 vs bf16: the ceiling the embedding job could reach
(bench/embed.py measures the whole job). CUDA events, median of 50 calls after 10 warm-ups, batch
64 and 512 at 24 tokens with half the batch padded to 16 (as length-sorted real batches are), and
the wall time per call with the host in the loop.

    python bench/gpu_forward.py MODEL_DIR
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import AutoModel


def main() -> None:
    if len(sys.argv) != 2 or not torch.cuda.is_available():
        sys.exit(__doc__ + "\n(needs a CUDA device)")
    for dtype in (torch.float32, torch.bfloat16):
        m = AutoModel.from_pretrained(sys.argv[1], dtype=dtype, local_files_only=True).cuda().eval()
        for b in (64, 512):
            ids = torch.randint(1000, 20000, (b, 24), device="cuda")
            mask = torch.ones_like(ids)
            mask[b // 2 :, 16:] = 0
            times = []
            with torch.inference_mode():
                for i in range(60):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    m(input_ids=ids, attention_mask=mask)
                    e.record()
                    torch.cuda.synchronize()
                    if i >= 10:
                        times.append(s.elapsed_time(e))
                t0 = time.perf_counter()
                for _ in range(20):
                    m(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) / 20 * 1e3
            times.sort()
            print(
                f"{dtype!s:15} batch {b:4}: forward {times[len(times) // 2]:.2f} ms (events), "
                f"{wall:.2f} ms wall per call, {b / wall * 1e3:,.0f} items/s"
            )


if __name__ == "__main__":
    main()
