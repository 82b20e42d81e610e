from pathlib import Path

import pytest
from rvc_index.config.loading import config_from_dict, dump_config, load_config, parse_override
from rvc_index.config.schema import Config, ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    config = load_config(CONFIGS / preset)
    assert config.name == preset.removesuffix(".yaml")
    written = tmp_path / "resolved.yaml"
    written.write_text(dump_config(config))
    assert load_config(written) == config


def test_rvc_classic_is_rvcs_recipe():
    config = load_config(CONFIGS / "rvc-classic.yaml")
    assert config.index.lists == "flat"
    assert (config.index.sqrt_factor, config.index.min_rows_per_list, config.index.nprobe) == (16.0, 39, 1)
    assert (config.compress.row_threshold, config.compress.n_centroids) == (200_000, 10_000)
    assert config.compress.init == "kmeans++"  # per coarse cell; RVC's own random call is method=sklearn
    assert config.index.add_batch_rows == 8192


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("index:\n  nprobes: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'index.nprobes' \(did you mean 'index.nprobe'\?\)"):
        load_config(path)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'indx'"):
        config_from_dict({"indx": {}})


@pytest.mark.parametrize("override, message", [
    ("index.nprobe=four", "index.nprobe: expected an integer"),
    ("index.nprobe=1.5", "index.nprobe: expected an integer"),
    ("index.lists=hnsw", "index.lists: 'hnsw' is not one of"),
    ("budget.big_mb=0", "budget.big_mb must be > 0"),
    ("budget.us_per_frame=-1", "budget.us_per_frame must be > 0"),
    ("compress.enabled=1", "compress.enabled: expected true or false"),
    ("index.nprobe=0", "index.nprobe must be > 0"),
    ("index=3", "index: expected a mapping"),
    ("nonsense", "--set expects key=value"),
])
def test_mistyped_values_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def test_overrides_apply_and_ints_become_floats():
    config = config_from_dict({}, ["index.nprobe=4", "compress.epochs=2", "name=mine", "seed=7"])
    assert config.index.nprobe == 4
    assert config.compress.epochs == 2.0 and isinstance(config.compress.epochs, float)
    assert (config.name, config.seed) == ("mine", 7)


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a= 3 ") == ("a", 3)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="compress.n_centroids"):
        config_from_dict({"compress": {"n_centroids": 4}})


@pytest.mark.parametrize("key, replacement", [("index.recipe=ivf-pq-fastscan-rflat", "index.lists"),
                                              ("index.k_factor=8", "RFlat"), ("index.pq_dims=1", "index.pq_m"),
                                              ("index.min_pq_rows=0", "index.min_coded_rows"),
                                              ("index.search_k=1", "k=8")])
def test_retired_keys_name_what_replaced_them(key, replacement):
    with pytest.raises(ConfigError, match=f"no longer used: .*{replacement}"):
        config_from_dict({}, [key])


def test_every_shipped_preset_writes_a_layout_every_consumer_loads():
    """No shipped preset asks for RFlat, FastScan or any top level but an IndexIVF (docs/consumers.md)."""
    from rvc_index.config.schema import LIST_FORMATS

    for path in CONFIGS.glob("*.yaml"):
        config = load_config(path)
        assert config.index.lists in (*LIST_FORMATS, "auto"), path
        assert config.budget.big_mb <= 4096 and config.budget.gpu_mb >= 2 * config.budget.big_mb, path
