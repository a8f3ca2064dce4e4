"""Building the backbone on the ``meta`` device, and initialising it one module at a time.

The GPU recipes set ``model.init_device: meta``: no rank holds the whole model in host memory,
and FSDP materialises each shard on its own GPU. Composer's FSDP does that module by module
(``to_empty`` then the model's ``param_init_fn``), so the model must say how to initialise any one
of its modules as Hugging Face would: Linear and Embedding from N(0, ``initializer_range``) with the
padding row zero, RMSNorm weights 1 (Hugging Face's ``_init_weights`` skips them). Buffers (the rotary
frequencies) are computed, not learnt, and never saved; they are built on the host so that no
initialisation is needed for them.
"""

from __future__ import annotations

import torch

from maxtoki.errors import MaxtokiError

INIT_DEVICES = ("cpu", "meta", "mixed")


def device_of_this_rank(init_device: str) -> str:
    """``mixed`` (llm-foundry's convention): rank 0 builds on the host and FSDP's ``sync_module_states``
    sends its weights to the other ranks, which build on ``meta``; the way to start FSDP from a
    ``pretrained`` model with one copy of it in host memory."""
    if init_device not in INIT_DEVICES:
        raise MaxtokiError(f"model.init_device must be one of {', '.join(INIT_DEVICES)}, not {init_device!r}")
    if init_device != "mixed":
        return init_device
    from composer.utils import dist

    return "cpu" if dist.get_global_rank() == 0 else "meta"


def build_on(device: str, config):
    """A ``LlamaForCausalLM`` whose parameters live on ``device`` (buffers always on the host)."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    if device == "cpu":
        return LlamaForCausalLM(config)
    with init_empty_weights(include_buffers=False):
        return LlamaForCausalLM(config)


def attach_param_init_fn(model) -> None:
    """Give the model the ``param_init_fn`` that Composer's FSDP calls on each materialised module."""
    model.param_init_fn = lambda module: initialize_module(model, module)


def initialize_module(model, module: torch.nn.Module) -> None:
    """Hugging Face's initialisation of ``module``'s own parameters (not its children's)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from maxtoki.model.head_padding import zero_padding_of

    with torch.no_grad():
        if isinstance(module, LlamaRMSNorm):
            module.weight.fill_(1.0)
        else:
            model._init_weights(module)
            zero_padding_of(model, module)


def materialize(model, device: str | torch.device = "cpu") -> None:
    """What FSDP does to a meta-initialised model, without FSDP: each module with parameters on
    ``meta`` is moved with ``to_empty`` and initialised by the model's ``param_init_fn``."""
    for module in model.modules():
        if any(parameter.is_meta for parameter in module.parameters(recurse=False)):
            module.to_empty(device=device, recurse=False)
            model.param_init_fn(module)
