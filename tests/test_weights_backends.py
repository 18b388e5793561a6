"""Both backends load every format, and generate works from each: the same weights written as an
OpenAI TensorFlow checkpoint, a Hugging Face directory (`transformer.` keys + tied lm_head) and
an npgpt checkpoint give the same greedy tokens in npgpt, torchgpt and `cli.py generate`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hf_files import write_hf_directory

import cli
import npgpt
import torchgpt
from npgpt.config import GPTConfig
from npgpt.generate import generate as np_generate
from npgpt.model import init_params
from npgpt.sampling import SamplingSettings
from npgpt.tokenizer import get_tokenizer
from npgpt.weights.openai import save_openai
from torchgpt.generate import generate as torch_generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=2)
GREEDY = SamplingSettings(temperature=0, max_new_tokens=8)
PROMPT = "The weights"
FORMATS = ["openai-tf", "hf", "npgpt"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=21, dtype=np.float64)


@pytest.fixture(scope="module")
def checkpoints(params, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    save_openai(root / "openai-tf", CFG, params)
    write_hf_directory(root / "hf", CFG, params, lm_head=True)
    npgpt.save(root / "npgpt", CFG, params)
    return root


@pytest.fixture(scope="module")
def prompt_ids():
    return get_tokenizer().encode(PROMPT)


@pytest.fixture(scope="module")
def expected(params, prompt_ids):
    """The tokens of the weights themselves, before any file is involved."""
    tokens = list(np_generate(params, CFG, prompt_ids, GREEDY))
    assert len(tokens) == GREEDY.max_new_tokens
    return tokens


@pytest.mark.parametrize("fmt", FORMATS)
def test_npgpt_generates_from_each_format(checkpoints, prompt_ids, expected, fmt):
    config, params = npgpt.load(checkpoints / fmt, dtype=np.float64)
    assert config == CFG
    assert list(np_generate(params, config, prompt_ids, GREEDY)) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_torchgpt_generates_from_each_format(checkpoints, prompt_ids, expected, fmt):
    model = torchgpt.load(checkpoints / fmt, attn="math", dtype="float64")
    assert list(torch_generate(model, prompt_ids, GREEDY)) == expected


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_generate_from_each_format(checkpoints, expected, fmt, backend):
    args = ["generate", "--checkpoint", str(checkpoints / fmt), "--prompt", PROMPT]
    args += ["--temperature", "0", "--max-new-tokens", "8", "--backend", backend]
    args += ["--device", "cpu", "--dtype", "float64", "--no-stream"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == PROMPT + get_tokenizer().decode(expected) + "\n"


def test_python_cli_py_generate(checkpoints, expected):
    command = [sys.executable, "cli.py", "generate", "--checkpoint", str(checkpoints / "hf")]
    command += ["--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8"]
    command += ["--dtype", "float64"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + get_tokenizer().decode(expected) + "\n"
