"""Hungarian matching cost blocks in Triton (family ``match_cost``).

The math is fastloss/reference/match_cost.py and mirrors csrc/kernels/match_cost.h term for
term: one lane per (query q, target j) pair over the flat Q x N grid (j fastest: the targets of
one image are contiguous, so are their outputs); lane (q, j) of image b = image[j] writes
element Q o_b + q T_b + (j - o_b) of the flat result.  No reduction across lanes: deterministic.

Bit-equality with the peers needs every product and sum rounded on its own: the kernel is
launched with ``enable_fp_fusion=False`` (no FMA contraction) and divides with ``tl.div_rn``
(fp32; fp64 ``/`` is correctly rounded).  The weights and mmdet's eps come in a small tensor of
the costs' dtype, so they are rounded to it as torch rounds a Python scalar operand.
"""
import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _min(a, b):
    return tl.where((b < a) | (b != b), b, a)  # NaN in either argument propagates (torch.minimum)


@triton.jit
def _max(a, b):
    return tl.where((b > a) | (b != b), b, a)


@triton.jit
def _clamp0(x):
    return tl.where(x < 0, 0.0, x).to(x.dtype)  # clamp(min=0); NaN stays


@triton.jit
def _div(a, b, F64: tl.constexpr):
    if F64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _giou(p0, p1, p2, p3, t0, t1, t2, t3, eps, MODE: tl.constexpr, F64: tl.constexpr):
    # csrc/kernels/match_cost.h giou: MODE 0 DETR (clamped areas, 0 / 0 -> 0), 1 mmdet (signed areas, eps floors)
    pw = p2 - p0
    ph = p3 - p1
    tw = t2 - t0
    th = t3 - t1
    if MODE == 0:
        pw = _clamp0(pw)
        ph = _clamp0(ph)
        tw = _clamp0(tw)
        th = _clamp0(th)
    inter = _clamp0(_min(p2, t2) - _max(p0, t0)) * _clamp0(_min(p3, t3) - _max(p1, t1))
    uni = (pw * ph + tw * th) - inter
    enclose = _clamp0(_max(p2, t2) - _min(p0, t0)) * _clamp0(_max(p3, t3) - _min(p1, t1))
    if MODE == 0:
        iou = tl.where(uni == 0, 0.0, _div(inter, tl.where(uni == 0, 1.0, uni).to(uni.dtype), F64)).to(uni.dtype)
        safe = tl.where(enclose == 0, 1.0, enclose).to(enclose.dtype)
        return iou - tl.where(enclose == 0, 0.0, _div(enclose - uni, safe, F64)).to(enclose.dtype)
    else:
        floor = tl.zeros_like(uni) + eps  # the scalar as a block (0 + eps is exact)
        uni = _max(uni, floor)
        enclose = _max(enclose, floor)
        return _div(inter, uni, F64) - _div(enclose - uni, enclose, F64)


@triton.jit
def _term(K: tl.constexpr, cls, l1, g):
    # term K of (class, bbox, giou)
    if K == 0:
        return cls
    elif K == 1:
        return l1
    else:
        return g


@triton.jit
def _blocks_kernel(TAB, PL1, PXY, TL1, TXY, LAB, IMG, OFF, W, OUT, TOTAL, Q, N, C, MODE: tl.constexpr, O0: tl.constexpr, O1: tl.constexpr,
                   O2: tl.constexpr, F64: tl.constexpr, CUDA_ORDER: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < TOTAL  # Q * N, an int64 argument past 2^31
    q = idx // N
    j = idx % N
    b = tl.load(IMG + j, mask=mask, other=0)
    first = tl.load(OFF + b, mask=mask, other=0)
    count = tl.load(OFF + b + 1, mask=mask, other=0) - first
    label = tl.load(LAB + j, mask=mask, other=0)
    ok = (label >= 0) & (label < C)  # out-of-range label: NaN costs, never a stray read
    row = b * Q + q
    cls = tl.load(TAB + row * C + label, mask=mask & ok, other=float("nan"))
    w_class = tl.load(W)
    w_bbox = tl.load(W + 1)
    w_giou = tl.load(W + 2)
    eps = tl.load(W + 3)
    # L1 in torch.cdist(p=1)'s order on the device: CUDA's shuffle-down tree (|d0| + |d2|) + (|d1| + |d3|)
    # (CUDA_ORDER), the CPU's ((|d0| + |d1|) + |d2|) + |d3| (the interpreter)
    d0 = tl.abs(tl.load(PL1 + row * 4, mask=mask, other=0) - tl.load(TL1 + j * 4, mask=mask, other=0))
    d1 = tl.abs(tl.load(PL1 + row * 4 + 1, mask=mask, other=0) - tl.load(TL1 + j * 4 + 1, mask=mask, other=0))
    d2 = tl.abs(tl.load(PL1 + row * 4 + 2, mask=mask, other=0) - tl.load(TL1 + j * 4 + 2, mask=mask, other=0))
    d3 = tl.abs(tl.load(PL1 + row * 4 + 3, mask=mask, other=0) - tl.load(TL1 + j * 4 + 3, mask=mask, other=0))
    if CUDA_ORDER:
        l1 = (d0 + d2) + (d1 + d3)
    else:
        l1 = ((d0 + d1) + d2) + d3
    g = _giou(tl.load(PXY + row * 4, mask=mask, other=0), tl.load(PXY + row * 4 + 1, mask=mask, other=0),
              tl.load(PXY + row * 4 + 2, mask=mask, other=0), tl.load(PXY + row * 4 + 3, mask=mask, other=0),
              tl.load(TXY + j * 4, mask=mask, other=0), tl.load(TXY + j * 4 + 1, mask=mask, other=0),
              tl.load(TXY + j * 4 + 2, mask=mask, other=0), tl.load(TXY + j * 4 + 3, mask=mask, other=0), eps, MODE, F64)
    t_cls = w_class * cls
    t_l1 = w_bbox * l1
    t_giou = w_giou * (-g)
    cost = (_term(O0, t_cls, t_l1, t_giou) + _term(O1, t_cls, t_l1, t_giou)) + _term(O2, t_cls, t_l1, t_giou)
    tl.store(OUT + Q * first + q * count + (j - first), cost, mask=mask)


def match_cost(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, tgt_labels, tgt_image, offsets, w_class, w_bbox, w_giou, giou_mode, order):
    """The flat (Q * N,) cost blocks (fastloss/ops/match_cost.py has the calling convention)."""
    if table.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fastloss match_cost (triton): costs are computed in fp32 or fp64, got {table.dtype}")
    B, Q, C = table.shape
    N = tgt_labels.shape[0]
    out = torch.empty(Q * N, dtype=table.dtype, device=table.device)
    if Q * N == 0:
        return out
    w = torch.tensor([w_class, w_bbox, w_giou, 1e-6], dtype=table.dtype, device=table.device)
    _blocks_kernel[(triton.cdiv(Q * N, BLOCK),)](table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, tgt_labels, tgt_image, offsets, w, out, Q * N, Q, N, C,
                                                 MODE=giou_mode, O0=order[0], O1=order[1], O2=order[2], F64=table.dtype == torch.float64,
                                                 CUDA_ORDER=table.device.type == "cuda", BLOCK=BLOCK, enable_fp_fusion=False)
    return out
