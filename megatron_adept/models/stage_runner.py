"""Run a pipeline stage layer by layer, outside megatron's schedules, for forward-only probes.

The Stage-1 masking probe needs what the schedules cannot give: start the stack at an
arbitrary layer from a cached hidden state, skip one layer, and stop early. This module
exposes the stage's pieces (embedding, decoder layers, head, vocab-parallel loss) and moves
hidden states ``[s, b, h]`` between neighbouring stages with point-to-point sends.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.models.forward import MicroBatch, position_ids_like
from megatron_adept.models.units import decoder_layers, layer_index


class StageRunner:
    """This rank's stage of a bare ``GPTModel``, callable piece by piece (no grad)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.indices = [layer_index(layer) for layer in self.layers]
        self.first = parallel_state.is_pipeline_first_stage()
        self.last = parallel_state.is_pipeline_last_stage()
        self.group = parallel_state.get_pipeline_model_parallel_group()
        self.stage = parallel_state.get_pipeline_model_parallel_rank()
        self.device = next(model.parameters()).device

    def embed(self, batch: MicroBatch) -> torch.Tensor:
        tokens = batch.tokens.to(self.device)
        return self.model.embedding(input_ids=tokens, position_ids=position_ids_like(tokens))

    def rotary(self, seq_length: int) -> torch.Tensor:
        return self.model.rotary_pos_emb(seq_length)

    def run_layers(
        self, hidden: torch.Tensor, rotary: torch.Tensor, start: int = 0, skip: int | None = None
    ) -> torch.Tensor:
        """Apply local layers from position ``start``, bypassing global layer ``skip``."""
        for layer, index in zip(self.layers[start:], self.indices[start:], strict=True):
            if index != skip:
                hidden, _ = layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary)
        return hidden

    def run_layers_caching(
        self, hidden: torch.Tensor, rotary: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Apply every local layer; also return the input of each (for prefix reuse)."""
        inputs = []
        for layer in self.layers:
            inputs.append(hidden)
            hidden, _ = layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rotary)
        return hidden, inputs

    def token_losses(self, hidden: torch.Tensor, batch: MicroBatch) -> torch.Tensor:
        """Per-token loss ``[b, s]`` from the last stage's hidden states."""
        hidden = self.model.decoder.final_layernorm(hidden)
        weight = (
            self.model.shared_embedding_or_output_weight()
            if self.model.share_embeddings_and_output_weights
            else None
        )
        logits, _ = self.model.output_layer(hidden, weight=weight)
        return self.model.compute_language_model_loss(batch.labels.to(self.device), logits)

    def send_next(self, hidden: torch.Tensor) -> None:
        dist.send(hidden.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())

    def recv_prev(self, like: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        hidden = torch.empty(like, dtype=dtype, device=self.device)
        dist.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
        return hidden
