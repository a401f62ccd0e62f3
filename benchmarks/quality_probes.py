"""Two small probes behind the findings in docs/benchmarks.md ("Tuning"), runnable as is.

    python -m benchmarks.quality_probes spread   # within-group spread of the distillation D
    python -m benchmarks.quality_probes grpo [--sgd LR] [--kl-beta B]   # GRPO on one-word answers

`spread`: for the default chain's stages (first, middle, last), the teacher-forced JSD D of
every answer of up to 150 groups, and how far apart D is within a group that holds two or
more distinct answers (relative to the group's largest D), plus the mean JSD at the first
answer token and at the EOS position.

`grpo`: ten count questions of the train split, each a group of 7 correct answers and one off
by one, accuracy reward only (no JSD; KL only with --kl-beta). Prints p(correct) and
p(wrong) at the first answer token over five optimizer steps (AdamW at lr 1e-4, or SGD).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def spread(overrides: list[str]) -> None:
    from benchmarks import quality, quality_engine
    from masters import cache, losses, training
    from masters.config import load_config

    cfg = load_config(quality.ROOT / quality.load_spec().base, overrides)
    stages, by = quality_engine.stage_groups(cfg, cache.open_store(cfg.storage), {})
    student, s_proc, _ = quality_engine._frozen(cfg.student.path)
    vocab = len(s_proc.tokenizer.get_vocab())
    rel, first, eos = [], [], []
    for st in (stages[0], stages[len(stages) // 2], stages[-1]):
        (t,) = [t for t in cfg.teachers if t.name == st.teacher]
        masked, proc, _ = quality_engine._masked_teacher(cfg, t)
        masked.set_ratio(st.ratio)
        groups = by[st.index][:150]
        for i in range(0, len(groups), 16):
            part = groups[i : i + 16]
            enc = training.encode_answers(proc, part, "cpu")
            mask = enc.targets >= 0
            with torch.no_grad():
                jsd = losses.generalized_jsd(training.answer_logits(masked.model, enc, vocab),
                                             training.answer_logits(student, enc, vocab))
            d = losses.masked_mean(jsd, mask)
            first += jsd[:, 0].tolist()
            eos += [j[1].item() for j, m in zip(jsd, mask, strict=True) if m[1]]
            k = 0
            for g in part:
                dg = d[k : k + len(g.answers)]
                k += len(g.answers)
                if len({tuple(a) for a in g.answers}) > 1:
                    rel.append(((dg.max() - dg.min()) / dg.abs().max()).item())
    q = np.percentile(rel, [50, 90, 99, 100])
    print(f"groups with >= 2 distinct answers: {len(rel)}; (max D - min D) / max D: median "
          f"{q[0]:.1e}, 90th {q[1]:.1e}, 99th {q[2]:.1e}, max {q[3]:.1e}")
    print(f"mean JSD at the first answer token {np.mean(first):.3f}, at the second (EOS for "
          f"one-word answers) {np.mean(eos):.1e}")


def grpo(sgd: float | None, kl_beta: float, lr: float = 1e-4, steps: int = 5) -> None:
    import copy

    from masters import distributions, models, synthetic, training
    from masters.config import TrainingConfig
    from masters.generation import LoadedModel
    from masters.schedule import Stage

    student, proc = models.load("embedded:student")
    tok = proc.tokenizer
    groups = []
    for i in range(0, 70, 7):  # round-robin families: every 7th train sample is a count
        s = synthetic.make_sample(0, "train", i)
        c = tok.convert_tokens_to_ids([s.answer])[0]
        w = tok.convert_tokens_to_ids([str(int(s.answer) + 1)])[0]
        e = tok.eos_token_id
        groups.append(training.Group(s.id, s.image, s.question, [[c, e]] * 7 + [[w, e]],
                                     [1.0] * 7 + [0.0]))
    vocab = len(tok.get_vocab())

    def probs():
        enc = training.encode_answers(proc, groups, "cpu")
        with torch.no_grad():
            lp = torch.log_softmax(training.answer_logits(student, enc, vocab), -1)
        first = lp[:, 0].gather(-1, enc.targets[:, :1]).squeeze(-1).exp()
        return first[0::8].mean().item(), first[7::8].mean().item()

    cfg = TrainingConfig(lr=lr, kl_beta=kl_beta, jsd_weight=0.0, distill_reward=False,
                         batch_groups=len(groups))
    trainer = training.MastersTrainer(student, proc, cfg)
    trainer.setup()
    if sgd:
        trainer.opt = torch.optim.SGD(student.parameters(), lr=sgd)
    stage = Stage(0, "none", "none", 0.0, 0, len(groups))
    # KL needs the reference's cached log-probs (generation stores them; here: the initial
    # student itself, no teacher term)
    initial = LoadedModel(copy.deepcopy(student).eval(), proc)
    distributions.attach(initial, initial, groups, top_k=0)
    opt = f"SGD lr {sgd:g}" if sgd else f"AdamW lr {lr:g}"
    print(f"{opt}, KL beta {kl_beta:g}: step, p(correct), p(wrong) at the first answer token")
    print("0 {:.4f} {:.4f}".format(*probs()))
    for k in range(steps):
        trainer.loss_step(groups, stage)
        print(f"{k + 1} " + "{:.4f} {:.4f}".format(*probs()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="probe", required=True)
    s = sub.add_parser("spread")
    s.add_argument("--set", dest="overrides", action="append", default=[])
    g = sub.add_parser("grpo")
    g.add_argument("--sgd", type=float, help="plain SGD at this lr instead of AdamW")
    g.add_argument("--kl-beta", type=float, default=0.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe == "spread":
        spread(args.overrides)
    else:
        grpo(args.sgd, args.kl_beta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
