"""Real shapes on one GPU: a Qwen2.5-VL-3B-shaped student and a 7B-shaped teacher, random
init in bf16, through each pipeline step's own code, beside `masters plan`'s estimate.

    python -m benchmarks.gpu_qwen --out DIR                # CUDA: the published 3B / 7B shapes
    python -m benchmarks.gpu_qwen --out DIR --shapes tiny  # the same code, test-sized, any device

The models get the published config.json shapes (tests/test_plan.py checks their parameter
counts against the model cards) and a word-level tokenizer padded to Qwen2.5's 151,665 tokens,
so the logits and the cached distributions have the real vocabulary width; prompts are a
synthetic scene resized to 448 x 448 px (256 image tokens) and a question. Steps:

  1. masking: `models.load` of the teacher onto the device, then `MaskedTeacher.set_ratio`
     through its generation order (0.05 .. r_max), beside plan's pruning row;
  2. generation: `generation.generate_shard` (4 masked-teacher + 4 student answers per
     question, answers of `max_new_tokens`: random weights rarely sample EOS), beside plan's
     generation row (teacher + student + sampling);
  3. forcing: `distributions.for_records` (teacher and reference forwards over those answers,
     top-k kept), what `generation.write_shard` caches, beside the same row's forcing part;
  4. training: the student with float32 master weights and bf16 autocast (`precision: bf16`),
     `MastersTrainer.loss_step` on the generated groups and their distributions, without and
     with gradient checkpointing, beside plan's "bf16-mixed DDP/1" row.

Memory is `torch.cuda.max_memory_allocated` over each step (CPU: not measured). DIR gets
gpu_qwen.json after every step, so a run cut short keeps what it measured, and gpu_qwen.md;
the checkpoints (DIR/checkpoints, ~25 GB at the real shapes) are removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import generation as bench_generation
from masters import distributions, generation, models, plan, training
from masters.config import GenerationConfig, TrainingConfig, load_config
from masters.generation import LoadedModel
from masters.masking import MaskedTeacher
from masters.schedule import Stage

QWEN_VISION = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
               "num_heads": 16, "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
               "spatial_patch_size": 14, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
               "temporal_patch_size": 2}
TINY_VISION = {**QWEN_VISION, "depth": 2, "hidden_size": 32, "intermediate_size": 64,
               "num_heads": 2, "fullatt_block_indexes": [1]}


def qwen25_vl(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
              vocab: int, tie: bool, vision: dict = QWEN_VISION,
              mrope: tuple[int, int, int] = (16, 24, 24)) -> dict:
    """A Qwen2.5-VL config.json (the published files' fields; `mrope` sums to head_dim / 2)."""
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": tie,
            "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": list(mrope)},
            "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645,
            "image_token_id": 151655, "video_token_id": 151656,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "vision_config": {**vision, "out_hidden_size": hidden}}


QWEN = {  # name: (config.json, published parameter count)
    "3B": (qwen25_vl(2048, 11008, 36, 16, 2, 151936, True), 3.75e9),
    "7B": (qwen25_vl(3584, 18944, 28, 28, 4, 152064, False), 8.29e9),
    "32B": (qwen25_vl(5120, 27648, 64, 40, 8, 152064, False), 33.5e9),
}


@dataclass(frozen=True)
class Shapes:
    student: dict
    teacher: dict
    tokens: int  # tokenizer size (0: the synthetic vocabulary alone)
    image_px: int  # prompts' images are resized to image_px x image_px
    questions: int
    batch_size: int  # generation: questions per generate call
    max_new_tokens: int
    top_k: int
    batch_groups: int  # training: questions x 8 answers per step
    micro_batch_groups: int | None
    steps: int


SHAPES = {
    "real": Shapes(QWEN["3B"][0], QWEN["7B"][0], 151_665, 448, questions=32, batch_size=16,
                   max_new_tokens=64, top_k=64, batch_groups=4, micro_batch_groups=1, steps=6),
    "tiny": Shapes(qwen25_vl(64, 128, 2, 4, 2, 136, True, TINY_VISION, (2, 3, 3)),
                   qwen25_vl(96, 192, 2, 6, 2, 144, False, TINY_VISION, (2, 3, 3)), 0, 56,
                   questions=4, batch_size=2, max_new_tokens=6, top_k=8, batch_groups=2,
                   micro_batch_groups=1, steps=4),
}
R_MAX = 0.2


def processor(shapes: Shapes):
    """Qwen2.5-VL's processor (patch 14, 2 x 2 merge) around the local word-level tokenizer,
    every image resized to image_px x image_px (the family tests' builder)."""
    from tests.families import qwen_processor

    return qwen_processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", patch=14,
                          pixels=(shapes.image_px**2, shapes.image_px**2), tokens=shapes.tokens)


def build_checkpoint(config: dict, proc, folder: Path, device, dtype, seed: int) -> Path:
    """Random-init model of `config` built on `device` in `dtype`, saved with `proc`."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from tests.families import qwen_token_ids

    tok = proc.tokenizer
    config = {**config, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id, **qwen_token_ids(tok)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder),
                                                        dtype=dtype)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (tok.pad_token_id, tok.bos_token_id,
                                                            tok.eos_token_id)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


class Meter:
    """Wall time and peak device memory of a block (memory on CUDA only)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        bench_generation.sync_device(self.device)

    def start(self) -> float:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter()

    def stop(self, t0: float) -> dict:
        self.sync()
        out = {"s": time.perf_counter() - t0}
        if self.cuda:
            out["peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return out


def free() -> None:
    """Return what the caller has dropped to the device (call after `del`)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prompt_tokens(proc, row: dict) -> tuple[int, int]:
    from masters import inputs

    ids = inputs.encode_prompts(proc, [row["image"]], [row["question"]])["input_ids"][0]
    image = int((ids == proc.tokenizer.image_token_id).sum())
    return image, len(ids) - image


def make_plan(shapes: Shapes, student: Path, teacher: Path,
              prompt: tuple[int, int]) -> plan.Plan:
    """`masters plan` for this run's config at its prompt length: (image, text) tokens."""
    cfg = load_config(overrides=[
        f"student.path={student}", f"teachers=[{{name: large, path: '{teacher}', "
        f"r_max: {R_MAX}}}]", f"generation.batch_size={shapes.batch_size}",
        f"generation.max_new_tokens={shapes.max_new_tokens}",
        f"generation.teacher_top_k={shapes.top_k}", f"training.batch_groups={shapes.batch_groups}",
        f"training.micro_batch_groups={shapes.micro_batch_groups or 'null'}"])
    return plan.make_plan(cfg, world_size=1, image_tokens=prompt[0], text_tokens=prompt[1])


def groups_of(rows: list[dict], records: list[dict], dists) -> list[training.Group]:
    """Training groups of the generated answers, with rule-free stand-in accuracies (random
    weights answer nothing right): alternating 1 / 0, so every group has an advantage."""
    by_id = {str(r["id"]): training.Group(str(r["id"]), r["image"], r["question"], [], [])
             for r in rows}
    for rec, d in zip(records, dists, strict=True):
        g = by_id[rec["question_id"]]
        g.answers.append(list(rec["token_ids"]))
        g.accuracy.append(float(len(g.answers) % 2))
        g.dists.append(d)
    return list(by_id.values())


def run(device: str | None = None, shapes: str = "real", out: str | Path | None = None,
        dtype: torch.dtype = torch.bfloat16, work: str | Path | None = None) -> dict:
    """Every step in order; `out` gets gpu_qwen.json after each; the checkpoints go to
    `work` (default out/checkpoints). `device` None: CUDA, else nothing is measured (the tiny
    shapes take an explicit device)."""
    if device is None and not torch.cuda.is_available():
        return {"measured": False}
    dev = torch.device(device or "cuda")
    sh = SHAPES[shapes]
    out = Path(out) if out else Path(".masters/bench/gpu_qwen")
    work = Path(work) if work else out / "checkpoints"
    meter = Meter(dev)
    r: dict = {"measured": True, "shapes": shapes, "device": str(dev),
               "device_name": torch.cuda.get_device_name(dev) if meter.cuda else "cpu",
               "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__}

    def save() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_qwen.json").write_text(json.dumps(r, indent=2))

    proc = processor(sh)
    t0 = time.perf_counter()
    sdir = build_checkpoint(sh.student, proc, work / "student", dev, dtype, seed=0)
    free()
    tdir = build_checkpoint(sh.teacher, proc, work / "teacher", dev, dtype, seed=1)
    free()
    r["build_s"] = time.perf_counter() - t0
    rows = bench_generation.question_rows(sh.questions)
    prompt = _prompt_tokens(proc, rows[0])
    p = make_plan(sh, sdir, tdir, prompt)
    r["plan"] = {"params": {s.role: s.params for s in p.shapes}, "image_tokens": prompt[0],
                 "prune": p.prune[0].total, "generate": p.generate[0].total,
                 "generate_parts": p.generate[0].parts,
                 "train": {row.label: [row.total, row.total_ckpt] for row in p.train}}
    save()

    # 1. masking: the teacher loaded onto the device, then masked as generation visits it
    t = meter.start()
    teacher, tproc = models.load(tdir, dtype=dtype, device=dev)
    r["masking"] = {"load": meter.stop(t)}
    ratios = [round(0.05 * i, 2) for i in range(1, round(R_MAX / 0.05) + 1)]
    t = meter.start()
    masked = MaskedTeacher(teacher)
    for ratio in ratios:
        masked.set_ratio(ratio)
    r["masking"]["mask"] = {**meter.stop(t), "ratios": ratios}
    save()

    # 2. generation: 4 + 4 answers per question, the teacher at r_max
    student, sproc = models.load(sdir, dtype=dtype, device=dev)
    gcfg = GenerationConfig(batch_size=sh.batch_size, max_new_tokens=sh.max_new_tokens,
                            teacher_top_k=sh.top_k)
    t_m, s_m = LoadedModel(teacher, tproc), LoadedModel(student, sproc)

    def shard(part, t_m=t_m, s_m=s_m):
        return generation.generate_shard(t_m, s_m, part, teacher_name="large", ratio=R_MAX,
                                         cfg=gcfg, seed=0)

    shard(rows[:2])  # warm-up: kernels, allocator
    t = meter.start()
    records = shard(rows)
    del shard
    gen = meter.stop(t)
    tokens = sum(len(rec["token_ids"]) for rec in records)
    r["generation"] = {**gen, "questions": len(rows), "answers": len(records),
                       "tokens": tokens, "answers_per_s": len(records) / gen["s"],
                       "tokens_per_s": tokens / gen["s"]}
    save()

    # 3. forcing: the distributions write_shard caches (masked teacher + reference)
    t = meter.start()
    dists = distributions.for_records(t_m, s_m, rows, records, sh.top_k,
                                      batch_groups=max(1, sh.batch_size // 8))
    r["forcing"] = {**meter.stop(t), "answers": len(dists)}
    save()
    groups = groups_of(rows, records, dists)
    del teacher, student, masked, t_m, s_m
    free()

    # 4. training: float32 master weights, bf16 autocast on CUDA, without / with checkpointing
    label = "bf16-mixed DDP/1" if meter.cuda else "fp32 DDP/1"
    r["training"] = {"plan_row": label, "batch_groups": sh.batch_groups,
                     "micro_batch_groups": sh.micro_batch_groups}
    for ckpt in (False, True):
        key = "checkpointing" if ckpt else "plain"
        cfg = TrainingConfig(lr=1e-6, batch_groups=sh.batch_groups,
                             precision="bf16" if meter.cuda else "fp32",
                             micro_batch_groups=sh.micro_batch_groups,
                             gradient_checkpointing=ckpt)
        student, sproc = models.load(sdir, dtype=torch.float32, device=dev)
        trainer = training.MastersTrainer(student, sproc, cfg)
        trainer.setup()
        stage = Stage(0, "large", str(tdir), R_MAX, 0, len(groups))
        times, t = [], meter.start()
        try:
            for i in range(sh.steps):
                start = (i * sh.batch_groups) % len(groups)
                batch = (groups + groups)[start : start + sh.batch_groups]
                t_step = time.perf_counter()
                trainer.loss_step(batch, stage)
                meter.sync()
                times.append(time.perf_counter() - t_step)
            r["training"][key] = {**meter.stop(t), "steps": sh.steps,
                                  "step_s_median": statistics.median(times[2:] or times)}
        except torch.cuda.OutOfMemoryError as e:  # plan said it might not fit: record it
            r["training"][key] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
        del trainer, student
        free()
        save()
    shutil.rmtree(work)  # ~25 GB at the real shapes; rebuilt in a minute
    return r


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def _vs(measured: float | None, planned: float) -> str:
    return "-" if measured is None else f"{measured / planned:.2f}"


def markdown(r: dict) -> str:
    if not r.get("measured"):
        return "not measured (no CUDA device in this run)"
    pl, m, g, f, tr = r["plan"], r["masking"], r["generation"], r["forcing"], r["training"]
    gp = pl["generate_parts"]
    forcing_plan = gp["teacher"] + gp["student"] + gp["forcing"]
    rows = [
        ("masked teacher: load onto the device", f"{m['load']['s']:.1f} s",
         m["load"].get("peak_bytes"), pl["prune"]),
        (f"masked teacher: set_ratio {m['mask']['ratios'][0]} .. {m['mask']['ratios'][-1]}",
         f"{m['mask']['s']:.1f} s", m["mask"].get("peak_bytes"), pl["prune"]),
        (f"generation: {g['questions']} questions x 8 answers, {g['tokens']} tokens",
         f"{g['s']:.1f} s ({g['answers_per_s']:.1f} answers/s, {g['tokens_per_s']:.0f} "
         "tokens/s)", g.get("peak_bytes"), pl["generate"]),
        (f"teacher-forced distributions (top-k) of {f['answers']} answers",
         f"{f['s']:.1f} s", f.get("peak_bytes"), forcing_plan),
    ]
    plain, ckpt = pl["train"][tr["plan_row"]]
    for key, planned, name in (("plain", plain, "without"), ("checkpointing", ckpt, "with")):
        t = tr.get(key, {})
        time_s = t.get("error") or f"{1000 * t['step_s_median']:.0f} ms / step"
        rows.append((f"training step ({tr['batch_groups']} questions x 8 answers, micro-batches "
                     f"of {tr['micro_batch_groups']}), {name} gradient checkpointing", time_s,
                     t.get("peak_bytes"), planned))
    params, cuda = pl["params"], r["device"].startswith("cuda")
    lines = [
        f"Device: {r['device_name']}, torch {r['torch']}; random-init Qwen2.5-VL shapes "
        f"({plan.fmt_count(params['student'])} student, {plan.fmt_count(params['teacher'])} "
        f"teacher; `python -m benchmarks.gpu_qwen`), weights in {r['dtype']}, training with "
        + ("float32 master weights and bf16 autocast" if cuda else "float32 (no CUDA)")
        + f"; {pl['image_tokens']} image tokens per prompt. Peak: "
        "`torch.cuda.max_memory_allocated` over the step; plan: `masters plan` for the same "
        "config and prompt length, one GPU, world size 1.", "",
        "| step | time | peak memory | plan | peak / plan |", "|---|---|---|---|---|"]
    for name, time_s, peak, planned in rows:
        lines.append(f"| {name} | {time_s} | {_gib(peak)} | {_gib(planned)} | "
                     f"{_vs(peak, planned)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".masters/bench/gpu_qwen")
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="real")
    ap.add_argument("--device", default=None, help="default: CUDA (the tiny shapes: any)")
    ap.add_argument("--work", default=None, help="checkpoint folder (default OUT/checkpoints)")
    args = ap.parse_args(argv)
    r = run(args.device, args.shapes, args.out, work=args.work)
    md = markdown(r)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_qwen.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
