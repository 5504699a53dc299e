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
