"""A feature store records what made its features (`store.json` key `extractor`), read back as
`FeatureStore.extractor`: given to the writer, or told by `prepare_features` from the files' format."""

from __future__ import annotations

import json
import logging

import data_factory as df
import pytest
from test_store import make_image, write_store
from test_tsv import write_demo_arrow

from lxmert_hf.data import FeatureStore, FeatureStoreWriter, prepare_features, write_tsv
from lxmert_hf.data.store import MANIFEST_NAME
from lxmert_hf.hub import describe_bottom_up_features, describe_visual_features

DETECTOR = describe_visual_features("someone/frcnn", source="a test", feature_dim=8)


def test_writer_records_the_extractor_and_the_reader_exposes_it(tmp_path):
    store = FeatureStore(write_store(tmp_path / "s", [make_image("a")], extractor=DETECTOR))
    assert store.extractor == DETECTOR
    store.extractor["detector"] = "changed"  # a copy: the store's record stays as written
    assert store.extractor["detector"] == "someone/frcnn"


def test_unknown_and_older_stores_record_no_extractor(tmp_path):
    assert FeatureStore(write_store(tmp_path / "unknown", [make_image("a")])).extractor is None
    older = write_store(tmp_path / "older", [make_image("a")], extractor=DETECTOR)
    manifest = json.loads((older / MANIFEST_NAME).read_text())
    del manifest["extractor"]  # as written before the key existed
    (older / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert FeatureStore(older).extractor is None


def test_resuming_with_another_extractor_is_refused_and_leaves_the_store_complete(tmp_path):
    path = write_store(tmp_path / "s", [make_image("a")], extractor=DETECTOR)
    other = {**DETECTOR, "detector": "someone/else"}
    with pytest.raises(ValueError, match="holds features made by .*someone/frcnn.* not by .*someone/else"):
        FeatureStoreWriter(path, resume=True, extractor=other)
    assert FeatureStore(path).extractor == DETECTOR and len(FeatureStore(path)) == 1
    write_store(path, [make_image("b", seed=1)])  # no extractor given: the record stays
    assert FeatureStore(path).extractor == DETECTOR and len(FeatureStore(path)) == 2


def test_an_extractor_of_another_width_is_not_recorded(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        path = write_store(tmp_path / "s", [make_image("a", dim=8)], extractor={**DETECTOR, "feature_dim": 2048})
    assert FeatureStore(path).extractor is None
    assert "8-dimensional, not the 2048" in caplog.text


@pytest.mark.parametrize(("dim", "bottom_up"), [(2048, True), (8, False)])
def test_lxmert_tsvs_record_the_original_extractor(tmp_path, dim, bottom_up):
    write_tsv(tmp_path / "f.tsv", [df.image_record("a", dim=dim)])
    prepare_features([tmp_path / "f.tsv"], tmp_path / "store", progress=False)
    extractor = FeatureStore(tmp_path / "store").extractor
    if not bottom_up:  # not the width the original extractor makes: origin unknown
        assert extractor is None
        return
    assert extractor == describe_bottom_up_features()
    assert extractor["detector"] == "unc-nlp/frcnn-vg-finetuned" and extractor["preset"] == "lxmert"
    assert extractor["source"].startswith("bottom-up-attention (Anderson et al., 2018): Caffe Faster R-CNN")
    assert "ResNet-101" in extractor["source"] and "Visual Genome" in extractor["source"]
    assert (extractor["feature_dim"], extractor["max_boxes"]) == (2048, 36)


def test_demo_arrow_files_record_the_transformers_demo(tmp_path):
    write_demo_arrow(tmp_path / "demo.arrow", dim=2048)
    prepare_features([tmp_path / "demo.arrow"], tmp_path / "store", progress=False)
    extractor = FeatureStore(tmp_path / "store").extractor
    assert extractor["preset"] == "transformers-demo" and "transformers LXMERT demo" in extractor["source"]


def test_an_explicit_description_or_none_wins(tmp_path):
    write_tsv(tmp_path / "f.tsv", [df.image_record("a", dim=2048)])
    mine = {**DETECTOR, "feature_dim": 2048}
    prepare_features([tmp_path / "f.tsv"], tmp_path / "mine", progress=False, extractor=mine)
    assert FeatureStore(tmp_path / "mine").extractor["detector"] == "someone/frcnn"
    prepare_features([tmp_path / "f.tsv"], tmp_path / "none", progress=False, extractor=None)
    assert FeatureStore(tmp_path / "none").extractor is None
