"""The `masters` command line: thin wrappers that build the config and start a flow.

    masters run        [--config FILE] [--set a.b=c ...]   the main job (= masters distill)
    masters evaluate   [--suite NAME] [--model-version N]  evaluate student (or a version), teachers
    masters bootstrap  [--only NAME ...]                   train the embedded models
    masters distill    [--config FILE] [--set ...]         prune, generate, score, train, eval
    masters prune      [--config FILE] [--set ...]         fingerprint and mask the teachers
    masters mask-sweep [--teacher NAME]                    teacher accuracy vs mask ratio
    masters generate   [--config FILE] [--set ...]         sample and cache every stage's answers
    masters promote    --version N [--gated] | --rollback  move the registry's champion alias
    masters config     [--config FILE] [--set ...]         print the resolved config
    masters plan       [--config FILE] [--set ...]         memory per step and cache size, from
                                                           each model's config.json (no weights)
    masters serve      [--file prefect.yaml]               serve the deployments, no worker
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Prefect's ephemeral API migrates its database on first use; the default 20 s timeout was
# measured to be too short on 2-core machines (../shared/notes/environment.md).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _positive(cast):
    def parse(text: str):
        value = cast(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="masters", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", "-c", help="YAML config file (see configs/)")
        sp.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override one setting, e.g. --set generation.max_new_tokens=4 (repeatable)",
        )
        return sp

    r = with_config(sub.add_parser("run", help="the main job: masters-distill (prune, "
                                   "generate, score, train, evaluate, register)"))
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ev = with_config(sub.add_parser("evaluate", help="evaluate the student and teachers only"))
    ev.add_argument("--model-version", help="evaluate this registered student version (a "
                    "number or an alias such as champion) instead of the configured student")
    ev.add_argument("--suite", help="evaluation suite: a name in configs/suites/ or a YAML "
                    "file (sets evaluation.suite)")
    b = with_config(sub.add_parser("bootstrap", help="train the embedded models from scratch"))
    b.add_argument("--only", action="append", help="bootstrap only this model (repeatable)")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    b.add_argument("--ship", action="store_true",
                   help="copy the results into masters/checkpoints (the shipped models)")
    d = with_config(sub.add_parser("distill", help="the whole pipeline: prune, generate, "
                                   "score, train, evaluate"))
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    with_config(sub.add_parser("prune", help="fingerprint and mask every teacher (no sweep)"))
    s = with_config(sub.add_parser("mask-sweep", help="teacher accuracy at each mask ratio"))
    s.add_argument("--teacher", action="append", help="teacher to sweep (default: the last)")
    g = with_config(sub.add_parser("generate", help="sample and cache every stage's answers"))
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    pr = with_config(sub.add_parser("promote", help="move the champion alias of the "
                                    "registered model by hand, or roll it back"))
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="model version to make champion")
    which.add_argument("--rollback", action="store_true",
                       help="give champion back to the version the current one replaced")
    pr.add_argument("--gated", action="store_true",
                    help="with --version: only if it passes the promotion gate")
    with_config(sub.add_parser("config", help="print the resolved configuration (no secrets)"))
    pl = with_config(sub.add_parser("plan", help="size a run before it starts: device memory "
                                    "per step and the cache's disk size, from each model's "
                                    "config.json alone (no weights loaded)"))
    pl.add_argument("--gpu-memory", type=_positive(float), metavar="GIB",
                    help="memory of one GPU in GiB (default: this machine's CUDA device, "
                    "else 80)")
    pl.add_argument("--world-size", type=_positive(int), default=8, metavar="N",
                    help="training processes (GPUs) for the DDP and sharded rows (default 8)")
    pl.add_argument("--image-tokens", type=_positive(int), metavar="N",
                    help="LM tokens per image (default: from each config, or 1024 for "
                    "dynamic-resolution models)")
    pl.add_argument("--text-tokens", type=_positive(int), default=32, metavar="N",
                    help="question + chat template tokens per prompt (default 32)")
    sv = sub.add_parser("serve", help="serve the deployments of deployments/prefect.yaml "
                        "without a worker (needs PREFECT_API_URL of a Prefect server)")
    sv.add_argument("--file", help="another prefect.yaml")
    sv.add_argument("--limit", type=int, help="most flow runs at once")
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's inputs or services: they carry the field/row/path, so the CLI
    prints them as one line (Prefect has already logged the traceback); anything else is a
    bug and keeps its traceback."""
    from masters import cache, config, data, masking, models, registry, suites, training

    return (config.ConfigError, data.DataError, models.ModelLoadError, masking.MaskError,
            cache.CacheError, suites.SuiteError, training.TrainingError,
            registry.RegistryBusyError)


def main(argv: list[str] | None = None) -> int:
    from masters.config import ConfigError

    args = _parser().parse_args(argv)
    try:
        return _run(args, argv)
    except _user_errors() as exc:
        print(f"masters: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from masters.config import ConfigError, load_config

    if args.command == "serve":
        from flows.serve import PREFECT_YAML, serve

        serve(args.file or PREFECT_YAML, limit=args.limit)
        return 0
    if getattr(args, "suite", None):
        args.overrides.append(f"evaluation.suite={args.suite}")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"masters: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(cfg.public_dict(), indent=2))
        return 0
    if args.command == "plan":
        from masters import plan

        print(plan.make_plan(cfg, world_size=args.world_size, gpu_memory_gib=args.gpu_memory,
                             text_tokens=args.text_tokens,
                             image_tokens=args.image_tokens).render())
        return 0
    if args.command == "bootstrap":
        from flows.bootstrap import bootstrap_flow
        from flows.params import BootstrapParams

        manifests = bootstrap_flow(BootstrapParams(only=args.only), config=cfg.public_dict(),
                                   progress=not args.no_progress)
        for m in manifests:
            print(f"{m['name']}: {m['params']:,} params, test accuracy "
                  f"{m['test_accuracy']:.3f} -> {m['path']}")
        if args.ship:
            from masters import bootstrap, models

            command = "masters " + " ".join(argv if argv is not None else sys.argv[1:])
            for m in manifests:
                bootstrap.ship(m["path"], models.CHECKPOINTS / m["name"], command)
                print(f"shipped {m['name']} -> {models.CHECKPOINTS / m['name']}")
        return 0
    if args.command in ("prune", "mask-sweep"):
        from flows.prune import prune_flow

        sweep = None
        if args.command == "mask-sweep":
            sweep = args.teacher or [cfg.teachers[-1].name]
        out = prune_flow(cfg.public_dict(), sweep)
        for m in out["teachers"]:
            print(f"teacher {m['teacher']}: weights {m['fingerprint']}, {m['tensors']} tensors "
                  f"masked at ratios {m['ratios']}")
        for s in out["sweeps"]:
            print(f"accuracy of teacher {s['teacher']} by mask ratio:\n{s['table']}")
        return 0
    if args.command == "generate":
        from flows.generate import generate_flow

        for m in generate_flow(cfg.public_dict(), progress=not args.no_progress):
            print(f"stage {m['stage']}: teacher {m['teacher']} ratio {m['ratio']}: "
                  f"{len(m['shards'])} shards ({m['cached']} cached, {m['new']} new), "
                  f"{m['answers']} answers -> {m['manifest_uri']}")
        return 0
    if args.command in ("distill", "run"):
        from flows.distill import distill_flow

        out = distill_flow(config=cfg.public_dict(), progress=not args.no_progress)
        print(out["table"])
        from masters.evaluation import summary_metrics

        m = summary_metrics(out["results"])
        if "test/retention" in m:
            print(f"initial student {m['test/accuracy_initial_student']:.3f} -> distilled "
                  f"{m['test/accuracy']:.3f} ({m['test/gain']:+.3f}); retention of the largest "
                  f"teacher's accuracy: {m['test/retention_initial_student']:.3f} -> "
                  f"{m['test/retention']:.3f}")
        print(f"distilled student: {out['trained']['student_path']}")
        if out["registered"]:
            reg = out["registered"]
            print(f"registered {reg['model_uri']}: {reg['decision']['decision']} "
                  f"({reg['decision']['reason']})")
        return 0
    if args.command == "promote":
        from mlflow.exceptions import MlflowException
        from pydantic import ValidationError

        from flows.params import PromoteParams
        from flows.promote import promote_flow

        try:
            params = PromoteParams(version=args.version, rollback=args.rollback,
                                   gated=args.gated)
            out = promote_flow(params, config=cfg.public_dict())
        except (ValueError, ValidationError, MlflowException) as exc:  # no such version, ...
            print(f"masters: {exc}", file=sys.stderr)
            return 1
        print(f"{out['name']}: champion version {out['previous'] or 'none'} -> "
              f"{out['champion']} ({out['reason']})")
        return 0
    if args.command == "evaluate":
        from flows.evaluate import evaluate_flow
        from masters import suites

        if cfg.evaluation.suite:  # a broken suite file is reported before any model loads
            try:
                suites.load(cfg.evaluation.suite)
            except suites.SuiteError as exc:
                print(f"masters: {exc}", file=sys.stderr)
                return 2

        from flows.params import EvaluateParams

        params = EvaluateParams(model_version=args.model_version)
        summary = evaluate_flow(params, config=cfg.public_dict())
        print(summary["table"])
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
