"""Impossible layouts are refused before any process group exists, naming the numbers."""

import pytest
import torch.distributed as dist

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config
from megatron_adept.parallel.layout import pipeline_layer_counts, validate_layout

ARCH = ModelArch.from_hf_config(preset_config("tiny-llama"))  # 4 layers, 4 heads, 2 kv heads


def layout(tp=1, pp=1, first=None, last=None):
    return ParallelConfig(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        decoder_first_pipeline_num_layers=first,
        decoder_last_pipeline_num_layers=last,
    )


@pytest.mark.parametrize(
    "parallel, world, expected",
    [
        (
            layout(tp=8),
            8,
            "num_attention_heads=4 is not divisible by --tensor-model-parallel-size=8",
        ),
        (
            layout(tp=4),
            4,
            "num_key_value_heads=2 is not divisible by --tensor-model-parallel-size=4",
        ),
        (layout(pp=3), 3, "4 layers cannot be split over 3 pipeline stages"),
        (layout(pp=2, first=3, last=3), 2, "first=3, last=3"),
        (
            layout(tp=2, pp=2),
            6,
            "world size 6 is not divisible by tensor x pipeline parallel size 2 x 2",
        ),
    ],
)
def test_bad_layouts_name_the_numbers(parallel, world, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        validate_layout(ARCH, parallel, world)
    assert not dist.is_initialized()


def test_pipeline_counts():
    assert pipeline_layer_counts(4, layout(pp=2)) == [2, 2]
    assert pipeline_layer_counts(4, layout(pp=2, first=1)) == [1, 3]
    assert pipeline_layer_counts(10, layout(pp=3, first=2, last=2)) == [2, 6, 2]
    assert pipeline_layer_counts(32, layout(pp=3, first=10)) == [10, 11, 11]
