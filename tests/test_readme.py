"""The README's Python examples run as written, top to bottom, on the default model."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_examples():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3 and all(block.strip() for block in blocks)


@pytest.mark.default_model
def test_readme_python_examples_run(tmp_path, monkeypatch, capsys, default_model_and_tokenizer):
    """Run in an empty directory that has the repository's `hparams/` tree, as a user's checkout would.
    The default model the README loads is the session's copy (same files, loaded once per test run)."""
    import easyedit_split.editor

    monkeypatch.setattr(easyedit_split.editor, "load_model_and_tokenizer", lambda *args, **kwargs: default_model_and_tokenizer)
    (tmp_path / "hparams").symlink_to(REPO / "hparams")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(README.read_text(encoding="utf-8")), start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "vectors" / "sentiment" / "caa_vector" / "layer_15.pt").is_file()
    printed = capsys.readouterr().out
    assert "0.0" in printed and "4.0" in printed  # the generation records were printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams", "vectors"]  # nothing written elsewhere
