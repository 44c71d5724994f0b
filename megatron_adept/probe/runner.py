"""Stage 1 end to end: probe corpus in, ``importance.json`` (and a heatmap) out."""

from __future__ import annotations

import dataclasses
import time

import torch
from megatron.core.utils import get_model_config

from megatron_adept.checkpoint.atomic import check_output_file
from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.checkpoint.resolve import Checkpoint, open_checkpoint
from megatron_adept.config.groups import BatchConfig, TokenizerConfig
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.data.corpus import (
    check_vocabulary,
    corpus_batches,
    counted_tokens,
    load_corpus,
)
from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
from megatron_adept.errors import AdeptError, DataError
from megatron_adept.importance.unit_importance import importance_from_gradient, loss_gradient
from megatron_adept.models.pipeline import MicroBatch
from megatron_adept.parallel.collectives import barrier
from megatron_adept.parallel.log import get_logger
from megatron_adept.probe.config import METHODS, ProbeConfig
from megatron_adept.probe.heatmap import plot_importance
from megatron_adept.probe.layer_importance import masking_probe
from megatron_adept.probe.methods import cumulative_scores, fisher_scores, rank_scores
from megatron_adept.probe.scores import LayerScores
from megatron_adept.probe.selection import least_important, suggested_k

logger = get_logger(__name__)


def probe_layers(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    method: str = "masking",
    k: int | None = None,
) -> LayerScores:
    """Score every decoder layer and pick the k least important; collective, every rank.

    Unit scores (mean |θ·∂L/∂θ| per unit) are computed whatever the method.

    Args:
        model: this rank's pipeline stage.
        batches: probe micro-batches, identical on every rank.
        method: one of :data:`METHODS`.
        k: layers to select; None selects the suggested k.
    """
    num_layers = get_model_config(model).num_layers
    if method not in METHODS:
        raise AdeptError(f"unknown probe method {method!r}; choose from {', '.join(METHODS)}")
    if k is not None and not 1 <= k <= num_layers:
        raise AdeptError(f"--k={k} must be between 1 and the number of layers ({num_layers})")
    started = time.monotonic()
    gradient = loss_gradient(model, batches)
    units = importance_from_gradient(gradient)
    logger.info("unit importance: %.1fs, probe loss %.4f", time.monotonic() - started, units.loss)
    base_loss, extras = units.loss, {}
    if method == "masking":
        masking = masking_probe(model, batches)
        scores, base_loss = masking.layer_scores, masking.base_loss
        extras["masked_losses"] = masking.masked_losses
    elif method == "cumulative":
        scores = cumulative_scores(gradient)
    elif method == "rank":
        scores = rank_scores(units)
    else:
        del gradient  # the per-item passes need the memory more
        scores = fisher_scores(model, batches)
    suggested = suggested_k(scores)
    used = suggested if k is None else k
    return LayerScores(
        method=method,
        base_loss=base_loss,
        layer_scores=scores,
        unit_scores=units.per_layer(),
        suggested_k=suggested,
        k=used,
        selected=least_important(scores, used),
        counted_tokens=units.counted_tokens,
        extras=extras,
    )


def load_probe_batches(
    config: ProbeConfig, batch: BatchConfig, parallel: ParallelConfig, tokenizer: TokenizerConfig
) -> tuple[list[MicroBatch], Checkpoint]:
    """Check everything that can be checked before any process group exists, then tokenize.

    Bad flags, checkpoint, layout, output paths and probe data fail here with one message.
    """
    checkpoint = open_checkpoint(config.load, parallel)
    num_layers = checkpoint.meta.arch.num_layers
    if config.k is not None and config.k > num_layers:
        raise AdeptError(f"--k={config.k} is larger than the number of layers ({num_layers})")
    check_output_file(config.out, "--out")
    if config.plot is not None:
        check_output_file(config.plot, "--plot")
    text_tokenizer = resolve_tokenizer(tokenizer.tokenizer, checkpoint.path)
    prefix = text_prefix(text_tokenizer, tokenizer.add_bos)
    items = load_corpus(config.probe_data, text_tokenizer, prefix)
    source = tokenizer.tokenizer or f"stored in {checkpoint.path}"
    check_vocabulary(items, checkpoint.meta.arch.vocab_size, source)
    batches = corpus_batches(items, batch.seq_length, batch.micro_batch_size)
    if counted_tokens(batches) == 0:
        raise DataError(
            f"no target tokens in {config.probe_data!r} within --seq-length={batch.seq_length}"
        )
    logger.info(
        "probe corpus: %d items, %d counted tokens, %d micro-batches of %dx%d",
        len(items),
        counted_tokens(batches),
        len(batches),
        batch.micro_batch_size,
        batch.seq_length,
    )
    return batches, checkpoint


def run_probe(
    config: ProbeConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    batches: list[MicroBatch],
    checkpoint: Checkpoint,
) -> LayerScores:
    """Load the checkpoint, probe it, and write the outputs from rank 0 (process groups up)."""
    model, meta = load_model(checkpoint.path, parallel, precision.params_dtype)
    scores = probe_layers(model, batches, config.method, config.k)
    scores = dataclasses.replace(
        scores,
        extras={
            **scores.extras,
            "checkpoint": config.load,
            "model_type": meta.arch.model_type,
            "probe_data": config.probe_data,
            "seq_length": batches[0].tokens.shape[1],
        },
    )
    if torch.distributed.get_rank() == 0:
        scores.write(config.out)
        if config.plot is not None:
            plot_importance(scores, config.plot, f"{meta.arch.model_type}: {config.load}")
    barrier()
    logger.info(
        "%s: base loss %.4f, selected layers %s (k=%d, suggested k=%d); wrote %s",
        config.method,
        scores.base_loss,
        scores.selected,
        scores.k,
        scores.suggested_k,
        config.out,
    )
    return scores
