"""Batching pre-training examples with the masking of LXMERT's five objectives, for `LxmertForPreTraining`.

What is drawn, and with which probabilities, follows the original pre-training code (`lxmert_pretrain.py`,
`lxmert_data.py`); where a choice there differs from the paper's text, the collator has an option:

- Cross-modality matching: with probability `swap_probability` (0.5) a sentence is replaced by the sentence of
  another example whose image differs (`matched_label` 0), else kept (1). The original draws the other sentence from
  the whole dataset; here it comes from the batch, so that no other sentence has to be read.
- Masked language modeling: each word piece of the sentence ([CLS], [SEP] and padding never) is chosen with
  probability `word_mask_probability` (0.15); a chosen piece becomes [MASK] (80%), a random token of the vocabulary
  (10%), or stays (10%); `labels` holds its id there and -100 elsewhere. The original keeps these labels on swapped
  sentences too (the words can be recovered from the sentence alone); `lm_on_mismatched=False` drops them.
- Masked object prediction: each region is chosen with probability `object_mask_probability` (0.15); a chosen region's
  feature is zeroed (80%), replaced by a random region feature of the batch (10%; the original: of the dataset), or
  kept (10%). The feature regression target is the original feature, counted on chosen regions only. The object and
  attribute targets are the detector's labels, weighted by its confidences: on every region in the original (its
  authors' choice against over-fitting), on chosen regions only with `object_labels_on_masked_only=True`.
- Image question answering: `ans` is one answer of a question's label, drawn with probability proportional to its
  score (the only one when there is one), on matched question sentences only; -100 elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lxmert_hf.data.collator import VQADataCollator, _check_finite, batch_regions
from lxmert_hf.data.pretraining.dataset import REGION_LABEL_COLUMNS, VISUAL_LOSSES
from lxmert_hf.data.tokens import encode_questions
from lxmert_hf.losses import IGNORE_INDEX

_OBJECTIVE_FIX = (
    "load the data with `load_pretraining` (which reads them from the feature store), or leave {loss!r} out of "
    "`visual_losses`"
)


@dataclasses.dataclass
class PretrainingDataCollator(VQADataCollator):
    r"""
    Turn pre-training examples into the inputs and targets of `transformers.LxmertForPreTraining`.

    Each example holds `sentence` (str) or `input_ids`, `image_id`, `visual_feats` [num_boxes, dim], `visual_pos`
    [num_boxes, 4], for the `"obj"` / `"attr"` losses `object_ids` / `object_scores` and `attribute_ids` /
    `attribute_scores` [num_boxes], and for QA `is_question`, `qa_label_ids` and `qa_scores` (what
    [`~lxmert_hf.data.pretraining.load_pretraining`] hands out). The batch holds the model's inputs and `labels`
    [B, L], `obj_labels` `{"obj": (ids [B, R], confidences [B, R]), "attr": (...), "feat": (features [B, R, dim],
    chosen [B, R])}` (the `visual_losses` asked), `matched_label` [B] and `ans` [B]; ignored positions hold -100.
    For evaluations it also holds `masked_regions` [B, R] (bool: the regions chosen) and the whole label of each row
    with an answer, `qa_label_ids` / `qa_scores` [B, K] (-100 / 0 elsewhere), which the model ignores.
    The module docstring says how each is drawn.

    Without `seed`, draws come from torch's global random generator (in a `DataLoader` worker, the one the loader
    seeds for it), so that a `Trainer` run that is seeded, saved and resumed draws what an uninterrupted run draws.
    With `seed`, they come from a `torch.Generator` of the collator, seeded with `seed` (in a worker, with the
    worker's seed, which the loader derives from its seeded main process, anew every epoch): the same seeds give the
    same batches. With `fixed_draws`, each batch's draws are seeded by `seed` and its examples
    (their `sentence_id`s, else their sentences, in order) instead: a batch is always masked the same way, whatever
    was drawn before it, in whichever process or worker, as a held-out evaluation and an exactly resumed training
    run need (a shuffled epoch makes batches of its own).

    Args:
        tokenizer: the BERT tokenizer.
        max_question_length (`int`, *optional*, defaults to 20): sentence length in tokens, [CLS] and [SEP] included.
        word_mask_probability (`float`, *optional*, defaults to 0.15): the share of word pieces chosen.
        object_mask_probability (`float`, *optional*, defaults to 0.15): the share of regions chosen.
        swap_probability (`float`, *optional*, defaults to 0.5): the share of sentences swapped; 0 turns it off.
        visual_losses (`tuple[str]`, *optional*, defaults to `("obj", "attr", "feat")`): the keys of `obj_labels`, as
            the model's `visual_obj_loss` / `visual_attr_loss` / `visual_feat_loss` ask them.
        lm_on_mismatched (`bool`, *optional*, defaults to `True`): keep masked-LM labels on swapped sentences.
        object_labels_on_masked_only (`bool`, *optional*, defaults to `False`): object and attribute targets on
            chosen regions only.
        seed (`int`, *optional*): the seed of a generator of the collator's own (default: torch's global one).
        fixed_draws (`bool`, *optional*, defaults to `False`): seed each batch's draws by its examples.

    Example:
        ```python
        >>> import numpy as np
        >>> from transformers import BertTokenizer
        >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cube", "blue", "ball"]
        >>> tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
        >>> collate = PretrainingDataCollator(tokenizer, visual_losses=("feat",), seed=0)
        >>> examples = [
        ...     {"sentence": "a red cube", "image_id": "1", "visual_feats": np.ones((3, 8)),
        ...      "visual_pos": np.zeros((3, 4)), "is_question": False, "qa_label_ids": [], "qa_scores": []},
        ...     {"sentence": "a blue ball", "image_id": "2", "visual_feats": np.ones((3, 8)),
        ...      "visual_pos": np.zeros((3, 4)), "is_question": False, "qa_label_ids": [], "qa_scores": []},
        ... ]
        >>> batch = collate(examples)
        >>> sorted(batch)
        ['ans', 'attention_mask', 'input_ids', 'labels', 'masked_regions', 'matched_label', 'obj_labels',
         'qa_label_ids', 'qa_scores', 'token_type_ids', 'visual_feats', 'visual_pos']
        >>> batch["labels"].shape, batch["obj_labels"]["feat"][0].shape, batch["ans"].tolist()
        (torch.Size([2, 5]), torch.Size([2, 3, 8]), [-100, -100])
        ```
    """

    word_mask_probability: float = 0.15
    object_mask_probability: float = 0.15
    swap_probability: float = 0.5
    visual_losses: Sequence[str] = VISUAL_LOSSES
    lm_on_mismatched: bool = True
    object_labels_on_masked_only: bool = False
    seed: int | None = None
    fixed_draws: bool = False
    _rng: torch.Generator | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _rng_key: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        for name in ("word_mask_probability", "object_mask_probability", "swap_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {value}.")
        self.visual_losses = tuple(self.visual_losses)
        unknown = sorted(set(self.visual_losses) - set(VISUAL_LOSSES))
        if unknown:
            raise ValueError(f"unknown `visual_losses` {unknown}; choose among {list(VISUAL_LOSSES)}.")
        if self.tokenizer.mask_token_id is None:
            raise ValueError("The tokenizer has no [MASK] token, which masked language modeling needs.")

    def __getstate__(self) -> dict:
        # A generator does not travel to `DataLoader` workers: each one seeds its own.
        return {**self.__dict__, "_rng": None, "_rng_key": None}

    def generator(self) -> torch.Generator | None:
        """The generator of the draws in this process: `None` (torch's global one) without `seed`; else the
        collator's own (in a `DataLoader` worker, seeded with its worker seed)."""
        if self.seed is None:
            return None
        worker = torch.utils.data.get_worker_info()
        key = (os.getpid(), worker.seed if worker is not None else None)
        if self._rng is None or self._rng_key != key:
            seed = worker.seed if worker is not None else self.seed
            self._rng, self._rng_key = torch.Generator().manual_seed(seed), key
        return self._rng

    def _batch_generator(self, examples: Sequence[Mapping[str, Any]]) -> torch.Generator:
        """A generator seeded by `seed` and the batch's examples (`fixed_draws`)."""
        keys = [
            str(example.get("sentence_id", example.get("sentence", example.get("input_ids")))) for example in examples
        ]
        digest = zlib.crc32("\n".join(keys).encode("utf-8"), self.seed or 0)
        return torch.Generator().manual_seed(digest)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        generator = self._batch_generator(examples) if self.fixed_draws else self.generator()
        texts, matched = self._swap_sentences(examples, generator)
        batch = self._encode(texts)
        batch["labels"] = self._mask_words(batch, generator)
        if not self.lm_on_mismatched:
            batch["labels"][matched == 0] = IGNORE_INDEX
        batch["matched_label"] = matched
        batch.update(self._mask_regions(examples, generator))
        batch.update(self._answers(examples, matched, generator))
        return batch

    # -- cross-modality matching ----------------------------------------------------------------------------------
    def _swap_sentences(
        self, examples: Sequence[Mapping[str, Any]], generator: torch.Generator
    ) -> tuple[list[Any], torch.Tensor]:
        """Each example's text, swapped for another image's with `swap_probability`; `matched_label` [B]."""
        key = "input_ids" if "input_ids" in examples[0] else "sentence"
        texts = [example[key] for example in examples]
        if key == "sentence" and not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError("Every example needs a non-empty `sentence` string (or `input_ids`).")
        matched = torch.ones(len(examples), dtype=torch.long)
        swapped = torch.rand(len(examples), generator=generator) < self.swap_probability
        if not swapped.any():
            return texts, matched
        _, images = np.unique([str(example["image_id"]) for example in examples], return_inverse=True)
        swapped_texts = list(texts)
        for row in swapped.nonzero().flatten().tolist():
            others = np.flatnonzero(images != images[row])
            if len(others):  # a batch of one image has no other sentence to take: the pair stays matched
                other = int(others[torch.randint(len(others), (1,), generator=generator)])
                swapped_texts[row], matched[row] = texts[other], 0
        return swapped_texts, matched

    # -- masked language modeling ---------------------------------------------------------------------------------
    def _encode(self, texts: list[Any]) -> dict[str, torch.Tensor]:
        if isinstance(texts[0], str):
            return encode_questions(self.tokenizer, self._backend, texts, self.max_question_length)
        return self._pad(texts)

    def _mask_words(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Mask `batch["input_ids"]` in place; return the labels (the chosen pieces' ids, -100 elsewhere)."""
        input_ids = batch["input_ids"]
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(input_ids).bool()
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        first = torch.where(real, positions, input_ids.shape[1]).min(1, keepdim=True).values
        last = torch.where(real, positions, -1).max(1, keepdim=True).values
        pieces = real & (positions > first) & (positions < last)  # the sentence's word pieces: not [CLS], [SEP]
        draws = torch.rand(input_ids.shape, generator=generator)
        chosen = pieces & (draws < self.word_mask_probability)
        labels = torch.where(chosen, input_ids, IGNORE_INDEX)
        share = draws / max(self.word_mask_probability, 1e-12)  # uniform in [0, 1) on chosen pieces
        random_tokens = torch.randint(len(self.tokenizer), input_ids.shape, generator=generator)
        input_ids[chosen & (share < 0.8)] = self.tokenizer.mask_token_id
        randomized = chosen & (share >= 0.8) & (share < 0.9)
        input_ids[randomized] = random_tokens[randomized]
        return labels

    # -- masked object prediction ---------------------------------------------------------------------------------
    def _mask_regions(self, examples: Sequence[Mapping[str, Any]], generator: torch.Generator) -> dict[str, Any]:
        regions = batch_regions(
            [example["visual_feats"] for example in examples],
            [example["visual_pos"] for example in examples],
            [example.get("visual_attention_mask") for example in examples],
        )
        if self.check_finite:
            _check_finite(regions, examples)
        if self.zero_visual_inputs:
            regions["visual_pos"] = torch.zeros_like(regions["visual_pos"])
        original = regions["visual_feats"]  # may be the dataset's own array: never written to
        real = regions["visual_attention_mask"].bool() if "visual_attention_mask" in regions else None
        real = torch.ones(original.shape[:2], dtype=torch.bool) if real is None else real
        draws = torch.rand(original.shape[:2], generator=generator)
        chosen = real & (draws < self.object_mask_probability)
        share = draws / max(self.object_mask_probability, 1e-12)
        masked = torch.zeros_like(original) if self.zero_visual_inputs else original.clone()
        masked[chosen & (share < 0.8)] = 0.0
        randomized = chosen & (share >= 0.8) & (share < 0.9)
        if randomized.any() and not self.zero_visual_inputs:  # a baseline without vision sees no feature at all
            pool = real.nonzero()  # (row, region) of every real region of the batch
            picks = pool[torch.randint(len(pool), (int(randomized.sum()),), generator=generator)]
            masked[randomized] = original[picks[:, 0], picks[:, 1]]
        regions["visual_feats"] = masked
        regions["masked_regions"] = chosen
        if self.visual_losses:
            regions["obj_labels"] = self._object_targets(examples, original, real, chosen)
        return regions

    def _object_targets(
        self, examples: Sequence[Mapping[str, Any]], original: torch.Tensor, real: torch.Tensor, chosen: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        targets = {}
        for loss in self.visual_losses:
            if loss == "feat":
                targets["feat"] = (original, chosen.float())
                continue
            ids_column, scores_column = REGION_LABEL_COLUMNS[loss]
            ids = self._region_values(examples, ids_column, real, torch.long, loss)
            confidences = self._region_values(examples, scores_column, real, torch.float32, loss)
            if self.object_labels_on_masked_only:
                confidences = confidences * chosen
            targets[loss] = (ids, confidences)
        return targets

    def _region_values(
        self, examples: Sequence[Mapping[str, Any]], column: str, real: torch.Tensor, dtype: torch.dtype, loss: str
    ) -> torch.Tensor:
        """One value per region of each example, zero on padding regions: [B, R]."""
        given = [example.get(column) for example in examples]
        for row, values in enumerate(given):
            if values is None:
                raise ValueError(
                    f"example {examples[row].get('sentence_id', row)!r} has no `{column}`, which the visual loss "
                    f"{loss!r} needs; {_OBJECTIVE_FIX.format(loss=loss)}."
                )
        lengths = np.fromiter(map(len, given), dtype=np.int64, count=len(given))
        counts = real.sum(1).numpy()
        if (lengths != counts).any():
            row = int(np.flatnonzero(lengths != counts)[0])
            raise ValueError(
                f"example {examples[row].get('sentence_id', row)!r} has {lengths[row]} `{column}` for {counts[row]} "
                "regions; give one per region."
            )
        values = torch.zeros(real.shape, dtype=dtype)
        # Real regions come first in each row: row-major order of `real` is the concatenation of the examples'.
        values[real] = torch.from_numpy(np.concatenate([np.asarray(v) for v in given])).to(dtype)
        return values

    # -- image question answering ---------------------------------------------------------------------------------
    def _answers(
        self, examples: Sequence[Mapping[str, Any]], matched: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """`ans` [B]: one answer of each matched question's label, drawn by score; -100 elsewhere. With it, the
        whole label of those rows, `qa_label_ids` / `qa_scores` [B, K] (-100 / 0 elsewhere), which a held-out
        evaluation scores the predicted answer against (the original's QA accuracy)."""
        answers = torch.full((len(examples),), IGNORE_INDEX, dtype=torch.long)
        labels = [[] for _ in examples]
        for row, example in enumerate(examples):
            ids = example.get("qa_label_ids")
            ids = [] if ids is None else list(ids)
            if not example.get("is_question") or not len(ids) or not matched[row]:
                continue
            scores = torch.as_tensor(np.asarray(example["qa_scores"], dtype=np.float64))
            labels[row] = list(zip(ids, scores.tolist(), strict=True))
            if len(ids) == 1:
                answers[row] = int(ids[0])
                continue
            weights = scores if float(scores.sum()) > 0 else torch.ones_like(scores)
            answers[row] = int(ids[int(torch.multinomial(weights, 1, generator=generator))])
        width = max(1, max(map(len, labels)))
        label_ids = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        label_scores = torch.zeros((len(examples), width), dtype=torch.float32)
        for row, label in enumerate(labels):
            if label:
                label_ids[row, : len(label)] = torch.tensor([int(i) for i, _ in label])
                label_scores[row, : len(label)] = torch.tensor([float(v) for _, v in label])
        return {"ans": answers, "qa_label_ids": label_ids, "qa_scores": label_scores}
