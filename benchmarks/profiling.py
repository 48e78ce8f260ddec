"""Host syncs and compute-like aten ops per training update, counted under ``torch.profiler``.

The CPU proxies of GPU readiness (docs/design.md §8), measurable without a GPU and meaning the same on
CUDA:

* **syncs**: ``aten::_local_scalar_dense`` events (every ``float(t)``, ``int(t)``, ``bool(t)``,
  ``t.item()`` of a tensor: on CUDA each blocks the host until the queue drains) plus the
  deliberate device-to-host transfers of the step, which the code labels ``mtrl::to_host`` (the
  K x K Gram matrix of G-based methods). Reads through ``.tolist()`` / ``.numpy()`` leave no
  profiler event on a CPU; the step keeps them to host-side values (task ids, generator draws),
  and reads device values only through the labelled transfer.
* **ops**: leaf ``aten::`` events (ops that call no other aten op) minus the view, metadata and
  allocation ops of ``NON_COMPUTE`` (they launch no kernel). A ``_foreach_*`` or ``_fused_*`` op
  counts as one op, whatever it calls: on CUDA it is one multi-tensor kernel, while the CPU
  implementation loops over the tensors. Each remaining op is one kernel launch (or a few) on a GPU.

Not counted as syncs: the scalar reads inside ``aten::_fused_adam_`` (the CPU kernel reads each
parameter's step counter with ``item()``; the CUDA kernel reads it in device memory).
``raw_*`` fields give the counts without these two rules.
"""

from __future__ import annotations

import collections
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from mtrl.aggregators.solvers import HOST_TRANSFER

__all__ = ["NON_COMPUTE", "count_step"]

#: aten ops that launch no kernel: views, metadata, allocation, scalar reads (counted as syncs)
NON_COMPUTE = frozenset({
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::expand", "aten::t",
    "aten::transpose", "aten::permute", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze",
    "aten::detach", "aten::alias", "aten::empty", "aten::empty_strided", "aten::resize_", "aten::split",
    "aten::chunk", "aten::narrow", "aten::lift_fresh", "aten::set_", "aten::unbind", "aten::split_with_sizes",
    "aten::_unsafe_view", "aten::view_as", "aten::expand_as", "aten::unflatten", "aten::flatten",
    "aten::contiguous", "aten::empty_like", "aten::result_type", "aten::is_nonzero", "aten::is_same_size",
    "aten::item", "aten::_local_scalar_dense", "aten::detach_", "aten::requires_grad_", "aten::lift",
    "aten::resolve_conj", "aten::resolve_neg", "aten::_conj", "aten::_neg_view", "aten::diagonal",
    "aten::movedim", "aten::mT", "aten::swapaxes", "aten::unfold", "aten::squeeze_", "aten::unsqueeze_",
    "aten::t_", "aten::transpose_", "aten::as_strided_", "aten::_has_compatible_shallow_copy_type",
})


def count_step(
    step: Callable[[int], object], first: int, updates: int, host_labels: tuple[str, ...] = ()
) -> dict[str, object]:
    """Run ``step(i)`` for ``i`` in ``first .. first + updates - 1`` under the profiler; return the
    per-update means of syncs (and their two kinds) and compute-like ops, and the op histogram.

    ``host_labels``: ``record_function`` labels of host-side work (an aggregator's solver on the K x K
    numbers); the ops inside them are counted apart, as ``host_ops_per_update`` (on a CPU the
    profiler cannot tell a host tensor's op from the device's; on a GPU these launch no kernel)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(first, first + updates):
            step(i)
    events = prof.events()
    reads = [e for e in events if e.name == "aten::_local_scalar_dense"]
    scalar_reads = sum(1 for e in reads if not _inside(e, _FUSED))
    transfers = sum(1 for e in events if e.name == HOST_TRANSFER)
    raw = [e.name for e in events if e.name.startswith("aten::") and not e.cpu_children and e.name not in NON_COMPUTE]
    compute = [
        e for e in events
        if e.name.startswith("aten::") and e.name not in NON_COMPUTE and not _inside(e, _MULTI_TENSOR)
        and (e.name.startswith(_MULTI_TENSOR) or not e.cpu_children)
    ]
    host = [e for e in compute if host_labels and _inside(e, host_labels, exact=True)]
    ops = collections.Counter(e.name for e in compute)
    extra = {"host_ops_per_update": len(host) / updates} if host_labels else {}
    return {
        **extra,
        "syncs_per_update": (scalar_reads + transfers) / updates,
        "scalar_reads_per_update": scalar_reads / updates,
        "host_transfers_per_update": transfers / updates,
        "ops_per_update": sum(ops.values()) / updates,
        "raw_syncs_per_update": (len(reads) + transfers) / updates,
        "raw_ops_per_update": len(raw) / updates,
        "ops": {name: n / updates for name, n in ops.most_common()},
    }


_FUSED = ("aten::_fused_",)
_MULTI_TENSOR = ("aten::_foreach_", "aten::_fused_")


def _inside(event, prefixes: tuple[str, ...], exact: bool = False) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in prefixes if exact else parent.name.startswith(prefixes):
            return True
        parent = parent.cpu_parent
    return False
