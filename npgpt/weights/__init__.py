"""How GPT-2 arrives on disk: npgpt's own checkpoint, the readers of every other format, and the
download of OpenAI's and Hugging Face's released weights. The textbook in `npgpt/` never needs
these files to teach the model; `npgpt.load` and `npgpt.save` are this package's front door."""
