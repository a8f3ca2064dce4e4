"""Run under `composer -n 2`: everything tests/test_multiprocess.py checks, in one launch (every launch pays for
importing Composer in each rank). First each rank writes a fingerprint of every cell of its first BATCHES
batches of the stage-1 loader to OUT/rank{R}.json; then the training runs, one after the other.

Usage: two_ranks.py CELLS VOCAB OUT BATCHES [--train RECIPE KEY=VALUE ...] ..."""

import hashlib
import json
import sys

from composer.utils import dist

from maxtoki.data.loaders import build_cells_loader
from maxtoki.training import train_from_recipe

arguments = " ".join(sys.argv[1:]).split(" --train ")
cells, vocab, out, batches = arguments[0].split()
dist.initialize_dist("cpu")
spec = build_cells_loader(dataset={"remote": cells, "vocab": vocab, "max_seq_len": 64, "shuffle": True,
                                   "shuffle_seed": 17}, device_batch_size=4)
seen = []
for index, batch in enumerate(spec.dataloader):
    if index == int(batches):
        break
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        seen.append(hashlib.sha1(ids[mask.bool()].numpy().tobytes()).hexdigest())
with open(f"{out}/rank{dist.get_global_rank()}.json", "w") as handle:
    json.dump(seen, handle)
for run in arguments[1:]:
    recipe, *overrides = run.split()
    train_from_recipe(recipe, overrides)
