"""Compile every Triton kernel of fastloss for a GPU target without a GPU (PTX + cubin via
Triton's bundled ptxas), over the constexpr variants the launchers use.

The Triton interpreter (what the tests run on CPU) accepts programs the GPU compiler
rejects (and the reverse); this is the CPU-side check of the compiled path.  Run:
    python tools/triton_compile_check.py [--arch 90] [--quick]
Must run without TRITON_INTERPRET=1 (tests/test_triton_compile.py runs it in a subprocess).
"""
import argparse
import itertools
import os
import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastloss.triton_kernels import box_iou, dice, match_cost, pointwise, rowwise  # noqa: E402

def grid(**axes):
    """Every combination of the given constexpr values."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


def variants(quick):
    kinds = range(11)
    metrics = range(5)
    fmts = (0, 2) if quick else (0, 1, 2)
    fastloss = dict(CONV=[0], UMODE=[0])  # convention "fastloss" (the variants below: the peers')
    box_common = dict(COMPUTE=[tl.float32], INT64=[False], BLOCK=[box_iou.BLOCK], NC=[4], NCP=[4], TERMS=[False])
    mat = dict(COMPUTE=[tl.float32], BLOCK=[box_iou.MATRIX_BLOCK])
    box64 = dict(COMPUTE=[tl.float64], INT64=[False], BLOCK=[box_iou.BLOCK], NC=[4], NCP=[4], TERMS=[False])
    box_common, mat, box64 = (dict(d, **fastloss) for d in (box_common, mat, box64))
    box3d = dict(box_common, KIND=[0, 2, 3], FMT=[0], NC=[6], NCP=[8], HAS_W=[True])  # 3-D boxes: iou, giou, diou
    terms = dict(box_common, KIND=[10], FMT=fmts, POWER_ONE=[True], HAS_W=[True], TERMS=[True])  # bounded_iou's (n, 4) terms
    return conventions() + [
        (box_iou._loss_forward_kernel, grid(KIND=kinds, FMT=fmts, POWER_ONE=[True, False], HAS_W=[True], REDUCE=[True], WITH_GRAD=[False],
                                            **box_common)),
        # fp64 (tests, and fp32 pred promoted by an fp64 target): the transcendental paths
        (box_iou._loss_forward_kernel, grid(KIND=[1, 4, 6, 7, 9, 10], FMT=[0], POWER_ONE=[False], HAS_W=[False], REDUCE=[False], WITH_GRAD=[True],
                                            **box64)),
        (box_iou._loss_backward_kernel, grid(KIND=kinds, FMT=fmts, POWER_ONE=[False], HAS_W=[False], PER_BOX_GRAD=[True], **box_common)),
        (box_iou._loss_forward_kernel, grid(POWER_ONE=[True, False], REDUCE=[True, False], WITH_GRAD=[True], **box3d)),
        (box_iou._loss_backward_kernel, grid(POWER_ONE=[False], PER_BOX_GRAD=[True, False], **box3d)),
        (box_iou._loss_forward_kernel, grid(REDUCE=[False], WITH_GRAD=[False], **terms)),
        (box_iou._loss_backward_kernel, grid(PER_BOX_GRAD=[False], **terms)),
        (box_iou._matrix_kernel, grid(KIND=metrics, FMT=[0], ALIGNED=[False, True], **mat)),
        (box_iou._aligned_backward_kernel, grid(KIND=metrics, FMT=[2], **mat)),
        (box_iou._rows_backward_kernel, grid(KIND=metrics, FMT=[0], **mat)),
        (box_iou._cols_backward_kernel, grid(KIND=metrics, FMT=[0], **mat)),
        (box_iou._max_kernel, grid(KIND=[0, 4], FMT=[0], OVER_M=[True, False], **mat)),
    ] + pointwise_variants(quick) + dice_variants() + rowwise_variants(quick) + match_cost_variants()


def conventions():
    """The peers' eps placements: each (convention, union mode) with the kinds it defines
    (fastloss/ops/box_iou.py, triton_kernels/box_iou.py _union_mode)."""
    loss = [(1, 0, [0, 2, 3, 4]), (2, 1, [0, 1, 2]), (2, 0, [3, 4, 7, 9, 10])]  # mmdet 7: its siou_loss, 9: extended_iou, 10: bounded_iou
    metric = [(1, 0, [0, 2, 3, 4]), (2, 1, [0, 1, 2]), (2, 0, [3, 4]), (3, 2, [0, 2, 3, 4])]
    common = dict(COMPUTE=[tl.float32], INT64=[False], BLOCK=[box_iou.BLOCK], NC=[4], NCP=[4], TERMS=[False])
    mat = dict(COMPUTE=[tl.float32], BLOCK=[box_iou.MATRIX_BLOCK], FMT=[0])
    out = []
    for conv, umode, kinds in loss:
        c = dict(CONV=[conv], UMODE=[umode], KIND=kinds, FMT=[0], POWER_ONE=[True], HAS_W=[False], **common)
        out += [(box_iou._loss_forward_kernel, grid(REDUCE=[True], WITH_GRAD=[False], **c)),
                (box_iou._loss_backward_kernel, grid(PER_BOX_GRAD=[True], **c))]
    for conv, umode, kinds in metric:
        c = dict(CONV=[conv], UMODE=[umode], KIND=kinds, **mat)
        out += [(box_iou._matrix_kernel, grid(ALIGNED=[False], **c)), (box_iou._aligned_backward_kernel, grid(**c)),
                (box_iou._rows_backward_kernel, grid(**c)), (box_iou._cols_backward_kernel, grid(**c)),
                (box_iou._max_kernel, grid(OVER_M=[True], **c))]
    return out


def pointwise_variants(quick):
    """Every loss of the pointwise engine with class labels or float targets; the weight and
    aux layouts and the fp64 transcendental paths on a few."""
    losses = range(pointwise.FOCAL_TERM + 1)  # every loss code
    common = dict(LABELS=[False], HAS_TV=[False], W_LAYOUT=[0], AUX_LAYOUT=[0], COMPUTE=[tl.float32], INT64=[False],
                  BLOCK=[pointwise.BLOCK])
    layouts = dict(common, LOSS=[0, 6, 10], LABELS=[True], HAS_TV=[True], W_LAYOUT=[1, 2, 3], AUX_LAYOUT=[3])
    fp64 = dict(common, LOSS=[0, 5, 10, 11, 12, 18, 19], COMPUTE=[tl.float64])
    return [
        (pointwise._forward_kernel, grid(LOSS=losses, REDUCE=[True], WITH_GRAD=[not quick], **common)),
        (pointwise._backward_kernel, grid(LOSS=losses, PER_ELEM_GRAD=[False], **common)),
        (pointwise._forward_kernel, grid(REDUCE=[False], WITH_GRAD=[True], **layouts)),
        (pointwise._forward_kernel, grid(REDUCE=[False], WITH_GRAD=[False], **fp64)),
    ]


def dice_variants():
    common = dict(ACT=[0, 1, 2], LABELS=[True], HAS_IGNORE=[True], SQUARED=[False], WITH_CE=[True], COMPUTE=[tl.float32], BLOCK_C=[32],
                  BLOCK_S=[64], SOFT=[False, True])
    fp64 = dict(common, ACT=[1, 2], COMPUTE=[tl.float64])
    chunked = dict(common, LABELS=[True, False], WITH_CE=[False, True], SOFT=[False], BLOCK_C=[dice.CHUNK[0]], BLOCK_S=[dice.CHUNK[1]])
    chunked_terms = dict(chunked, ACT=[2], LABELS=[True], WITH_CE=[True], SOFT=[True, False], SQUARED=[True])  # soft-label, squared
    chunked64 = dict(chunked, ACT=[1, 2], LABELS=[True], WITH_CE=[True], COMPUTE=[tl.float64])
    return [(dice._sums_kernel, grid(**common)), (dice._grad_kernel, grid(**common)), (dice._sums_kernel, grid(**fp64)),
            (dice._grad_kernel, grid(**fp64))] + [(kernel, grid(**axes)) for kernel in (dice._sums_chunked_kernel, dice._grad_chunked_kernel)
                                                  for axes in (chunked, chunked_terms, chunked64)]


def rowwise_variants(quick):
    """Every (loss, target) pair the row-wise ops launch, both tile shapes; the optional
    operands, smoothing and the fp64 path on cross entropy."""
    rw = rowwise
    pairs = [(rw.CROSS_ENTROPY, rw.LABELS), (rw.CROSS_ENTROPY, rw.PROBS), (rw.CROSS_ENTROPY, rw.BINS), (rw.NLL, rw.LABELS),
             (rw.NLL, rw.PROBS), (rw.SOFTMAX_FOCAL, rw.LABELS), (rw.POLY1_CROSS_ENTROPY, rw.LABELS), (rw.POLY1_CROSS_ENTROPY, rw.PROBS),
             (rw.KL_DIV, rw.PROBS), (rw.KL_DIV, rw.TEACHER)]
    shapes = [rw.TALL, (rw.WIDE[0], 64)] if quick else [rw.TALL, rw.WIDE, (rw.TILE // 64, 64)]
    plain = dict(HAS_W=[False], HAS_ALPHA=[False], HAS_SW=[False], SMOOTH=[False], COMPUTE=[tl.float32])
    out = []
    for (loss, kind), (bs, bc) in itertools.product(pairs, shapes):
        common = dict(plain, LOSS=[loss], TARGET=[kind], HAS_IGNORE=[kind == rw.LABELS], BLOCK_S=[bs], BLOCK_C=[bc])
        out += [(rw._forward_kernel, grid(REDUCE=[True, False], WITH_GRAD=[True], **common)),
                (rw._backward_kernel, grid(PER_ROW_UP=[False], **common))]
    every = dict(HAS_W=[True], HAS_ALPHA=[True], HAS_SW=[True], HAS_IGNORE=[True], SMOOTH=[True], LOSS=[rw.CROSS_ENTROPY, rw.SOFTMAX_FOCAL],
                 TARGET=[rw.LABELS], BLOCK_S=[rw.TALL[0]], BLOCK_C=[rw.TALL[1]])
    out += [(rw._forward_kernel, grid(REDUCE=[False], WITH_GRAD=[False], COMPUTE=[tl.float32, tl.float64], **every)),
            (rw._backward_kernel, grid(PER_ROW_UP=[True], COMPUTE=[tl.float32], **every))]
    return out


def match_cost_variants():
    """Both GIoU conventions, DETR's and mmdet's term orders, fp32 and fp64, both L1 summation orders."""
    k, block = match_cost._blocks_kernel, [match_cost.BLOCK]
    return [(k, grid(MODE=[0, 1], O0=[1], O1=[0], O2=[2], F64=[False, True], CUDA_ORDER=[True, False], BLOCK=block)),  # DETR's: bbox, class, giou
            (k, grid(MODE=[1], O0=[0], O1=[1], O2=[2], F64=[False], CUDA_ORDER=[True], BLOCK=block)),  # mmdet's default order
            (k, grid(MODE=[1], O0=[2], O1=[0], O2=[1], F64=[False], CUDA_ORDER=[True], BLOCK=block))]


def match_cost_signature(fn, consts):
    """triton_kernels/match_cost.py _blocks_kernel: float buffers of the costs' dtype, int64 index buffers."""
    fp = "*fp64" if consts["F64"] else "*fp32"
    ints = {"LAB": "*i64", "IMG": "*i64", "OFF": "*i64", "TOTAL": "i64", "Q": "i32", "N": "i32", "C": "i32"}
    return {name: "constexpr" if name in consts else ints.get(name, fp) for name in fn.arg_names}


def scalar_type(name, annotation):
    if annotation:  # an annotated argument (the float parameters: fp64, as Python floats arrive)
        return annotation
    if name.endswith("_ptr"):
        if name == "i_ptr":
            return "*i64"
        return "*fp32"
    return "i64" if name == "ignore_index" else "i32"


def signature(fn, consts):
    if fn is match_cost._blocks_kernel:
        return match_cost_signature(fn, consts)
    sig = {p.name: ("constexpr" if p.name in consts else scalar_type(p.name, p.annotation_type)) for p in fn.params}
    if consts.get("COMPUTE") == tl.float64:  # fp64 kernels read and write fp64 buffers
        sig = {name: ("*fp64" if t == "*fp32" else t) for name, t in sig.items()}
    if (consts.get("LABELS") or consts.get("TARGET") == 0) and "t_ptr" in sig:  # integer class labels
        sig["t_ptr"] = "*i64"
    return sig


def compile_all(arch, quick):
    target = GPUTarget("cuda", arch, 32)
    count = 0
    for fn, combos in variants(quick):
        for consts in combos:
            src = ASTSource(fn=fn, signature=signature(fn, consts), constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            try:
                triton.compile(src, target=target)
            except Exception as exc:  # report which variant failed, then fail
                raise SystemExit(f"FAILED {fn.__name__} {consts}: {type(exc).__name__}: {exc}")
            count += 1
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    ap.add_argument("--quick", action="store_true", help="fewer box formats")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")
    t0 = time.perf_counter()
    n = compile_all(args.arch, args.quick)
    print(f"compiled {n} Triton kernel variants for sm_{args.arch} (triton {triton.__version__}) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
