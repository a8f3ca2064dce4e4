"""Run under `composer -n N`: each rank writes a fingerprint of every cell of its first batches of the
stage-1 loader to OUT/rank{R}.json. Usage: rank_batches.py CELLS VOCAB OUT BATCHES"""

import hashlib
import json
import sys

from composer.utils import dist

from maxtoki.data.loaders import build_cells_loader

cells, vocab, out, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dist.initialize_dist("cpu")
spec = build_cells_loader(dataset={"remote": cells, "vocab": vocab, "max_seq_len": 64, "shuffle": True,
                                   "shuffle_seed": 17}, device_batch_size=4)
seen = []
for index, batch in enumerate(spec.dataloader):
    if index == batches:
        break
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        seen.append(hashlib.sha1(ids[mask.bool()].numpy().tobytes()).hexdigest())
with open(f"{out}/rank{dist.get_global_rank()}.json", "w") as handle:
    json.dump(seen, handle)
