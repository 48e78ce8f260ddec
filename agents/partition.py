"""AOTAutograd's default partition (the backward keeps what eager autograd keeps) as an
inductor partitioner, for ``agent.compile`` pieces on a CPU.

Inductor's min-cut partitioner saves ReLU's backward as a bool mask (1 byte instead of the
4-byte output), and with torch 2.13 inductor's C++ code stores bool tensors slowly: on the
2-core Xeon of docs/benchmarks.md a compiled ``y <= 0`` over [1280, 400] took 6.2 ms against
eager's 0.40 ms, which made the compiled LS update of the paper networks 1.8x slower than
eager. Saving the float outputs instead, as eager does, removes those stores (the mask is
recomputed inside the fused backward kernel). On CUDA the min-cut stays: Triton's stores are
fast and the smaller saved tensors matter there.

The class lives at module level so that inductor can pickle it into its cache key (a class made
inside a function cannot be pickled: inductor then logs a warning with a traceback for every
compiled graph and skips its FX graph cache).
"""

from __future__ import annotations

from torch._functorch.partitioners import default_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn

__all__ = ["EagerPartition"]


class EagerPartition(CustomPartitionerFn):
    def __call__(self, gm, joint_inputs, **kwargs):
        kwargs.pop("compiler", None)
        kwargs.pop("static_lifetime_input_indices", None)
        return default_partition(gm, joint_inputs, **kwargs)

    def uuid(self):
        return "mtrl-eager-partition-v1"
