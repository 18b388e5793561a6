"""frontend.py, what cli.py and the web page share: a checkpoint on a backend, one-line user
errors, counted answers; and the sampling settings' flags and fields, derived from the one
declaration in npgpt.sampling."""

import doctest
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import cli
import frontend
import webapp.settings
from frontend import Generation, UserError, encode_prompt, load_checkpoint, load_model
from npgpt.config import GPTConfig
from npgpt.generate import generate
from npgpt.model import forward, init_params
from npgpt.sampling import SETTINGS, SamplingSettings
from npgpt.tokenizer import EOT_ID
from npgpt.weights.checkpoint import save
from npgpt.weights.formats import write_config

CFG = GPTConfig(context_length=16, emb_dim=16, n_heads=2, n_layers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("frontend") / "ckpt"
    save(directory, CFG, init_params(CFG, seed=2))
    return directory


def test_frontend_doctests_pass():  # frontend.py sits outside pytest's testpaths
    result = doctest.testmod(frontend, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_load_checkpoint_names_the_format_and_keeps_the_dtype(checkpoint):
    kind, config, params = load_checkpoint(checkpoint)
    assert (kind, config) == ("safetensors", CFG)
    assert {value.dtype for value in params.values()} == {np.dtype(np.float32)}
    _, _, wide = load_checkpoint(checkpoint, np.float64)
    assert {value.dtype for value in wide.values()} == {np.dtype(np.float64)}


def test_every_problem_is_one_line_naming_the_file_and_each_tensor(tmp_path):
    params = init_params(CFG, seed=2)
    del params["ln_f.bias"]
    params["h.0.ln_1.weight"] = np.zeros(3, np.float32)
    params["wpe.weight"] = params["wpe.weight"].astype(np.int32)
    save_file(params, str(tmp_path / "model.safetensors"))
    write_config(tmp_path / "config.json", CFG)
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load checkpoint {tmp_path}: ")
    assert str(tmp_path / "model.safetensors") in message
    for offender in ("ln_f.bias", "h.0.ln_1.weight: (3,) in file, (16,) expected", "wpe.weight"):
        assert offender in message
    with pytest.raises(UserError, match="absent: no such file or directory"):
        load_model(tmp_path / "absent", "numpy")


def test_the_numpy_model_is_npgpt(checkpoint):
    model = load_model(checkpoint, "numpy", dtype="float64")
    _, _, params = load_checkpoint(checkpoint, np.float64)
    x = np.array([[1, 2, 3, 4]])
    y = np.array([[2, 3, 4, 5]])
    assert model.loss(x, y) == float(forward(params, CFG, x, y)[1])
    settings = SamplingSettings(temperature=0, max_new_tokens=6)
    assert list(model.generate([5, 6], settings)) == list(generate(params, CFG, [5, 6], settings))
    assert model.description == "numpy"


def test_the_torch_model_agrees_with_numpy(checkpoint):
    pytest.importorskip("torch", reason="torch not installed: --backend torch needs it")
    numpy_model = load_model(checkpoint, "numpy", dtype="float64")
    torch_model = load_model(checkpoint, "torch", device="cpu", dtype="float64")
    assert torch_model.description == "torch on cpu"
    x, y = np.array([[1, 2, 3, 4]]), np.array([[2, 3, 4, 5]])
    assert torch_model.loss(x, y) == pytest.approx(numpy_model.loss(x, y), abs=1e-10)
    settings = SamplingSettings(temperature=0, max_new_tokens=6)
    assert list(torch_model.generate([5], settings)) == list(numpy_model.generate([5], settings))


def test_torch_missing_or_a_bad_device_is_a_user_error(checkpoint, monkeypatch):
    pytest.importorskip("torch", reason="the device check needs torch itself")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        load_model(checkpoint, "torch", device="tpu")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(
        UserError, match=r'--backend torch needs PyTorch: pip install -e "\.\[torch'
    ):
        load_model(checkpoint, "torch")


def test_a_typed_end_of_text_is_the_special_token():
    assert encode_prompt("a<|endoftext|>b")[1] == EOT_ID


def test_a_generation_counts_its_tokens_and_stops_at_a_stop_string(checkpoint):
    model = load_model(checkpoint, "numpy")
    free = Generation(model, [5], SamplingSettings(temperature=0, max_new_tokens=8))
    text = "".join(free)
    assert free.tokens == len(
        list(model.generate([5], SamplingSettings(temperature=0, max_new_tokens=8)))
    )
    assert free.seconds > 0 and free.rate == free.tokens / free.seconds
    stop = text[len(text) // 2 :][:2]
    stopped = Generation(model, [5], SamplingSettings(temperature=0, max_new_tokens=8, stop=stop))
    assert "".join(stopped) == text[: text.index(stop)]
    assert stopped.tokens <= free.tokens and stopped.seconds is not None


# ---- each sampling setting declared once ---------------------------------------------------


def test_generate_has_one_flag_per_setting_with_its_default_and_help():
    flags = {param.name: param for param in cli.generate.params}
    for setting in SETTINGS:
        option = flags[setting.name]
        assert option.opts == ["--" + setting.name.replace("_", "-")]
        assert option.default == setting.default and option.help == setting.help
        assert option.multiple == isinstance(setting.default, tuple)


def test_the_page_has_one_field_per_labelled_setting_with_its_default():
    labelled = [setting for setting in SETTINGS if setting.label]
    assert [setting.name for setting in labelled] == list(webapp.settings.DEFAULTS)
    assert webapp.settings.parse(webapp.settings.DEFAULTS) == SamplingSettings()
    assert [setting.name for setting in SETTINGS if not setting.label] == ["stop"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "-1"], "seed must be a whole number >= 0 or None, got -1"),
        (["--stop", ""], "stop must be strings that are not empty, got ('',)"),
    ],
)
def test_the_rule_of_a_setting_is_the_cli_error(checkpoint, flags, message):
    result = CliRunner().invoke(cli.main, ["generate", "--checkpoint", str(checkpoint), *flags])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"Error: {message}"
