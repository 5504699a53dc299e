"""Small synthetic source files in the real formats (feature TSV, VQA / GQA / NLVR2 JSON) for the data tests."""

import json

import numpy as np

from lxmert_hf.data import prepare_features, write_tsv

ANSWER_POOL = ["yes", "no", "2", "red", "Two", "blue", "cat"]


def image_record(image_id, num_boxes=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 30, num_boxes), rng.uniform(0, 20, num_boxes)
    return {
        "image_id": image_id,
        "image_width": 64,
        "image_height": 48,
        "boxes": np.stack([x1, y1, x1 + 30, y1 + 25], axis=1).astype(np.float32),
        "visual_feats": rng.standard_normal((num_boxes, dim)).astype(np.float32),
    }


def make_store(path, image_ids, tsv=None, **kwargs):
    """Write a TSV of the images and prepare a store from it; returns the records by image id."""
    records = {image_id: image_record(image_id, seed=i, **kwargs) for i, image_id in enumerate(image_ids)}
    tsv = tsv or path.parent / f"{path.name}.tsv"
    write_tsv(tsv, records.values())
    prepare_features([tsv], path, progress=False)
    return records


def coco_id(subtype, image_id):
    return f"COCO_{subtype}_{image_id:012d}"


def vqa_official(folder, subtype, image_ids, per_image=2, seed=0, with_annotations=True, pool=ANSWER_POOL):
    """Official VQA v2 questions (+ annotations) files, answers drawn from `pool`; returns their paths."""
    rng = np.random.default_rng(seed)
    questions, annotations = [], []
    for image_id in image_ids:
        for k in range(per_image):
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": f"what is {k}?", "question_id": question_id})
            answers = [str(rng.choice(pool)) for _ in range(10)]
            annotations.append(
                {
                    "question_type": "what is",
                    "multiple_choice_answer": answers[0],
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, 1)
                    ],
                    "image_id": image_id,
                    "answer_type": "other",
                    "question_id": question_id,
                }
            )
    header = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco"}
    q_path = folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    q_path.write_text(json.dumps({**header, "task_type": "Open-Ended", "questions": questions}))
    if not with_annotations:
        return q_path, None
    a_path = folder / f"v2_mscoco_{subtype}_annotations.json"
    a_path.write_text(json.dumps({**header, "annotations": annotations}))
    return q_path, a_path


def gqa_official(path, questions):
    """An official balanced GQA questions file from `(question_id, image_id, answer)` triples."""
    data = {
        qid: {"imageId": image, "question": f"what is on {image}?", "answer": answer, "fullAnswer": answer,
              "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}}
        for qid, image, answer in questions
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def nlvr2_official(path, identifiers, labels):
    """An official NLVR2 JSON-lines file."""
    lines = [
        json.dumps({"identifier": i, "sentence": f"sentence {i}", "label": label, "synset": "dog"})
        for i, label in zip(identifiers, labels, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
