"""The README and the documentation site stay navigable without building the site.

`tox -e docs` (mkdocs build --strict) checks every link of the site; these tests check,
cheaply and in the main suite, what a newcomer meets first: the README's links (files and
headings), that every docs page is one click from the README, that the Quick start is
intact (.ci/run depends on it), and that the generated command reference lists every
command and option `--help` shows (docs/hooks/cli_reference.py, the page's generator).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
QUICK_START = ("python3 -m pip install -e . && python3 -m bench run --table warm",
               'python3 -m pip install "tox>=4" && python3 -m tox')


def reference_module():
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(text: str) -> str:
    """A heading's anchor as the site (Python-Markdown's toc) and GitHub make it."""
    text = re.sub(r"`|\*|\[|\]\([^)]*\)", "", text)
    text = unicodedata.normalize("NFKD", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown: str) -> set[str]:
    """Heading anchors of a Markdown file (explicit `{#id}` too), outside code fences."""
    out, fence = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            explicit = re.search(r"\{#([\w-]+)\}\s*$", line)
            out.add(explicit.group(1) if explicit else slug(line.lstrip("#").strip()))
    out |= set(re.findall(r"\{#([\w-]+)\}", markdown))
    return out


def local_links(path: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    found = [a or b for a, b in LINK.findall(text)]
    return [t for t in found if not re.match(r"[a-z]+:", t)]


def broken(path: Path) -> list[str]:
    out = []
    for target in local_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text("utf-8")):
            out.append(f"{path.name}: {target} (no heading #{anchor} in {file or path.name})")
    return out


def test_the_anchor_rule_matches_the_sites():
    assert slug("Many cells at once: `--jobs` and `--scheduler`") == \
        "many-cells-at-once-jobs-and-scheduler"
    assert slug("The README's warm and cold table runs: the LLM rows") == \
        "the-readmes-warm-and-cold-table-runs-the-llm-rows"
    assert anchors("## Title {#short}\n```\n# not a heading\n```\n") == {"short"}


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md", "molorec/README.md"])
def test_every_local_link_resolves(name):
    assert not broken(ROOT / name), "\n".join(broken(ROOT / name))


def test_every_docs_page_links_to_existing_files():
    bad = [b for page in sorted((ROOT / "docs").rglob("*.md")) for b in broken(page)
           if "(no such file)" in b]
    assert not bad, "\n".join(bad)


def test_every_docs_page_is_one_click_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in local_links(ROOT / "README.md")}
    pages = [p for p in (ROOT / "docs").glob("*.md") if p.name not in ("index.md", "benchmarks.md")]
    pages += list((ROOT / "docs" / "reference").glob("*.md"))
    missing = sorted(str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked)
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_quick_start_is_intact_and_short():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in QUICK_START:
        assert f"```bash\n{command}\n```" in readme
    assert len(readme.splitlines()) <= 260


def test_the_last_ci_command_is_in_the_readme():
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[-1] in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python3 -m tox -e docs" in commands


def help_output(argv: list[str]) -> str:
    """What `python -m bench ARGV --help` prints (in process, through bench.cli.main)."""
    from bench.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv + ["--help"])
    return out.getvalue()


def sections(reference: str) -> dict[str, str]:
    parts = re.split(r"(?m)^## `python -m bench ?([^`]*)`.*$", reference)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_command_reference_lists_every_command_and_option():
    from bench.cli import _parser
    module = reference_module()
    by_command = sections(module.command_reference())
    paths = [path for path, _ in module.commands(_parser())]
    assert ("run",) in paths and ("protocol", "build") in paths and ("data", "download") in paths
    assert sorted(by_command) == sorted(" ".join(p) for p in paths)
    for path in paths:
        shown = help_output(list(path))
        page = by_command[" ".join(path)]
        options = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", shown))
        missing = sorted(o for o in options if o not in page)
        assert not missing, f"{' '.join(path) or 'bench'}: {missing} not in the reference"
        listed = re.search(r"(?ms)^positional arguments:\n  COMMAND\n(.*?)^\S", shown + "x")
        for name in re.findall(r"(?m)^    (\S+)", listed.group(1)) if listed else []:
            assert f"[`{name}`]" in page, f"subcommand {name} not listed under {path}"


def test_the_hook_fills_the_page_and_nothing_else():
    module = reference_module()
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    filled = module.on_page_markdown(page, None, None, None)
    assert module.MARKER not in filled and "## `python -m bench run` {#run}" in filled
    assert module.on_page_markdown("no marker", None, None, None) == "no marker"


def test_the_command_line_imports_without_torch():
    """tox -e docs imports bench.cli for the reference without installing torch; keep heavy
    imports inside the commands that need them."""
    code = ("import sys, bench.cli; "
            "print(sorted({'torch', 'transformers', 'recbole'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
