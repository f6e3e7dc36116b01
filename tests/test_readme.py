"""The README stays a short entry whose commands still parse."""

import pathlib
import re
import shlex

import pytest

from s2dask.cli.main import build_parser

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    """Every ``s2dask ...`` command of the README's ``bash`` blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0].endswith("s2dask") and len(words) > 1:
                    out.append(" ".join(words[1:]))
    return out


def test_readme_is_short_and_names_the_two_commands():
    text = README.read_text()
    assert text.count("\n") <= 250 and len(text.encode()) <= 20 * 1024
    assert "s2dask demo --out s2dask-out --overwrite" in text
    assert "bash .ci/run" in text


@pytest.mark.parametrize("command", _command_lines())
def test_readme_commands_parse(command):
    build_parser().parse_args(shlex.split(command))


def test_the_readme_has_commands_to_check():
    assert len(_command_lines()) >= 8


def test_readme_links_resolve():
    missing = [link for link in re.findall(r"\]\(([^)#]+)\)", README.read_text())
               if "://" not in link and not (README.parent / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
