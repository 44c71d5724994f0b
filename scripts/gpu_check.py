"""Prove the GPU path on this machine, end to end, through the project's own tools.

  bash scripts/gpu_check.sh [--device cuda|cpu] [--out DIR] [--peak-tflops T]
                            (sets up the environment, then runs this)

On every visible GPU (torchrun, one process per GPU, NCCL): a sentencepiece tokenizer and a
random Llama-style HF model (8 layers, hidden 512, 8 query / 2 key-value heads) -> convert ->
layer-importance probe in bf16, compared with the fp32 probe on the CPU (CUDA hidden) ->
expand -> pretrain_adept.py --bf16 --use-distributed-optimizer, --mode adept, then --mode
pt-full -> export to HF -> the exported model's logits in transformers (fp32) against the
megatron forward in bf16. With Transformer Engine importable, all of it again with
--transformer-impl transformer_engine, and every trained checkpoint is also loaded with the
other layer implementation (same logits). Prints each stage's time, training tokens/s,
TFLOP/s and model FLOP utilisation (training/flops.py's step model over the median step of
train_metrics.json), the adept / pt-full step-time ratio, peak RSS and peak GPU memory, then
one PASS/FAIL line per check; exits 1 if any check fails, 2 if a stage fails.

--device cpu runs the same stages on the CPU with gloo at tiny sizes (2 processes, a 4-layer
model with hidden 64, 10 steps): bf16 runs on the CPU too, so only the backend, the sizes and
the skipped Transformer Engine part differ, and no MFU is given unless --peak-tflops is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.probe.scores import LayerScores
from megatron_adept.training.flops import step_flops
from megatron_adept.workflow.stages import REPO, Stages, WorkflowError, check_output, tool, torchrun

DATA = REPO / "examples" / "data"
MARKER = ".gpu_check"
"""Marks an output directory as this script's, so a rerun may replace it."""
MIN_FREE_BYTES = 2 * 2**30
MODES = ("adept", "pt-full")

PROBE_ATOL, PROBE_RTOL = 1e-3, 0.05
"""bf16 probe vs fp32 probe: every layer score within PROBE_ATOL + PROBE_RTOL x the largest
|fp32 score| (loss units; the scores are loss increases of about 1e-2 on a random model)."""
LOGITS_MAX_RTOL, LOGITS_MEAN_RTOL = 0.05, 0.025
"""bf16 logits vs the fp32 reference: max |diff| <= 5% of max |ref| and mean |diff| <= 2.5%
of mean |ref| (bf16 keeps 8 significant bits; about 0.5% was measured on the CPU)."""

PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
)
"""Dense bf16 peak per GPU by device-name substring (first match wins; datasheet figures)."""


@dataclass(frozen=True)
class Sizes:
    """How big the check is on one kind of device."""

    preset: str
    """tools/init_model.py --preset of the random HF model."""
    vocab: int
    """Tokenizer vocabulary (the model's follows it)."""
    probe_items: int
    """Leading items of the bundled probe corpus used by the probes and the ADEPT refresh."""
    probe_seq: int
    """Probe --seq-length."""
    seq_length: int
    """Training --seq-length."""
    micro_batch: int
    accumulation: int
    """Micro-batches per data-parallel rank and step."""
    train_iters: int
    k: int
    """Layers the expansion copies."""
    parity_batch: int
    parity_seq: int
    """Shape of the token batch whose logits are compared."""


SIZES = {
    "cuda": Sizes("llama-8x512", 4096, 64, 256, 1024, 8, 2, 30, 2, 4, 512),
    "cpu": Sizes("tiny-llama", 512, 16, 128, 128, 2, 2, 10, 1, 2, 128),
}


@dataclass(frozen=True)
class Check:
    """One PASS/FAIL line of the report."""

    name: str
    passed: bool
    detail: str


@dataclass
class Row:
    """One line of the table."""

    stage: str
    seconds: float
    peak_rss_mib: float
    peak_gpu_mib: float | None
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None


class GpuMemory:
    """Peak GPU memory of a stage, sampled with nvidia-smi every 100 ms.

    Sampling outside the stage's processes needs no change to the tools and counts what the
    device really holds (CUDA context and allocator cache included), per GPU above what was
    in use before the stage started; the largest GPU's figure is reported.
    """

    def __init__(self) -> None:
        # nvidia-smi ignores CUDA_VISIBLE_DEVICES: keep the GPUs it names by index (all of
        # them when it names none, or names them by UUID).
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        self._indices = {int(v) for v in visible if v.strip().isdigit()} or None
        self.available = shutil.which("nvidia-smi") is not None

    def _query(self, *extra: str) -> list[str]:
        return [
            "nvidia-smi",
            "--query-gpu=index,memory.used",
            "--format=csv,noheader,nounits",
            *extra,
        ]

    def _parse(self, text: str) -> dict[int, list[float]]:
        samples: dict[int, list[float]] = {}
        for line in text.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                index = int(fields[0])
                if self._indices is None or index in self._indices:
                    samples.setdefault(index, []).append(float(fields[1]))
        return samples

    @contextmanager
    def sample(self) -> Iterator[list[float]]:
        """Yields a list that holds the stage's peak in MiB once the block is left."""
        peak: list[float] = []
        if not self.available:
            yield peak
            return
        base = self._parse(subprocess.run(self._query(), capture_output=True, text=True).stdout)
        with tempfile.TemporaryFile("w+") as sink:
            sampler = subprocess.Popen(self._query("-lms", "100"), stdout=sink, text=True)
            try:
                yield peak
            finally:
                sampler.terminate()
                sampler.wait()
                sink.seek(0)
                used = self._parse(sink.read())
        rises = [max(v) - min(base.get(i, [0.0])) for i, v in used.items() if v]
        if rises:
            peak.append(max(0.0, *rises))


class GpuCheck:
    """The stages, their measurements and the checks of one run into ``out``."""

    def __init__(self, device: str, nproc: int, out: Path, peak_tflops: float | None) -> None:
        self.device, self.nproc, self.out = device, nproc, out
        self.sizes = SIZES[device]
        self.peak_tflops = peak_tflops
        self.stages = Stages(log=out / "gpu_check.log")
        self.gpu_memory = GpuMemory() if device == "cuda" else None
        self.rows: list[Row] = []
        self.checks: list[Check] = []
        self.notes: list[str] = []

    # -- running ---------------------------------------------------------------------------

    def stage(self, name: str, cmd: list, processes: int = 1) -> Row:
        """Run one stage (see :class:`Stages`), record its row, print one progress line."""
        sampling = self.gpu_memory.sample() if self.gpu_memory else _no_sampling()
        try:
            with sampling as gpu_peak:
                self.stages.run(name, cmd, processes)
        except WorkflowError:
            print(f"{name}: FAILED; last lines of {self.stages.log}:", file=sys.stderr)
            lines = self.stages.log.read_text(errors="replace").splitlines()
            print("\n".join(lines[-25:]), file=sys.stderr)
            raise
        row = Row(
            name,
            self.stages.times[name],
            self.stages.peak_rss_mib[name],
            gpu_peak[0] if gpu_peak else None,
        )
        self.rows.append(row)
        print(f"  {name}: {row.seconds:.0f} s", flush=True)
        return row

    def launch(self, script: Path) -> list:
        """``script`` on every process of the run: torchrun over the GPUs or CPU ranks."""
        return torchrun(self.nproc, script)

    def run(self, impls: list[str]) -> None:
        """Every stage and check; ``impls``: the layer implementations to run the path with."""
        sizes, out = self.sizes, self.out
        tokenizer, hf, base = out / "tokenizer", out / "hf", out / "base"
        probe = out / "probe.jsonl"
        lines = (DATA / "general_probe.jsonl").read_text().splitlines(keepends=True)
        probe.write_text("".join(lines[: sizes.probe_items]))
        self.stage(
            "train tokenizer",
            tool("train_tokenizer.py")
            + ["--input", DATA / "general_train.jsonl", DATA / "domain_train.jsonl"]
            + ["--vocab-size", sizes.vocab, "--output", tokenizer],
        )
        self.stage(
            "random HF model",
            tool("init_model.py")
            + ["--preset", sizes.preset, "--tokenizer", tokenizer]
            + ["--out", hf],
        )
        (out / "data").mkdir()
        self.stage(
            "preprocess",
            tool("preprocess_data.py")
            + ["--input", DATA / "domain_train.jsonl", "--output-prefix", out / "data" / "domain"]
            + ["--tokenizer", tokenizer, "--workers", 2],
        )
        self.stage("convert", tool("convert_hf.py") + ["--hf-dir", hf, "--out", base])
        probe_args = ["--load", base, "--probe-data", probe, "--seq-length", sizes.probe_seq]
        reference = out / "importance_fp32_cpu.json"
        self.stage(
            "probe fp32 (CPU)",
            ["env", "CUDA_VISIBLE_DEVICES="]
            + tool("probe_importance.py")
            + [*probe_args, "--out", reference],
        )
        for impl in impls:
            self.stage(
                f"probe bf16 ({impl})",
                self.launch(REPO / "tools" / "probe_importance.py")
                + [*probe_args, "--bf16", "--transformer-impl", impl]
                + ["--out", out / f"importance_{impl}.json"],
                self.nproc,
            )
            self.check_probe(impl, reference, out / f"importance_{impl}.json")
        expanded, importance = out / "expanded", out / f"importance_{impls[0]}.json"
        self.stage(
            "expand",
            tool("expand_ckpt.py")
            + ["--load", base, "--out", expanded, "--importance", importance, "--k", sizes.k],
        )
        trained = {}
        for impl in impls:
            for mode in MODES:
                trained[impl, mode] = self.train(impl, mode, expanded, probe)
        parity = out / "parity.json"
        loads = [out / f"{impl}_{mode}" for impl, mode in trained]
        self.stage(
            "logits vs transformers",
            [sys.executable, REPO / "scripts" / "logits_parity.py", "--load", *loads]
            + ["--hf-dir", *[out / f"{impl}_{mode}_hf" for impl, mode in trained]]
            + ["--data", DATA / "domain_eval.jsonl", "--bf16", "--impls", *impls]
            + ["--batch", sizes.parity_batch, "--seq-length", sizes.parity_seq, "--out", parity],
        )
        self.check_parity(json.loads(parity.read_text()), loads)
        for impl in impls:
            adept, full = trained[impl, "adept"], trained[impl, "pt-full"]
            self.notes.append(
                f"step time adept / pt-full ({impl}): {adept / full:.2f} "
                f"(median step {adept * 1e3:.1f} ms / {full * 1e3:.1f} ms)"
            )

    def train(self, impl: str, mode: str, expanded: Path, probe: Path) -> float:
        """One training run, its export, and its checks; returns its median step seconds."""
        sizes, save = self.sizes, self.out / f"{impl}_{mode}"
        global_batch = sizes.micro_batch * sizes.accumulation * self.nproc
        row = self.stage(
            f"train {mode} ({impl})",
            self.launch(REPO / "pretrain_adept.py")
            + ["--load", expanded, "--save", save, "--mode", mode, "--probe-data", probe]
            + ["--data-path", self.out / "data" / "domain", "--split", "100,0,0"]
            + ["--bf16", "--use-distributed-optimizer", "--transformer-impl", impl]
            + ["--train-iters", sizes.train_iters, "--global-batch-size", global_batch]
            + ["--micro-batch-size", sizes.micro_batch, "--seq-length", sizes.seq_length]
            + ["--lr", "1e-3", "--min-lr", "1e-4", "--log-interval", 10],
            self.nproc,
        )
        self.stage(
            f"export {mode} ({impl})",
            tool("convert_hf.py") + ["--to-hf", "--load", save, "--out", f"{save}_hf"],
        )
        return self.check_training(f"train {mode} ({impl})", mode, save, row)

    # -- checks ----------------------------------------------------------------------------

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))

    def check_probe(self, impl: str, reference: Path, got: Path) -> None:
        ref, test = LayerScores.read(reference), LayerScores.read(got)
        worst = max(abs(a - b) for a, b in zip(ref.layer_scores, test.layer_scores, strict=True))
        allowed = PROBE_ATOL + PROBE_RTOL * max(abs(s) for s in ref.layer_scores)
        self.add(
            f"probe bf16 ({impl}) vs fp32 CPU",
            worst <= allowed,
            f"max |score diff| {worst:.2e} (allowed {allowed:.2e}); base loss {test.base_loss:.4f} "
            f"vs {ref.base_loss:.4f}; selected {test.selected} vs {ref.selected}",
        )

    def check_training(self, name: str, mode: str, save: Path, row: Row) -> float:
        """Every step finite, the loss went down; fills the row's throughput columns."""
        ckpt, _ = resolve_load(save)
        steps = json.loads((ckpt / "train_metrics.json").read_text())["steps"]
        values = [s["loss"] for s in steps] + [s["grad_norm"] for s in steps]
        finite = all(v is not None and math.isfinite(v) for v in values)
        first, last = steps[0]["loss"], statistics.fmean(s["loss"] for s in steps[-3:])
        complete = len(steps) == self.sizes.train_iters
        self.add(
            name,
            finite and complete and last < first,
            f"{len(steps)} steps, all finite: {finite}; loss {first:.4f} -> {last:.4f}",
        )
        median = statistics.median(s["seconds"] for s in steps)
        meta = CheckpointMeta.load(ckpt)
        trainable = meta.layer_map.copy_indices if mode == "adept" else None
        tokens = steps[-1]["tokens"]
        flops = step_flops(meta.arch, trainable, self.sizes.seq_length, tokens).total
        row.tokens_per_s = tokens / median
        row.tflops = flops / median / 1e12
        if self.peak_tflops:
            row.mfu = row.tflops / (self.peak_tflops * self.nproc)
        return median

    def check_parity(self, result: dict, loads: list[Path]) -> None:
        for load in loads:
            entry = result[str(load)]
            for impl, stats in entry["megatron"].items():
                self.add(f"logits {load.name} [{impl}] vs transformers", *_within(stats))
            for pair, stats in entry["cross"].items():
                self.add(f"logits {load.name} [{pair}]", *_within(stats))

    # -- report ----------------------------------------------------------------------------

    def report(self, total_seconds: float) -> int:
        """Print the table, notes and checks; the exit code (1 if any check failed)."""
        header = (
            f"{'stage':34s} {'time s':>7s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} "
            f"{'peak RSS MiB':>12s} {'peak GPU MiB':>12s}"
        )
        print("\n" + header)
        for r in self.rows:
            print(
                f"{r.stage:34s} {r.seconds:7.1f} {_cell(r.tokens_per_s, '.0f', 10)} "
                f"{_cell(r.tflops, '.3f', 8)} {_cell(r.mfu, '.1%', 6)} {r.peak_rss_mib:12.0f} "
                f"{_cell(r.peak_gpu_mib, '.0f', 12)}"
            )
        print()
        for note in self.notes:
            print(note)
        for check in self.checks:
            print(f"{'PASS' if check.passed else 'FAIL'} {check.name}: {check.detail}")
        failed = [c for c in self.checks if not c.passed]
        if failed:
            verdict = f"{len(failed)} of {len(self.checks)} checks FAILED"
        else:
            verdict = f"all {len(self.checks)} checks passed"
        print(f"{verdict} in {total_seconds:.0f} s; outputs in {self.out}")
        return 1 if failed else 0


@contextmanager
def _no_sampling() -> Iterator[list[float]]:
    yield []


def _within(stats: dict[str, float]) -> tuple[bool, str]:
    """(passed, detail) of logits stats against the bf16 tolerance."""
    max_ok = stats["max_abs_diff"] <= LOGITS_MAX_RTOL * stats["ref_max_abs"]
    mean_ok = stats["mean_abs_diff"] <= LOGITS_MEAN_RTOL * stats["ref_mean_abs"]
    detail = (
        f"max |diff| {stats['max_abs_diff']:.3g} (max |ref| {stats['ref_max_abs']:.3g}), "
        f"mean |diff| {stats['mean_abs_diff']:.3g} (mean |ref| {stats['ref_mean_abs']:.3g}), "
        f"argmax agreement {stats['argmax_agreement']:.3f}"
    )
    return max_ok and mean_ok, detail


def _cell(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def visible_gpus() -> int:
    """GPUs torch sees (honours CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count()


def transformer_engine_importable() -> bool:
    """Whether the TE layer spec can run here (in a subprocess: importing TE is heavy)."""
    code = (
        "import sys; from megatron_adept.models.builder import transformer_engine_available; "
        "sys.exit(0 if transformer_engine_available() else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def peak_tflops_of_gpu() -> float | None:
    """The datasheet bf16 peak of GPU 0, or None for a device not in the table."""
    import torch

    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def prepare_output(out: Path) -> None:
    """A fresh ``out``: created, or an earlier run's replaced; anything else is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise WorkflowError(f"{out} is not empty and not an earlier gpu_check output")
        shutil.rmtree(out)
    check_output(out, MIN_FREE_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="What to check.")
    parser.add_argument(
        "--out", default=str(REPO / "runs" / "gpu_check"), help="Output directory (replaced)."
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="Dense bf16 peak TFLOP/s of one device, for MFU (default: from the GPU's name).",
    )
    args = parser.parse_args()
    start = time.monotonic()
    out = Path(args.out).resolve()
    if args.device == "cuda":
        nproc = visible_gpus()
        if nproc == 0:
            print("error: no CUDA GPU visible (--device cpu checks the CPU)", file=sys.stderr)
            sys.exit(2)
        peak = args.peak_tflops or peak_tflops_of_gpu()
        impls = ["local", "transformer_engine"] if transformer_engine_importable() else ["local"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every stage on the CPU, GPU node or not
        nproc, peak, impls = 2, args.peak_tflops, ["local"]
    check = GpuCheck(args.device, nproc, out, peak)
    if args.device == "cpu":
        check.notes.append(
            f"CPU mode: gloo instead of NCCL, {nproc} processes, preset {check.sizes.preset}, "
            f"{check.sizes.train_iters} steps; bf16 as on GPUs; Transformer Engine part skipped"
        )
    elif len(impls) == 1:
        check.notes.append("Transformer Engine not importable: TE spec checks skipped")
    if peak is None:
        check.notes.append("MFU not computed: unknown device peak (pass --peak-tflops)")
    try:
        prepare_output(out)
        print(
            f"gpu_check: {args.device}, {nproc} processes, specs {', '.join(impls)}; log "
            f"{check.stages.log}",
            flush=True,
        )
        check.run(impls)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(check.report(time.monotonic() - start))


if __name__ == "__main__":
    main()
