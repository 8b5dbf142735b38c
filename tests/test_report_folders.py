"""A report folder is a unit: a later run removes the report files the package's earlier run wrote and
this one does not, never a file the package did not write, and refuses report files of unknown origin."""
from __future__ import annotations

import json

import pytest
import torch

from easyedit_split.report_folders import (RECORD_FILE, ReportFolderError, check_report_folder, read_record,
                                           write_report_folder)


def writer(*names):
    def write(folder):
        paths = {}
        for name in names:
            (folder / name).write_text(f"new {name}")
            paths[name] = folder / name
        return paths
    return write


def test_a_later_run_removes_only_the_earlier_runs_files_it_does_not_write(tmp_path):
    write_report_folder(tmp_path, writer("results.json", "generation_results.json", "generation.png"))
    (tmp_path / "notes.txt").write_text("mine")  # the user's own file
    (tmp_path / "generation").mkdir()
    (tmp_path / "generation" / "generations.jsonl").write_text("{}\n")  # the resumable run's files
    write_report_folder(tmp_path, writer("results.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generation", "notes.txt", RECORD_FILE, "results.json"]
    assert (tmp_path / "results.json").read_text() == "new results.json"
    assert read_record(tmp_path) == {"results.json"}
    assert json.loads((tmp_path / RECORD_FILE).read_text())["complete"] is True


def test_report_files_without_a_record_are_refused_and_kept(tmp_path):
    (tmp_path / "generation_results.csv").write_text("someone's")
    with pytest.raises(ReportFolderError, match="generation_results.csv") as info:
        write_report_folder(tmp_path, writer("results.json"))
    assert str(tmp_path) in str(info.value) and "another output directory" in str(info.value)
    assert (tmp_path / "generation_results.csv").read_text() == "someone's"
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("record", ['{"broken', '["results.json"]', '{"format": "x", "files": []}',
                                    '{"format": "easyedit_split.report_files", "files": ["../outside.txt"]}'])
def test_a_malformed_or_foreign_record_is_refused(tmp_path, record):
    (tmp_path.parent / "outside.txt").write_text("keep")
    (tmp_path / RECORD_FILE).write_text(record)
    with pytest.raises(ReportFolderError, match=RECORD_FILE):
        check_report_folder(tmp_path)
    assert (tmp_path.parent / "outside.txt").exists()


def test_an_interrupted_write_leaves_an_incomplete_record_the_next_run_cleans(tmp_path):
    write_report_folder(tmp_path, writer("results.json", "generation_results.json"))

    def crash(folder):
        (folder / "results.json").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_report_folder(tmp_path, crash)
    assert json.loads((tmp_path / RECORD_FILE).read_text())["complete"] is False
    write_report_folder(tmp_path, writer("results.json", "results.csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_FILE, "results.csv", "results.json"]


def test_cli_evaluate_without_generate_drops_the_earlier_generation_results(tiny_chat_model, default_tokenizer,
                                                                           tmp_path, capsys):
    from easyedit_split.cli import main
    from easyedit_split.interventions import DynamicWeightUpdate
    from easyedit_split.steering import SteeringInterventions

    model_dir = tmp_path / "tiny"
    tiny_chat_model.save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    torch.manual_seed(3)
    SteeringInterventions({1: DynamicWeightUpdate.from_vector(torch.randn(32))}).save(tmp_path / "caa_vector")
    out = tmp_path / "report"
    argv = ["evaluate", str(tmp_path / "caa_vector"), "--dataset", "sentiment", "--multipliers=0,2",
            "--max-examples", "2", "--no-manifold", "--bootstrap", "10", "--no-progress", "--model", str(model_dir),
            "--output-dir", str(out), "--no-plots"]
    assert main(argv + ["--generate", "--max-prompts", "2", "--max-new-tokens", "2"]) == 0
    assert (out / "generation_results.json").exists() and (out / "generation_report.md").exists()
    assert main(argv) == 0
    assert not list(out.glob("generation_results.*")) and not (out / "generation_report.md").exists()
    assert "generation" not in json.loads((out / "results.json").read_text())
    assert (out / "generation" / "generations.jsonl").exists()  # resumable generations are kept
    (out / RECORD_FILE).unlink()  # report files of unknown origin now: refused before any compute
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and RECORD_FILE in err and "Traceback" not in err
