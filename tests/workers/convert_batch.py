"""Several conversions through the library API in one process (plain python, no torchrun).

argv: a JSON list of jobs, each {"op": "to_mcore" | "to_hf", "src", "out"} with optional
"dtype", "expand" (comma-separated layers, to_mcore) and "max_shard_bytes" (to_hf). Sharing
one interpreter keeps the parity tests fast; the tools' command lines are tested separately.
"""

import json
import sys

from megatron_adept.checkpoint.convert import convert_hf_to_mcore, convert_mcore_to_hf
from megatron_adept.expansion.plan import from_layer_list
from megatron_adept.models.archs import ModelArch
from megatron_adept.parallel import runtime


def run(job: dict) -> None:
    if job["op"] == "to_mcore":
        expansion = None
        if "expand" in job:
            num_layers = ModelArch.from_hf_dir(job["src"]).num_layers
            expansion = from_layer_list(job["expand"], num_layers).layer_map()
        convert_hf_to_mcore(job["src"], job["out"], job.get("dtype"), expansion)
    else:
        shard = job.get("max_shard_bytes", 5 * 2**30)
        convert_mcore_to_hf(job["src"], job["out"], job.get("dtype"), max_shard_bytes=shard)


if __name__ == "__main__":
    with runtime.single_process():
        for job in json.loads(sys.argv[1]):
            run(job)
