"""What the step benchmarks share: a mode's Stage-2 setup, synthetic batches, phase timers and
a memory account.

A mode is set up with the calls ``Trainer.setup`` makes (``build_model``, ``apply_plan``,
``stop_backward_below``, ``wrap_ddp``, ``build_optimizer``, ``UnitUpdateScaling``) and stepped
with the trainer's ``train_step``; the timers are hooks around that code, not a copy of it.
Weights are random unless a checkpoint is given: the time of a step does not depend on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from megatron_adept.checkpoint.mcore_io import load_model_weights
from megatron_adept.checkpoint.metadata import LayerMap
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.data.datasets import global_batches
from megatron_adept.expansion.plan import ExpansionPlan
from megatron_adept.models import builder
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import MicroBatch, stop_backward_below
from megatron_adept.models.units import UNIT_NAMES, model_units
from megatron_adept.optimizer.build import build_optimizer, wrap_ddp
from megatron_adept.optimizer.config import OptimizerSettings
from megatron_adept.optimizer.unit_lr import decoupled_multipliers, uniform_multipliers
from megatron_adept.optimizer.update_scaling import UnitUpdateScaling, main_params
from megatron_adept.training.flops import StepFlops, step_flops
from megatron_adept.training.modes import TrainPlan, apply_plan, plan_for_mode
from megatron_adept.training.step import StepResult, train_step

MODES = ("adept", "no-stage2", "llama-pro", "no-stage1", "pt-full")

PHASES = (
    "data",
    "zero grad",
    "forward: decoder",
    "forward: output layer + loss",
    "backward: output layer + loss",
    "backward: decoder",
    "grad sync (DDP)",
    "loss reduce",
    "grad norm + clip",
    "update rescale",
    "optimizer",
)
"""The phases of one step, in the order they run."""


MALLOC_POLICIES = ("keep", "system")
"""``keep``: glibc keeps freed memory for the next step (:func:`keep_freed_memory`);
``system``: the malloc's own defaults."""

WARMUP_STEPS = 2
"""Untimed steps before timing: under ``keep`` the first two steps grow the heap (page faults),
later ones reuse it."""

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_kept_freed_memory = False


def _preloaded_malloc() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((n for n in ("jemalloc", "tcmalloc") if n in preload), None)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory torch frees, so the next step reuses it.

    By default glibc serves a large block it cannot place in its heap with a fresh mapping and
    unmaps it when freed, and returns a heap's free top to the kernel: a step's large
    transients (logits, the embedding's and output layer's gradients) are then faulted in and
    zero-filled again every step, at a cost that varies from machine to machine. On a GPU,
    torch's caching allocator keeps freed blocks; this is the CPU's equivalent, the same for
    every mode. Returns whether it took effect (glibc only; not under a preloaded malloc).
    """
    global _kept_freed_memory
    if platform.libc_ver()[0] != "glibc" or _preloaded_malloc():
        return False
    libc = ctypes.CDLL(None)
    _kept_freed_memory = bool(
        libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )
    return _kept_freed_memory


def add_malloc_argument(parser) -> None:
    """``--malloc``, one of :data:`MALLOC_POLICIES`, for a step benchmark's parser."""
    parser.add_argument(
        "--malloc",
        choices=MALLOC_POLICIES,
        default="keep",
        help="keep: glibc keeps freed memory for the next step, as a GPU's caching allocator "
        "does (no page faults a step); system: the malloc's defaults",
    )


def set_malloc_policy(policy: str) -> None:
    """Apply a :data:`MALLOC_POLICIES` entry, first thing in the process."""
    if policy == "keep" and not keep_freed_memory():
        raise SystemExit("error: --malloc keep needs glibc's malloc (use --malloc system)")


def allocator() -> str:
    """The malloc serving torch's CPU tensors and its settings, for the results header: they
    decide the page faults of a step (see :func:`keep_freed_memory`; a preloaded jemalloc or
    tcmalloc has its own policy, and ``GLIBC_TUNABLES`` or ``MALLOC_CONF`` change either)."""
    name = _preloaded_malloc()
    if name:
        described = f"{name} (LD_PRELOAD={os.environ['LD_PRELOAD']})"
    elif _kept_freed_memory:
        described = (
            "glibc malloc keeping freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
        )
    else:
        described = "glibc malloc"
    settings = [
        f"{k}={os.environ[k]}" for k in ("GLIBC_TUNABLES", "MALLOC_CONF") if os.environ.get(k)
    ]
    return " ".join([described, *settings])


def layer_map_of(mode: str, num_layers: int, copies: tuple[int, ...], pro: tuple[int, ...]):
    """(layer map, layers no-stage1 trains) of ``mode`` on a base model of ``num_layers``.

    adept, no-stage2 and pt-full run on the model expanded after ``copies``, llama-pro on
    the one expanded after ``pro``, no-stage1 on the base model training ``copies``.
    """
    if mode == "no-stage1":
        return LayerMap.identity(num_layers), copies
    after = pro if mode == "llama-pro" else copies
    return ExpansionPlan(after, num_layers, "benchmark").layer_map(), None


def _plan(mode: str, layer_map: LayerMap, selected: tuple[int, ...] | None) -> TrainPlan:
    if selected is None:
        return plan_for_mode(mode, layer_map, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "importance.json"
        scores = [1.0] * layer_map.num_original  # the ranking is not read, only "selected"
        path.write_text(json.dumps({"layer_scores": scores, "selected": list(selected)}))
        return plan_for_mode(mode, layer_map, str(path))


def spread_multipliers(keys):
    """Multipliers in [0, 2] that differ between the units of every fused tensor.

    A stand-in for a probe's: the per-element rescale then takes its most general path.
    """
    scores = {key: ((7 * key[0] + 3 * UNIT_NAMES.index(key[1])) % 11) / 10 for key in keys}
    return {(u.layer, u.unit): u.multiplier for u in decoupled_multipliers(scores)}


@contextlib.contextmanager
def core_attention(kind: str):
    """Build models with ``kind`` core attention: ``sdpa`` (the builder's) or ``local``
    (megatron-core's ``DotProductAttention``, the spec before SDPA), for before/after runs."""
    if kind == "sdpa":
        yield
        return
    plain = lambda arch, *_: get_gpt_layer_local_spec(  # noqa: E731
        qk_layernorm=arch.family.qk_layernorm, normalization="RMSNorm"
    )
    with mock.patch.object(builder, "layer_spec", plain):
        yield


class RandomTokens(torch.utils.data.Dataset):
    """Samples shaped like ``GPTDataset``'s (tokens, shifted labels, loss mask), random ids."""

    def __init__(self, vocab_size: int, seq_length: int, length: int, seed: int = 0) -> None:
        self.vocab_size, self.seq_length, self.length, self.seed = (
            vocab_size,
            seq_length,
            length,
            seed,
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        ids = torch.randint(0, self.vocab_size, (self.seq_length + 1,), generator=generator)
        return {"tokens": ids[:-1], "labels": ids[1:], "loss_mask": torch.ones(self.seq_length)}


def synthetic_batches(
    arch: ModelArch, seq_length: int, global_batch: int, micro_batch: int, steps: int
) -> Iterator[list[MicroBatch]]:
    """The training loop's batching (``global_batches``) over random token ids."""
    dataset = RandomTokens(arch.vocab_size, seq_length, global_batch * steps)
    return global_batches(dataset, global_batch, micro_batch, 0, 1)


class PhaseTimer:
    """Wall time, CPU time, kernel time and page faults per phase of a step, from hooks in
    the model and the optimizer.

    Each :meth:`mark` starts a phase and ends the previous one; a phase that occurs more than
    once in a step (one forward per micro-batch, the rescale's snapshot and its update) adds
    up. Kernel (system) time and minor page faults show the cost of fresh memory: the kernel
    zero-fills every page a process touches for the first time.
    """

    FIELDS = ("wall", "cpu", "sys", "faults")

    def __init__(self) -> None:
        self._events: list[tuple[str, tuple[float, ...]]] = []
        self.handles: list = []

    def mark(self, phase: str) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = (time.perf_counter(), time.process_time(), usage.ru_stime, usage.ru_minflt)
        self._events.append((phase, now))

    def take(self) -> dict[str, tuple[float, ...]]:
        """{phase: (wall s, CPU s, kernel s, page faults)} since the last take; the last mark
        only closes the step."""
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(self.FIELDS))
        for (phase, start), (_, end) in zip(self._events, self._events[1:], strict=False):
            for i, (a, b) in enumerate(zip(start, end, strict=True)):
                totals[phase][i] += b - a
        self._events = []
        return {phase: tuple(values) for phase, values in totals.items()}

    def watch_model(self, ddp: torch.nn.Module) -> None:
        gpt = ddp.module
        config = gpt.config

        def decoder_done(module, args, output):
            self.mark("forward: output layer + loss")
            if output.requires_grad:
                output.register_hook(lambda grad: self.mark("backward: decoder"))

        self.handles += [
            gpt.register_forward_pre_hook(lambda *_: self.mark("forward: decoder")),
            gpt.decoder.register_forward_hook(decoder_done),
            gpt.register_forward_hook(lambda *_: self.mark("backward: output layer + loss")),
        ]
        finalize = config.finalize_model_grads_func

        def timed_finalize(*args, **kwargs):
            self.mark("grad sync (DDP)")
            finalize(*args, **kwargs)
            self.mark("loss reduce")

        config.finalize_model_grads_func = timed_finalize

    def watch_optimizer(self, optimizer, inner_hooks_first: bool) -> None:
        """Marks around the inner optimizers' steps; call once before and once after the
        update rescale registers its own hooks, so that its share is timed apart."""
        inners = {id(m.inner): m.inner for m in main_params(optimizer)}.values()
        for inner in inners:
            if inner_hooks_first:
                self.handles.append(
                    inner.register_step_pre_hook(lambda *_: self.mark("update rescale"))
                )
                self.handles.append(
                    inner.register_step_post_hook(lambda *_: self.mark("update rescale"))
                )
            else:
                self.handles.append(inner.register_step_pre_hook(lambda *_: self.mark("optimizer")))
                self.handles.append(
                    inner.register_step_post_hook(lambda *_: self.mark("optimizer"))
                )
        if inner_hooks_first:
            prepare = optimizer.prepare_grads

            def timed_prepare():
                self.mark("grad norm + clip")
                return prepare()

            optimizer.prepare_grads = timed_prepare


@dataclass
class ModeRun:
    """One mode's model, optimizer and timers, ready to step."""

    mode: str
    arch: ModelArch
    plan: TrainPlan
    ddp: torch.nn.Module
    optimizer: object
    scaling: UnitUpdateScaling
    flops: StepFlops
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def step(self, batches: Iterator[list[MicroBatch]]) -> tuple[StepResult, dict]:
        """One training step; returns its result and {phase: PhaseTimer.FIELDS values}."""
        self.timer.mark("data")
        micro_batches = next(batches)
        self.timer.mark("zero grad")
        result = train_step(self.ddp, self.optimizer, micro_batches)
        self.timer.mark("end")
        return result, self.timer.take()


def build_mode(
    mode: str,
    base: ModelArch,
    copies: tuple[int, ...],
    pro: tuple[int, ...],
    seq_length: int,
    tokens: int,
    parallel: ParallelConfig,
    load: tuple[str, LayerMap] | None = None,
    attention: str = "sdpa",
) -> ModeRun:
    """Set ``mode`` up as ``pretrain_adept.py`` does (process groups must exist).

    Args:
        load: (checkpoint directory, its layer map): weights are read when the mode's layer
            map is the checkpoint's.
        attention: core attention, ``sdpa`` or ``local`` (see :func:`core_attention`).
    """
    layer_map, selected = layer_map_of(mode, base.num_layers, copies, pro)
    arch, plan = base.with_layers(len(layer_map)), _plan(mode, layer_map, selected)
    from_checkpoint = load is not None and load[1] == layer_map
    with core_attention(attention):
        model = build_model(arch, parallel, init_weights=not from_checkpoint)
    if from_checkpoint:
        load_model_weights(model, load[0])
    apply_plan(model, plan)
    stop_backward_below(model, plan.lowest_layer)
    ddp = wrap_ddp(model, use_distributed_optimizer=False)
    optimizer = build_optimizer(ddp, OptimizerSettings(lr=1e-4))
    timer = PhaseTimer()
    timer.watch_model(ddp)
    timer.watch_optimizer(optimizer, inner_hooks_first=True)
    tp = parallel.tensor_model_parallel_size
    units = [u for u in model_units(model, tp) if u.param.requires_grad]
    scaling = UnitUpdateScaling(optimizer, units)
    timer.watch_optimizer(optimizer, inner_hooks_first=False)
    keys = sorted({(u.layer, u.unit) for u in units})
    if plan.decoupled:
        scaling.set_multipliers(spread_multipliers(keys))
    else:
        scaling.set_multipliers({(u.layer, u.unit): 1.0 for u in uniform_multipliers(keys)})
    flops = step_flops(arch, plan.layers, seq_length, tokens)
    return ModeRun(mode, arch, plan, ddp, optimizer, scaling, flops, timer)


# ---------------------------------------------------------------------------------------------
# Memory account


def _nbytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def static_memory(run: ModeRun) -> dict[str, int]:
    """Bytes of weights, gradient buffers, optimizer state and the rescale's snapshots."""
    params = list(run.ddp.module.parameters())
    grads = [b.grad_data for b in run.ddp.buffers + run.ddp.expert_parallel_buffers]
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    state = []
    for entry in main_params(run.optimizer):
        if entry.main.untyped_storage().data_ptr() not in param_ptrs:
            state.append(entry.main)
        for value in entry.inner.state.get(entry.main, {}).values():
            if torch.is_tensor(value) and value.numel() > 1:
                state.append(value)
    snapshots = sum(main.nbytes for scaled in run.scaling._scaled.values() for main, _ in scaled)
    return {
        "weights": _nbytes(params),
        "gradients": _nbytes(grads),
        "optimizer state": _nbytes(state),
        "rescale snapshots": snapshots,
    }


class TensorPeak:
    """Peak bytes of live tensors while the context is open: what torch's CPU allocator hands
    out, counted from the profiler's allocation events, as ``torch.cuda.max_memory_allocated``
    counts on a GPU. Unlike the RSS it leaves out the libraries and the malloc's kept memory.

    Tensors alive when the context opens are not counted: open it before the model exists.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._profile = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )

    def __enter__(self) -> TensorPeak:
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        # profile.events() folds allocation events into their ops; the raw ones are here.
        events = sorted(
            (e.start_ns(), e.nbytes())
            for e in self._profile.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
        live = 0
        for _, nbytes in events:
            live += nbytes
            self.peak = max(self.peak, live)


class SavedActivations:
    """Bytes autograd saves for backward during one forward, by region of the model.

    Parameters saved by their modules are weights, not activations, and are left out; a
    storage shared by several saved tensors counts once.
    """

    def __init__(self, run: ModeRun) -> None:
        self.run = run
        self._region = "embedding"
        self._params = {p.untyped_storage().data_ptr() for p in run.ddp.module.parameters()}
        self._seen: dict[int, tuple[str, int]] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._params and ptr not in self._seen:
            self._seen[ptr] = (self._region, storage.nbytes())
        return tensor

    def measure(self, batches: Iterator[list[MicroBatch]]) -> dict[str, int]:
        """Run one step with the account on; returns {region: bytes}."""
        from megatron_adept.models.units import decoder_layers, layer_index

        gpt = self.run.ddp.module
        trainable = set(self.run.plan.layers or range(self.run.arch.num_layers))
        lowest = min(trainable)
        handles = []
        for layer in decoder_layers(gpt):
            index = layer_index(layer)
            region = (
                "trainable layers"
                if index in trainable
                else "frozen layers above the lowest trainable"
                if index > lowest
                else "frozen layers below"
            )
            handles.append(layer.register_forward_pre_hook(lambda *_, r=region: self._set(r)))
        handles.append(
            gpt.decoder.final_layernorm.register_forward_pre_hook(
                lambda *_: self._set("final norm, output layer, loss")
            )
        )
        self._seen = {}
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                self.run.step(batches)
        finally:
            for handle in handles:
                handle.remove()
        regions: dict[str, int] = defaultdict(int)
        for region, nbytes in self._seen.values():
            regions[region] += nbytes
        return dict(regions)

    def _set(self, region: str) -> None:
        self._region = region
