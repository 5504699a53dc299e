import json
import os

import numpy as np
import pytest

from lxmert_hf import files
from lxmert_hf.submission import (
    read_gqa_submission,
    read_nlvr2_submission,
    read_vqa_submission,
    write_gqa_submission,
    write_nlvr2_submission,
    write_vqa_submission,
)

ROUND_TRIPS = [
    (write_vqa_submission, read_vqa_submission, {262144005: "yes", 1: "2", 262144000: "t shirt", 7: "café"}),
    (write_gqa_submission, read_gqa_submission, {"20968153": "yes", "201307251": "left", "05451380": "no"}),
    (write_nlvr2_submission, read_nlvr2_submission, {"test1-0-1-0": True, "test1-0-0-0": False, "dev-9-2-1": True}),
]


@pytest.mark.parametrize(("write", "read", "predictions"), ROUND_TRIPS)
def test_round_trip_keeps_values_and_order(tmp_path, write, read, predictions):
    path = write(tmp_path / "predictions", predictions)
    assert path == tmp_path / "predictions"
    result = read(path)
    assert result == predictions
    assert list(result) == list(predictions)
    assert sorted(os.listdir(tmp_path)) == ["predictions"]  # no temporary file left behind


def test_file_layouts_are_exactly_the_official_ones(tmp_path):
    write_vqa_submission(tmp_path / "vqa.json", {np.int64(5): "yes"})
    assert json.loads((tmp_path / "vqa.json").read_text()) == [{"question_id": 5, "answer": "yes"}]
    write_gqa_submission(tmp_path / "gqa.json", {"5": "yes"})
    assert json.loads((tmp_path / "gqa.json").read_text()) == [{"questionId": "5", "prediction": "yes"}]
    write_nlvr2_submission(tmp_path / "nlvr2.csv", {"dev-1-0-0": np.bool_(True), "dev-1-1-0": 0})
    assert (tmp_path / "nlvr2.csv").read_bytes() == b"dev-1-0-0,True\ndev-1-1-0,False\n"


def test_writes_replace_existing_files_atomically(tmp_path, monkeypatch):
    path = write_vqa_submission(tmp_path / "vqa.json", {1: "yes"})
    write_vqa_submission(path, {2: "no"})
    assert read_vqa_submission(path) == {2: "no"}

    def interrupted(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write_vqa_submission(path, {3: "maybe"})
    assert read_vqa_submission(path) == {2: "no"}  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ["vqa.json"]


@pytest.mark.parametrize(
    ("write", "predictions", "match"),
    [
        (write_vqa_submission, [], "must be a mapping"),
        (write_vqa_submission, {}, "`predictions` is empty"),
        (write_vqa_submission, {"1": "yes"}, "VQA question ids must be integers"),
        (write_vqa_submission, {True: "yes"}, "VQA question ids must be integers"),
        (write_vqa_submission, {1: 2}, "the answer to question 1 must be a string"),
        (write_gqa_submission, {1: "yes"}, "GQA question ids are strings"),
        (write_gqa_submission, {"1": None}, "the answer to question '1' must be a string"),
        (write_nlvr2_submission, {"dev,1": True}, "without commas or newlines"),
        (write_nlvr2_submission, {"": True}, "non-empty strings"),
        (write_nlvr2_submission, {"dev-1-0-0": "True"}, "must be a boolean"),
        (write_nlvr2_submission, {"dev-1-0-0": 2}, "must be a boolean"),
    ],
)
def test_writer_refusals_leave_no_file(tmp_path, write, predictions, match):
    with pytest.raises(ValueError, match=match):
        write(tmp_path / "out", predictions)
    assert os.listdir(tmp_path) == []


VQA_BAD_FILES = [
    ("", "is empty"),
    ("  \n", "is empty"),
    ("[{", "is not valid JSON"),
    ('{"question_id": 1, "answer": "yes"}', "must hold a JSON list"),
    ("[]", "holds an empty list"),
    ('["yes"]', "record 0 must be an object"),
    ('[{"question_id": 1}]', "record 0 must be an object"),
    ('[{"questionId": "1", "prediction": "yes"}]', "record 0 must be an object"),
    ('[{"question_id": "1", "answer": "yes"}]', "record 0 has `question_id` '1'; it must be an integer"),
    ('[{"question_id": 1.0, "answer": "yes"}]', "it must be an integer"),
    ('[{"question_id": 1, "answer": 2}]', r"record 0 \(question 1\) has a non-string `answer`"),
    ('[{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}]', "record 1 repeats question 1"),
]


@pytest.mark.parametrize(("content", "match"), VQA_BAD_FILES)
def test_vqa_reader_refusals_name_the_file_and_record(tmp_path, content, match):
    path = tmp_path / "vqa.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        read_vqa_submission(path)
    assert str(path) in str(error.value)


GQA_BAD_FILES = [
    ("", "is empty"),
    ('{"1": "yes"}', "must hold a JSON list"),
    ('[{"question_id": 1, "answer": "yes"}]', "record 0 must be an object"),
    ('[{"questionId": 1, "prediction": "yes"}]', "GQA question ids are strings"),
    ('[{"questionId": "1", "prediction": ["yes"]}]', "non-string `prediction`"),
    ('[{"questionId": "1", "prediction": "a"}, {"questionId": "1", "prediction": "b"}]', "record 1 repeats"),
]


@pytest.mark.parametrize(("content", "match"), GQA_BAD_FILES)
def test_gqa_reader_refusals_name_the_file_and_record(tmp_path, content, match):
    path = tmp_path / "gqa.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        read_gqa_submission(path)
    assert str(path) in str(error.value)


NLVR2_BAD_FILES = [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("dev-1-0-0\n", "line 1: expected `identifier,True` or `identifier,False`"),
    ("dev-1-0-0,True,extra\n", "line 1: expected"),
    (",True\n", "line 1: expected"),
    ("dev-1-0-0,True\ndev-1-1-0,1\n", "line 2: the prediction must be True or False, got '1'"),
    ("dev-1-0-0,True\ndev-1-0-0,False\n", "line 2: repeats identifier 'dev-1-0-0'"),
]


@pytest.mark.parametrize(("content", "match"), NLVR2_BAD_FILES)
def test_nlvr2_reader_refusals_name_the_file_and_line(tmp_path, content, match):
    path = tmp_path / "nlvr2.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        read_nlvr2_submission(path)
    assert str(path) in str(error.value)


def test_nlvr2_reader_is_case_insensitive_and_skips_blank_lines(tmp_path):
    path = tmp_path / "nlvr2.csv"
    path.write_text("dev-1-0-0,true\r\n\ndev-1-1-0,FALSE\n")
    assert read_nlvr2_submission(path) == {"dev-1-0-0": True, "dev-1-1-0": False}


@pytest.mark.parametrize("read", [read_vqa_submission, read_gqa_submission, read_nlvr2_submission])
def test_readers_report_missing_files(tmp_path, read):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read(tmp_path / "missing.json")
