"""Hugging Face `transformers` both ways: npgpt's checkpoint directory loads unchanged in
`GPT2LMHeadModel.from_pretrained` (offline, from the local directory) and gives npgpt's logits;
directories `save_pretrained` writes (both key styles) and a pytorch_model.bin of HF's state
dict load in npgpt with the same weights and logits. transformers is imported once, here."""

import numpy as np
import pytest

import npgpt
from npgpt.config import GPTConfig
from npgpt.model import forward, init_params
from npgpt.names import param_shapes
from npgpt.tokenizer import get_tokenizer

transformers = pytest.importorskip(
    "transformers", reason='transformers is not installed (pip install -e ".[dev]")'
)
torch = pytest.importorskip("torch", reason='torch is not installed (pip install -e ".[torch]")')

CFG = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=2)
TEXT = "Hello, world! npgpt and transformers should agree on every logit."


@pytest.fixture(scope="module")
def ids():
    return get_tokenizer().encode(TEXT)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.numpy()


def npgpt_logits(params, ids):
    return forward(params, CFG, np.array([ids]))[0]


def from_pretrained(directory, dtype):
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        directory, local_files_only=True, dtype=dtype, output_loading_info=True
    )
    problems = {kind: keys for kind, keys in info.items() if len(keys)}
    assert problems == {}, problems  # every weight found, none left over, no shape mismatch
    return model


def test_npgpt_checkpoint_loads_unchanged_in_transformers(tmp_path, ids):
    params = init_params(CFG, seed=1, dtype=np.float32)
    npgpt.save(tmp_path, CFG, params)
    model = from_pretrained(tmp_path, torch.float32)
    state = model.state_dict()
    for name, value in params.items():
        assert state[f"transformer.{name}"].numpy().tobytes() == value.tobytes(), name
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])  # tied


def test_same_logits_as_npgpt(tmp_path, ids):
    params = init_params(CFG, seed=2, dtype=np.float64)  # float64: only rounding may differ
    npgpt.save(tmp_path, CFG, params)
    model = from_pretrained(tmp_path, torch.float64)
    np.testing.assert_allclose(hf_logits(model, ids), npgpt_logits(params, ids), atol=1e-10)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(**CFG.to_hf())
    return transformers.GPT2LMHeadModel(config).double().eval()


@pytest.mark.parametrize("style", ["GPT2LMHeadModel", "GPT2Model", "pytorch_model.bin"])
def test_directories_transformers_writes_load_in_npgpt(tmp_path, hf_model, ids, style):
    if style == "GPT2LMHeadModel":  # keys "transformer.h.0...", the tied head left out
        hf_model.save_pretrained(tmp_path)
    elif style == "GPT2Model":  # the bare trunk: keys "h.0...", no prefix
        hf_model.transformer.save_pretrained(tmp_path)
    else:  # the older upload format: the full state dict, lm_head.weight included
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
        hf_model.config.to_json_file(tmp_path / "config.json")
    config, params = npgpt.load(tmp_path, dtype=np.float64)
    assert config == CFG
    state = hf_model.transformer.state_dict()
    for name in param_shapes(CFG):
        assert params[name].tobytes() == state[name].numpy().tobytes(), name
    np.testing.assert_allclose(npgpt_logits(params, ids), hf_logits(hf_model, ids), atol=1e-10)
