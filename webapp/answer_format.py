"""How an answer is shown in the chat, and how a script reads the model's text back out of it.

The model's text goes in a Markdown code block, so the page shows it verbatim, never read as
Markdown; its fence is longer than any run of backticks inside. Below it, a line in italics
with the speed and the model. An answer without text says so instead of an empty block.

>>> shown = fenced("a ```quoted``` fence") + "\\n\\n*3 tokens in 0.01 s*"
>>> print(shown)
````text
a ```quoted``` fence
````
<BLANKLINE>
*3 tokens in 0.01 s*
>>> unfenced(shown)
'a ```quoted``` fence'
>>> unfenced(NO_TEXT + "\\n\\n*0 tokens in 0.00 s*"), unfenced("⚠️ Invalid setting: ...")
('', None)
"""

OPENING = "````text\n"  # the block an answer streams into, before the text is complete
NO_TEXT = "*(no text: `<|endoftext|>` came first, or 0 new tokens)*"


def fenced(text):
    """`text` as a Markdown code block shown verbatim: the fence is longer than any ``` inside."""
    ticks = 4
    while "`" * ticks in text:
        ticks += 1
    return "`" * ticks + "text\n" + text + "\n" + "`" * ticks


def unfenced(content):
    """The model's text in a finished answer's message: "" for an answer without text, None
    for a message that is no answer (a problem said in the chat)."""
    if content.startswith(NO_TEXT):
        return ""
    opening, _, rest = content.partition("\n")
    ticks = opening.removesuffix("text")
    if len(ticks) < 4 or ticks.strip("`") or ticks == opening:
        return None
    text, closed, _ = rest.partition("\n" + ticks)
    return text if closed else None
