"""Training data path: the original whole-TSV-in-RAM loading versus the memory-mapped feature store.

Generates a feature TSV in the original format (default 20,000 images x 36 regions x 2048 features, about 8 GB)
and VQA v2 official question/annotation files (5 questions per image) into a temporary folder, then measures, each
approach in its own process:

* original: decode the whole TSV into memory as the original code does, then a per-question dataset doing the
  original per-item work (copy the image's arrays, normalize and check boxes, build the target vector);
* store: `lxmert-hf prepare` and the questions' tokenization once (timed separately), then `load_prepared` as the
  recipes' training split (questions joined to the store at read time, each batch's regions read at once into one
  array), measured twice: with the store evicted from the page cache before opening it and before each
  configuration (every read from disk: a first epoch), and with the store read into the page cache first.

Both feed the same collator (`VQADataCollator`: it tokenizes the original's questions and pads the store's token
ids) in random order, at batch 32 and 256 with 0 and 2 `DataLoader` workers. A last row feeds the collator 512
examples already decoded in memory, held separately, with their questions as text: what the original's collation
costs by itself (tokenizing, stacking the regions), a ceiling for the original approach. Printed: time to first
batch, samples/s, peak RSS (main process; largest worker).

Usage:
    ```bash
    python benchmarks/data_pipeline.py                     # 20,000 images; needs ~15 GB free in /tmp
    python benchmarks/data_pipeline.py --num-images 2000   # a quick look
    ```
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [(32, 0), (32, 2), (256, 0), (256, 2)]
WORDS = ["what", "is", "the", "color", "of", "object", "in", "image", "how", "many", "are", "there", "?"]


# -- data generation ---------------------------------------------------------------------------------------------
def generate(workdir: Path, num_images: int, questions_per_image: int, boxes: int, dim: int) -> None:
    from lxmert_hf.data import write_tsv

    rng = np.random.default_rng(0)

    def images():
        for index in range(num_images):
            x1, y1 = rng.uniform(0, 300, boxes), rng.uniform(0, 200, boxes)
            yield {
                "image_id": f"COCO_train2014_{index:012d}",
                "image_width": 640,
                "image_height": 480,
                "boxes": np.stack([x1, y1, x1 + 300, y1 + 250], axis=1),
                "visual_feats": rng.random((boxes, dim), dtype=np.float32),
            }

    write_tsv(workdir / "features.tsv", images())
    questions, annotations = [], []
    pool = ["yes", "no", "2", "3", "red", "blue", "cat", "dog", "table", "white"]
    for image in range(num_images):
        for k in range(questions_per_image):
            qid = image * 100 + k
            questions.append({"image_id": image, "question": f"what is the color of object {k} ?", "question_id": qid})
            answers = [pool[i] for i in rng.integers(0, len(pool), 10)]
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image,
                    "answer_type": "other",
                    "question_type": "what",
                    "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers, 1)],
                }
            )
    header = {"data_subtype": "train2014", "data_type": "mscoco"}
    (workdir / "questions.json").write_text(json.dumps({**header, "questions": questions}))
    (workdir / "annotations.json").write_text(json.dumps({**header, "annotations": annotations}))
    (workdir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, *map(str, range(10))]))


# -- the original approach ---------------------------------------------------------------------------------------
def load_whole_tsv(path: Path) -> dict[str, dict]:
    """Decode every image of the TSV into numpy arrays held in memory (the original loading)."""
    from lxmert_hf.data.tsv import iter_tsv

    images = {}
    for _, record in iter_tsv(path):
        record["visual_feats"] = record["visual_feats"].copy()  # own the bytes, as decoding into arrays does
        images[record["image_id"]] = record
    return images


class OriginalDataset:
    """The original per-question dataset: per item, copy the arrays, normalize and check boxes, build the target."""

    def __init__(self, images: dict, questions: list[dict], label2id: dict[str, int]):
        self.images, self.questions, self.label2id = images, questions, label2id

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        import torch

        question = self.questions[index]
        image = self.images[question["img_id"]]
        feats, boxes = image["visual_feats"].copy(), image["boxes"].copy()
        boxes[:, (0, 2)] /= image["image_width"]
        boxes[:, (1, 3)] /= image["image_height"]
        np.testing.assert_array_less(boxes, 1 + 1e-5)
        np.testing.assert_array_less(-boxes, 0 + 1e-5)
        target = torch.zeros(len(self.label2id))
        for answer, score in question["label"].items():
            if answer in self.label2id:
                target[self.label2id[answer]] = score
        return {"question": question["sent"], "visual_feats": feats, "visual_pos": boxes, "labels": target}


def open_original(workdir: Path):
    from lxmert_hf.answers import AnswerVocabulary, soft_scores

    images = load_whole_tsv(workdir / "features.tsv")
    questions = json.loads((workdir / "questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((workdir / "annotations.json").read_text())["annotations"]}
    data = []
    for q in questions:
        answers = [a["answer"] for a in annotations[q["question_id"]]["answers"]]
        data.append(
            {"img_id": f"COCO_train2014_{q['image_id']:012d}", "sent": q["question"], "label": soft_scores(answers)}
        )
    vocabulary = AnswerVocabulary.build([a["multiple_choice_answer"] for a in annotations.values()], min_count=9)
    return OriginalDataset(images, data, vocabulary.label2id)


class InMemoryExamples:
    """Examples already decoded and held in memory: what collation alone costs, the ceiling of any data source."""

    def __init__(self, examples: list[dict], length: int):
        self.examples, self.length = examples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.examples[index % len(self.examples)]


def open_collator_only(workdir: Path) -> InMemoryExamples:
    from lxmert_hf.data import load_prepared

    store = load_prepared(workdir / "prepared", "train", columns=["question"])
    examples = [{k: v.copy() if isinstance(v, np.ndarray) else v for k, v in store[i].items()} for i in range(512)]
    return InMemoryExamples(examples, len(store))


def open_store(workdir: Path):
    from lxmert_hf.data import load_prepared

    # As the recipes load their training split: the columns the collator reads, the questions' token ids cached.
    return load_prepared(workdir / "prepared", "train", columns=["question"], tokenizer=make_tokenizer(workdir))


# -- measuring ---------------------------------------------------------------------------------------------------
def make_tokenizer(workdir: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(workdir / "vocab.txt"))


def make_collator(workdir: Path):
    from lxmert_hf.data.collator import VQADataCollator

    return VQADataCollator(make_tokenizer(workdir))


def loader(dataset, collate, batch_size: int, workers: int):
    import torch

    context = "fork" if workers else None  # the original code ran on Linux with forked workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context=context,
    )


def _endless(batches):
    while True:  # small runs may need more than one epoch
        yield from batches


def samples_per_second(dataset, collate, batch_size: int, workers: int) -> float:
    batches = _endless(loader(dataset, collate, batch_size, workers))
    for _ in range(2 + workers):  # warm-up: worker start and the first prefetched batches
        next(batches)
    count = max(8, min(40, 8192 // batch_size))
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - start)


def store_files(workdir: Path) -> list[Path]:
    return [path for path in (workdir / "prepared").rglob("*") if path.is_file()]


def set_page_cache(paths: list[Path], cached: bool) -> None:
    """Evict these files from the page cache (`cached=False`), or read them into it (`cached=True`)."""
    for path in paths:
        with open(path, "rb") as handle:
            if cached:
                while handle.read(1 << 24):
                    pass
            else:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def time_load_features(workdir: Path, cold: bool) -> float:
    """Seconds to open the store as a memory-mapped `datasets.Dataset` with `load_features`."""
    from lxmert_hf.data import load_features

    set_page_cache(store_files(workdir), cached=not cold)
    start = time.perf_counter()
    load_features(workdir / "prepared" / "features")
    return time.perf_counter() - start


def measure(workdir: Path, approach: str) -> dict:
    """Time to first batch and samples/s of one approach: `original`, `store-cold` or `store-warm`."""
    import torch

    torch.set_num_threads(1)
    collate = make_collator(workdir)
    cold = approach == "store-cold"
    result = {"approach": approach}
    if approach.startswith("store"):
        result["load_features_s"] = time_load_features(workdir, cold)
        set_page_cache(store_files(workdir), cached=not cold)
    start = time.perf_counter()
    opener = {"original": open_original, "collator-only": open_collator_only}.get(approach, open_store)
    dataset = opener(workdir)
    next(iter(loader(dataset, collate, 32, 0)))
    result["first_batch_s"] = time.perf_counter() - start
    for batch_size, workers in CONFIGS:
        if cold:  # every configuration starts from disk
            set_page_cache(store_files(workdir), cached=False)
        result[f"b{batch_size}_w{workers}"] = samples_per_second(dataset, collate, batch_size, workers)
    result["rss_main_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["rss_worker_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return result


def prepare(workdir: Path) -> dict:
    from lxmert_hf.data import prepare_vqa

    start = time.perf_counter()
    prepare_vqa(
        workdir / "prepared",
        feature_files=[workdir / "features.tsv"],
        train_questions=workdir / "questions.json",
        train_annotations=workdir / "annotations.json",
        cache_dir=workdir / "cache",
        progress=False,
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    open_store(workdir)  # tokenizes the questions once; the measured phases read the cached ids
    return {
        "prepare_s": seconds,
        "tokenize_s": time.perf_counter() - start,
        "prepare_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


# -- driver ------------------------------------------------------------------------------------------------------
def run_phase(phase: str, workdir: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)]
    command += ["--num-images", str(args.num_images), "--boxes", str(args.boxes), "--dim", str(args.dim)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    output = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_table(args, sizes: dict, prep: dict, rows: list[dict]) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}")
    print(
        f"data pipeline: {args.num_images} images x {args.boxes} boxes x {args.dim} features, "
        f"{args.num_images * 5} questions; TSV {sizes['tsv']:.2f} GB, store {sizes['store']:.2f} GB"
    )
    prep_rss = prep["prepare_rss_gb"]
    print(
        f"prepare (one-off, TSV -> store + questions): {prep['prepare_s']:.1f} s, then tokenizing the questions "
        f"(one-off, cached): {prep['tokenize_s']:.1f} s; peak RSS {prep_rss:.2f} GB"
    )
    header = "| approach | first batch (s) | " + " | ".join(f"samples/s b{b} w{w}" for b, w in CONFIGS)
    print(header + " | peak RSS main (GB) | peak RSS worker (GB) |")
    print("|" + "---|" * (len(CONFIGS) + 4))
    for row in rows:
        rates = " | ".join(f"{row[f'b{b}_w{w}']:,.0f}" for b, w in CONFIGS)
        rss = f"{row['rss_main_gb']:.2f} | {row['rss_worker_gb']:.2f}"
        print(f"| {row['approach']} | {row['first_batch_s']:.2f} | {rates} | {rss} |")
    for row in rows[1:3]:
        ratios = " | ".join(f"{row[f'b{b}_w{w}'] / rows[0][f'b{b}_w{w}']:.1f}x" for b, w in CONFIGS)
        first = rows[0]["first_batch_s"] / row["first_batch_s"]
        print(f"| {row['approach']} / original | {first:,.0f}x sooner | {ratios} | | |")
    opened = ", ".join(f"{row['load_features_s']:.2f} s ({row['approach']})" for row in rows[1:3])
    print(f"load_features (the store as a memory-mapped datasets.Dataset) opens in {opened}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=20_000)
    parser.add_argument("--boxes", type=int, default=36)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, help="where to generate (default: a new folder in /tmp, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    phases = ["generate", "prepare", "original", "store-cold", "store-warm", "collator-only"]
    parser.add_argument("--phase", choices=phases, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        if args.phase == "generate":
            generate(args.workdir, args.num_images, 5, args.boxes, args.dim)
            print(json.dumps({}))
        else:
            print(json.dumps(prepare(args.workdir) if args.phase == "prepare" else measure(args.workdir, args.phase)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lxmert-data-pipeline-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run_phase("generate", workdir, args)
        prep = run_phase("prepare", workdir, args)
        approaches = ("original", "store-cold", "store-warm", "collator-only")
        rows = [run_phase(approach, workdir, args) for approach in approaches]
        sizes = {
            "tsv": (workdir / "features.tsv").stat().st_size / 1e9,
            "store": sum(p.stat().st_size for p in (workdir / "prepared" / "features").glob("shard-*")) / 1e9,
        }
        print_table(args, sizes, prep, rows)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
