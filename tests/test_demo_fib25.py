"""The FIB-25 loader of the demo (examples/affinity_demo/fib25.py) against the shared copy, and its split.

The corruption and download tests work on copies in tmp_path: the shared folder is never written.
"""

import functools
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest

from demo_helpers import fib25_dir

pytest.importorskip("h5py")
pytest.importorskip("pooch")

from affinity_demo import datasets, fib25  # noqa: E402


@functools.lru_cache(maxsize=1)
def _volume():
    return fib25.load_fib25(fib25_dir())


@pytest.fixture
def volume():
    return _volume()


def _copy(tmp_path):
    dst = tmp_path / "fib25"
    shutil.copytree(fib25_dir(), dst)
    for path in dst.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)  # the shared copy is read-only
    dst.chmod(0o755)
    return dst


def test_registry_is_the_datasets_sha256sums():
    files = fib25.registry()
    assert len(files) == 251 and fib25.GROUNDTRUTH in files
    names = fib25.slice_names()
    assert names[0] == "grayscale_maps/iso.2600.png" and names[-1] == "grayscale_maps/iso.2849.png"
    assert len(names) == 250 and names == sorted(names)
    shared = fib25_dir() / "SHA256SUMS"
    if shared.is_file():
        listed = dict(reversed(line.split()) for line in shared.read_text().splitlines() if line.strip())
        assert listed == files


def test_load_shapes_dtypes_bodies(volume):
    raw, bodies = volume["raw"], volume["bodies"]
    assert raw.shape == (250, 250, 250) and raw.dtype == np.uint8
    assert bodies.shape == (250, 250, 250) and bodies.dtype == np.int64
    labels, counts = np.unique(bodies, return_counts=True)
    assert len(labels) == 526  # the dataset README's 526 bodies, counting 0
    assert labels[0] == 0 and counts[0] == 250  # label 0: 1.6e-5 of the voxels
    # z order = file order: slice 0 is iso.2600.png as stored
    from PIL import Image

    first = np.asarray(Image.open(fib25_dir() / "grayscale_maps" / "iso.2600.png"))
    assert np.array_equal(raw[0], first)
    assert 40 < raw.mean() < 220 and raw.std() > 10  # a real image, not a blank


def test_sha256_mismatch_names_the_file(tmp_path):
    copy = _copy(tmp_path)
    victim = copy / "grayscale_maps" / "iso.2700.png"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(fib25.DataError, match=r"corrupt file .*iso\.2700\.png: sha256"):
        fib25.load_fib25(copy)


def test_missing_file_names_the_file(tmp_path):
    copy = _copy(tmp_path)
    (copy / fib25.GROUNDTRUTH).unlink()
    with pytest.raises(fib25.DataError, match=r"missing file .*groundtruth\.h5\.gz"):
        fib25.load_fib25(copy)
    assert not fib25.is_complete(copy)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a copy of the files (the download path, without the internet)."""
    root = _copy(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_leaves_nothing_half_written(server, tmp_path):
    root, url = server
    cache = tmp_path / "cache"
    victim = root / "grayscale_maps" / "iso.2601.png"
    good = victim.read_bytes()
    victim.write_bytes(good[:-10])  # a truncated file on the server
    with pytest.raises(fib25.DataError, match=r"download of grayscale_maps/iso\.2601\.png .* corrupt"):
        fib25.fetch_fib25(cache, base_url=url)
    cached = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    # the file before it is there and verified, the corrupt one and any temporary file are not
    assert cached == ["grayscale_maps/iso.2600.png"]
    assert hashlib.sha256((cache / cached[0]).read_bytes()).hexdigest() == fib25.registry()[cached[0]]
    # a corrupt file already in the cache is fetched again
    (cache / cached[0]).write_bytes(b"not a png")
    victim.write_bytes(good)
    assert fib25.fetch_fib25(cache, base_url=url) == cache
    fib25.verify(cache)  # complete and every sha256 right
    assert fib25.locate(cache_dir=cache)[0] in (cache, fib25.DEFAULT_DATA_DIR)


def test_locate_prefers_the_given_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(fib25.ENV_DATA_DIR, str(tmp_path / "from-env"))
    assert fib25.locate(tmp_path / "given")[0] == tmp_path / "given"
    assert fib25.locate()[0] == tmp_path / "from-env"
    monkeypatch.delenv(fib25.ENV_DATA_DIR)
    folder, why = fib25.locate(cache_dir=tmp_path / "empty-cache")
    if not fib25.is_complete(fib25.DEFAULT_DATA_DIR):
        assert folder is None and "empty-cache" in why


def test_split_never_overlaps(volume):
    data = datasets.fib25_dataset(volume)
    (t0, t1), (h0, h1), (u0, u1) = datasets.FIB25_TRAIN, datasets.FIB25_HELDOUT, datasets.FIB25_TUNE
    train = set(range(t0, t1))
    heldout = set(range(h0, h1))
    assert not train & heldout and min(heldout) - max(train) > 1  # a gap of at least one slice
    assert set(range(u0, u1)) <= train
    # the training arrays are copies of their slab alone: training cannot read a held-out voxel
    assert data.train["raw"].shape == (t1 - t0, 250, 250) and data.train["seg"].shape == (t1 - t0, 250, 250)
    assert data.heldout["gt"].shape == (h1 - h0, 250, 250)
    assert not np.shares_memory(data.train["seg"], volume["bodies"])
    # each region's ground truth is its own slab of bodies, eroded (compared on a corner block,
    # one voxel inside the block's cut faces, where the block's erosion sees the same windows)
    bodies = volume["bodies"]
    for got, z0 in ((data.train["seg"], t0), (data.heldout["gt"], h0)):
        block = datasets.erode_instance_boundaries(bodies[z0:z0 + 21, :41, :41], 1)
        assert np.array_equal(got[:20, :40, :40], block[:20, :40, :40])
    assert not np.array_equal(data.heldout["gt"], bodies[h0:h1])
    # patches (with their one-voxel margin) stay in the training region and carry its labels
    rng = np.random.default_rng(0)
    raw, aff, lab, seg = datasets.sample_batch(data.train, 48, 2, rng)
    assert raw.shape == (2, 1, 48, 48, 48) and aff.shape == (2, 3, 48, 48, 48) and seg.shape == (2, 48, 48, 48)
    assert set(np.unique(seg.numpy())) <= set(np.unique(data.train["seg"]))
    assert np.array_equal(lab.numpy(), (seg.numpy() > 0).astype(np.int64))
    # normalised with the training region's statistics
    assert abs(float(data.train["raw"].mean())) < 1e-3 and abs(float(data.train["raw"].std()) - 1) < 1e-3
