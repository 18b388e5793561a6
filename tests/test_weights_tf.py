"""OpenAI's checkpoint format against TensorFlow itself: a small GPT-2 saved by TensorFlow's own
v1 `Saver` (what OpenAI used: model.ckpt.index / .data / .meta + `checkpoint`), read by npgpt's
NumPy reader bit for bit as `tf.train.load_variable` reads it; and npgpt's NumPy writer read
back by TensorFlow. TensorFlow is imported once, here (it takes seconds)."""

import json
import shutil

import numpy as np
import pytest

from npgpt.config import GPTConfig
from npgpt.model import init_params
from npgpt.names import param_shapes
from npgpt.weights import tf_bundle
from npgpt.weights.check import CheckpointError
from npgpt.weights.checkpoint import load
from npgpt.weights.openai import openai_name, openai_shape, save_openai

CFG = GPTConfig(vocab_size=53, context_length=16, emb_dim=8, n_heads=2, n_layers=2)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip(
        "tensorflow", reason='tensorflow is not installed (pip install -e ".[tf]")'
    )


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=7)


def save_like_openai(tf, directory, params):
    """The way OpenAI's code saved GPT-2: TF1 variables under the `model` scope, written by
    `tf.compat.v1.train.Saver` in a session, with hparams.json beside them."""
    directory.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        for name, shape in param_shapes(CFG).items():
            scope, leaf = openai_name(name).rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                value = params[name].reshape(openai_shape(name, shape))
                tf.compat.v1.get_variable(leaf, initializer=value)
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(directory / "model.ckpt"))
    hparams = {"n_vocab": 53, "n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 2}
    (directory / "hparams.json").write_text(json.dumps(hparams))
    return directory


@pytest.fixture(scope="module")
def openai_dir(tf, params, tmp_path_factory):
    return save_like_openai(tf, tmp_path_factory.mktemp("openai") / "124M", params)


def test_the_checkpoint_is_laid_out_like_openais(openai_dir):
    assert sorted(p.name for p in openai_dir.iterdir()) == [
        "checkpoint",
        "hparams.json",
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
        "model.ckpt.meta",
    ]
    assert 'model_checkpoint_path: "model.ckpt"' in (openai_dir / "checkpoint").read_text()


def test_numpy_reader_is_bit_identical_to_tensorflow(tf, openai_dir):
    prefix = str(openai_dir / "model.ckpt")
    expected = dict(tf.train.list_variables(prefix))
    assert {name: list(shape) for name, shape in tf_bundle.list_tensors(prefix).items()} == (
        expected
    )
    assert "model/h1/mlp/c_fc/w" in expected and expected["model/h1/mlp/c_fc/w"] == [1, 8, 32]
    ours = tf_bundle.read_bundle(prefix)
    assert sorted(ours) == sorted(expected)
    for name in expected:
        theirs = tf.train.load_variable(prefix, name)
        assert ours[name].dtype == theirs.dtype, name
        assert ours[name].shape == theirs.shape, name
        assert ours[name].tobytes() == theirs.tobytes(), name


@pytest.mark.parametrize("reader", ["numpy", "tensorflow", "auto"])
def test_both_readers_give_back_the_saved_params(openai_dir, params, reader):
    config, loaded = load(openai_dir, tf_reader=reader)
    assert config == CFG
    assert list(loaded) == list(param_shapes(CFG))
    for name, value in params.items():
        assert loaded[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_writer_output_reads_in_tensorflow(tf, tmp_path, params, dtype):
    cast = {name: value.astype(dtype) for name, value in params.items()}
    save_openai(tmp_path, CFG, cast, writer="numpy")
    prefix = str(tmp_path / "model.ckpt")
    assert dict(tf.train.list_variables(prefix)) == {
        openai_name(name): list(openai_shape(name, shape))
        for name, shape in param_shapes(CFG).items()
    }
    for name, value in cast.items():
        theirs = tf.train.load_variable(prefix, openai_name(name))
        assert theirs.dtype == dtype
        assert theirs.tobytes() == value.tobytes(), name


def test_tensorflow_writer_output_reads_in_numpy(tf, tmp_path, params):
    save_openai(tmp_path, CFG, params, writer="tensorflow")
    _, loaded = load(tmp_path, tf_reader="numpy")
    for name, value in params.items():
        assert loaded[name].tobytes() == value.tobytes(), name


def test_every_dtype_tensorflow_writes_reads_the_same(tf, tmp_path):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, 5))
    tensors = {
        "f16": tf.constant(values, tf.float16),
        "f32": tf.constant(values, tf.float32),
        "f64": tf.constant(values, tf.float64),
        "bf16": tf.constant(values, tf.bfloat16),
        "i32": tf.constant(rng.integers(-9, 9, (4,)), tf.int32),
        "scalar": tf.constant(2.5, tf.float32),
    }
    prefix = str(tmp_path / "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=list(tensors),
        shape_and_slices=[""] * len(tensors),
        tensors=list(tensors.values()),
    )
    ours = tf_bundle.read_bundle(prefix)
    for name in tensors:
        theirs = tf.train.load_variable(prefix, name)
        if name == "bf16":  # NumPy has no bfloat16: npgpt widens it to float32, exactly
            theirs = theirs.astype(np.float32)
        assert ours[name].dtype == theirs.dtype, name
        assert ours[name].shape == theirs.shape, name
        assert ours[name].tobytes() == theirs.tobytes(), name


@pytest.mark.parametrize("damage", ["truncated data shard", "corrupt index"])
@pytest.mark.parametrize("reader", ["numpy", "tensorflow"])
def test_damaged_checkpoint_is_a_clear_error_with_either_reader(
    openai_dir, tmp_path, reader, damage
):
    copy = shutil.copytree(openai_dir, tmp_path / "damaged")
    if damage == "truncated data shard":
        data = copy / "model.ckpt.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:-100])
    else:
        index = copy / "model.ckpt.index"
        raw = bytearray(index.read_bytes())
        raw[len(raw) // 3] ^= 0x5A
        index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        load(copy, tf_reader=reader)
    assert str(copy / "model.ckpt") in str(err.value)
