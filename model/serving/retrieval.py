"""Serving a catalogue too large to score whole: each query's candidates, retrieved by maximum
inner product from an index built when the model loads, then rescored exactly by the item layer.

An item's explore logit is the query's inner product with its embedding plus IntentMatch's bonus;
the kind and genre part of that bonus is itself an inner product, of the intent's weighted log
probabilities with the item's attribute row (IntentMatch.attribute_query). So the index holds
[embedding ; attributes] per item and is queried with [query ; attribute query]: it looks for the
items of highest logit but for the release-recency term, which depends on the query's time. Each
row's candidates are the index's `candidates` best, plus the items the repeat pointer can reach (the
user's last L), plus the training's most played items (an HNSW graph over inner products can leave
the very titles that top everyone's list unreachable: on the 20,000-title world the two most played
were in every query's exact top 10 and never found, bench/results/catalogue.md), plus padding and
unknown (where the pointer's weight on them lands); the item layer
(model.item_layer.ItemLayer.candidate_distribution) scores them exactly, the softmax's sum over the
rest estimated from a fixed uniform sample of the catalogue. What the exact path ranks in its top
10 and this path misses is what the index missed: bench/results/catalogue.md measures it.

`load_serving_scorer` (model.serving.incremental) attaches a CandidateRetriever to the model's item
layer when the catalogue is served approximately (`--catalogue approximate`, or `auto` beyond
APPROXIMATE_FROM_ITEMS items). The index is built the first time, and saved beside the model when
its directory is writable, for later starts to load (`saved_beside`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from model.intentrec import IntentRec
from model.item_layer import Candidates, ItemState
from model.serving.backends import BackendError, fingerprint, refuse_if_others_may_write, sha256_of
from model.vocab import FIRST_REAL, PAD, UNKNOWN

log = logging.getLogger(__name__)

APPROXIMATE_FROM_ITEMS = 20_000  # `--catalogue auto` serves larger catalogues from candidates (bench/results/catalogue.md)
CANDIDATES = 100  # the index's best per query
LINKS, BUILD_DEPTH, SEARCH_DEPTH = 32, 100, 200  # the HNSW graph's M, ef_construction and ef
INDEX_DIR, INDEX_FILE, MANIFEST = "index", "hnsw.bin", "manifest.json"
NORMALISER_SAMPLE = 1024  # uniform catalogue items that estimate the softmax's sum over the rest
CATALOGUES = ("auto", "exact", "approximate")


class Search(Protocol):
    """Maximum inner product search over the rows given when built: the k best row numbers (B, k)
    for each query (B, d)."""

    def __call__(self, queries: np.ndarray, k: int) -> np.ndarray: ...


class ExactSearch:
    """Every row's inner product, then the k best: the reference an index is measured against."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = torch.from_numpy(vectors)

    def __call__(self, queries: np.ndarray, k: int) -> np.ndarray:
        return torch.topk(torch.from_numpy(queries) @ self.vectors.T, k, dim=-1).indices.numpy()


class IndexSearch:
    """An HNSW graph over the rows, by inner product (hnswlib): at 1,000,000 items, 0.996 of the exact
    top 10 among 100 candidates in 104-120 ms per 256 queries on one core, against 1.6 s exact
    (bench/results/ann-libraries.md, which compares it with FAISS and usearch). Building it takes
    two minutes there on two cores, loading a saved one a second: `saved_beside` keeps one beside
    the model."""

    def __init__(self, index):
        self.index = index
        self.index.set_ef(SEARCH_DEPTH)
        self.index.set_num_threads(1)  # a scoring process uses one core (README: Threads)

    @classmethod
    def build(cls, vectors: np.ndarray) -> "IndexSearch":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=len(vectors), M=LINKS, ef_construction=BUILD_DEPTH, random_seed=0)
        index.add_items(vectors, np.arange(len(vectors)), num_threads=os.cpu_count() or 1)
        return cls(index)

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray) -> "IndexSearch":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.load_index(str(path), max_elements=len(vectors))
        return cls(index)

    def __call__(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(queries, k=k)[0].astype(np.int64)


def saved_beside(model: IntentRec, model_dir: Path | None) -> IndexSearch:
    """The index of the model's items: the one saved in MODEL_DIR/index by an earlier load, where it
    was built from exactly these weights (its manifest says so) and its file is what was saved there
    and no one but its owner may change it (hnswlib reads the file as it is, unchecked); else built
    now, and saved there if the model directory is writable (a restart then loads it in seconds)."""
    vectors = item_vectors(model)
    directory = None if model_dir is None else Path(model_dir) / INDEX_DIR
    expected = None if directory is None else index_manifest(model)
    if directory is not None and saved_index_fits(directory, expected):
        return IndexSearch.load(directory / INDEX_FILE, vectors)
    search = IndexSearch.build(vectors)
    if directory is not None:
        try:
            directory.mkdir(exist_ok=True)
            search.index.save_index(str(directory / INDEX_FILE))
            (directory / INDEX_FILE).chmod(0o644)
            manifest = {**expected, "file": sha256_of(directory / INDEX_FILE)}
            (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
        except OSError as error:
            log.warning("could not save the retrieval index beside the model (%s): the next start builds it again", error)
    return search


def index_manifest(model: IntentRec) -> dict:
    return {"model": fingerprint(model), "links": LINKS, "build_depth": BUILD_DEPTH}


def saved_index_fits(directory: Path, expected: dict) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    index_file = directory / INDEX_FILE
    if not isinstance(manifest, dict) or {k: manifest.get(k) for k in expected} != expected:
        log.info("the retrieval index in %s was built from another model or with other settings: building it again", directory)
        return False
    try:
        refuse_if_others_may_write(index_file, "the retrieval index")
    except BackendError as error:
        log.warning("%s; building it again instead", error)
        return False
    if sha256_of(index_file) != manifest.get("file"):
        log.warning("the retrieval index %s is not the file its manifest recorded: building it again", index_file)
        return False
    return True


def item_vectors(model: IntentRec) -> np.ndarray:
    """(n_items - FIRST_REAL, d): each real item's [embedding ; IntentMatch attributes]."""
    parts = [model.features.item.weight.detach()[FIRST_REAL:]]
    match = model.item_layer.intent_match
    if match is not None and match.attribute_tasks:
        parts.append(match.item_attributes[FIRST_REAL:])
    return torch.cat(parts, dim=1).float().contiguous().numpy()


def query_vectors(model: IntentRec, state: ItemState) -> np.ndarray:
    """(B, d): each row's newest [query ; attribute query], to search item_vectors with."""
    parts = [state.queries[:, -1]]
    match = model.item_layer.intent_match
    if match is not None and match.attribute_tasks:
        parts.append(match.attribute_query(state.intent)[:, -1])
    return torch.cat(parts, dim=1).float().contiguous().numpy()


def serves_approximately(catalogue: str, n_items: int) -> bool:
    """`--catalogue`: "exact", "approximate", or "auto" (approximate beyond APPROXIMATE_FROM_ITEMS items)."""
    if catalogue not in CATALOGUES:
        raise ValueError(f"catalogue={catalogue!r}; choose one of {CATALOGUES}")
    return catalogue == "approximate" or (catalogue == "auto" and n_items > APPROXIMATE_FROM_ITEMS)


def attach_retriever(model: IntentRec, model_dir: Path | None = None, candidates: int = CANDIDATES,
                     most_played: Sequence[int] = ()) -> "CandidateRetriever":  # fmt: skip
    """Hands the item layer a retriever over an index of the model's items (saved_beside)."""
    started = time.perf_counter()
    retriever = CandidateRetriever(model, saved_beside(model, model_dir), candidates, most_played)
    model.item_layer.retriever = retriever
    log.info("an index of %d items for retrieval ready in %.1f s", model.config.n_items - FIRST_REAL,
             time.perf_counter() - started)  # fmt: skip
    return retriever


class CandidateRetriever:
    """What the item layer calls (model.item_layer.Retriever): each row's candidates, `width` of them."""

    def __init__(self, model: IntentRec, search: Search, candidates: int = CANDIDATES, most_played: Sequence[int] = (),
                 sample: int = NORMALISER_SAMPLE, seed: int = 0):  # fmt: skip
        self.model = model
        self.search = search
        self.real_items = model.config.n_items - FIRST_REAL
        self.candidates = min(candidates, self.real_items)
        self.reach = model.config.attention_window  # the pointer's: the user's last L interactions
        self.most_played = torch.tensor(list(most_played), dtype=torch.long)
        self.width = 2 + self.reach + self.candidates + len(self.most_played)
        generator = torch.Generator().manual_seed(seed)
        self.sample = torch.randint(FIRST_REAL, model.config.n_items, (sample,), generator=generator).unique()

    def __call__(self, state: ItemState, item_embeddings: torch.Tensor) -> Candidates:
        found = self.search(query_vectors(self.model, state), self.candidates) + FIRST_REAL
        reached = state.key_items[:, -self.reach :].long()
        reached = torch.where(reached < self.model.config.n_items, reached, PAD)  # slots and new titles have columns of their own
        if reached.shape[1] < self.reach:
            reached = torch.nn.functional.pad(reached, (self.reach - reached.shape[1], 0), value=PAD)
        rows = len(found)
        known = torch.tensor([PAD, UNKNOWN]).expand(rows, 2)
        items = torch.cat([known, reached, torch.from_numpy(found).long(), self.most_played.expand(rows, -1)], dim=1)
        return Candidates(items.sort(dim=1).values, self.sample)
