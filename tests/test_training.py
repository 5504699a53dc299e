"""The recipes' training support (`lxmert_hf.training`): the `Trainer` whose Hub push carries this library's model
card, the metric it selects the best checkpoint on (the official VQA accuracy, in percent) and the final report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import vqa_helpers as vh
from guards import HANG_GUARD_S
from huggingface_hub import ModelCard
from transformers import EvalPrediction, TrainingArguments

from lxmert_hf.data.collator import VQADataCollator
from lxmert_hf.hub import describe_visual_features
from lxmert_hf.metrics import vqa_compute_metrics
from lxmert_hf.toy import ToyWorldConfig
from lxmert_hf.training import (
    DataArguments,
    ModelArguments,
    VQATrainer,
    VQATrainingArguments,
    answer_examples,
    build_compute_metrics,
    build_model,
    build_trainer,
    final_report,
    format_report,
    load_splits,
    load_tokenizer,
    prepare_toy,
)
from lxmert_hf.training.trainer import example_questions

QUESTION = "what color is the cube?"


@pytest.fixture
def fake_hub(monkeypatch):
    return vh.record_hub_calls(monkeypatch)


def test_trainer_push_writes_the_library_card(fake_hub, tmp_path):
    rows = [{**vh.features(seed=i), "question": QUESTION, "labels": np.eye(len(vh.ANSWERS))[i % 3]} for i in range(8)]
    data = datasets.Dataset.from_list(rows)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1, report_to="none",
        eval_strategy="epoch", save_strategy="no", hub_model_id="me/toy-vqa", learning_rate=1e-3, use_cpu=True,
        remove_unused_columns=False,
    )  # fmt: skip

    def accuracy(prediction):
        hits = prediction.predictions.argmax(-1) == prediction.label_ids.argmax(-1)
        return {"vqa_accuracy": 100 * float(hits.mean())}

    model = vh.vqa_model()
    model.config.visual_features = describe_visual_features("unc-nlp/frcnn-vg-finetuned")
    trainer = VQATrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=vh.tokenizer(),
        data_collator=VQADataCollator(vh.tokenizer()), compute_metrics=accuracy,
    )  # fmt: skip
    trainer.train()
    trainer.push_to_hub(dataset_name="toy")
    upload = next(call for call in fake_hub if call[0] == "upload_folder")
    files = upload[2]["files"]
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "lxmert-hf" and card.data.datasets == ["toy"]
    assert {r.metric_name for r in card.data.eval_results} == {"vqa_accuracy (%)"}
    assert "learning_rate: 0.001" in card.text and "unc-nlp/frcnn-vg-finetuned" in card.text
    assert json.loads(files["config.json"])["id2label"]["0"] == "yes" and "tokenizer.json" in files


def test_prepare_toy_keeps_the_copy_another_process_finished_first(tmp_path, monkeypatch):
    from lxmert_hf.toy import ToyWorldConfig
    from lxmert_hf.training import data

    config = ToyWorldConfig(num_images={"train": 4, "validation": 2}, feature_dim=8)
    root = tmp_path / "lxmert_hf_toy" / data._fingerprint(config)

    def racing_build(world_config, staging, task="vqa"):
        (root / "prepared").mkdir(parents=True)  # the other rank's copy lands while this one is built
        (root / "prepared" / "theirs").write_text("x")
        (staging / "prepared").mkdir()

    monkeypatch.setattr(data, "_build_toy", racing_build)
    assert data.prepare_toy(config, cache_dir=tmp_path) == root
    assert os.listdir(root / "prepared") == ["theirs"] and os.listdir(root.parent) == [root.name]


@pytest.mark.parametrize(
    ("build", "flag"),
    [
        (lambda: build_model(ModelArguments(model_name_or_path="./absent"), ["yes"], vh.tokenizer()), "--model_name"),
        (lambda: load_tokenizer(ModelArguments(tokenizer_name="./absent"), None), "--tokenizer_name"),
        (lambda: load_tokenizer(ModelArguments(model_name_or_path="./absent"), None), "--model_name_or_path"),
    ],
)
def test_missing_local_models_name_their_flag(build, flag):
    with pytest.raises(FileNotFoundError, match=f"{flag}.*: ./absent does not exist locally"):
        build()


METRIC_ANSWERS = ["yes", "no", "2", "3"]


def eval_split(annotated: bool = True) -> datasets.Dataset:
    """Three questions, with the annotators' answers (official files) or only soft scores (LXMERT's JSON)."""
    answers = [["yes"] * 10, ["2"] * 3 + ["3"] * 7, ["no"] * 10] if annotated else [[], [], []]
    questions = datasets.Dataset.from_dict({"answers": answers, "answer_type": ["yes/no", "number", "yes/no"]})

    def join(batch):
        raise AssertionError("the metric read a column through the feature join")

    return questions.with_transform(join)


# The soft-score labels of those questions, and predictions yes, 2, yes: 1.0, 0.9 and 0.0.
SOFT_SCORES = np.array([[1.0, 0, 0, 0], [0, 0, 0.9, 1.0], [0, 1.0, 0, 0]], dtype=np.float32)
PREDICTED = np.array([0, 2, 0])


@pytest.mark.parametrize("selected", ["vqa_accuracy", "eval_vqa_accuracy", "vqa_accuracy_yes_no", "loss", None])
def test_the_official_accuracy_when_the_annotators_answers_are_there(selected):
    compute_metrics = build_compute_metrics(eval_split(), METRIC_ANSWERS, selected)
    # The labels are not read: the official metric compares the answers themselves.
    metrics = compute_metrics((PREDICTED, np.zeros_like(SOFT_SCORES)))
    assert metrics == {"vqa_accuracy": 63.33, "vqa_accuracy_yes_no": 50.0, "vqa_accuracy_number": 90.0}


@pytest.mark.parametrize(("annotated", "selected"), [(True, "vqa_soft_score"), (False, "loss"), (False, None)])
def test_the_soft_score_when_asked_or_without_the_annotators_answers(annotated, selected):
    compute_metrics = build_compute_metrics(eval_split(annotated), METRIC_ANSWERS, selected)
    metrics = compute_metrics((PREDICTED, SOFT_SCORES))
    assert metrics == {"vqa_soft_score": 63.33, "vqa_soft_score_yes_no": 50.0, "vqa_soft_score_number": 90.0}


def test_selecting_on_the_official_accuracy_without_the_annotators_answers_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"lacks them .*--metric_for_best_model vqa_soft_score"):
        build_compute_metrics(eval_split(annotated=False), METRIC_ANSWERS, "vqa_accuracy")


def test_report_table_in_percent():
    metrics = {
        "eval_vqa_accuracy": 91.23, "eval_vqa_accuracy_yes_no": 99.8, "eval_vqa_accuracy_number": 92.3,
        "eval_question_only_vqa_accuracy": 50.5, "eval_question_only_vqa_accuracy_yes_no": 78.8,
        "eval_question_only_vqa_accuracy_number": 43.3, "eval_loss": 1.5,
    }  # fmt: skip
    lines = format_report(metrics).splitlines()
    assert lines[0] == "VQA accuracy, %"
    assert lines[3].split() == ["overall", "91.23", "50.50"]
    # The official spelling of the answer types, as `lxmert-hf evaluate` prints them; the metric keys stay names.
    assert [line.split()[0] for line in lines[4:]] == ["number", "yes/no"]


def test_report_names_answer_types_as_the_official_tool_does():
    from lxmert_hf.metrics import vqa_accuracy

    answers, types = [["yes"] * 10, ["2"] * 10, ["red"] * 10], ["yes/no", "number", "other"]
    official = vqa_accuracy(["yes", "3", "red"], answers, types)["perAnswerType"]  # what `lxmert-hf evaluate` prints
    compute_metrics = vqa_compute_metrics(answers, ["yes", "2", "3", "red"], types)
    metrics = compute_metrics(EvalPrediction(predictions=np.array([0, 2, 3]), label_ids=None))
    report = format_report({f"eval_{name}": value for name, value in metrics.items()})
    rows = {line.split()[0]: float(line.split()[1]) for line in report.splitlines()[4:]}
    assert rows == official and "yes_no" not in report


def test_report_table_of_soft_scores_says_so():
    report = format_report({"eval_vqa_soft_score": 88.0, "eval_question_only_vqa_soft_score": 40.0})
    assert report.startswith("VQA soft score, %") and report.splitlines()[3].split() == ["overall", "88.00", "40.00"]


def test_final_report_is_the_metric_the_trainer_selects_on(tmp_path):
    root = prepare_toy(ToyWorldConfig(num_images={"train": 4, "validation": 4}), tmp_path / "cache")
    sizes = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "r_layers": 0}
    model_args = ModelArguments(**sizes, l_layers=1, x_layers=1)
    data_args = DataArguments(dataset=str(root / "prepared"), eval_split="val")
    training_args = VQATrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, per_device_eval_batch_size=8)
    tokenizer = load_tokenizer(model_args, default=str(root / "tokenizer"))
    train, evaluation, answers = load_splits(root / "prepared", "train", "val", tokenizer)
    model = build_model(model_args, answers, tokenizer)
    trainer = build_trainer(model, tokenizer, training_args, data_args, train, evaluation)
    metrics = final_report(trainer, evaluation, data_args)
    assert metrics["eval_vqa_accuracy"] == trainer.evaluate()["eval_vqa_accuracy"]
    assert {"eval_vqa_accuracy_yes_no", "eval_question_only_vqa_accuracy_yes_no"} <= set(metrics)
    # A few questions answered apart from the split the Trainer's metric was built for: one of each answer type,
    # each about another image.
    examples = answer_examples(trainer, evaluation, 3)
    assert examples.count("truth:") == 3, examples
    assert all(f"({kind})" in examples for kind in ("yes/no", "number", "other")), examples
    shown = evaluation.with_format(None).select(example_questions(evaluation, 3))
    assert len(set(shown["image_id"])) == 3 and set(shown["answer_type"]) == {"yes/no", "number", "other"}


@pytest.fixture(scope="module")
def one_process_figures(tmp_path_factory):
    import streamed_evaluation

    return streamed_evaluation.evaluate_all(tmp_path_factory.mktemp("streamed"))


@pytest.mark.parametrize("metric", ["vqa_accuracy", "vqa_soft_score"])
def test_streamed_evaluation_equals_accumulating_everything(one_process_figures, metric):
    from streamed_evaluation import ANSWERS, eval_split

    figures = one_process_figures[metric]
    assert figures["streamed"] == figures["accumulated"] and figures["streamed"].keys() > {f"eval_{metric}"}
    assert {k: v for k, v in figures["report"].items() if "question_only" not in k} == figures["streamed"]
    # The model answers with its first region's features: the figures the whole split gives in one piece.
    split = eval_split().with_format("numpy")
    predicted = np.array([feats[0].argmax() for feats in split["visual_feats"]])
    whole = build_compute_metrics(eval_split(), ANSWERS, metric)((predicted, split["labels"]))
    assert figures["streamed"] == {f"eval_{name}": value for name, value in whole.items()}
    # Zeroed regions: every answer is the first one.
    blind = build_compute_metrics(eval_split(), ANSWERS, metric)((np.zeros_like(predicted), split["labels"]))
    assert {k: v for k, v in figures["report"].items() if "question_only" in k} == {
        f"eval_question_only_{name}": value for name, value in blind.items()
    }


def test_evaluation_and_report_keep_no_predictions_or_labels(tmp_path, monkeypatch):
    from streamed_evaluation import ANSWERS, BATCH_SIZE, FirstRegionAnswerer, eval_split
    from transformers import trainer as hf_trainer

    kept = []  # what the evaluation loop keeps to the end, besides each question's loss
    add = hf_trainer.EvalLoopContainer.add

    def keep(container, values):
        if values.ndim > 1 or not values.is_floating_point():
            kept.append(values)
        add(container, values)

    monkeypatch.setattr(hf_trainer.EvalLoopContainer, "add", keep)
    evaluation = eval_split()
    args = VQATrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_eval_batch_size=BATCH_SIZE)
    trainer = build_trainer(FirstRegionAnswerer(ANSWERS), vh.tokenizer(), args, DataArguments(), None, evaluation)
    collator, compute_metrics = trainer.data_collator, trainer.compute_metrics
    assert trainer.evaluate()["eval_vqa_accuracy"] > 0 and final_report(trainer, evaluation, DataArguments())
    assert kept == []
    assert (trainer.data_collator, trainer.compute_metrics, args.batch_eval_metrics) == (
        collator,
        compute_metrics,
        True,
    )
    # What the Trainer keeps otherwise: every question's answer id and label vector.
    args.batch_eval_metrics = False
    trainer.evaluate()
    assert [tuple(values.shape[1:]) for values in kept] == [(), (len(ANSWERS),)] * 6
    kept.clear()
    final_report(trainer, evaluation, DataArguments())
    assert kept == [], "the report streams whatever batch_eval_metrics says"


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(one_process_figures, tmp_path):
    worker = Path(__file__).resolve().parent / "streamed_evaluation.py"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(tmp_path), str(tmp_path / "r.json"),
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures.pop("processes") == 2
    assert figures == one_process_figures


@pytest.mark.slow
def test_memory_benchmark_measures_each_variant_with_the_same_figures(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_memory.py"
    spec = importlib.util.spec_from_file_location("eval_memory_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["--questions", "300", "--batch-size", "64", "--variants", "ids_labels", "streamed"])
    output = capsys.readouterr().out
    assert "identical in every variant: yes" in output  # it exits with an error otherwise
    rows = [line.split("|")[1:-1] for line in output.splitlines() if line.startswith("| ids") or "| streamed" in line]
    assert [row[0].strip() for row in rows] == [benchmark.VARIANTS["ids_labels"], benchmark.VARIANTS["streamed"]]
    assert rows[0][3].strip() == "1.00x" and float(rows[1][1].replace(",", "")) > 0


def test_recipe_model_from_a_pretraining_checkpoint_says_what_it_transplanted(tmp_path):
    # A folder laid out like unc-nlp/lxmert-base-uncased: config.json (model_type lxmert), pytorch_model.bin with
    # the QA head, the tokenizer; and the head's answer list as the original all_ans.json.
    import torch
    from transformers import LxmertConfig, LxmertForPreTraining

    head_answers = ["2", "gray", "yes", "no", "cat"]
    source = LxmertForPreTraining(LxmertConfig(num_qa_labels=len(head_answers), **vh.SIZES))
    folder = tmp_path / "lxmert-base-uncased"
    source.config.save_pretrained(folder)
    torch.save(source.state_dict(), folder / "pytorch_model.bin")
    vh.tokenizer().save_pretrained(folder)
    (tmp_path / "all_ans.json").write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in head_answers]))
    model_args = ModelArguments(model_name_or_path=str(folder), pretrain_answers=str(tmp_path / "all_ans.json"))
    model = build_model(model_args, ["yes", "two", "grey", "blue"], load_tokenizer(model_args, None))
    assert str(model.answer_head_transplant) == (
        "transplanted 3 of 4 answers from the pre-training head (1 set to zero)"
    )
    head = source.answer_head.logit_fc[3]
    assert torch.equal(model.classifier[3].weight[:3], head.weight[[2, 0, 1]])
    assert not model.classifier[3].weight[3].any() and model.classifier[3].bias[3] == 0


def test_recipe_prints_the_transplant(tmp_path, capsys, monkeypatch):
    import torch
    from transformers import LxmertConfig, LxmertForPreTraining

    from lxmert_hf.answers import lxmert_qa_normalize

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    head_answers = ["yes", "red", "2", "cube"]
    config = LxmertConfig(num_qa_labels=len(head_answers), **{**vh.SIZES, "visual_feat_dim": 2048})
    folder = tmp_path / "lxmert-base-uncased"
    config.save_pretrained(folder)
    torch.save(LxmertForPreTraining(config).state_dict(), folder / "pytorch_model.bin")
    vh.tokenizer().save_pretrained(folder)
    (tmp_path / "all_ans.json").write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in head_answers]))
    recipe = load_recipe()
    recipe.main([
        "--model_name_or_path", str(folder), "--pretrain_answers", str(tmp_path / "all_ans.json"),
        "--toy_train_images", "8", "--toy_eval_images", "4", "--max_steps", "1", "--use_cpu", "true",
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "toy"), "--report_to", "none",
    ])  # fmt: skip
    answers = json.loads((tmp_path / "out" / "config.json").read_text())["id2label"].values()
    copied = sum(lxmert_qa_normalize(answer) in head_answers for answer in answers)
    assert 0 < copied < len(answers)
    expected = (
        f"Answer head: transplanted {copied} of {len(answers)} answers from the pre-training head "
        f"({len(answers) - copied} set to zero)"
    )
    assert expected in capsys.readouterr().out.splitlines()


def load_recipe():
    spec = importlib.util.spec_from_file_location("vqa_recipe", Path(__file__).resolve().parents[1] / "recipes/vqa.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe
