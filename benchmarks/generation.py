"""Generation costs: batched vs one question at a time; a cached re-run vs the first run.

Both on the shipped embedded large teacher (masked at r = 0.2) and the embedded student,
sampling with the paper's settings.

Batched vs one at a time: every configuration runs the same 64 questions (4 answers each)
through `generation.sample_answers`, `repeats` times round-robin, and reports its best run.
Batched calls use the library default (each prompt prefilled once, its KV cache shared by its 4
samples); the format-2 way (every prompt run 4 times, `num_return_sequences`) is shown beside
it. One question per call is measured both ways and the faster is the baseline: for one short
prompt on a tiny model the extra forward pass of the shared prefill costs more than it saves.
"""

from __future__ import annotations

import tempfile
import time

import torch

from masters import cache, generation, models, synthetic
from masters.config import GenerationConfig
from masters.masking import MaskedTeacher
from masters.schedule import Stage

N_QUESTIONS = 64


def question_rows(n: int) -> list[dict]:
    """The first n synthetic training questions as generation's rows (id, question, image)."""
    samples = [synthetic.make_sample(0, "train", i) for i in range(n)]
    return [{"id": s.id, "question": s.question, "image": s.image} for s in samples]


def throughput(repeats: int = 3, device: str = "cpu", dtype: torch.dtype = torch.float32,
               n_questions: int = N_QUESTIONS) -> dict:
    """Answers/s of each way of calling generation (see the module docstring), best of
    `repeats`, with the embedded large teacher masked at r = 0.2 on `device` in `dtype`."""
    teacher_model, teacher_proc = models.load("embedded:large", dtype=dtype, device=device)
    MaskedTeacher(teacher_model).set_ratio(0.2)
    rows = question_rows(n_questions)
    images = [r["image"] for r in rows]
    questions = [r["question"] for r in rows]
    out: dict = {"questions": n_questions}

    def answers_per_second(batch_size: int, shared: bool) -> float:
        cfg = GenerationConfig(batch_size=batch_size)
        sync_device(device)
        t0 = time.perf_counter()
        answers = generation.sample_answers(teacher_model, teacher_proc, images, questions,
                                            cfg.teacher_answers, cfg, seed=0,
                                            shared_prefill=shared)
        sync_device(device)
        return sum(len(a) for a in answers) / (time.perf_counter() - t0)

    configs = {"batched": (32, True), "batched64": (64, True), "batched_plain": (32, False),
               "single_shared": (1, True), "single_plain": (1, False)}
    answers_per_second(32, True)  # warm-up
    best = dict.fromkeys(configs, 0.0)
    for _ in range(repeats):
        for name, (batch_size, shared) in configs.items():
            best[name] = max(best[name], answers_per_second(batch_size, shared))
    out.update({f"{name}_answers_per_s": v for name, v in best.items()})
    out["single_answers_per_s"] = max(best["single_shared"], best["single_plain"])
    out["batched_speedup"] = best["batched"] / out["single_answers_per_s"]
    out["batched64_speedup"] = best["batched64"] / out["single_answers_per_s"]
    out["batched_plain_speedup"] = best["batched_plain"] / out["single_answers_per_s"]
    out["repeats"] = repeats
    return out


def sync_device(device) -> None:
    """Wait for queued CUDA work, so a timer read after it measures the work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run(repeats: int = 3) -> dict:
    out = throughput(repeats)
    teacher_fp = models.fingerprint(models.load("embedded:large")[0])
    rows = question_rows(N_QUESTIONS)

    # A stage of 64 questions in shards of 16: first run (load + generate + store) vs a
    # re-run (plan only: every shard found, so no model is loaded).
    cfg = GenerationConfig(shard_size=16, teacher_top_k=0)  # as configs/embedded.yaml
    vocab = len(models.load_processor(models.resolve_path("embedded:student"))
                .tokenizer.get_vocab())
    stage = Stage(0, "large", "embedded:large", 0.2, 0, N_QUESTIONS)
    ids = [r["id"] for r in rows]
    by_id = {r["id"]: r for r in rows}

    def rows_of(shard):
        return [by_id[q] for q in shard.question_ids]

    loads = {"n": 0}
    with tempfile.TemporaryDirectory() as tmp:
        store = cache.LocalStore(tmp)

        def one_run() -> float:
            t0 = time.perf_counter()
            planned = generation.plan_stage(store, stage, ids, rows_of, cfg,
                                            teacher_fingerprint=teacher_fp,
                                            student_fingerprint="student", vocab=vocab)
            missing = [p for p in planned if not p["cached"]]
            if missing:
                loads["n"] += 2
                t_model, t_proc = models.load("embedded:large")
                MaskedTeacher(t_model).set_ratio(0.2)
                s_model, s_proc = models.load("embedded:student")
                for p in missing:
                    generation.write_shard(store, p, stage,
                                           generation.LoadedModel(t_model, t_proc),
                                           generation.LoadedModel(s_model, s_proc),
                                           rows_of(generation.shard_from_dict(p)), cfg)
            return time.perf_counter() - t0

        out["first_run_s"] = one_run()
        first_loads = loads["n"]
        out["cached_run_s"] = one_run()
        out["cached_run_model_loads"] = loads["n"] - first_loads
    out["cached_over_first"] = out["cached_run_s"] / out["first_run_s"]
    return out


def markdown(r: dict) -> str:
    return "\n".join([
        f"Embedded large teacher masked at r=0.2, {r['questions']} questions, 4 answers each, "
        "temperature 1.0, top-p 0.9, top-k 50, repetition penalty 1.05; best of "
        f"{r['repeats']} runs per row.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| batched generation (32 questions per call, prompt prefilled once per question) | "
        f"{r['batched_answers_per_s']:.1f} answers/s |",
        f"| batched generation (64 questions per call, prompt prefilled once per question) | "
        f"{r['batched64_answers_per_s']:.1f} answers/s |",
        f"| batched generation (32 per call, every prompt run 4 times: format 2) | "
        f"{r['batched_plain_answers_per_s']:.1f} answers/s |",
        f"| one question per call (its 4 answers sampled together; faster of: prompt run 4 "
        f"times {r['single_plain_answers_per_s']:.1f}, prefilled once "
        f"{r['single_shared_answers_per_s']:.1f}) | {r['single_answers_per_s']:.1f} answers/s |",
        f"| **batched 32 / one-at-a-time** (expect >= 5x) | **{r['batched_speedup']:.1f}x** |",
        f"| **batched 64 / one-at-a-time** | **{r['batched64_speedup']:.1f}x** |",
        f"| batched 32, format 2 / one-at-a-time | {r['batched_plain_speedup']:.1f}x |",
        f"| first run of a 64-question stage (teacher 4 + student 4 answers, then the "
        f"teacher's distributions and the reference's log-probs on all 8) | "
        f"{r['first_run_s']:.2f} s |",
        f"| second, fully cached run | {r['cached_run_s']:.3f} s, "
        f"{r['cached_run_model_loads']} model loads |",
        f"| **cached / first** (expect <= 5%) | **{100 * r['cached_over_first']:.1f}%** |",
    ])
