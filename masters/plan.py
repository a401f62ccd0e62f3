"""`masters plan`: size a run before it starts, from each model's config.json alone.

Every model of the config is built on the meta device (`AutoConfig` +
`AutoModelForImageTextToText.from_config` under `torch.device("meta")`): shapes, no weights,
no download. From those shapes and the config, one short function per estimate below gives
the bytes each pipeline step needs; `make_plan` collects them and `Plan.render` prints them
with a verdict against one GPU's memory.

What is assumed (and shown in the output): a prompt is one image's tokens (from the config:
`image_seq_length`, the vision tower's image size, or the processor's `max_pixels`; else
DEFAULT_IMAGE_TOKENS) plus `text_tokens` of question and chat template; an answer is
`generation.max_new_tokens` tokens (an upper bound: answers stop at EOS). Activations count
the tensors autograd saves, measured on the embedded models (tests/test_plan.py); attention
is SDPA (no (L, L) score matrix kept). Training holds no teacher (its distributions are
cached), so a step's memory is the student's alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from masters import distributed, generation, models
from masters.config import MastersConfig, ModelRef
from masters.masking import MaskScope

GiB = 1024**3
DEFAULT_IMAGE_TOKENS = 1024  # dynamic-resolution towers (Qwen): a 896 x 896 image at 28 px/token
DEFAULT_TEXT_TOKENS = 32  # question + chat template around it
LOSS_COPIES = 9  # float32 (rows, answer tokens, vocab) tensors the losses keep (measured)
ADAMW_BYTES = 8  # exp_avg + exp_avg_sq, float32
PRECISIONS = ("fp32", "bf16-mixed")
# Whether training's logits span every position (rows, sequence, vocab). False:
# masters.training.answer_logits passes logits_to_keep, so the LM head runs at the answer
# positions only and its output is (rows, answer tokens, vocab).
TRAINING_FULL_LOGITS = False
# One JSON line per answer (masters.generation) without its token ids and text, and one score
# line (masters.scoring), measured on the embedded cache; a cache object's frame header
# (masters.cache.frame) and a distributions blob's safetensors header.
RECORD_BYTES, SCORE_BYTES, TEXT_BYTES_PER_TOKEN = 115, 110, 4
FRAME_BYTES, SAFETENSORS_HEADER_BYTES = 72, 320


@dataclass(frozen=True)
class Tower:
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # num_key_value_heads * head_dim (= hidden for a vision tower)
    gated: bool  # gate + up projections (SwiGLU) rather than fc1 -> act -> fc2


@dataclass(frozen=True)
class Shape:
    """What the estimates need from one config.json."""

    role: str  # student / teacher
    name: str
    path: str
    model_type: str
    params: int
    masked_params: int  # in the teacher mask's scope (masking.MaskScope)
    largest_masked: int  # entries of the largest tensor in scope
    vocab: int
    text: Tower
    vision: Tower | None
    image_tokens: int  # LM positions of one image
    vision_tokens: int  # patches through the vision tower per image
    pixels: int  # pixel_values entries per image
    root_params: int = 0  # outside every _no_split_modules block (FSDP's root unit)
    largest_block: int = 0  # parameters of the largest such block


def _first(obj, *names, default=None):
    """The first attribute of `names` that is set (the first entry of a pair such as
    InternVL's patch_size [14, 14])."""
    for n in names:
        value = getattr(obj, n, None)
        if value is not None:
            return value[0] if isinstance(value, (list, tuple)) else value
    return default


def _gated(model, part: str, intermediate: int, layers: int) -> bool:
    """Two Linear layers per block writing `intermediate` features (gate and up): SwiGLU."""
    n = 0
    for name, mod in model.named_modules():
        in_vision = "vision" in name or "visual" in name
        if isinstance(mod, torch.nn.Linear) and in_vision == (part == "vision"):
            n += mod.out_features == intermediate
    return n >= 2 * layers


def _image_tokens(config, vc, processor_kwargs: dict) -> tuple[int, int]:
    """(LM tokens, vision-tower patches) of one image, from the config's own numbers."""
    merge = int(_first(vc, "spatial_merge_size") or _first(config, "spatial_merge_size",
                                                             default=1))  # Mistral 3: top level
    factor = merge**2 / float(_first(config, "downsample_ratio", default=1.0)) ** 2
    factor *= float(_first(config, "scale_factor", default=1)) ** 2  # Idefics3 / SmolVLM
    patch = int(_first(vc, "patch_size", "spatial_patch_size", default=14))
    text = config.get_text_config()
    fixed = _first(config, "image_seq_length", "mm_tokens_per_image", "num_image_tokens") or \
        _first(text, "num_image_tokens")
    size = _first(vc, "image_size")
    patches = (int(size) // patch) ** 2 if size else None
    if fixed:
        return int(fixed), patches or int(fixed * factor)
    if patches:
        return max(1, round(patches / factor)), patches
    if processor_kwargs.get("max_pixels"):
        tokens = int(processor_kwargs["max_pixels"]) // (patch * merge) ** 2
    else:
        tokens = DEFAULT_IMAGE_TOKENS
    return tokens, int(tokens * factor)


def read_shape(ref: ModelRef, role: str, name: str, scope: MaskScope,
               where: str = "") -> Shape:
    """The model's shape from its config.json on the meta device (no weights, no download).
    `where` names the config field in errors (e.g. teachers.1.path)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = models.resolve_path(ref.path)
    if not (Path(path) / "config.json").is_file():
        raise models.ModelLoadError(
            f"{where or role + '.path'}: no config.json in {path!r} (masters plan reads each "
            "model's config.json from a local folder; no weights are needed)")
    config = AutoConfig.from_pretrained(path, trust_remote_code=ref.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            config, trust_remote_code=ref.trust_remote_code)
    params = sum(p.numel() for p in model.parameters())  # tied weights once
    # masking.in_scope's own walk, deduplicated by object: on the meta device every storage
    # has data_ptr 0, so in_scope's storage key would merge tensors of equal shape.
    seen, masked, largest = set(), 0, 0
    for pname, t in model.state_dict(keep_vars=True).items():
        if scope.covers(pname, t) and id(t) not in seen:
            seen.add(id(t))
            masked, largest = masked + t.numel(), max(largest, t.numel())
    tc = config.get_text_config()
    heads = tc.num_attention_heads
    head_dim = _first(tc, "head_dim", default=tc.hidden_size // heads)
    kv_dim = _first(tc, "num_key_value_heads", default=heads) * head_dim
    text = Tower(tc.num_hidden_layers, tc.hidden_size, tc.intermediate_size, kv_dim,
                 _gated(model, "text", tc.intermediate_size, tc.num_hidden_layers))
    vc = getattr(config, "vision_config", None)
    vision, image_tokens, vision_tokens, pixels = None, 0, 0, 0
    if vc is not None:
        layers = int(_first(vc, "num_hidden_layers", "depth", default=0))
        # Qwen2-VL: embed_dim is the tower's width, hidden_size the LM's it projects to.
        hidden = int(_first(vc, "embed_dim", "hidden_size", default=0))
        inter = int(_first(vc, "intermediate_size",
                           default=hidden * _first(vc, "mlp_ratio", default=4)))
        vision = Tower(layers, hidden, inter, hidden, _gated(model, "vision", inter, layers))
        image_tokens, vision_tokens = _image_tokens(config, vc, ref.processor)
        patch = int(_first(vc, "patch_size", default=14))
        pixels = vision_tokens * int(_first(vc, "num_channels", "in_channels", default=3)) \
            * patch**2 * int(_first(vc, "temporal_patch_size", default=1))
    root, block = _fsdp_units(model)
    return Shape(role, name, ref.path, config.model_type, params, masked, largest,
                 tc.vocab_size, text, vision, image_tokens, vision_tokens, pixels, root, block)


def _fsdp_units(model) -> tuple[int, int]:
    """(root unit, largest block) parameters as masters.distributed.wrap shards the model:
    one unit per `distributed.fsdp_blocks` block, the root holding the rest."""
    inside, largest = set(), 0
    for module in distributed.fsdp_blocks(model):
        own = [p for p in module.parameters() if id(p) not in inside]
        inside.update(id(p) for p in own)
        largest = max(largest, sum(p.numel() for p in own))
    root = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return root, largest


# ---- estimates: one function each, the formula in its docstring ---------------------------


def weight_bytes(params: int, dtype_bytes: int) -> int:
    """weights = params x bytes per entry of the dtype."""
    return params * dtype_bytes


def mask_workspace_bytes(shape: Shape, dtype_bytes: int) -> int:
    """masking.mask_: one |w| copy (dtype) + one bool mask of the largest tensor in scope."""
    return shape.largest_masked * (dtype_bytes + 1)


def kv_cache_bytes(shape: Shape, sequences: int, tokens: int, dtype_bytes: int) -> int:
    """KV cache = 2 (K and V) x layers x kv_heads x head_dim x sequences x tokens x bytes."""
    return 2 * shape.text.layers * shape.text.kv_dim * sequences * tokens * dtype_bytes


def prefill_bytes(shape: Shape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """Inference working set of one decoder layer at prefill: rows x tokens x (3 I + 2 h)
    x bytes (the MLP's act, up and product tensors, the residual stream and a norm output)."""
    t = shape.text
    return rows * tokens * (3 * t.intermediate + 2 * t.hidden) * dtype_bytes


def forcing_logits_bytes(shape: Shape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """Teacher forcing (masters.distributions.attach): logits rows x tokens x vocab x bytes,
    `tokens` = the answer positions (training.answer_logits runs the LM head there only)."""
    return rows * tokens * shape.vocab * dtype_bytes


def training_state_bytes(params: int, precision: str, ddp: bool = False) -> dict[str, int]:
    """One full replica: fp32: weights 4 P + grads 4 P + AdamW 8 P = 16 P bytes.
    bf16-mixed: fp32 master weights 4 P + their bf16 copy 2 P (autocast) + fp32 grads 4 P +
    AdamW 8 P = 18 P (ZeRO-3's bf16 weights + bf16 grads + fp32 master is 16 P: ~12% less).
    `ddp`: + 4 P for DDP's gradient buckets (masters.distributed.wrap keeps
    gradient_as_bucket_view off, so the buckets are a second copy of the gradients)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    weights = params * (4 + (2 if precision == "bf16-mixed" else 0))
    return {"weights": weights, "grads": 4 * params * (2 if ddp else 1),
            "optimizer": ADAMW_BYTES * params}


def fsdp_gathered_bytes(shape: Shape, precision: str) -> int:
    """What FSDP holds whole on a rank besides its shards, during a forward and backward:
    the root unit + 2 blocks (the one computing and the one prefetched), fp32 weights 4 +
    their unsharded gradients 4 bytes per parameter (+ 2 for the bf16 autocast copy)."""
    per = 8 + (2 if precision == "bf16-mixed" else 0)
    return (shape.root_params + 2 * shape.largest_block) * per


def _layer_elements(t: Tower) -> int:
    """Entries autograd keeps per token per block: norms 2 x 3 h, q h, k and v 2 kv_dim,
    attention output h, MLP 4 I (gate, act, up, product) or 3 I (fc1, act pieces)."""
    return 8 * t.hidden + 2 * t.kv_dim + (4 if t.gated else 3) * t.intermediate


def activation_bytes(shape: Shape, rows: int, tokens: int, answer_tokens: int,
                     act_bytes: int, checkpointing: bool) -> dict[str, int]:
    """Kept for backward by one training forward of `rows` sequences of `tokens`:
    text = rows x tokens x (layers x block + 4 h) x bytes (block = `_layer_elements`);
    vision alike over rows x patches, + the pixel values;
    logits = rows x vocab x (tokens x bytes (TRAINING_FULL_LOGITS, else answer tokens)
    + LOSS_COPIES x answer tokens x 4).
    With gradient checkpointing a block keeps only its input (layers x h in place of
    layers x block) and `recompute` = the larger tower's one block, live while backward
    recomputes it."""
    def tower(t: Tower, n_tokens: int) -> tuple[int, int]:
        per_layer = t.hidden if checkpointing else _layer_elements(t)
        kept = n_tokens * (t.layers * per_layer + 4 * t.hidden) * act_bytes
        return kept, n_tokens * _layer_elements(t) * act_bytes if checkpointing else 0

    text, recompute = tower(shape.text, rows * tokens)
    out = {"text": text, "vision": 0}
    if shape.vision is not None:
        vision, block = tower(shape.vision, rows * shape.vision_tokens)
        out["vision"], recompute = vision + rows * shape.pixels * act_bytes, max(recompute, block)
    positions = tokens if TRAINING_FULL_LOGITS else answer_tokens
    out["logits"] = rows * shape.vocab * (positions * act_bytes + LOSS_COPIES * answer_tokens * 4)
    out["recompute"] = recompute
    return out


def cache_bytes(answers: int, answer_tokens: int, top_k: int, vocab: int,
                shards: int) -> dict[str, int]:
    """The response cache, per shard one answers, one scores and one distributions object:
    answers = answers x (RECORD_BYTES + tokens x (digits(vocab) + 1 + TEXT_BYTES_PER_TOKEN))
    (masters.generation's JSON lines); scores = answers x SCORE_BYTES (masters.scoring);
    distributions (masters.distributions.to_bytes) per answer token: whole vocabulary
    (top_k 0) vocab x 4 (float32 log-probs) + 4 (reference log-prob); top k: k x (4 + 4)
    (float32 log-probs, int32 ids) + 4 (tail) + 4 (reference); + 8 per answer (int64 length).
    Every object adds FRAME_BYTES, a distributions object SAFETENSORS_HEADER_BYTES."""
    tokens = answers * answer_tokens
    per_token = vocab * 4 + 4 if not 0 < top_k < vocab else top_k * 8 + 8
    ids = tokens * (len(str(vocab)) + 1 + TEXT_BYTES_PER_TOKEN)
    return {"answers": answers * RECORD_BYTES + ids + shards * FRAME_BYTES,
            "scores": answers * SCORE_BYTES + shards * FRAME_BYTES,
            "distributions": tokens * per_token + answers * 8
            + shards * (FRAME_BYTES + SAFETENSORS_HEADER_BYTES)}


# ---- the plan: every step of one config -------------------------------------------------


@dataclass
class Row:
    label: str
    parts: dict[str, int]
    total: int
    total_ckpt: int | None = None  # training: with gradient checkpointing


@dataclass
class Plan:
    run_name: str
    shapes: list[Shape]
    device_bytes: int
    device_note: str
    dtype: str  # weights of the models the run only reads
    text_tokens: int
    answer_tokens: int
    world_size: int
    train_rows: int  # sequences per rank and step
    batch_groups: int
    micro_batch_groups: int | None = None
    prune: list[Row] = field(default_factory=list)
    generate: list[Row] = field(default_factory=list)
    train: list[Row] = field(default_factory=list)
    evaluate: list[Row] = field(default_factory=list)
    cache: dict[str, int] = field(default_factory=dict)
    cache_note: str = ""
    # per precision: smallest sharded world size that fits, checkpointing (off, on)
    smallest_sharded: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.device_bytes

    def render(self) -> str:
        return render(self)


def _dtype(cfg: MastersConfig) -> tuple[str, int]:
    """The read-only models' dtype on a GPU: `auto` is bfloat16 there (models.pick_dtype)."""
    name = "bfloat16" if cfg.dtype == "auto" else cfg.dtype
    return name, 4 if name == "float32" else 2


def device_memory(gpu_memory_gib: float | None = None) -> tuple[int, str]:
    """(bytes, description): --gpu-memory if given, else CUDA device 0, else an 80 GiB GPU."""
    if gpu_memory_gib is not None:
        return int(gpu_memory_gib * GiB), f"{gpu_memory_gib:g} GiB per GPU (--gpu-memory)"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.total_memory / GiB:.1f} GiB ({props.name})"
    return 80 * GiB, "80 GiB per GPU (assumed: no CUDA device here; set --gpu-memory)"


def _ranks_to_fit(state: dict[str, int], act_at, device: int, batch_groups: int) -> int | None:
    """Smallest world size W (a divisor of batch_groups: every rank trains on whole groups)
    at which state / W + activations(W) fits; None when not even one group per rank does."""
    for w in range(1, batch_groups + 1):
        if batch_groups % w == 0 and sum(state.values()) // w + act_at(w) <= device:
            return w
    return None


def make_plan(cfg: MastersConfig, *, world_size: int = 8, gpu_memory_gib: float | None = None,
              text_tokens: int = DEFAULT_TEXT_TOKENS, image_tokens: int | None = None,
              answer_tokens: int | None = None) -> Plan:
    """Every estimate for `cfg` (see the module docstring for what is assumed)."""
    from masters.schedule import build_schedule

    scope = MaskScope(cfg.masking.include_embeddings, cfg.masking.include_lm_head)
    student = read_shape(cfg.student, "student", "student", scope, "student.path")
    teachers = [read_shape(t, "teacher", t.name, scope, f"teachers.{i}.path ({t.name})")
                for i, t in enumerate(cfg.teachers)]
    dtype, dbytes = _dtype(cfg)
    device, note = device_memory(gpu_memory_gib)
    gen, tr = cfg.generation, cfg.training
    answer = answer_tokens or gen.max_new_tokens
    group = generation.answers_per_question(gen)

    def prompt(s: Shape) -> int:
        return (image_tokens if image_tokens is not None else s.image_tokens) + text_tokens

    groups_per_rank = math.ceil(tr.batch_groups / world_size)
    rows_per_rank = groups_per_rank * group
    micro = tr.micro_batch_groups

    def forward_rows(groups_per_rank: int) -> int:
        """Sequences of one forward: a rank's share, or micro_batch_groups of it."""
        return min(groups_per_rank, micro or groups_per_rank) * group

    plan = Plan(cfg.run_name, [student, *teachers], device, note, dtype, text_tokens, answer,
                world_size, rows_per_rank, tr.batch_groups, tr.micro_batch_groups)
    sw = weight_bytes(student.params, dbytes)
    for t in teachers:
        tw = weight_bytes(t.params, dbytes)
        plan.prune.append(Row(t.name, {"weights": tw, "mask": mask_workspace_bytes(t, dbytes)},
                              tw + mask_workspace_bytes(t, dbytes)))
        sampling = 0
        for s, n in ((t, gen.teacher_answers), (student, gen.student_answers)):
            if n:
                shared = s.model_type in generation.PREFIX_SHARED_MODELS
                rows = gen.batch_size * (1 if shared else n)
                sampling = max(sampling, kv_cache_bytes(s, gen.batch_size * n,
                                                        prompt(s) + gen.max_new_tokens, dbytes)
                               + prefill_bytes(s, rows, prompt(s), dbytes))
        f_rows, f_tokens = max(1, gen.batch_size // 8) * group, prompt(t) + answer
        forcing = forcing_logits_bytes(t, f_rows, answer, dbytes) + \
            prefill_bytes(t, f_rows, f_tokens, dbytes)
        plan.generate.append(Row(t.name, {"teacher": tw, "student": sw, "sampling": sampling,
                                          "forcing": forcing},
                                 tw + sw + max(sampling, forcing)))
    tokens = prompt(student) + answer

    def act(rows: int, precision: str, ckpt: bool) -> int:
        b = 4 if precision == "fp32" else 2
        return sum(activation_bytes(student, rows, tokens, answer, b, ckpt).values())

    for precision in PRECISIONS:
        state = training_state_bytes(student.params, precision)
        ddp = training_state_bytes(student.params, precision, ddp=world_size > 1)
        sharded = {k: v // world_size for k, v in state.items()}
        sharded["gathered"] = fsdp_gathered_bytes(student, precision)
        rows = forward_rows(groups_per_rank)
        for label, parts in ((f"DDP/{world_size}", ddp), (f"sharded/{world_size}", sharded)):
            off, on = act(rows, precision, False), act(rows, precision, True)
            parts.update({"activations": off, "activations_ckpt": on})
            base = sum(v for k, v in parts.items() if not k.startswith("activations"))
            plan.train.append(Row(f"{precision} {label}", parts, base + off, base + on))
        gathered = sharded["gathered"]
        plan.smallest_sharded[precision] = tuple(_ranks_to_fit(
            state, lambda w, p=precision, c=ckpt, g=gathered: g * (w > 1) + act(
                forward_rows(tr.batch_groups // w), p, c),
            device, tr.batch_groups) for ckpt in (False, True))
    ev = cfg.evaluation
    for s in (student, *teachers):
        w = weight_bytes(s.params, dbytes)
        run = kv_cache_bytes(s, ev.batch_size, prompt(s) + ev.max_new_tokens, dbytes) + \
            prefill_bytes(s, ev.batch_size, prompt(s), dbytes)
        plan.evaluate.append(Row(s.name, {"weights": w, "answering": run}, w + run))
    stages = build_schedule(cfg.teachers, cfg.data.train_size)
    shards = sum(math.ceil(st.size / gen.shard_size) for st in stages)
    n_answers = cfg.data.train_size * group
    plan.cache = cache_bytes(n_answers, answer, gen.teacher_top_k, student.vocab, shards)
    kept = ("the whole vocabulary" if not 0 < gen.teacher_top_k < student.vocab
            else f"top {gen.teacher_top_k}")
    plan.cache_note = (f"{cfg.data.train_size} questions x {group} answers x <= {answer} "
                       f"tokens, {kept} of {student.vocab} tokens per answer token, "
                       f"{shards} shards")
    return plan


# ---- rendering ----------------------------------------------------------------------------


def fmt_bytes(n: int | float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return ["  " + line.format(*r).rstrip() for r in [header, *rows]]


def _yes(plan: Plan, n: int) -> str:
    return "yes" if plan.fits(n) else "NO"


def render(plan: Plan) -> str:
    """The plan as text tables; every size in binary units (GiB = 2^30 bytes)."""
    student = plan.shapes[0]
    out = [f"masters plan: run {plan.run_name!r}, from config.json only (meta device, no "
           "weights)",
           f"device memory: {plan.device_note}",
           f"assumed: prompt = image tokens + {plan.text_tokens} text tokens; answers of "
           f"<= {plan.answer_tokens} tokens; read-only models in {plan.dtype}", "",
           "models"]
    out += _table(["", "role", "path", "params", "in mask scope", "image tokens"],
                  [[s.name, s.role, s.path, fmt_count(s.params),
                    fmt_count(s.masked_params) if s.role == "teacher" else "-",
                    str(s.image_tokens)] for s in plan.shapes])
    out += ["", "prune: teacher weights + one tensor's |w| copy and mask"]
    out += _table(["teacher", "weights", "mask", "peak", "fits"],
                  [[r.label, fmt_bytes(r.parts["weights"]), fmt_bytes(r.parts["mask"]),
                    fmt_bytes(r.total), _yes(plan, r.total)] for r in plan.prune])
    out += ["", "generate: teacher + student weights + max(sampling: KV cache + prefill, "
            "teacher forcing: answer logits + one layer)"]
    out += _table(["teacher", "weights", "student", "sampling", "forcing", "peak", "fits"],
                  [[r.label, *(fmt_bytes(r.parts[k]) for k in ("teacher", "student",
                                                               "sampling", "forcing")),
                    fmt_bytes(r.total), _yes(plan, r.total)] for r in plan.generate])
    seq = student.image_tokens + plan.text_tokens + plan.answer_tokens
    out += ["", f"train: student, per rank at {plan.world_size} ranks ({plan.train_rows} "
            f"sequences of {seq} tokens); activations without / with gradient checkpointing"]
    if plan.micro_batch_groups:
        out.append(f"  activations of one micro-batch: training.micro_batch_groups="
                   f"{plan.micro_batch_groups} groups per forward")
    out += _table(["precision engine", "weights", "grads", "AdamW", "FSDP gathered",
                   "activations", "peak", "fits"],
                  [[r.label, fmt_bytes(r.parts["weights"]), fmt_bytes(r.parts["grads"]),
                    fmt_bytes(r.parts["optimizer"]),
                    fmt_bytes(r.parts["gathered"]) if "gathered" in r.parts else "-",
                    f"{fmt_bytes(r.parts['activations'])} / "
                    f"{fmt_bytes(r.parts['activations_ckpt'])}",
                    f"{fmt_bytes(r.total)} / {fmt_bytes(r.total_ckpt)}",
                    f"{_yes(plan, r.total)} / {_yes(plan, r.total_ckpt)}"]
                   for r in plan.train])
    need = ", ".join(f"{k} {' / '.join(str(n) if n else 'none' for n in v)}"
                     for k, v in plan.smallest_sharded.items())
    if plan.batch_groups % plan.world_size:
        out.append(f"  note: training.batch_groups={plan.batch_groups} is not divisible by "
                   f"{plan.world_size} ranks: the trainer refuses it (rows above: one group "
                   "per rank)")
    out += [f"  smallest sharded world size that fits (without / with checkpointing; a "
            f"divisor of batch_groups {plan.batch_groups}): {need}", "",
            "evaluate: one model at a time, greedy, evaluation.batch_size prompts"]
    out += _table(["model", "weights", "answering", "peak", "fits"],
                  [[r.label, fmt_bytes(r.parts["weights"]), fmt_bytes(r.parts["answering"]),
                    fmt_bytes(r.total), _yes(plan, r.total)] for r in plan.evaluate])
    total = sum(plan.cache.values())
    out += ["", f"cache on disk: {plan.cache_note}"]
    out += _table(["answers", "scores", "distributions", "total"],
                  [[fmt_bytes(plan.cache["answers"]), fmt_bytes(plan.cache["scores"]),
                    fmt_bytes(plan.cache["distributions"]), fmt_bytes(total)]])
    return "\n".join(out)
