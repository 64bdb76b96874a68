"""Makes Triton's interpreter (``TRITON_INTERPRET=1``, how CI runs the Triton kernels) skip a
repeated patch of ``triton.language`` at every nested ``@triton.jit`` call.

Triton's interpreter swaps the language's builtins (``tl.where``, ``tl.load``, ...) for numpy
versions when a kernel launches, and restores them when the launch ends.  Triton 3.8 also does
the whole swap again at *every call of a jit helper* inside the kernel
(``InterpretedFunction.__call__`` -> ``interpreter._patch_lang``), walking the language modules
with ``inspect.getmembers`` each time, although the launch has already swapped them; that
nested swap is never restored (the launch's restore undoes everything).  fastloss's kernels
are built from small helpers (a box kernel makes ~90 helper calls per program), so that
repeated work was half of the interpreter's time in them (box_iou_loss CIoU, 2000 boxes,
forward + backward: 0.42 s -> 0.27 s).

:func:`install` wraps ``_patch_lang``: where every language module the function sees is
already swapped (its ``where`` is no longer the builtin), it returns an empty patch scope;
otherwise (a launch) Triton's own code runs, with its restore.  Nothing the kernels compute
changes: a helper sees the same swapped language either way, and an unswapped language would
fail loudly (a builtin called outside a compiler).  With another Triton whose interpreter lacks
these internals, :func:`install` leaves it as it is.
"""
import inspect


def install():
    """Wraps the interpreter's ``_patch_lang`` once; returns whether it did."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    if original is None or getattr(original, "_fastloss_wrapped", False) or not hasattr(interpreter, "_LangPatchScope"):
        return bool(original is not None and getattr(original, "_fastloss_wrapped", False))
    if not (hasattr(tl, "where") and hasattr(tl.core, "is_builtin") and tl.core.is_builtin(tl.where)):
        return False
    langs_of = {}  # jit function -> the language modules among its globals (Triton's own test)

    def swapped(lang):
        return not tl.core.is_builtin(lang.__dict__.get("where"))

    def patch_lang(fn):
        langs = langs_of.get(fn)
        if langs is None:
            langs = langs_of[fn] = [v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)]
        if langs and all(swapped(lang) for lang in langs):
            return interpreter._LangPatchScope()  # nothing swapped here, nothing to restore
        return original(fn)

    patch_lang._fastloss_wrapped = True
    interpreter._patch_lang = patch_lang
    return True
