"""Questions per second of `VQAPipeline` on precomputed features, against calling transformers'
`LxmertForQuestionAnswering` directly, in the same run, at batch sizes 1 and 64.

Shapes are LXMERT-base's (hidden 768, 12 heads, 9 language / 5 cross / 5 vision layers, 30,522 words, 2048-d
features of 36 regions, 3,129 answers) with random weights: the cost does not depend on them. Questions are
synthetic VQA-style sentences of 5-12 words, truncated to 20 tokens as in training.

Both sides do the same work per question: tokenize, run the model, softmax, keep the top 5 answers with their
names. The direct path batches by hand (tokenizer on the batch, features stacked with numpy); the pipeline gets a
list of `{"image": features, "question": ...}` dicts and `batch_size`. The pipeline's model holds the same
weights; its `eager` rows use the same attention code as the direct model, so the difference is the pipeline's
overhead; the `sdpa` rows show the library's default attention. Runs are interleaved (order rotated), after one
warm-up batch each, and the median of `--repeats` is reported, in wall and in CPU seconds of this process. On the
CPU, rates and ratios use CPU seconds, which other jobs on a shared machine do not inflate; on a GPU they use wall
seconds (the host mostly waits there, and each path ends by copying its scores back, which synchronizes). Overhead
= extra time per question against the direct call. The script checks that all paths give the same answers.
`--num-workers N` adds a row with N DataLoader workers preparing the pipeline's batches (compare it by wall time:
the CPU column counts this process only).

Run:
    ```bash
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pipeline.py [--questions-b64 64] [--repeats 3]
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pipeline.py --host-only --questions-b64 1024 --repeats 7
    PYTHONPATH=src python benchmarks/pipeline.py --device cuda --questions-b1 64 --questions-b64 1024
    ```
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import BertTokenizerFast, LxmertConfig, LxmertForQuestionAnswering

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, VQAPipeline

WORDS = ["what", "color", "is", "the", "how", "many", "are", "there", "in", "picture", "man", "woman", "holding",
         "dog", "cat", "on", "table", "of", "this", "a", "wearing", "shirt", "sport", "playing", "where", "room",
         "kind", "food", "plate", "left", "right", "does", "have", "people", "sky", "clear", "?"]  # fmt: skip
BASE = dict(
    hidden_size=768, num_attention_heads=12, intermediate_size=3072, l_layers=9, x_layers=5, r_layers=5,
    vocab_size=30522, visual_feat_dim=2048, num_qa_labels=3129,
)  # fmt: skip
# `--host-only`: the same inputs, vocabulary and answers through a model of almost no arithmetic, so the table shows
# the host work of each path (what is left of a batch's time when a fast GPU does the model).
HOST_ONLY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1, r_layers=1)
REGIONS, TOP_K, MAX_QUESTION_LENGTH = 36, 5, 20


def make_tokenizer(folder: str) -> BertTokenizerFast:
    """A BERT WordPiece tokenizer whose vocabulary has BERT's size, so lookups cost what they cost with the real
    one (the real vocabulary would need a download)."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    filler = [f"w{i}" for i in range(BASE["vocab_size"] - len(special) - len(WORDS))]
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join([*special, *WORDS, *filler]) + "\n")
    return BertTokenizerFast(vocab_file=path)


def make_examples(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        words = rng.choice(WORDS[:-1], size=rng.integers(5, 13))
        corners = np.sort(rng.random((REGIONS, 2, 2)), axis=1).reshape(REGIONS, 4).astype(np.float32)
        features = {"visual_feats": rng.random((REGIONS, 2048), dtype=np.float32), "visual_pos": corners}
        examples.append({"image": features, "question": " ".join(words) + "?"})
    return examples


@torch.no_grad()
def direct(model, tokenizer, answers, examples, batch_size):
    """What a user writes without the pipeline: tokenize a batch, stack features, run, softmax, top 5."""
    device, results = model.device, []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        encoding = tokenizer(
            [e["question"] for e in batch], padding=True, truncation=True, max_length=MAX_QUESTION_LENGTH,
            return_tensors="pt",
        ).to(device)  # fmt: skip
        feats = torch.from_numpy(np.stack([e["image"]["visual_feats"] for e in batch])).to(device)
        pos = torch.from_numpy(np.stack([e["image"]["visual_pos"] for e in batch])).to(device)
        scores = model(**encoding, visual_feats=feats, visual_pos=pos).question_answering_score.softmax(-1)
        values, indices = scores.topk(TOP_K)
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            results.append([{"answer": answers[i], "score": v} for v, i in zip(row_values, row_indices, strict=True)])
    return results


def timed(function, *args) -> tuple[float, float, list]:
    """Wall seconds and CPU seconds of this process. On a shared machine the CPU time is the fairer measure: it
    counts the work done, not the time other jobs held the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def make_pipelines(reference, answers, tokenizer, device: str) -> dict[str, VQAPipeline]:
    """Pipelines over an `LxmertForVQA` holding the reference's weights, with eager and with SDPA attention."""
    fields = {k: v for k, v in BASE.items() if k != "num_qa_labels"}
    state = reference.state_dict()  # the same module names as LxmertForVQA's
    pipelines = {}
    for backend in ("eager", "sdpa"):
        model = LxmertForVQA(LxmertVQAConfig.from_answers(answers, attention_backend=backend, **fields))
        model.load_state_dict(state, strict=True)
        pipelines[backend] = VQAPipeline(model.eval(), tokenizer, device=device, top_k=TOP_K)
    return pipelines


def describe(device: str) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions-b1", type=int, default=16, help="questions timed at batch size 1")
    parser.add_argument("--questions-b64", type=int, default=64, help="questions timed at batch size 64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--host-only", action="store_true",
        help="a model of almost no arithmetic (hidden 32, one layer each) with the same inputs: times the host work",
    )  # fmt: skip
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="also time the default pipeline with this many DataLoader workers preparing batches (0: no such row)",
    )  # fmt: skip
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu.")
    if on_gpu:  # fp32 means fp32 on both sides: no TF32 matrix products
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    if args.host_only:
        BASE.update(HOST_ONLY)
    torch.manual_seed(0)
    reference = LxmertForQuestionAnswering(LxmertConfig(**BASE)).eval()
    answers = [f"answer {i}" for i in range(BASE["num_qa_labels"])]
    tokenizer = make_tokenizer(tempfile.mkdtemp())
    pipelines = make_pipelines(reference, answers, tokenizer, args.device)
    reference.to(args.device)
    measure = "wall" if on_gpu else "CPU"

    print(
        f"# pipeline: {'host work only (hidden 32, one layer each)' if args.host_only else 'LXMERT-base shapes'}, "
        f"{REGIONS} regions x 2048, {BASE['num_qa_labels']} answers, top {TOP_K}; "
        f"{datetime.date.today()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, device {describe(args.device)}, rates from {measure} seconds, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    rows, same = [], True
    for batch_size, count in ((1, args.questions_b1), (64, args.questions_b64)):
        examples = make_examples(count)
        warm = examples[: min(batch_size, count)]
        paths = {
            "direct LxmertForQuestionAnswering": lambda ex, b=batch_size: direct(reference, tokenizer, answers, ex, b),
            "VQAPipeline (eager attention)": lambda ex, b=batch_size: pipelines["eager"](ex, batch_size=b),
            "VQAPipeline (sdpa, default)": lambda ex, b=batch_size: pipelines["sdpa"](ex, batch_size=b),
        }
        if args.num_workers and batch_size > 1:
            paths[f"VQAPipeline (sdpa, {args.num_workers} loader workers)"] = lambda ex, b=batch_size: pipelines[
                "sdpa"
            ](ex, batch_size=b, num_workers=args.num_workers)
        for function in paths.values():
            function(warm)
        walls, cpus = {name: [] for name in paths}, {name: [] for name in paths}
        outputs, names = {}, list(paths)
        for repeat in range(args.repeats):
            # Rotate the order so that no path always runs first (or right after another).
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                wall, cpu, outputs[name] = timed(paths[name], examples)
                walls[name].append(wall)
                cpus[name].append(cpu)
        expected = [[a["answer"] for a in r] for r in outputs["direct LxmertForQuestionAnswering"]]
        for name in paths:
            same &= [[a["answer"] for a in r] for r in outputs[name]] == expected
        used = walls if on_gpu else cpus
        base = statistics.median(used["direct LxmertForQuestionAnswering"])
        for name in paths:
            wall, cpu, seconds = (statistics.median(x[name]) for x in (walls, cpus, used))
            rows.append((batch_size, name, count, wall, cpu, count / seconds, base / seconds))
    print(f"same top-{TOP_K} answers on every path: {'yes' if same else 'NO'}")
    print(f"| batch | path | questions | wall s | CPU s | questions per {measure} s | vs direct | overhead |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch_size, name, count, wall, cpu, rate, ratio in rows:
        print(
            f"| {batch_size} | {name} | {count} | {wall:.2f} | {cpu:.2f} | {rate:.2f} | {ratio:.3f} | "
            f"{(1 / ratio - 1) * 100:+.1f}% |"
        )


if __name__ == "__main__":
    main()
