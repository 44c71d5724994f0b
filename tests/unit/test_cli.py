"""The command-line interface: one meaning per flag across tools, and a frozen contract.

Scripts outside the repository call the tools with these flags, so a change to any flag's
name, type, arity, default, choices or requiredness must be deliberate: it changes
``tests/unit/cli_snapshot.json`` too (regenerate with ``python tests/unit/test_cli.py``).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_spec import COMMANDS, flags_of, parser_of  # noqa: E402

SNAPSHOT = Path(__file__).with_name("cli_snapshot.json")
_DEFAULT_SUFFIX = re.compile(r" \(default: .*\)$", re.DOTALL)


def current_cli() -> dict[str, dict[str, dict]]:
    """tool -> flag -> contract (help left out: wording may improve freely)."""
    cli = {}
    for path in COMMANDS:
        flags = flags_of(parser_of(path))
        cli[path.name] = {
            flag: {k: v for k, v in row.items() if k != "help"} for flag, row in flags.items()
        }
    return json.loads(json.dumps(cli))  # tuples as lists, as the snapshot holds them


def test_every_flag_has_one_help_text_and_one_type_across_tools():
    seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for path in COMMANDS:
        for flag, row in flags_of(parser_of(path)).items():
            seen[flag]["help"].add(_DEFAULT_SUFFIX.sub("", row["help"] or ""))
            seen[flag]["type"].add(row["type"])
            seen[flag]["tools"].add(path.name)
    differing = {
        flag: {key: sorted(map(str, values)) for key, values in facts.items()}
        for flag, facts in seen.items()
        if len(facts["help"]) > 1 or len(facts["type"]) > 1
    }
    assert not differing, differing
    shared = [flag for flag, facts in seen.items() if len(facts["tools"]) > 1]
    assert len(shared) >= 15  # the check has something to check


def test_cli_matches_the_snapshot():
    frozen = json.loads(SNAPSHOT.read_text())
    current = current_cli()
    assert current.keys() == frozen.keys()
    for tool, flags in frozen.items():
        assert current[tool] == flags, tool


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current_cli(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
