"""FeatureStore: the regions of images by id, as views and as batches, on each read path the platform offers."""

import os
import pickle

import numpy as np
import pytest
from data_factory import image_record

from lxmert_hf.data import FeatureStore, FeatureStoreWriter
from lxmert_hf.data.store import fastread


def write(path, records, **kwargs):
    with FeatureStoreWriter(path, **kwargs) as writer:
        for record in records:
            writer.add(record)


def test_store_returns_the_stored_features_as_views(tmp_path):
    records = [image_record(f"img{i}", num_boxes=1 + i % 5, seed=i) for i in range(23)]
    write(tmp_path / "s", records, images_per_shard=7, batch_size=3)
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 23 and store.image_ids[:2] == ["img0", "img1"]
    for record in reversed(records):
        regions = store[record["image_id"]]
        np.testing.assert_array_equal(regions["visual_feats"], record["visual_feats"])
        np.testing.assert_allclose(regions["visual_pos"], record["boxes"] / [64, 48, 64, 48], rtol=1e-6)
        assert not regions["visual_feats"].flags.writeable  # a view of the mapped file, not a copy
    with pytest.raises(KeyError, match="'nope' is not in the feature store"):
        store["nope"]
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy["img9"]["visual_feats"], records[9]["visual_feats"])


def test_store_without_page_population_still_serves_the_features(tmp_path, monkeypatch):
    """A kernel that rejects MADV_POPULATE_READ (older than 5.14) turns it off; pages are then mapped as read."""
    records = [image_record(f"img{i}", num_boxes=3, seed=i) for i in range(4)]
    write(tmp_path / "s", records)
    monkeypatch.setattr(fastread, "MADV_POPULATE_READ", 9999)  # an advice no kernel knows: madvise raises EINVAL
    store = FeatureStore(tmp_path / "s")
    regions = store.get_many(["img3", "img1"])
    assert not store._mapped.populate
    np.testing.assert_array_equal(regions[0]["visual_feats"], records[3]["visual_feats"])
    np.testing.assert_array_equal(regions[1]["visual_feats"], records[1]["visual_feats"])


def test_float16_store_serves_float16(tmp_path):
    write(tmp_path / "s", [image_record("a")], dtype="float16")
    assert FeatureStore(tmp_path / "s")["a"]["visual_feats"].dtype == np.float16


def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_reading_the_whole_store_keeps_rss_bounded(tmp_path):
    # 160 images x 36 x 2048 float32 = 45 MiB of features
    write(tmp_path / "s", (image_record(f"i{i}", num_boxes=36, dim=2048, seed=i) for i in range(160)))
    store = FeatureStore(tmp_path / "s", max_mapped_bytes=4 * 2**20)
    before = rss_mib()
    total = sum(float(store[image_id]["visual_feats"].sum()) for image_id in store.image_ids)
    assert np.isfinite(total)
    assert rss_mib() - before < 15


def test_gather_reads_a_zero_padded_batch_in_the_order_asked(tmp_path):
    records = [image_record(f"img{i}", num_boxes=1 + i % 5, seed=i) for i in range(23)]
    write(tmp_path / "s", records, images_per_shard=7, batch_size=3)
    store = FeatureStore(tmp_path / "s", read_threads=3)
    order = [14, 2, 22, 2, 7, 0, 19, 11]  # several shards, a repeat, more jobs than threads
    batch = store.gather([f"img{i}" for i in order])
    assert batch.visual_feats.shape == (8, 5, records[0]["visual_feats"].shape[1])
    assert batch.visual_feats.dtype == np.float32 and batch.visual_feats.flags.writeable
    assert batch.num_boxes.tolist() == [1 + i % 5 for i in order]
    for row, index in enumerate(order):
        count = 1 + index % 5
        np.testing.assert_array_equal(batch.visual_feats[row, :count], records[index]["visual_feats"])
        np.testing.assert_array_equal(batch.visual_pos[row, :count], store[f"img{index}"]["visual_pos"])
        assert not batch.visual_feats[row, count:].any() and not batch.visual_pos[row, count:].any()
        assert batch.visual_attention_mask[row].tolist() == [1] * count + [0] * (5 - count)
    with pytest.raises(KeyError, match="'nope' is not in the feature store"):
        store.gather(["img1", "nope"])
    with pytest.raises(ValueError, match="`image_ids` is empty"):
        store.gather([])
    with pytest.raises(ValueError, match="`read_threads` must be at least 1"):
        FeatureStore(tmp_path / "s", read_threads=0)


def test_gather_converts_float16_stores_to_float32(tmp_path):
    records = [image_record(f"i{i}", num_boxes=3, seed=i) for i in range(3)]
    write(tmp_path / "s", records, dtype="float16")
    batch = FeatureStore(tmp_path / "s").gather(["i2", "i0"])
    assert batch.visual_feats.dtype == np.float32
    np.testing.assert_array_equal(batch.visual_feats[0], records[2]["visual_feats"].astype(np.float16))


@pytest.mark.parametrize("fallback", ["no_nowait", "nowait_rejected", "no_preadv", "one_thread"])
def test_gather_falls_back_where_the_platform_lacks_a_read_feature(tmp_path, monkeypatch, fallback):
    records = [image_record(f"i{i}", num_boxes=2 + i % 3, seed=i) for i in range(9)]
    write(tmp_path / "s", records, images_per_shard=4)
    threads = 1 if fallback == "one_thread" else 2
    if fallback == "no_nowait":
        monkeypatch.delattr(os, "RWF_NOWAIT", raising=False)
    elif fallback == "nowait_rejected":  # an unknown flag: the kernel answers EINVAL/EOPNOTSUPP
        monkeypatch.setattr(os, "RWF_NOWAIT", 1 << 30, raising=False)
    elif fallback == "no_preadv":
        monkeypatch.delattr(os, "preadv")
    store = FeatureStore(tmp_path / "s", read_threads=threads)
    batch = store.gather([f"i{i}" for i in range(9)] * 2)
    for row in range(18):
        count = 2 + row % 9 % 3
        np.testing.assert_array_equal(batch.visual_feats[row, :count], records[row % 9]["visual_feats"])
    if fallback == "nowait_rejected":
        assert store._reader.nowait is None


@pytest.mark.parametrize("positioned", [True, False])
def test_gather_names_a_truncated_store(tmp_path, monkeypatch, positioned):
    write(tmp_path / "s", [image_record(f"i{i}", num_boxes=4, seed=i) for i in range(3)])
    if not positioned:
        monkeypatch.delattr(os, "preadv")
    store = FeatureStore(tmp_path / "s", read_threads=1)
    shard = store._paths[0]
    with open(shard, "r+b") as handle:  # cut the shard inside the last image's features
        handle.truncate(int(store._feats_offset[2]) + 8)
    with pytest.raises(OSError, match="the feature store is truncated; prepare it again"):
        store.gather(["i2"])


def test_gather_after_fork_opens_its_own_files(tmp_path):
    """A reader made before `fork` (DataLoader workers) is not reused in the child: threads do not survive fork."""
    write(tmp_path / "s", [image_record(f"i{i}", num_boxes=3, seed=i) for i in range(4)])
    store = FeatureStore(tmp_path / "s", read_threads=2)
    expected = store.gather(["i3", "i1", "i0", "i2", "i1"]).visual_feats
    parent_reader = store._reader
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports whether it read the same bytes through a reader of its own
        same = np.array_equal(store.gather(["i3", "i1", "i0", "i2", "i1"]).visual_feats, expected)
        os.write(write_end, b"1" if same and store._reader is not parent_reader else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_batch_reader_is_the_fast_path_where_the_platform_has_positioned_reads(tmp_path, monkeypatch):
    paths = [tmp_path / "a"]
    paths[0].write_bytes(b"x")
    assert isinstance(fastread.batch_reader(paths, threads=2), fastread.PositionedReader)
    monkeypatch.delattr(os, "preadv")
    assert isinstance(fastread.batch_reader(paths, threads=2), fastread.PlainReader)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_portable_reads_give_the_same_batches_as_the_fast_path(tmp_path, monkeypatch, dtype):
    records = [image_record(f"i{i}", num_boxes=1 + i % 6, dim=16, seed=i) for i in range(17)]
    write(tmp_path / "s", records, images_per_shard=5, dtype=dtype)
    ids = [f"i{i}" for i in (16, 3, 3, 9, 0, 11, 5, 14, 7, 1, 12)]
    fast = FeatureStore(tmp_path / "s", read_threads=2)
    expected = fast.gather(ids)
    assert isinstance(fast._reader, fastread.PositionedReader)
    monkeypatch.delattr(os, "preadv")
    plain = FeatureStore(tmp_path / "s", read_threads=2)
    batch = plain.gather(ids)
    assert isinstance(plain._reader, fastread.PlainReader)
    for name in ("visual_feats", "visual_pos", "num_boxes"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(expected, name))


@pytest.mark.parametrize("reader", ["positioned", "plain"])
def test_readers_fill_each_view_from_its_file_and_offset(tmp_path, reader):
    contents = [bytes(range(256)) * 64, bytes(reversed(range(256))) * 64]
    paths = [tmp_path / "0", tmp_path / "1"]
    for path, content in zip(paths, contents, strict=True):
        path.write_bytes(content)
    spans = [(1, 7, 100), (0, 0, 1), (0, 4000, 12384), (1, 16383, 1)] * 3  # more jobs than twice the threads
    targets = [bytearray(size) for _, _, size in spans]
    jobs = [(shard, offset, memoryview(target)) for (shard, offset, _), target in zip(spans, targets, strict=True)]
    made = fastread.PositionedReader(paths, threads=2) if reader == "positioned" else fastread.PlainReader(paths)
    made.read(jobs)
    for (shard, offset, size), target in zip(spans, targets, strict=True):
        assert bytes(target) == contents[shard][offset : offset + size]
    with pytest.raises(OSError, match="ends before byte 16385: the feature store is truncated"):
        made.read([(1, 16383, memoryview(bytearray(2)))])
