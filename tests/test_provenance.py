"""What a recipe run records about itself for its checkpoints: the command to run it again (launcher, recipe,
arguments, no token values) and what its prepared data says (the extractor of the features, the Hub dataset)."""

from __future__ import annotations

import json
import logging
import shlex

import pytest
from data_factory import coco_id, image_record, vqa_official

from lxmert_hf.data import prepare_vqa, write_tsv
from lxmert_hf.data.store import MANIFEST_NAME
from lxmert_hf.hub import describe_bottom_up_features
from lxmert_hf.training import launch_command, record_run

SCRIPT = "/anywhere/lxmert_hf/recipes/vqa.py"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--max_steps", "2"], {}, "python recipes/vqa.py --max_steps 2"),
        (["--dataset", "my data/vqa"], {}, "python recipes/vqa.py --dataset 'my data/vqa'"),
        (["--hub_token", "hf_secret", "--seed", "1"], {}, "python recipes/vqa.py --seed 1"),
        (["--hub_token=hf_secret", "--push_to_hub", "true"], {}, "python recipes/vqa.py --push_to_hub true"),
        (["--tokenizer_name", "tok"], {}, "python recipes/vqa.py --tokenizer_name tok"),  # not a token
        ([], {"ACCELERATE_MIXED_PRECISION": "no", "WORLD_SIZE": "1"}, "accelerate launch recipes/vqa.py"),
        (
            ["--use_cpu", "true"],
            {"ACCELERATE_MIXED_PRECISION": "no", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
            "accelerate launch --multi_gpu --num_processes 2 recipes/vqa.py --use_cpu true",
        ),
        (
            [],
            {"ACCELERATE_MIXED_PRECISION": "bf16", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"},
            "accelerate launch --multi_gpu --num_processes 16 --num_machines 2 --mixed_precision bf16 recipes/vqa.py",
        ),
        ([], {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, "torchrun --nproc_per_node 4 recipes/vqa.py"),
    ],
)
def test_launch_command(argv, environ, expected):
    command = launch_command(SCRIPT, argv, environ)
    assert command == expected and "hf_secret" not in command
    assert "recipes/vqa.py" in shlex.split(command)  # what the shell reads back


def prepared_vqa(tmp_path, dim: int):
    images = [image_record(coco_id(subtype, 1), dim=dim) for subtype in ("train2014", "val2014")]
    write_tsv(tmp_path / "features.tsv", images)
    train_q, train_a = vqa_official(tmp_path, "train2014", [1])
    val_q, val_a = vqa_official(tmp_path, "val2014", [1])
    prepare_vqa(
        tmp_path / "prepared", feature_files=[tmp_path / "features.tsv"], train_questions=train_q,
        train_annotations=train_a, val_questions=val_q, val_annotations=val_a, minival_images=0,
        min_answer_count=1, cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    return tmp_path / "prepared"


def test_record_run_reads_the_extractor_and_names_data_without_a_local_path(tmp_path):
    prepared = prepared_vqa(tmp_path, dim=2048)
    record = record_run(SCRIPT, ["--dataset", str(prepared)], prepared, eval_split="val")
    assert record.visual_features == describe_bottom_up_features()
    assert record.dataset is None and record.dataset_name == "vqa (prepared with lxmert-hf)"
    assert record.eval_split == "val" and record.command == f"python recipes/vqa.py --dataset {prepared}"
    assert record_run(SCRIPT, [], prepared, toy=True).dataset_name == "toy VQA world (lxmert_hf.toy)"


def test_record_run_names_the_hub_dataset_the_store_records(tmp_path):
    prepared = prepared_vqa(tmp_path, dim=2048)
    manifest_path = prepared / "features" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["hub_dataset"] = "someone/coco-features"
    manifest_path.write_text(json.dumps(manifest))
    record = record_run(SCRIPT, [], prepared)
    assert record.dataset == record.dataset_name == "someone/coco-features"


def test_record_run_warns_when_the_store_does_not_say_what_made_it(tmp_path, caplog):
    prepared = prepared_vqa(tmp_path, dim=8)  # not the original extractor's width: unknown origin
    with caplog.at_level(logging.WARNING):
        record = record_run(SCRIPT, [], prepared)
    assert record.visual_features is None
    assert "does not record what made its features" in caplog.text and "ask --detector" in caplog.text
