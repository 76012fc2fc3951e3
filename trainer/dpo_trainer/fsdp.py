"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the policy model, with several processes and
`fsdp: true` (TrainConfig).

Each language-model decoder layer is one FSDP unit and the rest of the model (embeddings, vision
tower, projector, LM head, final norm) the root unit: every rank holds 1/N of each unit's weights,
gradients and optimizer state, and a unit's full weights exist only while it computes. The vision
tower stays in the root unit on purpose: a rank whose micro-batch has no image skips it, and an
FSDP unit that one rank skips would leave the others waiting in its all-gather; the root unit is
gathered on every forward whatever the batch holds. For the same reason unused parameters
contribute zero gradients to the reduce-scatter (`set_reduce_scatter_unused_params`), and the
embeddings' output requires grad on every rank (shard_model says why).

The reference model is the same sharded weights with the adapter switched off (modeling.py), or
precomputed log-probs; it costs no second copy either way.

Gradients: FSDP reduce-scatters them itself in every backward, so Distributed.sum_gradients is
skipped; the divide factor is 1 because the loss is already normalised by the step's global pair
count (distributed.py), which makes the summed gradient the single-process one.

Checkpoints keep the single-process format: rank 0 gathers the trainable weights and the optimizer
state unsharded (torch.distributed.checkpoint.state_dict, full_state_dict + cpu_offload), and the
optimizer state is re-keyed to torch's own integer parameter ids in the optimizer's order. A
checkpoint written at one world size therefore resumes at any other, FSDP or not. Loading goes the
other way: the adapter loads into the unsharded model before it is sharded, the optimizer state
after the optimizer exists (set_optimizer_state_dict shards it). Only the trainable (LoRA) weights
are gathered, so rank 0 never holds the whole model for a checkpoint.

An out-of-memory error inside a sharded step cannot be backed off in process (train.py ends the
run): the other ranks may be inside a collective no agreement reaches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .errors import InvalidInputError


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The language model's decoder layers (a PEFT-wrapped transformers model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise InvalidInputError(f"fsdp: cannot find the decoder layers of {type(base).__name__} (get_decoder().layers)")
    return list(layers)


def shard_model(model: Any) -> None:
    """fully_shard each decoder layer, then the root; in place (parameters become DTensors)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # A unit's gradients are reduce-scattered when its inputs' gradients are computed, and only at
    # the end of backward for a unit whose inputs need none -- as the first decoder layer's
    # embeddings on a rank whose micro-batch has no image (frozen embeddings, no vision tower
    # output). Ranks with and without images would then reduce the units in different orders,
    # and the collectives would mismatch: the embeddings' output requires grad on every rank.
    model.enable_input_require_grads()
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum, as sum_gradients' all-reduce
            # A plain SUM reduce-scatter: the default for a custom factor is PREMUL_SUM, which
            # gloo lacks ("Cannot use ReduceOp.PREMUL_SUM with Gloo"); with factor 1 it is exact.
            module.set_force_sum_reduction_for_comms(True)
    model.set_reduce_scatter_unused_params(True)


@contextlib.contextmanager
def adapter_disabled(model: Any, trainable: list[torch.nn.Parameter]) -> Iterator[None]:
    """PEFT's disable_adapter (the reference forward), which turns requires_grad off on the adapter
    weights and at exit back on -- on the parameters registered at that moment. FSDP keeps the root
    unit unsharded from the reference forward to the policy's, so PEFT re-enables the unsharded
    views and leaves the root's sharded parameters (the optimizer's and the checkpoint's) frozen,
    and a frozen parameter is left out of the gathered checkpoint. This re-enables those."""
    with model.disable_adapter():
        yield
    for p in trainable:
        p.requires_grad_(True)


def parameter_names(model: Any, optimizer: torch.optim.Optimizer) -> list[str]:
    """Each optimizer parameter's name, in the optimizer's order (its state_dict's integer ids).
    Taken right after the optimizer is built, while every parameter is the sharded one."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable weights unsharded on rank 0 (empty elsewhere), keyed as model.state_dict().
    A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(ignore_frozen_params=True))


def optimizer_state(model: Any, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """optimizer.state_dict() of the unsharded optimizer, on rank 0 (empty elsewhere): the same
    integer-keyed layout a single process saves. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options())
    if not full:
        return {}
    ids = {name: i for i, name in enumerate(names)}
    return {
        "state": {ids[name]: value for name, value in full["state"].items()},
        "param_groups": [{**group, "params": [ids[name] for name in group["params"]]} for group in full["param_groups"]],
    }


def load_optimizer_state(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any], names: list[str]) -> None:
    """Load an integer-keyed optimizer.state_dict() (any world size's) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    keyed = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, keyed, options=StateDictOptions(full_state_dict=True))


def full_norm(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a number: over DTensor gradients it is a DTensor."""
    from torch.distributed.tensor import DTensor

    return float((norm.full_tensor() if isinstance(norm, DTensor) else norm).item())
