"""Tests for easyedit_split.hparams: EasyEdit files load, mistakes fail with useful messages."""
import logging
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from easyedit_split.dtypes import resolve_dtype
from easyedit_split.errors import HparamsError
from easyedit_split.hparams import (
    ApplyCAAHyperParams,
    ApplyRePSHyperParams,
    ApplySFTHyperParams,
    ApplySplitHyperParams,
    CAAHyperParams,
    HyperParams,
    RePSHyperParams,
    SFTHyperParams,
    SplitHyperParams,
    TopLevelConfig,
    load_hparams,
)
from easyedit_split.models import validate_layers
from easyedit_split.registry import hparams_class

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "easyedit_hparams"
OUR_HPARAMS = REPO / "hparams"
# EasyEdit's own experiment files: the shared snapshot next to the repository (override with
# EASYEDIT_CHECKOUT=<path of an EasyEdit checkout>). Absent: skipped locally, a failure under CI=1.
EASYEDIT_CHECKOUT = Path(os.environ.get("EASYEDIT_CHECKOUT") or REPO.parent / "shared" / "easyedit-14cea82")
EASYEDIT_TREE = EASYEDIT_CHECKOUT / "hparams" / "Steer" / "experiment_hparams" / "spilt_experiment"


def _require_easyedit_tree() -> None:
    if EASYEDIT_TREE.is_dir():
        return
    message = f"EasyEdit's spilt_experiment tree not found at {EASYEDIT_TREE} (set EASYEDIT_CHECKOUT)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def write(tmp_path: Path, text: str, name: str = "h.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------- EasyEdit's files load unchanged


def test_easyedit_spilt_vector_file_loads_with_its_values():
    hparams = load_hparams(FIXTURES / "psychopathy_gemma_generate_spilt_vector.yaml")
    assert type(hparams) is SplitHyperParams
    assert hparams.alg_name == "spilt"
    assert hparams.layers == [20]
    assert hparams.margin_penalty_weight == 8.0
    assert hparams.margin_threshold == 0.3
    assert hparams.steering_factors == [2.0 * i for i in range(1, 11)]
    assert hparams.use_cache is False


def test_easyedit_spilt_default_substraction_norm_reads_as_normal():
    assert SplitHyperParams().substraction_type == "normal"
    assert SplitHyperParams(substraction_type="norm").substraction_type == "normal"


def test_easyedit_keys_missing_from_file_take_easyedit_defaults():
    hparams = load_hparams(FIXTURES / "psychopathy_gemma_generate_spilt_vector.yaml")
    # not in the file: EasyEdit's SpiltHyperParams defaults
    assert hparams.weight_decay == 0.0 and hparams.all_labels is False
    assert hparams.intervention_components == "mlp_mid"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("psychopathy_gemma_generate_spilt_lora.yaml", SplitHyperParams),
        ("powerseeking_gemma_generate_spilt_local_weight.yaml", SplitHyperParams),
        ("axbench_gemma_generate_spilt_lora.yaml", SplitHyperParams),
        ("axbench_qwen_generate_spilt_lora_XXXXX.yaml", SplitHyperParams),
        ("psychopathy_qwen_generate_reps_vector.yaml", RePSHyperParams),
        ("psychopathy_qwen_generate_sft_loss.yaml", SFTHyperParams),
        ("psychopathy_qwen_generate_sft_lora.yaml", SFTHyperParams),
        ("psychopathy_qwen_generate_caa.yaml", CAAHyperParams),
        ("psychopathy_qwen_apply_caa.yaml", ApplyCAAHyperParams),
        ("psychopathy_gemma_apply_spilt.yaml", ApplySplitHyperParams),
        ("axbench_gemma_apply_reps.yaml", ApplySFTHyperParams),  # EasyEdit's file says alg_name: sft
    ],
)
def test_easyedit_fixture_loads_as_its_class(name, cls):
    assert type(load_hparams(FIXTURES / name)) is cls


def test_easyedit_old_intervention_method_weight_reads_as_local_weight(caplog):
    with caplog.at_level(logging.WARNING, logger="easyedit_split.hparams"):
        hparams = load_hparams(FIXTURES / "powerseeking_gemma_generate_spilt_local_weight.yaml")
    assert hparams.intervention_method == "local_weight"
    assert "weight" in caplog.text


def test_every_easyedit_spilt_experiment_method_file_loads():
    _require_easyedit_tree()
    import yaml

    files = sorted(p for p in EASYEDIT_TREE.rglob("*.yaml") if "config" not in p.name)
    assert len(files) == 90  # find spilt_experiment -name "*.yaml" ! -name "*config*"
    for path in files:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        hparams = load_hparams(path)
        # the values a run depends on come through unchanged (not just "nothing raised")
        assert hparams.layers == raw["layers"], path
        assert hparams.alg_name in type(hparams).ALG_NAMES, path
        for key in ("lr", "n_epochs", "batch_size", "steering_factors", "intervention_method", "low_rank_dimension",
                    "loss_type", "margin_penalty_weight", "multipliers"):
            if key in raw and hasattr(hparams, key) and raw[key] is not None:
                expected = "local_weight" if (key, raw[key]) == ("intervention_method", "weight") else raw[key]  # alias
                assert getattr(hparams, key) == expected, (path, key)


def test_every_easyedit_spilt_experiment_top_level_config_loads():
    _require_easyedit_tree()
    import yaml

    configs = sorted(EASYEDIT_TREE.rglob("*config*.yaml"))
    assert configs
    for path in configs:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        config = TopLevelConfig.from_hparams(path)
        if raw.get("seed") is not None:
            assert config.seed == raw["seed"], path


# ----------------------------------------------------------------- our hparams/ tree


def test_every_method_file_in_our_hparams_loads():
    files = [p for p in OUR_HPARAMS.rglob("*.yaml") if "config" not in p.name]
    assert files
    for path in files:
        load_hparams(path)


def test_our_top_level_configs_load_and_resolve_their_method_files():
    for path in OUR_HPARAMS.rglob("*config*.yaml"):
        config = TopLevelConfig.from_hparams(path)
        config.load_train_hparams(base_dir=REPO)
        config.load_apply_hparams(base_dir=REPO)


def test_our_default_config_targets_the_offline_model_on_cpu():
    config = TopLevelConfig.from_hparams(OUR_HPARAMS / "config.yaml")
    trained = config.load_train_hparams(base_dir=REPO)
    assert {h.model_name_or_path for h in trained} == {"smollm2-135m-instruct"}
    assert {h.device for h in trained} == {"cpu"}
    assert {h.steer_train_dataset for h in trained} == {"sentiment"}
    assert all(h.steer_vector_output_dir.startswith("vectors/smollm2-135m-instruct/") for h in trained)


def test_smollm2_layers_exist_in_a_30_layer_model():
    for path in OUR_HPARAMS.rglob("smollm2-135m-instruct/**/*.yaml"):
        validate_layers(load_hparams(path).layers, 30, source=str(path))


# ----------------------------------------------------------------- errors


def test_unknown_key_names_file_key_and_closest_valid_key(tmp_path):
    path = write(tmp_path, "alg_name: split\nlayers: [3]\nmargin_treshold: 0.5\n")
    with pytest.raises(HparamsError) as info:
        load_hparams(path)
    message = str(info.value)
    assert str(path) in message
    assert "margin_treshold" in message
    assert "margin_threshold" in message


def test_train_key_in_apply_file_says_which_class_owns_it(tmp_path):
    path = write(tmp_path, "alg_name: split\nlayers: [3]\nmultipliers: [1.0]\nsteering_factors: [2.0]\n")
    with pytest.raises(HparamsError, match="SplitHyperParams"):
        load_hparams(path)


def test_wrong_type_for_layers_names_file_key_expected_and_got(tmp_path):
    path = write(tmp_path, 'alg_name: split\nlayers: "abc"\n')
    with pytest.raises(HparamsError) as info:
        load_hparams(path)
    message = str(info.value)
    assert str(path) in message and "'layers'" in message
    assert "list of int" in message and "str" in message


def test_wrong_type_for_lr_names_expected_float_and_got_list(tmp_path):
    path = write(tmp_path, "alg_name: sft\nlr: [1]\n")
    with pytest.raises(HparamsError, match=r"'lr': expected float, got list"):
        load_hparams(path)


def test_scientific_notation_string_becomes_float(tmp_path):
    path = write(tmp_path, "alg_name: split\nlr: 1e-4\n")  # PyYAML reads 1e-4 as a string
    assert load_hparams(path).lr == pytest.approx(0.0001)


def test_non_numeric_string_for_float_is_rejected():
    with pytest.raises(HparamsError, match="'lr'"):
        SplitHyperParams(lr="fast")


def test_concepts_id_is_read_as_concept_id_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "alg_name: spilt\nlayers: [20]\nmultipliers: [1.0]\nconcepts_id: 3\n")
    with caplog.at_level(logging.WARNING, logger="easyedit_split.hparams"):
        hparams = load_hparams(path)
    assert hparams.concept_id == 3
    assert "concepts_id" in caplog.text


def test_missing_alg_name_is_an_error_that_says_what_to_add(tmp_path):
    path = write(tmp_path, "layers: [3]\n")
    with pytest.raises(HparamsError, match="alg_name"):
        load_hparams(path)


def test_unknown_alg_name_suggests_the_closest(tmp_path):
    path = write(tmp_path, "alg_name: spit\n")
    with pytest.raises(HparamsError, match="did you mean 'spilt'|did you mean 'split'"):
        load_hparams(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "alg_name: split\nlayers: [3\nlr: 0.1\n")
    with pytest.raises(HparamsError) as info:
        load_hparams(path)
    message = str(info.value)
    assert f"{path}:" in message and "malformed YAML" in message
    line = int(message.split(f"{path}:")[1].split(":")[0])
    assert line in (2, 3)


def test_class_refuses_a_file_of_another_alg():
    with pytest.raises(HparamsError, match="load_hparams"):
        SFTHyperParams.from_hparams(FIXTURES / "psychopathy_gemma_generate_spilt_vector.yaml")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"intervention_method": "vectr"}, "intervention_method"),
        ({"intervention_components": "mlp_out"}, "intervention_components"),
        ({"substraction_type": "subtract"}, "substraction_type"),
        ({"preference_pairs": ["orig_add", "orig_mul"]}, "preference_pairs"),
        ({"batch_size": 0}, "batch_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"neg_loss_weight": -0.1}, "neg_loss_weight"),
        ({"dropout": 1.0}, "dropout"),
        ({"layers": [-1]}, "layers"),
    ],
)
def test_invalid_split_values_are_rejected_naming_the_key(kwargs, key):
    with pytest.raises(HparamsError, match=key):
        SplitHyperParams(**kwargs)


def test_caa_refuses_lora():
    with pytest.raises(HparamsError, match="intervention_method"):
        CAAHyperParams(intervention_method="lora")


def test_apply_multipliers_must_match_layers():
    with pytest.raises(HparamsError, match="multipliers"):
        ApplySplitHyperParams(layers=[1, 2, 3], multipliers=[1.0, 2.0])


# ----------------------------------------------------------------- dispatch, sections, dicts


def test_tables_map_both_spellings_of_split():
    assert hparams_class("split", "train") is hparams_class("spilt", "train") is SplitHyperParams
    assert hparams_class("split", "apply") is hparams_class("spilt", "apply") is ApplySplitHyperParams


def test_flat_file_with_multipliers_is_an_apply_file(tmp_path):
    path = write(tmp_path, "alg_name: reps\nlayers: [4]\nmultipliers: [2.0]\n")
    assert type(load_hparams(path)) is ApplyRePSHyperParams


def test_kind_forces_the_table(tmp_path):
    path = write(tmp_path, "alg_name: reps\nlayers: [4]\n")
    assert type(load_hparams(path, kind="apply")) is ApplyRePSHyperParams


def test_sectioned_file_generate_section_merges_shared_keys():
    hparams = load_hparams(FIXTURES / "merged_reps.yaml", section="generate")
    assert type(hparams) is RePSHyperParams
    assert hparams.layers == [20]  # shared
    assert hparams.n_epochs == 1 and hparams.batch_size == 2  # generate section


def test_sectioned_file_apply_section():
    hparams = load_hparams(FIXTURES / "merged_reps.yaml", kind="apply")
    assert type(hparams) is ApplyRePSHyperParams
    assert hparams.layers == [20] and hparams.multipliers == [1.0] and hparams.concept_id == 0


def test_sectioned_file_without_kind_asks_for_one():
    with pytest.raises(HparamsError, match="kind="):
        load_hparams(FIXTURES / "merged_caa.yaml")


def test_class_from_hparams_reads_its_own_section():
    assert ApplyCAAHyperParams.from_hparams(FIXTURES / "merged_caa.yaml").multipliers == [1.0]
    assert CAAHyperParams.from_hparams(FIXTURES / "merged_caa.yaml").multiple_choice is False


def test_typo_in_the_other_section_is_still_reported(tmp_path):
    path = write(tmp_path, "alg_name: caa\nlayers: [2]\ngenerate:\n  multiple_choice: false\napply:\n  multiplier: [1.0]\n")
    with pytest.raises(HparamsError, match="multiplier"):
        load_hparams(path, section="generate")


def test_from_hparams_accepts_dict_and_dictconfig():
    data = {"alg_name": "split", "layers": [5], "lr": "5e-3"}
    assert SplitHyperParams.from_hparams(data).lr == pytest.approx(0.005)
    assert SplitHyperParams.from_hparams(OmegaConf.create(data)).layers == [5]


def test_path_without_yaml_suffix_is_accepted():
    stem = str(FIXTURES / "psychopathy_qwen_generate_caa")
    assert load_hparams(stem).layers == [14]


def test_to_yaml_round_trips(tmp_path):
    original = load_hparams(FIXTURES / "psychopathy_gemma_generate_spilt_lora.yaml")
    original.to_yaml(tmp_path / "out.yaml")
    assert load_hparams(tmp_path / "out.yaml") == original


def test_no_default_model_in_hparams():
    """The model comes from the file, the top-level config or the user (tests/test_model_required.py)."""
    assert HyperParams().model_name_or_path is None


# ----------------------------------------------------------------- top-level config


def test_top_level_config_reads_easyedit_keys():
    config = TopLevelConfig.from_hparams(FIXTURES / "config.yaml")
    assert config.steer_train_dataset == ["powerseeking"]
    assert config.steer_vector_output_dirs == ["vectors/qwen2.5-7b-it/caa/"]
    assert config.generation_params == {"max_new_tokens": 25, "temperature": 0.9, "do_sample": True}
    assert config.generation_data_size is None and config.num_responses == 1


def test_top_level_config_vector_name_and_torch_dtype_alias():
    assert TopLevelConfig.from_hparams(FIXTURES / "axbench_config.yaml").vector_name is None
    assert TopLevelConfig.from_hparams(FIXTURES / "config_merged.yaml").dtype == "bfloat16"


def test_top_level_model_keys_override_method_file_keys_only_when_written():
    config = TopLevelConfig.from_hparams({"model_name_or_path": "m", "dtype": "bf16", "seed": 7})
    method = SplitHyperParams(use_cache=False, seed=1, device="cuda:3")
    merged = config.merge_into(method)
    assert (merged.model_name_or_path, merged.dtype, merged.seed) == ("m", "bf16", 7)
    assert merged.use_cache is False and merged.device == "cuda:3"  # not in the config: kept


def test_top_level_config_accepts_dictconfig_and_method_overrides():
    cfg = OmegaConf.create({"device": "cpu", "steering_factors": [3.0], "steer_vector_load_dir": "vectors/x"})
    config = TopLevelConfig.from_hparams(cfg)
    assert config.steer_vector_load_dir == ["vectors/x"]
    assert config.merge_into(SplitHyperParams()).steering_factors == [3.0]
    assert not hasattr(config.merge_into(ApplyCAAHyperParams()), "steering_factors")


def test_top_level_unknown_key_suggests_closest():
    with pytest.raises(HparamsError, match="steer_train_hparam_paths"):
        TopLevelConfig.from_hparams({"steer_train_hparams_path": ["a.yaml"]})


def test_top_level_config_assigns_output_dirs_by_index(tmp_path):
    first = write(tmp_path, "alg_name: caa\nlayers: [1]\n", "a.yaml")
    second = write(tmp_path, "alg_name: split\nlayers: [2]\n", "b.yaml")
    config = TopLevelConfig.from_hparams(
        {"steer_train_hparam_paths": [str(first), str(second)], "steer_vector_output_dirs": ["out/a", "out/b"],
         "steer_train_dataset": "sentiment"}
    )
    loaded = config.load_train_hparams()
    assert [h.steer_vector_output_dir for h in loaded] == ["out/a", "out/b"]
    assert [type(h) for h in loaded] == [CAAHyperParams, SplitHyperParams]


def test_top_level_missing_method_file_is_named(tmp_path):
    config = TopLevelConfig.from_hparams({"apply_steer_hparam_paths": ["nope/apply.yaml"]})
    with pytest.raises(HparamsError, match="nope/apply.yaml"):
        config.load_apply_hparams(base_dir=tmp_path)


# ----------------------------------------------------------------- layers and dtypes


def test_validate_layers_accepts_layers_inside_the_model():
    assert validate_layers([0, 29], 30) == [0, 29]


def test_validate_layers_names_source_and_key_for_out_of_range_layer():
    with pytest.raises(HparamsError) as info:
        validate_layers([20, 30], 30, source="gen.yaml")
    message = str(info.value)
    assert "gen.yaml" in message and "'layers'" in message and "30" in message and "0..29" in message


@pytest.mark.parametrize(
    "name, expected",
    [
        ("fp32", torch.float32), ("float32", torch.float32),
        ("fp16", torch.float16), ("float16", torch.float16), ("half", torch.float16),
        ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
        (torch.float16, torch.float16), (None, torch.float32),
    ],
)
def test_resolve_dtype_names(name, expected):
    assert resolve_dtype(name) is expected


def test_resolve_dtype_auto_and_unknown():
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(HparamsError, match="bf16|bfloat16"):
        resolve_dtype("bfloat61")


def test_hparams_dtype_object_is_stored_as_its_name():
    assert SplitHyperParams(dtype=torch.bfloat16).dtype == "bfloat16"
    with pytest.raises(HparamsError, match="dtype"):
        SplitHyperParams(dtype="int3")


def test_out_of_range_layer_is_both_a_config_and_a_model_error():
    from easyedit_split.errors import ModelError

    with pytest.raises(HparamsError) as info:
        validate_layers([5], 4)
    assert isinstance(info.value, ModelError)


def test_check_layer_uses_the_same_check():
    from easyedit_split.models import check_layer

    class Tiny(torch.nn.Module):  # a Llama-shaped stack of 3 layers
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"model_type": "llama"})()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in range(3))

    assert check_layer(Tiny(), 2) == 2
    with pytest.raises(HparamsError, match=r"key 'layers': layer 3 is outside the model, which has 3 decoder layers \(valid: 0..2\)"):
        check_layer(Tiny(), 3)


# ----------------------------------------------------------------- outputs stay where the user says


def test_default_output_dir_is_the_current_directory():
    assert SplitHyperParams().steer_vector_output_dir == "."
    for path in OUR_HPARAMS.rglob("generate_*.yaml"):
        hparams = load_hparams(path, kind="train")
        resolved = (Path.cwd() / hparams.steer_vector_output_dir).resolve()
        assert resolved == Path.cwd().resolve() or Path.cwd().resolve() in resolved.parents, path
