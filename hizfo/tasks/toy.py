"""`task=toy`: a synthetic summarisation task generated from a seed, so the default run needs no files.

Each source is a bag of filler words with three keywords of one topic hidden in it; its summary names the
topic in a fixed sentence and repeats the first keyword. A model must find the topic (a classification) and
copy a word (attention), so ROUGE rises steadily as it learns, from near zero for a random model.
"""
from __future__ import annotations

import random

from hizfo.errors import ConfigError
from hizfo.eval.metrics import exact_match, rouge_scores
from hizfo.tasks.base import Example, Task

TOPICS: dict[str, tuple[str, list[str]]] = {
    "weather": ("the text talks about the weather", ["rain", "snow", "wind", "storm", "cloud", "sun"]),
    "food": ("the text is about cooking food", ["bread", "soup", "rice", "apple", "cheese", "salt"]),
    "sport": ("the story covers a sport game", ["ball", "goal", "team", "coach", "match", "score"]),
    "music": ("the piece describes music played", ["song", "drum", "piano", "guitar", "band", "tune"]),
    "travel": ("the note is about travel plans", ["train", "plane", "hotel", "map", "ticket", "road"]),
    "health": ("the report concerns health care", ["doctor", "nurse", "pill", "fever", "clinic", "cough"]),
    "school": ("the letter mentions school work", ["teacher", "exam", "class", "pencil", "lesson", "grade"]),
    "money": ("the memo deals with money matters", ["bank", "coin", "loan", "price", "budget", "tax"]),
}
FILLER = ("green small quick old bright quiet happy warm dark blue round soft loud fresh tall early late red "
          "slow busy near far light heavy clean wild calm deep kind plain rare short long young fair proud "
          "open late wide").split()

TOY_WORDS: list[str] = sorted({w for sentence, keys in TOPICS.values() for w in sentence.split() + keys}
                              | set(FILLER) | {"and", "tl", "dr", ";", ":"})


def make_example(rng: random.Random, source_length: int = 12) -> Example:
    topic = rng.choice(sorted(TOPICS))
    sentence, keywords = TOPICS[topic]
    words = [rng.choice(FILLER) for _ in range(source_length)]
    chosen = rng.sample(keywords, 3)
    for keyword, position in zip(chosen, sorted(rng.sample(range(source_length), 3))):
        words[position] = keyword
    first_keyword = next(w for w in words if w in keywords)
    target = f"{sentence} and {first_keyword}"
    return Example(source=" ".join(words), target=target, references=[target], suffix=" TL;DR:",
                   meta={"topic": topic})


class ToyTask(Task):
    """Synthetic topic-summary task; ``options.n_train`` / ``options.n_eval`` / ``options.data_seed``."""

    options_schema = {**Task.options_schema, "n_train": "int>=1", "n_eval": "int>=1", "data_seed": "int"}

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        given = {k: v for k, v in (self.cfg.data_files or {}).items() if v}
        if given or self.cfg.data_dir:
            key = f"task.data_files.{next(iter(given))}" if given else "task.data_dir"
            raise ConfigError(f"{key}: task toy generates its data (options.n_train, n_eval, data_seed) and reads no "
                              f"files; drop it, or pick a task that reads files: scitldr, dialogsum, webquestions, "
                              f"gsm8k, math500, humaneval")

    def load_split(self, split: str) -> list[Example]:
        opts = self.cfg.options
        n = int(opts.get("n_train", 2000)) if split == "train" else int(opts.get("n_eval", 100))
        rng = random.Random(f"{opts.get('data_seed', 1234)}-{split}")
        return [make_example(rng) for _ in range(n)]

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        references = [e.references for e in examples]
        return {**rouge_scores(predictions, references, use_stemmer=self.cfg.rouge_stemmer),
                "exact_match": exact_match(predictions, references)}
