"""Training entry point for one or many processes (torchrun / accelerate launch).

    torchrun --nproc_per_node 2 -m masters.train_entry --spec train_inputs.json
    torchrun --nproc_per_node 2 -m masters.train_entry --synthetic --out /tmp/run
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m masters.train_entry --spec ..

`--spec` reruns the pipeline's training job from the `train_inputs.json` artifact that the
train task logs to MLflow (config, stage manifests, scores, teachers); it resumes the same
checkpoints, since the run is named by its inputs. `--synthetic` trains smoke models built
from fixed seeds on in-process synthetic groups and writes the logged per-step metrics
(`losses.json`) and final weights (`student.pt`): the multi-process equivalence test runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from masters import distributed, distributions, embedded, synthetic, training
from masters.config import TeacherConfig, TrainingConfig
from masters.generation import LoadedModel
from masters.masking import MaskedTeacher
from masters.schedule import build_schedule, generation_order


def synthetic_groups(processor, n: int = 6, g: int = 4, seed: int = 0,
                     labels: bool = False, ragged: bool = False) -> list[training.Group]:
    """Deterministic groups: the label as answer 0, random two-word answers after it.

    `ragged`: odd groups lose their last answer, so ranks hold unequal shares of a batch.
    """
    rng = np.random.default_rng(seed)
    tok = processor.tokenizer
    words = synthetic.vocabulary()
    out = []
    for i in range(n):
        s = synthetic.make_sample(0, "train", i)
        if labels:
            out.append(training.label_group(tok, s.id, s.image, s.question, s.answer))
            continue
        answers = [tok.convert_tokens_to_ids([words[j] for j in rng.integers(0, len(words), 2)])
                   + [tok.eos_token_id] for _ in range(g)]
        answers[0] = tok.convert_tokens_to_ids([s.answer]) + [tok.eos_token_id]
        acc = [1.0] + [float(rng.integers(0, 2)) for _ in range(g - 1)]
        keep = g - (i % 2) if ragged else g
        out.append(training.Group(s.id, s.image, s.question, answers[:keep], acc[:keep]))
    return out


def run_synthetic(out: Path, cfg: TrainingConfig, n_groups: int, answers: int,
                  r_max: float = 0.05, dtype: torch.dtype = torch.float32,
                  ragged: bool = False, student_shape: str = "smoke",
                  teacher_shape: str = "smoke") -> dict:
    device = distributed.init("cpu")
    student, processor = embedded.build(student_shape, seed=1)
    teacher, _ = embedded.build(teacher_shape, seed=2)
    student, teacher = student.to(device, dtype), teacher.to(device, dtype).eval()
    tcfg = TeacherConfig(name="t", path="unused", r_max=r_max, step=0.05)
    stages = build_schedule([tcfg], n_groups)
    masked = MaskedTeacher(teacher)
    supervised = cfg.objective == "supervised"
    groups = synthetic_groups(processor, n_groups, answers, labels=supervised, ragged=ragged)

    if not supervised:  # what the generation step caches: each stage's teacher, once
        reference = LoadedModel(copy.deepcopy(student).eval(), processor)
        for stage in generation_order(stages):  # masks only grow
            masked.set_ratio(stage.ratio)
            distributions.attach(LoadedModel(teacher, processor), reference,
                                 groups[stage.start : stage.stop], top_k=0)
        del reference

    logged: list[dict] = []
    trainer = training.MastersTrainer(student, processor, cfg,
                                      log_metrics=lambda m, s: logged.append({"step": s, **m}),
                                      evaluate=_greedy_answers)
    t0 = time.perf_counter()
    summary = training.train(trainer, stages, lambda st: groups[st.start : st.stop],
                             out / "checkpoints")
    summary["train_s"] = time.perf_counter() - t0  # throughput benchmark (benchmarks.training)
    whole = trainer.full_student()  # under FSDP every rank gathers its shards
    if distributed.is_main():
        (out / "losses.json").write_text(json.dumps(
            {"world_size": distributed.world_size(), "sharded": trainer.sharded,
             "steps": logged, "summary": summary}))
        torch.save({k: v.detach().cpu().clone() for k, v in whole.state_dict().items()},
                   out / "student.pt")
    distributed.barrier()
    return summary


def _greedy_answers(model, processor) -> dict:
    """The synthetic learning curve: greedy answers to 4 validation questions (exact match);
    the answers themselves are kept, so runs under different engines can be compared."""
    from masters import evaluation

    samples = [synthetic.make_sample(0, "validation", i) for i in range(4)]
    preds = evaluation.predict_arrays(model, processor, [s.image for s in samples],
                                      [s.question for s in samples], max_new_tokens=3)
    return {"accuracy": float(np.mean([p == s.answer for p, s in zip(preds, samples,
                                                                          strict=True)])),
            "answers": preds}


def run_spec(path: Path) -> dict:
    from masters.config import from_public
    from masters.train_job import run_training

    spec = json.loads(path.read_text())
    # "tables": the name in train_inputs.json logged before masking stopped writing tables
    return run_training(from_public(spec["config"]), spec["manifests"], spec["scores"],
                        spec.get("teachers", spec.get("tables", [])))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m masters.train_entry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", type=Path, help="train_inputs.json logged by the train task")
    src.add_argument("--synthetic", action="store_true", help="smoke models, synthetic groups")
    p.add_argument("--out", type=Path, help="--synthetic: output folder")
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--answers", type=int, default=4)
    p.add_argument("--batch-groups", type=int, default=2)
    p.add_argument("--micro-batch-groups", type=int, default=None,
                   help="groups per forward/backward (gradient accumulation); default: all")
    p.add_argument("--objective", choices=["masters", "supervised"], default="masters")
    p.add_argument("--sharding", choices=["auto", "ddp", "fsdp"], default="auto",
                   help="training.sharding: the multi-process engine (auto: fsdp under an "
                   "accelerate FSDP config)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--eval-every", type=int, default=0,
                   help="--synthetic: learning-curve point every N steps (greedy answers)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    # float64 makes one-process and N-process runs comparable to ~1e-10: in float32, Adam turns
    # the rounding noise of near-zero gradients (group advantages cancel) into +-lr steps.
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--ragged", action="store_true", help="groups of unequal size")
    shapes = sorted(embedded.SHAPES)
    p.add_argument("--student-shape", choices=shapes, default="smoke",
                   help="--synthetic: student architecture (random init)")
    p.add_argument("--teacher-shape", choices=shapes, default="smoke")
    args = p.parse_args(argv)
    try:
        if args.spec:
            return run_spec(args.spec)
        if args.out is None:
            p.error("--synthetic needs --out")
        cfg = TrainingConfig(lr=args.lr, batch_groups=args.batch_groups, seed=args.seed,
                             objective=args.objective,
                             micro_batch_groups=args.micro_batch_groups,
                             sharding=args.sharding,
                             gradient_checkpointing=args.gradient_checkpointing,
                             eval_every=args.eval_every)
        return run_synthetic(args.out, cfg, args.groups, args.answers,
                             dtype=getattr(torch, args.dtype), ragged=args.ragged,
                             student_shape=args.student_shape,
                             teacher_shape=args.teacher_shape)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
