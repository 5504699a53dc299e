import pickle

import datasets
import numpy as np
import pytest
from data_factory import image_record

from lxmert_hf.data import FeatureLookup, FeatureStoreWriter, attach_features


def write(path, records, **kwargs):
    with FeatureStoreWriter(path, **kwargs) as writer:
        for record in records:
            writer.add(record)


def test_lookup_returns_the_stored_features_as_views(tmp_path):
    records = [image_record(f"img{i}", num_boxes=1 + i % 5, seed=i) for i in range(23)]
    write(tmp_path / "s", records, images_per_shard=7, batch_size=3)
    lookup = FeatureLookup(tmp_path / "s")
    assert len(lookup) == 23 and lookup.image_ids[:2] == ["img0", "img1"]
    for record in reversed(records):
        regions = lookup[record["image_id"]]
        np.testing.assert_array_equal(regions["visual_feats"], record["visual_feats"])
        np.testing.assert_allclose(regions["visual_pos"], record["boxes"] / [64, 48, 64, 48], rtol=1e-6)
        assert not regions["visual_feats"].flags.writeable  # a view of the mapped file, not a copy
    with pytest.raises(KeyError, match="'nope' is not in the feature store"):
        lookup["nope"]
    copy = pickle.loads(pickle.dumps(lookup))
    np.testing.assert_array_equal(copy["img9"]["visual_feats"], records[9]["visual_feats"])


def test_lookup_without_page_population_still_serves_the_features(tmp_path, monkeypatch):
    """A kernel that rejects MADV_POPULATE_READ (older than 5.14) turns it off; pages are then mapped as read."""
    from lxmert_hf.data import join

    records = [image_record(f"img{i}", num_boxes=3, seed=i) for i in range(4)]
    write(tmp_path / "s", records)
    monkeypatch.setattr(join, "MADV_POPULATE_READ", 9999)  # an advice no kernel knows: madvise raises EINVAL
    lookup = FeatureLookup(tmp_path / "s")
    regions = lookup.get_many(["img3", "img1"])
    assert not lookup._populate
    np.testing.assert_array_equal(regions[0]["visual_feats"], records[3]["visual_feats"])
    np.testing.assert_array_equal(regions[1]["visual_feats"], records[1]["visual_feats"])


def test_float16_store_serves_float16(tmp_path):
    write(tmp_path / "s", [image_record("a")], dtype="float16")
    assert FeatureLookup(tmp_path / "s")["a"]["visual_feats"].dtype == np.float16


def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_reading_the_whole_store_keeps_rss_bounded(tmp_path):
    # 160 images x 36 x 2048 float32 = 45 MiB of features
    write(tmp_path / "s", (image_record(f"i{i}", num_boxes=36, dim=2048, seed=i) for i in range(160)))
    lookup = FeatureLookup(tmp_path / "s", max_mapped_bytes=4 * 2**20)
    before = rss_mib()
    total = sum(float(lookup[image_id]["visual_feats"].sum()) for image_id in lookup.image_ids)
    assert np.isfinite(total)
    assert rss_mib() - before < 15


def test_missing_images_are_counted_or_dropped(tmp_path):
    write(tmp_path / "s", [image_record("a"), image_record("b")])
    questions = datasets.Dataset.from_dict({"image_id": ["a", "x", "b", "y", "y"], "question": ["?"] * 5})
    with pytest.raises(ValueError, match=r"3 of 5 questions refer to images .* \['x', 'y', 'y'\]"):
        attach_features(questions, tmp_path / "s")
    kept = attach_features(questions, tmp_path / "s", skip_missing=True)
    assert [example["image_id"] for example in kept] == ["a", "b"]


def test_gather_reads_a_zero_padded_batch_in_the_order_asked(tmp_path):
    records = [image_record(f"img{i}", num_boxes=1 + i % 5, seed=i) for i in range(23)]
    write(tmp_path / "s", records, images_per_shard=7, batch_size=3)
    lookup = FeatureLookup(tmp_path / "s", read_threads=3)
    order = [14, 2, 22, 2, 7, 0, 19, 11]  # several shards, a repeat, more jobs than threads
    batch = lookup.gather([f"img{i}" for i in order])
    assert batch.visual_feats.shape == (8, 5, records[0]["visual_feats"].shape[1])
    assert batch.visual_feats.dtype == np.float32 and batch.visual_feats.flags.writeable
    assert batch.num_boxes.tolist() == [1 + i % 5 for i in order]
    for row, index in enumerate(order):
        count = 1 + index % 5
        np.testing.assert_array_equal(batch.visual_feats[row, :count], records[index]["visual_feats"])
        np.testing.assert_array_equal(batch.visual_pos[row, :count], lookup[f"img{index}"]["visual_pos"])
        assert not batch.visual_feats[row, count:].any() and not batch.visual_pos[row, count:].any()
        assert batch.visual_attention_mask[row].tolist() == [1] * count + [0] * (5 - count)
    with pytest.raises(KeyError, match="'nope' is not in the feature store"):
        lookup.gather(["img1", "nope"])
    with pytest.raises(ValueError, match="`image_ids` is empty"):
        lookup.gather([])
    with pytest.raises(ValueError, match="`read_threads` must be at least 1"):
        FeatureLookup(tmp_path / "s", read_threads=0)


def test_gather_converts_float16_stores_to_float32(tmp_path):
    records = [image_record(f"i{i}", num_boxes=3, seed=i) for i in range(3)]
    write(tmp_path / "s", records, dtype="float16")
    batch = FeatureLookup(tmp_path / "s").gather(["i2", "i0"])
    assert batch.visual_feats.dtype == np.float32
    np.testing.assert_array_equal(batch.visual_feats[0], records[2]["visual_feats"].astype(np.float16))


@pytest.mark.parametrize("fallback", ["no_nowait", "nowait_rejected", "no_preadv", "one_thread"])
def test_gather_falls_back_where_the_platform_lacks_a_read_feature(tmp_path, monkeypatch, fallback):
    import os

    records = [image_record(f"i{i}", num_boxes=2 + i % 3, seed=i) for i in range(9)]
    write(tmp_path / "s", records, images_per_shard=4)
    threads = 1 if fallback == "one_thread" else 2
    if fallback == "no_nowait":
        monkeypatch.delattr(os, "RWF_NOWAIT", raising=False)
    elif fallback == "nowait_rejected":  # an unknown flag: the kernel answers EINVAL/EOPNOTSUPP
        monkeypatch.setattr(os, "RWF_NOWAIT", 1 << 30, raising=False)
    elif fallback == "no_preadv":
        monkeypatch.delattr(os, "preadv")
    lookup = FeatureLookup(tmp_path / "s", read_threads=threads)
    batch = lookup.gather([f"i{i}" for i in range(9)] * 2)
    for row in range(18):
        count = 2 + row % 9 % 3
        np.testing.assert_array_equal(batch.visual_feats[row, :count], records[row % 9]["visual_feats"])
    if fallback == "nowait_rejected":
        assert lookup._reader._nowait is None


def test_gather_names_a_truncated_store(tmp_path):
    write(tmp_path / "s", [image_record(f"i{i}", num_boxes=4, seed=i) for i in range(3)])
    lookup = FeatureLookup(tmp_path / "s", read_threads=1)
    shard = lookup._paths[0]
    with open(shard, "r+b") as handle:  # cut the shard inside the last image's features
        handle.truncate(int(lookup._feats_offset[2]) + 8)
    with pytest.raises(OSError, match="the feature store is truncated; prepare it again"):
        lookup.gather(["i2"])


def test_gather_after_fork_opens_its_own_files(tmp_path):
    """A reader made before `fork` (DataLoader workers) is not reused in the child: threads do not survive fork."""
    import os

    write(tmp_path / "s", [image_record(f"i{i}", num_boxes=3, seed=i) for i in range(4)])
    lookup = FeatureLookup(tmp_path / "s", read_threads=2)
    expected = lookup.gather(["i3", "i1", "i0", "i2", "i1"]).visual_feats
    parent_reader = lookup._reader
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports whether it read the same bytes through a reader of its own
        same = np.array_equal(lookup.gather(["i3", "i1", "i0", "i2", "i1"]).visual_feats, expected)
        os.write(write_end, b"1" if same and lookup._reader is not parent_reader else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_joined_batches_reach_the_collator_as_one_array(tmp_path):
    """Map-style: a DataLoader batch is one `gather`; its rows go to the collator as one array, in order."""
    import torch
    from transformers import BertTokenizer

    from lxmert_hf.data.collator import VQADataCollator

    records = [image_record(f"img{i}", num_boxes=4, seed=i) for i in range(6)]
    write(tmp_path / "s", records)
    order = [5, 0, 3, 3, 1]
    questions = datasets.Dataset.from_dict(
        {"image_id": [f"img{i}" for i in order], "question": ["what?"] * 5,
         "label_answers": [["yes"]] * 5, "label_scores": [[0.6]] * 5}
    )  # fmt: skip
    joined = attach_features(questions, tmp_path / "s", label2id={"no": 0, "yes": 1})
    tokenizer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "what": 4, "?": 5})
    batch = next(iter(torch.utils.data.DataLoader(joined, batch_size=5, collate_fn=VQADataCollator(tokenizer))))
    expected = np.stack([records[i]["visual_feats"] for i in order])
    np.testing.assert_array_equal(batch["visual_feats"].numpy(), expected)
    assert batch["labels"].tolist() == [[0.0, pytest.approx(0.6)]] * 5
    streamed = attach_features(questions.to_iterable_dataset(num_shards=2), tmp_path / "s", label2id={"yes": 0})
    np.testing.assert_array_equal(np.stack([e["visual_feats"] for e in streamed]), expected)
