"""What one device holds at the peak of a run, per method × model × precision × world size (the planner's model).

Closed form over hizfo/core/costs.py's per-tensor shapes, for what this framework's code path allocates:

  weights      every tensor, in the precision's weight dtype (fp32; bf16 under precision=bf16); peft adapters too
  grads        Θ_FO's gradients in the weight dtype; at the AdamW step fp32 (the masters' under bf16)
  optimizer    AdamW's exp_avg and exp_avg_sq, fp32, for Θ_FO only (torch creates state lazily: only tensors that
               got a gradient), plus hizfo.core.precision.ChangeMonitor's samples (int64 index + value, ≤ 4096/tensor)
  masters      fp32 copies of Θ_FO under precision=bf16 (MasterWeights)
  activations  what autograd saves in the forward: counted on the real model's forward under FakeTensorMode
               (shapes only, no memory) with the run's trainable set, batch and length limits, autocast and dropout
  zo_buffers   hizfo/core/zo.py's noise chunk: 2^20 fp32 per CPU thread, 2^24 fp32 on CUDA (CHUNK_CPU/CHUNK_CUDA),
               cached per thread once made, so alive through every moment of a step that has a ZO part
  temporaries  the head's backward (four [N, V] fp32 tensors at once: the loss's and log_softmax's gradients and
               the shifted logits' slice backward, as traced on tiny-opt), the no-grad forward's loss (the logits,
               their fp32 copy under bf16 compute and cross_entropy's log_softmax output: ``_no_grad_forward``),
               and AdamW's step (torch's foreach path on CUDA allocates sqrt(exp_avg_sq) for a whole param group;
               the CPU single-tensor path two of the largest tensor)

The peak is the largest of the step's moments: the backward's start (activations and the head's gradients alive),
a ZO forward (Hi-ZFO holds Θ_FO's gradients through it), and the AdamW step (gradients, state, temporaries).
Profiling (Hi-ZFO, GreenTrainer) and generation are phases of their own. FSDP2 (the distributed layout: docs/design.md, "Many processes"): every block
``fully_shard``-ed, so weights, gradients, optimizer state and masters are 1/world per rank, plus, in a forward or
backward, what FSDP2 holds unsharded in the weights' dtype (two blocks and the root unit: ``_gathered``); activations
are per rank at the rank's slice of the global batch. Without sharding, each rank holds the whole model (data
parallel). What FSDP2 does not divide, as the code runs it: a bf16 ZO part (whole on every rank), the profile
(whole model, whole global batch, before sharding; on the shards with ``profile_shards``) and generation's root unit
(embeddings, head) and whole one-process batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from hizfo.core.memory_trace import ModelRoles, activations_and_roles
from hizfo.core.probe_step import CHUNK_CPU as PROBE_CPU, CHUNK_CUDA as PROBE_CUDA     # profiling's Scratch chunks
from hizfo.core.shapes import ModelShape
from hizfo.errors import ConfigError

CATEGORIES = ("weights", "grads", "optimizer", "masters", "activations", "zo_buffers", "temporaries")
FP32 = 4
CHUNK_CPU, CHUNK_CUDA = 1 << 20, 1 << 24          # hizfo/core/zo.py's noise chunks (elements)
MONITOR_SAMPLE = 4096                               # hizfo.core.precision.ChangeMonitor(sample=4096)
FO_METHODS = ("full_ft", "ft_top2", "lora", "prefix", "greentrainer")
GiB = float(1 << 30)


@dataclass(frozen=True)
class Setting:
    """One cell: what a run of it sets that memory depends on."""
    method: str
    method_cfg: tuple[tuple[str, Any], ...]
    precision: str = "fp32"
    batch: int = 4
    seq_len: int = 576                 # max_input_length + max_target_length: the longest training sequence
    eval_batch: int = 8
    prompt_len: int = 512
    new_tokens: int = 32
    beams: int = 1
    world_size: int = 1
    fsdp: bool = False
    device: str = "cuda"
    threads: int = 1                   # CPU: ZO noise chunks run one per thread
    train_dropout: bool = False
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    selection: Optional[tuple[str, ...]] = None   # Θ_FO names from a record; None: the cost-only heuristic
    profile_shards: bool = False       # the run key: Hi-ZFO / GreenTrainer profile on FSDP2's shards

    @property
    def sharded_profile(self) -> bool:
        """Whether the profile runs on the shards, by the methods' own rule (distributed.profiles_on_shards)."""
        from hizfo.core.distributed import profiles_on_shards
        return self.fsdp and profiles_on_shards(self.profile_shards, self.world_size, self.method,
                                                self.precision == "bf16")

    def cfg(self) -> dict[str, Any]:
        """The method's values: its schema's defaults (hizfo/registry.py), then what the cell sets."""
        from dataclasses import MISSING, fields
        from hizfo.registry import METHODS
        schema = METHODS.get(self.method)
        defaults = {f.name: f.default for f in fields(schema) if f.default is not MISSING} if schema else {}
        return {**defaults, **dict(self.method_cfg)}

    def check(self) -> None:
        if self.world_size <= 0:
            raise ConfigError(f"plan.world_size: must be >= 1, got {self.world_size}")
        for key in ("batch", "seq_len", "eval_batch", "prompt_len", "beams"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"plan: {key} must be >= 1, got {getattr(self, key)}")


@dataclass
class Prediction:
    """Per device: the training step's peak split by category, and the other phases' peaks (bytes)."""
    training: dict[str, int]
    moment: str                        # which moment of the step sets the training peak
    profiling: int = 0
    generation: int = 0
    selection: str = ""
    notes: list[str] = field(default_factory=list)
    fo_names: frozenset = frozenset()
    moments: dict[str, dict[str, int]] = field(default_factory=dict)   # every moment of the step (the report's)

    @property
    def training_peak(self) -> int:
        return sum(self.training.values())

    @property
    def phases(self) -> dict[str, int]:
        return {"training": self.training_peak, "profiling": self.profiling, "generation": self.generation}

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])


def _dtypes(precision: str) -> tuple[int, int]:
    """(weight bytes, compute bytes) of a precision (hizfo/core/precision.py)."""
    return {"fp32": (4, 4), "bf16-mixed": (4, 2), "bf16": (2, 2)}[precision]


def _moments(s: Setting, r: ModelRoles, act: int) -> dict[str, dict[str, int]]:
    """Each moment of the steady-state step: category -> bytes, on one device."""
    w, c = _dtypes(s.precision)
    fo, zo = r.fo_numel, r.zo_numel
    shard = s.world_size if s.fsdp else 1
    # bf16 weights of a ZO part (ZOParams' virtual mode) stay whole on every rank; all else is sharded
    whole = r.zo_numel if s.precision == "bf16" and shard > 1 else 0
    weights = (r.total_numel - whole) * w // shard + whole * w
    monitor = sum(min(n, MONITOR_SAMPLE) for n in r.fo_sizes) * 8
    # Bilevel-ZOFO's whole bf16 θ keeps its fp32 master, upper AdamW moments and ZO gradient whole too
    rep = whole if s.method == "bilevel_zofo" else 0
    optimizer = (2 * fo * FP32 + 2 * (r.extra_opt_numel - rep) * FP32) // shard + 2 * rep * FP32 + monitor
    masters = ((r.master_numel - rep) * FP32) // shard + rep * FP32 if s.precision == "bf16" else 0
    tokens = s.batch * s.seq_len // s.world_size
    head = tokens * r.vocab
    # zo.py's noise chunk is cached per thread once made: alive in every moment of the step, not just the ZO forward
    zo_buf = _zo_buffers(s, r, w) if zo else 0
    base = {"weights": weights, "optimizer": optimizer, "masters": masters, "zo_buffers": zo_buf}
    # forwards and backwards add FSDP2's unsharded parameters (none at the AdamW step: FSDP2 reshards after backward)
    running = {**base, "weights": weights + _gathered(s, r, w)}
    shifted = r.largest_zo * w + min(CHUNK_CUDA if s.device == "cuda" else CHUNK_CPU, r.largest_zo) * FP32 \
        if zo and w == 2 else 0                                       # virtual mode: one module's θ + εu at a time
    fwd_tmp = _no_grad_forward(r, tokens, head, w, c, shifted)
    moments: dict[str, dict[str, int]] = {}
    if fo:
        moments.update(_backward_moments(s, r, act, running, tokens, head, c))
        step_tmp = (r.largest_group * FP32 if s.device == "cuda" else 2 * r.largest_fo * FP32) // shard
        grads = (fo + r.extra_grad_numel - rep) * FP32 // shard + rep * FP32
        moments["optimizer step"] = {**base, "grads": grads, "temporaries": step_tmp}
    if zo and r.zo_forward:
        held = fo * w // shard if s.method == "hizfo" else 0         # Hi-ZFO: Θ_FO's grads live through L_ZO
        moments["ZO forward"] = {**running, "grads": held, "temporaries": fwd_tmp}
    if not moments:
        moments["forward"] = {"weights": running["weights"], "temporaries": fwd_tmp}
    return {k: {cat: int(v.get(cat, 0)) for cat in CATEGORIES} for k, v in moments.items()}


def _gathered(s: Setting, r: ModelRoles, w: int) -> int:
    """FSDP2's unsharded parameters in a forward or backward, beside the shards: two blocks (the current one and the
    prefetched next, or the last one's all-gather output, whose free FSDP2 defers to the next all-gather) and the root
    unit (embeddings, final norm, head: the root's forward is the whole forward, its backward the whole backward).
    In the weights' dtype: hizfo/core/distributed.py's ``shard`` sets no MixedPrecisionPolicy (bf16-mixed all-gathers
    fp32 and autocasts). Measured on tiny-opt at 2 and 4 ranks (benchmarks/planner_dist.py)."""
    if not (s.fsdp and s.world_size > 1):
        return 0
    root = r.total_numel - r.layers * r.block_numel
    return (2 * r.block_numel + root) * w


def _backward_moments(s: Setting, r: ModelRoles, act: int, base: dict[str, int], tokens: int, head: int, c: int
                      ) -> dict[str, dict[str, int]]:
    """The FO step's moments around the backward (as MemTracker traces them on tiny-opt and OPT-125m):

    loss             the saved activations and the logits (plus their fp32 copy under bf16 compute, and what the
                     model's output holds under autocast: ``_loss_held``)
    head backward    the saved activations and two [N, V] fp32 tensors (log_softmax's and the logits' gradients)
    block backward   the last block's FFN backward: two [N, ffn] (three when gated) and one [N, hidden] in compute
                     dtype, once the loss's log_softmax output and the final norm's saved input and output have
                     been freed
    """
    left, ffn = _block_backward(r, act, tokens, head, c)
    loss = head * (c + (FP32 if c != FP32 else 0)) + _loss_held(s, r, tokens, c)
    return {"loss": {**base, "activations": act, "temporaries": loss},
            "head backward": {**base, "activations": act, "temporaries": 2 * head * FP32},
            "block backward": {**base, "activations": left, "temporaries": ffn}}


def _loss_held(s: Setting, r: ModelRoles, tokens: int, c: int) -> int:
    """What the model's output keeps alive to the loss under autocast (fp32 weights, bf16 compute) that autograd
    does not save (traced per tensor on tiny-opt, benchmarks/RESULTS_planner.md, 2026-12-08): the final norm's output,
    [N, hidden] fp32 (the head saves its bf16 cast; the output's last_hidden_state holds it), and under Prefix-Tuning
    the KV cache: transformers' DynamicCache.update concatenates peft's fp32 prefix with the block's bf16 K and V
    (torch.cat promotes to fp32) and keeps the [rows, P + T] result of every block, of which sdpa saves bf16 casts.
    Freed with the output after the loss: the peak only where the head is small beside them (tiny-opt)."""
    w = _dtypes(s.precision)[0]
    if w == c:
        return 0
    held = tokens * r.hidden * w
    if s.method == "prefix":
        rows = max(1, s.batch // s.world_size)
        held += 2 * r.layers * (tokens + rows * int(s.cfg().get("num_virtual_tokens", 20))) * r.kv_width * FP32
    return held


def _block_backward(r: ModelRoles, act: int, tokens: int, head: int, c: int) -> tuple[int, int]:
    """(saved bytes still alive, temporaries) in the last block's FFN backward: freed by then are log_softmax's
    output, the head's saved input (the final norm's output) and the final norm's saved input (the last block's
    output); the FFN backward's gradients are two [N, ffn] (three when gated) and one [N, hidden]."""
    ffn = tokens * ((3 if r.gated_ffn else 2) * r.ffn_width + r.hidden) * c
    return act - min(act, head * FP32 + 2 * tokens * r.hidden * c), ffn


def _no_grad_forward(r: ModelRoles, tokens: int, head: int, w: int, c: int, shifted: int = 0) -> int:
    """What a no-grad training forward (a ZO loss) holds beyond the weights (traced per tensor on tiny-opt, OPT-125m
    and SmolLM2-135M; benchmarks/RESULTS_planner.md, MeZO): the KV cache transformers builds (the training forward
    does not pass use_cache=False) plus the largest of FFN, loss and shifted.

    KV cache   K and V of every block in compute dtype c; K in the residual stream's dtype w where K is rotated
               (llama, qwen2: the two gated families here): the rotary cos/sin are cast to the stream's dtype
               (transformers' LlamaRotaryEmbedding, ``cos.to(dtype=x.dtype)``), fp32 under bf16-mixed, and
               bf16 K times fp32 cos promotes to fp32
    FFN        its input and activation outputs (3 under a gated FFN) in c, beside 4 [N, hidden] in w: the
               embeddings' output (a local of the model's forward), the block's input, the post-attention residual
               and the normed input (OPT: its position embeddings instead); embeddings are not autocast, so under
               bf16-mixed that stream is fp32
    loss       the logits in c, their fp32 copy under bf16 compute (ForCausalLMLoss's ``logits.float()``) and
               cross_entropy's log_softmax output, [N, V] fp32 (aten's cross_entropy_loss is log_softmax, then
               nll_loss). A TorchDispatchMode does not see that output under inference_mode, where
               cross_entropy_loss reaches it as one op: traces made while MeZO's loss ran under inference_mode lacked
               it, and so did this model
    shifted    under bf16 weights, the module whose θ + εu (and its fp32 chunk copy) is largest, alive only
               during that module's forward
    """
    kv = r.layers * tokens * r.kv_width * ((w if r.gated_ffn else c) + c)
    ffn = tokens * ((3 if r.gated_ffn else 2) * r.ffn_width * c + 4 * r.hidden * w)
    return kv + max(ffn, head * (c + (FP32 if c != FP32 else 0) + FP32), shifted)


def _zo_buffers(s: Setting, r: ModelRoles, w: int) -> int:
    """hizfo/core/zo.py's noise buffers (thread-local, cached at the largest chunk each thread has filled).

    fp32 weights (``perturb_``): on CUDA one chunk of min(2^24, |Θ_ZO|) in the main thread; on CPU one chunk of
    |Θ_ZO| in the main thread when it fits 2^20, else a 2^20 chunk per worker thread (``threads``; 0: none, which is
    what MemTracker sees, since dispatch modes are thread-local). bf16 weights (virtual mode, per tensor in the main
    thread): the cached fp32 noise chunk of the largest tensor.
    """
    step = CHUNK_CUDA if s.device == "cuda" else CHUNK_CPU
    if w == 2:
        return min(step, r.largest_zo) * FP32           # the cached fp32 noise chunk (the shifted θ: a temporary)
    if s.device == "cuda" or r.zo_numel <= step:
        return min(step, r.zo_numel) * w
    return step * w * s.threads


def _profiling(s: Setting, r: ModelRoles, act_all: int) -> int:
    """hizfo/core/profiling.py: weights, one int8 code per element, one tensor's gradient at a time (the blockwise
    head keeps no [N, V] logits for fp32 heads), probe_step's ``Scratch`` (three fp32 chunks and a bool flag chunk,
    made at full size on first use: 3.25 MiB on CPU, 52 MiB on CUDA) and the larger of one pass's activations (every
    tensor trainable) and the last block's FFN backward (``_block_backward``: its gradients beside what is still
    saved; measured on tiny-opt, where it sets the profile's peak). Several processes profile the whole model on the
    whole global batch on every rank (before it is sharded, so that every rank selects what one process would):
    ``act_all`` is then the global batch's, and nothing is divided. With ``profile_shards``
    (``Setting.sharded_profile``): the shards and their codes, the root unit (embeddings, head) gathered through the
    backward with its unsharded gradient, two blocks in flight and one block's unsharded gradient before its
    reduce-scatter; ``act_all`` is the rank's rows'."""
    if s.method not in ("hizfo", "greentrainer"):
        return 0
    w, c = _dtypes(s.precision)
    chunk = PROBE_CUDA if s.device == "cuda" else PROBE_CPU
    scratch = 3 * chunk * FP32 + chunk + 8
    tokens = s.batch * s.seq_len // (s.world_size if s.sharded_profile else 1)
    left, ffn = _block_backward(r, act_all, tokens, tokens * r.vocab, c)
    passes = max(act_all, left + ffn) + scratch + 2 * r.largest_any * FP32
    if not s.sharded_profile:
        return r.total_numel * w + r.total_numel + passes
    n, root = s.world_size, r.total_numel - r.layers * r.block_numel
    return r.total_numel * w // n + r.total_numel // n + 2 * root * w + 3 * r.block_numel * w + passes


def _generation(s: Setting, r: ModelRoles) -> int:
    """Beam search with a KV cache: weights, K and V for every layer over prompt + new tokens, the cache's reorder
    copy of one layer per step, the last position's logits (generate passes logits_to_keep=1) in c and fp32, and
    the prefill's widest temporaries (about 8 × hidden per token: q, k, v, the attention output and the FFN's).
    Several processes: each rank generates whole one-process batches (its share of them); a sharded model keeps
    its root unit (embeddings, head) whole and all-gathers its blocks in each forward, two at a time
    (hizfo/core/distributed.py, ``evaluating``)."""
    w, c = _dtypes(s.precision)
    shard = s.world_size if s.fsdp else 1
    rows = s.eval_batch * s.beams
    length = s.prompt_len + s.new_tokens
    kv_layer = 2 * rows * length * r.kv_width * c
    logits = rows * r.vocab * (c + FP32)
    prefill = rows * s.prompt_len * r.hidden * c * 8
    blocks = r.layers * r.block_numel
    weights = r.total_numel * w if shard == 1 else \
        (r.total_numel - blocks) * w + blocks * w // shard + 2 * r.block_numel * w
    return weights + kv_layer * (r.layers + 1) + logits + prefill


def predict(shape: ModelShape, s: Setting) -> Prediction:
    """The per-device prediction for one cell."""
    s.check()
    if s.precision not in ("fp32", "bf16-mixed", "bf16"):
        raise ConfigError(f"precision: '{s.precision}' is not one of fp32, bf16-mixed, bf16")
    act, act_all, roles = activations_and_roles(shape, s)
    if s.world_size > 1 and s.method in ("hizfo", "greentrainer") and not s.sharded_profile:   # the whole batch
        act_all = activations_and_roles(shape, replace(s, world_size=1, fsdp=False))[1]
    moments = _moments(s, roles, act)
    moment = max(moments, key=lambda k: sum(moments[k].values()))
    pred = Prediction(training=moments[moment], moment=moment, profiling=_profiling(s, roles, act_all),
                      generation=_generation(s, roles), selection=roles.selection_note, fo_names=roles.fo_names,
                      moments=moments)
    if s.method == "greentrainer":
        pred.notes.append("GreenTrainer re-selects every 2 epochs; AdamW state then also covers earlier selections")
    return pred


def smallest_world_size(shape: ModelShape, s: Setting, gpu_bytes: int, fsdp: bool, limit: int = 64) -> Optional[int]:
    """The least world size (a divisor of the global batch, as a distributed run requires) whose per-device peak fits."""
    from dataclasses import replace
    for n in range(1, limit + 1):
        if s.batch % n:
            continue
        if predict(shape, replace(s, world_size=n, fsdp=fsdp)).peak <= gpu_bytes:
            return n
    return None
