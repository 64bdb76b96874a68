"""Hash of the C++/CUDA sources, baked into ``fastloss._C`` by setup.py.

In a source checkout, :mod:`fastloss._extension` recomputes it to notice a ``_C`` built
from older sources (a "stale" build) and refuses to use it.  This module must not import
anything from fastloss: setup.py loads it by path.
"""
import hashlib
import os


def source_hash(csrc_dir):
    h = hashlib.sha256()
    paths = []
    for root, _dirs, files in os.walk(csrc_dir):
        paths += [os.path.join(root, f) for f in files]
    for path in sorted(paths):
        h.update(os.path.relpath(path, csrc_dir).replace(os.sep, "/").encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]
