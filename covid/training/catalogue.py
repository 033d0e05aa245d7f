"""The three-class film catalogue: which films exist, their class, source and age, and the split.

Films come from three shared folders:

- ``covid19-radiography/``: COVID-19 films, and Normal films (paediatric Kermany
  films numbered up to :data:`PAEDIATRIC_MAX_NUMBER`, adult films above);
- ``other-pneumonia/viral/``: children's viral pneumonias (Kermany);
- ``covid-qu-ex-masks/Non-COVID/images/``: pneumonias that are not COVID-19
  (RSNA adults and Kermany children, mixed and not told apart by name);
- ``other-pneumonia/covid-qu-ex-test/``: 240 more of them, from COVID-QU-Ex's Test
  subset (images only: the U-Net supplies their lungs), also of mixed ages.

Every film of an earlier split (the shipped model's ``split.json``) keeps its
side, so that models are compared on the same held-out films. Near-duplicate groups
(256-bit pHash) are formed over all films together; a new film joins the side of
any old film in its group, a group of new films only is split 70/15/15
(stratified), and a new film whose group already straddles two sides is left out.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covid.model.classes import CLASS_NAMES, COVID, NORMAL, OTHER_PNEUMONIA, index_of
from covid.settings import settings

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
PAEDIATRIC_MAX_NUMBER = 1341
"""COVID-19 Radiography Normal films numbered up to this are paediatric (Kermany)."""

QUEX_FOLDER = "covid-qu-ex-masks"
"""COVID-QU-Ex (films with radiologists' lung and infection masks), in the data folder."""
QUEX_CLASS_FOLDERS: dict[str, str] = {COVID: "COVID-19", OTHER_PNEUMONIA: "Non-COVID",
                                      NORMAL: "Normal"}
"""COVID-QU-Ex's folder of each class (each holds ``images/``, ``lungs/``, ``infection/``)."""

SIDES = ("train", "val", "test")
SPLIT_FOLDS = 20
"""Folds of the stratified group split (see :func:`split_indices`)."""
HASH_SIZE = 16
"""pHash side: a 16 x 16 DCT gives 256-bit hashes (64 bits chain unrelated films)."""
NEAR_DUPLICATE_BITS = 40
"""Largest Hamming distance between 256-bit perceptual hashes of near-duplicates.

Measured on the shared database: 444 images fall in groups of 2 to 5, no group mixes
classes, and no chaining of unrelated films; with 64-bit hashes a threshold of 6
bits chained 4,444 different films into one group."""


def data_dir() -> Path:
    """The shared data folder (:attr:`covid.settings.Settings.data_dir`)."""
    return settings().data_dir


@dataclass(frozen=True)
class Source:
    """One folder of films of one class.

    Attributes:
        name: Short name used in reports (``radiography-covid``...).
        folder: The folder, relative to the data root.
        label: Index into :data:`~covid.model.classes.CLASS_NAMES`.
        age: ``adult``, ``child``, ``mixed``, or ``by-number`` (Normal films:
            paediatric up to :data:`PAEDIATRIC_MAX_NUMBER`).
    """

    name: str
    folder: str
    label: int
    age: str


SOURCES: tuple[Source, ...] = (
    Source("radiography-covid", "covid19-radiography/COVID", index_of(CLASS_NAMES, COVID),
           "adult"),
    Source("kermany-viral", "other-pneumonia/viral", index_of(CLASS_NAMES, OTHER_PNEUMONIA),
           "child"),
    Source("quex-non-covid", f"{QUEX_FOLDER}/{QUEX_CLASS_FOLDERS[OTHER_PNEUMONIA]}/images",
           index_of(CLASS_NAMES, OTHER_PNEUMONIA), "mixed"),
    Source("radiography-normal", "covid19-radiography/Normal", index_of(CLASS_NAMES, NORMAL),
           "by-number"),
    Source("quex-test-non-covid", "other-pneumonia/covid-qu-ex-test",
           index_of(CLASS_NAMES, OTHER_PNEUMONIA), "mixed"),
)


def normal_age(name: str) -> str:
    """``child`` for a paediatric Normal film (``Normal-123.jpg``, number <= 1341), else adult."""
    number = Path(name).stem.rsplit("-", 1)[-1]
    return "child" if number.isdigit() and int(number) <= PAEDIATRIC_MAX_NUMBER else "adult"


@dataclass(frozen=True)
class Catalogue:
    """Labelled films with their source and age group.

    Attributes:
        root: The data root the names are relative to.
        names: N film names relative to ``root``.
        labels: (N,) int indices into :data:`CLASS_NAMES`.
        sources: N source names (see :data:`SOURCES`).
        ages: N age groups: ``adult``, ``child`` or ``mixed``.
    """

    root: Path
    names: tuple[str, ...]
    labels: np.ndarray
    sources: tuple[str, ...]
    ages: tuple[str, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        """The films' absolute paths."""
        return tuple(self.root / n for n in self.names)

    def subset(self, index: np.ndarray) -> Catalogue:
        """The films at ``index`` (an int array)."""
        pick = [int(i) for i in index]
        return Catalogue(self.root, tuple(self.names[i] for i in pick), self.labels[pick],
                         tuple(self.sources[i] for i in pick), tuple(self.ages[i] for i in pick))


def find_films(root: Path | None = None, sources: tuple[Source, ...] = SOURCES) -> Catalogue:
    """Lists every film of every source.

    Args:
        root: The data root (default :func:`data_dir`).
        sources: The folders to read.

    Returns:
        The catalogue, in source order then by name.

    Raises:
        FileNotFoundError: A source folder is missing or holds no images.
    """
    root = Path(root or data_dir())
    names, labels, kinds, ages = [], [], [], []
    for source in sources:
        folder = root / source.folder
        if not folder.is_dir():
            raise FileNotFoundError(f"film folder not found: {folder}")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no PNG or JPEG films in {folder}")
        for path in found:
            name = str(path.relative_to(root))
            names.append(name)
            labels.append(source.label)
            kinds.append(source.name)
            ages.append(normal_age(name) if source.age == "by-number" else source.age)
    return Catalogue(root, tuple(names), np.asarray(labels, np.int64), tuple(kinds), tuple(ages))


def perceptual_hashes(paths: tuple[Path, ...], workers: int = 4) -> np.ndarray:
    """Computes a 256-bit perceptual hash (DCT pHash) of each image.

    Args:
        paths: N image paths.
        workers: Threads to decode with.

    Returns:
        (N, 4) uint64 array: each row is one image's 256 hash bits.
    """

    def _hash(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            bits = imagehash.phash(image.convert("L"), hash_size=HASH_SIZE).hash.flatten()
        return np.packbits(bits).view(np.uint64)

    with ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(_hash, paths))
    return np.stack(hashes) if hashes else np.zeros((0, HASH_SIZE**2 // 64), np.uint64)


def group_near_duplicates(
    hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_BITS, block: int = 512
) -> np.ndarray:
    """Groups images whose hashes are within ``max_distance`` bits, transitively.

    Args:
        hashes: (N, K) uint64 perceptual hashes (K words of 64 bits each).
        max_distance: Largest Hamming distance that counts as a near-duplicate.
        block: Rows compared at a time (bounds memory).

    Returns:
        (N,) int array of group ids; near-duplicates share an id.
    """
    n = len(hashes)
    rows, cols = [], []
    for start in range(0, n, block):
        xor = hashes[start : start + block, None, :] ^ hashes[None, :, :]
        distance = np.bitwise_count(xor).sum(axis=-1, dtype=np.int32)
        r, c = np.nonzero(distance <= max_distance)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def split_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, np.ndarray]:
    """Makes a stratified split that keeps every group on one side.

    Args:
        labels: (N,) class indices.
        groups: (N,) group ids from :func:`group_near_duplicates`.
        seed: Seed; the same seed gives the same split.
        val_fraction: Approximate share of images for validation.
        test_fraction: Approximate share of images for test.

    Returns:
        ``{"train", "val", "test"}`` mapped to sorted int index arrays.
    """
    n_folds = SPLIT_FOLDS
    folds = np.empty(len(labels), dtype=np.int64)
    # deferred: the page imports this module but never splits
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held] = fold
    n_test = round(test_fraction * n_folds)
    n_val = round(val_fraction * n_folds)
    return {
        "test": np.flatnonzero(folds < n_test),
        "val": np.flatnonzero((folds >= n_test) & (folds < n_test + n_val)),
        "train": np.flatnonzero(folds >= n_test + n_val),
    }


def base_sides(names: tuple[str, ...], base_split: dict | None) -> np.ndarray:
    """Each film's side in an earlier split, or ``""`` for a film it did not hold.

    Args:
        names: Film names relative to the data root.
        base_split: A split record (``root`` and ``files`` per side) whose names are
            relative to its own root: the data root itself (the three-class
            models' ``split.json``), or one folder of it (the two-class model's).

    Returns:
        (N,) array of ``train``/``val``/``test``/``""``.
    """
    sides = np.full(len(names), "", dtype=object)
    if not base_split:
        return sides
    prefix = Path(base_split["root"]).name
    lookup = {}
    for side, files in base_split["files"].items():
        if side not in SIDES:  # an excluded film is new again: its group decides
            continue
        for f in files:
            lookup[f] = lookup[f"{prefix}/{f}"] = side
    for i, name in enumerate(names):
        sides[i] = lookup.get(name, "")
    return sides


def assign_sides(labels: np.ndarray, groups: np.ndarray, old: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """Sides for every film: old films keep theirs; new films follow their group.

    Args:
        labels: (N,) class indices.
        groups: (N,) near-duplicate group ids over all films.
        old: (N,) sides from :func:`base_sides` (``""`` for new films).
        seed: Seed of the stratified split of groups that hold new films only.

    Returns:
        (N,) sides; ``""`` for a new film whose group holds old films of two sides.
    """
    sides = old.copy()
    new = np.flatnonzero(old == "")
    fresh = []
    for i in new:
        taken = set(old[groups == groups[i]]) - {""}
        if len(taken) == 1:
            sides[i] = taken.pop()
        elif not taken:
            fresh.append(i)
    fresh = np.asarray(fresh, np.int64)
    counts = np.bincount(labels[fresh]) if len(fresh) else np.zeros(1, int)
    if len(fresh) and (counts[counts > 0] >= SPLIT_FOLDS).all():
        split = split_indices(labels[fresh], groups[fresh], seed=seed)
        for side, index in split.items():
            sides[fresh[index]] = side
    elif len(fresh):  # too few groups to stratify: each group draws its side
        rng = np.random.default_rng(seed)
        for group in np.unique(groups[fresh]):
            sides[fresh[groups[fresh] == group]] = rng.choice(SIDES, p=(0.7, 0.15, 0.15))
    return sides


def cached_hashes(catalogue: Catalogue, cache_dir: Path | None) -> np.ndarray:
    """(N, 4) uint64 perceptual hashes of the films, cached by name in ``cache_dir``."""
    cache = cache_dir / "phash3.json" if cache_dir else None
    known: dict[str, list[int]] = {}
    if cache is not None and cache.exists():
        known = json.loads(cache.read_text())
    missing = [n for n in catalogue.names if n not in known]
    if missing:
        fresh = perceptual_hashes(tuple(catalogue.root / n for n in missing))
        known.update({n: [int(v) for v in h] for n, h in zip(missing, fresh, strict=True)})
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known))
    return np.asarray([known[n] for n in catalogue.names], dtype=np.uint64)


def make_split(catalogue: Catalogue, base_split: dict | None, seed: int = 0,
               cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Hashes, groups and splits the catalogue, keeping the earlier split's sides.

    Args:
        catalogue: All films.
        base_split: The earlier split record, or None to split everything afresh.
        seed: Seed for groups of new films.
        cache_dir: Where the hashes are cached.

    Returns:
        ``{"train", "val", "test", "excluded"}`` sorted index arrays.
    """
    groups = group_near_duplicates(cached_hashes(catalogue, cache_dir))
    sides = assign_sides(catalogue.labels, groups, base_sides(catalogue.names, base_split), seed)
    out = {side: np.flatnonzero(sides == side) for side in SIDES}
    out["excluded"] = np.flatnonzero(sides == "")
    return out


def split_record(catalogue: Catalogue, split: dict[str, np.ndarray]) -> dict:
    """The split as names, labels, sources and ages per side, with counts per class."""
    record: dict = {"root": str(catalogue.root), "class_names": list(CLASS_NAMES),
                    "files": {}, "labels": {}, "sources": {}, "ages": {}, "counts": {}}
    for side, index in split.items():
        sub = catalogue.subset(index)
        record["files"][side] = list(sub.names)
        record["labels"][side] = [int(v) for v in sub.labels]
        record["sources"][side] = list(sub.sources)
        record["ages"][side] = list(sub.ages)
        record["counts"][side] = {n: int((sub.labels == c).sum())
                                  for c, n in enumerate(CLASS_NAMES)}
    return record


def catalogue_side(record: dict, side: str, root: Path | None = None) -> Catalogue:
    """One side of a stored split record as a catalogue (``root`` overrides the recorded one)."""
    return Catalogue(Path(root or record["root"]), tuple(record["files"][side]),
                     np.asarray(record["labels"][side], np.int64),
                     tuple(record["sources"][side]), tuple(record["ages"][side]))
