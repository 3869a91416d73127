"""The FIB-25 volume: a real 250^3 FIB-SEM cube of the Drosophila medulla with dense neuron labels.

The files are the originals of janelia-flyem/neuroproof_examples, folder ``training_sample2``
(CC BY, credit: Janelia FlyEM, HHMI Janelia Research Campus), at a pinned commit:

- ``grayscale_maps/iso.2600.png`` ... ``iso.2849.png``: one 8-bit 250 x 250 slice per z,
- ``groundtruth.h5.gz``: gzip of an HDF5 file with ``stack`` (250^3 int32 supervoxel ids, z y x)
  and ``transforms`` (rows ``[supervoxel, body]``); the body labels are ``mapping[stack]``.

The sha256 of every file is pinned in ``fib25.sha256`` beside this module (a copy of the
dataset's SHA256SUMS). :func:`load_fib25` reads a local copy in place and checks every file;
:func:`fetch_fib25` downloads the files into a cache folder with pooch, which writes each file
under a temporary name and moves it into place only once its hash matches, so a failed or
corrupt download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

BASE_URL = ("https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/"
            "ce839e17deaf4c01153827c6d028dfecfbb4b958/training_sample2/")
SHA256SUMS = Path(__file__).resolve().parent / "fib25.sha256"
GROUNDTRUTH = "groundtruth.h5.gz"
SHAPE = (250, 250, 250)
ENV_DATA_DIR = "SEGLOSSES_DATA_DIR"
# The default local copy: ../shared/data/fib25 beside the repository root.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "fib25"

PathLike = Union[str, os.PathLike]


class DataError(RuntimeError):
    """A FIB-25 file is missing, corrupt or not what the loader expects (the message names it)."""


def registry() -> Dict[str, str]:
    """``{relative path: sha256}`` of every file the loader reads, in z order for the slices."""
    files = {}
    for line in SHA256SUMS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            files[name.strip()] = digest
    return dict(sorted(files.items()))


def slice_names() -> list:
    """The PNG slices in z order (their names sort in z order: iso.2600.png, iso.2601.png, ...)."""
    return [name for name in registry() if name.startswith("grayscale_maps/")]


def sha256(path: PathLike) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def verify(folder: PathLike) -> None:
    """Check that ``folder`` holds every FIB-25 file with its pinned sha256.

    Raises:
        DataError: naming the first file that is missing or whose sha256 differs.
    """
    folder = Path(folder)
    for name, digest in registry().items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"FIB-25: missing file {path} (expected the dataset's {name}; "
                            f"see examples/affinity_demo/fib25.py for where it comes from)")
        actual = sha256(path)
        if actual != digest:
            raise DataError(f"FIB-25: corrupt file {path}: sha256 {actual}, expected {digest} "
                            f"(delete it and fetch it again)")


def is_complete(folder: PathLike) -> bool:
    """Whether ``folder`` holds every file (names only, no hashing: a cheap look before loading)."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in registry())


def default_cache_dir() -> Path:
    """Where downloads go: the user's cache folder (``~/.cache/seglosses/fib25`` on Linux)."""
    import pooch

    return Path(pooch.os_cache("seglosses")) / "fib25"


def fetch_fib25(cache_dir: Optional[PathLike] = None, base_url: str = BASE_URL) -> Path:
    """Download the files that ``cache_dir`` lacks (or holds with another sha256), checking every hash.

    Args:
        cache_dir: the cache folder (default :func:`default_cache_dir`); created if needed.
        base_url: where the files are; a file's URL is ``base_url + relative path``.

    Returns:
        The cache folder, complete and verified.

    Raises:
        DataError: a download failed or its sha256 differs (the message names the file); the
            file is then not in the cache.
    """
    import pooch
    import requests

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = registry()
    store = pooch.create(path=cache, base_url=base_url, registry={n: f"sha256:{d}" for n, d in files.items()})
    for name in files:
        try:
            store.fetch(name)
        except ValueError as e:  # pooch's hash mismatch (it has already deleted the download)
            raise DataError(f"FIB-25: the download of {name} from {base_url + name} is corrupt: {e}") from e
        except requests.exceptions.RequestException as e:
            raise DataError(f"FIB-25: could not download {name} from {base_url + name}: {e}") from e
    return cache


def can_download(base_url: str = BASE_URL, timeout: float = 5.0) -> Tuple[bool, str]:
    """Whether the ground-truth file answers at ``base_url`` (one HEAD request), and why not."""
    import requests

    try:
        r = requests.head(base_url + GROUNDTRUTH, timeout=timeout, allow_redirects=True)
    except requests.exceptions.RequestException as e:
        return False, f"{type(e).__name__}"
    return r.ok, f"HTTP {r.status_code}"


def read_raw(folder: PathLike) -> np.ndarray:
    """The EM volume, ``uint8 [250, 250, 250]`` (z, y, x), from the PNG slices (not verified)."""
    from PIL import Image

    folder = Path(folder)
    slices = []
    for name in slice_names():
        with Image.open(folder / name) as im:
            slices.append(np.asarray(im))
    raw = np.stack(slices)
    if raw.shape != SHAPE or raw.dtype != np.uint8:
        raise DataError(f"FIB-25: the slices in {folder / 'grayscale_maps'} form a {raw.dtype} volume of "
                        f"shape {raw.shape}, expected uint8 {SHAPE}")
    return raw


def read_bodies(folder: PathLike) -> np.ndarray:
    """The ground-truth body labels, ``int64 [250, 250, 250]``: ``mapping[stack]`` (not verified).

    Raises:
        DataError: the file does not have the two datasets, or a supervoxel has no body.
    """
    import h5py

    path = Path(folder) / GROUNDTRUTH
    with gzip.open(path, "rb") as f:
        content = f.read()
    with h5py.File(io.BytesIO(content), "r") as h5:
        if "stack" not in h5 or "transforms" not in h5:
            raise DataError(f"FIB-25: {path} must hold the datasets 'stack' and 'transforms', has {list(h5)}")
        stack = h5["stack"][()]
        transforms = h5["transforms"][()]
    if stack.shape != SHAPE or transforms.ndim != 2 or transforms.shape[1] != 2:
        raise DataError(f"FIB-25: {path}: 'stack' {stack.shape} and 'transforms' {transforms.shape}, "
                        f"expected {SHAPE} and (N, 2)")
    # transforms rows are [supervoxel, body]; a lookup table turns the supervoxels into bodies.
    mapping = np.full(int(stack.max()) + 1, -1, np.int64)
    mapping[transforms[:, 0]] = transforms[:, 1]
    bodies = mapping[stack]
    if (bodies < 0).any():
        missing = np.unique(stack[bodies < 0])
        raise DataError(f"FIB-25: {path}: supervoxels without a body in 'transforms': {missing[:10].tolist()}")
    return bodies


def load_fib25(folder: PathLike, check: bool = True) -> Dict[str, np.ndarray]:
    """Read the FIB-25 volume from a folder that holds the original files.

    Args:
        folder: a folder with ``grayscale_maps/iso.*.png`` and ``groundtruth.h5.gz`` (read in
            place; nothing is written there).
        check: verify the sha256 of every file first (~0.1 s).

    Returns:
        ``raw`` uint8 ``[250, 250, 250]`` (z, y, x) and ``bodies`` int64 ``[250, 250, 250]``
        (526 labels: 525 bodies and 0, which covers 250 voxels).

    Raises:
        DataError: a file is missing or corrupt (the message names it).

    Example:
        >>> vol = load_fib25("../shared/data/fib25")      # doctest: +SKIP
        >>> vol["raw"].shape, len(np.unique(vol["bodies"]))   # doctest: +SKIP
        ((250, 250, 250), 526)
    """
    if check:
        verify(folder)
    return {"raw": read_raw(folder), "bodies": read_bodies(folder)}


def locate(data_dir: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> Tuple[Optional[Path], str]:
    """Where the local copy of FIB-25 is; nothing is read or downloaded here.

    A folder given as ``data_dir`` or in ``$SEGLOSSES_DATA_DIR`` is returned as it is (loading it
    then fails with a clear error if a file is missing). Otherwise the first folder that holds
    every file: ``../shared/data/fib25`` beside the repository, then the cache folder.

    Returns:
        ``(folder, why)``: the folder (``None`` if there is no complete copy) and a few words
        saying where it was found or where it was looked for.
    """
    if data_dir is not None:
        return Path(data_dir), f"--data-dir {data_dir}"
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]), f"${ENV_DATA_DIR}={os.environ[ENV_DATA_DIR]}"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for folder, what in ((DEFAULT_DATA_DIR, "the default data folder"), (cache, "the download cache")):
        if is_complete(folder):
            return folder, f"{what} {folder}"
    return None, f"no copy in {DEFAULT_DATA_DIR} or in the download cache {cache}"
