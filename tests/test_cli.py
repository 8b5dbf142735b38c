"""The command line: argument parsing and error reporting."""
from __future__ import annotations

import pytest

from easyedit_split.cli import main, parse_multipliers


def test_parse_multipliers_list_and_range():
    assert parse_multipliers("-2,0,2") == [-2.0, 0.0, 2.0]
    assert parse_multipliers("-1:1:0.5") == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_bad_range_is_rejected():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_multipliers("0:1")


def test_bad_hparams_file_exits_2_with_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("alg_name: caa\nlayers: [1]\nlayerz: [2]\n")
    assert main(["train", "--hparams", str(path)]) == 2
    err = capsys.readouterr().err
    assert "layerz" in err and "layers" in err and "bad.yaml" in err
