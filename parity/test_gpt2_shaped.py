"""GPT-2-shaped weights, written to disk and read back through the real loaders.

Sources of weights:
    124M   GPT-2 124M's exact shapes (V 50257, context 1024, C 768, 12 heads, 12 layers), seeded
           parameters (`parity.strategies.random_params`), stored in float32 as GPT-2 is
    deep   GPT-2 medium's depth, 24 layers, at width 256 (8 heads), GPT-2's vocabulary and
           context: errors that compound with depth show here
    real   the GPT-2 weights in the directory $NPGPT_GPT2_DIR (any format `npgpt.load` reads),
           when that variable is set

Each synthetic source is written in three formats: OpenAI's TensorFlow checkpoint
(`npgpt.weights.openai.save_openai`), npgpt's safetensors directory
(`npgpt.weights.checkpoint.save`) and a Hugging Face `save_pretrained`-style safetensors file whose
keys carry the `transformer.` prefix and the causal-mask buffers. Every test loads a directory
through `npgpt.load` (npgpt's side) and `torchgpt.model.load` (torch's side), checks that both
hold exactly the written numbers (bit for bit), then runs a real sentence, tokenized with GPT-2's
tokenizer, through both and compares every activation and gradient as the random-model
properties do.

npgpt's reference run depends only on the parameters, and each test first proves that the loaded
parameters are bit-identical to the written ones; so the reference is computed once per source
and dtype and shared (at 124M, one NumPy forward + backward takes seconds).
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import npgpt
import torchgpt
from npgpt.config import GPTConfig
from npgpt.tokenizer import get_tokenizer
from npgpt.weights.formats import WEIGHTS_FILE, write_config
from npgpt.weights.openai import save_openai
from parity import oracle
from parity.conftest import CUDA_SKIP
from parity.strategies import random_params

GPT2_DIR_VAR = "NPGPT_GPT2_DIR"
SENTENCE = "The parity oracle compares every activation and every gradient of GPT-2."
SOURCES = {
    "124M": (GPTConfig.preset("gpt2"), 124),
    "deep": (GPTConfig(emb_dim=256, n_heads=8, n_layers=24), 24),
}
FORMATS = ("openai-tf", "safetensors", "hf-safetensors")
REAL = pytest.mark.skipif(
    not os.environ.get(GPT2_DIR_VAR),
    reason=f"set {GPT2_DIR_VAR} to a directory of real GPT-2 weights to run these on them",
)
# (source, format, attn, dtype, device): every format, both attention paths and both dtypes
# are covered at 124M; the deeper model in two formats; real weights in whatever format they
# come in ("auto"); the GPU rows run torch in float32 / TF32 against npgpt in float64.
RUNS = [  # grouped by source: one source's arrays are in memory at a time
    ("124M", "openai-tf", "math", "float64", "cpu"),
    ("124M", "openai-tf", "sdpa", "float64", "cpu"),
    ("124M", "safetensors", "math", "float32", "cpu"),
    ("124M", "hf-safetensors", "sdpa", "float32", "cpu"),
    ("124M", "safetensors", "math", "float64", "cuda"),
    ("124M", "safetensors", "sdpa", "float64", "cuda-tf32"),
    ("deep", "hf-safetensors", "math", "float64", "cpu"),
    ("deep", "openai-tf", "sdpa", "float32", "cpu"),
    ("real", "auto", "math", "float64", "cpu"),
    ("real", "auto", "sdpa", "float64", "cpu"),
    ("real", "auto", "math", "float32", "cpu"),
    ("real", "auto", "math", "float64", "cuda"),
    ("real", "auto", "sdpa", "float64", "cuda-tf32"),
]


def run_id(run):
    source, fmt, attn, dtype, device = run
    return f"{source}-{fmt}-{attn}-{dtype if device == 'cpu' else device}"


def run_param(run):
    marks = [REAL] if run[0] == "real" else []
    if run[4] != "cpu":
        marks.append(CUDA_SKIP)
    return pytest.param(*run, id=run_id(run), marks=marks)


def sentence_batch():
    """The sentence as (idx, targets), B = 1: next-token targets, the first two ignored (-100)."""
    ids = get_tokenizer().encode(SENTENCE)
    idx, targets = np.array([ids[:-1]]), np.array([ids[1:]])
    targets[0, :2] = -100
    return idx, targets


def save_hf_style(directory, config, params):
    """A Hugging Face GPT2LMHeadModel-style file: `transformer.`-prefixed keys plus the causal
    mask buffers (`attn.bias`, `attn.masked_bias`) that older `transformers` saved; npgpt drops
    the buffers on loading."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    T = config.context_length
    tensors = {"transformer." + name: np.ascontiguousarray(v) for name, v in params.items()}
    for i in range(config.n_layers):
        causal = np.tril(np.ones((T, T), dtype=np.float32))[None, None]
        tensors[f"transformer.h.{i}.attn.bias"] = causal
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    write_config(directory / "config.json", config)


class Source:
    """Written (or found) weights: `config`, `params` as stored, and one directory per format."""

    def __init__(self, name, tmp_path_factory):
        self.references = {}
        if name == "real":
            path = Path(os.environ[GPT2_DIR_VAR])
            self.config, self.params = npgpt.load(path, dtype=None)
            self.dirs = {"auto": path}
            return
        self.config, seed = SOURCES[name]
        self.params = random_params(self.config, seed, dtype=np.float32)
        root = tmp_path_factory.mktemp(f"gpt2-{name}")
        self.dirs = {fmt: root / fmt for fmt in FORMATS}
        writer = "tensorflow" if has_tensorflow() else "numpy"
        save_openai(self.dirs["openai-tf"], self.config, self.params, writer=writer)
        npgpt.save(self.dirs["safetensors"], self.config, self.params)
        save_hf_style(self.dirs["hf-safetensors"], self.config, self.params)

    def reference(self, dtype, idx, targets):
        """npgpt's run on the written parameters in `dtype`, computed once."""
        if dtype not in self.references:
            params = {n: v.astype(dtype) for n, v in self.params.items()}
            self.references[dtype] = oracle.run_npgpt(params, self.config, idx, targets)
        return self.references[dtype]


def has_tensorflow():
    """TensorFlow's own SaveV2 writes the checkpoint when installed (its C++ CRC is much faster
    than npgpt's NumPy one at 124M), which also proves the loaders read TF's own files."""
    return importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Sources are written on first use and dropped at the end of the module (GBs of arrays)."""
    made = {}

    def get(name):
        if name not in made:
            made.clear()  # one source in memory at a time: RUNS are grouped by source
            made[name] = Source(name, tmp_path_factory)
        return made[name]

    yield get
    made.clear()


def assert_same_params(loaded, expected, dtype, who):
    assert sorted(loaded) == sorted(expected), f"{who}: parameter names differ"
    for name, value in expected.items():
        got = loaded[name]
        assert got.dtype == np.dtype(dtype), f"{who}: {name} is {got.dtype}, not {dtype}"
        assert np.array_equal(got, value.astype(dtype)), f"{who}: {name} differs from the file"


@pytest.mark.parametrize(("source", "fmt", "attn", "dtype", "device"), [run_param(r) for r in RUNS])
def test_loaded_weights_agree(sources, parity_record, source, fmt, attn, dtype, device):
    src = sources(source)
    path = src.dirs[fmt]
    idx, targets = sentence_batch()
    torch_device, torch_dtype = oracle.torch_placement(device, dtype)

    config, np_params = npgpt.load(path, dtype=np.dtype(dtype))
    gpt = torchgpt.load(path, attn=attn, device=torch_device, dtype=torch_dtype)
    assert config == src.config and gpt.config == src.config
    assert_same_params(np_params, src.params, dtype, "npgpt.load")
    assert_same_params(gpt.to_params(), src.params, torch_dtype, "torchgpt.load")
    del np_params  # the reference below is npgpt's run on exactly these numbers

    reference = src.reference(np.dtype(dtype), idx, targets)
    with oracle.matmul_precision(device):
        candidate = oracle.run_torch(gpt, idx, targets)
    del gpt
    names = oracle.tensor_names(src.config, with_probs=attn == "math")
    label = run_id((source, fmt, attn, dtype, device))
    comparison = oracle.compare(
        reference, candidate, oracle.mode_of(device, dtype), names, label=label
    )
    if source == "124M":
        parity_record.append((f"GPT-2 124M-shaped, {label}", comparison))
    oracle.assert_parity(comparison)
