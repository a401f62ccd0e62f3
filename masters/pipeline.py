"""The pipeline's steps as library code: what the Prefect tasks and the benchmarks both call.

One implementation each of: the rows a shard is generated from, a stage's masked teacher,
scoring a stage's shards into the cache, and a stage's training groups (cached answers,
their distributions and accuracy rewards; or the dataset labels for the supervised baseline).
No Prefect here, so torchrun ranks and benchmarks run the same code as the flows.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from masters import cache, data, distributions, models, scoring, training
from masters.config import DataConfig, MastersConfig, RewardsConfig
from masters.generation import LoadedModel, Shard
from masters.masking import MaskedTeacher, MaskScope
from masters.schedule import Stage

_SPLITS: dict[tuple[str, str], Any] = {}


def load_split(cfg: DataConfig, split: str):
    """A data split, loaded once per process and data config."""
    key = (cfg.model_dump_json(), split)
    if key not in _SPLITS:
        _SPLITS[key] = data.load_split(cfg, split)
    return _SPLITS[key]


def shard_rows(split, shard: Shard) -> list[dict[str, Any]]:
    """The generation inputs of one shard: question id, question, RGB image array."""
    part = split[shard.start : shard.stop]
    return [{"id": i, "question": q, "image": np.asarray(im.convert("RGB"))}
            for i, q, im in zip(part["id"], part["question"], part["image"], strict=True)]


def mask_scope(cfg: MastersConfig) -> MaskScope:
    return MaskScope(cfg.masking.include_embeddings, cfg.masking.include_lm_head)


class StageTeacher:
    """One resident masked teacher, moved to each stage's ratio.

    Loaded on first use (and checked against the fingerprint its answers are keyed by);
    a ratio below the resident one (masks only grow) or another teacher reloads it.
    """

    def __init__(self) -> None:
        self._held: tuple[tuple, MaskedTeacher, Any, str] | None = None

    def clear(self) -> None:
        self._held = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def get(self, cfg: MastersConfig, stage: Stage, fingerprint: str | None = None
            ) -> tuple[LoadedModel, str]:
        """(the teacher at the stage's ratio, its fingerprint)."""
        (t,) = [t for t in cfg.teachers if t.name == stage.teacher]
        place = models.inference_placement(cfg)
        ident = (t.path, t.trust_remote_code, repr(t.processor), str(place), repr(t.spread()),
                 mask_scope(cfg))
        held = self._held
        if (held is None or held[0] != ident or held[1].ratio > stage.ratio
                or fingerprint not in (None, held[3])):
            self.clear()  # free the previous teacher before loading the next
            model, processor = models.load_ref(t, **place)
            fp = models.fingerprint(model)
            if fingerprint is not None and fp != fingerprint:
                raise ValueError(f"teacher {t.name} at {t.path} changed since it was "
                                 f"fingerprinted ({fingerprint}, now {fp}); re-run the flow")
            self._held = held = (ident, MaskedTeacher(model, mask_scope(cfg)), processor, fp)
        _, masked, processor, fp = held
        masked.set_ratio(stage.ratio)
        return LoadedModel(masked.model, processor), fp


def score_shards(store, shards: Sequence[dict], split, rewards: RewardsConfig,
                 judge_generate=None, judge_fingerprint: str | None = None) -> dict:
    """Accuracy rewards of a stage's shards, each scored once into the cache.

    Returns `scores` (per shard: shard_key, score_key, uri), `records` (every scored
    record), `new` (shards scored now) and `labels_digest` (of the stage's labels).
    """
    qids = {q for s in shards for q in s["question_ids"]}
    labels, digest = scoring.stage_labels(split, qids)
    out, scored_all, new = [], [], 0
    for shard in shards:
        key = scoring.score_key(shard["key"], rewards, digest, judge_fingerprint)
        scored = cache.get_jsonl_or_none(store, key)  # a corrupt object is deleted: rescored
        if scored is None:
            records = cache.get_jsonl(store, shard["key"])
            scored = scoring.score_records(records, labels, rewards, judge_generate)
            cache.put_jsonl(store, key, scored)
            new += 1
        scored_all += scored
        out.append({"shard_key": shard["key"], "score_key": key, "uri": store.uri(key)})
    return {"scores": out, "records": scored_all, "new": new, "labels_digest": digest}


def stage_groups(store, shards: Sequence[dict], score_keys: Sequence[str], split,
                 index: dict[str, int]) -> list[training.Group]:
    """A stage's training groups: every cached answer with its distributions and accuracy."""
    acc = {}
    for key in score_keys:
        for r in cache.get_jsonl(store, key):
            acc[(r["question_id"], r["source"], r["answer_index"])] = r["accuracy"]
    groups: OrderedDict[str, training.Group] = OrderedDict()
    for shard in shards:
        records = cache.get_jsonl(store, shard["key"])
        dists = distributions.from_bytes(store.get_bytes(shard["dists_key"]))
        if len(dists) != len(records):
            raise cache.CacheError(f"{store.uri(shard['dists_key'])} holds {len(dists)} "
                                   f"answers, shard {shard['key']} {len(records)}")
        for r, d in zip(records, dists, strict=True):
            training.add_answer(groups, split, index, r,
                                acc[(r["question_id"], r["source"], r["answer_index"])], d)
    return list(groups.values())


def label_groups(split, stage: Stage, tokenizer) -> list[training.Group]:
    """The supervised baseline's data: the stage's slice of the train split, its reference
    answer text (`response`, where the dataset has one, else the label) as the answer."""
    part = split[stage.start : stage.stop]
    targets = part["response"] if "response" in part else part["answer"]
    return [training.label_group(tokenizer, str(i), np.asarray(im.convert("RGB")), q, a)
            for i, im, q, a in zip(part["id"], part["image"], part["question"], targets,
                                   strict=True)]

