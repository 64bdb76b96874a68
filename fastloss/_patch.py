"""``fastloss.patch``: swap a peer library's losses for fastloss's compat ones, in place.

Each compat submodule (:mod:`fastloss.compat`) that supports patching defines
``_patch(handle)``, which imports its peer and replaces attributes through
:meth:`PatchHandle.setattr` (or registry entries through :meth:`PatchHandle.on_undo`).  The
handle records every change so :meth:`PatchHandle.undo` (or leaving the ``with`` block) puts
the peer back exactly as it was.  Patching twice is harmless: an attribute that already holds
the replacement is left alone and recorded by nobody, so the first handle's undo restores the
original.
"""
import importlib
import importlib.util

# library name (and alias) -> (compat submodule, the peer's top-level package)
LIBRARIES = {
    "torchvision": ("torchvision", "torchvision"),
    "mmdet": ("mmdet", "mmdet"),
    "mmdetection": ("mmdet", "mmdet"),
    "ultralytics": ("ultralytics", "ultralytics"),
    "smp": ("smp", "segmentation_models_pytorch"),
    "segmentation_models_pytorch": ("smp", "segmentation_models_pytorch"),
    "monai": ("monai", "monai"),
}


class PatchHandle:
    """The changes one :func:`fastloss.patch` call made; ``undo()`` reverts them (newest first).
    Also a context manager: ``with fastloss.patch("torchvision"): ...`` undoes on exit."""

    def __init__(self, libraries=()):
        self.libraries = tuple(libraries)
        self._undo = []

    def setattr(self, obj, name, value):
        """``obj.name = value``, remembering the old value (or its absence) for undo."""
        missing = object()
        old = obj.__dict__.get(name, missing) if hasattr(obj, "__dict__") else getattr(obj, name, missing)
        if old is value:
            return
        setattr(obj, name, value)
        if old is missing:
            self._undo.append(lambda: delattr(obj, name))
        else:
            self._undo.append(lambda: setattr(obj, name, old))

    def on_undo(self, fn):
        """Run ``fn()`` on undo (for changes that are not attribute assignments)."""
        self._undo.append(fn)

    def undo(self):
        while self._undo:
            self._undo.pop()()

    @property
    def active(self):
        return bool(self._undo)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False

    def __repr__(self):
        return f"PatchHandle(libraries={self.libraries}, changes={len(self._undo)})"


def patch(*libraries):
    """Replace the losses of each named library with fastloss's compat ones, in place.

    Args:
        libraries: any of "torchvision", "mmdet" (or "mmdetection"), "ultralytics", "smp"
            (or "segmentation_models_pytorch"), "monai".  What each replaces is listed in
            its compat module's ``_patch`` docstring (:mod:`fastloss.compat`).

    Returns a :class:`PatchHandle`; ``handle.undo()`` (or a ``with`` block) restores the peers.
    Raises ValueError for an unknown name (nothing is patched) and ImportError when a named
    library is not installed (nothing is patched).  Patching a library twice is harmless.
    """
    if not libraries:
        raise ValueError(f"fastloss.patch needs at least one library name, one of {sorted(LIBRARIES)}")
    for name in libraries:
        if name not in LIBRARIES:
            raise ValueError(f"fastloss.patch: unknown library {name!r}; known: {sorted(LIBRARIES)}")
        package = LIBRARIES[name][1]
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"fastloss.patch({name!r}): the library {package!r} is not installed")
    handle = PatchHandle(libraries)
    try:
        for name in libraries:
            compat = importlib.import_module(f"fastloss.compat.{LIBRARIES[name][0]}")
            compat._patch(handle)
    except BaseException:
        handle.undo()
        raise
    return handle
