"""`lxmert-hf convert`: transformers QA checkpoints and the original .pth files, checked against the source model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vqa_helpers as vh
from huggingface_hub import constants
from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, VQAPipeline
from lxmert_hf.cli import main
from lxmert_hf.convert import convert_checkpoint, verification_inputs

QA_ANSWERS = ["yes", "no", "2", "red", "blue", "cat", "dog"]


def tiny_config(hidden: int = 32, heads: int = 2) -> LxmertConfig:
    return LxmertConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=64, l_layers=2, x_layers=1, r_layers=1,
        visual_feat_dim=16, vocab_size=len(vh.WORDS), num_qa_labels=len(QA_ANSWERS), num_object_labels=11,
        num_attr_labels=5,
    )  # fmt: skip


def source_model(model_class=LxmertForQuestionAnswering, **config):
    torch.manual_seed(0)
    return model_class(tiny_config(**config)).eval()


@torch.no_grad()
def qa_logits(model, config) -> torch.Tensor:
    return model(**verification_inputs(config, seed=7)).question_answering_score


@torch.no_grad()
def converted_logits(folder: Path, config) -> torch.Tensor:
    return LxmertForVQA.from_pretrained(folder).eval()(**verification_inputs(config, seed=7)).logits


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    vh.tokenizer().save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


def transformers_repo(folder: Path, model) -> Path:
    """Lay out `folder` like unc-nlp/lxmert-vqa-uncased: config.json, pytorch_model.bin, the tokenizer."""
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    vh.tokenizer().save_pretrained(folder)
    return folder


def test_transformers_qa_checkpoint(tmp_path):
    source = source_model()
    repo = transformers_repo(tmp_path / "lxmert-vqa-uncased", source)
    (tmp_path / "label2ans.json").write_text(json.dumps(QA_ANSWERS))
    report = convert_checkpoint(repo, tmp_path / "out", answers=tmp_path / "label2ans.json")
    assert report.source_format == "transformers" and report.num_answers == len(QA_ANSWERS)
    assert report.max_abs_diff < 1e-4
    assert torch.allclose(
        converted_logits(tmp_path / "out", source.config), qa_logits(source, source.config), atol=1e-5
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"]["5"] == "cat" and config["visual_features"]["detector"] == "unc-nlp/frcnn-vg-finetuned"
    # Written in transformers' own layout: its LxmertForQuestionAnswering reads every tensor and the answers.
    assert config["model_type"] == "lxmert" and config["architectures"] == ["LxmertForQuestionAnswering"]
    plain, info = LxmertForQuestionAnswering.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()) and plain.config.id2label[5] == "cat"
    assert torch.allclose(qa_logits(plain.eval(), source.config), qa_logits(source, source.config), atol=1e-5)
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    assert "Converted from" in (tmp_path / "out" / "README.md").read_text()


def test_answer_list_from_a_url_in_any_original_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    repo = transformers_repo(tmp_path / "repo", source_model())
    ans2label = {answer: index for index, answer in enumerate(QA_ANSWERS)}
    with vh.serve({"/ans2label.json": (200, json.dumps(ans2label).encode())}) as base:
        report = convert_checkpoint(repo, tmp_path / "out", answers=f"{base}/ans2label.json")
    assert report.num_answers == len(QA_ANSWERS)
    assert LxmertForVQA.from_pretrained(tmp_path / "out").config.answers == QA_ANSWERS


def test_refusals_write_nothing(tmp_path):
    repo = transformers_repo(tmp_path / "repo", source_model())
    with pytest.raises(ValueError, match="--answers"):
        convert_checkpoint(repo, tmp_path / "out")
    with pytest.raises(ValueError, match="holds 3 answers but the checkpoint's answer head has 7"):
        convert_checkpoint(repo, tmp_path / "out", answers=["a", "b", "c"])
    with pytest.raises(ValueError, match="repeats"):
        convert_checkpoint(repo, tmp_path / "out", answers=["a"] * 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(repo, tmp_path / "out", answers=QA_ANSWERS)
    pretraining = transformers_repo(tmp_path / "pretraining", source_model(LxmertForPreTraining))
    with pytest.raises(ValueError, match="'pretraining' checkpoint"):
        convert_checkpoint(pretraining, tmp_path / "out2", answers=QA_ANSWERS)


def original_finetuned(path: Path, model: LxmertForQuestionAnswering, multi_gpu: bool) -> Path:
    """Save `model` the way the original code saved a fine-tuned VQA/GQA model (BEST.pth). With `--multiGPU` only
    the encoder's BERT is wrapped in `DataParallel` (`LXRTEncoder.multi_gpu`), so only its keys gain `module.`."""
    encoder = "lxrt_encoder.model.module.bert." if multi_gpu else "lxrt_encoder.model.bert."
    state = {
        name.replace("lxmert.", encoder, 1).replace("answer_head.logit_fc.", "logit_fc."): tensor
        for name, tensor in model.state_dict().items()
    }
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("hidden", "heads", "given_heads", "multi_gpu"), [(32, 2, 2, False), (64, 1, None, True)])
def test_original_finetuned_best_pth(tmp_path, tokenizer_dir, hidden, heads, given_heads, multi_gpu):
    source = source_model(hidden=hidden, heads=heads)
    best = original_finetuned(tmp_path / "BEST.pth", source, multi_gpu=multi_gpu)
    keys = torch.load(best, weights_only=True)
    assert any(k.startswith("lxrt_encoder.model.module.bert.") for k in keys) == multi_gpu
    assert any(k.startswith("logit_fc.") for k in keys)
    report = convert_checkpoint(
        best, tmp_path / "out", answers=QA_ANSWERS, tokenizer=tokenizer_dir, num_attention_heads=given_heads
    )
    assert report.source_format == "lxrt-finetuned" and report.layout == "vqa"
    # The reference: the model the file was made from, not a model rebuilt from the file.
    assert torch.allclose(
        converted_logits(tmp_path / "out", source.config), qa_logits(source, source.config), atol=1e-5
    )
    loaded = LxmertForVQA.from_pretrained(tmp_path / "out")
    assert (loaded.config.l_layers, loaded.config.num_attention_heads) == (2, heads)


def test_converted_heads_score_with_the_sigmoid_they_were_trained_with(tmp_path, tokenizer_dir):
    # The original trained VQA and GQA heads with BCEWithLogitsLoss: each answer's probability is its sigmoid.
    source = source_model()
    best = original_finetuned(tmp_path / "BEST.pth", source, multi_gpu=True)
    convert_checkpoint(best, tmp_path / "out", answers=QA_ANSWERS, tokenizer=tokenizer_dir)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["head_loss"] == "bce"
    pipe = VQAPipeline.from_pretrained(tmp_path / "out", device="cpu")
    features = vh.features(dim=16)
    answers = pipe(features, question="what color is the cube ?", top_k=len(QA_ANSWERS))
    encoding = vh.tokenizer()("what color is the cube ?", return_tensors="pt")
    with torch.no_grad():
        logits = source(
            **encoding,
            visual_feats=torch.as_tensor(features["visual_feats"])[None],
            visual_pos=torch.as_tensor(features["visual_pos"])[None],
        ).question_answering_score[0]
    expected = {QA_ANSWERS[i]: p for i, p in enumerate(logits.sigmoid().tolist())}
    assert {a["answer"]: a["score"] for a in answers} == pytest.approx(expected, abs=1e-5)
    repo = transformers_repo(tmp_path / "lxmert-vqa-uncased", source)
    convert_checkpoint(repo, tmp_path / "out2", answers=QA_ANSWERS)
    assert LxmertForVQA.from_pretrained(tmp_path / "out2").config.head_loss == "bce"
    assert LxmertForVQA.from_pretrained(repo, answers=QA_ANSWERS).config.head_loss == "bce"
    assert LxmertForVQA.from_pretrained(tmp_path / "out", head_loss="softmax").config.head_loss == "softmax"


def test_original_pretrained_model_lxrt_pth(tmp_path, tokenizer_dir):
    source = source_model(LxmertForPreTraining)
    state = {"module." + k.replace("lxmert.", "bert.", 1): v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "model_LXRT.pth")
    report = convert_checkpoint(
        tmp_path / "model_LXRT.pth", tmp_path / "out", answers=QA_ANSWERS, tokenizer=tokenizer_dir
    )
    assert report.source_format == "lxrt-pretrained" and report.layout == "pretraining" and report.max_abs_diff < 1e-4
    converted = LxmertForPreTraining.from_pretrained(tmp_path / "out").eval()
    for name, tensor in source.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    # Fine-tuning starts from it, the classifier taken from the QA head for the answers both lists share.
    model = LxmertForVQA.from_pretrained(
        tmp_path / "out", answers=["cat", "zebra", "yes"], pretrain_answers=tmp_path / "out" / "pretrain_answers.json"
    )
    head = source.answer_head.logit_fc[3].weight
    assert torch.equal(model.classifier[3].weight[0], head[5]) and torch.equal(model.classifier[3].weight[2], head[0])


def test_bad_pth_files(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not hold a state dict"):
        convert_checkpoint(tmp_path / "list.pth", tmp_path / "out")
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="neither the original pre-trained"):
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "out")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled object: weights_only refuses it
    with pytest.raises(ValueError, match="holds Python objects besides tensors .torch.nn.modules.linear.Linear."):
        convert_checkpoint(tmp_path / "module.pth", tmp_path / "out")
    state = {k: v for k, v in original_state(source_model()).items()}
    mixed = {**state, **{k.replace(".model.bert.", ".model.module.bert."): v for k, v in state.items()}}
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="holds the encoder twice"):
        convert_checkpoint(tmp_path / "mixed.pth", tmp_path / "out", answers=QA_ANSWERS)
    pair = {**state, "logit_fc.0.weight": torch.ones(64, 64)}  # the NLVR2 head reads two images' outputs
    torch.save(pair, tmp_path / "nlvr2.pth")
    with pytest.raises(ValueError, match="NLVR2"):
        convert_checkpoint(tmp_path / "nlvr2.pth", tmp_path / "out", answers=QA_ANSWERS)
    state["lxrt_encoder.extra.weight"] = torch.ones(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unknown role"):
        convert_checkpoint(tmp_path / "extra.pth", tmp_path / "out", answers=QA_ANSWERS)
    assert not (tmp_path / "out").exists()


def original_state(model) -> dict[str, torch.Tensor]:
    return {
        k.replace("lxmert.", "lxrt_encoder.model.bert.", 1).replace("answer_head.logit_fc.", "logit_fc."): v
        for k, v in model.state_dict().items()
    }


def test_cli(tmp_path, tokenizer_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0 and "usage: lxmert-hf convert" in capsys.readouterr().out
    best = original_finetuned(tmp_path / "BEST.pth", source_model(), multi_gpu=True)
    (tmp_path / "answers.json").write_text(json.dumps(QA_ANSWERS))
    argv = ["convert", str(best), "--output", str(tmp_path / "out"), "--tokenizer", str(tokenizer_dir)]
    assert main([*argv, "--answers", str(tmp_path / "answers.json"), "--num-attention-heads", "2"]) == 0
    assert "lxrt-finetuned" in capsys.readouterr().out
    assert main(argv + ["--overwrite"]) == 2
    assert "--answers" in capsys.readouterr().err
    assert main([*argv, "--answers", str(tmp_path / "answers.json")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_read_only_output_folder_fails_before_converting(tmp_path, read_only_folder, capsys, monkeypatch):
    monkeypatch.setattr("lxmert_hf.convert.convert_checkpoint", lambda *a, **k: pytest.fail("converted anyway"))
    assert main(["convert", str(tmp_path / "BEST.pth"), "--output", str(read_only_folder / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lxmert-hf convert: error: --output {read_only_folder / 'out'}: cannot write")
    assert "permission denied" in err and len(err.splitlines()) == 1


def test_full_disk_leaves_no_half_written_checkpoint(tmp_path, tokenizer_dir, full_disk, capsys):
    best = original_finetuned(tmp_path / "BEST.pth", source_model(), multi_gpu=False)
    (tmp_path / "answers.json").write_text(json.dumps(QA_ANSWERS))
    (tmp_path / "converted").mkdir()
    argv = ["convert", str(best), "--output", str(tmp_path / "converted" / "out"), "--tokenizer", str(tokenizer_dir)]
    full_disk()
    assert main([*argv, "--answers", str(tmp_path / "answers.json"), "--num-attention-heads", "2"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bar of the weights written
    assert error.startswith(f"lxmert-hf convert: error: cannot write {tmp_path / 'converted' / 'out'}: no space left")
    assert "free space there" in error
    assert list((tmp_path / "converted").iterdir()) == []
