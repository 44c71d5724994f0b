"""Flags of ``tools/convert_hf.py`` (light to import: checked before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import load_flag, out_flag, overwrite_flag
from megatron_adept.config.parallel import DTYPE_NAMES
from megatron_adept.errors import AdeptError


@dataclass
class ConvertConfig:
    """What to convert, and where to."""

    out: str = out_flag()
    hf_dir: str | None = arg(None, "Hugging Face model directory (config.json + safetensors).")
    to_hf: bool = arg(
        False, "Export the megatron checkpoint given by --load to Hugging Face format."
    )
    load: str | None = load_flag(None)
    dtype: str | None = arg(
        None, "Parameter dtype of the output (default: the input's).", choices=tuple(DTYPE_NAMES)
    )
    overwrite: bool = overwrite_flag()
    max_shard_size_gb: float = arg(5.0, "Largest safetensors shard written by --to-hf, in GiB.")

    def __post_init__(self) -> None:
        if self.to_hf and (self.load is None or self.hf_dir is not None):
            raise AdeptError("--to-hf needs --load CKPT (and no --hf-dir)")
        if not self.to_hf and (self.hf_dir is None or self.load is not None):
            raise AdeptError(
                "give --hf-dir DIR to convert from Hugging Face, or --to-hf --load CKPT"
            )
        require_positive(self, "max_shard_size_gb")

    @property
    def max_shard_bytes(self) -> int:
        return int(self.max_shard_size_gb * 2**30)
