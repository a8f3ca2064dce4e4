"""Memory of calibrated intervals (`maxtoki predict time --calibration-data`): every scored prompt's distribution
over the time tokens is kept until all shares are known, in memory or on disk (the default, in the output
directory).

Each mode runs in a fresh process on the same prompts: a random one-layer model with the default 3,000 time
tokens, short prompts (the cost here is the distributions, not the model). Reports the growth of the process's
anonymous memory (what cannot be dropped under pressure) and of its file pages, median of ``--runs``.

    ../.venv/bin/python calibration_memory.py --prompts 40000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def memory() -> dict[str, int]:
    """Resident anonymous and file-backed memory of this process, MB (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) // 1024 for key in ("RssAnon", "RssFile")}


def one_run(prompts: int, on_disk: bool) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maxtoki.inference.predict_time import predict
    from maxtoki.inference.timelapse_readout import TimelapseReadout
    from maxtoki.vocab import Vocabulary

    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 201)], max_time=1500)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=64)).eval()
    rng, genes = np.random.default_rng(0), vocab.gene_ids
    examples = [{"prompt_ids": np.concatenate([[vocab.bos_id], rng.permutation(genes)[:8],
                                               [vocab.eos_id, vocab.boq_id, vocab.bos_id],
                                               rng.permutation(genes)[:8], [vocab.eos_id, vocab.eoq_id]]),
                 "timelapse": int(rng.integers(-100, 100))} for _ in range(prompts)]
    before, start = memory(), time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        readout = predict(model, examples, vocab, batch_size=256, keep=True, keep_on_disk=folder if on_disk else None)
        low, high = TimelapseReadout(vocab).central(readout.cumulative, np.full(prompts, 0.8))
        after = memory()
    return {"anonymous_mb": after["RssAnon"] - before["RssAnon"], "file_mb": after["RssFile"] - before["RssFile"],
            "seconds": time.perf_counter() - start, "time_tokens": readout.cumulative.shape[1],
            "interval_checksum": float(low.sum() + high.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", choices=["memory", "disk"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.prompts, args.one == "disk")))
        return
    for mode in ("memory", "disk"):
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--one", mode],
                                          check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(args.runs)]
        assert len({run["interval_checksum"] for run in runs}) == 1
        median = {key: statistics.median(run[key] for run in runs) for key in ("anonymous_mb", "file_mb", "seconds")}
        print(f"{mode:6s} {args.prompts:,} prompts x {runs[0]['time_tokens']:,} time tokens: anonymous memory "
              f"+{median['anonymous_mb']:,.0f} MB, file pages +{median['file_mb']:,.0f} MB, {median['seconds']:.1f} s "
              f"(median of {args.runs}; intervals checksum {runs[0]['interval_checksum']:.1f})")


if __name__ == "__main__":
    main()
