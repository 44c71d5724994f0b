"""Every command's flags, read from its parser: the CLI tests' shared view of the tools."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

from torchrun_harness import REPO

COMMANDS = sorted((REPO / "tools").glob("*.py")) + [REPO / "pretrain_adept.py"]


def parser_of(path: Path) -> argparse.ArgumentParser:
    """The tool's parser, built from its ``COMMAND`` without running it."""
    return runpy.run_path(str(path), run_name="cli_spec")["COMMAND"].parser()


def flags_of(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """flag -> its contract: type, arity, default, choices, whether required, help."""
    rows = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        rows[action.option_strings[0]] = {
            "type": getattr(action.type, "__name__", None)
            if action.type is not None
            else ("bool" if isinstance(action, argparse.BooleanOptionalAction) else None),
            "nargs": action.nargs,
            "default": action.default,
            "choices": None if action.choices is None else list(action.choices),
            "required": action.required,
            "help": action.help,
        }
    return rows
