"""How GPT-2 arrives on disk and comes back. The textbook in `npgpt/` never needs these files to
teach the model; `npgpt.load` and `npgpt.save` (checkpoint.py) are this package's front door.

    checkpoint.py  `save` writes npgpt's checkpoint; `load` reads every format, then checks it
    check.py       the one check of every set of weights: names, shapes, floating point
    formats.py     which format a path holds; Hugging Face's files, config.json included
    openai.py      OpenAI's TensorFlow release: names, hparams.json, reading and writing
    tf_bundle.py   TensorFlow's tensor-bundle files in NumPy; crc32c.py, their checksum
    atomic.py      writes a crash cannot half-do, for every file npgpt writes
    download.py    the released weights, fetched resumably and hash-checked
    digest.py      a file's sha256, a block at a time
"""
