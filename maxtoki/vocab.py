"""The token dictionary shared by data, model and inference.

Laid out like the released MaxToki dictionary: ``<pad>``=0, ``<mask>``=1, ``<bos>``=2, ``<eos>``=3,
Ensembl gene IDs in sorted order, numeric time tokens ``"-T"..."T-1"``, then ``<boq>`` and ``<eoq>``.
Released dictionaries (JSON) and Geneformer dictionaries (pickle, ``<cls>`` as the start token)
load unchanged: ids are never renumbered.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from maxtoki.errors import InputFileError, MaxtokiError

PAD, MASK, BOS, EOS, BOQ, EOQ = "<pad>", "<mask>", "<bos>", "<eos>", "<boq>", "<eoq>"
VOCAB_FILE = "vocab.json"  # beside every data output and model directory, so each can be used wherever it is copied
_SPECIAL_RE = re.compile(r"^<[^<>]+>$")
_NUMERIC_RE = re.compile(r"^-?\d+$")


def is_numeric_token(token: str) -> bool:
    """A token whose string parses as an integer is a time token (the released convention)."""
    return bool(_NUMERIC_RE.match(token))



def fitting_max_time(largest_timelapse: float) -> int:
    """``--max-time`` for data whose largest Δ is ``largest_timelapse``: time tokens -T..T-1 covering it with a
    quarter to spare (later data may reach a little further), at least 10."""
    return max(10, math.ceil(1.25 * largest_timelapse) + 1)

class Vocabulary:
    """Token string <-> id lookups plus the id classes the model and data code need."""

    def __init__(self, token_to_id: Mapping[str, int]):
        mapping = {str(token): int(idx) for token, idx in token_to_id.items()}
        if not mapping:
            raise MaxtokiError("the vocabulary is empty")
        ids = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
        if ids.min() < 0:
            raise MaxtokiError("the vocabulary has negative token ids")
        if len(np.unique(ids)) != len(ids):
            raise MaxtokiError("the vocabulary maps two tokens to the same id")
        self._token_to_id = mapping
        self._id_to_token: list[str | None] = [None] * (int(ids.max()) + 1)
        for token, idx in mapping.items():
            self._id_to_token[idx] = token

    # ----- construction and persistence -------------------------------------------------------
    @classmethod
    def build(cls, genes: Iterable[str], max_time: int = 1500) -> Vocabulary:
        """The released layout: specials, sorted genes, ``-max_time..max_time-1``, ``<boq>``, ``<eoq>``."""
        if max_time < 1:
            raise MaxtokiError(f"--max-time must be at least 1, got {max_time}")
        gene_list = sorted(set(genes))
        bad = [g for g in gene_list if _SPECIAL_RE.match(g) or is_numeric_token(g)]
        if bad:
            raise MaxtokiError(f"gene IDs must not look like special or numeric tokens: {bad[:5]}")
        tokens = [PAD, MASK, BOS, EOS, *gene_list]
        tokens += [str(t) for t in range(-max_time, max_time)]
        tokens += [BOQ, EOQ]
        return cls({token: idx for idx, token in enumerate(tokens)})

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Load a JSON dictionary or a Geneformer-style pickle (detected from the content)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputFileError(path, f"cannot read the vocabulary ({exc.strerror or exc})") from None
        return cls.from_bytes(raw, path)

    @classmethod
    def from_bytes(cls, raw: bytes, path: str | Path) -> Vocabulary:
        """Parse the bytes of a JSON dictionary or a Geneformer-style pickle; ``path`` names it in errors."""
        if raw[:1] == b"\x80":
            mapping = _restricted_unpickle(raw, path)
        else:
            try:
                mapping = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputFileError(path, f"not a JSON or pickle token dictionary ({exc})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, (int, np.integer)) for v in mapping.values()):
            raise InputFileError(path, "a vocabulary must map token strings to integer ids")
        return cls(mapping)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    def to_json(self) -> str:
        return json.dumps(self._token_to_id, indent=1) + "\n"

    @cached_property
    def sha256(self) -> str:
        """Content hash recorded in manifests so data and checkpoints can be matched."""
        canonical = json.dumps(sorted(self._token_to_id.items(), key=lambda kv: kv[1]), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ----- lookups --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._id_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self._token_to_id

    def __getitem__(self, token: str) -> int:
        return self._token_to_id[token]

    def get(self, token: str, default: int | None = None) -> int | None:
        return self._token_to_id.get(token, default)

    def token(self, idx: int) -> str:
        token = self._id_to_token[idx] if 0 <= idx < len(self._id_to_token) else None
        if token is None:
            raise KeyError(idx)
        return token

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.token(int(i)) for i in ids]

    @property
    def token_to_id(self) -> Mapping[str, int]:
        return self._token_to_id

    # ----- special tokens -------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self._require(PAD)

    @property
    def mask_id(self) -> int | None:
        return self._token_to_id.get(MASK)

    @property
    def bos_id(self) -> int:
        """``<bos>``; Geneformer dictionaries call the start token ``<cls>``."""
        for name in (BOS, "<cls>"):
            if name in self._token_to_id:
                return self._token_to_id[name]
        raise MaxtokiError("the vocabulary has no <bos> (or <cls>) token")

    @property
    def eos_id(self) -> int:
        return self._require(EOS)

    @property
    def boq_id(self) -> int:
        return self._require(BOQ)

    @property
    def eoq_id(self) -> int:
        return self._require(EOQ)

    def _require(self, name: str) -> int:
        if name not in self._token_to_id:
            raise MaxtokiError(f"the vocabulary has no {name} token")
        return self._token_to_id[name]

    # ----- token classes (arrays indexed by id) ---------------------------------------------
    @cached_property
    def _kinds(self) -> np.ndarray:
        """0 = unused id, 1 = special, 2 = gene, 3 = numeric."""
        kinds = np.zeros(len(self), dtype=np.int8)
        for idx, token in enumerate(self._id_to_token):
            if token is None:
                continue
            kinds[idx] = 1 if _SPECIAL_RE.match(token) else 3 if is_numeric_token(token) else 2
        return kinds

    @property
    def is_gene(self) -> np.ndarray:
        return self._kinds == 2

    @property
    def is_numeric(self) -> np.ndarray:
        return self._kinds == 3

    @property
    def is_special(self) -> np.ndarray:
        return self._kinds == 1

    @cached_property
    def gene_ids(self) -> np.ndarray:
        return np.flatnonzero(self.is_gene)

    @cached_property
    def genes(self) -> list[str]:
        return [self._id_to_token[i] for i in self.gene_ids]

    @cached_property
    def numeric_ids(self) -> np.ndarray:
        """Numeric token ids ordered by the value they stand for."""
        ids = np.flatnonzero(self.is_numeric)
        return ids[np.argsort(self.numeric_values[ids], kind="stable")]

    @cached_property
    def numeric_values(self) -> np.ndarray:
        """Value of every numeric token (int64, indexed by id; 0 for other tokens)."""
        values = np.zeros(len(self), dtype=np.int64)
        for idx in np.flatnonzero(self.is_numeric):
            values[idx] = int(self._id_to_token[idx])
        return values

    @property
    def time_range(self) -> tuple[int, int]:
        """Smallest and largest time value that has a token."""
        ids = self.numeric_ids
        if len(ids) == 0:
            raise MaxtokiError("the vocabulary has no numeric time tokens")
        return int(self.numeric_values[ids[0]]), int(self.numeric_values[ids[-1]])

    def time_token(self, value: int) -> int:
        """Token id of the numeric token for ``value``."""
        token = str(int(value))
        if token not in self._token_to_id:
            lo, hi = self.time_range
            raise MaxtokiError(f"time value {value} has no token; the vocabulary covers {lo}..{hi}")
        return self._token_to_id[token]

    @property
    def token_dtype(self) -> np.dtype:
        """Smallest dtype holding every id: uint16 unless the vocabulary exceeds 65,536 ids."""
        return np.dtype(np.uint16) if len(self) <= 65536 else np.dtype(np.int32)

    def __repr__(self) -> str:
        return (f"Vocabulary({len(self)} tokens: {int(self.is_gene.sum())} genes, "
                f"{int(self.is_numeric.sum())} numeric, {int(self.is_special.sum())} special)")


class _DictOnlyUnpickler(pickle.Unpickler):
    """Token dictionaries are plain dicts; refuse any pickle that would import code (except numpy ints)."""

    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _restricted_unpickle(raw: bytes, path: Path) -> dict:
    try:
        return _DictOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # any unpickling failure means the file is not a token dictionary
        raise InputFileError(path, f"not a token dictionary pickle ({exc})") from None
