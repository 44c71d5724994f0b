"""Host values cross ranks in one place: ``megatron_adept/parallel/collectives.py``.

NCCL refuses CPU tensors that gloo (our CI backend) accepts, so a module that builds a tensor
and hands it to a collective itself works in every test and crashes on a GPU cluster. This
scan allows ``torch.distributed`` collectives only in the module whose helpers put their
tensors on the communication device.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_adept"
ALLOWED = {PACKAGE / "parallel" / "collectives.py"}
COLLECTIVES = {
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_to_all",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
}


def collective_calls(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``file:line name`` of every ``torch.distributed`` collective called in ``path``."""
    tree = ast.parse(path.read_text())
    aliases = {"torch.distributed"}  # names bound to the module, e.g. `dist`
    direct = set()  # collectives imported by name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "torch.distributed"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            direct |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in COLLECTIVES:
            if ast.unparse(func.value) in aliases:
                found.append((node.lineno, func.attr))
        elif isinstance(func, ast.Name) and func.id in direct:
            found.append((node.lineno, func.id))
    return [f"{path.relative_to(root)}:{line} {name}" for line, name in sorted(found)]


def test_collectives_are_called_only_by_the_collectives_module():
    outside = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ALLOWED
        for call in collective_calls(path)
    ]
    assert outside == [], "call megatron_adept.parallel.collectives instead:\n" + "\n".join(outside)
    assert collective_calls(next(iter(ALLOWED)))  # the scan does see collectives


def test_the_scan_sees_every_spelling(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "import torch\nimport torch.distributed as dist\nfrom torch import distributed\n"
        "from torch.distributed import all_reduce as ar\n"
        "dist.all_reduce(x)\ntorch.distributed.broadcast(x, 0)\ndistributed.barrier()\nar(x)\n"
        "dist.get_rank()\n"
    )
    calls = [c.split(" ")[1] for c in collective_calls(source, tmp_path)]
    assert calls == ["all_reduce", "broadcast", "barrier", "ar"]
