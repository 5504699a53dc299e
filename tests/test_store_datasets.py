"""A feature store is a saved `datasets.Dataset`: `load_from_disk` and the `arrow` loader open it where it is."""

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from data_factory import image_record

from lxmert_hf.data import FeatureStore, FeatureStoreWriter, export_parquet, load_features
from lxmert_hf.data.store.format import store_features


def write(path, records, **kwargs):
    with FeatureStoreWriter(path, resume=True, **kwargs) as writer:
        for record in records:
            writer.add(record)
    return Path(path)


def test_load_from_disk_maps_the_shards_where_they_are(tmp_path):
    records = [image_record(f"img{i}", num_boxes=1 + i % 3, seed=i) for i in range(7)]
    store = write(tmp_path / "s", records, images_per_shard=3, dtype="float16")
    ds = datasets.load_from_disk(str(store))
    assert isinstance(ds, datasets.Dataset) and len(ds) == 7
    assert ds.features == store_features(records[0]["visual_feats"].shape[1], "float16")
    # No copy: the dataset's files are the store's shards.
    assert sorted(Path(f["filename"]).resolve() for f in ds.cache_files) == sorted(
        path.resolve() for path in store.glob("shard-*.arrow")
    )
    rows = ds.with_format("numpy")
    for index in (0, 4, 6):
        np.testing.assert_allclose(rows[index]["visual_feats"], records[index]["visual_feats"], rtol=1e-3, atol=2e-3)
    assert ds["image_id"][:] == [f"img{i}" for i in range(7)]


def test_the_arrow_loader_streams_the_shards(tmp_path):
    records = [image_record(f"img{i}", seed=i) for i in range(5)]
    store = write(tmp_path / "s", records, images_per_shard=2)
    # The one-liner of the README: `data_files` names the shards (`data_dir` would take the indexes and JSON for data).
    streamed = datasets.load_dataset("arrow", data_files=str(store / "shard-*.arrow"), split="train", streaming=True)
    rows = list(streamed.with_format("numpy"))
    assert [row["image_id"] for row in rows] == [f"img{i}" for i in range(5)]
    np.testing.assert_array_equal(rows[3]["visual_feats"], records[3]["visual_feats"])
    assert streamed.features == load_features(store).features


def test_an_incomplete_store_is_no_dataset(tmp_path):
    store = write(tmp_path / "s", [image_record("a")])
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(store, resume=True) as writer:
        writer.add(image_record("b", seed=1))
        raise KeyboardInterrupt
    assert not (store / "state.json").exists() and not (store / "dataset_info.json").exists()
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(store))
    write(store, [image_record("c", seed=2)])
    assert datasets.load_from_disk(str(store))["image_id"][:] == ["a", "b", "c"]


def to_legacy_naming(store: Path) -> None:
    """Rename the indexes of `store` as stores were written before (`*.index.arrow`, `index.arrow`)."""
    manifest = json.loads((store / "store.json").read_text())
    for shard in manifest["shards"]:
        old = shard["index"].removesuffix(".index") + ".index.arrow"
        os.rename(store / shard["index"], store / old)
        shard["index"] = old
    os.rename(store / "store.index", store / "index.arrow")
    for name in ("state.json", "dataset_info.json"):
        (store / name).unlink()
    (store / "store.json").write_text(json.dumps(manifest))


def test_stores_in_the_former_naming_open_resume_and_export(tmp_path):
    records = [image_record(f"img{i}", num_boxes=2, seed=i) for i in range(6)]
    store = write(tmp_path / "s", records[:4], images_per_shard=2)
    to_legacy_naming(store)
    regions = FeatureStore(store)
    np.testing.assert_array_equal(regions["img3"]["visual_feats"], records[3]["visual_feats"])
    np.testing.assert_array_equal(regions.gather(["img1"]).visual_feats[0], records[1]["visual_feats"])
    assert load_features(store)["image_id"][:] == [f"img{i}" for i in range(4)]
    # Resumed: the old shards keep their indexes, the new ones get the new names, and the store completes.
    with FeatureStoreWriter(store, resume=True, images_per_shard=2) as writer:
        assert writer.done_ids == {f"img{i}" for i in range(4)}
        for record in records[4:]:
            writer.add(record)
    names = {path.name for path in store.iterdir()}
    assert {"shard-00000.index.arrow", "shard-00002.index", "store.index", "state.json"} <= names
    assert "index.arrow" not in names
    assert FeatureStore(store).image_ids == [f"img{i}" for i in range(6)]
    assert datasets.load_from_disk(str(store))["image_id"][:] == [f"img{i}" for i in range(6)]
    files = export_parquet(store, tmp_path / "pq")
    assert len(files) == 3 and len(load_features(tmp_path / "pq")) == 6
