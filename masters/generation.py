"""Offline response generation (method.md section 2): the answers GRPO compares, sampled once.

For every stage (teacher, ratio) of the schedule and every question of that stage's data
slice, the masked teacher samples `generation.teacher_answers` (4) answers and the initial
student `generation.student_answers` (4): the group of G = 8 of the paper (mix 1:1).
Sampling follows the paper: temperature 1.0, top-p 0.9, top-k 50, repetition penalty 1.05,
plain answers. Many questions share one `generate` call, and the n samples of a question share
its prompt (below).

Shared prefill. Answers are a few tokens long, so a call's cost is mostly the prompt: image
tokens through the vision tower and the language model. `generate(num_return_sequences=n)`
repeats every prompt n times before running it. For LLaVA-style models (PREFIX_SHARED_MODELS)
`sample_answers` instead runs each prompt but its last token once (vision tower included),
repeats the KV cache n times, and lets `generate` continue from it with the same sampling
settings: the same computation per sample, with the prompt paid once per question instead of
n times. Position ids follow `generate`'s own rule for left-padded prompts (attention-mask
cumsum), and a test pins greedy outputs to those of the plain call. Other model types take the
plain `num_return_sequences` call.

Shards. A stage's questions are cut into shards of `generation.shard_size` questions. A shard
is the unit of work, of caching and of resuming, and its cache key (`shard_key`) addresses
everything that changes its answers: both weight fingerprints, the teacher's name and mask
ratio, the questions (ids and a digest of their text and pixels: ids alone survive a change
of data seed), every sampling setting and GENERATION_FORMAT. A re-run therefore regenerates
exactly the shards that are missing, corrupt or were sampled under other inputs.

Determinism. Each `generate` call is seeded from the shard's seed, the source and the batch
index, inside a forked RNG so the caller's random state is untouched: the same shard gives the
same answers on the same machine. Other devices or kernels may differ in the last bits and
sampling amplifies that; the cache, not the seed, is what makes training reproducible.

Records, one JSON line per answer: question_id, source ("teacher" / "student"), model (the
teacher's name or "student"), ratio (the teacher's mask ratio; 0.0 for the student),
answer_index, text, token_ids (the generated ids through the first EOS, no padding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from masters import cache, distributions, inputs
from masters.config import RATIO_DECIMALS, GenerationConfig
from masters.schedule import Stage

# Bump when the prompt format, the decoding of answers or the record layout changes: every
# shard key changes with it, so answers produced by older code are never served.
# 2: special tokens other than EOS are suppressed; 3: shared prefill (module docstring), which
# changes the prompt's arithmetic (batch shape), so sampled answers may differ in rare draws;
# 4: every family's prompt built by its own processor, padded vocabulary rows suppressed.
GENERATION_FORMAT = 4


class LoadedModel(NamedTuple):
    model: Any
    processor: Any


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]


def sampling_kwargs(cfg: GenerationConfig) -> dict[str, Any]:
    """The `generate` arguments of method.md section 2."""
    return {
        "do_sample": True,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "repetition_penalty": cfg.repetition_penalty,
        "max_new_tokens": cfg.max_new_tokens,
    }


def suppressed_tokens(tokenizer, eos: set[int], model_vocab: int = 0) -> list[int]:
    """Tokens an answer must never contain: special tokens (image placeholders, padding, BOS)
    and the ids of padded embedding rows beyond the tokenizer (`model_vocab` rows in all).

    An answer holding the image token would make every later forward pass on it fail
    ("image features and image tokens do not match"), and a weak model does sample it; an id
    past the tokenizer has no token and no teacher probability.
    """
    known = len(tokenizer.get_vocab())
    return sorted((set(tokenizer.all_special_ids) - eos) | set(range(known, model_vocab)))


def derive_seed(*parts: Any) -> int:
    """A seed from JSON-able parts; 63 bits so `torch.manual_seed` takes it everywhere."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _answer(tokenizer, ids: list[int], eos: set[int]) -> Answer:
    # Finished sequences are padded (often with EOS itself) up to the longest one: keep the
    # ids through the first EOS, or all of them when the answer hit max_new_tokens.
    stop = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
    ids = ids[:stop]
    return Answer(tokenizer.decode(ids, skip_special_tokens=True).strip(), ids)


# Model types whose prompt may be prefilled once and its cache shared by the n samples: a
# LLaVA-style decoder with 1-D positions from the attention mask and no per-call state beyond
# the KV cache (checked against the plain call by tests/test_generation.py).
PREFIX_SHARED_MODELS = frozenset({"llava"})


def _prefix_cache(model, batch: Mapping[str, torch.Tensor], image_token_id: int | None):
    """The KV cache of every prompt but its last token, or None where it cannot be shared."""
    from transformers import DynamicCache

    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if (getattr(model.config, "model_type", None) not in PREFIX_SHARED_MODELS or mask is None
            or ids.shape[1] < 2 or set(batch) - {"input_ids", "attention_mask", "pixel_values"}
            or (image_token_id is not None and bool((ids[:, -1] == image_token_id).any()))):
        return None
    # generate's own position ids for left-padded prompts: cumsum of the mask, 0 on padding.
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
          pixel_values=batch.get("pixel_values"), cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _generate(model, batch: Mapping[str, torch.Tensor], n: int, image_token_id: int | None,
              shared_prefill: bool, **kwargs) -> torch.Tensor:
    """n samples per prompt; rows i*n .. i*n+n-1 are prompt i's, as with num_return_sequences."""
    cache = _prefix_cache(model, batch, image_token_id) if shared_prefill else None
    if cache is None:
        seqs = model.generate(**batch, num_return_sequences=n, **kwargs)
    else:
        cache.batch_repeat_interleave(n)
        seqs = model.generate(input_ids=batch["input_ids"].repeat_interleave(n, 0),
                              attention_mask=batch["attention_mask"].repeat_interleave(n, 0),
                              cache=cache, **kwargs)
    return seqs if isinstance(seqs, torch.Tensor) else seqs.sequences


@torch.inference_mode()
def sample_answers(
    model, processor, images: Sequence[np.ndarray], questions: Sequence[str], n: int,
    cfg: GenerationConfig, seed: int, *, shared_prefill: bool = True,
) -> list[list[Answer]]:
    """`n` sampled answers per question, `cfg.batch_size` questions per `generate` call.

    `shared_prefill=False` runs every prompt n times (`num_return_sequences`), as format 2
    did: the same distribution, only slower where prompts dominate (module docstring).
    """
    if n == 0:
        return [[] for _ in questions]
    param = next(model.parameters())
    tok = processor.tokenizer
    eos = _eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    image_token = getattr(processor, "image_token", None)
    image_token_id = tok.convert_tokens_to_ids(image_token) if image_token else None
    rng_devices = [param.device] if param.device.type == "cuda" else []
    out: list[list[Answer]] = []
    for b, start in enumerate(range(0, len(questions), cfg.batch_size)):
        sl = slice(start, start + cfg.batch_size)
        batch = inputs.to_model(inputs.encode_prompts(processor, images[sl], questions[sl]),
                                model)
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(derive_seed(seed, b))
            seqs = _generate(model, batch, n, image_token_id, shared_prefill, pad_token_id=pad,
                             suppress_tokens=suppressed_tokens(tok, eos, _rows(model)),
                             **sampling_kwargs(cfg))
        new = seqs[:, batch["input_ids"].shape[1]:].tolist()
        out += [[_answer(tok, ids, eos) for ids in new[i : i + n]] for i in range(0, len(new), n)]
    return out


def rows_digest(rows: Sequence[Mapping[str, Any]]) -> str:
    """Digest of the questions' ids, text and pixels."""
    h = hashlib.sha256()
    for row in rows:
        image = np.ascontiguousarray(row["image"], dtype=np.uint8)
        h.update(json.dumps([row["id"], row["question"], list(image.shape)]).encode())
        h.update(image.tobytes())
    return h.hexdigest()[:32]


def sampling_settings(cfg: GenerationConfig) -> dict[str, Any]:
    # Every field but shard_size (a shard's questions are keyed themselves), teacher_top_k
    # (it keys the distributions, not the answers) and where the shards run; batch_size
    # stays, since batch composition moves the random stream and the padding of each prompt.
    return cfg.model_dump(mode="json", exclude={"shard_size", "teacher_top_k", "task_runner",
                                                "dask_address", "dask_workers"})


def shard_key(
    teacher_fingerprint: str, ratio: float, student_fingerprint: str,
    question_ids: Sequence[str], gen_cfg: GenerationConfig, *, teacher_name: str,
    content_digest: str, processors: Mapping[str, Any] | None = None,
) -> str:
    """`processors`: the teacher's and student's processor settings (they change prompts)."""
    parts = {
        "generation_format": GENERATION_FORMAT,
        "teacher": {"name": teacher_name, "fingerprint": teacher_fingerprint,
                    "ratio": round(float(ratio), RATIO_DECIMALS)},
        "student": student_fingerprint,
        "questions": {"ids": [str(q) for q in question_ids], "content": content_digest},
        "sampling": sampling_settings(gen_cfg),
    }
    if processors and any(processors.values()):
        parts["processors"] = dict(processors)
    return cache.content_key("shards", parts, ".jsonl")


def shard_seed(key: str) -> int:
    """The key already holds generation.seed and every other input."""
    return derive_seed(key)


def generate_shard(
    teacher: LoadedModel, student: LoadedModel | None, rows: Sequence[Mapping[str, Any]], *,
    teacher_name: str, ratio: float, cfg: GenerationConfig, seed: int,
) -> list[dict[str, Any]]:
    """Answer records of one shard: for each question, the teacher's then the student's.

    `teacher` must already hold `ratio` (MaskedTeacher.set_ratio); the student is used as
    given. Each uses its own processor.
    """
    images = [np.asarray(r["image"], dtype=np.uint8) for r in rows]
    questions = [r["question"] for r in rows]
    sources = [("teacher", teacher_name, round(float(ratio), RATIO_DECIMALS), teacher,
                cfg.teacher_answers)]
    if cfg.student_answers:
        if student is None:
            raise ValueError("generation.student_answers > 0 but no student model was given")
        sources.append(("student", "student", 0.0, student, cfg.student_answers))
    answers = {
        source: sample_answers(m.model, m.processor, images, questions, n, cfg,
                               derive_seed(seed, source))
        for source, _, _, m, n in sources
    }
    records = []
    for i, row in enumerate(rows):
        for source, name, r, _, _ in sources:
            for j, a in enumerate(answers[source][i]):
                records.append({"question_id": str(row["id"]), "source": source, "model": name,
                                "ratio": r, "answer_index": j, "text": a.text,
                                "token_ids": a.token_ids})
    return records


@dataclass(frozen=True)
class Shard:
    stage: int
    index: int
    start: int  # positions [start, stop) in the split
    stop: int
    question_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "question_ids": list(self.question_ids)}


def plan_shards(stage: Stage, question_ids: Sequence[str], shard_size: int) -> list[Shard]:
    """The stage's slice of the split in consecutive shards of `shard_size` (last one shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if stage.stop > len(question_ids):
        raise ValueError(f"stage {stage.index} needs items [{stage.start}, {stage.stop}) but "
                         f"the split has {len(question_ids)}")
    return [
        Shard(stage.index, i, start, min(start + shard_size, stage.stop),
              tuple(str(q) for q in question_ids[start : min(start + shard_size, stage.stop)]))
        for i, start in enumerate(range(stage.start, stage.stop, shard_size))
    ]


def plan_stage(
    store: cache.Store, stage: Stage, question_ids: Sequence[str],
    rows_of: Callable[[Shard], Sequence[Mapping[str, Any]]], cfg: GenerationConfig, *,
    teacher_fingerprint: str, student_fingerprint: str, vocab: int,
    processors: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every shard of the stage with its key, URI and whether a sound copy is in the store.

    No model is needed: the fingerprints come from the prune step and a hash of the student.
    A shard is cached when its answers and their teacher distributions (`dists_key`, for
    `vocab` tokens) both are. The check is a checksummed read, not `exists`: a corrupt object
    is deleted here (by `get_or_none`) and so planned for regeneration.
    """
    planned = []
    for shard in plan_shards(stage, question_ids, cfg.shard_size):
        key = shard_key(teacher_fingerprint, stage.ratio, student_fingerprint,
                        shard.question_ids, cfg, teacher_name=stage.teacher,
                        content_digest=rows_digest(rows_of(shard)), processors=processors)
        dkey = distributions.dists_key(key, cfg.teacher_top_k, vocab)
        planned.append({**shard.to_dict(), "key": key, "uri": store.uri(key), "dists_key": dkey,
                        "cached": store.get_or_none(key) is not None
                        and store.get_or_none(dkey) is not None})
    return planned


def shard_from_dict(data: Mapping[str, Any]) -> Shard:
    return Shard(data["stage"], data["index"], data["start"], data["stop"],
                 tuple(data["question_ids"]))


def write_shard(
    store: cache.Store, planned: Mapping[str, Any], stage: Stage, teacher: LoadedModel,
    student: LoadedModel | None, rows: Sequence[Mapping[str, Any]], cfg: GenerationConfig,
    reference: LoadedModel | None = None,
) -> bool:
    """Generate one planned shard's answers, then teacher-force them with the masked teacher
    and the reference (the initial student: `reference`, else `student`) and store their
    distributions (masters.distributions); False when another writer got there first."""
    reference = reference or student
    if reference is None:
        raise ValueError("the shard's distributions need the reference (initial student)")
    ids = [str(r["id"]) for r in rows]
    if ids != list(planned["question_ids"]):
        raise ValueError(f"rows {ids[:3]}... do not match shard {planned['key']} "
                         f"({list(planned['question_ids'])[:3]}...)")
    # Cached answers whose distributions are missing (killed in between, or corrupt) are kept.
    records, written = cache.get_jsonl_or_none(store, planned["key"]), False
    if records is None:
        records = generate_shard(teacher, student, rows, teacher_name=stage.teacher,
                                 ratio=stage.ratio, cfg=cfg, seed=shard_seed(planned["key"]))
        # if_absent: two runs racing on one shard produce the same content; the first wins.
        written = cache.put_jsonl(store, planned["key"], records, if_absent=True)
    if store.get_or_none(planned["dists_key"]) is None:
        dists = distributions.for_records(teacher, reference, rows, records, cfg.teacher_top_k,
                                          batch_groups=max(1, cfg.batch_size // 8))
        written |= store.put_bytes(planned["dists_key"], distributions.to_bytes(dists),
                                   if_absent=True)
    return written


def answers_per_question(cfg: GenerationConfig) -> int:
    return cfg.teacher_answers + cfg.student_answers


def manifest_key(shard_keys: Sequence[str], dists_keys: Sequence[str] = ()) -> str:
    return cache.content_key("manifests", {"generation_format": GENERATION_FORMAT,
                                           "shards": list(shard_keys),
                                           "dists": list(dists_keys)}, ".json")


def stage_manifest(
    stage: Stage, planned: Sequence[Mapping[str, Any]], cfg: GenerationConfig, *,
    teacher_fingerprint: str, student_fingerprint: str,
) -> dict[str, Any]:
    """What training reads: every shard of a stage, in order, with its key and URI.

    Only content goes in (no cached/new counts of one run), so equal inputs give an equal
    manifest under an equal key.
    """
    n_questions = sum(len(p["question_ids"]) for p in planned)
    return {
        "generation_format": GENERATION_FORMAT,
        "stage": stage.index,
        "teacher": stage.teacher,
        "ratio": stage.ratio,
        "teacher_fingerprint": teacher_fingerprint,
        "student_fingerprint": student_fingerprint,
        "sampling": sampling_settings(cfg),
        "questions": n_questions,
        "answers": n_questions * answers_per_question(cfg),
        "teacher_top_k": cfg.teacher_top_k,
        "shards": [{k: p[k] for k in ("index", "start", "stop", "question_ids", "key", "uri",
                                      "dists_key")}
                   for p in planned],
    }
