"""Which ANN library retrieves IntentRec's candidates: FAISS, hnswlib and usearch against the exact
path (torch matmul + topk), maximum inner product search over catalogues of 2,000 to 1,000,000 items
(issue 22, item 2: the measured comparison that picks the library).

    flock /tmp/cpu-heavy.lock python bench/ann_libraries.py --real /tmp/ml100k-v0.npz   # the recorded run (~30 min)
    flock /tmp/cpu-heavy.lock python bench/ann_libraries.py --section pick   # the pick in detail (~10 min)
    python bench/ann_libraries.py --sizes 2000,20000 --dims 64 --quick     # a smoke test (a minute)

--real adds a catalogue of real learnt embeddings and queries (an .npz of `items` and `queries`),
made from a model trained on MovieLens-100K (10 epochs of V0: minutes, not a good model, but its
item table and queries are learnt):

    intentstream data movielens /work/shared/data/ml-100k --out /tmp/ml100k.jsonl
    intentstream train /tmp/ml100k.jsonl --out /tmp/ml100k-v0 --variant V0 --epochs 10 --no-refit --torch-threads 2
    python bench/ann_libraries.py --make-real /tmp/ml100k-v0 /tmp/ml100k.jsonl /tmp/ml100k-v0.npz

(`make_real`: the item embedding table without its padding and unknown rows, and the queries in
item space, the item encoder's `to_item_space` output, after three random positions of every user.)

--section pick measures the picked library at 1,000,000 items in detail (build at one thread, a
lower efConstruction, d=88, save and load, ef around the pick) and writes only its own section of
the .md, so the main run need not be repeated.

Needs faiss-cpu, hnswlib and usearch in the environment (pip install faiss-cpu hnswlib usearch); a
library that does not import is reported as missing and left out.

The data (synthetic, seeded; `world` below): item vectors shaped like learnt embeddings, not
normalised: directions from 256 taste clusters (cluster sizes long-tailed) on a decaying spectrum,
norms log-normal (sigma 0.45: the 95th percentile about 4.4x the 5th) and larger for popular
items (a Zipf popularity curve); queries mix their user's taste clusters, a few titles drawn by
popularity, and noise. With --dims 88 (the retrieval vector of a model whose IntentMatch bonus rides
in the inner product: [item embedding ; item attributes] queried with [query ; intent weights])
each item also gets a one-hot kind (4 columns) and genres summing to 1 (20 columns), each query
w * log p(kind) and w * log p(genre) with the bonus's spread over items about half that of the
embedding scores.

Per catalogue size and dimension, for every library and setting: build time and memory (resident
set growth and the saved file), then the search of 4 distinct batches of 256 queries (1,024 in all)
for recall, and timed batches of 256 at 1 and at 2 threads (thread counts set explicitly per
library; median, its 95% interval, p99). Recall is against the exact top-10 by inner product
(computed in float64): "in M" is the fraction of the exact top-10 among the first M candidates
retrieved (they are rescored exactly afterwards), "@10" that of the retrieved top-10. HNSW returns
its best ef candidates (ef >= k), so one search with k = min(ef, 1000) gives every M <= ef; IVF
searches with k = 1000. Also measured: the exact rescoring of M candidates, whether two builds give
the same results, saving and loading, adding items after the build.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
K_TRUE = 10  # the exact top-10 is what the candidates must contain
CANDIDATES = (100, 200, 500, 1000)  # M
BATCH = 256
N_BATCHES = 4  # distinct query batches: recall over 1,024 queries, timing cycles through them
GOAL_RECALL = 0.99
ATTRIBUTE_COLUMNS = (4, 20)  # kind one-hot, genres summing to 1 (the first two of each reserved)
LICENCE_FILES = {"hnswlib": "Apache-2.0"}  # where the package metadata names none: its LICENSE file


# ----------------------------------------------------------------------------- the data
def world(n_items: int, d_extra: int, n_queries: int, seed: int = 0, d: int = 64):
    """(items (n, d + d_extra), queries (n_queries, d + d_extra)) float32; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_clusters = 256
    spectrum = (1.0 + np.arange(d)) ** -0.5
    spectrum /= np.sqrt(np.mean(spectrum**2))
    centres = rng.standard_normal((n_clusters, d)) * spectrum
    cluster_p = 1.0 / (1.0 + np.arange(n_clusters)) ** 0.7
    cluster_p /= cluster_p.sum()
    cluster = rng.choice(n_clusters, n_items, p=cluster_p)
    popularity = 1.0 / (10.0 + rng.permutation(n_items)) ** 0.9  # Zipf-like by a random rank
    popularity /= popularity.sum()
    items = np.empty((n_items, d), np.float32)
    z_pop = np.log(popularity)
    z_pop = (z_pop - z_pop.mean()) / z_pop.std()
    log_norm = 0.45 * (0.5 * z_pop + math.sqrt(0.75) * rng.standard_normal(n_items))
    for lo in range(0, n_items, 1 << 17):  # chunks: the float64 temporaries of 1M x 64 are large
        hi = min(n_items, lo + (1 << 17))
        v = 0.6 * centres[cluster[lo:hi]] + 0.8 * rng.standard_normal((hi - lo, d)) * spectrum
        v *= (np.exp(log_norm[lo:hi]) / np.linalg.norm(v, axis=1))[:, None]
        items[lo:hi] = v
    taste = rng.choice(n_clusters, (n_queries, 2), p=cluster_p)
    liked = rng.choice(n_items, (n_queries, 3), p=popularity)
    direction = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    queries = (
        0.5 * direction(centres[taste].mean(1))
        + 0.5 * direction(items[liked].astype(np.float64).mean(1))
        + 0.5 * direction(rng.standard_normal((n_queries, d)) * spectrum)
    ) * np.exp(0.3 * rng.standard_normal((n_queries, 1)))
    if not d_extra:
        return items, queries.astype(np.float32)
    assert d_extra == sum(ATTRIBUTE_COLUMNS)
    n_kind, n_genre = ATTRIBUTE_COLUMNS
    attributes = np.zeros((n_items, d_extra), np.float32)
    cluster_kind = rng.random(n_clusters)  # P(show) per cluster
    kind = 2 + (rng.random(n_items) < cluster_kind[cluster])
    attributes[np.arange(n_items), kind] = 1.0
    cluster_genres = rng.dirichlet(np.full(n_genre - 2, 0.3), n_clusters)
    n_genres = rng.integers(1, 4, n_items)
    for lo in range(0, n_items, 1 << 17):
        hi = min(n_items, lo + (1 << 17))
        g = cluster_genres[cluster[lo:hi]]  # each item's genres sampled from its cluster's mix
        keys = np.log(rng.random(g.shape)) / np.maximum(g, 1e-9)  # Efraimidis-Spirakis: top-n without repeats
        order = np.argsort(-keys, axis=1)[:, :3]
        block = np.zeros((hi - lo, n_genre - 2), np.float32)
        for j in range(3):
            use = n_genres[lo:hi] > j
            block[np.flatnonzero(use), order[use, j]] = 1.0
        attributes[lo:hi, n_kind + 2:] = block / block.sum(1, keepdims=True)
    # Query side: w * log p, p the user's predicted kind and genre distributions.
    kind_logits = np.stack([-cluster_kind[taste].mean(1), cluster_kind[taste].mean(1)], 1) * 4 + rng.standard_normal((n_queries, 2))
    genre_logits = np.log(cluster_genres[taste].mean(1) + 1e-3) + 0.5 * rng.standard_normal((n_queries, n_genre - 2))
    log_p = lambda z: z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)  # noqa: E731
    q_attr = np.zeros((n_queries, d_extra))
    q_attr[:, 2:n_kind] = np.maximum(log_p(kind_logits), math.log(1e-6))
    q_attr[:, n_kind + 2:] = np.maximum(log_p(genre_logits), math.log(1e-6))
    sample = items[rng.choice(n_items, min(n_items, 4096), replace=False)]
    embedding_spread = (queries @ sample.T.astype(np.float64)).std(1)
    bonus_spread = (q_attr @ attributes[: len(sample)].T.astype(np.float64)).std(1)
    q_attr *= (0.5 * embedding_spread / np.maximum(bonus_spread, 1e-9))[:, None]
    return np.hstack([items, attributes]), np.hstack([queries, q_attr]).astype(np.float32)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k item ids by inner product, in float64 (ties at float32 precision decided)."""
    torch.set_num_threads(os.cpu_count() or 1)
    e = torch.from_numpy(items)
    out = []
    for lo in range(0, len(queries), BATCH):
        q = torch.from_numpy(queries[lo : lo + BATCH]).double()
        best_s, best_i = None, None
        for c in range(0, len(items), 1 << 17):
            s = q @ e[c : c + (1 << 17)].double().T
            s, i = s.topk(min(k, s.shape[1]), dim=1)
            i += c
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        out.append(best_i.numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- measuring
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def median_interval(times: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free 95% interval for it (order statistics, binomial)."""
    x = sorted(times)
    n = len(x)
    cdf, lo, hi = 0.0, 0, n - 1
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    for i in range(n + 1):  # largest lo with P(B < lo) <= 0.025
        if cdf + probs[i] > 0.025:
            lo = i
            break
        cdf += probs[i]
    hi = n - 1 - lo
    lo = max(0, lo - 1) if lo else 0
    return float(np.median(x)), x[lo], x[min(hi, n - 1)]


def timed(search: Callable[[np.ndarray], object], batches: list[np.ndarray], budget_s: float,
          min_reps: int, max_reps: int) -> list[float]:  # fmt: skip
    search(batches[0])  # warm-up
    times: list[float] = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget_s):
        b = batches[len(times) % len(batches)]
        t0 = time.perf_counter()
        search(b)
        times.append(time.perf_counter() - t0)
    return times


def recall_in(found: np.ndarray, truth: np.ndarray, m: int) -> np.ndarray:
    """Per query: the fraction of truth (Q, 10) among the first m ids of found (Q, >= m)."""
    f = found[:, :m]
    return (f[:, None, :] == truth[:, :, None]).any(-1).mean(1)


def mean_interval(per_query: np.ndarray) -> tuple[float, float, float]:
    m = float(per_query.mean())
    half = 1.96 * float(per_query.std(ddof=1)) / math.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
    return m, max(0.0, m - half), min(1.0, m + half)


# ----------------------------------------------------------------------------- the libraries
@dataclass
class Built:
    """One index, built: search(queries, k, threads) -> ids (Q, k), -1 where fewer were found."""
    search: Callable[[np.ndarray, int, int], np.ndarray]
    save: Callable[[str], None] | None = None
    load: Callable[[str], "Built"] | None = None
    add: Callable[[np.ndarray, np.ndarray], None] | None = None  # new ids, new vectors


@dataclass
class Setting:
    library: str  # the row's name
    index: str  # its build parameters, in words
    build: Callable[[np.ndarray, int], Built]  # (items, threads)
    knobs: list[tuple[str, int]]  # search settings: (label, value) for `with_knob`
    with_knob: Callable[[Built, int], Callable[[np.ndarray, int, int], np.ndarray]]
    k_of: Callable[[int], int]  # k searched for a knob value (recall)
    exact: bool = False
    k_timed: int | None = None  # k of the timed searches where not k_of's (IVF: the smallest M)


def faiss_flat() -> Setting:
    import faiss

    def build(x, threads):
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return faiss_built(index)

    return Setting("faiss Flat (exact)", "IndexFlatIP", build, [("", 0)], lambda b, _: b.search,
                   lambda _: K_TRUE, exact=True)  # fmt: skip


def faiss_built(index) -> Built:
    import faiss

    def search(q, k, threads, params=None):
        faiss.omp_set_num_threads(threads)
        return index.search(q, k, params=params)[1]

    def save(path):
        faiss.write_index(index, path)

    def add(ids, vectors):
        index.add(vectors)  # faiss ids are sequential: new titles take the next rows

    b = Built(search, save, lambda path: faiss_built(faiss.read_index(path)), add)
    b.index = index  # type: ignore[attr-defined]
    return b


def faiss_hnsw(m: int, ef_construction: int, efs: list[int]) -> Setting:
    import faiss

    def build(x, threads):
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(x)
        return faiss_built(index)

    def with_knob(b, ef):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        return lambda q, k, t: b.search(q, k, t, params)

    return Setting("faiss HNSWFlat", f"M={m} efC={ef_construction}", build,
                   [(f"ef={ef}", ef) for ef in efs], with_knob, lambda ef: min(ef, CANDIDATES[-1]))  # fmt: skip


def faiss_ivf(nlist: int, nprobes: list[int], n: int) -> Setting:
    import faiss

    def build(x, threads):
        faiss.omp_set_num_threads(threads)
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = 1234
        sample = x[np.random.default_rng(1).choice(len(x), min(len(x), 64 * nlist), replace=False)]
        index.train(sample)
        index.add(x)
        b = faiss_built(index)
        b.quantizer = quantizer  # type: ignore[attr-defined]  # the index does not own it
        return b

    def with_knob(b, nprobe):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        return lambda q, k, t: b.search(q, k, t, params)

    return Setting("faiss IVFFlat", f"nlist={nlist}", build,
                   [(f"nprobe={p}", p) for p in nprobes if max(1, nlist // 256) <= p <= min(nlist // 4, 256)], with_knob,
                   lambda _: min(n, CANDIDATES[-1]), k_timed=CANDIDATES[0])  # fmt: skip


def hnswlib_hnsw(m: int, ef_construction: int, efs: list[int]) -> Setting:
    import hnswlib

    def built(index) -> Built:
        def search(q, k, threads):
            return index.knn_query(q, k=k, num_threads=threads)[0].astype(np.int64)

        def load(path):
            other = hnswlib.Index(space="ip", dim=index.dim)
            other.load_index(path)
            return built(other)

        def add(ids, vectors):
            index.resize_index(index.get_max_elements() + len(ids))
            index.add_items(vectors, ids, num_threads=1)

        b = Built(search, index.save_index, load, add)
        b.index = index  # type: ignore[attr-defined]
        return b

    def build(x, threads):
        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(max_elements=len(x), ef_construction=ef_construction, M=m, random_seed=100)
        index.add_items(x, np.arange(len(x)), num_threads=threads)
        return built(index)

    def with_knob(b, ef):
        def search(q, k, t):
            b.index.set_ef(ef)
            return b.search(q, k, t)

        return search

    return Setting("hnswlib", f"M={m} efC={ef_construction}", build,
                   [(f"ef={ef}", ef) for ef in efs], with_knob, lambda ef: min(ef, CANDIDATES[-1]))  # fmt: skip


def usearch_hnsw(m: int, ef_construction: int, efs: list[int], dtype: str = "f32") -> Setting:
    from usearch.index import Index

    def built(index) -> Built:
        def search(q, k, threads):
            found = index.search(q, k, threads=threads)
            keys = found.keys.astype(np.int64)
            keys[np.arange(k)[None, :] >= found.counts[:, None]] = -1
            return keys

        def add(ids, vectors):
            index.add(ids.astype(np.uint64), vectors, threads=1)

        b = Built(search, index.save, lambda path: built(Index.restore(path)), add)
        b.index = index  # type: ignore[attr-defined]
        return b

    def build(x, threads):
        index = Index(ndim=x.shape[1], metric="ip", dtype=dtype, connectivity=m, expansion_add=ef_construction)
        index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)
        return built(index)

    def with_knob(b, ef):
        def search(q, k, t):
            b.index.expansion_search = ef
            return b.search(q, k, t)

        return search

    return Setting(f"usearch ({dtype})", f"M={m} efC={ef_construction}", build,
                   [(f"ef={ef}", ef) for ef in efs], with_knob, lambda ef: min(ef, CANDIDATES[-1]))  # fmt: skip


def torch_exact() -> Setting:
    def build(x, threads):
        e = torch.from_numpy(x)

        def search(q, k, threads):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return (torch.from_numpy(q) @ e.T).topk(k, dim=1).indices.numpy()

        return Built(search)

    return Setting("torch exact (baseline)", "matmul + topk(10)", build, [("", 0)], lambda b, _: b.search,
                   lambda _: K_TRUE, exact=True)  # fmt: skip


def settings(n: int, quick: bool, libraries: set[str]) -> list[Setting]:
    efs = [16, 32, 64, 100, 200, 500, 1000] if not quick else [32, 100, 500]  # k = M needs ef >= M
    nlist_base = 2 ** round(math.log2(math.sqrt(n)))  # about sqrt(n) lists, a power of 2
    nprobes = [2**i for i in range(11)] if not quick else [4, 16, 64]
    out = [torch_exact()]
    big = n > 200_000  # 1,000,000: the builds take minutes, so the settings that lose at 200,000 are left out
    if "faiss" in libraries:
        out += [faiss_flat()]
        out += [faiss_ivf(4 * nlist_base, nprobes, n)] if big else [faiss_ivf(nlist_base, nprobes, n), faiss_ivf(4 * nlist_base, nprobes, n)]
        out += [faiss_hnsw(16, 100, efs)] + ([] if big else [faiss_hnsw(32, 100, efs)])
    if "hnswlib" in libraries:
        out += [hnswlib_hnsw(16, 100, efs), hnswlib_hnsw(32, 100, efs)]
    if "usearch" in libraries:
        out += [usearch_hnsw(16, 100, efs)] + ([] if big else [usearch_hnsw(32, 100, efs), usearch_hnsw(16, 100, efs, "bf16")])
    return out


# ----------------------------------------------------------------------------- one catalogue
@dataclass
class Row:
    n: int
    d: int
    library: str
    index: str
    knob: str
    exact: bool
    build_s: float | None = None
    rss_mb: float | None = None
    file_mb: float | None = None
    recall10: tuple[float, float, float] | None = None
    recall_in: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    k: int = 0
    k_timed: int = 0
    time_1: list[float] = field(default_factory=list)  # seconds per batch of 256
    time_2: list[float] = field(default_factory=list)
    ratio_1: float | None = None  # exact torch median / this median, same catalogue and threads
    ratio_2: float | None = None
    data: str = ""  # "" for the synthetic world, else the real catalogue's name

    @property
    def items(self) -> str:
        return f"{self.n:,}" + (f" ({self.data})" if self.data else "")


def run_catalogue(n: int, d_extra: int, args, libraries: set[str], log, data=None) -> tuple[list[Row], list[str]]:
    """Every setting on one catalogue: the synthetic world's, or `data` = (name, items, queries)."""
    t0 = time.perf_counter()
    name = "synthetic"
    if data is None:
        items, queries = world(n, d_extra, BATCH * N_BATCHES, seed=args.seed)
    else:
        name, items, queries = data
        queries = queries[np.random.default_rng(3).permutation(len(queries))[: BATCH * N_BATCHES]]
    truth = exact_top(items, queries, K_TRUE)
    d = items.shape[1]
    norms = np.linalg.norm(items, axis=1)
    p5, p95 = np.percentile(norms, [5, 95])
    notes = [f"{name} n={n:,} d={d}: item norms p95/p5 = {p95 / p5:.1f}; data and exact top-10 in {time.perf_counter() - t0:.1f} s"]
    log(notes[-1])
    batches = [np.ascontiguousarray(queries[i * BATCH : (i + 1) * BATCH]) for i in range(N_BATCHES)]
    rows: list[Row] = []
    budget = args.budget_s
    for setting in settings(n, args.quick, libraries):
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        try:
            built = setting.build(items, args.build_threads)
        except Exception as err:  # noqa: BLE001  (a library that fails on this input is reported, not fatal)
            notes.append(f"{setting.library} {setting.index} at n={n:,} d={d}: build failed: {err!r}")
            log(notes[-1])
            continue
        build_s = time.perf_counter() - t
        gc.collect()
        rss_mb = (rss_bytes() - rss0) / 2**20
        file_mb = None
        if built.save is not None:
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                path = os.path.join(tmp, "index")
                built.save(path)
                file_mb = os.path.getsize(path) / 2**20
        log(f"  {setting.library} {setting.index}: built in {build_s:.2f} s ({args.build_threads} threads), "
            f"RSS +{rss_mb:.0f} MB, file {file_mb if file_mb is None else round(file_mb)} MB")  # fmt: skip
        for label, value in setting.knobs:
            search = setting.with_knob(built, value)
            k = min(setting.k_of(value), n)
            k_timed = min(setting.k_timed or k, n)
            found = np.concatenate([search(b, k, 1) for b in batches])
            row = Row(n, d, setting.library, setting.index, label, setting.exact, build_s, rss_mb, file_mb, k=k,
                      k_timed=k_timed)  # fmt: skip
            row.recall10 = mean_interval(recall_in(found, truth, K_TRUE))
            for m in CANDIDATES:
                if m <= k:
                    row.recall_in[m] = mean_interval(recall_in(found, truth, m))
            row.time_1 = timed(lambda b: search(b, k_timed, 1), batches, budget, args.min_reps, args.max_reps)
            row.time_2 = timed(lambda b: search(b, k_timed, 2), batches, budget / 2, 3, args.max_reps)
            row.data = "" if data is None else name
            rows.append(row)
            log(f"    {label or 'exact'}: k={k} recall@10 {row.recall10[0]:.4f} in M "
                + " ".join(f"{m}:{r[0]:.4f}" for m, r in row.recall_in.items())
                + f" | 1 thread {1e3 * np.median(row.time_1):.1f} ms, 2 threads {1e3 * np.median(row.time_2):.1f} ms")
            if setting.k_timed and row.recall10[0] >= 0.9995:
                break  # IVF: more lists only cost more
        built = search = None  # the index is freed before the next one is built
    base = next(r for r in rows if r.library.startswith("torch exact"))
    for r in rows:
        r.ratio_1 = float(np.median(base.time_1) / np.median(r.time_1))
        r.ratio_2 = float(np.median(base.time_2) / np.median(r.time_2))
    if data is None:
        rows.append(rescore_row(items, batches, args, n, d))
    return rows, notes


def rescore_row(items, batches, args, n, d) -> Row:
    """Not an index: the exact rescoring of M candidates (gather + batched dot + top-10), one thread,
    which any approximate path adds to its search. Candidates drawn at random (the gather's cost
    does not depend on which)."""
    e = torch.from_numpy(items)
    rng = np.random.default_rng(2)
    row = Row(n, d, "rescore M candidates exactly", "torch gather + bmm + topk(10)", "", False)
    row.rescore = {}  # type: ignore[attr-defined]
    torch.set_num_threads(1)
    for m in CANDIDATES:
        if m > n:
            continue
        cands = [torch.from_numpy(rng.integers(0, n, (BATCH, m))) for _ in batches]

        def rescore(i):
            with torch.inference_mode():
                q = torch.from_numpy(batches[i]).unsqueeze(-1)
                s = torch.bmm(e[cands[i]], q).squeeze(-1)
                return cands[i].gather(1, s.topk(K_TRUE, dim=1).indices)

        times = timed(lambda b: rescore(b), list(range(len(batches))), args.budget_s / 4, args.min_reps, args.max_reps)
        row.rescore[m] = times  # type: ignore[attr-defined]
    return row


# ----------------------------------------------------------------------------- properties
def properties(args, libraries: set[str], log) -> list[list[str]]:
    """At a small size (d=64), per index: build time at 1 and at `build_threads` threads; do two builds
    with the same thread count give the same results (k=100, 256 queries)? Saved and loaded: the time,
    and the same results? Then 1,000 more items of the same world added to the built index (one
    thread): the time per item, and recall@10 against the exact top-10 of the grown catalogue."""
    n = args.property_items
    items, queries = world(n + 1000, 0, BATCH, seed=args.seed + 1)
    truth_grown = exact_top(items, queries, K_TRUE)
    new, items = items[n:], items[:n]
    new_ids = np.arange(n, n + len(new))
    in_truth = truth_grown >= n
    out = []
    for setting in settings(n, True, libraries):
        if setting.exact or (setting.library != "faiss IVFFlat" and "M=16" not in setting.index):
            continue
        if setting.library == "faiss IVFFlat" and setting.index != f"nlist={2 ** round(math.log2(math.sqrt(n)))}":
            continue
        label, value = setting.knobs[-1]
        same, build_s = {}, {}
        for threads in (1, args.build_threads):
            results = []
            for _ in range(2):
                t = time.perf_counter()
                built = setting.build(items, threads)
                build_s.setdefault(threads, time.perf_counter() - t)
                results.append(setting.with_knob(built, value)(queries, 100, 1))
            same[threads] = bool(np.array_equal(results[0], results[1]))
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            path = os.path.join(tmp, "index")
            t = time.perf_counter()
            built.save(path)
            save_s = time.perf_counter() - t
            t = time.perf_counter()
            loaded = built.load(path)
            load_s = time.perf_counter() - t
            same_loaded = bool(np.array_equal(setting.with_knob(loaded, value)(queries, 100, 1), results[1]))
            del loaded
        try:
            t = time.perf_counter()
            built.add(new_ids, np.ascontiguousarray(new))
            add_us = 1e6 * (time.perf_counter() - t) / len(new)
            found = setting.with_knob(built, value)(queries, K_TRUE, 1)
            hit = (found[:, None, :] == truth_grown[:, :, None]).any(-1)
            add = (f"{add_us:.0f} µs/item; recall@10 of the grown catalogue {hit.mean():.4f}, of the "
                   f"{int(in_truth.sum())} new items among its exact top-10s {hit[in_truth].mean():.2f}")  # fmt: skip
        except Exception as err:  # noqa: BLE001
            add = f"fails: {err!r}"
        out.append([setting.library, f"{setting.index}, {label}",
                    f"{build_s[1]:.2f} / {build_s[args.build_threads]:.2f}", "yes" if same[1] else "no",
                    "yes" if same[args.build_threads] else "no", f"{save_s:.3f} / {load_s:.3f}",
                    "yes" if same_loaded else "no", add])  # fmt: skip
        log(f"  properties {out[-1]}")
    return out


def versions() -> dict[str, tuple[str, str, str]]:
    """Per library: (version, licence, how pip installed it: the wheel's tag; linux_x86_64 means built
    here from the source distribution, as no wheel for this Python fitted)."""
    out = {}
    for dist, module in (("faiss-cpu", "faiss"), ("hnswlib", "hnswlib"), ("usearch", "usearch")):
        try:
            __import__(module)
            meta = importlib.metadata.metadata(dist)
            licence = meta.get("License-Expression") or meta.get("License") or ""
            if not licence and dist in LICENCE_FILES:
                licence = f"{LICENCE_FILES[dist]} (its LICENSE file; the metadata names none)"
            wheel = importlib.metadata.distribution(dist).read_text("WHEEL") or ""
            tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
            how = "built from source here" if tags and all(t.endswith("linux_x86_64") and "manylinux" not in t for t in tags) else "a wheel"
            requires = importlib.metadata.requires(dist) or []
            out[module] = (importlib.metadata.version(dist), licence, f"{how} ({tags[0] if tags else '?'}); requires {', '.join(requires)}")
        except Exception as err:  # noqa: BLE001
            out[module] = ("missing", repr(err), "")
    return out


def make_real(model_dir: str, log_path: str, out: str) -> None:
    """Learnt item vectors and queries of a trained IntentRec, for --real (see the docstring)."""
    from model.features import featurize_all
    from model.playlogs.files import read_user_sequences
    from model.serving.scorer import Scorer

    scorer = Scorer.load(model_dir)
    rng = np.random.default_rng(0)
    captured: list[torch.Tensor] = []
    scorer.model.item_encoder.to_item_space.register_forward_hook(
        lambda module, inputs, output: captured.append(output[:, -1].detach().clone())
    )
    histories = []
    for _, events in sorted(read_user_sequences(log_path).items()):
        rows = featurize_all(events, scorer.vocab)
        histories += [rows[:cut] for cut in rng.integers(1, len(rows) + 1, 3)]
    for lo in range(0, len(histories), 64):
        scorer.predict(histories[lo : lo + 64])
    queries = torch.cat(captured).numpy().astype(np.float32)
    items = scorer.model.features.item.weight.detach().numpy()[2:].astype(np.float32)  # no PAD, UNKNOWN
    np.savez(out, items=items, queries=queries)
    print(f"{out}: items {items.shape}, queries {queries.shape}")


def pick_details(args, log) -> list[str]:
    """The pick (hnswlib, M=32) at 1,000,000 items: per configuration, build time and resident set
    growth, save and load (time, file, resident set growth of a fresh copy loaded), then recall and
    batch time around the chosen ef (k=100)."""
    import hnswlib

    n = args.pick_items
    configs = [(64, 32, 100, 1), (64, 32, 50, args.build_threads), (64, 16, 50, args.build_threads),
               (88, 32, 100, args.build_threads)]  # (d, M, efConstruction, build threads)  # fmt: skip
    efs = [100, 150, 200, 300]
    lines = ["| d | M | efC | build threads | build s | RSS MB after build | file MB | save s | load s | "
             "RSS MB after load | ef | recall@10 = in 100 | ms / 256, 1 thread | p99 | ×exact | ms / 256, 2 threads | ×exact |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|"]  # fmt: skip
    data: dict[int, tuple] = {}
    for d, m, efc, threads in configs:
        if d not in data:
            data.clear()
            gc.collect()
            items, queries = world(n, d - 64, BATCH * N_BATCHES, seed=args.seed)
            truth = exact_top(items, queries, K_TRUE)
            batches = [np.ascontiguousarray(queries[i * BATCH : (i + 1) * BATCH]) for i in range(N_BATCHES)]
            exact = torch_exact().build(items, 1)
            exact_t = {t: timed(lambda b: exact.search(b, K_TRUE, t), batches, args.budget_s, args.min_reps, args.max_reps)
                       for t in (1, 2)}  # fmt: skip
            data[d] = (items, truth, batches, exact_t)
            log(f"n={n:,} d={d}: exact {1e3 * np.median(exact_t[1]):.0f} ms / 256 (1 thread)")
        items, truth, batches, exact_t = data[d]
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=efc, M=m, random_seed=100)
        index.add_items(items, np.arange(n), num_threads=threads)
        build_s = time.perf_counter() - t
        rss_build = (rss_bytes() - rss0) / 2**20
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            path = os.path.join(tmp, "index.bin")
            t = time.perf_counter()
            index.save_index(path)
            save_s = time.perf_counter() - t
            file_mb = os.path.getsize(path) / 2**20
            index = None
            gc.collect()
            rss0 = rss_bytes()
            t = time.perf_counter()
            index = hnswlib.Index(space="ip", dim=d)
            index.load_index(path)
            load_s = time.perf_counter() - t
            rss_load = (rss_bytes() - rss0) / 2**20
        log(f"  M={m} efC={efc}: built in {build_s:.1f} s ({threads} threads), +{rss_build:.0f} MB; "
            f"file {file_mb:.0f} MB, saved {save_s:.1f} s, loaded {load_s:.1f} s, +{rss_load:.0f} MB")  # fmt: skip
        for ef in efs:
            index.set_ef(ef)
            search = lambda b, t: index.knn_query(b, k=100, num_threads=t)[0]  # noqa: E731
            found = np.concatenate([search(b, 1).astype(np.int64) for b in batches])
            recall = mean_interval(recall_in(found, truth, K_TRUE))
            t1 = timed(lambda b: search(b, 1), batches, args.budget_s, args.min_reps, args.max_reps)
            t2 = timed(lambda b: search(b, 2), batches, args.budget_s / 2, 3, args.max_reps)
            x1 = float(np.median(exact_t[1]) / np.median(t1))
            x2 = float(np.median(exact_t[2]) / np.median(t2))
            lines.append(f"| {d} | {m} | {efc} | {threads} | {build_s:.1f} | {rss_build:.0f} | {file_mb:.0f} | {save_s:.2f} | "
                         f"{load_s:.2f} | {rss_load:.0f} | {ef} | {fmt_r(recall)} | {fmt_t(t1)} | {p99(t1)} | {fmt_x(x1)} | "
                         f"{fmt_t(t2)} | {fmt_x(x2)} |")  # fmt: skip
            log(f"    ef={ef}: recall@10 {recall[0]:.4f}, {1e3 * np.median(t1):.1f} ms 1 thread")
        index = None
    return lines


def portable_check(args, log) -> list[str]:
    """hnswlib as pip builds it from its source distribution (-march=native: this CPU's AVX-512) against
    a portable build (HNSWLIB_NO_NATIVE=1, what an image built on another machine should use), both
    searching the same saved index in a fresh process each: 200,000 items, d=64, M=32 efC=100, k=100."""
    import hnswlib
    import subprocess

    n = 200_000
    items, queries = world(n, 0, BATCH * N_BATCHES, seed=args.seed)
    truth = exact_top(items, queries, K_TRUE)
    lines = ["| hnswlib build | module | ef | recall@10 | ms / 256, 1 thread | p99 |", "|---|---|---:|---|---|---:|"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        index = hnswlib.Index(space="ip", dim=items.shape[1])
        index.init_index(max_elements=n, ef_construction=100, M=32, random_seed=100)
        index.add_items(items, np.arange(n), num_threads=args.build_threads)
        index.save_index(os.path.join(tmp, "index.bin"))
        del index
        np.save(os.path.join(tmp, "queries.npy"), queries)
        np.save(os.path.join(tmp, "truth.npy"), truth)
        for label, path in (("pip, from source (-march=native)", None), ("portable (HNSWLIB_NO_NATIVE=1)", args.portable)):
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
            out = subprocess.run([sys.executable, __file__, "--portable-child", tmp, "--min-reps", str(args.min_reps),
                                  "--max-reps", str(args.max_reps), "--budget-s", str(args.budget_s)],
                                 env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
            for line in out.splitlines():
                if line.startswith("|"):
                    lines.append(f"| {label} {line}")
            log(out)
    return lines


def portable_child(tmp: str, args) -> None:
    import hnswlib

    queries, truth = np.load(os.path.join(tmp, "queries.npy")), np.load(os.path.join(tmp, "truth.npy"))
    index = hnswlib.Index(space="ip", dim=queries.shape[1])
    index.load_index(os.path.join(tmp, "index.bin"))
    batches = [np.ascontiguousarray(queries[i * BATCH : (i + 1) * BATCH]) for i in range(N_BATCHES)]
    for ef in (100, 200):
        index.set_ef(ef)
        found = np.concatenate([index.knn_query(b, k=100, num_threads=1)[0].astype(np.int64) for b in batches])
        times = timed(lambda b: index.knn_query(b, k=100, num_threads=1), batches, args.budget_s, args.min_reps, args.max_reps)
        print(f"| {Path(hnswlib.__file__).parent.name}/{Path(hnswlib.__file__).name} | {ef} | "
              f"{fmt_r(mean_interval(recall_in(found, truth, K_TRUE)))} | {fmt_t(times)} | {p99(times)} |")


def write_section(path: str, title: str, body: list[str]) -> None:
    """Replace the section `title` of the .md (up to the next "## "), or insert it before "## The goal"."""
    text = Path(path).read_text() if Path(path).exists() else ""
    section = "\n".join([title, ""] + body + [""]) + "\n"
    if title in text:
        start = text.index(title)
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[nxt + 1 :] if nxt >= 0 else "")
    elif "## The goal" in text:
        at = text.index("## The goal")
        text = text[:at] + section + text[at:]
    else:
        text += "\n" + section
    Path(path).write_text(text)


# ----------------------------------------------------------------------------- the report
def fmt_x(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 1 else f"{ratio:.1f}×"


def fmt_r(r: tuple[float, float, float] | None) -> str:
    return "" if r is None else f"{r[0]:.4f} [{r[1]:.3f}, {r[2]:.3f}]"


def fmt_t(times: list[float]) -> str:
    m, lo, hi = median_interval(times)
    return f"{1e3 * m:.1f} [{1e3 * lo:.1f}, {1e3 * hi:.1f}]"


def p99(times: list[float]) -> str:
    return f"{1e3 * float(np.percentile(times, 99)):.1f}"


def best_rows(rows: list[Row], m: int) -> list[Row]:
    """Per (n, d, library + index): the fastest single-thread setting reaching GOAL_RECALL within m."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.exact or not r.time_1:
            continue
        groups.setdefault((r.data, r.n, r.d, r.library, r.index), []).append(r)
    out = []
    for group in groups.values():
        ok = [r for r in group if m in r.recall_in and r.recall_in[m][0] >= GOAL_RECALL]
        if ok:
            out.append(min(ok, key=lambda r: np.median(r.time_1)))
    return out


def pick_section(rows: list[Row]) -> list[str]:
    """Per catalogue and M: the fastest single-thread search, over every library and setting, that
    reaches GOAL_RECALL in M; plus the exact rescoring of its M candidates, against the exact path."""
    lines = ["## The pick: per catalogue and M, the fastest setting of any library reaching "
             f"{GOAL_RECALL} recall of the exact top-10 in M (one thread)", "",
             "search + rescore = the search's median + the median exact rescoring of M candidates "
             "(gather, dot, top-10; measured on its own below). ×exact = the exact torch path's median / that sum.", "",
             "| items | d | M | library | index | search | recall in M | search ms | + rescore ms | = ms / 256 | "
             "exact ms / 256 | ×exact | build s (threads as above) | RSS MB | file MB |",
             "|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    catalogues = sorted({(r.data, r.n, r.d) for r in rows})
    for data, n, d in catalogues:
        mine = [r for r in rows if (r.data, r.n, r.d) == (data, n, d)]
        exact = next((r for r in mine if r.library.startswith("torch exact")), None)
        rescore = next((getattr(r, "rescore") for r in mine if hasattr(r, "rescore")), {})
        for m in CANDIDATES:
            ok = [r for r in mine if not r.exact and r.time_1 and m in r.recall_in and r.recall_in[m][0] >= GOAL_RECALL]
            if not ok or exact is None:
                continue
            best = min(ok, key=lambda r: np.median(r.time_1))
            search_ms = 1e3 * float(np.median(best.time_1))
            rescore_ms = 1e3 * float(np.median(rescore[m])) if m in rescore else 0.0
            exact_ms = 1e3 * float(np.median(exact.time_1))
            lines.append(f"| {best.items} | {d} | {m} | {best.library} | {best.index} | {best.knob} | "
                         f"{fmt_r(best.recall_in[m])} | {search_ms:.1f} | {rescore_ms:.1f} | {search_ms + rescore_ms:.1f} | "
                         f"{exact_ms:.1f} | {fmt_x(exact_ms / (search_ms + rescore_ms))} | {best.build_s:.1f} | "
                         f"{best.rss_mb:.0f} | {'' if best.file_mb is None else f'{best.file_mb:.0f}'} |")  # fmt: skip
    return lines + [""]


def report(rows, notes, props, args, started, wall_s, load_before, load_after) -> str:
    v = versions()
    lines = [
        "# ANN libraries for IntentRec's candidates: FAISS, hnswlib, usearch against the exact path",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}` (under `flock /tmp/cpu-heavy.lock`)  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; wall time of the run {wall_s / 60:.1f} min  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible ({cpu_name()}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}; 1-minute load average {load_before:.1f} before the run, "
        f"{load_after:.1f} after (the machine is shared)  ",
        "Libraries, installed with pip from PyPI: " + "; ".join(f"{m} {ver} ({lic}), {how}" for m, (ver, lic, how) in v.items()),
        "",
        f"Maximum inner product search, float32, batches of {BATCH} queries, {N_BATCHES * BATCH} queries for recall; "
        f"indexes built with {args.build_threads} threads. Times are per batch of {BATCH} in ms: median [95% interval "
        f"of the median] and p99 over the timed batches (between {args.min_reps} and {args.max_reps} per cell, "
        f"about {args.budget_s:g} s each: p99 is close to their maximum). ×exact = the exact torch path's median / "
        "this one's, same catalogue, same threads, same run. Recall: mean [95% interval] over queries of the "
        "fraction of the exact top-10 (float64) found; `in M` among the first M candidates, `@10` among the "
        "retrieved top-10. HNSW and IVFFlat score the stored float32 vectors exactly, so their candidates "
        "come back in exact order and `@10` equals `in 10`.",
        "",
    ]
    lines += pick_section(rows)
    lines += [
        "## The goal: recall >= 0.99 of the exact top-10 within M candidates, lowest single-thread latency",
        "",
    ]
    for m in CANDIDATES:
        best = best_rows(rows, m)
        if not best:
            continue
        lines += [f"### M = {m}: per index, the fastest search setting reaching {GOAL_RECALL} in {m}", "",
                  "| items | d | library | index | search | recall in M | ms / 256, 1 thread | p99 | ×exact | "
                  "ms / 256, 2 threads | ×exact | build s | RSS MB | file MB |",
                  "|---:|---:|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in sorted(best, key=lambda r: (r.data, r.n, r.d, np.median(r.time_1))):
            lines.append(f"| {r.items} | {r.d} | {r.library} | {r.index} | {r.knob} | {fmt_r(r.recall_in[m])} | "
                         f"{fmt_t(r.time_1)} | {p99(r.time_1)} | {fmt_x(r.ratio_1)} | {fmt_t(r.time_2)} | {fmt_x(r.ratio_2)} | "
                         f"{r.build_s:.1f} | {r.rss_mb:.0f} | {'' if r.file_mb is None else f'{r.file_mb:.0f}'} |")  # fmt: skip
        lines.append("")
    lines += ["## The exact path and the cost of rescoring M candidates", "",
              "| items | d | path | ms / 256, 1 thread | p99 | ms / 256, 2 threads | p99 | recall@10 |",
              "|---:|---:|---|---|---:|---|---:|---|"]  # fmt: skip
    for r in rows:
        if r.exact:
            lines.append(f"| {r.items} | {r.d} | {r.library} ({r.index}) | {fmt_t(r.time_1)} | {p99(r.time_1)} | "
                         f"{fmt_t(r.time_2)} | {p99(r.time_2)} | {fmt_r(r.recall10)} |")  # fmt: skip
        elif hasattr(r, "rescore"):
            for m, times in r.rescore.items():
                lines.append(f"| {r.items} | {r.d} | rescore M={m} exactly ({r.index}) | {fmt_t(times)} | {p99(times)} | | | |")
    lines += ["", "## Every setting", "",
              "| items | d | library | index | search | k | recall@10 | in 100 | in 200 | in 500 | in 1000 | "
              "ms / 256, 1 thread | p99 | ×exact | ms / 256, 2 threads | p99 | ×exact | build s | RSS MB | file MB |",
              "|---:|---:|---|---|---|---:|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if not r.time_1:
            continue
        rin = " | ".join(fmt_r(r.recall_in.get(m)) for m in CANDIDATES)
        lines.append(f"| {r.items} | {r.d} | {r.library} | {r.index} | {r.knob} | {r.k} | {fmt_r(r.recall10)} | {rin} | "
                     f"{fmt_t(r.time_1)} | {p99(r.time_1)} | {fmt_x(r.ratio_1)} | {fmt_t(r.time_2)} | {p99(r.time_2)} | "
                     f"{fmt_x(r.ratio_2)} | {'' if r.build_s is None else f'{r.build_s:.1f}'} | "
                     f"{'' if r.rss_mb is None else f'{r.rss_mb:.0f}'} | {'' if r.file_mb is None else f'{r.file_mb:.0f}'} |")  # fmt: skip
    lines += ["", f"## Determinism, save/load, adding items ({args.property_items:,} items, d=64)", "",
              "Per index: build time; two builds with the same thread count searched alike (k=100, 256 queries): "
              "the same ids? Saved and loaded: the time, and the same ids? Then 1,000 more items of the same world "
              "added to the built index (one thread): the time per item, and recall@10 against the exact top-10 "
              "of the grown catalogue (the last knob of the quick grid).", "",
              f"| library | index, search | build s, 1 / {args.build_threads} threads | same results, built 1 thread | "
              f"same, built {args.build_threads} threads | save / load s | same after load | adding 1,000 items |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(p) + " |" for p in props]
    lines += ["", "## Notes from the run", ""] + [f"- {x}" for x in notes] + [""]
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,200000,1000000")
    parser.add_argument("--dims", default="64,88", help="64, and 88 = 64 + 24 attribute columns")
    parser.add_argument("--dims88-sizes", default="200000", help="the sizes also run at d=88")
    parser.add_argument("--quick", action="store_true", help="fewer search settings")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing per cell and thread count, about")
    parser.add_argument("--min-reps", type=int, default=5)
    parser.add_argument("--max-reps", type=int, default=30)
    parser.add_argument("--property-items", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default=None,
                        help="an .npz of learnt `items` and `queries` (see the docstring) also measured as is")
    parser.add_argument("--real-name", default="MovieLens-100K V0, learnt")
    parser.add_argument("--libraries", default="faiss,hnswlib,usearch")
    parser.add_argument("--tmp", default=None, help="where indexes are saved to measure them")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ann-libraries.md"))
    parser.add_argument("--portable", default=None, help="for --section portable: a directory holding a portable hnswlib")
    parser.add_argument("--portable-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section", choices=("pick", "portable"), default=None,
                        help="pick: only the picked library at --pick-items in detail, written as its own section")
    parser.add_argument("--pick-items", type=int, default=1_000_000)
    parser.add_argument("--make-real", nargs=3, metavar=("MODEL_DIR", "LOG", "OUT_NPZ"), default=None)
    args = parser.parse_args()
    if args.make_real:
        sys.path.insert(0, str(ROOT))
        make_real(*args.make_real)
        return
    if args.portable_child:
        portable_child(args.portable_child, args)
        return
    if args.section == "portable":
        started = datetime.now(timezone.utc)
        body = portable_check(args, lambda s: print(s, flush=True))
        head = [f"Command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}` (under `flock /tmp/cpu-heavy.lock`), "
                f"{started:%Y-%m-%d %H:%M} UTC. The portable build: "
                "`HNSWLIB_NO_NATIVE=1 pip wheel hnswlib==0.8.0 --no-binary hnswlib --no-deps --no-cache-dir -w DIR`, unpacked in DIR.  ", "",
                portable_check.__doc__.replace("\n    ", " "), ""]  # fmt: skip
        write_section(args.out, "## hnswlib built portable or native", head + body)
        print("\n".join(head + body))
        return
    if args.section == "pick":
        started, t_start, load_before = datetime.now(timezone.utc), time.perf_counter(), os.getloadavg()[0]
        body = pick_details(args, lambda s: print(s, flush=True))
        v = versions()["hnswlib"]
        head = [f"Command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}` (under `flock /tmp/cpu-heavy.lock`)  ",
                f"Date: {started:%Y-%m-%d %H:%M} UTC; wall time {(time.perf_counter() - t_start) / 60:.1f} min; "
                f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; hnswlib {v[0]}  ",
                "",
                f"The synthetic world of {args.pick_items:,} items (the same seed as above), hnswlib space='ip', "
                "search k=100 (so `in 100` = `@10`: the candidates are scored exactly). Per configuration: build time "
                "and resident set growth, save and load (time, file size), then recall and batch time around the chosen ef. "
                "RSS after load: a fresh copy loaded from the file, as a restarted process would. ×exact: the exact torch "
                "path (matmul + topk(10)) in this run, same threads. The rows with build threads 1 are what a "
                "one-thread scoring process pays to build at load.", ""]  # fmt: skip
        write_section(args.out, f"## The pick in detail: hnswlib at {args.pick_items:,} items", head + body)
        print("\n".join(head + body))
        return
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    log = lambda s: print(s, flush=True)  # noqa: E731
    available = versions()
    libraries = {lib for lib in args.libraries.split(",") if available.get(lib, ("missing",))[0] != "missing"}
    for lib, (ver, lic, how) in available.items():
        log(f"{lib}: {ver} ({lic}) {how}")
    rows, notes = [], []
    dims = [int(x) for x in args.dims.split(",")]
    for n in [int(x) for x in args.sizes.split(",")]:
        for d in dims:
            if d != 64 and str(n) not in args.dims88_sizes.split(","):
                continue
            r, nt = run_catalogue(n, d - 64, args, libraries, log)
            rows += r
            notes += nt
    if args.real:
        real = np.load(args.real)
        items, queries = real["items"].astype(np.float32), real["queries"].astype(np.float32)
        r, nt = run_catalogue(len(items), 0, args, libraries, log, (args.real_name, items, queries))
        rows += r
        notes += nt
    props = properties(args, libraries, log)
    text = report(rows, notes, props, args, started, time.perf_counter() - t_start, load_before, os.getloadavg()[0])
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
