"""An offline word-level tokenizer for the tiny models (built with the `tokenizers` library, no download)."""
from __future__ import annotations

import string
from functools import lru_cache

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# Common words so that the paper's task fixtures mostly tokenize to real words on the tiny models.
_COMMON = """the a an of to and in is was for on that with as by at it from this be are or which we
our not have has but their they can these more also than its all been were one two new when how what
who where there about into used use model models method methods results show paper task data learning
question answer tl dr summary dialogue person said will would should could i you he she his her them
do does did yes no if then so up out very much many most some such only other time year work""".split()


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    from hizfo.tasks.toy import TOY_WORDS
    words: list[str] = []
    seen: set[str] = set()
    for token in [*SPECIAL_TOKENS, *TOY_WORDS, *_COMMON, *string.ascii_lowercase, *string.digits,
                  *string.punctuation, "tl", "dr"]:
        if token not in seen:
            seen.add(token)
            words.append(token)
    return tuple(words)


def build_word_tokenizer():
    """A lower-casing word-level PreTrainedTokenizerFast over a fixed vocabulary; unknown words map to <unk>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.padding_side = "right"
    return tok
