"""The released MaxToki token layout: its dictionary, its stage-2 extension, and what must agree with it.

The released stage-1 weights (MaxToki-217M, MaxToki-1B) come with ``token_dictionary_v1.json``:
``<pad>``=0, ``<mask>``=1, ``<bos>``=2, ``<eos>``=3 and 20,271 Ensembl gene IDs in sorted order at
4..20,274, no time tokens. Stage 2 needs time tokens and the query markers; they are appended so
that every released id keeps its id: ``-1500..1499`` at 20,275..23,274, ``<boq>``=23,275,
``<eoq>``=23,276, the 23,277-token layout ``maxtoki data vocab`` writes. The dictionary and the gene
medians are bundled (``maxtoki/datasets/released``, Apache 2.0, from NVIDIA BioNeMo's MaxToki).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from maxtoki.errors import MaxtokiError
from maxtoki.vocab import BOQ, BOS, EOQ, EOS, MASK, PAD, Vocabulary

RELEASED_DIR = Path(__file__).resolve().parent / "datasets" / "released"
DICTIONARY_FILE = "token_dictionary_v1.json"
MEDIANS_FILE = "gene_median_dictionary_v1.json"
ATTRIBUTION_FILE = "ATTRIBUTION.md"
RELEASED_MAX_TIME = 1500  # time tokens -1500..1499, in months for the released models
SPECIALS = (PAD, MASK, BOS, EOS)


def released_dictionary() -> Vocabulary:
    """The bundled ``token_dictionary_v1.json``: 20,275 tokens, no time tokens."""
    return Vocabulary.from_bytes(gzip.decompress((RELEASED_DIR / f"{DICTIONARY_FILE}.gz").read_bytes()),
                                 RELEASED_DIR / DICTIONARY_FILE)


def released_medians() -> dict[str, float]:
    """The bundled ``gene_median_dictionary_v1.json``: 42,005 Ensembl gene IDs -> corpus-wide median."""
    return json.loads(gzip.decompress((RELEASED_DIR / f"{MEDIANS_FILE}.gz").read_bytes()))


def released_vocabulary() -> Vocabulary:
    """The released dictionary extended to the stage-2 layout (23,277 tokens)."""
    return stage2_layout(released_dictionary(), "the bundled released dictionary")


def is_released_vocabulary(vocab: Vocabulary) -> bool:
    """Whether ``vocab`` is the released stage-2 layout (then the released medians go with it)."""
    return vocab.sha256 == released_vocabulary().sha256


def write_released(out: str | Path) -> dict[str, Path]:
    """``vocab.json`` (stage-2 layout) and ``medians.json`` in ``out``, with the attribution beside them."""
    from maxtoki.vocab import VOCAB_FILE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"vocab": out / VOCAB_FILE, "medians": out / "medians.json", "attribution": out / ATTRIBUTION_FILE}
    released_vocabulary().save(paths["vocab"])
    paths["medians"].write_bytes(gzip.decompress((RELEASED_DIR / f"{MEDIANS_FILE}.gz").read_bytes()))
    paths["attribution"].write_text((RELEASED_DIR / ATTRIBUTION_FILE).read_text())
    return paths


def released_token_count(vocab: Vocabulary) -> int:
    """How many ids the stage-1 part of a dictionary spans: specials and genes (time tokens and the query
    markers come after them in the stage-2 layout)."""
    return 1 + max(vocab[token] for token in vocab.token_to_id
                   if not (vocab.is_numeric[vocab[token]] or token in (BOQ, EOQ)))


def stage2_layout(vocab: Vocabulary, name: str) -> Vocabulary:
    """A released dictionary (or the 1B one, which adds ``<boq>``/``<eoq>``) in the stage-2 layout; a
    dictionary that has its time tokens already is returned as it is, once checked."""
    check_gene_order(vocab, name)
    first_new = released_token_count(vocab)
    if vocab.is_numeric.any():
        return vocab
    queries = {token: vocab[token] for token in (BOQ, EOQ) if token in vocab}
    expected = {BOQ: first_new + 2 * RELEASED_MAX_TIME, EOQ: first_new + 2 * RELEASED_MAX_TIME + 1}
    if queries and queries != expected:
        raise MaxtokiError(f"{name}: {', '.join(f'{t}={i}' for t, i in queries.items())}, but time tokens "
                           f"-{RELEASED_MAX_TIME}..{RELEASED_MAX_TIME - 1} at {first_new}.. put them at "
                           f"{expected[BOQ]} and {expected[EOQ]}; not the released layout")
    tokens = dict(vocab.token_to_id)
    for offset, value in enumerate(range(-RELEASED_MAX_TIME, RELEASED_MAX_TIME)):
        tokens[str(value)] = first_new + offset
    tokens.update(expected)
    return Vocabulary(tokens)


def check_gene_order(vocab: Vocabulary, name: str) -> None:
    """Specials at 0..3 and the genes right after them in sorted order, one id each, as the release has
    them; names the dictionary that circulates shifted by one against the weights."""
    for token in (PAD, BOS, EOS):
        if token not in vocab:
            raise MaxtokiError(f"{name}: no {token} token; not a MaxToki token dictionary")
    if vocab[EOS] == 2 and vocab[BOS] != 2:
        raise MaxtokiError(f"{name}: <eos>={vocab[EOS]} and <bos>={vocab[BOS]}, genes from id "
                           f"{int(vocab.gene_ids[0]) if len(vocab.gene_ids) else '-'}: the dictionary that "
                           "circulates shifted by one against the released weights (every gene would read its "
                           "neighbour's row); use the released token_dictionary_v1.json (maxtoki data released)")
    specials = {token: vocab.get(token) for token in SPECIALS if token in vocab}
    if specials != {token: i for i, token in enumerate(SPECIALS) if token in vocab}:
        raise MaxtokiError(f"{name}: special tokens {', '.join(f'{t}={i}' for t, i in specials.items())}; the "
                           "released layout has <pad>=0, <mask>=1, <bos>=2, <eos>=3")
    genes = vocab.gene_ids
    if len(genes) == 0:
        raise MaxtokiError(f"{name}: no gene tokens; not a MaxToki token dictionary")
    start = len(SPECIALS)
    if int(genes[0]) != start or int(genes[-1]) != start + len(genes) - 1:
        raise MaxtokiError(f"{name}: genes at ids {int(genes[0])}..{int(genes[-1])} with gaps or other tokens "
                           f"between them; the released layout has them at {start}..{start + len(genes) - 1}")
    names = vocab.genes
    disorder = next((i for i in range(1, len(names)) if names[i] < names[i - 1]), None)
    if disorder is not None:
        raise MaxtokiError(f"{name}: genes out of the released (sorted) order: id {int(genes[disorder])} is "
                           f"{names[disorder]}, after {names[disorder - 1]}")
