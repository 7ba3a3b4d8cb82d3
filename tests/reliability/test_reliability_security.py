"""Security of the package against hostile inputs.

* A static check of the package source (AST, so multi-line calls count): no unpickling (``pickle``/``dill``/
  ``joblib``/``pandas.read_pickle``), ``torch.load`` only with ``weights_only=True``, ``np.load`` only with
  ``allow_pickle=False``, ``yaml.load`` only with a safe loader, no ``eval``/``exec``, no ``shell=True``, no
  ``trust_remote_code=True``, no global Pillow switches that disable the decompression-bomb or truncation
  checks, no ``tarfile.extractall``. The checker is itself tested on planted violations.
* Property-based: the folder and parquet readers, through the whole index, on random bytes and on randomly
  mutated real photos as image data: never a crash; every sample is either indexed or recorded as an error.

The guard service binding 127.0.0.1 by default and refusing oversized requests (413) is tested in
tests/test_guard.py (test_service); readers and hashes have their own properties in tests/test_readers.py and
tests/test_hashing.py.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PACKAGE = Path(__file__).resolve().parents[2] / "auditor"

# (file relative to the package, call) -> why it is allowed. Anything else found fails the test.
ALLOWED = {
    ("index/engines/ray_engine.py", "pickle.loads"): "payloads the same run's Ray tasks pickled in memory and pass "
                                                "through the Ray object store (never read from a file or a "
                                                "user); Ray itself pickles every task argument the same way",
}

_UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"  # ".eval" for a method of an expression: model(...).eval()
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_violations(source: str, filename: str = "<src>") -> list[tuple[int, str, str]]:
    """(line, call, why) for every unsafe construct in ``source``."""
    out = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UNPICKLERS:
            for a in node.names:
                if a.name in ("load", "loads", "Unpickler", "open"):
                    out.append((node.lineno, f"{node.module}.{a.name}", "imports an unpickler"))
        if isinstance(node, ast.Assign):
            for t in node.targets:
                n = _name(t)
                if n.endswith("MAX_IMAGE_PIXELS"):
                    out.append((node.lineno, n, "changes Pillow's global decompression-bomb limit"))
                if n.endswith("LOAD_TRUNCATED_IMAGES") and not _is_const(node.value, False):
                    out.append((node.lineno, n, "makes Pillow decode truncated files as grey padding"))
        if not isinstance(node, ast.Call):
            continue
        fn = _name(node.func)
        parts = fn.split(".")
        base, attr = (parts[-2] if len(parts) > 1 else ""), parts[-1]
        if fn in ("eval", "exec"):
            out.append((node.lineno, fn, "evaluates code"))
        elif base in _UNPICKLERS and attr in ("load", "loads", "Unpickler", "open"):
            out.append((node.lineno, fn, "unpickles"))
        elif attr == "read_pickle":
            out.append((node.lineno, fn, "unpickles"))
        elif base == "torch" and attr == "load" and not _is_const(_kw(node, "weights_only"), True):
            out.append((node.lineno, fn, "torch.load without weights_only=True"))
        elif base in ("np", "numpy") and attr == "load" and not _is_const(_kw(node, "allow_pickle"), False):
            out.append((node.lineno, fn, "np.load without allow_pickle=False"))
        elif base == "yaml" and attr in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
            out.append((node.lineno, fn, "unsafe YAML loader"))
        elif base == "yaml" and attr in ("load", "load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _name(loader).split(".")[-1] not in ("SafeLoader", "CSafeLoader"):
                out.append((node.lineno, fn, "yaml.load without SafeLoader"))
        elif attr in ("extractall",):
            out.append((node.lineno, fn, "archive extraction (path traversal)"))
        elif _is_const(_kw(node, "shell"), True):
            out.append((node.lineno, fn, "shell=True"))
        elif fn in ("os.system", "os.popen"):
            out.append((node.lineno, fn, "runs a shell"))
        elif _is_const(_kw(node, "trust_remote_code"), True):
            out.append((node.lineno, fn, "runs code downloaded with a model"))
    return out


def test_checker_finds_planted_violations():
    planted = """
import pickle, yaml, torch, numpy as np, subprocess
from pickle import loads
from PIL import Image, ImageFile
pickle.load(open("x", "rb"))
obj = pickle.loads(b"")
torch.load("w.pt")
torch.load("w.pt",
           map_location="cpu")
torch.load("w.pt", weights_only=False)
np.load("a.npy")
np.load("a.npy", allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
eval("1+1")
exec("x=1")
subprocess.run("ls", shell=True)
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = True
AutoModel.from_pretrained("m", trust_remote_code=True)
tf.extractall("/tmp")
"""
    found = find_violations(planted)
    assert len(found) == 18, found
    safe = """
import torch, numpy as np, yaml
torch.load("w.pt", map_location="cpu",
           weights_only=True)
np.load("a.npy", mmap_mode="r", allow_pickle=False)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
model.eval()
ImageFile.LOAD_TRUNCATED_IMAGES = False
"""
    assert find_violations(safe) == []


def test_package_source_has_no_unsafe_loading_or_code_execution():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    bad, allowed_seen = [], set()
    for f in files:
        rel = f.relative_to(PACKAGE).as_posix()
        for line, call, why in find_violations(f.read_text(encoding="utf-8"), str(f)):
            if (rel, call) in ALLOWED:
                allowed_seen.add((rel, call))
                continue
            bad.append(f"auditor/{rel}:{line}: {call} ({why})")
    assert bad == [], "unsafe constructs in the package:\n" + "\n".join(bad)
    assert allowed_seen <= set(ALLOWED)


# ------------------------------------------------------------------------------------------------------------
# property: random bytes as image data through the folder / parquet readers and the whole index
# ------------------------------------------------------------------------------------------------------------
_MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM",
          b"II*\x00", b"\x00\x00\x00\x1cftypavif", b"qoif", b"P6\n"]


@pytest.fixture(scope="module")
def seed_photos(imagenet, kodak) -> list[bytes]:
    from PIL import Image

    out = [imagenet[0].read_bytes()]
    buf = io.BytesIO()
    Image.open(kodak[0]).convert("RGB").resize((96, 64)).save(buf, "PNG")
    out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.open(imagenet[1]).resize((64, 64)).save(buf, "WEBP", quality=70)
    out.append(buf.getvalue())
    return out


def _mutations(seed_photos):
    """Random bytes, random bytes behind an image signature, and real photos with bytes flipped or cut."""
    flips = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)

    def mutate(args):
        i, fl, cut = args
        b = bytearray(seed_photos[i % len(seed_photos)])
        for pos, val in fl:
            b[pos % len(b)] = val
        return bytes(b[: max(1, int(len(b) * cut))])

    return st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(_MAGIC), st.binary(max_size=300)).map(lambda t: t[0] + t[1]),
        st.tuples(st.integers(0, 2), flips, st.floats(0.05, 1.0)).map(mutate),
    )


def _check_index(store, n_samples: int) -> None:
    t, e = store.table(), store.errors()
    keys = set(zip(t["shard"], t["key"])) | set(zip(e["shard"], e["key"]))
    assert len(t) + len(e) == n_samples == len(keys), (len(t), len(e), n_samples)
    assert (e["error"].str.len() > 0).all()
    assert store.info["complete"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_folder_reader_random_image_bytes(tmp_path_factory, seed_photos, data):
    from auditor.index.runner import run_index
    from support.reliability import corpus_config

    blobs = data.draw(st.lists(_mutations(seed_photos), min_size=1, max_size=6))
    exts = data.draw(st.lists(st.sampled_from(["jpg", "png", "webp", "gif", "JPEG", "tiff", "bmp"]),
                              min_size=len(blobs), max_size=len(blobs)))
    d = tmp_path_factory.mktemp("prop_folder")
    root = d / "data"
    root.mkdir()
    for i, (b, ext) in enumerate(zip(blobs, exts)):
        (root / f"img{i}.{ext}").write_bytes(b)
    store = run_index(root, d / "run", corpus_config(workers=0, reader={"folder_shard_size": 4}))
    _check_index(store, len(blobs))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_parquet_reader_random_image_bytes(tmp_path_factory, seed_photos, data):
    from auditor.index.runner import run_index
    from support.reliability import corpus_config

    blobs = data.draw(st.lists(st.one_of(st.none(), _mutations(seed_photos)), min_size=1, max_size=8))
    captions = data.draw(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=len(blobs),
                                  max_size=len(blobs)))
    d = tmp_path_factory.mktemp("prop_parquet")
    root = d / "data"
    root.mkdir()
    table = pa.table({"key": [f"k{i:03d}" for i in range(len(blobs))], "jpg": pa.array(blobs, pa.binary()),
                      "txt": pa.array(captions, pa.binary())})
    pq.write_table(table, root / "00000.parquet", row_group_size=3)
    store = run_index(root, d / "run", corpus_config(workers=0))
    _check_index(store, len(blobs))
