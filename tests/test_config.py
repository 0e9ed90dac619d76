"""Config loading, overrides and validation: every bad value is a ConfigError naming the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lookahead import ConfigError, load_config
from lookahead.config import parse_override


def test_presets_load_and_validate():
    """Every shipped preset loads."""
    for name in ("default", "tiny"):
        assert load_config(name).gamma >= 1


def test_top_level_temperature_sets_both_sides_and_nested_keys_override():
    """temperature=X sets draft and target; a nested key wins whatever the order."""
    cfg = load_config("tiny", ["target_sampling.temperature=0.7", "temperature=0.2", "seed=3"])
    assert cfg.draft_sampling.temperature == 0.2
    assert cfg.target_sampling.temperature == 0.7
    assert cfg.draft_sampling.seed == cfg.target_sampling.seed == 3


def test_yaml_top_level_shorthand(tmp_path):
    """A preset's top-level temperature fills both sides unless a side sets its own."""
    path = tmp_path / "c.yaml"
    path.write_text("temperature: 0.5\ndraft_sampling:\n  temperature: 0.9\ntarget: {backend: fake}\ndraft: {backend: fake}\n")
    cfg = load_config(path)
    assert (cfg.draft_sampling.temperature, cfg.target_sampling.temperature) == (0.9, 0.5)


def test_primary_shorthands():
    """--set verifier=NAME and --set draft=PATH reach the primary field of the section."""
    cfg = load_config("tiny", ["verifier=normalized", "draft=/some/dir", "draft.backend=hf"])
    assert cfg.verifier.name == "normalized"
    assert cfg.draft.model == "/some/dir"


def test_delimiter_override_parses_yaml_escapes():
    """A quoted YAML string turns \\n into a newline."""
    assert load_config("tiny", ['step_delimiter="\\n"']).step_delimiter == "\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gama=2", "unknown config key 'gama'"),
        ("gamma=0", "gamma"),
        ("gamma=two", "integer"),
        ("temperature=-1", "temperature must be >= 0"),
        ("top_p=0", "top_p"),
        ("mode=fast", "mode 'fast' is unknown"),
        ("verifier=psychic", "verifier 'psychic' is unknown"),
        ("target.backend=tpu", "backend 'tpu' is unknown"),
        ("target.nope=1", "unknown config key 'target.nope'"),
        ("max_total_tokens=0", "max_total_tokens"),
        ("step_delimiter=", "step_delimiter"),
        ("prompt_template=no placeholder", "{question}"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_raise_actionable_errors(override, message):
    """Each bad override is refused with a message naming the key."""
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_config("tiny", [override])


def test_unknown_preset_lists_presets():
    """An unknown config name lists every shipped preset, sorted."""
    shipped = sorted(p.stem for p in (Path(__file__).parents[1] / "lookahead" / "configs").glob("*.yaml"))
    assert {"default", "tiny", "cpu-llamacpp"} <= set(shipped)
    with pytest.raises(ConfigError, match=re.escape("presets: " + ", ".join(shipped))):
        load_config("nonexistent")


def test_parse_override_types():
    """Values are YAML scalars: ints, floats, bools, strings."""
    assert parse_override("gamma=3") == ("gamma", 3)
    assert parse_override("stop_at_final_answer=false") == ("stop_at_final_answer", False)
    assert parse_override("target.model=a/b") == ("target.model", "a/b")


def test_non_finite_numbers_are_refused_on_every_path():
    """NaN / infinity passed every range check (nan < 0 is False): --set, a per-request override
    (JSON allows NaN) and a plain dict are refused naming the key, options dicts included."""
    from lookahead.config import config_from_dict, with_overrides

    cfg = load_config("tiny")
    for call in (
        lambda: load_config("tiny", ["top_k=.inf"]),
        lambda: with_overrides(cfg, {"temperature": float("nan")}),
        lambda: with_overrides(cfg, {"verifier.options.threshold": float("inf")}),
        lambda: config_from_dict({"target": {"backend": "fake", "options": {"x": [1.0, float("nan")]}}}),
    ):
        with pytest.raises(ConfigError, match="must be a finite number"):
            call()


def test_counts_named_tokens_are_not_secrets_and_credentials_are():
    """public_dict showed max_new_tokens and prefix_cache_tokens as *** ('token' matched 'tokens')."""
    from lookahead.config import is_secret_key

    public = load_config("tiny", ["target.api_key=sk-1"]).public_dict()
    assert public["target_sampling"]["max_new_tokens"] == 256 and public["target"]["prefix_cache_tokens"] == 16384
    assert public["target"]["api_key"] == "***"
    assert [k for k in ("hf_token", "access_token", "api-key", "tokenizer", "num_tokens") if is_secret_key(k)] == [
        "hf_token", "access_token", "api-key"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("lookahead eval --modes 'ar,lr[target.api_key=sk-1,gamma=2]'", "lookahead eval --modes 'ar,lr[target.api_key=***,gamma=2]'"),
        ("--set=target.api_key=a=b --set gamma=2", "--set=target.api_key=*** --set gamma=2"),
        ("--set 'draft.options={hf_token: hf-x, max_tokens: 3}'", "--set 'draft.options={hf_token: ***, max_tokens: 3}'"),
        ('--set password="two words"', "--set password=***"),
        ("--set max_new_tokens=3", "--set max_new_tokens=3"),
    ],
)
def test_redact_text_hides_secret_values_in_command_lines_and_labels(text, shown):
    """Command lines and run labels are written to run.json and the reports: secret values as ***."""
    from lookahead.config import redact_text

    assert redact_text(text) == shown
