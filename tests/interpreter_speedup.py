"""Makes Triton's interpreter (``TRITON_INTERPRET=1``, how CI runs the Triton kernels) skip a
repeated patch of ``triton.language`` at every nested ``@triton.jit`` call.

How Triton (3.6 to 3.8) interprets a kernel: the launch (``GridExecutor.__call__``) swaps the
builtins (``tl.where``, ``tl.load``, tensor methods, ``tl.reduce``, ...) of the language modules
among the kernel's globals for numpy versions, runs the programs, and restores them at the end
(also after an error).  Every call of a jit helper inside the kernel
(``InterpretedFunction.__call__``) runs the same swap again (``interpreter._patch_lang``), walking
the modules with ``inspect.getmembers``, and discards its record, so only the launch's restore
counts.  fastloss's kernels are built from small helpers (a box kernel makes ~90 helper calls per
program), and that repeated swap was half of the interpreter's time in them (box_iou_loss CIoU,
2000 boxes, forward + backward: 0.42 s -> 0.27 s).

:func:`install` wraps ``_patch_lang``: where every language module among the function's globals
already has its builtins swapped (its ``where`` is not the builtin any more), it returns an empty
record; otherwise Triton's own swap runs.  Why that is the same as Triton's behaviour here:

* every launched kernel has ``tl`` among its globals (the interpreter's rewriter puts it there),
  and the launch restores ``tl`` completely, so a launch always finds ``tl`` unswapped and does
  its full swap -- never skipped;
* inside the launch, a helper that sees ``tl`` finds it swapped by the launch itself, with every
  patch in place: skipping changes nothing;
* Triton's own jit helpers (``tl.sum``, ``tl.max``, ``tl.zeros``: triton/language/standard.py)
  see ``triton.language.core`` instead.  The first such call in a process swaps ``core`` (Triton
  never restores that: its launch records only ``tl``); later ones find ``core`` swapped and skip.
  They are only ever called inside a launch, which has swapped the tensor methods and
  ``reduce`` / ``associative_scan`` they use.

The module list is recomputed when a function's globals change (the rewriter adds ``tl`` to a
module on its first call).  Nothing the kernels compute changes (checked bit for bit: the box and
focal kernels with the wrapper on and off).  Another Triton version is left as it is.
"""
import inspect

VERIFIED = ((3, 6), (3, 8))  # the Triton versions whose interpreter this was checked against (inclusive)


def install():
    """Wraps the interpreter's ``_patch_lang`` once; returns whether it is wrapped."""
    try:
        import triton
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    if getattr(original, "_fastloss_wrapped", False):
        return True
    try:
        version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    if not (VERIFIED[0] <= version <= VERIFIED[1]) or original is None or not hasattr(interpreter, "_LangPatchScope"):
        return False
    langs_of = {}  # jit function -> (size of its globals, the language modules among them)

    def swapped(lang):
        return not tl.core.is_builtin(lang.__dict__.get("where"))

    def patch_lang(fn):
        size, langs = langs_of.get(fn, (-1, None))
        if size != len(fn.__globals__):
            langs = [v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)]
            langs_of[fn] = (len(fn.__globals__), langs)
        if langs and all(swapped(lang) for lang in langs):
            return interpreter._LangPatchScope()  # nothing swapped here, nothing to restore
        return original(fn)

    patch_lang._fastloss_wrapped = True
    interpreter._patch_lang = patch_lang
    return True
