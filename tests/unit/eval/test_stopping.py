"""Stop strings with any tokenizer (hizfo/eval/stopping.py), one cut for generation and scoring, HumanEval's code stops."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from hizfo.eval.stopping import cut_at, find_stop
from tests.conftest import ROOT, compose, tiny

FIXTURES = ROOT / "tests" / "fixtures"


def test_find_stop_is_the_earliest_of_all_stops():
    assert find_stop("a\n\nb\nQuestion: c", ["\nQuestion:", "\n\n"]) == 1
    assert find_stop("a b c", ["\n", ""]) is None
    assert find_stop("x\ny\nz", ["\n"], start=2) == 3
    assert cut_at("abc", None) == "abc" and cut_at("abc", 1) == "a"


def test_generation_stops_at_a_stop_string_with_the_word_level_tokenizer():
    """transformers' StopStringCriteria raised 'substring not found' on this tokenizer; ours stops and cuts."""
    from hizfo.run.evaluation import generate
    loaded = tiny("tiny-opt")
    task = instantiate(compose(["task.options.n_eval=1", "task.generation.max_new_tokens=12"]).task, _convert_="all")
    examples = task.examples("eval")
    lengths = []
    original = loaded.model.generate

    def recording_generate(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])          # new tokens generated
        return out
    loaded.model.generate = recording_generate
    (free,) = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    words = free.split()
    assert lengths == [12] and len(words) >= 4, free             # a random model babbles to max_new_tokens
    stop = words[2]
    task.cfg.generation.stop = [stop]
    (stopped,) = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    assert stopped == cut_at(free, free.find(stop)).strip()      # greedy: the same text, cut at the stop string
    assert lengths[1] < 12                                        # and generation itself stopped there


def test_base_and_humaneval_cut_through_one_helper():
    gsm8k = instantiate(compose(["task=gsm8k"]).task, _convert_="all")
    text = " 2 + 2 = 4\n#### 4\nQuestion: next"
    assert gsm8k.stop_index(text) == text.index("\nQuestion:")
    assert gsm8k.postprocess(text) == "2 + 2 = 4\n#### 4"


@pytest.mark.parametrize("raw,cut", [
    (" def f(x):\n    return x\n\ndef g():\n    pass", "def f(x):\n    return x"),        # a second function
    ("     return x\nprint(f(1))", "    return x"),                                          # a body, then a script
    ("     y = 1\n    return y\n# tests\nassert f(1)", "    y = 1\n    return y"),              # a comment line
    (" import math\ndef f(x):\n    return math.floor(x)\nif __name__ == '__main__':\n    f(1)",
     "import math\ndef f(x):\n    return math.floor(x)"),                                      # imports kept
    (" ```python\ndef f():\n    return 1\n```\nThis returns one.", "```python\ndef f():\n    return 1"),
    (" def f(x):\n    return x\nQuestion: more", "def f(x):\n    return x"),               # the template's stop
])
def test_humaneval_stops_at_the_codex_stop_sequences_once_code_has_begun(raw, cut):
    task = instantiate(compose(["task=humaneval", "task.allow_code_execution=true",
                                f"task.data_files.train={FIXTURES}/humaneval/mbpp_train.jsonl"]).task,
                       _convert_="all")
    assert set(task.code_stops) >= {"\nclass", "\ndef", "\n#", "\nif", "\nprint"}
    assert task.postprocess(raw) == cut


def _recording(loaded) -> list[int]:
    """Make ``loaded.model.generate`` record how many new tokens each call generated."""
    lengths: list[int] = []
    original = loaded.model.generate

    def recording_generate(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out
    loaded.model.generate = recording_generate
    return lengths


def test_a_batch_stops_generating_when_its_last_row_has_stopped():
    """Greedy, 3 rows, the task's stop strings: each row stops at its own step; the batch as soon as all have."""
    from hizfo.run.evaluation import generate
    loaded = tiny("tiny-opt")
    task = instantiate(compose(["task.options.n_eval=3", "task.eval_batch_size=3",
                                "task.generation.max_new_tokens=12"]).task, _convert_="all")
    examples = task.examples("eval")
    lengths = _recording(loaded)
    free = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    assert lengths == [12] and all(len(text.split()) >= 8 for text in free), free
    # a random model repeats itself (': : : memo 1 1 ...'); each row's stop string is its second distinct word,
    # which first appears at different steps in different rows
    task.cfg.generation.stop = [list(dict.fromkeys(text.split()))[1] for text in free]
    stopped = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    assert stopped == [cut_at(text, task.stop_index(text)).strip() for text in free]
    # the step at which each row's decoded new tokens first contain a stop (word-level tokenizer: one word a token)
    steps = [next(n for n in range(1, 13) if task.stop_index(" ".join(text.split()[:n])) is not None)
             for text in free]
    assert len(set(steps)) > 1 and lengths[1] == max(steps) < 12, (steps, lengths)


def test_beam_search_stops_when_every_beam_of_every_row_has_stopped():
    from hizfo.run.evaluation import generate
    loaded = tiny("tiny-opt")
    task = instantiate(compose(["task.options.n_eval=3", "task.eval_batch_size=3", "task.generation.num_beams=3",
                                "task.generation.early_stopping=true", "task.generation.max_new_tokens=12"]).task,
                       _convert_="all")
    examples = task.examples("eval")
    lengths = _recording(loaded)
    generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    task.stop_index = lambda text: len(text) if len(text.split()) >= 2 else None   # every answer ends at word 2
    stopped = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    assert lengths[0] == 12 and lengths[1] == 2, lengths
    assert all(len(text.split()) == 2 for text in stopped), stopped
