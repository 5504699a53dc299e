"""Small synthetic worlds for the three tasks: scenes, region features, questions or statements, and a tokenizer.

They exist so that the whole training path runs end to end on a laptop with nothing to download, and so that
learning can be checked: every question needs both the image and the words. Each world writes its task's official
files ([`ToyVQAWorld`]: VQA v2 questions with 10 annotator answers; [`ToyGQAWorld`]: GQA balanced questions with
one exact answer and a structural type; [`ToyNLVR2World`]: NLVR2 sentences about image pairs) and a feature TSV
whose regions carry the labels a Visual Genome detector would give them (`OBJECT_LABELS`: the shape;
`ATTRIBUTE_LABELS`: the color). For pre-training, `captions` writes captions of the scenes (`CAPTIONS_FILE`).
"""

from lxmert_hf.toy.captions import (
    CAPTIONS_FILE,
    CAPTIONS_PER_IMAGE,
    question_words,
    scene_captions,
    split_captions,
    write_captions,
)
from lxmert_hf.toy.gqa import CORNERS, GQA_SPLITS, STRUCTURAL_TYPES, GQAQuestion, ToyGQAWorld
from lxmert_hf.toy.nlvr2 import IDENTIFIER_SPLITS, NLVR2_SPLITS, PAIRS_PER_SET, ToyNLVR2World
from lxmert_hf.toy.scenes import (
    ATTRIBUTE_CODES,
    ATTRIBUTE_LABELS,
    BACKGROUND_SCORE,
    COLORS,
    FEATURE_BITS,
    IMAGE_HEIGHT,
    IMAGE_ID_FORMAT,
    IMAGE_WIDTH,
    NOISE_BITS,
    OBJECT_LABELS,
    OBJECT_SCORE,
    SHAPES,
    SIZES,
    SPLITS,
    ToyObject,
    ToyScenes,
    ToySplit,
    ToyWorldConfig,
    attribute_codes,
    normal_table,
    region_labels,
)
from lxmert_hf.toy.vqa import ANSWER_TYPES, TEMPLATE_WEIGHTS, TEMPLATES, Question, ToyVQAWorld

# Bumped whenever the same config would give a different world of that task, so that caches of prepared worlds
# are not reused.
GENERATION = 2
GENERATIONS = {"vqa": GENERATION, "gqa": 4, "nlvr2": 3}
WORLDS = {"vqa": ToyVQAWorld, "gqa": ToyGQAWorld, "nlvr2": ToyNLVR2World}
# The split names each task's world gives the config's `train`, `validation` and `test` (the task's official ones).
SPLIT_NAMES = {
    "vqa": {"train": "train", "validation": "val", "test": "test"},
    "gqa": GQA_SPLITS,
    "nlvr2": NLVR2_SPLITS,
}

__all__ = [
    "ANSWER_TYPES",
    "ATTRIBUTE_CODES",
    "ATTRIBUTE_LABELS",
    "BACKGROUND_SCORE",
    "CAPTIONS_FILE",
    "CAPTIONS_PER_IMAGE",
    "COLORS",
    "CORNERS",
    "FEATURE_BITS",
    "GENERATION",
    "GENERATIONS",
    "GQA_SPLITS",
    "IDENTIFIER_SPLITS",
    "IMAGE_HEIGHT",
    "IMAGE_ID_FORMAT",
    "IMAGE_WIDTH",
    "NLVR2_SPLITS",
    "NOISE_BITS",
    "OBJECT_LABELS",
    "OBJECT_SCORE",
    "PAIRS_PER_SET",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SPLIT_NAMES",
    "STRUCTURAL_TYPES",
    "TEMPLATES",
    "TEMPLATE_WEIGHTS",
    "WORLDS",
    "GQAQuestion",
    "Question",
    "ToyObject",
    "ToyScenes",
    "ToyGQAWorld",
    "ToyNLVR2World",
    "ToySplit",
    "ToyVQAWorld",
    "ToyWorldConfig",
    "attribute_codes",
    "normal_table",
    "question_words",
    "region_labels",
    "scene_captions",
    "split_captions",
    "write_captions",
]
