"""What `prepare` must write for a list of documents, computed the plain way: tiktoken's GPT-2
encoding of each document, one <|endoftext|> (50256) between them."""

from npgpt.tokenizer import EOT_ID, get_tokenizer


def joined_ids(documents):
    tok = get_tokenizer()
    ids = []
    for i, document in enumerate(documents):
        ids += ([EOT_ID] if i else []) + tok.encode_ordinary(document)
    return ids
