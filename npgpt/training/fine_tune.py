"""Fine-tuning: a run that starts from trained weights, `train --init-from PATH`, instead of
from `model.init_params`. What changes, and only that:

    the weights     `npgpt.load(PATH)`: OpenAI's TensorFlow release, a Hugging Face directory,
                    a .safetensors or .bin file, an npgpt checkpoint or run directory; cast to
                    --dtype. The optimizer's moments start at zero, as in any fresh run.
    the shape       the checkpoint's: vocabulary, width, heads, layers (so --preset is refused)
    context_length  --context-length T keeps the first T rows of the position table `wpe`;
                    a window of T tokens reads only rows 0..T-1, so the cropped model gives
                    the full one's logits on it. Longer than the checkpoint's is refused: no
                    row was ever trained for position 1024 of GPT-2.
    drop_rate       --drop-rate, or the checkpoint's (Hugging Face's GPT-2 config.json says
                    0.1; OpenAI's hparams.json says nothing: 0)
    the defaults    a lower peak learning rate and a shorter warm-up (settings.py declares them
                    as `fine_tuning=`): lr 6e-5 (from scratch: 2e-3), min_lr 6e-6, warm-up 10
                    steps (from scratch: 20). Adam moves each weight by up to about lr per step,
                    whatever its gradient's size: 300 steps at 2e-3 could move a weight by 0.6,
                    against GPT-2's initial scale of 0.02, and overwrite what pre-training
                    learned. GPT-3's paper trains its GPT-2-small-sized model at a peak of 6e-4;
                    a tenth of that sits with what fine-tuning recipes use (nanoGPT's
                    Shakespeare fine-tune 3e-5, Hugging Face's Trainer 5e-5). The weights are
                    already sensible, so a short warm-up suffices: it lets AdamW's moment
                    estimates settle before full-size steps. Weight decay stays 0.1: at lr 6e-5
                    it shrinks a weight by 6e-6 of itself per step, which erases nothing.

Everything else is an ordinary run: its run directory resumes with `--resume` alone (its
settings record `init_from`, for provenance; the resumed run takes its shape from its own
checkpoint and never reads PATH again), and its checkpoint loads in `generate`, `eval`, `serve`
and `transformers`.

>>> from npgpt.config import GPTConfig
>>> from npgpt.model import init_params
>>> config = GPTConfig.preset("tiny")
>>> cropped, params = adapt(config, init_params(config), context_length=16, drop_rate=0.1)
>>> cropped.context_length, cropped.drop_rate, params["wpe.weight"].shape
(16, 0.1, (16, 64))
"""

from npgpt.training.settings import DTYPES, TrainError
from npgpt.weights import checkpoint
from npgpt.weights.check import CheckpointError


def start_model(settings):
    """(config, params) a fine-tuning run starts from: the checkpoint at `--init-from`, adapted to
    the run's --context-length and --drop-rate."""
    path = settings.init_from
    try:
        config, params = checkpoint.load(path, dtype=DTYPES[settings.dtype])
    except (CheckpointError, OSError) as err:
        raise TrainError(f"--init-from {path}: {' '.join(str(err).split())}") from None
    if settings.context_length is not None and settings.context_length > config.context_length:
        raise TrainError(
            f"--context-length {settings.context_length} is longer than the "
            f"{config.context_length} positions of --init-from {path}, which has no position "
            f"embedding beyond them; use --context-length {config.context_length} or less"
        )
    return adapt(config, params, settings.context_length, settings.drop_rate)


def adapt(config, params, context_length, drop_rate):
    """The model with its position table cropped to `context_length` (None: kept) and dropout
    `drop_rate` (None: the checkpoint's)."""
    changes = {}
    if context_length is not None and context_length < config.context_length:
        changes["context_length"] = context_length
        # a copy, so that the rest of the table is not kept alive by a view
        params = params | {"wpe.weight": params["wpe.weight"][:context_length].copy()}
    if drop_rate is not None:
        changes["drop_rate"] = drop_rate
    return config.replace(**changes), params
