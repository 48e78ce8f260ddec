"""Command line: ``mtrl train | evaluate | sweep | report | inspect | bench``.

Errors a user can cause (bad config, bad run directory, no checkpoint) are printed as one line
and exit with status 2; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

__all__ = ["main"]

_BENCHES = ("aggregators", "jacobian", "update", "collect", "step", "population", "population_update")
# commands whose module parses its own arguments (``mtrl.inspection``: a module named ``inspect``
# would shadow the standard library's when a file of mtrl/ is run as a script)
_MODULE_COMMANDS = {"sweep": "mtrl.sweep", "report": "mtrl.report", "inspect": "mtrl.inspection"}


def _default_run_dir(config_path: Path, seed: int | str) -> Path:
    return Path("runs") / f"{config_path.stem}" / f"seed{seed}"


def _cmd_train(args: argparse.Namespace) -> int:
    from mtrl.config import load_config, parse_seeds

    overrides = list(args.set or [])
    resume = args.resume
    run_dir = Path(args.run_dir) if args.run_dir else None
    config_path = Path(args.config) if args.config else None
    if args.seeds is not None and args.seed is not None:
        raise ValueError(f"give --seed N (one run) or --seeds {args.seeds} (a population), not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    resume_dir = None
    if resume not in (None, "auto"):
        resume_dir = Path(resume)
        if run_dir is not None and run_dir != resume_dir and run_dir.resolve() != resume_dir.resolve():
            raise ValueError(f"--run-dir {run_dir} and --resume {resume_dir} name different directories")
        run_dir = resume_dir
    if config_path is None and resume_dir is None:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if config_path is None:  # the config the run has now: config.yaml with config_history.jsonl applied
        from mtrl.runs import load_run_config

        first = resume_dir
        if "{seed}" in str(resume_dir):  # a population: its members share everything but the seed
            if seeds is None:
                raise ValueError(f"--resume {resume_dir} names a population's run directories: give its --seeds too")
            from mtrl.train import member_run_dir

            first = member_run_dir(resume_dir, seeds[0])
        cfg = load_run_config(first, overrides)
        config_path = first / "config.yaml"
    else:
        cfg = load_config(config_path, overrides)
    if seeds is None and cfg.seeds is not None and args.seed is None:
        seeds = parse_seeds(cfg.seeds)
    if cfg.train.video_every:
        from mtrl.video import configure_headless_gl

        configure_headless_gl()  # before mtrl.train imports MuJoCo
    from mtrl.train import train, train_population

    if seeds is not None and len(seeds) > 1:
        template = run_dir if run_dir is not None else _default_run_dir(config_path, "{seed}")
        results = train_population(cfg, seeds, template, resume=resume, force=args.force)
        for result in results:
            success = "n/a" if result.last_success is None else f"{result.last_success:.3f}"
            print(f"done: {result.run_dir}: {result.steps_done} steps, last mean success {success}")
        if any(result.interrupted for result in results):
            return 143
        from mtrl.metrics import read_status

        return 1 if any((read_status(result.run_dir) or {}).get("state") == "failed" for result in results) else 0
    if seeds is not None:
        cfg = dataclasses.replace(cfg, seed=seeds[0], seeds=None)
    elif cfg.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=None)  # --seed N picks one run of a population's config
    if run_dir is None:
        run_dir = _default_run_dir(config_path, cfg.seed)
    elif "{seed}" in str(run_dir):
        run_dir = Path(str(run_dir).replace("{seed}", str(cfg.seed)))
    result = train(cfg, run_dir, resume=resume, force=args.force)
    if result.interrupted:
        return 143
    success = "n/a" if result.last_success is None else f"{result.last_success:.3f}"
    print(f"done: {result.steps_done} steps, last mean success {success}; outputs in {result.run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    run_dir = Path(args.run_dir)
    if args.video is not None and args.json:
        raise ValueError("--json writes an evaluation's result; --video records videos instead of evaluating")
    if args.goals == "heldout" and (args.video is not None or args.protocol == "metaworld"):
        what = "--video" if args.video is not None else "--protocol metaworld"
        raise ValueError(
            f"--goals heldout needs --protocol mtrl: {what} plays on MetaWorld's own vector env of the run's seed, "
            f"whose goals are the training goals (--goals train, or leave --goals out)"
        )
    if args.video is not None:
        from mtrl.rollouts import record_run_videos

        record_run_videos(run_dir, Path(args.video), episodes=args.episodes or 1, device=args.device)
        return 0
    if args.protocol == "metaworld":
        from mtrl.rollouts import evaluate_run_metaworld

        payload = evaluate_run_metaworld(run_dir, episodes=args.episodes or 50, device=args.device).to_json()
    else:
        from mtrl.train import evaluate_run

        episodes = args.episodes or 10
        payload = evaluate_run(run_dir, episodes=episodes, device=args.device, goals=args.goals).to_json(episodes)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"mtrl.benchmarks.{args.what}")
    return int(module.main(rest) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtrl", description="Multi-task RL with gradient aggregation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a multi-task SAC agent")
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume RUN_DIR)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--seeds", metavar="SEEDS",
                   help="train a population: these seeds (0-9, 0,3,7) in one process, one run directory each")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--run-dir", help="output directory (default runs/<config>/seed<N>); with --seeds it holds {seed}")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue from the newest valid checkpoint; a population: auto, or its run directories with {seed}")
    p.add_argument("--force", action="store_true",
                   help="resume even if the config changes keys that change the run's results (recorded in config_history.jsonl)")

    p = sub.add_parser("evaluate", help="evaluate the newest checkpoint of a run, or record videos of it")
    p.add_argument("run_dir")
    p.add_argument("--protocol", choices=("mtrl", "metaworld"), default="mtrl",
                   help="mtrl: the trainer's evaluation; metaworld: metaworld.evaluation on MetaWorld's vector env")
    p.add_argument("--episodes", type=int, help="episodes per task (default 10; 50 with --protocol metaworld; 1 with --video)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--video", metavar="DIR", help="render episodes into DIR/<task>.mp4 (or .gif) instead of evaluating")
    p.add_argument("--device", default="auto")
    p.add_argument("--goals", choices=("train", "heldout"),
                   help="goal set (default: the run's env.eval_goals with --protocol mtrl; --protocol metaworld and --video "
                        "play the training goals, and refuse heldout)")

    sub.add_parser("sweep", help="run methods x seeds (see `mtrl sweep -h`)", add_help=False)
    sub.add_parser("report", help="tables and figures over run directories (see `mtrl report -h`)", add_help=False)
    sub.add_parser("inspect", help="success and gradient diagnostics of one run (see `mtrl inspect -h`)", add_help=False)
    p = sub.add_parser("bench", help="speed benchmarks printing ratios measured in one run")
    p.add_argument("what", choices=_BENCHES)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mtrl.checkpoint import CheckpointError

    try:
        if argv and argv[0] in _MODULE_COMMANDS:
            import importlib

            module = importlib.import_module(_MODULE_COMMANDS[argv[0]])
            return int(module.main(argv[1:]) or 0)
        parser = _parser()
        if argv and argv[0] == "bench":
            args, rest = parser.parse_known_args(argv)
            return _cmd_bench(args, rest)
        args = parser.parse_args(argv)
        if args.command == "evaluate" and args.video is not None:
            from mtrl.video import configure_headless_gl

            configure_headless_gl()  # before anything imports MuJoCo
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        print(f"mtrl: error: {err}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
