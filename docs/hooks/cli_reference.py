"""The command reference, generated from the argparse parsers at build time.

docs/reference/cli.md holds a marker; this MkDocs hook replaces it with every command's and
nested subcommand's `--help`, as `python -m bench ... --help` prints it (at 100 columns), so
the page cannot drift from bench/cli.py: an option added there appears here on the next
build. tests/test_docs.py calls `command_reference()` to check that nothing is left out.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- command-reference -->"
WIDTH = "100"


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) pair, depth first in the order the parser lists them."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser again
                    seen.add(id(sub))
                    yield from commands(sub, path + (name,))


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each direct subcommand, as `--help` lists it."""
    out: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                out[choice.dest] = choice.help or ""
    return out


def anchor(path: tuple[str, ...]) -> str:
    return "-".join(path) or "bench"


def help_text(parser: argparse.ArgumentParser) -> str:
    """`parser.format_help()` at a fixed width, whatever the terminal says."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def command_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown: one section per command, its subcommands linked, its `--help` verbatim."""
    if parser is None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from bench.cli import _parser
        parser = _parser()
    parts = []
    for path, sub in commands(parser):
        title = " ".join(("python -m bench",) + path)
        parts.append(f"## `{title}` {{#{anchor(path)}}}\n")
        children = subcommand_help(sub)
        if children:
            parts.append("Subcommands:\n")
            parts += [f"- [`{name}`](#{anchor(path + (name,))}): {text}"
                      for name, text in children.items()]
            parts.append("")
        parts.append("```text\n" + help_text(sub).rstrip() + "\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, command_reference())
