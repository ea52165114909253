"""The README and docs/ tell the truth: every `dualvae` command they show parses with the real options, every
local link exists, and the README's kernel example is the code of examples/vae_multilabel.py."""
import argparse
import glob
import os
import re
import shlex

import pytest

from dualvae.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _command_lines(text: str) -> list[str]:
    """`dualvae SUB ...` invocations in code blocks and inline code, without comments and placeholders' pipes."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines += [line.split("  #")[0].strip() for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]*dualvae [a-z-]+[^`\n]*)`", text)
    out = []
    for line in lines:
        m = re.search(r"(?:^|\s)(?:-m )?dualvae ([a-z][a-z-]*)(.*)$", line)
        if m and not line.startswith(("from ", "import ", "pip ")):
            out.append(m.group(1) + m.group(2))
    return out


def _flags(rest: str) -> list[str]:
    return [t.split("=")[0] for t in shlex.split(rest.replace("\\|", "|")) if t.startswith("--")]


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_commands_shown_use_real_options(page):
    subs = _subparsers()
    seen = 0
    for line in _command_lines(_read(page)):
        sub, _, rest = line.partition(" ")
        if sub not in subs:
            continue  # prose such as "dualvae demo's" or a package name
        known = {s for a in subs[sub]._actions for s in a.option_strings}
        bad = [f for f in _flags(rest) if f not in known]
        assert not bad, f"{os.path.basename(page)}: `dualvae {line}` shows options {bad} that `{sub}` lacks"
        seen += 1
    if os.path.basename(page) == "README.md":
        assert seen >= 10  # the parser above really found the README's commands


def test_every_option_states_its_default():
    for name, sub in _subparsers().items():
        for a in sub._actions:
            if not a.option_strings or a.dest == "help" or getattr(a, "required", False):
                continue
            assert "(default: " in (a.help or ""), f"dualvae {name} {a.option_strings[0]}: help states no default"
            assert len(a.help) > len("(default: )") + 8, f"dualvae {name} {a.option_strings[0]}: no help text"


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_local_links_exist(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(page)):
        if "://" in target:
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target))
        assert os.path.exists(path), f"{os.path.basename(page)} links to {target}, which does not exist"


@pytest.mark.parametrize("page", ["README.md", "docs/kernels.md"])
def test_kernel_example_is_the_example_file(page):
    text = _read(os.path.join(ROOT, page))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{page} has no python example"
    example = _read(os.path.join(ROOT, "examples", "vae_multilabel.py"))
    assert blocks[0].strip() and blocks[0].strip() in example, \
        f"{page}'s python example is not a verbatim part of examples/vae_multilabel.py"


def test_readme_is_a_page():
    assert len(_read(PAGES[0]).splitlines()) <= 200


def test_multilabel_head_example_is_the_example_file():
    text = _read(os.path.join(ROOT, "README.md"))
    section = text.split("## For any multi-label head", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's 'For any multi-label head' has no python example"
    example = _read(os.path.join(ROOT, "examples", "multilabel_classifier.py"))
    assert blocks[0].rstrip() in example, \
        "its python example is not a verbatim part of examples/multilabel_classifier.py"
