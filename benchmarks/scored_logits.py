"""Stage-2 training step of the tiny model with the output layer on every position versus only on
the positions the loss scores, and with glibc returning freed memory to the OS versus keeping it.

Usage: .venv/bin/python benchmarks/scored_logits.py [--repeats 7]
A batch of 8 paragraphs of 1,024 tokens, vocabulary 29,440 (the HSMM demo's), a quarter of the
positions scored (a NextCell response of 256 tokens; TimeBetweenCells scores one position).
Prints the median step time (forward, backward, AdamW) of each variant.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

STEP = r"""
import statistics, sys, time, torch, torch.nn.functional as F
from transformers import LlamaForCausalLM
from maxtoki.model.sizes import llama_config
if sys.argv[2] == "keep":
    from maxtoki.runtime import keep_freed_memory
    assert keep_freed_memory()
torch.manual_seed(0)
model = LlamaForCausalLM(llama_config("tiny", 29_360, max_position_embeddings=1024))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(4, 29_000, (8, 1024))
scored = torch.zeros(8, 1024, dtype=torch.bool)
scored[:, 767:1023] = True
selected = {"scored": scored}.get(sys.argv[1])
if selected is not None:
    model.lm_head.register_forward_pre_hook(lambda module, args: (args[0][selected],))
times = []
for _ in range(int(sys.argv[3]) + 1):
    start = time.perf_counter()
    logits = model(input_ids=ids).logits
    if selected is None:
        logits = logits[scored]
    loss = F.cross_entropy(logits.float(), ids[:, 1:][scored[:, :-1]])
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    times.append(time.perf_counter() - start)
print(statistics.median(times[1:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for logits in ("all", "scored"):
        for memory in ("return", "keep"):
            result = subprocess.run([sys.executable, "-c", STEP, logits, memory, str(args.repeats)], check=True,
                                    capture_output=True, text=True)
            seconds = float(result.stdout.strip().splitlines()[-1])
            print(f"output layer on {logits:>6} positions, freed memory {memory:>6}: {seconds:.3f} s per step")


if __name__ == "__main__":
    main()
