"""Where screens spend their time, on this CPU: the embedding read-out of a perturbation screen (genes spread
over one cell's ranks deleted; each variant computed from its first changed position on, packed, 64 rows a
pass, against one whole variant at a time) and NextCell generation (16 prompts of different lengths in one
left-padded batch with the KV cache against one prompt at a time).

Usage: .venv/bin/python benchmarks/screen_speed.py [--repeats 3] [--cell-genes 254] [--panel 256] [--tokens 64]
                                                    [--screen-size tiny]
Randomly initialised models over a 2,000-gene vocabulary (speed does not depend on the weights): tiny for
generation, --screen-size for the screen; the measurements are those of benchmarks/gpu/measure.py, which runs
them for 217m in bf16 on a GPU. Medians of --repeats runs; the screen's and one-at-a-time outputs are checked
to agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from maxtoki.model.sizes import llama_config
from maxtoki.vocab import Vocabulary

MEASURE = Path(__file__).resolve().parent / "gpu" / "measure.py"


def measure_module():
    spec = importlib.util.spec_from_file_location("gpu_measure", MEASURE)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell-genes", type=int, default=254)
    parser.add_argument("--panel", type=int, default=256, help="genes the screen deletes")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--screen-size", default="tiny", help="model size of the screen (tiny, 217m, ...)")
    args = parser.parse_args()
    measure = measure_module()
    vocab = Vocabulary.build([f"ENSG{i:011d}" for i in range(2000)], max_time=100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), max_position_embeddings=1024)).eval()
    with torch.no_grad():  # <eos> unlikely, so that every prompt generates its whole budget
        model.lm_head.weight[vocab.eos_id] = 0.0
    screened = model if args.screen_size == "tiny" else LlamaForCausalLM(
        llama_config(args.screen_size, len(vocab), max_position_embeddings=1024)).eval()
    prompts = measure.batch_prompts(vocab, 16)
    runs = {"generation": [], "screen": []}
    for _ in range(args.repeats):
        runs["generation"].append(measure.measure_batched_generation(model, vocab, prompts, args.tokens, "cpu"))
        runs["screen"].append(measure.measure_screen(screened, vocab, args.cell_genes, "cpu", args.panel))
    summary = {name: {key: statistics.median(r[key] for r in results) if isinstance(results[0][key], float)
                      else results[0][key] for key in results[0]} for name, results in runs.items()}
    summary["threads"] = torch.get_num_threads()
    print(json.dumps(summary, indent=2))
    generation, screen = summary["generation"], summary["screen"]
    print(f"generation, 16 prompts: {generation['batch_tokens_per_sec']:,.0f} tokens/s batched, "
          f"{generation['one_at_a_time_tokens_per_sec']:,.0f} one at a time ({generation['speedup']:.1f}x)")
    print(f"embedding screen ({args.screen_size}), {screen['variants']} genes of a {screen['cell_genes']}-gene cell: "
          f"{screen['batch_variants_per_sec']:,.1f} variants/s, {screen['one_at_a_time_variants_per_sec']:,.1f} one "
          f"at a time ({screen['speedup']:.1f}x; largest difference {screen['max_difference']:.1e})")


if __name__ == "__main__":
    main()
