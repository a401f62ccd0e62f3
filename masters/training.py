"""Masters training: mask-progressive offline RL + JSD distillation (method.md section 4).

    for stage in schedule:                       # teacher chain x staircase r_max -> 0
        for batch of question groups in stage's slice (answers pre-generated, R_acc scored,
                                  teacher distributions + reference log-probs cached):
            student forward            -> log-probs, JSD against the cached teacher
            R = R_acc + reverse-min-max(D);  A = (R - mean_G) / (std_G + eps)
            loss = GRPO(ratio 1, A) + beta KL(cached reference) + JSD;  one AdamW step
        checkpoint (student, optimizer, stage index, RNG)

Only the student is in this process: the masked teacher and the reference ran once, in the
generation step (masters.distributions). Shaped like a torchtune recipe: `setup`,
`loss_step`, `train`. Models never leave this file through Prefect: the task layer hands in
a provider of each stage's groups.

Baselines share this loop and its budget (docs/training.md): `objective: supervised` swaps the
loss for the NLL of the dataset label (one answer per group, no teacher); the distillation
baselines are switch settings (rewards off: every advantage is 0, only KL + JSD act).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from masters import distributed, distributions, inputs, rewards
from masters.config import TrainingConfig
from masters.losses import masters_loss, sft_loss, token_logprobs, upcast
from masters.schedule import Stage, lr_at


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible models); the message says why."""


@dataclass
class Group:
    """One question and its G pre-generated answers (token ids) with accuracy rewards and,
    per answer, the cached teacher distribution and reference log-probs."""

    question_id: str
    image: np.ndarray
    question: str
    answers: list[list[int]]
    accuracy: list[float | None]
    sources: list[str] = field(default_factory=list)
    dists: list[distributions.AnswerDist] = field(default_factory=list)


def add_answer(groups: dict[str, Group], split, index: dict[str, int], record: dict,
               accuracy: float | None, dist: distributions.AnswerDist | None = None) -> None:
    """Add one cached answer record (and its cached distributions) to its question's group
    (created from the split row)."""
    qid = record["question_id"]
    if qid not in groups:
        row = split[index[qid]]
        groups[qid] = Group(qid, np.asarray(row["image"].convert("RGB")), row["question"],
                            [], [], [])
    g = groups[qid]
    g.answers.append(record["token_ids"])
    g.accuracy.append(accuracy)
    g.sources.append(record["source"])
    if dist is not None:
        g.dists.append(dist)


def label_group(tokenizer, question_id: str, image: np.ndarray, question: str,
                answer: str) -> Group:
    """The supervised baseline's group: the dataset's answer text + EOS as its only answer."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Group(question_id, image, question, [ids], [None], ["label"])


Encoded = inputs.Forced  # a batch for one model, answer positions in its own sequence


def encode_answers(processor, groups: Sequence[Group], device) -> Encoded:
    """Prompt (image + question) followed by each answer, one row per answer, built by this
    model's processor (each model of a run encodes with its own: image sizes, tiling and
    image-token counts may differ between a student and its teacher)."""
    tok = processor.tokenizer
    banned = set(tok.all_special_ids) - {tok.eos_token_id}
    for g in groups:
        for j, a in enumerate(g.answers):
            if banned.intersection(a):
                raise TrainingError(
                    f"answer {j} of question {g.question_id!r} contains special token(s) "
                    f"{sorted(banned.intersection(a))}; regenerate it with special tokens "
                    "suppressed")
    enc = inputs.encode_forced(processor, [g.image for g in groups],
                               [g.question for g in groups], [g.answers for g in groups])
    device = torch.device(device)
    return Encoded({k: v.to(device) for k, v in enc.inputs.items()}, enc.starts.to(device),
                   enc.targets.to(device))


def answer_logits(model, enc: Encoded, vocab: int) -> torch.Tensor:
    """Logits predicting each answer token, (B, A, vocab): position start - 1 + j -> token j.

    The LM head runs at those positions only: a (B, A) `logits_to_keep` index, by which every
    supported family's forward gathers its last hidden states before its head. The whole
    (B, L, vocab) logits, the largest tensor of a step at a 150K vocabulary, are never built.
    Positions past an answer's end repeat the last position (their targets are masked). Rows
    beyond the tokenizer's `vocab` (padded embedding rows) are dropped."""
    batch = inputs.to_model(enc.inputs, model)
    ids = batch["input_ids"]
    span = torch.arange(enc.targets.shape[1], device=ids.device)
    pos = (enc.starts.to(ids.device).unsqueeze(1) - 1 + span).clamp(max=ids.shape[1] - 1)
    # use_cache=False: a training or teacher-forcing forward never decodes further, and a
    # KV cache would keep every layer's keys and values alive past a checkpointed block.
    logits = model(**batch, logits_to_keep=pos, use_cache=False).logits
    if logits.shape[:2] != pos.shape:  # a forward that ignores logits_to_keep (remote code)
        raise TrainingError(
            f"{type(distributed.unwrap(model)).__name__} returned logits of shape "
            f"{tuple(logits.shape)} for logits_to_keep of shape {tuple(pos.shape)}: its forward "
            "must slice its hidden states by logits_to_keep (transformers' models do)")
    return upcast(logits[..., :vocab]).to(enc.targets.device)


def shared_vocab(student_processor, teacher_processor) -> int:
    """Size of the vocabulary both tokenizers agree on; padded rows beyond it are dropped."""
    s, t = student_processor.tokenizer.get_vocab(), teacher_processor.tokenizer.get_vocab()
    if s != t:
        diff = sorted(set(s.items()) ^ set(t.items()))[:5]
        raise TrainingError(
            "teacher and student tokenizers differ (Masters distils token distributions, so "
            f"they must share one vocabulary); first differences: {diff}"
        )
    return len(s)


def cached_targets(groups: Sequence[Group], width: int):
    """(TeacherTargets, reference log-probs) of the groups' answers, from their cached dists."""
    dists = [d for g in groups for d in g.dists]
    answers = [a for g in groups for a in g.answers]
    if len(dists) != len(answers) or any(len(d.ref) != len(a)
                                         for d, a in zip(dists, answers, strict=True)):
        missing = next((g.question_id for g in groups if len(g.dists) != len(g.answers)),
                       groups[0].question_id)
        raise TrainingError(
            f"answers of question {missing!r} have no cached teacher distributions of their "
            "length; generate the stage again (masters generate) so they are computed")
    return distributions.batch(dists, width)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the student's forward runs under bfloat16 autocast (`training.precision`).

    Its weights, gradients and AdamW state stay float32 either way: AdamW on bf16 weights
    loses updates smaller than bf16's resolution. CPU training is float32, as it always was."""
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise TrainingError(
            f"training.precision='bf16' needs a CUDA device with bfloat16 support; the student "
            f"is on {device}. Use 'auto' (bf16 where supported, else fp32) or 'fp32'")
    return precision == "bf16" or (precision == "auto" and supported)


@dataclass
class StepResult:
    terms: dict[str, float]
    rewards: dict[str, float]


class MastersTrainer:
    """One student, trained stage by stage on answers with cached teacher distributions.

    Under torchrun / accelerate (WORLD_SIZE > 1) every rank holds the whole global batch of
    `batch_groups` groups and trains on its share (`distributed.shard`); DDP averages the
    gradients and each rank's loss is scaled so the average is the one-process gradient.
    A rank's share goes through forward and backward `micro_batch_groups` groups at a time,
    accumulating into one optimizer step.
    """

    def __init__(self, student, processor, cfg: TrainingConfig, *,
                 log_metrics: Callable[[dict, int], None] | None = None,
                 evaluate: Callable[[object, object], dict] | None = None):
        """`evaluate(student, processor)` -> {"accuracy": ..., "per_task": {...}} draws the
        learning curve every `cfg.eval_every` steps (main rank only; it must not train)."""
        self.student, self.processor, self.cfg = student, processor, cfg
        self.log_metrics = log_metrics
        self.evaluate = evaluate if cfg.eval_every else None
        self.device = next(student.parameters()).device
        self.vocab = len(processor.tokenizer.get_vocab())
        self.step = 0
        self.total_steps = 0
        self.curve: list[dict] = []

    def setup(self, total_steps: int = 0) -> None:
        """`total_steps`: the run's `planned_steps`, which a decaying learning rate spans."""
        if self.cfg.lr_decay != "constant" and total_steps < 1:
            raise TrainingError(f"training.lr_decay={self.cfg.lr_decay!r} needs the run's "
                                "planned steps: setup(planned_steps(stages, cfg))")
        self.total_steps = total_steps
        torch.manual_seed(self.cfg.seed)
        self.world = distributed.world_size()
        if self.cfg.batch_groups % self.world:
            raise TrainingError(
                f"training.batch_groups={self.cfg.batch_groups} is not divisible by the "
                f"{self.world} processes: each rank must get the same share of a global batch")
        self.bf16 = use_bf16(self.cfg.precision, self.device)
        if self.cfg.gradient_checkpointing:
            # transformers 5's name (gradient_checkpointing_enable is its deprecated alias).
            # Non-reentrant checkpointing needs no input that requires grad and works under
            # DDP and autocast; it recomputes each decoder / vision block during backward.
            self.student.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        self.student_cls = type(self.student)  # fully_shard swaps the class for a subclass
        self.model = distributed.wrap(self.student, distributed.engine(self.cfg.sharding))
        self.sharded = distributed.is_sharded(self.model)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=self.cfg.lr,
                                     weight_decay=self.cfg.weight_decay)
        self.student.train()

    def loss_step(self, groups: Sequence[Group], stage: Stage,
                  share: float = 1.0, min_parts: int = 1) -> StepResult:
        """One optimizer step on `groups`, this rank's `share` of the global batch's answers,
        in micro-batches of `micro_batch_groups` whole groups (advantages and the distillation
        reward are per group) whose gradients accumulate; at least `min_parts` of them."""
        size = self.cfg.micro_batch_groups or len(groups)
        parts = [groups[i : i + size] for i in range(0, len(groups), size)]
        answers = sum(len(g.answers) for g in groups)
        weights = [sum(len(g.answers) for g in part) / answers for part in parts]
        # FSDP gathers each block's weights in every forward, a collective: every rank must run
        # as many forwards as the others, so a rank with fewer groups adds weight-0 passes.
        pad = max(0, min_parts - len(parts))
        parts, weights = parts + [groups[:1]] * pad, weights + [0.0] * pad
        self.opt.zero_grad(set_to_none=True)
        terms: dict[str, float] = {}
        sums: dict[str, tuple[float, int]] = {}
        for i, (part, weight) in enumerate(zip(parts, weights, strict=True)):
            # Every term is a mean over answers, so parts weighted by their share of the
            # rank's answers (not 1 / parts: groups differ in size) sum to the mean over all
            # of them: the loss and gradient of one forward of every group. share x world:
            # DDP and FSDP average the ranks' gradients (docs/training.md).
            with self._accumulating(last=i == len(parts) - 1):
                part_terms, part_sums = self._terms(part)
                (part_terms["loss"] * (weight * share * self.world)).backward()
            for k, v in part_terms.items():
                terms[k] = terms.get(k, 0.0) + weight * v.item()
            for k, (total, count) in part_sums.items():
                before = sums.get(k, (0.0, 0))
                sums[k] = (before[0] + total, before[1] + count)
        logged, stats = self._global_means(terms, sums, share)
        if not np.isfinite(logged["loss"]):  # before the update: the weights stay finite
            raise TrainingError(
                f"non-finite loss {logged['loss']} at step {self.step} (stage "
                f"{stage.index}, teacher {stage.teacher}, ratio {stage.ratio}); the last "
                "finished stage's checkpoint is intact"
            )
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm)
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        self.opt.step()
        self.step += 1
        return StepResult(logged, stats)

    def lr(self) -> float:
        """The learning rate of the next optimizer step (`masters.schedule.lr_at`)."""
        c = self.cfg
        return lr_at(self.step, self.total_steps, c.lr, c.warmup_steps, c.lr_decay,
                     c.min_lr_ratio)

    def curve_point(self) -> None:
        """Append the held-out accuracy at this step to the learning curve (main rank; under
        FSDP every rank runs the same evaluation, since each forward gathers weights from all
        of them, and the main rank keeps the result)."""
        if self.evaluate is None or not (distributed.is_main() or self.sharded):
            return
        if self.curve and self.curve[-1]["step"] == self.step:
            return
        self.student.eval()
        with torch.no_grad(), distributed.root_gathered(self.student):
            res = self.evaluate(self.student, self.processor)
        self.student.train()
        if not distributed.is_main():
            return
        self.curve.append({"step": self.step, **res})
        if self.log_metrics:
            self.log_metrics({"val/accuracy": res["accuracy"],
                              **{f"val/accuracy/{k}": v
                                 for k, v in res.get("per_task", {}).items()}}, self.step)

    def _accumulating(self, last: bool):
        """DDP all-reduces gradients in every backward: all but a step's last micro-batch
        skip that (no_sync), so each step reduces once, the accumulated sum. FSDP has no
        no_sync: it reduce-scatters each micro-batch into the sharded gradients (skipping that
        would keep whole unsharded gradients on every rank, the memory FSDP is there to save)."""
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _student_logits(self, enc: Encoded) -> torch.Tensor:
        # Autocast covers the forward only: answer_logits returns float32 logits and the
        # losses, the softmaxes included, run in float32 outside it.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return answer_logits(self.model, enc, self.vocab)

    def _terms(self, groups: Sequence[Group]):
        """Loss terms (tensors; `loss` is the one to back-propagate) and reward (sum, count)
        pairs of one micro-batch."""
        enc = encode_answers(self.processor, groups, self.device)
        mask = enc.targets >= 0
        if self.cfg.objective == "supervised":
            sft = sft_loss(token_logprobs(self._student_logits(enc), enc.targets), mask)
            return {"sft": sft, "loss": sft}, {}
        return self._masters_terms(groups, enc, mask)

    def _masters_terms(self, groups, enc, mask):
        cfg = self.cfg
        teacher = ref = None
        if cfg.jsd_weight or cfg.distill_reward or cfg.kl_beta:
            teacher, ref = cached_targets(groups, enc.targets.shape[1])
        s_logits = self._student_logits(enc)
        adv, sums = self._advantages(groups, teacher, s_logits.detach(), mask)
        terms = masters_loss(
            s_logits, teacher, ref, enc.targets, mask, adv.to(self.device),
            kl_beta=cfg.kl_beta, jsd_weight=cfg.jsd_weight, jsd_beta=cfg.jsd_beta,
        )
        return terms, sums

    def _global_means(self, terms, sums, share):
        """Loss terms and reward means over the whole global batch (all ranks).

        Every term is a mean over answers, so share-weighted sums give the global mean; a
        rank padding a short last batch has share 0 and adds nothing.
        """
        names, stat_names = sorted(terms), sorted(sums)
        active = 1.0 if share > 0 else 0.0
        vec = torch.tensor([terms[k] * share for k in names]
                           + [v * active for k in stat_names for v in sums[k]],
                           dtype=torch.float64)
        vec = distributed.all_reduce_sum(vec).tolist()
        logged = dict(zip(names, vec[: len(names)], strict=True))
        rest = vec[len(names):]
        stats = {k: rest[2 * i] / rest[2 * i + 1] if rest[2 * i + 1] else 0.0
                 for i, k in enumerate(stat_names)}
        return logged, stats

    def _advantages(self, groups, teacher, s_logits, mask):
        """Advantages per answer, and (sum, count) of each reward for the logged means."""
        cfg = self.cfg
        flat_acc, flat_dist, advantages, untied = [], [], [], []
        divergence = (rewards.distillation_divergence(teacher, s_logits, mask, cfg.jsd_beta)
                      if teacher is not None else None)
        i = 0
        for g in groups:
            n = len(g.answers)
            acc = g.accuracy if cfg.accuracy_reward else [0.0] * n
            if divergence is not None and cfg.distill_reward:
                d = divergence[i : i + n].tolist()
                dist = rewards.reverse_min_max(d) if cfg.distill_minmax else [-x for x in d]
                untied.append(float(max(dist) > min(dist)))
            else:
                dist = [0.0] * n
            advantages += rewards.group_advantages(rewards.total_reward(acc, dist))
            flat_acc += [a for a in acc if a is not None]
            flat_dist += dist
            i += n
        sums = {"reward/accuracy": (float(np.sum(flat_acc)), len(flat_acc)),
                "reward/distill": (float(np.sum(flat_dist)), len(flat_dist))}
        if divergence is not None:
            sums["reward/divergence"] = (float(divergence.sum()), len(divergence))
        if divergence is not None and cfg.distill_reward:  # share of groups whose
            # R_distill ranks its answers at all (all tied: the reward is 0 for each)
            sums["reward/distill_untied"] = (float(np.sum(untied)), len(untied))
        return torch.tensor(advantages), sums

    def train_stage(self, stage: Stage, groups: Sequence[Group]) -> list[StepResult]:
        """Every group of the stage `epochs` times, each pass in its own seeded order,
        `batch_groups` per step."""
        results = []
        for epoch in range(self.cfg.epochs):
            results += self._one_pass(stage, groups, epoch)
        return results

    def _one_pass(self, stage: Stage, groups: Sequence[Group], epoch: int) -> list[StepResult]:
        # Pass 0 keeps the order of a one-epoch run (seeded by stage alone).
        seed = [self.cfg.seed, stage.index] + ([epoch] if epoch else [])
        order = np.random.default_rng(seed).permutation(len(groups))
        results = []
        b = self.cfg.batch_groups
        for start in range(0, len(order), b):
            batch = [groups[j] for j in order[start : start + b]]
            mine = distributed.shard(batch)
            share = sum(len(g.answers) for g in mine) / sum(len(g.answers) for g in batch)
            # A short last batch can leave a rank without a group; it still steps (share 0)
            # because DDP's gradient all-reduce needs every rank.
            most = -(-len(batch) // self.world)  # groups of the fullest rank
            parts = -(-most // (self.cfg.micro_batch_groups or most)) if self.sharded else 1
            res = self.loss_step(mine or batch[:1], stage, share=share, min_parts=parts)
            results.append(res)
            if self.log_metrics and distributed.is_main():
                self.log_metrics({**{f"loss/{k}": v for k, v in res.terms.items()},
                                  **res.rewards, "mask_ratio": stage.ratio,
                                  "stage": stage.index, "lr": self.opt.param_groups[0]["lr"]},
                                 self.step)
            if self.cfg.eval_every and (self.step % self.cfg.eval_every == 0
                                        or self.step == self.total_steps):
                self.curve_point()
        return results

    # ---- checkpoints: the student, the optimizer, the stage index, the RNG ----------------

    def full_student(self):
        """The student as its own class with whole weights, for save_pretrained (rank 0;
        None elsewhere). Under FSDP every rank must call it: it gathers the shards."""
        if not self.sharded:
            return self.student if distributed.is_main() else None
        weights = get_model_state_dict(self.student, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not distributed.is_main():
            return None
        with torch.device("meta"):
            plain = self.student_cls(self.student.config)
        plain.load_state_dict(weights, strict=True, assign=True)
        return plain

    def save_checkpoint(self, directory: str | Path, stage: Stage) -> Path:
        """Rank 0 writes (under DDP ranks hold identical weights; under FSDP every rank takes
        part in gathering them first); the others wait for the folder."""
        final = Path(directory) / f"stage-{stage.index:03d}"
        student = self.full_student()
        # full_state_dict: parameter names as keys, whole tensors, so a checkpoint resumes
        # under any engine and any number of ranks.
        optimizer = get_optimizer_state_dict(self.student, self.opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if distributed.is_main():
            self._write_checkpoint(final, stage, student, optimizer)
        distributed.barrier()
        return final

    def _write_checkpoint(self, final: Path, stage: Stage, student, optimizer) -> None:
        def write(tmp: Path) -> None:
            student.save_pretrained(tmp, safe_serialization=True)
            self.processor.save_pretrained(tmp)
            torch.save({"optimizer": optimizer, "rng": torch.get_rng_state()},
                       tmp / "trainer_state.pt")
            (tmp / "progress.json").write_text(json.dumps({"stage": stage.index,
                                                           "step": self.step,
                                                           "curve": self.curve}))

        write_folder_once(final, write)

    def load_checkpoint(self, path: str | Path) -> int:
        path = Path(path)
        # Through from_pretrained: save_pretrained may rename keys on disk (transformers 5
        # writes LLaVA in its legacy layout), so the raw file does not match state_dict().
        saved = self.student_cls.from_pretrained(path, dtype=next(
            self.student.parameters()).dtype, use_safetensors=True)
        set_model_state_dict(self.student, saved.state_dict(),
                             options=StateDictOptions(full_state_dict=True))
        extra = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        if all(isinstance(k, int) for k in extra["optimizer"]["state"]):
            self.opt.load_state_dict(extra["optimizer"])  # written before FSDP (by index)
        else:
            # strict=False: a parameter that never had a gradient (CLIP's pooled-output
            # norm) has no AdamW state to restore, as in the optimizer that saved it.
            set_optimizer_state_dict(self.student, self.opt, extra["optimizer"],
                                     options=StateDictOptions(full_state_dict=True,
                                                              strict=False))
        torch.set_rng_state(extra["rng"].cpu())
        progress = json.loads((path / "progress.json").read_text())
        self.step = progress["step"]
        self.curve = progress.get("curve", [])
        return progress["stage"]


def write_folder_once(final: str | Path, write: Callable[[Path], None]) -> bool:
    """Publish a folder atomically: `write` fills a private temp folder that is renamed to
    `final`. A crash mid-write leaves only a temp folder (never a torn `final`); two writers of
    the same folder (two runs of one training key, whose content is equal) never share a temp
    folder, and the first to publish wins. False when `final` already existed."""
    final = Path(final)
    if final.is_dir():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another writer published first (ENOTEMPTY / EEXIST)
            if not final.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_student(student, processor, final: str | Path) -> Path:
    """The trained student as a `save_pretrained` folder, published atomically."""
    def write(tmp: Path) -> None:
        student.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    write_folder_once(final, write)
    return Path(final)


def last_checkpoint(directory: str | Path) -> Path | None:
    found = sorted(p for p in Path(directory).glob("stage-[0-9][0-9][0-9]") if p.is_dir())
    return found[-1] if found else None


def train(
    trainer: MastersTrainer,
    stages: Sequence[Stage],
    stage_groups: Callable[[Stage], Sequence[Group]],
    checkpoint_dir: str | Path,
) -> dict:
    """Run every stage in order, resuming after the last finished stage's checkpoint."""
    trainer.setup(planned_steps(stages, trainer.cfg))
    done = -1
    ckpt = last_checkpoint(checkpoint_dir)
    if ckpt is not None:
        done = trainer.load_checkpoint(ckpt)
    else:
        trainer.curve_point()  # step 0: the initial student
    history = []
    for stage in stages:
        if stage.index <= done:
            continue
        results = trainer.train_stage(stage, stage_groups(stage))
        trainer.save_checkpoint(checkpoint_dir, stage)
        history.append({"stage": stage.index, "teacher": stage.teacher, "ratio": stage.ratio,
                        "steps": len(results),
                        "loss": float(np.mean([r.terms["loss"] for r in results]))})
    return {"resumed_after": done, "stages": history, "steps": trainer.step,
            "curve": trainer.curve}


def planned_steps(stages: Sequence[Stage], cfg: TrainingConfig) -> int:
    """Optimizer steps of a run: every stage's questions, `batch_groups` per step, `epochs`
    times (the learning-rate schedule spans them)."""
    return cfg.epochs * sum(-(-st.size // cfg.batch_groups) for st in stages)
