"""Bad input fails in one line naming the key and what is allowed, before a model loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hizfo.errors import ConfigError
from hizfo.run.validation import check_model_positions, validate_run_config
from tests.conftest import ROOT, compose, tiny

FIXTURES = ROOT / "tests" / "fixtures"


def run_cli(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run.py", "logger=none", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run; fails the test unless there is exactly one and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_device_must_be_one_this_machine_has():
    with pytest.raises(ConfigError, match=r"^device: 'tpu' is not one of auto, cpu, cuda, cuda:N$"):
        validate_run_config(compose(["device=tpu"]))
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"      # a GPU this machine lacks, either way
    with pytest.raises(ConfigError, match=r"^device: 'cuda"):
        validate_run_config(compose([f"device={missing}"]))
    validate_run_config(compose(["device=cpu"]))


@pytest.mark.subprocess
@pytest.mark.slow
def test_device_is_checked_before_the_model_loads(tmp_path):
    # opt-350m cannot load here (no hub): the device error must come first, in one line, with exit status 2
    proc = run_cli("device=tpu", "model=opt-350m", f"results_dir={tmp_path}")
    assert proc.returncode == 2
    assert error_line(proc).startswith("error: device: 'tpu' is not one of")


@pytest.mark.slow
def test_data_files_on_the_toy_task_is_one_line():
    from hizfo.tasks.toy import ToyTask
    with pytest.raises(ConfigError, match=r"^task\.data_files\.train: task toy generates its data"):
        ToyTask(**OmegaConf.to_container(compose(["task.data_files.train=X"]).task))
    with pytest.raises(ConfigError, match=r"^task\.data_dir: task toy generates its data"):
        ToyTask(**OmegaConf.to_container(compose(["task.data_dir=somewhere"]).task))
    assert ToyTask(**OmegaConf.to_container(compose([]).task)).examples("eval")        # unset: fine


@pytest.mark.slow
def test_a_sequence_longer_than_the_models_positions_fails_before_training():
    loaded = tiny("tiny-opt")
    limit = loaded.model.config.max_position_embeddings
    task = instantiate(compose(["task=gsm8k", f"task.data_files.train={FIXTURES}/gsm8k/train.jsonl",
                                f"task.data_files.eval={FIXTURES}/gsm8k/test.jsonl"]).task, _convert_="all")
    check_model_positions(task, loaded, trains=True)                       # the fixtures fit 1024 positions
    task.cfg.generation.max_new_tokens = limit                              # any prompt + this many new tokens
    with pytest.raises(ConfigError, match=r"task\.max_input_length / task\.generation\.max_new_tokens: .* but "
                                          rf"tiny-opt has {limit}"):
        check_model_positions(task, loaded, trains=True)
    task.cfg.generation.max_new_tokens = 8
    task.cfg.max_target_length = limit                                      # GSM8K's worked answers are long
    task.examples("train")[0].target = " ".join(["step"] * limit)
    with pytest.raises(ConfigError, match=r"the longest training sequence needs \d+ positions"):
        check_model_positions(task, loaded, trains=True)
    check_model_positions(task, loaded, trains=False)                       # zero-shot never trains on it
    with pytest.raises(ConfigError, match=r"\+ 1000 reserved"):
        check_model_positions(task, loaded, trains=False, reserved=1000)    # prefix-tuning's virtual tokens


def test_model_path_on_a_tiny_model_is_refused():
    with pytest.raises(ConfigError, match=r"^model\.path: tiny-qwen2 is built from its arch"):
        validate_run_config(compose(["model=tiny-qwen2", "model.path=/some/where"]))


@pytest.mark.slow
@pytest.mark.parametrize("key", ["task.limit", "task.train_limit"])
@pytest.mark.parametrize("value", [-95, 0])
def test_limits_are_at_least_one_or_null(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be >= 1 or null \(the whole split\), got {value}$"):
        validate_run_config(compose([f"{key}={value}"]))
    validate_run_config(compose([f"{key}=1"]))
    validate_run_config(compose([f"{key}=null"]))


def test_seed_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"^seed: must be >= 0, got -1$"):
        validate_run_config(compose(["seed=-1"]))
    validate_run_config(compose(["seed=0"]))


def test_num_threads_must_be_positive_or_null():
    with pytest.raises(ConfigError, match=r"^num_threads: must be >= 1"):
        validate_run_config(compose(["num_threads=0"]))


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("override,expected", [
    ("method=nope", "error: method=nope: no such option. Available options: bilevel_zofo, "),
    ("method.learning_rate=0.1", "error: method.learning_rate: no such config key; the keys of method are: "),
    ("method.lr=fast", "error: method.lr: Value 'fast' of type 'str' could not be converted to Float"),
    ("model.arch.hidden_size=8", "error: model.arch.hidden_size: cannot be set, model.arch is null"),
])
def test_hydra_errors_exit_2_in_one_line(override, expected, tmp_path):
    extra = ["model=opt-350m"] if override.startswith("model.arch") else []
    proc = run_cli(override, *extra, f"results_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_line(proc).startswith(expected), proc.stderr[-2000:]
    assert not list(tmp_path.rglob("*.json"))


# -- unclean inputs through run.py: one line, exit 2, before the model loads, no record, no lock left -------------

LONG_VARIANT = "v" * 300                                   # over NAME_MAX (255 bytes) as one folder name
PLANTED_LOCK = "(a .lock planted as a symbolic link)"
UNCLEAN = [                                                # (override(s), the start of the one error line)
    ("+bogus_key=1", "bogus_key: no such config key; the keys are: model, task, method, "),
    ("+method.rhoo=0.2", "method.rhoo: no such config key; the keys of method are: name, lr, "),
    ("+task.generation.foo=1", "task.generation.foo: no such config key; the keys of task.generation are: "),
    ("+logger.x=1", "logger.x: no such config key; the keys of logger are: kind, "),
    ("method.grad_clip=-1", "method.grad_clip: must be a finite number > 0 (the gradient-norm cap) or null"),
    ("method=full_ft method.grad_clip=0", "method.grad_clip: must be a finite number > 0"),
    ("task.generation.num_beams=0", "task.generation.num_beams: must be >= 1 (1: greedy decoding), got 0"),
    ("logger.mode=bogus", "logger.mode: 'bogus' is not one of offline, online, disabled"),
    ("logger.kind=bogus", "logger.kind: 'bogus' is not one of wandb, none"),
    ("method.zo_scope=bogus", "method.zo_scope: 'bogus' is not one of all, below"),
    ("method.buckets=0", "method.buckets: must be >= 1"),
    ("method=greentrainer method.buckets=-3", "method.buckets: must be >= 1"),
    ("model.name=..", "model.name: '..' cannot name a results folder"),
    ("task.name=..", "task.name: '..' cannot name a results folder"),
    ("method.name=..", "method.name: '..' cannot name a results folder"),
    ("variant=..", "variant: '..' cannot name a results folder"),
    ("variant=/tmp/elsewhere", "variant: '/tmp/elsewhere' cannot name a results folder"),
    ("variant=a/b", "variant: 'a/b' cannot name a results folder"),
    ("method.lr=-1", "method.lr: must be a finite number >= 0"),                   # a method value ...
    ("task.batch_size=0", "task.batch_size: must be >= 1"),                           # ... a task value: no lock
    # free-form dicts, typed and range-checked against what reads them (hizfo/run/input_checks.py)
    ("model.arch.hidden_size=abc", "model.arch.hidden_size: must be a whole number, got 'abc'"),
    ("+model.arch.bogus_key=1", "model.arch.bogus_key: not a setting of opt models (OPTConfig)"),
    ("model.arch.num_attention_heads=3", "model.arch.num_attention_heads: 3 heads do not divide the hidden size 128"),
    ("model.arch.num_hidden_layers=0", "model.arch.num_hidden_layers: must be >= 1, got 0"),
    ("model.arch.dropout=2", "model.arch.dropout: must be a probability from 0 to 1, got 2"),
    ("model.arch.attention_dropout=-0.1", "model.arch.attention_dropout: must be a probability from 0 to 1, got -0.1"),
    ("task.options.n_train=abc", "task.options.n_train: must be a whole number >= 1, got 'abc'"),
    ("+task.options.bogus=1", "task.options.bogus: not an option of task toy (its options: data_seed, n_eval, "),
    ("task=humaneval task.allow_code_execution=true task.options.code_stops=5",
     "task.options.code_stops: must be a list of strings, got 5"),
    ("task=humaneval task.allow_code_execution=true task.options.sandbox_timeout=inf",
     "task.options.sandbox_timeout: must be a finite number, got inf"),
    ("task=humaneval task.allow_code_execution=true task.options.sandbox_workers=0",
     "task.options.sandbox_workers: must be a whole number >= 1 or null, got 0"),
    ("task=humaneval task.allow_code_execution=true task.options.sandbox_workers=1000",
     "task.options.sandbox_workers: must be a whole number from 1 to 64 or null (one per core, at most 2), got 1000"),
    ("task=gsm8k +task.data_files.validation=F", "task.data_files.validation: task gsm8k reads no split 'validation'"),
    # finite floats everywhere, and the run's own ranges
    ("method.alpha=inf", "method.alpha: must be a finite number, got inf"),
    ("method.weight_decay=nan", "method.weight_decay: must be a finite number, got nan"),
    ("task.generation.repetition_penalty=nan", "task.generation.repetition_penalty: must be a finite number, got nan"),
    ("seed=99999999999999999999", "seed: must be >= 0 and <= 9223372036854775807 (torch's generator range)"),
    ("num_threads=100000", "num_threads: must be <= "),
    ("results_dir=", "results_dir: must name a folder, got an empty string"),
    ("curve_every=0", "curve_every: must be >= 1"),
    ("logger.log_every=0", "logger.log_every: must be >= 1"),
]
# bad data rows: one line naming the file and line (before the model loads once session.prepare calls
# validation.check_before_load; until then right after it), exit 2, no record. {data}: the fixture's folder
FIXTURE_DATA = f"task.data_files.eval={FIXTURES}/gsm8k/test.jsonl"
WEBQ_DATA = f"task.data_files.eval={FIXTURES}/webquestions/test.jsonl"
DATA_ROWS = [
    (f"task=gsm8k task.data_files.train={{data}}/ints.jsonl {FIXTURE_DATA}",
     "task gsm8k: {data}/ints.jsonl, line 2: column 'question' is int 1, not text"),
    (f"task=gsm8k task.data_files.train={{data}}/nulls.jsonl {FIXTURE_DATA}",
     "task gsm8k: {data}/nulls.jsonl, line 1: column 'question' is null"),
    (f"task=gsm8k task.data_files.train={{data}}/unreadable.jsonl {FIXTURE_DATA}",
     "task gsm8k: could not read {data}/unreadable.jsonl as json: "),
    (f"task=gsm8k task.data_files.train={{data}}/list_question.jsonl {FIXTURE_DATA}",
     "task gsm8k: {data}/list_question.jsonl, line 2: column 'question' is list ['What is 1 + 1?'], not text"),
    (f"task=webquestions task.data_files.train={{data}}/int_answers.jsonl {WEBQ_DATA}",
     "task webquestions: {data}/int_answers.jsonl, line 2: column 'answers' is [1, 2]: an item is int 1, not text"),
    (f"task=webquestions task.data_files.train={{data}}/null_answers.jsonl {WEBQ_DATA}",
     "task webquestions: {data}/null_answers.jsonl, line 1: column 'answers' is [None]: an item is null, not text"),
]
DATA_ROW_IDS = ["int field", "null field", "unreadable file", "list for text", "ints for texts", "null for text"]
# skipped with one line that counts them (documented: docs/tasks.md "Pointing at local data")
EMPTY_TARGETS = (f"task=webquestions task.data_files.train={{data}}/empty_answers.jsonl "
                 f"task.data_files.eval={FIXTURES}/webquestions/test.jsonl method.max_steps=1 task.limit=2")
# a key given twice: one warning line, the last wins, and the variant names only what ran
TWICE = "method=zero_shot task.options.n_eval=2 task.limit=1 task.limit=2"
# fail after the run took its checkpoint folder's lock: the lock files must go all the same
AFTER_THE_LOCK = [("model.tokenizer=/no/such/tokenizer", "model.tokenizer: cannot load '/no/such/tokenizer'")]


@pytest.fixture(scope="module")
def unclean_runs(tmp_path_factory):
    """Every case of UNCLEAN and AFTER_THE_LOCK, and one over-long variant, through run.py in one process
    (tests/run_many.py): {override: (result, its results_dir)}."""
    tmp = tmp_path_factory.mktemp("unclean")
    data = write_bad_rows(tmp / "data")
    cases = {}
    for index, (override, _) in enumerate(UNCLEAN + AFTER_THE_LOCK + DATA_ROWS + [(EMPTY_TARGETS, ""), (TWICE, "")]):
        cases[override] = tmp / f"case{index}"
    cases[f"variant={LONG_VARIANT}"] = tmp / "long"
    cases[PLANTED_LOCK] = tmp / "planted"                  # the default run, its folder's .lock a planted link
    planted = cases[PLANTED_LOCK] / "checkpoints" / "tiny-opt" / "toy" / "hizfo" / "default" / "seed0"
    planted.mkdir(parents=True)
    (planted / ".lock").symlink_to(cases[PLANTED_LOCK] / "precious")
    (cases[PLANTED_LOCK] / "precious").write_text("keep me\n")
    lines = []
    for override, where in cases.items():
        extra = ["method=zero_shot", "task.options.n_eval=2"] if override.startswith(f"variant={LONG_VARIANT}") else []
        override = "" if override == PLANTED_LOCK else override.replace("{data}", str(data))
        given = {item.lstrip("+").partition("=")[0] for item in override.split()}
        defaults = [item for item in (f"results_dir={where}/runs", f"hydra.run.dir={where}/out", "num_threads=1")
                    if item.partition("=")[0] not in given]                     # each key once on a command line
        lines.append(json.dumps(["logger=none", *defaults, *extra, *override.split()]))
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "tests.run_many"], input="\n".join(lines) + "\n",
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {override: (result, where) for (override, where), result in zip(cases.items(), results)} | {"{data}": data}


def write_bad_rows(folder):
    """gsm8k rows with an int field (line 2), a null field (line 1) and a list for the question (line 2), a file
    that cannot be read, and WebQuestions rows: one with an empty answer list, numbers or null for answers."""
    folder.mkdir()
    good = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
    (folder / "ints.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"question": 1, "answer": 2}) + "\n")
    (folder / "nulls.jsonl").write_text(json.dumps({**good, "question": None}) + "\n" + json.dumps(good) + "\n")
    (folder / "list_question.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "question": [good["question"]]}) + "\n")
    answered = {"question": "q?", "answers": ["a"]}
    (folder / "int_answers.jsonl").write_text(
        json.dumps(answered) + "\n" + json.dumps({"question": "r?", "answers": [1, 2]}) + "\n")
    (folder / "null_answers.jsonl").write_text(
        json.dumps({"question": "r?", "answers": [None]}) + "\n" + json.dumps(answered) + "\n")
    (folder / "empty_answers.jsonl").write_text(
        json.dumps({"question": "q?", "answers": []}) + "\n" + json.dumps({"question": "r?", "answers": ["a"]}) + "\n")
    unreadable = folder / "unreadable.jsonl"
    if os.geteuid() == 0:                                 # root reads any mode: a file whose read fails anyway
        unreadable.symlink_to("/proc/self/mem")
    else:
        unreadable.write_text(json.dumps(good) + "\n")
        unreadable.chmod(0)
    return folder


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("override,expected", UNCLEAN + AFTER_THE_LOCK, ids=[o for o, _ in UNCLEAN + AFTER_THE_LOCK])
def test_unclean_input_ends_in_one_line_and_exit_2(unclean_runs, override, expected):
    result, where = unclean_runs[override]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert result["status"] == 2, result["stderr"][-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"] and len(result["stderr"].strip().splitlines()) == 1, result["stderr"]
    if (override, expected) in UNCLEAN:
        assert not result["model_loaded"], "the model loaded before the input was refused"
        assert not (where / "checkpoints").exists(), "the checkpoint folder was locked before the input was refused"
    else:                                   # the lock was taken (its root stays), and its files went with the run
        assert (where / "checkpoints").is_dir() and not any((where / "checkpoints").iterdir())
    assert not list(where.rglob("*.json")), "a record was written"                   # no record, anywhere
    assert not [p for p in where.rglob(".lock*")], "a lock file was left behind"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("override,expected", DATA_ROWS, ids=DATA_ROW_IDS)
def test_a_bad_data_row_or_file_ends_in_one_line_naming_it(unclean_runs, override, expected):
    result, where = unclean_runs[override]
    expected = expected.replace("{data}", str(unclean_runs["{data}"]))
    assert result["status"] == 2, result["stderr"][-2000:]
    assert result["stderr"].strip().splitlines()[-1:] == [line for line in result["stderr"].splitlines()
                                                           if line.startswith("error:")]
    assert result["stderr"].strip().splitlines()[-1].startswith(f"error: {expected}"), result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"] and not list(where.rglob("*.json"))
    assert not result["model_loaded"], "the model loaded before the data was refused"
    assert not (where / "checkpoints").exists(), "the checkpoint folder was locked before the data was refused"


@pytest.mark.slow
@pytest.mark.subprocess
def test_rows_without_a_usable_target_are_skipped_with_one_line_that_counts_them(unclean_runs):
    result, where = unclean_runs[EMPTY_TARGETS]
    assert result["status"] == 0, result["stderr"][-2000:]
    assert "task webquestions: skipped 1 of 2 train rows without a usable target" in result["stderr"]
    assert len(list(where.rglob("seed0.json"))) == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_key_given_twice_warns_in_one_line_and_the_last_wins(unclean_runs):
    result, where = unclean_runs[TWICE]
    assert result["status"] == 0, result["stderr"][-2000:]
    assert ("warning: task.limit: given twice on the command line (task.limit=1, then task.limit=2); the last wins"
            in result["stderr"].splitlines())
    (record,) = where.rglob("seed0.json")
    assert record.parent.name == "task.limit=2,task.options.n_eval=2"
    assert json.loads(record.read_text())["config"]["task"]["limit"] == 2


def test_a_zero_learning_rate_is_accepted_as_a_control():
    validate_run_config(compose(["method.lr=0"]))           # zero-shot's own default; documented in README.md
    validate_run_config(compose(["method=full_ft", "method.lr=0"]))


@pytest.mark.slow
@pytest.mark.subprocess
def test_an_over_long_variant_is_shortened_with_a_hash(unclean_runs):
    from hizfo.run.runspec import MAX_VARIANT_CHARS
    result, where = unclean_runs[f"variant={LONG_VARIANT}"]
    assert result["status"] == 0, result["stderr"][-3000:]
    (record,) = where.rglob("seed0.json")
    name = record.parent.name
    assert len(name) == MAX_VARIANT_CHARS and name.startswith("v" * 100) and name[-9] == "-"
    assert json.loads(record.read_text())["config"]["variant"] == name


def test_a_nul_or_separator_in_a_folder_name_is_refused():
    from hizfo.run.runspec import RunSpec
    base = OmegaConf.to_container(compose([]), resolve=True)
    for key, value in (("model", "a\0b"), ("task", "x/../../y"), ("method", ".")):
        config = {**base, key: {**base[key], "name": value}}
        with pytest.raises(ConfigError, match=rf"^{key}\.name: .* cannot name a results folder"):
            RunSpec.build(config)
    RunSpec.build(base)


def test_distinct_long_variants_stay_distinct():
    from hizfo.run.runspec import MAX_VARIANT_CHARS, short_variant
    a, b = short_variant("x" * 200 + "a"), short_variant("x" * 200 + "b")
    assert a != b and len(a.encode()) == len(b.encode()) == MAX_VARIANT_CHARS
    assert short_variant("method.rho=0.2") == "method.rho=0.2"
    assert len(short_variant("é" * 200).encode()) <= MAX_VARIANT_CHARS              # cut on a character boundary


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_lock_planted_as_a_symbolic_link_in_the_checkpoint_folder_ends_in_one_line(unclean_runs):
    result, where = unclean_runs[PLANTED_LOCK]
    folder = where / "checkpoints" / "tiny-opt" / "toy" / "hizfo" / "default" / "seed0"
    assert result["status"] == 2, result["stderr"][-2000:]
    assert result["stderr"].strip().splitlines() == [
        f"error: checkpoint: {folder}: cannot take the lock {folder / '.lock'}: it is a symbolic link, which is "
        f"never followed; remove it"]
    assert not result["model_loaded"]
    assert (where / "precious").read_text() == "keep me\n" and not (folder / ".lock.owner").exists()
    assert not list(where.rglob("*.json"))                                         # no record
