"""The Composer model of both stages: a Hugging Face ``LlamaForCausalLM`` with MaxToki's losses.

``objective="pretrain"`` trains next-gene prediction on single cells; ``objective="temporal"``
trains the NextCell and TimeBetweenCells tasks on cell paragraphs. Wrapping ``HuggingFaceModel``
keeps the Hugging Face config in every Composer checkpoint, so checkpoints export as plain
``LlamaForCausalLM`` directories.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from composer.models import HuggingFaceModel

from maxtoki.model.builders import build_backbone
from maxtoki.model.gene_init import AXES as GENE_EMBEDDING_AXES
from maxtoki.model.head_padding import padding_parameters
from maxtoki.model.losses import IGNORE, Scored, scored_labels, temporal_loss
from maxtoki.model.metrics import (
    NextGeneAccuracy,
    NextGeneCrossEntropy,
    NextGenePerplexity,
    TimelapseMAE,
    TimelapseMedianAE,
    TimelapsePearson,
    TimelapseSpread,
)
from maxtoki.model.packed_attention import attention_inputs, cell_lengths
from maxtoki.vocab import Vocabulary

OBJECTIVES = ("pretrain", "temporal")
TRAINING_WINDOW = 256  # TimeBetweenCells examples behind the training Pearson r and spread


class MaxTokiModel(HuggingFaceModel):
    def __init__(self, model, vocab: Vocabulary, objective: str = "pretrain", label_scalar: float = 200.0,
                 additive_penalty: float = 10.0, timelapse_loss: str = "numeric", time_smoothing: float = 0.0):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        if timelapse_loss not in ("numeric", "cross_entropy"):
            raise ValueError("timelapse_loss must be 'numeric' or 'cross_entropy'")
        eval_metrics = [NextGeneCrossEntropy(), NextGenePerplexity(), NextGeneAccuracy()]
        train_metrics = [NextGeneCrossEntropy()]
        if objective == "temporal":
            eval_metrics += [TimelapseMAE(), TimelapseMedianAE(), TimelapsePearson(), TimelapseSpread()]
            # collapse shows next to the loss: over the last 256 TimeBetweenCells examples trained on
            train_metrics += [TimelapsePearson(window=TRAINING_WINDOW), TimelapseSpread(window=TRAINING_WINDOW)]
        super().__init__(model, tokenizer=None, use_logits=True, metrics=train_metrics,
                         eval_metrics=eval_metrics, shift_labels=False)
        self.objective = objective  # instance attribute; the recipe classes also name it on the class
        self.label_scalar = float(label_scalar)
        self.additive_penalty = float(additive_penalty)
        self.timelapse_loss = timelapse_loss
        if time_smoothing < 0:
            raise ValueError("time_smoothing must be 0 (off) or a width in time units")
        self.time_smoothing = float(time_smoothing)
        # counted before any FSDP sharding: the non-embedding weights every token passes through
        self._flop_weights = (sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
                              - padding_parameters(model.config))
        self._scored_positions = None  # (batch, length) bool while a forward pass scores positions
        model.lm_head.register_forward_pre_hook(self._select_scored_positions)
        not_cell_token = torch.ones(model.config.vocab_size, dtype=torch.bool)
        not_cell_token[torch.as_tensor(vocab.gene_ids, dtype=torch.long)] = False
        not_cell_token[[vocab.bos_id, vocab.eos_id]] = False
        self.register_buffer("not_cell_token", not_cell_token, persistent=False)
        numeric_ids = torch.as_tensor(vocab.numeric_ids, dtype=torch.long)
        self.register_buffer("numeric_ids", numeric_ids, persistent=False)
        self.register_buffer("numeric_values", torch.as_tensor(vocab.numeric_values[vocab.numeric_ids],
                                                               dtype=torch.float32), persistent=False)
        # recorded in the Hugging Face config, so exported models carry the read-out settings
        model.config.maxtoki = {"objective": objective, "label_scalar": self.label_scalar,
                                "additive_penalty": self.additive_penalty, "timelapse_loss": timelapse_loss,
                                "time_smoothing": self.time_smoothing,
                                "vocabulary_sha256": vocab.sha256}

    def _select_scored_positions(self, module, args):
        if self._scored_positions is None:
            return None
        return (args[0][self._scored_positions],)

    def forward(self, batch: dict) -> Scored:
        labels, readout = scored_labels(batch, self.objective)
        scored = labels != IGNORE
        self._scored_positions = scored
        try:
            logits = self.model(input_ids=batch["input_ids"], use_cache=False,
                                **attention_inputs(self.model, batch)).logits
        finally:
            self._scored_positions = None
        readout = readout[scored]
        self._only_cell_tokens(logits, ~readout)
        return Scored(logits, labels[scored], torch.nonzero(scored)[:, 0], readout)

    def _only_cell_tokens(self, logits: torch.Tensor, in_cell: torch.Tensor) -> None:
        """Where a cell is predicted the next token is ``<bos>``, a gene or ``<eos>``: other tokens get no
        probability there.

        Otherwise every gene position would push the time tokens down, which stage 1 never uses, and
        stage 2 would start from time tokens trained only to be unlikely, a distribution over times
        already sharp and far from uniform. In place: the output layer's backward does not need its output.
        """
        lowest = torch.finfo(logits.dtype).min
        if bool(in_cell.all()):
            logits.masked_fill_(self.not_cell_token, lowest)
        elif bool(in_cell.any()):
            logits[in_cell] = logits[in_cell].masked_fill(self.not_cell_token, lowest)

    def loss(self, outputs: Scored, batch: dict):
        if self.objective == "pretrain":
            return F.cross_entropy(outputs.logits.float(), outputs.labels)
        return temporal_loss(outputs, batch["timelapse"], self.numeric_ids, self.numeric_values, self.label_scalar,
                             self.additive_penalty, self.timelapse_loss, self.time_smoothing)

    def eval_forward(self, batch: dict, outputs=None) -> Scored:
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: dict, outputs: Scored, metric) -> None:
        metric.update(batch, outputs, self)

    def flops_per_batch(self, batch: dict) -> float:
        """Training FLOPs of the real (non-pad) tokens: 6 N per token plus attention within each sequence
        (each cell of a packed row)."""
        config = self.model.config
        if "sequence_id" in batch:
            lengths = cell_lengths(batch["sequence_id"]).double()
        else:
            lengths = batch["attention_mask"].sum(dim=1).double()
        attention = 2 * 2 * config.num_hidden_layers * config.hidden_size * lengths.square()
        return float(3 * (2 * self._flop_weights * lengths + attention).sum())


class _RecipeModel(MaxTokiModel):
    """Built from a recipe's ``model:`` keys (what llm-foundry's registry passes)."""

    objective = "pretrain"

    def __init__(self, size: str | None, vocab: str, max_seq_len: int = 4096, rope_scaling: dict | None = None,
                 attn_implementation: str = "auto", pretrained: str | None = None, label_scalar: float | str = 200.0,
                 additive_penalty: float = 10.0, timelapse_loss: str = "numeric", time_smoothing: float | str = 0.0,
                 config_overrides: dict | None = None, gene_embeddings_from: str | None = None,
                 gene_embedding_axes: int = GENE_EMBEDDING_AXES,
                 init_device: str = "cpu", pad_heads: str | bool = "auto", tokenizer=None):
        from llmfoundry.models.hf.hf_fsdp import prepare_hf_model_for_fsdp

        from maxtoki.errors import MaxtokiError
        from maxtoki.model.gene_init import init_gene_embeddings

        if "auto" in (str(label_scalar), str(time_smoothing)):
            raise MaxtokiError("model.label_scalar / model.time_smoothing auto are read from the training paragraphs "
                               "by train_from_recipe (scripts/train.py); building the model alone, give numbers")
        if gene_embeddings_from and pretrained:
            raise MaxtokiError("model.gene_embeddings_from starts a model from scratch; model.pretrained has its gene "
                               "embeddings already (set one of them to null)")
        model, vocabulary = build_backbone(size, vocab, max_seq_len, rope_scaling, attn_implementation, pretrained,
                                           config_overrides, init_device, pad_heads)
        if gene_embeddings_from:
            init_gene_embeddings(model, str(gene_embeddings_from), vocabulary, int(gene_embedding_axes))
        prepare_hf_model_for_fsdp(model, init_device)  # FSDP wraps each decoder layer; meta init materialises
        super().__init__(model, vocabulary, type(self).objective, label_scalar, additive_penalty, timelapse_loss,
                         time_smoothing)


class MaxTokiPretrainModel(_RecipeModel):
    """``model: {name: maxtoki_pretrain}``: next-gene prediction on single cells (stage 1)."""

    objective = "pretrain"


class MaxTokiTemporalModel(_RecipeModel):
    """``model: {name: maxtoki_temporal}``: NextCell and TimeBetweenCells on cell paragraphs (stage 2)."""

    objective = "temporal"
