"""The plumbing both stages write and read through: MDS shard outputs, worker processes, manifests."""

from maxtoki.data.shards.destination import ShardDestination, SplitOutputs
from maxtoki.data.shards.inspect import describe_shards, read_manifest
from maxtoki.data.shards.manifest import base_manifest
from maxtoki.data.shards.mds import mds_writer_class, streaming_dataset_class
from maxtoki.data.shards.parallel import run_parts

__all__ = [
    "ShardDestination", "SplitOutputs", "base_manifest", "describe_shards", "mds_writer_class", "read_manifest",
    "run_parts", "streaming_dataset_class",
]
