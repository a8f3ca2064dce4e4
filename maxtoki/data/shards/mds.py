"""Fast access to mosaicml-streaming's MDS writer and dataset.

``import streaming`` also imports its example dataset zoo (torchvision, transformers), about 14 s
on a laptop CPU. The MDS classes live in ``streaming.base``; importing them without running the
package ``__init__`` files costs only the torch import. The temporary package entries are
removed again, so a later ``import streaming`` anywhere works as usual and yields these classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types


def _import_without_package_init(module_name: str):
    if "streaming" in sys.modules and not getattr(sys.modules["streaming"], "_maxtoki_stub", False):
        return importlib.import_module(module_name)
    root = os.path.dirname(importlib.util.find_spec("streaming").origin)
    stubs = []
    for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [path]
            stub._maxtoki_stub = True
            sys.modules[name] = stub
            stubs.append(name)
    try:
        return importlib.import_module(module_name)
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def mds_writer_class():
    return _import_without_package_init("streaming.base.format.mds.writer").MDSWriter


def streaming_dataset_class():
    return _import_without_package_init("streaming.base.dataset").StreamingDataset
