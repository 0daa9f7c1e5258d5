"""Metrics: ROUGE equals rouge-score, WebQuestions EM, GSM8K final number, MATH value equality, pass@1."""
from __future__ import annotations

from decimal import Decimal

import pytest

from hizfo.eval import metrics

PREDICTIONS = ["the model finds flatter minima with warm restarts",
               "graph networks use a virtual node",
               "running the cats quickly"]
REFERENCES = [["Warm restarts make SGD find flatter minima that generalise better."],
              ["A virtual node lets graph networks model long-range dependencies.", "One global node shortens paths."],
              ["the cat runs quick"]]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score_called_directly(use_stemmer):
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    expected = {}
    for key in ("rouge1", "rouge2", "rougeL"):
        best = [max(scorer.score(ref, pred)[key].fmeasure for ref in refs)
                for pred, refs in zip(PREDICTIONS, REFERENCES)]
        expected[key] = 100 * sum(best) / len(best)
    ours = metrics.rouge_scores(PREDICTIONS, REFERENCES, use_stemmer=use_stemmer)
    assert ours == pytest.approx(expected, abs=1e-9)
    assert 0 < ours["rouge2"] < ours["rouge1"] <= 100


def test_rouge_has_no_stemmer_by_default_and_the_stemmer_changes_scores():
    plain = metrics.rouge_scores(["running cats"], [["run cat"]])
    stemmed = metrics.rouge_scores(["running cats"], [["run cat"]], use_stemmer=True)
    assert plain["rouge1"] == 0.0 and stemmed["rouge1"] == 100.0


def test_webquestions_exact_match_first_and_any():
    predictions = ["Norway", "sweden", "The Beatles", "Paul McCartney", "nothing"]
    references = [["Norway", "Sweden"], ["Norway", "Sweden"], ["beatles"], ["John Lennon", "paul mccartney."],
                  ["Oslo"]]
    scores = metrics.webquestions_exact_match(predictions, references, match="squad")
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)        # Norway; "The Beatles" ~ "beatles"
    assert scores["exact_match_any"] == pytest.approx(100 * 4 / 5)    # + sweden, paul mccartney
    exact = metrics.webquestions_exact_match(predictions, references)   # GreenTrainer's: strip, then equality
    assert exact == {"exact_match": pytest.approx(20.0), "exact_match_any": pytest.approx(20.0)}
    with pytest.raises(ValueError, match="answer match"):
        metrics.webquestions_exact_match(predictions, references, match="lenient")
    with pytest.raises(ValueError):
        metrics.webquestions_exact_match(["a"], [])


@pytest.mark.parametrize("text, number", [
    ("He has 4 * 6 = <<4*6=24>>24 apples.\n#### 1,234", Decimal("1234")),
    ("The answer is $1,234.", Decimal("1234")),
    ("so she pays 72.00", Decimal("72")),
    ("#### -5 apples", Decimal("-5")),
    ("#### 21 apples after 3 days", Decimal("21")),          # the number right after '####', not the last one
    ("It is .5", Decimal("0.5")),
    ("3,4 and 5", Decimal("5")),                              # "3,4" is not a thousands separator
    ("no number here", None),
])
def test_gsm8k_final_number(text, number):
    assert metrics.final_number(text) == number


def test_gsm8k_accuracy_on_hand_made_cases():
    gold = ["Half of 40 is <<40/2=20>>20.\n#### 20", "#### 1200", "#### 7", "#### 3"]
    predictions = ["40 / 2 = 20\n#### 20", "The farm keeps $1,200 chickens.", "The answer is 8.", "I do not know"]
    assert metrics.gsm8k_accuracy(predictions, gold) == 0.5


@pytest.mark.parametrize("prediction, gold, equal", [
    ("0.5", "\\frac{1}{2}", True),
    ("The answer is \\boxed{\\frac12}.", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\sqrt{50}", "5\\sqrt{2}", True),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("0.6", "\\frac{1}{2}", False),
    ("\\boxed{3}", "4", False),
    ("", "4", False),
])
def test_math_answers_equal_in_value_count(prediction, gold, equal):
    assert metrics.math_equivalent(prediction, metrics.math_gold(gold)) is equal


def test_math_accuracy_and_gold_from_a_solution():
    solution = "The divisors are 1, 2, 3, 4, 6 and 12, so there are $\\boxed{6}$."
    assert metrics.math_accuracy(["6", "\\boxed{0.5}"], [solution, metrics.math_gold("\\frac{1}{2}")]) == 1.0
    assert metrics.math_accuracy(["7", "1/3"], [solution, metrics.math_gold("\\frac{1}{2}")]) == 0.0


def test_math_equivalence_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(metrics.math_equivalent, "0.5", "$\\frac{1}{2}$").result() is True


def test_humaneval_program_is_the_harness_format():
    problem = {"prompt": "def f(x):\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n",
               "entry_point": "f"}
    program = metrics.humaneval_program(problem, "    return x + 1\n")
    assert program.startswith("def f(x):\n    return x + 1\n")
    assert program.rstrip().endswith("check(f)")
    namespace: dict = {}
    exec(program, namespace)                                   # a correct completion runs clean
    with pytest.raises(AssertionError):
        exec(metrics.humaneval_program(problem, "    return x\n"), {})


def test_pass_at_1_estimator():
    assert metrics.pass_at_1([True, False, True, True]) == 0.75
    assert metrics.pass_at_1([False]) == 0.0


@pytest.mark.sandbox
def test_humaneval_pass_at_1_rejects_unknown_ids():
    with pytest.raises(ValueError, match="unknown HumanEval task ids"):
        metrics.humaneval_pass_at_1({"HumanEval/9999": "    pass\n"})
