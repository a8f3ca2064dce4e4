"""KV-cached versus naive generation of one 1,000-token cell (tiny model, CPU).

Usage: .venv/bin/python benchmarks/generation_speed.py [--tokens 1000] [--repeats 3]
A randomly initialised tiny model over a 2,000-gene vocabulary generates greedily with <eos> banned
by the budget, so both runs produce exactly --tokens tokens; outputs are checked to be identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

from maxtoki.inference.generate import Sampling, generate_cells
from maxtoki.model.sizes import llama_config
from maxtoki.vocab import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(2000)], max_time=100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), max_position_embeddings=4096)).eval()
    with torch.no_grad():  # make <eos> unlikely so that the whole budget is generated
        model.lm_head.weight[vocab.eos_id] = 0.0  # logit 0, below the best of the remaining genes
    prompt = np.array([vocab.bos_id, *vocab.gene_ids[:50], vocab.eos_id, vocab.boq_id, vocab.time_token(12),
                       vocab.eoq_id])
    sampling = Sampling(max_new_tokens=args.tokens)
    timings, outputs = {}, {}
    for name, cache in (("kv-cache", True), ("naive", False)):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = generate_cells(model, [prompt], vocab, sampling, use_cache=cache)[0]
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    assert np.array_equal(outputs["kv-cache"], outputs["naive"]) and len(outputs["naive"]) == args.tokens
    for name, seconds in timings.items():
        print(f"{name}: {args.tokens} tokens in {seconds:.2f} s ({args.tokens / seconds:,.0f} tokens/s)")
    print(f"speed-up of the KV cache: {timings['naive'] / timings['kv-cache']:.1f}x")


if __name__ == "__main__":
    main()
