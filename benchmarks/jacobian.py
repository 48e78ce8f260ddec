"""Per-task Jacobian of the MT10 critic against one backward pass of the summed loss.

The critic of the MT10 paper configuration (two Q networks, 3 x 400, obs 39 + one-hot 10,
action 4) on a batch of K x 128 transitions: G [K, P] by each engine of ``mtrl.jacobian``
("linear", the trainer's default for our networks; "vmap", torch.func; "loop", K separate
``autograd.grad`` calls as in the reference code) and one forward + backward of the summed loss,
interleaved in one run. Target: the default engine <= 1.2 x backward.

    mtrl bench jacobian [--num-tasks 10] [--batch 128] [--device auto] [--json FILE]
"""

from __future__ import annotations

import argparse

import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.benchmarks.common import print_table, time_interleaved, write_json
from mtrl.config import AgentConfig
from mtrl.jacobian import configure_allocator, per_task_jacobian, resolve_method
from mtrl.train import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench jacobian", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-tasks", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="transitions per task")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    configure_allocator()
    device = resolve_device(args.device)
    K, B, obs_dim, action_dim = args.num_tasks, args.batch, 39, 4
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        agent = MTSAC(obs_dim, action_dim, K, AgentConfig(hidden_dim=args.hidden, num_layers=args.layers), device=device)
    obs = torch.randn(K, B, obs_dim, generator=gen).to(device)
    action = (torch.rand(K, B, action_dim, generator=gen) * 2 - 1).to(device)
    target = torch.randn(K, B, generator=gen).to(device)
    codes = agent.codes
    params = {n: p.detach() for n, p in agent.critic.named_parameters()}
    inputs = (obs, action, target, codes)
    P = sum(p.numel() for p in params.values())

    def backward_of_sum():
        q1, q2 = agent.critic(obs, action, codes[:, None])
        loss = ((q1 - target).pow(2).mean(1) + (q2 - target).pow(2).mean(1)).sum()
        torch.autograd.grad(loss, list(agent.critic.parameters()))

    default = resolve_method("auto", agent.critic, list(params))
    labels = {"linear": "G by linear taps", "vmap": "G by vmap", "loop": "G by K autograd calls"}
    functions = {"backward (summed loss)": backward_of_sum}
    for method, label in labels.items():
        functions[label] = lambda m=method: per_task_jacobian(agent._critic_loss, params, inputs, method=m, module=agent.critic)
    times = time_interleaved(functions, args.repeats, device=device)
    base = times["backward (summed loss)"]
    print(f"MT10 critic: K = {K}, batch {K} x {B}, P = {P:,}, device {device}; median of {args.repeats}")
    print_table(["computation", "ms", "x backward"], [[n, t * 1e3, t / base] for n, t in times.items()])
    ratio = times[labels[default]] / base
    print(f"  {'PASS' if ratio <= 1.2 else 'FAIL'}  G by the default engine ({default}) <= 1.2 x one backward: {ratio:.2f}x")
    write_json(args.json, {
        "benchmark": "jacobian", "num_tasks": K, "batch_per_task": B, "params": P, "device": str(device),
        "ms": {n: t * 1e3 for n, t in times.items()},
        "default_engine": default,
        "comparisons": {
            "default_vs_backward": {"ratio": ratio, "target": 1.2, "pass": ratio <= 1.2},
            **{f"{m}_vs_backward": {"ratio": times[label] / base} for m, label in labels.items()},
        },
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
