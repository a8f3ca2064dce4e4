"""NextCell generation: the cell expected after a given time, token by token with a KV cache.

The response starts with ``<bos>``; then at every step ``<pad>``, ``<mask>``, ``<bos>``, ``<boq>``,
``<eoq>``, every numeric token and every gene already generated are banned, so a generated cell is
a list of distinct genes. Generation stops at ``<eos>`` or after ``max_new_tokens``. Greedy, or
sampled with temperature, top-k and top-p from a seeded generator (reproducible). The generated cells
are then judged against real held-out cells (``judge_cells``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxtoki.vocab import Vocabulary


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 0


def _banned(vocab: Vocabulary, size: int, device):
    import torch

    banned = torch.zeros(size, dtype=torch.bool, device=device)
    banned[len(vocab):] = True  # padding rows of the output layer
    banned[torch.as_tensor(np.flatnonzero(vocab.is_numeric | vocab.is_special), device=device)] = True
    banned[vocab.eos_id] = False
    return banned


def _choose(logits, sampling: Sampling, generator):
    import torch

    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / max(sampling.temperature, 1e-6)
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) > sampling.top_p
        logits = logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)


def generate_cells(model, prompts: list[np.ndarray], vocab: Vocabulary, sampling: Sampling = Sampling(),
                   batch_size: int = 8, device: str = "cpu", use_cache: bool = True) -> list[np.ndarray]:
    """Generated response of every prompt (``<bos> genes ... [<eos>]``)."""
    import torch

    model = model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    results = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = [np.asarray(p, dtype=np.int64) for p in prompts[start:start + batch_size]]
            results += _generate_batch(model, batch, vocab, sampling, generator, device, use_cache)
    return results


def _generate_batch(model, prompts, vocab, sampling, generator, device, use_cache):
    import torch

    rows, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, longest), vocab.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the last column
        ids[row, longest - len(prompt):] = torch.from_numpy(prompt)
        mask[row, longest - len(prompt):] = 1
    banned = _banned(vocab, model.config.vocab_size, device).repeat(rows, 1)
    generated = torch.full((rows, 1), vocab.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    sequence, past = torch.cat([ids, generated], dim=1), None
    attention = torch.cat([mask, torch.ones_like(generated)], dim=1)
    for _ in range(sampling.max_new_tokens - 1):
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        if use_cache and past is not None:
            out = model(input_ids=sequence[:, -1:], attention_mask=attention, position_ids=positions[:, -1:],
                        past_key_values=past, use_cache=True)
        else:
            out = model(input_ids=sequence, attention_mask=attention, position_ids=positions, use_cache=use_cache)
        past = out.past_key_values if use_cache else None
        logits = out.logits[:, -1].float().masked_fill(banned, float("-inf"))
        token = _choose(logits, sampling, generator)
        token = torch.where(finished, torch.full_like(token, vocab.pad_id), token)
        banned[torch.arange(rows, device=device), token] = True
        banned[:, vocab.pad_id] = True
        generated = torch.cat([generated, token[:, None]], dim=1)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        attention = torch.cat([attention, (~finished).long()[:, None]], dim=1)
        finished |= token == vocab.eos_id
        if finished.all():
            break
    out = []
    for row in generated.cpu().numpy():
        end = np.flatnonzero(row == vocab.eos_id)
        out.append(row[:end[0] + 1] if len(end) else row[row != vocab.pad_id])
    return out


def cells_to_anndata(cells: list[np.ndarray], vocab: Vocabulary, obs=None):
    """Generated cells as AnnData: genes as var, expression = 1 for the top gene falling linearly by rank."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    column = np.full(len(vocab), -1, dtype=np.int64)
    column[vocab.gene_ids] = np.arange(len(vocab.gene_ids))
    rows, cols, values = [], [], []
    for i, cell in enumerate(cells):
        genes = cell[vocab.is_gene[cell]]
        rows += [i] * len(genes)
        cols += column[genes].tolist()
        values += ((len(genes) - np.arange(len(genes))) / max(len(genes), 1)).tolist()
    matrix = sp.csr_matrix((np.array(values, dtype=np.float32), (rows, cols)), shape=(len(cells), len(vocab.gene_ids)))
    obs = obs if obs is not None else pd.DataFrame(index=[f"generated{i}" for i in range(len(cells))])
    return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=vocab.genes))


def generate(model, data: str, out, sampling: Sampling = Sampling(), batch_size: int = 8,
             device: str = "cpu", *, evaluate: bool = True, cells: str | None = None,
             allow_untrained_time: bool = False) -> dict:
    """Generate the response cell of every NextCell prompt of evaluation paragraphs; write tokens and AnnData.
    ``model``: a checkpoint path or a model from ``load_model``.

    Unless ``evaluate`` is False, the generated cells are judged against the real cells of the paragraphs
    (read from ``cells``, by default the cells their manifest names; see ``judge_cells``): evaluation.json
    and evaluation.png. Returns the number of cells, the evaluation summary, why there is none, and a warning
    (a model whose time tokens stage 2 never trained is refused unless ``allow_untrained_time``).
    """
    import json
    from pathlib import Path

    import pandas as pd

    from maxtoki.data.paragraphs.blueprint import NEXT_CELL
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference.loading import model_for, untrained_time_warning
    from maxtoki.inference.predict_time import evaluation_prompts

    examples, vocab = evaluation_prompts(data, NEXT_CELL)
    model = model_for(model, vocab)
    warning = untrained_time_warning(model, allow_untrained_time)
    limit = model.config.max_position_embeddings
    if max(len(e["prompt_ids"]) for e in examples) + 1 > limit:
        raise MaxtokiError(f"prompts are longer than the model's context ({limit}); make paragraphs with a smaller "
                           "--max-seq-len")
    reference = _reference_cells(data, examples, vocab, cells) if evaluate else (None, "not asked for")
    budget = min(sampling.max_new_tokens, limit - max(len(e["prompt_ids"]) for e in examples))
    generated = generate_cells(model, [e["prompt_ids"] for e in examples], vocab,
                               Sampling(**{**sampling.__dict__, "max_new_tokens": budget}), batch_size, device)
    judged, not_evaluated = _judge(generated, examples, vocab, *reference)
    obs = pd.DataFrame({"group": [str(e["group"]) for e in examples],
                        "timelapse": [int(e["timelapse"]) for e in examples],
                        "times": [" ".join(map(str, e["times"])) for e in examples],
                        "source_cells": [" ".join(map(str, e["cell_indices"])) for e in examples],
                        "generated_genes": [int(vocab.is_gene[c].sum()) for c in generated]},
                       index=[f"generated{i}" for i in range(len(generated))])
    if judged:
        per_example = judged["per_example"]
        obs["target_time"] = per_example["target_time"]
        obs["implied_time"] = per_example["implied_time_generated"]
        obs["singlet_probability"] = per_example["singlet_probability"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tokens.jsonl", "w") as handle:
        for cell in generated:
            handle.write(json.dumps([int(t) for t in cell]) + "\n")
    adata = cells_to_anndata(generated, vocab, obs)
    if warning:
        adata.uns["warning"] = warning
    adata.write_h5ad(out / "generated_cells.h5ad")
    if judged:
        from maxtoki.inference.judge_cells import plot_judgement

        summary = {**judged["summary"], "sampling": sampling.__dict__, "warning": warning}
        (out / EVALUATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        plot_judgement(judged, out / EVALUATION_PICTURE)
        return {"cells": len(generated), "evaluation": summary, "not_evaluated": None, "warning": warning}
    for stale in (EVALUATION_FILE, EVALUATION_PICTURE):  # of an earlier run into the same directory
        (out / stale).unlink(missing_ok=True)
    return {"cells": len(generated), "evaluation": None, "not_evaluated": not_evaluated, "warning": warning}


EVALUATION_FILE, EVALUATION_PICTURE = "evaluation.json", "evaluation.png"


def _reference_cells(data: str, examples: list[dict], vocab: Vocabulary, location: str | None):
    """The real cells of the examples (cell index -> tokens), or None and why not.

    Cells named by the paragraphs' manifest that cannot be read are a reason to skip the evaluation;
    cells given explicitly (``location``) that cannot be read are an error.
    """
    from maxtoki.data.paragraphs.cell_store import CellStore
    from maxtoki.errors import MaxtokiError

    named = location or CellStore(data).manifest.get("cells", {}).get("location")
    if not named:
        return None, f"{data}: its manifest names no cells; give them with --cells DIR"
    try:
        store = CellStore(named)
        if store.vocabulary().sha256 != vocab.sha256:
            raise MaxtokiError(f"{named}: tokenized with another vocabulary than the paragraphs {data}")
        indices = sorted({int(i) for e in examples for i in e["cell_indices"]})
        if indices[-1] >= len(store):
            raise MaxtokiError(f"{named}: holds {len(store)} cells but the paragraphs use cell {indices[-1]}; "
                               "these are not the paragraphs' cells")
        return {i: np.asarray(store[i]["input_ids"]) for i in indices}, None
    except MaxtokiError as error:
        if location:
            raise
        return None, f"{error} (give the paragraphs' cells with --cells DIR)"


def _judge(generated, examples, vocab, cells, why_not):
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference.judge_cells import judge

    if cells is None:
        return None, why_not
    try:
        return judge(generated, examples, cells, vocab), None
    except MaxtokiError as error:
        return None, str(error)
