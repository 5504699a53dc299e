"""Every ```` ```python ```` and ```` ```bash ```` block of README.md runs, offline, as written.

The blocks run in README order in one working directory, as a reader who follows the README runs them, each in a
process of its own (`python BLOCK.py`, `bash -euo pipefail BLOCK.sh`, with this environment's `python`,
`lxmert-hf` and `accelerate` first on `PATH`). Before the first block, a setup stands in for what a block may take
as given:

- the Quickstart: `outputs/toy-vqa`, made by the Quickstart's recipe on a smaller toy world for one epoch (the
  Quickstart itself trains for about two minutes), and `outputs/toy-nlvr2` by `recipes/nlvr2.py` the same way;
- the Hub: `HF_HUB_OFFLINE=1` and a local cache laid out as `huggingface_hub` lays it out (`models--owner--name/`
  with `blobs/`, `refs/main` and `snapshots/<commit>/`), holding tiny random stand-ins for
  `unc-nlp/lxmert-base-uncased` (a pre-training checkpoint with its tokenizer; 128-d region features) and
  `unc-nlp/frcnn-vg-finetuned` (a detector of about 1M parameters whose regions have 128 features);
- the input files a block names in its comments (`INPUTS`: a name in a comment line -> small generated files in the
  real formats).

A block that cannot run here is listed in `OPTED_OUT`, with the reason; every other block must run and exit 0, so a
block added later that does not run as written fails `test_readme_blocks_run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from guards import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN = ("python", "bash")
# Fences that hold no command: shown, never run.
SHOWN = ("", "text", "json", "yaml")

# (section heading, first line) of a block that does not run here -> why. Keep this short: a block belongs here only
# when running it needs what a CPU test cannot have (GPUs, the Hub, an install), and what it shows is tested elsewhere.
OPTED_OUT = {
    (
        "Quickstart",
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/accelerate launch --config_file '
        "recipes/accelerate/default.yaml recipes/vqa.py",
    ): (
        "installs the packages and trains for minutes; the setup runs the same recipe on a smaller toy world, and "
        "tests/test_recipe_run.py checks what this run reports"
    ),
    ("Quickstart", ".venv/bin/python -m pytest"): "runs the whole test suite, this test included",
    (
        "Fine-tuning on real data",
        "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/vqa.py \\",
    ): (
        "8 GPUs (multi_gpu.yaml), and --push_to_hub uploads; the recipe's flags are tested in "
        "tests/test_recipe_args.py, the multi-process path in tests/test_recipe_run.py"
    ),
    ("GQA", "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/gqa.py \\"): (
        "8 GPUs (multi_gpu.yaml) and the pre-trained model from the Hub; the GQA recipe runs on its toy world in "
        "tests/test_recipe_run.py, in one process and two"
    ),
    (
        "GQA",
        "lxmert-hf predict --model outputs/gqa --prepared data/gqa --split testdev --output testdev_predict.json",
    ): (
        "needs the checkpoint of the 8-GPU training above; tests/test_predict_tasks.py and tests/test_recipe_run.py "
        "run predict and evaluate on a GQA checkpoint"
    ),
    ("NLVR2", "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/nlvr2.py \\"): (
        "8 GPUs (multi_gpu.yaml) and the pre-trained model from the Hub; the NLVR2 recipe runs on its toy world in "
        "tests/test_recipe_run.py, in one process and two"
    ),
    (
        "NLVR2",
        "lxmert-hf predict --model outputs/nlvr2 --prepared data/nlvr2 --split test --output test_predict.csv",
    ): (
        "needs the checkpoint of the 8-GPU training above; tests/test_predict_tasks.py and tests/test_recipe_run.py "
        "run predict and evaluate on an NLVR2 checkpoint"
    ),
    (
        "Training on features from the Hub",
        "# me/coco-lxmert-features: a dataset repo written by push_features_to_hub",
    ): (
        "reads the Hub: offline, datasets.load_dataset finds a repo only in its own cache of an earlier online "
        "load; tests/test_prepare_pushed.py prepares from a Hub repo's files"
    ),
    (
        "Streaming the training split",
        "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/vqa.py \\",
    ): "8 GPUs (multi_gpu.yaml); streaming is tested in tests/test_streaming.py, on two processes too",
    (
        "Interrupted runs, reruns, early stopping, seeds",
        "accelerate launch recipes/vqa.py --dataset data/vqa --output_dir outputs/vqa --resume_from_checkpoint last",
    ): "continues an interrupted run of the 8-GPU training above; resuming is tested in tests/test_recipe_resume.py",
    (
        "Training at scale",
        "accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/vqa.py --dataset data/vqa \\",
    ): (
        "FSDP and DeepSpeed need GPUs (DeepSpeed an install), and the cpu.yaml line is the Quickstart's whole "
        "training in two processes; the configs run in tests/test_scale.py, two CPU processes in "
        "tests/test_recipe_run.py"
    ),
    ("Faster extraction", "lxmert-hf extract --images my_images/ --output my_features/ --device cuda \\"): (
        "needs a CUDA GPU; tests/test_extract_speed.py runs the same flags on the CPU (bfloat16, channels-last) "
        "and tests/test_cuda.py on a GPU"
    ),
    ("Faster extraction", "from lxmert_hf import RegionFeatureExtractor"): (
        "needs a CUDA GPU; tests/test_extract_speed.py extracts with these settings on the CPU"
    ),
    (
        "Training speed: the fast path and the faithful path",
        "accelerate launch recipes/vqa.py --config recipes/configs/vqa.yaml --dataset data/vqa \\",
    ): (
        "VQA v2 prepared in data/vqa and a GPU; tests/test_train_speed.py trains the toy world on this path and "
        "tests/test_recipe_args.py checks the flags"
    ),
    (
        "Training speed: the fast path and the faithful path",
        "python benchmarks/train_throughput.py                      # a CUDA GPU: batch 32, 128 and 256, every row",
    ): "a benchmark of minutes (a GPU for the first line); tests/test_train_speed.py runs it on a tiny model",
    ("Extracting on several processes or machines", "# one machine, 8 GPUs"): (
        "GPUs, several machines or SLURM; tests/test_extract_parallel.py runs accelerate launch -m lxmert_hf_cli "
        "extract with two CPU processes, and --num-processes 2"
    ),
    (
        "Extracting on several processes or machines",
        "python benchmarks/extract_scaling.py --detector full --images 256 --processes 1 2 4 --device cuda",
    ): "a CUDA GPU and minutes; tests/test_extract_parallel.py runs the benchmark on the tiny detector",
}


@dataclasses.dataclass
class Block:
    language: str
    code: str
    line: int
    heading: str

    @property
    def key(self) -> tuple[str, str]:
        return self.heading, next(line.strip() for line in self.code.splitlines() if line.strip())

    @property
    def comments(self) -> str:
        """The text of the block's comment lines and trailing comments (where it says what it needs)."""
        return "\n".join(line.partition("#")[2] for line in self.code.splitlines() if "#" in line)

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.heading}): {self.key[1]}"


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    headings = [  # (offset, title) of the Markdown headings, not of comment lines inside blocks
        (match.start(), match.group(1))
        for match in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)
        if not any(fence.start() < match.start() < fence.end() for fence in fences)
    ]
    blocks = []
    for fence in fences:
        line = text.count("\n", 0, fence.start()) + 1
        heading = [title for offset, title in headings if offset < fence.start()][-1]
        blocks.append(Block(fence.group(1), fence.group(2), line, heading))
    return blocks


# ---- the setup: the Quickstart's model, the Hub, and the inputs blocks name ----


def hub_repo(cache: Path, repo_id: str, files: Path) -> None:
    """Put the files of folder `files` into `cache` as `huggingface_hub` caches revision `main` of model `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(p for p in files.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def stand_in_pretrained(folder: Path) -> Path:
    """unc-nlp/lxmert-base-uncased's layout: config.json (model_type lxmert), pytorch_model.bin, the tokenizer."""
    import vqa_helpers as vh
    from transformers import BertTokenizer, LxmertConfig, LxmertForPreTraining

    words = [*vh.WORDS, "dogs", "on", "table", "cars", "are", "bench", "sky"]
    config = LxmertConfig(**{**vh.SIZES, "vocab_size": len(words)}, visual_feat_dim=vh.DETECTOR_DIM, num_qa_labels=7)
    torch.manual_seed(0)
    model = LxmertForPreTraining(config)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(folder)
    return folder


def quickstart_model(workdir: Path, env: dict) -> None:
    """outputs/toy-vqa from the Quickstart's recipe, and outputs/toy-nlvr2 from the NLVR2 recipe's, each on 200 toy
    images for one epoch instead of 2,000 for eight."""
    small = ["--toy_train_images", "200", "--toy_eval_images", "40", "--num_train_epochs", "1", "--report_to", "none"]
    run([sys.executable, "recipes/vqa.py", *small], workdir, env, "the Quickstart's recipe (setup)")
    run([sys.executable, "recipes/nlvr2.py", *small], workdir, env, "the NLVR2 recipe (setup)")


def coco_inputs(workdir: Path) -> None:
    """Feature TSVs and official VQA v2 files under the names "Where the real inputs come from" gives."""
    from data_factory import coco_id, image_record, vqa_official

    from lxmert_hf.data import write_tsv

    (workdir / "data" / "mscoco_imgfeat").mkdir(parents=True, exist_ok=True)
    for subtype, first in (("train2014", 1), ("val2014", 100)):
        ids = range(first, first + 24)
        records = [image_record(coco_id(subtype, i), num_boxes=5, seed=i) for i in ids]
        write_tsv(workdir / "data" / "mscoco_imgfeat" / f"{subtype}_obj36.tsv", records)
        vqa_official(workdir, subtype, ids, seed=first)


def feature_store(workdir: Path) -> None:
    """data/coco-features (a store) and exported/coco-features (its parquet export)."""
    from data_factory import make_store

    from lxmert_hf.data.store.parquet import export_parquet

    store = workdir / "data" / "coco-features"
    make_store(store, [f"COCO_val2014_{i:012d}" for i in range(6)], tsv=workdir.parent / "coco.tsv")
    export_parquet(store, workdir / "exported" / "coco-features")


def gqa_inputs(workdir: Path) -> None:
    """LXMERT's GQA feature TSVs and official balanced question files under the names the GQA section gives."""
    from data_factory import gqa_official, image_record

    from lxmert_hf.data import write_tsv

    features, questions = workdir / "data" / "vg_gqa_imgfeat", workdir / "gqa"
    features.mkdir(parents=True, exist_ok=True)
    questions.mkdir(exist_ok=True)
    for name, images in (("vg_gqa_obj36", range(12)), ("gqa_testdev_obj36", range(100, 104))):
        write_tsv(features / f"{name}.tsv", [image_record(f"n{i}", num_boxes=5, seed=i) for i in images])
    answers = ("yes", "no", "t-shirt", "left")
    for name, images in (("train", range(8)), ("val", range(8, 12)), ("testdev", range(100, 104))):
        triples = [(f"{name}{i}", f"n{i}", answers[i % len(answers)]) for i in images]
        gqa_official(questions / f"{name}_balanced_questions.json", triples)


def nlvr2_inputs(workdir: Path) -> None:
    """LXMERT's NLVR2 feature TSVs and official NLVR2 files under the names the NLVR2 section gives."""
    from data_factory import image_record, nlvr2_official

    from lxmert_hf.data import write_tsv

    features, sentences = workdir / "data" / "nlvr2_imgfeat", workdir / "nlvr2"
    features.mkdir(parents=True, exist_ok=True)
    sentences.mkdir(exist_ok=True)
    for tsv, split, official in (("train", "train", "train"), ("valid", "dev", "dev"), ("test", "test1", "test1")):
        pairs = [f"{split}-{i}-0" for i in range(4)]
        images = [f"{pair}-img{side}" for pair in pairs for side in (0, 1)]
        write_tsv(features / f"{tsv}_obj36.tsv", [image_record(i, num_boxes=5, seed=n) for n, i in enumerate(images)])
        nlvr2_official(sentences / f"{official}.json", [f"{pair}-0" for pair in pairs], ["True", "False"] * 2)


def my_images(workdir: Path) -> None:
    """A few small photos for "Your own images, end to end"."""
    from PIL import Image

    folder = workdir / "my_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("kitchen", "street", "garden", "beach"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")


def my_boxes(workdir: Path) -> None:
    """Boxes for the photos of `my_images` (64 x 48 pixels), for "Features for your own boxes"."""
    boxes = {name: [[0, 0, 32, 24], [16, 12, 64, 48], [5, 5, 20, 40]] for name in ("kitchen", "street", "garden")}
    (workdir / "my_boxes.json").write_text(json.dumps({**boxes, "beach": [[10, 8, 50, 40]]}))


# A name in a block's comments -> what makes it.
INPUTS: dict[str, Callable[[Path], None]] = {
    "data/mscoco_imgfeat": coco_inputs,
    "data/coco-features": feature_store,
    "exported/coco-features": feature_store,
    "my_images/": my_images,
    "my_boxes.json": my_boxes,
    "data/vg_gqa_imgfeat/": gqa_inputs,
    "data/nlvr2_imgfeat/": nlvr2_inputs,
}


def environment(base: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ACCELERATE_", "HF_"))}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HOME": str(base / "hf-home"),
        "HF_HUB_CACHE": str(base / "hub"),
        "HF_DATASETS_CACHE": str(base / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    }


def run(command: list[str], cwd: Path, env: dict, what: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, (
        f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict]:
    import vqa_helpers as vh

    base = tmp_path_factory.mktemp("readme")
    env = environment(base)
    work = base / "work"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")
    hub_repo(base / "hub", "unc-nlp/lxmert-base-uncased", stand_in_pretrained(base / "lxmert-base-uncased"))
    vh.detector().save_pretrained(base / "frcnn-vg-finetuned")
    hub_repo(base / "hub", "unc-nlp/frcnn-vg-finetuned", base / "frcnn-vg-finetuned")
    quickstart_model(work, env)
    return work, env


# ---- the tests ----


def test_every_block_is_run_or_opted_out_with_a_reason():
    blocks = readme_blocks()
    languages = {block.language for block in blocks}
    assert languages <= {*RUN, *SHOWN}, f"fences other than {RUN} run nowhere; use ```python or ```bash"
    keys = [block.key for block in blocks if block.language in RUN]
    assert len(keys) == len(set(keys)), "two blocks start with the same line; OPTED_OUT could not tell them apart"
    stale = set(OPTED_OUT) - set(keys)
    assert not stale, f"OPTED_OUT names blocks README.md no longer has: {stale}"
    assert all(len(reason) > 20 for reason in OPTED_OUT.values())
    for block in blocks:
        if block.language == "json":
            json.loads(block.code)  # shown as the content of a file: it must be valid


def test_opted_out_blocks_parse():
    # They do not run, but they still have to be valid bash or Python.
    for block in readme_blocks():
        if block.key not in OPTED_OUT:
            continue
        if block.language == "python":
            compile(block.code, str(block), "exec")
        else:
            result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
            assert result.returncode == 0, f"{block}: {result.stderr}"


def run_block(block: Block, work: Path, env: dict, scripts: Path) -> str:
    """Run one block in `work` as a reader would (a script file, run by python or by bash that stops at the first
    failing command); returns what it printed, fails with its output if it exits non-zero."""
    script = scripts / f"block-line-{block.line}.{'py' if block.language == 'python' else 'sh'}"
    script.write_text(block.code, encoding="utf-8")
    command = (
        [sys.executable, str(script)] if block.language == "python" else ["bash", "-euo", "pipefail", str(script)]
    )
    return run(command, work, env, str(block))


@pytest.mark.parametrize(
    "language, code",
    [
        ("python", 'answers = pipe({"visual_feats": feats}, question="?")'),  # a name the block never defines
        ("bash", "lxmert-hf ask --model outputs/toy-vqa --features regions.npz --no-such-flag\necho done"),
    ],
)
def test_a_block_that_does_not_run_as_written_fails(tmp_path, language, code):
    with pytest.raises(AssertionError, match="exited"):
        run_block(Block(language, code, 1, "test"), tmp_path, environment(tmp_path), tmp_path)


@pytest.mark.slow
def test_readme_blocks_run(workdir, tmp_path):
    work, env = workdir
    ran, made = [], set()
    for block in readme_blocks():
        if block.language not in RUN or block.key in OPTED_OUT:
            continue
        for name, make in INPUTS.items():
            if name in block.comments and make not in made:
                make(work)
                made.add(make)
        output = run_block(block, work, env, tmp_path)
        print(f"--- {block}\n{output}")  # what each block printed, shown with `pytest -s`
        ran.append(block.line)
    assert len(ran) >= 6, ran
