"""One measurement of ``benchmarks/gpu/run.py``, in a process of its own so that each starts fresh and
gives its GPU memory back; ``run.py`` launches it (with ``composer -n N`` for training on GPUs).

    measure.py train --out M.json --warmup K RECIPE [key=value ...]
    measure.py generate --out M.json --vocab V --size S --tokens T --device D --dtype D --batch B --screen-length L

``train`` runs the recipe through ``maxtoki.training.train_from_recipe`` with an in-memory logger in
place of the recipe's loggers, and rank 0 writes what Composer measured over the steps after the
first K: tokens/s and MFU (SpeedMonitor, per step), peak memory and the micro-batch size.
``generate`` times NextCell generation by a randomly initialised model with and without the KV cache, then
batched (many prompts of different lengths in one left-padded batch) against one prompt at a time, and the
embedding read-out of a perturbation screen (``EmbeddingReader``) batched against one variant at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from composer.core import Callback


class PeakMemory(Callback):
    """GPU memory peak over the measured steps only: the micro-batch search's failed tries, in the first
    step, fill the GPU up to the out-of-memory error and would otherwise be the peak."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.allocated = self.reserved = None

    def batch_end(self, state, logger) -> None:
        if torch.cuda.is_available() and state.timestamp.batch.value == self.warmup:
            torch.cuda.reset_peak_memory_stats()

    def fit_end(self, state, logger) -> None:
        if torch.cuda.is_available():
            self.allocated = torch.cuda.max_memory_allocated() / 2**30
            self.reserved = torch.cuda.max_memory_reserved() / 2**30


def median_after(series: list, warmup: int) -> float | None:
    """Median of the values logged after step ``warmup`` (each entry: Composer timestamp, value)."""
    values = [float(value) for timestamp, value in series if timestamp.batch.value > warmup]
    return statistics.median(values) if values else None


def mentions(exc: BaseException | None, text: str) -> bool:
    """Whether the message of ``exc``, or of an exception it was raised from, says ``text``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if text in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def benchmark_recipe(recipe: str, directory: Path) -> str:
    """A copy of the recipe in ``directory`` whose loggers (wandb) give way to one that keeps the values in
    this process (an override would be merged with the recipe's loggers, not replace them)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(recipe)
    cfg.loggers = {"inmemory": {}}
    derived = directory / Path(recipe).name
    OmegaConf.save(cfg, derived)
    return str(derived)


def measure_training(recipe: str, overrides: list[str], warmup: int) -> dict:
    from composer.loggers import InMemoryLogger
    from composer.utils import dist
    from llmfoundry import registry

    from maxtoki.training import train_from_recipe

    registry.callbacks.register("peak_memory", func=PeakMemory)
    packing = any(o.startswith("train_loader.dataset.packing_ratio=") for o in overrides)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = train_from_recipe(benchmark_recipe(recipe, Path(tmp)),
                                        [*overrides, f"callbacks.peak_memory={{warmup: {warmup}}}"])
    except Exception as exc:
        if packing and mentions(exc, "packing_ratio"):
            return {"skipped": "the training entry point rejects train_loader.dataset.packing_ratio: "
                               f"{type(exc).__name__}: {exc}"}
        raise
    logged = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger)).data
    peak = next(c for c in trainer.state.callbacks if isinstance(c, PeakMemory))
    world_size = dist.get_world_size()
    model = getattr(trainer.state.model, "module", trainer.state.model)  # unwrapped from DDP, where it is
    tokens_per_sec = median_after(logged.get("throughput/tokens_per_sec", []), warmup)
    return {
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_per_gpu": tokens_per_sec / world_size if tokens_per_sec else None,
        "mfu": median_after(logged.get("throughput/device/mfu", []), warmup),
        "peak_memory_gib": peak.allocated,
        "peak_reserved_gib": peak.reserved,
        "microbatch_size": trainer.state.device_train_microbatch_size,
        "world_size": world_size,
        "fsdp": bool(trainer.state.fsdp_enabled),
        "precision": trainer.state.precision.value,
        "attention": model.model.config._attn_implementation,
        "steps": int(trainer.state.timestamp.batch.value),
        "measured_steps": sum(1 for t, _ in logged.get("throughput/tokens_per_sec", []) if t.batch.value > warmup),
    }


def measure_generation(vocab_path: str, size: str, tokens: int, device: str, dtype: str, prompts_in_batch: int,
                       screen_length: int) -> dict:
    """Greedy generation of one cell of ``tokens`` tokens after a 55-token prompt, as
    benchmarks/generation_speed.py does on CPU; <eos> is made unlikely so that the whole budget is used."""
    import numpy as np
    from transformers import LlamaForCausalLM

    from maxtoki.inference.generate import Sampling, generate_cells
    from maxtoki.model.sizes import llama_config
    from maxtoki.vocab import Vocabulary

    vocab = Vocabulary.load(vocab_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(size, len(vocab), max_position_embeddings=4096))
    with torch.no_grad():
        model.lm_head.weight[vocab.eos_id] = 0.0  # logit 0, below the best of the remaining genes
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    prompt = np.array([vocab.bos_id, *vocab.gene_ids[:50], vocab.eos_id, vocab.boq_id, vocab.time_token(12),
                       vocab.eoq_id])
    prompts = batch_prompts(vocab, prompts_in_batch)
    for cache in (True, False):  # kernels chosen and memory allocated before the clock starts
        generate_cells(model, [prompt], vocab, Sampling(max_new_tokens=16), device=device, use_cache=cache)
    result, outputs = {"size": size, "prompt_tokens": len(prompt), "tokens": tokens, "dtype": dtype}, {}
    for name, cache in (("kv_cache", True), ("naive", False)):
        start = time.perf_counter()
        outputs[name] = generate_cells(model, [prompt], vocab, Sampling(max_new_tokens=tokens), device=device,
                                       use_cache=cache)[0]
        seconds = time.perf_counter() - start  # generate_cells returns host arrays: the device has finished
        result[name] = {"seconds": seconds, "tokens_per_sec": len(outputs[name]) / seconds,
                        "generated": len(outputs[name])}
    cached, naive = outputs["kv_cache"], outputs["naive"]
    differ = np.flatnonzero(cached[:min(len(cached), len(naive))] != naive[:min(len(cached), len(naive))])
    result["identical"] = bool(np.array_equal(cached, naive))
    # bf16 on a GPU: the two paths round differently, so near-ties between genes may break differently
    result["first_difference"] = int(differ[0]) if len(differ) else None
    result["speedup"] = result["naive"]["seconds"] / result["kv_cache"]["seconds"]
    result["batched"] = measure_batched_generation(model, vocab, prompts, tokens // 4, device)
    result["screen"] = measure_screen(model, vocab, screen_length, device)
    return result


def timed(function):
    """(result, seconds) of a call; outputs are host arrays, so the device has finished."""
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def batch_prompts(vocab, count: int) -> list:
    """``count`` NextCell prompts of different lengths (a cell of 50 + 4k genes, then <boq> Δ <eoq>)."""
    import numpy as np

    return [np.array([vocab.bos_id, *vocab.gene_ids[k:50 + 5 * k], vocab.eos_id, vocab.boq_id,
                      vocab.time_token(k % 10), vocab.eoq_id]) for k in range(count)]


def measure_batched_generation(model, vocab, prompts: list, tokens: int, device: str) -> dict:
    """Tokens/s of greedy generation for all prompts in one batch against one at a time (the first 4 alone,
    as the rate of one prompt at a time does not depend on how many), and whether the tokens agree."""
    import numpy as np

    from maxtoki.inference.generate import Sampling, generate_cells

    greedy = Sampling(max_new_tokens=tokens)
    generate_cells(model, prompts[:2], vocab, Sampling(max_new_tokens=8), batch_size=2, device=device)  # warm-up
    batched, batched_s = timed(lambda: generate_cells(model, prompts, vocab, greedy, batch_size=len(prompts),
                                                      device=device))
    alone, alone_s = timed(lambda: [generate_cells(model, [p], vocab, greedy, device=device)[0] for p in prompts[:4]])
    return {"prompts": len(prompts), "tokens_per_prompt": tokens,
            "batch_tokens_per_sec": sum(map(len, batched)) / batched_s,
            "one_at_a_time_tokens_per_sec": sum(map(len, alone)) / alone_s,
            "speedup": (sum(map(len, batched)) / batched_s) / (sum(map(len, alone)) / alone_s),
            "identical_first_4": all(np.array_equal(a, b) for a, b in zip(batched, alone))}


def measure_screen(model, vocab, length: int, device: str, panel: int = 256) -> dict:
    """Variants/s of the embedding read-out: ``panel`` genes spread over the ranks of one ``length``-gene cell
    deleted, as the screen runs them (each variant from its first changed position on, packed, 64 rows a pass)
    against one whole variant at a time (16 of them)."""
    import numpy as np

    from maxtoki.analysis.embedding_shift import EmbeddingReader
    from maxtoki.analysis.perturbations import delete

    cell = np.array([vocab.bos_id, *vocab.gene_ids[:length], vocab.eos_id])
    genes = cell[1:-1][np.unique(np.linspace(0, length - 1, min(panel, length)).astype(int))]
    variants, left_out = [delete(cell, int(g)) for g in genes], [(int(g),) for g in genes]
    alone_at = np.linspace(0, len(variants) - 1, 16).astype(int)
    batched_reader = EmbeddingReader(model, vocab, batch_size=64, device=device)
    alone_reader = EmbeddingReader(model, vocab, batch_size=1, device=device)
    batched_reader.pooled(variants[:64], left_out[:64])  # warm-up
    batched, batched_s = timed(lambda: batched_reader.pooled_variants(batched_reader.prefix(cell), variants, left_out))
    alone_variants, alone_left_out = [variants[i] for i in alone_at], [left_out[i] for i in alone_at]
    alone, alone_s = timed(lambda: alone_reader.pooled(alone_variants, alone_left_out))
    return {"cell_genes": length, "variants": len(variants), "batch_size": 64,
            "batch_variants_per_sec": len(variants) / batched_s, "one_at_a_time_variants_per_sec": 16 / alone_s,
            "speedup": (len(variants) / batched_s) / (16 / alone_s),
            "max_difference": float(np.abs(batched[alone_at] - alone).max())}


def finite(value):
    """JSON has no NaN or infinity: such a value is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("--out", required=True)
    train.add_argument("--warmup", type=int, required=True)
    train.add_argument("recipe")
    train.add_argument("overrides", nargs="*")
    generate = commands.add_parser("generate")
    generate.add_argument("--out", required=True)
    generate.add_argument("--vocab", required=True)
    generate.add_argument("--size", required=True)
    generate.add_argument("--tokens", type=int, required=True)
    generate.add_argument("--device", required=True)
    generate.add_argument("--dtype", required=True)
    generate.add_argument("--batch", type=int, required=True, help="prompts generated in one batch")
    generate.add_argument("--screen-length", type=int, required=True, help="genes of the screened cell")
    args = parser.parse_args(argv)
    if args.command == "train":
        from composer.utils import dist

        result = measure_training(args.recipe, args.overrides, args.warmup)
        if dist.get_global_rank() != 0:
            return 0
    else:
        result = measure_generation(args.vocab, args.size, args.tokens, args.device, args.dtype, args.batch,
                                    args.screen_length)
    result = {key: finite(value) for key, value in result.items()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
