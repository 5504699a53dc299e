"""Tiny VQA checkpoints, a tiny region detector, tiny Marian translation models and a local HTTP server, for the
pipeline, hub, convert and ask tests. Everything is generated locally; nothing reaches the network."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import torch
from tiny import TINY_DETECTOR, TINY_DETECTOR_DIM
from transformers import BertTokenizer

from lxmert_hf import LxmertForVQA, LxmertVQAConfig, RegionFeatureExtractor, RegionFeatureExtractorConfig

ANSWERS = ["yes", "no", "2", "red", "cube", "cat"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "cube", "?", "how", "many",
         "cat", "red", "there", "a"]  # fmt: skip
SIZES = dict(
    hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1, r_layers=1,
    vocab_size=len(WORDS), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip
DETECTOR_DIM = TINY_DETECTOR_DIM


def tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})


def vqa_model(feat_dim: int = 16, seed: int = 0, **config) -> LxmertForVQA:
    torch.manual_seed(seed)
    return LxmertForVQA(LxmertVQAConfig.from_answers(ANSWERS, **SIZES, visual_feat_dim=feat_dim, **config)).eval()


def features(regions: int = 6, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.random((regions, 2, 2)), axis=1)
    return {
        "visual_feats": rng.random((regions, dim), dtype=np.float32),
        "visual_pos": corners.reshape(regions, 4).astype(np.float32),
    }


@functools.cache
def detector() -> RegionFeatureExtractor:
    """A tiny random-weight detector on small images: its regions are arbitrary but real detector outputs."""
    # The "lxmert" preset's Caffe procedure, with torch's resize (no OpenCV needed).
    config = RegionFeatureExtractorConfig.from_preset(
        "lxmert",
        min_size=64,
        max_size=96,
        rpn_post_nms_topk=8,
        max_boxes=6,
        min_boxes=6,
        resize_backend="torch",
        **TINY_DETECTOR,
    )
    torch.manual_seed(0)
    extractor = RegionFeatureExtractor(
        config,
        object_names=[f"thing{i}" for i in range(config.num_classes)],
        attribute_names=[f"shade{i}" for i in range(config.num_attributes)],
    )
    return extractor


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(array[..., 0].astype(np.uint16) * 257)  # uint16 arrays make 16-bit images
    else:
        image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- local HTTP server --------------------------------------------------------------------------------------------
# A route that never answers while the server runs: a client's timeout then fires whatever the machine's load.
SILENT = "silent"


@contextlib.contextmanager
def serve(routes: dict[str, tuple[int, bytes] | str]):
    """Serve `routes` on 127.0.0.1: path -> (status, body), or `SILENT` for a route that answers only once the
    block has ended. Yields the base URL; the server stops when the block ends."""
    released = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            route = routes.get(self.path, (404, b"not found"))
            if route == SILENT:
                released.wait()
                route = (200, b"late")
            status, body = route
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join()


# -- tiny Marian translation models -------------------------------------------------------------------------------
MARIAN_CORPUS = [
    "고양이는 무슨 색인가요?",
    "빨간색",
    "네",
    "아니요",
    "what color is the cat?",
    "red",
    "yes",
    "no",
    "cube",
]


def marian(folder: Path, seed: int = 0) -> Path:
    """Save a random Marian translation model with a character SentencePiece vocabulary into `folder`."""
    import sentencepiece
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model_proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(MARIAN_CORPUS * 10), model_writer=model_proto, vocab_size=40, model_type="char",
        character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(model_proto.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model_proto.getvalue())
    vocab = {"</s>": 0, "<unk>": 1}
    for index in range(pieces.get_piece_size()):
        vocab.setdefault(pieces.id_to_piece(index), len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    files = [str(folder / name) for name in ("source.spm", "target.spm", "vocab.json")]
    MarianTokenizer(*files).save_pretrained(folder)
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(folder)
    return folder


# -- the Hub, recorded instead of reached ---------------------------------------------------------------------------
def record_hub_calls(monkeypatch) -> list[tuple]:
    """Make `HfApi` record what would be sent to the Hub (reading an uploaded folder while it still exists) and
    return the list of `(method, repo_id, arguments, token)` it fills."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs, self.token))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        calls.append(("upload_folder", kwargs.pop("repo_id"), {**kwargs, "files": files}, self.token))
        return "commit"

    for name, function in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(HfApi, name, function)
    return calls
