"""Time the official VQA accuracy on a VQA v2 val-sized set of synthetic questions.

Generates 215,000 questions with realistic 10-answer lists (a dominant answer, minority answers, spelling and
punctuation variants such as "Two", "2." or "t-shirt", and 30-40% unanimous lists), predictions that are right
about 70% of the time, and times:

- `vqa_accuracy`: the library function (what `Trainer` evaluation and the evaluate module call);
- `evaluate_vqa_files`: the same from the official JSON files, as `lxmert-hf evaluate vqa` runs it (reading and
  checking the files included);
- a straightforward re-implementation of the official per-question loop (normalize every answer each time, count
  matches among the other annotators for each left-out annotator), as the baseline; its figures must be equal.

Run:
    ```bash
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/metrics.py [--questions 215000]
    ```
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from lxmert_hf.answers import clean_whitespace, normalize_answer
from lxmert_hf.metrics import evaluate_vqa_files, vqa_accuracy
from lxmert_hf.submission import write_vqa_submission

_YES_NO = ["yes", "no"]
_NUMBERS = [str(n) for n in range(0, 21)]
_NUMBER_WORDS = {"0": "none", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "10": "ten"}
_COLORS = ["white", "black", "red", "blue", "green", "brown", "yellow", "gray", "orange", "pink"]
_NOUNS = ["dog", "cat", "man", "woman", "pizza", "frisbee", "tennis", "surfboard", "t-shirt", "skateboard", "giraffe"]
_QUESTION_TYPES = {
    "yes/no": ["is the", "are there", "is this a", "does the", "is there a", "are the", "is it"],
    "number": ["how many", "how many people are", "what number is", "how many people are in"],
    "other": ["what color is the", "what is the", "what is", "where is the", "what kind of", "what sport is", "why"],
}


def _other_vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words = _COLORS + _NOUNS
    vocabulary = set(words)
    while len(vocabulary) < size:
        vocabulary.add(" ".join(rng.sample(words, rng.choice((2, 2, 3)))) + rng.choice(("", "s", " and white")))
    return sorted(vocabulary)


def _variant(answer: str, rng: random.Random) -> str:
    """A spelling of `answer` that normalizes (or not) to it, as annotators write them."""
    roll = rng.random()
    if roll < 0.3:
        return answer.capitalize()
    if roll < 0.5:
        return answer + "."
    if roll < 0.7 and answer in _NUMBER_WORDS:
        return _NUMBER_WORDS[answer]
    if roll < 0.85:
        return "the " + answer
    return answer.replace(" ", "-") + " "


def make_questions(count: int, seed: int = 0) -> dict[str, list]:
    """Synthetic questions: `predictions`, `gt_answers` (10 each), `answer_types`, `question_types`."""
    rng = random.Random(seed)
    other = _other_vocabulary(rng)
    pools = {"yes/no": _YES_NO, "number": _NUMBERS, "other": other}
    data = {"predictions": [], "gt_answers": [], "answer_types": [], "question_types": []}
    for _ in range(count):
        answer_type = rng.choices(("yes/no", "number", "other"), weights=(38, 12, 50))[0]
        pool = pools[answer_type]
        dominant = pool[min(int(rng.paretovariate(1.2)) - 1, len(pool) - 1)]
        if rng.random() < 0.35:
            answers = [dominant] * 10
        else:
            answers = []
            for _ in range(10):
                roll = rng.random()
                if roll < 0.55:
                    answers.append(dominant)
                elif roll < 0.8:
                    answers.append(_variant(dominant, rng))
                else:
                    answers.append(rng.choice(pool))
        prediction = dominant if rng.random() < 0.7 else rng.choice(pool)
        data["predictions"].append(prediction)
        data["gt_answers"].append(answers)
        data["answer_types"].append(answer_type)
        data["question_types"].append(rng.choice(_QUESTION_TYPES[answer_type]))
    return data


def straightforward_vqa_accuracy(predictions, gt_answers, answer_types, question_types, precision=2) -> dict:
    """The official per-question loop written plainly: the baseline, and an independent check of the figures."""
    per_question, by_answer_type, by_question_type = [], {}, {}
    for prediction, answers, answer_type, question_type in zip(
        predictions, gt_answers, answer_types, question_types, strict=True
    ):
        prediction = clean_whitespace(prediction)
        answers = [clean_whitespace(answer) for answer in answers]
        if len(set(answers)) > 1:
            answers = [normalize_answer(answer) for answer in answers]
            prediction = normalize_answer(prediction)
        accuracies = []
        for left_out in range(len(answers)):
            others = answers[:left_out] + answers[left_out + 1 :]
            accuracies.append(min(1, sum(1 for answer in others if answer == prediction) / 3))
        accuracy = sum(accuracies) / len(accuracies)
        per_question.append(accuracy)
        by_answer_type.setdefault(answer_type, []).append(accuracy)
        by_question_type.setdefault(question_type, []).append(accuracy)

    def percent(values):
        return round(100 * sum(values) / len(values), precision)

    return {
        "overall": percent(per_question),
        "perAnswerType": {kind: percent(values) for kind, values in by_answer_type.items()},
        "perQuestionType": {kind: percent(values) for kind, values in by_question_type.items()},
    }


def _write_official_files(data: dict, folder: Path) -> tuple[Path, Path, Path]:
    question_ids = list(range(1_000_000, 1_000_000 + len(data["predictions"])))
    questions = {"questions": [{"question_id": q, "image_id": q // 10, "question": "?"} for q in question_ids]}
    annotations = {
        "annotations": [
            {
                "question_id": q,
                "image_id": q // 10,
                "question_type": question_type,
                "answer_type": answer_type,
                "multiple_choice_answer": answers[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                ],
            }
            for q, answers, answer_type, question_type in zip(
                question_ids, data["gt_answers"], data["answer_types"], data["question_types"], strict=True
            )
        ]
    }
    paths = folder / "questions.json", folder / "annotations.json", folder / "predictions.json"
    paths[0].write_text(json.dumps(questions))
    paths[1].write_text(json.dumps(annotations))
    write_vqa_submission(paths[2], dict(zip(question_ids, data["predictions"], strict=True)))
    return paths


def _time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=215_000, help="number of questions (VQA v2 val: 214,354)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the library paths (median reported)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the straightforward re-implementation")
    args = parser.parse_args(argv)

    data = make_questions(args.questions)
    unanimous = sum(len(set(answers)) == 1 for answers in data["gt_answers"]) / args.questions
    rows = []
    seconds, result = _time(lambda: vqa_accuracy(**data), args.repeats)
    rows.append(("vqa_accuracy (lists in memory)", seconds))
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_official_files(data, Path(folder))
        seconds, file_result = _time(lambda: evaluate_vqa_files(*paths), args.repeats)
        rows.append(("evaluate_vqa_files (official JSON files)", seconds))
    if file_result != result:
        raise SystemExit("evaluate_vqa_files disagrees with vqa_accuracy")
    if not args.no_baseline:
        seconds, baseline = _time(lambda: straightforward_vqa_accuracy(**data), 1)
        rows.append(("straightforward official loop (baseline)", seconds))
        if baseline != result:
            raise SystemExit(f"the figures differ from the straightforward loop:\n{baseline}\n{result}")

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"VQA accuracy of {args.questions:,} synthetic questions ({unanimous:.0%} unanimous answer lists)")
    print(
        f"{datetime.date.today()}, Python {platform.python_version()}, {os.cpu_count()} CPUs (load average {load}); "
        f"median of {args.repeats} runs for the library rows, one run for the baseline"
    )
    print(f"overall {result['overall']}, per answer type {result['perAnswerType']}")
    if not args.no_baseline:
        print("figures identical to the straightforward loop: yes")
    print()
    baseline_seconds = rows[-1][1] if not args.no_baseline else None
    print("| path | time (s) | questions/s | speed-up vs baseline |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        ratio = f"{baseline_seconds / seconds:.1f}x" if baseline_seconds else "-"
        print(f"| {name} | {seconds:.2f} | {args.questions / seconds:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
