"""The config schema: every key declared once, with its default, its check and its documentation."""

import json
import pathlib
import subprocess
import sys

import pytest

from configs import default
from rome_jax.config import choices, markdown, run_config, schema
from rome_jax.data.tagging_task import TAGGING_DEFAULTS
from rome_jax.data.tasks import CUSTOM_DEFAULTS
from rome_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent


def valid(config):
    """A default config made loadable here: a model name and an existing data dir."""
    config.model.name_or_path = "some/model"
    config.data.dir = str(REPO)
    return config


def test_every_key_has_a_default_a_doc_and_a_check():
    assert len(schema.SCHEMA) == sum(len(s.keys) for s in schema.SECTIONS)  # no name declared twice
    for name, key in schema.SCHEMA.items():
        assert key.name == name and name.count(".") >= 1, name
        assert key.doc.strip() and "|" not in key.doc, name
        assert callable(key.check) and (key.allowed or key.check.allowed), name
        assert key.check(key.default_value()) is None, name  # the default passes its own check
        if key.before is not schema.NEW:
            assert key.check(key.before) is None, name
    assert set(schema.KEYS) == set(schema.SCHEMA)
    assert {
        "data.cache_dir",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.multihost",
        "train.debug_nan_at_step",
    } == schema.RUN_ONLY_KEYS
    assert {k.removeprefix("data.custom.") for k in schema.SCHEMA if k.startswith("data.custom.")} == set(
        CUSTOM_DEFAULTS
    )
    assert {k.removeprefix("data.tagging.") for k in schema.SCHEMA if k.startswith("data.tagging.")} == set(
        TAGGING_DEFAULTS
    )


def test_the_default_config_is_the_schema(monkeypatch):
    for glue_dir in ("/data/glue", None):
        if glue_dir:
            monkeypatch.setenv("GLUE_DIR", glue_dir)
        else:
            monkeypatch.delenv("GLUE_DIR", raising=False)
        config = default.get_config()
        assert run_config.flatten(config) == schema.defaults()
        assert config.data.dir == (glue_dir or "")
    declared = {name: key.default for name, key in schema.SCHEMA.items()}
    monkeypatch.delenv("CONLL_DIR", raising=False)
    assert run_config.flatten(default.get_config()) == declared | {"data.dir": "", "data.tagging.dir": ""}
    assert default.get_config() is not default.get_config()  # a fresh copy each time


def _wrong_type(value):
    return 5 if isinstance(value, str) else "not a value"


@pytest.mark.parametrize("key", sorted(schema.SCHEMA))
def test_a_bad_value_is_refused_in_one_line_naming_the_key(key):
    bad = _wrong_type(schema.SCHEMA[key].default_value())
    values = run_config.flatten(valid(default.get_config())) | {key: bad}
    config = run_config.from_dict(schema.nest(values))  # a config file may build any value
    with pytest.raises(ConfigError) as error:
        run_config.validate(config)
    message = str(error.value)
    assert message.startswith(f"config {key} ") and "\n" not in message, message
    assert message == f"config {key} {schema.KEYS[key](bad)}"


@pytest.mark.parametrize("key", sorted(schema.ADDED_KEYS))
def test_a_stored_config_lacking_an_added_key_reads_as_its_old_value(key, tmp_path):
    config = run_config.resolve(valid(default.get_config()))
    stored = json.loads(run_config.to_json(config))
    section, *rest = key.split(".")
    node = stored[section]
    for name in rest[:-1]:
        node = node[name]
    del node[rest[-1]]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    read = run_config.read_workdir_config(tmp_path)
    assert run_config.flatten(read)[key] == schema.ADDED_KEYS[key]
    assert set(run_config.flatten(read)) == set(schema.SCHEMA)  # readers need no config.get(key, old)
    current = run_config.flatten(config) | {key: schema.ADDED_KEYS[key]}
    assert run_config.differences(stored, current) == []


def test_a_stored_config_without_data_custom_reads_every_custom_key(tmp_path):
    stored = json.loads(run_config.to_json(run_config.resolve(valid(default.get_config()))))
    del stored["data"]["custom"]
    del stored["model"]["attention"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    read = run_config.read_workdir_config(tmp_path)
    assert read.data.custom.to_dict() == dict(CUSTOM_DEFAULTS)
    assert (read.model.attention, read.data.task) == ("xla", "rte")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json: not a JSON object"):
        run_config.read_workdir_config(tmp_path)


def test_docs_configs_md_holds_the_schemas_tables():
    page = (REPO / "docs" / "configs.md").read_text(encoding="utf-8")
    assert markdown.with_tables(page) == page, "run: python -m rome_jax.config.markdown --update docs/configs.md"
    tables = markdown.tables()
    for name, key in schema.SCHEMA.items():
        assert f"| `{name}` | {markdown.default_shown(key.default)} |" in tables
    assert "| `train.learning_rate` | 2e-5 | float > 0 |" in tables
    assert '| `data.dir` | `$GLUE_DIR`, else `""` |' in tables
    with pytest.raises(ValueError, match="no .* block"):
        markdown.with_tables("# a page without the tables\n")


def test_markdown_command(capsys, tmp_path):
    assert markdown.main([]) == 0
    assert capsys.readouterr().out == markdown.tables()
    page = tmp_path / "configs.md"
    page.write_text(f"# Configs\n\n{markdown.BEGIN}\nold\n{markdown.END}\n\nafter\n")
    assert markdown.main(["--update", str(page)]) == 0 and markdown.update(page) is False
    assert page.read_text() == f"# Configs\n\n{markdown.BEGIN}\n\n{markdown.tables()}\n{markdown.END}\n\nafter\n"
    assert markdown.main(["--nope"]) == 2


def test_choices_have_one_home_below_training():
    from rome_jax.training import losses, projection, step

    assert step.MODES is choices.MODES and step.TWO_STAGE_MODES is choices.TWO_STAGE_MODES
    assert (step.GR_MODES, step.GR_SCOPES, step.STAGE2_CLIPS) == (
        choices.GR_MODES,
        choices.GR_SCOPES,
        choices.STAGE2_CLIPS,
    )
    assert losses.REDUCTIONS is choices.REDUCTIONS
    assert (projection.ANCHORS, projection.GRANULARITIES) == (choices.ANCHORS, choices.GRANULARITIES)
    assert run_config.STAGE2_STARTS is choices.STAGE2_STARTS


def test_the_config_package_imports_nothing_above_it():
    """Loading, checking and resolving a config never imports training, serving, the
    commands or JAX (the config sits below them, and stays cheap to import)."""
    code = (
        "import sys\n"
        "from rome_jax.config import run_config\n"
        f"config = run_config.load({str(REPO / 'configs' / 'glue.py')!r} + ':rte,fastbert')\n"
        "config.model.name_or_path = 'm'\n"
        "config.data.dir = ''\n"
        "run_config.validate(run_config.resolve(config))\n"
        "above = ('rome_jax.training', 'rome_jax.serving', 'rome_jax.commands', 'rome_jax.experiments', 'jax')\n"
        "print(sorted(m for m in sys.modules if m.startswith(above)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
