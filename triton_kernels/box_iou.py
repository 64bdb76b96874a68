"""IoU family in Triton: the paired losses (forward with per-program partial sums or
per-box losses, optionally the stored gradient; backward recomputing from the inputs), the
pairwise / aligned matrices with their two-pass backward, and the fused max.

The math is fastloss/reference/box_iou.py, and this module mirrors csrc/kernels/box_iou.h
term for term, gradients included: hand-written reverse mode (each term's value, then the
adjoints it adds, then one pullback through the geometry to the corners of both boxes and
the box format), one lane per box pair.  Same kink conventions as the C++ kernels (widths,
heights and enclosing extents clamp'(0) = 1, intersection extents relu'(0) = 0, min/max ties
split in halves, |x|'(0) = sqrt'(0) = (x^p)'(0) = atan2'(0, 0) = 0; a NaN value reaches every
gradient component), checked against autograd through the float64 reference.  atan2 of non-negative
widths/heights is computed here (no portable libdevice atan2 under the interpreter) by two
argument reductions and an odd series accurate to fp64 rounding.  The matrix and max kernels
are launched with ``enable_fp_fusion=False``: the compiler hoists the own box's area out of the
max kernel's loop, and FMA contraction then rounds the union differently from the matrix's --
the max must equal the matrix's row maximum bit for bit.  Deterministic: each
program writes one partial sum and the launcher adds them with one torch.sum; no atomics.

The peers' eps placements (``convention``, fastloss/reference/box_iou.py "Conventions") are the
constexprs CONV (0 fastloss, 1 ultralytics, 2 mmdet, 3 torchvision_matrix) and UMODE, the
union mode the launcher derives from the convention and the kind (csrc/kernels/box_iou.h
union_of_loss / union_of_metric: 0 U + eps, 1 max(U, eps), 2 U with 0 / 0 = 0).
"""
import torch
import triton
import triton.language as tl

from fastloss.ops._common import reduced_dtype
from fastloss.triton_kernels import _math

BLOCK = 256

_MMDET, _TORCHVISION = 2, 3  # convention codes (fastloss/ops/box_iou.py CONVENTIONS)


def _union_mode(conv, kind, metric):
    """csrc/kernels/box_iou.h union_of_loss / union_of_metric."""
    if metric and conv == _TORCHVISION:
        return 2
    return 1 if conv == _MMDET and kind in (0, 1, 2) else 0  # iou, log_iou / iof, giou

# ----------------------------------------------------------------------------- lane math
# Values are [BLOCK] tensors, one box pair per lane.


@triton.jit
def _relu(x):
    return tl.where(x < 0, 0.0, x)  # NaN propagates (tl.maximum may drop it)


@triton.jit
def _min(a, b):
    return tl.where((b < a) | (b != b), b, a)  # NaN in either argument propagates


@triton.jit
def _max(a, b):
    return tl.where((b > a) | (b != b), b, a)


@triton.jit
def _share_min(a, b):
    # a's share of the gradient of min(a, b): 1 / 0, 1/2 at a tie (torch.minimum's rule)
    return tl.where(a < b, 1.0, tl.where(b < a, 0.0, 0.5))


@triton.jit
def _share_max(a, b):
    return tl.where(a > b, 1.0, tl.where(b > a, 0.0, 0.5))


@triton.jit
def _step_pos(x):
    # relu'(x), 0 at 0 (the intersection's extents)
    return tl.where(x > 0, 1.0, 0.0)


@triton.jit
def _step_nonneg(x):
    # clamp'(x) at the bound 0: 1 at 0 (widths, heights, enclosing extents)
    return tl.where(x < 0, 0.0, 1.0)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _inv_pos(x):
    # 1 / x for x > 0, else 0
    return tl.where(x > 0, 1.0 / tl.where(x > 0, x, 1.0), 0.0)


@triton.jit
def _powd(x, p):
    # x^p of x clamped at 0, and its derivative p x^(p-1) (0 at x <= 0)
    c = _relu(x)
    pos = c > 0
    safe = tl.where(pos, c, 1.0)
    r = tl.where(pos, _math.pow_pos(safe, p), c * 0.0)  # c * 0: 0, or NaN for NaN
    if p == 0:
        r = tl.full(r.shape, 1.0, r.dtype)
    return r, tl.where(pos, p * r / safe, 0.0)


@triton.jit
def _powd1(x, p, POWER_ONE: tl.constexpr):
    # alpha-IoU's x^power: the identity when power == 1
    if POWER_ONE:
        return x, x * 0.0 + 1.0
    else:
        return _powd(x, p)


@triton.jit
def _atan01(z):
    # atan(z) for z in [0, 1]: z -> (z - 1)/(z + 1) around 1 (|u| <= tan(pi/8)), then
    # u -> u / (1 + sqrt(1 + u^2)) (halves the angle), then the odd series.
    big = z > 0.41421356237309503
    u = tl.where(big, (z - 1.0) / (z + 1.0), z)
    h = u / (1.0 + tl.sqrt(1.0 + u * u))
    h2 = h * h
    s = 1.0 / 23.0
    s = 1.0 / 21.0 - h2 * s
    s = 1.0 / 19.0 - h2 * s
    s = 1.0 / 17.0 - h2 * s
    s = 1.0 / 15.0 - h2 * s
    s = 1.0 / 13.0 - h2 * s
    s = 1.0 / 11.0 - h2 * s
    s = 1.0 / 9.0 - h2 * s
    s = 1.0 / 7.0 - h2 * s
    s = 1.0 / 5.0 - h2 * s
    s = 1.0 / 3.0 - h2 * s
    s = 1.0 - h2 * s
    a = 2.0 * h * s
    return tl.where(big, 0.7853981633974483 + a, a)


@triton.jit
def _atan2_pos(y, x):
    # atan2(y, x) for y, x >= 0; 0 at (0, 0)
    hi = tl.maximum(y, x)
    lo = tl.minimum(y, x)
    z = tl.where(hi > 0, lo / tl.where(hi > 0, hi, 1.0), 0.0)
    a = _atan01(z)
    return tl.where(y > x, 1.5707963267948966 - a, a)


# ----------------------------------------------------------------------------- geometry


@triton.jit
def _col(P, cols, k):
    return tl.sum(tl.where(cols[None, :] == k, P, 0.0), axis=1)


@triton.jit
def _cols4(g0, g1, g2, g3, cols):
    # [BLOCK] x 4 -> [BLOCK, 4]
    c = cols[None, :]
    return tl.where(c == 0, g0[:, None], tl.where(c == 1, g1[:, None], tl.where(c == 2, g2[:, None], g3[:, None])))


@triton.jit
def _to_xyxy(x0, x1, x2, x3, FMT: tl.constexpr):
    if FMT == 1:
        return x0, x1, x0 + x2, x1 + x3
    elif FMT == 2:
        return x0 - x2 * 0.5, x1 - x3 * 0.5, x0 + x2 * 0.5, x1 + x3 * 0.5
    else:
        return x0, x1, x2, x3


@triton.jit
def _box(X, cols, FMT: tl.constexpr):
    # [BLOCK, 4] boxes in the user's format -> 4 [BLOCK] xyxy coordinates
    return _to_xyxy(_col(X, cols, 0), _col(X, cols, 1), _col(X, cols, 2), _col(X, cols, 3), FMT)


@triton.jit
def _from_xyxy_grad(g0, g1, g2, g3, FMT: tl.constexpr):
    # the transpose of _to_xyxy
    if FMT == 1:
        return g0 + g2, g1 + g3, g2, g3
    elif FMT == 2:
        return g0 + g2, g1 + g3, (g2 - g0) * 0.5, (g3 - g1) * 0.5
    else:
        return g0, g1, g2, g3


@triton.jit
def _geometry(a0, a1, a2, a3, b0, b1, b2, b3, eps, CONV: tl.constexpr, UMODE: tl.constexpr):
    # widths / heights (ultralytics: heights + eps), intersection, area sum S, union U (S or
    # max(S, eps)), the IoU's denominator (U + eps or U) and the IoU (0 / 0 = 0)
    aw = _relu(a2 - a0)
    ah = _relu(a3 - a1)
    bw = _relu(b2 - b0)
    bh = _relu(b3 - b1)
    if CONV == 1:
        ah = ah + eps
        bh = bh + eps
    iw = _relu(_min(a2, b2) - _max(a0, b0))
    ih = _relu(_min(a3, b3) - _max(a1, b1))
    inter = iw * ih
    uni = aw * ah + bw * bh - inter
    if UMODE == 1:
        um = _max(uni, uni * 0.0 + eps)
    else:
        um = uni
    if UMODE == 0:
        den = um + eps
        iou = inter / den
    else:
        den = um
        iou = tl.where(den == 0, 0.0, inter / tl.where(den == 0, 1.0, den))
    return aw, ah, bw, bh, iw, ih, inter, uni, um, den, iou


@triton.jit
def _enclose(a0, a1, a2, a3, b0, b1, b2, b3):
    return _relu(_max(a2, b2) - _min(a0, b0)), _relu(_max(a3, b3) - _min(a1, b1))


@triton.jit
def _split(ga, gb, g, share):
    # g * share to a, g * (1 - share) to b (multiplications: a NaN in g reaches both)
    return ga + g * share, gb + g * (1.0 - share)


@triton.jit
def _pullback(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, iw, ih, uni, den, iou, cw, ch, eps, d_iou, d_inter, d_um, d_aw, d_ah, d_bw,
              d_bh, d_cw, d_ch, d_dxc, d_dyc, da0, da1, da2, da3, db0, db1, db2, db3, ENCLOSED: tl.constexpr, FMT: tl.constexpr,
              UMODE: tl.constexpr):
    """Adjoints of the intermediates (d_um: of the union U) -> gradients w.r.t. both boxes in
    the user's format (csrc/kernels/box_iou.h Pair::pullback, line for line)."""
    if UMODE == 2:
        inv = _inv_pos(den)
    else:
        inv = 1.0 / den
    d_inter = d_inter + d_iou * inv
    d_um = d_um - d_iou * iou * inv
    if UMODE == 1:
        d_uni = d_um * _share_max(uni, uni * 0.0 + eps)
    else:
        d_uni = d_um
    d_aw = d_aw + d_uni * ah
    d_ah = d_ah + d_uni * aw
    d_bw = d_bw + d_uni * bh
    d_bh = d_bh + d_uni * bw
    d_inter = d_inter - d_uni
    giw = d_inter * ih * _step_pos(iw)
    gih = d_inter * iw * _step_pos(ih)
    da2, db2 = _split(da2, db2, giw, _share_min(a2, b2))
    da0, db0 = _split(da0, db0, -giw, _share_max(a0, b0))
    da3, db3 = _split(da3, db3, gih, _share_min(a3, b3))
    da1, db1 = _split(da1, db1, -gih, _share_max(a1, b1))
    if ENCLOSED:
        gcw = d_cw * _step_nonneg(_max(a2, b2) - _min(a0, b0))
        gch = d_ch * _step_nonneg(_max(a3, b3) - _min(a1, b1))
        da2, db2 = _split(da2, db2, gcw, _share_max(a2, b2))
        da0, db0 = _split(da0, db0, -gcw, _share_min(a0, b0))
        da3, db3 = _split(da3, db3, gch, _share_max(a3, b3))
        da1, db1 = _split(da1, db1, -gch, _share_min(a1, b1))
    gaw = d_aw * _step_nonneg(a2 - a0)
    gah = d_ah * _step_nonneg(a3 - a1)
    gbw = d_bw * _step_nonneg(b2 - b0)
    gbh = d_bh * _step_nonneg(b3 - b1)
    ga0, ga1, ga2, ga3 = _from_xyxy_grad(da0 - gaw + d_dxc, da1 - gah + d_dyc, da2 + gaw + d_dxc, da3 + gah + d_dyc, FMT)
    gb0, gb1, gb2, gb3 = _from_xyxy_grad(db0 - gbw - d_dxc, db1 - gbh - d_dyc, db2 + gbw - d_dxc, db3 + gbh - d_dyc, FMT)
    return ga0, ga1, ga2, ga3, gb0, gb1, gb2, gb3


# ----------------------------------------------------------------------------- terms
# Each term: (value, intermediates); its _grad adds up * d(value) to the adjoints it touches.


@triton.jit
def _giou_term(um, cw, ch, eps, UMODE: tl.constexpr):
    # (C - U) / (C + eps), C the enclosing area (arXiv 1902.09630); union modes 1, 2:
    # (max(C, eps) - U) / max(C, eps), (C - U) / C with 0 / 0 = 0
    c = cw * ch
    if UMODE == 0:
        inv = 1.0 / (c + eps)
        value = (c - um) * inv
    elif UMODE == 1:
        cm = _max(c, c * 0.0 + eps)
        inv = 1.0 / cm
        value = (cm - um) * inv
    else:
        inv = _inv_pos(c)
        value = (c - um) * inv
    return value, inv, c


@triton.jit
def _giou_grad(up, den, c, cw, ch, inv, eps, d_um, d_cw, d_ch, UMODE: tl.constexpr):
    gc = up * den * inv * inv  # d value / dC = den / denominator^2 (times max's share)
    if UMODE == 1:
        gc = gc * _share_max(c, c * 0.0 + eps)
    return d_um - up * inv, d_cw + gc * ch, d_ch + gc * cw


@triton.jit
def _diou_term(dxc, dyc, cw, ch, eps):
    # rho^2 / c^2 (arXiv 1911.08287); dxc, dyc are twice the centre offsets
    inv = 1.0 / (cw * cw + ch * ch + eps)
    return (dxc * dxc + dyc * dyc) * 0.25 * inv, inv


@triton.jit
def _diou_grad(up, value, inv, dxc, dyc, cw, ch, d_dxc, d_dyc, d_cw, d_ch):
    gr = up * inv * 0.5
    gc2 = -up * value * inv * 2.0
    return d_dxc + gr * dxc, d_dyc + gr * dyc, d_cw + gc2 * cw, d_ch + gc2 * ch


@triton.jit
def _ciou_term(aw, ah, bw, bh, iou, eps, CONV: tl.constexpr):
    # alpha v, v = 4/pi^2 (atan(wb/hb) - atan(wa/ha))^2, alpha = v / (1 - IoU + v + eps) a constant;
    # mmdetection: heights + eps in v, alpha = [IoU > 0.5] v / (1 - IoU + v).  Returns v's heights.
    if CONV == 2:
        ah = ah + eps
        bh = bh + eps
    dl = _atan2_pos(bw, bh) - _atan2_pos(aw, ah)
    v = 0.40528473456935108578 * dl * dl
    if CONV == 2:
        den = 1.0 - iou + v
        alpha = tl.where(iou > 0.5, v / tl.where(den > 0, den, 1.0), 0.0)
    else:
        alpha = v / (1.0 - iou + v + eps)
    return alpha * v, alpha, dl, ah, bh


@triton.jit
def _clamp_scale(x, lo, hi):
    # clamp(x, lo, hi) and torch.clamp's derivative (0 strictly outside); a NaN passes
    out = (x > hi) | (x < lo)
    return tl.where(x > hi, hi, tl.where(x < lo, lo, x)), tl.where(out, 0.0, 1.0)


@triton.jit
def _scale_adjoints(k, d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc):
    # every adjoint of the loss's geometry times k (the clamp's derivative: the header's Adj::scale)
    return d_iou * k, d_aw * k, d_ah * k, d_bw * k, d_bh * k, d_cw * k, d_ch * k, d_dxc * k, d_dyc * k


@triton.jit
def _ciou_grad(up, alpha, dl, aw, ah, bw, bh, d_aw, d_ah, d_bw, d_bh):
    gdl = up * alpha * (2.0 * 0.40528473456935108578) * dl
    # d atan2(y, x) = (x dy - y dx) / (x^2 + y^2), 0 at (0, 0)
    ra = gdl * _inv_pos(aw * aw + ah * ah)
    rb = gdl * _inv_pos(bw * bw + bh * bh)
    return d_aw - ra * ah, d_ah + ra * aw, d_bw + rb * bh, d_bh - rb * bw


@triton.jit
def _side_term(wa, wb, cw, eps):
    # EIoU's (wa - wb)^2 / (cw^2 + eps) (arXiv 2101.08158)
    diff = wa - wb
    inv = 1.0 / (cw * cw + eps)
    return diff * diff * inv, diff, inv


@triton.jit
def _side_grad(up, value, diff, inv, cw, d_wa, d_wb, d_cw):
    gd = up * 2.0 * diff * inv
    return d_wa + gd, d_wb - gd, d_cw - up * value * inv * 2.0 * cw


@triton.jit
def _siou_shape_grad(gs, wa, wb, o, im, e, d_wa, d_wb):
    # (1 - exp(-o))^4 / 2, o = |wa - wb| / (max(wa, wb) + eps); max ties split
    s = 1.0 - e
    go = gs * 4.0 * s * s * s * e
    gnum = go * im * _sign(wa - wb)
    return _split(d_wa + gnum, d_wb - gnum, -go * o * im, _share_max(wa, wb))


@triton.jit
def _siou_mmdet(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, cw, ch, eps, neg):
    # mmdetection's siou_loss term (csrc/kernels/box_iou.h SIoUMMDetTerm) and its adjoints for
    # an upstream 1: sx, sy = target - prediction centre + eps, angle = 2 |sx| |sy| / sigma^2,
    # gamma = s (2 - angle) (s = -1 for neg_gamma: neg is 0 or 1), distance
    # 2 - exp(gamma (sx / max(cw, eps))^2) - ..., shape over widths and heights + eps
    sx = ((a0 + a2) - (b0 + b2)) * -0.5 + eps
    sy = ((a1 + a3) - (b1 + b3)) * -0.5 + eps
    q = _inv_pos(sx * sx + sy * sy)
    ang = 2.0 * tl.abs(sx) * tl.abs(sy) * q
    sgn = 1.0 - 2.0 * neg
    gam = sgn * (2.0 - ang)
    cwm = tl.where(cw < eps, eps, cw)  # a NaN passes
    chm = tl.where(ch < eps, eps, ch)
    icw = 1.0 / cwm
    ich = 1.0 / chm
    tx = sx * icw
    ty = sy * ich
    rx = tx * tx
    ry = ty * ty
    ex = _math.exp(gam * rx)
    ey = _math.exp(gam * ry)
    ha = ah + eps
    hb = bh + eps
    imw = _inv_pos(_max(aw, bw))
    imh = _inv_pos(_max(ha, hb))
    ow = tl.abs(aw - bw) * imw
    oh = tl.abs(ha - hb) * imh
    ew = _math.exp(-ow)
    eh = _math.exp(-oh)
    sw = 1.0 - ew
    sh = 1.0 - eh
    sw2 = sw * sw
    sh2 = sh * sh
    value = ((2.0 - ex - ey) + (sw2 * sw2 + sh2 * sh2)) * 0.5
    gs = ex * 0.0 + 0.5
    ggam = -gs * (ex * rx + ey * ry)
    grx = -gs * ex * gam
    gry = -gs * ey * gam
    gang = -ggam * sgn
    gsx = gang * 2.0 * (_sign(sx) * tl.abs(sy) - ang * sx) * q + grx * 2.0 * sx * icw * icw
    gsy = gang * 2.0 * (_sign(sy) * tl.abs(sx) - ang * sy) * q + gry * 2.0 * sy * ich * ich
    d_cw = -tl.where(cw >= eps, grx * rx * icw * 2.0, 0.0)
    d_ch = -tl.where(ch >= eps, gry * ry * ich * 2.0, 0.0)
    z = gs * 0.0
    d_aw, d_bw = _siou_shape_grad(gs, aw, bw, ow, imw, ew, z, z)
    d_ah, d_bh = _siou_shape_grad(gs, ha, hb, oh, imh, eh, z, z)
    return value, -gsx * 0.5, -gsy * 0.5, d_cw, d_ch, d_aw, d_ah, d_bw, d_bh


@triton.jit
def _extended_iou(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, eps, sp):
    # Extended-IoU (IEEE 9429909; csrc/kernels/box_iou.h ExtIoU): the extended intersection,
    # x = 1 - I / (areas - I + eps) smoothed at sp; returns the loss, the adjoints of the
    # prediction's width / height and of its xyxy corners (upstream 1)
    ex1 = _min(a0, b0)
    ey1 = _min(a1, b1)
    ix1 = _max(a0, b0)
    iy1 = _max(a1, b1)
    ix2 = _min(a2, b2)
    iy2 = _min(a3, b3)
    xmin = _min(ix1, ix2)
    ymin = _min(iy1, iy2)
    xmax = _max(ix1, ix2)
    ymax = _max(iy1, iy2)
    u = ix2 - ex1
    v = iy2 - ey1
    p = xmin - ex1
    q = ymin - ey1
    r = ix1 - ex1
    s = ymax - ey1
    t = xmax - ex1
    w = iy1 - ey1
    inter = u * v + p * q - r * s - t * w
    inv = 1.0 / (aw * ah + bw * bh - inter + eps)
    x = 1.0 - inter * inv
    low = x < sp
    loss = tl.where(low, 0.5 * x * x / sp, x - 0.5 * sp)
    gx = tl.where(low, x / sp, 1.0)
    gu = gx * inter * inv * inv
    gi = -gx * inv - gu
    gix2 = gi * v
    giy2 = gi * u
    gxmin = gi * q
    gymin = gi * p
    gix1 = -gi * s
    gymax = -gi * r
    gxmax = -gi * w
    giy1 = -gi * t
    gex1 = -(gix2 + gxmin + gix1 + gxmax)
    gey1 = -(giy2 + gymin + gymax + giy1)
    gix1, gix2 = _split(gix1, gix2, gxmin, _share_min(ix1, ix2))
    gix1, gix2 = _split(gix1, gix2, gxmax, _share_max(ix1, ix2))
    giy1, giy2 = _split(giy1, giy2, gymin, _share_min(iy1, iy2))
    giy1, giy2 = _split(giy1, giy2, gymax, _share_max(iy1, iy2))
    da0 = gex1 * _share_min(a0, b0) + gix1 * _share_max(a0, b0)
    da1 = gey1 * _share_min(a1, b1) + giy1 * _share_max(a1, b1)
    da2 = gix2 * _share_min(a2, b2)
    da3 = giy2 * _share_min(a3, b3)
    return loss, gu * ah, gu * aw, da0, da1, da2, da3


@triton.jit
def _smooth_beta(l, beta):
    # 0.5 l^2 / beta below beta, l - 0.5 beta from beta on, and its derivative
    low = l < beta
    return tl.where(low, 0.5 * l * l / beta, l - 0.5 * beta), tl.where(low, l / beta, 1.0)


@triton.jit
def _bounded_centre(c, t, eps, beta):
    # 1 - max((t - 2|c|) / (t + 2|c| + eps), 0) smoothed, and d / dc (csrc/kernels/box_iou.h BoundedIoU)
    a = 2.0 * tl.abs(c)
    inv = 1.0 / (t + a + eps)
    r = (t - a) * inv
    v, ds = _smooth_beta(1.0 - _max(r, r * 0.0), beta)
    return v, -ds * _share_max(r, r * 0.0) * (-(r + 1.0) * inv) * 2.0 * _sign(c)


@triton.jit
def _bounded_size(p, t, eps, beta):
    # 1 - min(t / (p + eps), p / (t + eps)) smoothed, and d / dp
    ip = 1.0 / (p + eps)
    it = 1.0 / (t + eps)
    q1 = t * ip
    q2 = p * it
    v, ds = _smooth_beta(1.0 - _min(q1, q2), beta)
    s = _share_min(q1, q2)
    return v, -ds * (s * (-q1 * ip) + (1.0 - s) * it)


@triton.jit
def _bounded_terms(P, T, U, cols, eps, beta, FMT: tl.constexpr):
    """Bounded IoU's 4 terms per lane as a [BLOCK, 4] tile (l_x, l_y, l_w, l_h: mmdetection's
    per-coordinate loss) and the gradient w.r.t. the prediction of sum_k U[:, k] l_k
    (csrc/kernels/box_iou.h bounded_iou_terms)."""
    a0, a1, a2, a3 = _box(P, cols, FMT)
    b0, b1, b2, b3 = _box(T, cols, FMT)
    aw, ah, bw, bh, iw, ih, inter, uni, um, uden, iou = _geometry(a0, a1, a2, a3, b0, b1, b2, b3, eps, 0, 0)
    vx, gdx = _bounded_centre(((a0 + a2) - (b0 + b2)) * -0.5, bw, eps, beta)
    vy, gdy = _bounded_centre(((a1 + a3) - (b1 + b3)) * -0.5, bh, eps, beta)
    vw, gw = _bounded_size(aw, bw, eps, beta)
    vh, gh = _bounded_size(ah, bh, eps, beta)
    z = iou * 0.0
    d_dxc = -_col(U, cols, 0) * gdx * 0.5  # dx = -dxc / 2
    d_dyc = -_col(U, cols, 1) * gdy * 0.5
    d_aw = _col(U, cols, 2) * gw
    d_ah = _col(U, cols, 3) * gh
    g0, g1, g2, g3, _0, _1, _2, _3 = _pullback(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, iw, ih, uni, uden, iou, z, z, eps, z, z, z,
                                               d_aw, d_ah, z, z, z, z, d_dxc, d_dyc, z, z, z, z, z, z, z, z, False, FMT, 0)
    carrier = (((vx + vy) + vw) + vh) * 0.0  # NaN policy: a NaN term reaches every gradient component
    return _cols4(vx, vy, vw, vh, cols), _cols4(g0 + carrier, g1 + carrier, g2 + carrier, g3 + carrier, cols)


@triton.jit
def _cd_grad(ge, e):
    return ge * _inv_pos(e)


# ----------------------------------------------------------------------------- the losses


@triton.jit
def _loss(P, T, cols, eps, power, gamma, KIND: tl.constexpr, FMT: tl.constexpr, POWER_ONE: tl.constexpr, CONV: tl.constexpr,
          UMODE: tl.constexpr):
    """Paired loss per lane and its gradient w.r.t. the prediction [BLOCK, 4]
    (csrc/kernels/box_iou.h paired_loss, term for term)."""
    a0, a1, a2, a3 = _box(P, cols, FMT)
    b0, b1, b2, b3 = _box(T, cols, FMT)
    aw, ah, bw, bh, iw, ih, inter, uni, um, uden, iou = _geometry(a0, a1, a2, a3, b0, b1, b2, b3, eps, CONV, UMODE)
    z = iou * 0.0
    d_uni, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc = z, z, z, z, z, z, z, z, z
    da0, da1, da2, da3, cw, ch = z, z, z, z, z, z
    if KIND == 10:  # bounded_iou (arXiv 1711.00164): the sum of its 4 terms; gamma carries beta
        vx, gdx = _bounded_centre(((a0 + a2) - (b0 + b2)) * -0.5, bw, eps, gamma)
        vy, gdy = _bounded_centre(((a1 + a3) - (b1 + b3)) * -0.5, bh, eps, gamma)
        vw, d_aw = _bounded_size(aw, bw, eps, gamma)
        vh, d_ah = _bounded_size(ah, bh, eps, gamma)
        loss = ((vx + vy) + vw) + vh
        d_dxc = -gdx * 0.5
        d_dyc = -gdy * 0.5
        d_iou = z
    elif KIND == 9:  # extended_iou (IEEE 9429909); gamma carries smooth_point
        loss, d_aw, d_ah, da0, da1, da2, da3 = _extended_iou(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, eps, gamma)
        d_iou = z
    elif KIND == 1:  # log_iou: -power ln(max(IoU, eps)) (arXiv 1608.01471)
        floor = eps > iou
        loss = -power * _math.log(tl.where(floor, eps, iou))
        d_iou = tl.where(floor, 0.0, -power / tl.where(floor, 1.0, iou))
    else:
        ip, dp = _powd1(iou, power, POWER_ONE)
        loss = 1.0 - ip
        d_iou = -dp
        if KIND != 0:
            cw, ch = _enclose(a0, a1, a2, a3, b0, b1, b2, b3)
            if KIND == 2:  # giou
                q, inv, c = _giou_term(um, cw, ch, eps, UMODE)
                v, dp = _powd1(q, power, POWER_ONE)
                loss = loss + v
                d_uni, d_cw, d_ch = _giou_grad(dp, uden, c, cw, ch, inv, eps, d_uni, d_cw, d_ch, UMODE)
            elif KIND == 8:  # cdiou: mean corner distance over the enclosing diagonal (arXiv 2103.11696)
                dx0 = a0 - b0
                dy1 = a1 - b1
                dx2 = a2 - b2
                dy3 = a3 - b3
                e0 = tl.sqrt(dx0 * dx0 + dy1 * dy1)
                e1 = tl.sqrt(dx2 * dx2 + dy1 * dy1)
                e2 = tl.sqrt(dx2 * dx2 + dy3 * dy3)
                e3 = tl.sqrt(dx0 * dx0 + dy3 * dy3)
                diag = tl.sqrt(cw * cw + ch * ch + eps)
                q = (e0 + e1 + e2 + e3) / (diag * 4.0)
                v, dp = _powd1(q, power, POWER_ONE)
                loss = loss + v
                ge = dp / (diag * 4.0)
                gdiag = -dp * q * _inv_pos(diag) * _inv_pos(diag)
                d_cw = gdiag * cw
                d_ch = gdiag * ch
                r0 = _cd_grad(ge, e0)
                r1 = _cd_grad(ge, e1)
                r2 = _cd_grad(ge, e2)
                r3 = _cd_grad(ge, e3)
                da0 = dx0 * (r0 + r3)
                da1 = dy1 * (r0 + r1)
                da2 = dx2 * (r1 + r2)
                da3 = dy3 * (r2 + r3)
            elif KIND == 7 and CONV == 2:  # mmdetection's siou_loss: 1 - clamp(IoU - term, -1, 1); gamma carries neg_gamma
                q, d_dxc, d_dyc, d_cw, d_ch, d_aw, d_ah, d_bw, d_bh = _siou_mmdet(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, cw, ch, eps, gamma)
                loss, k = _clamp_scale(loss + q, 0.0, 2.0)
                d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc = _scale_adjoints(
                    k, d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc)
            elif KIND == 7:  # siou (arXiv 2205.12740)
                dx = ((a0 + a2) - (b0 + b2)) * -0.5
                dy = ((a1 + a3) - (b1 + b3)) * -0.5
                den = 1.0 / (dx * dx + dy * dy + eps)
                lam = 2.0 * tl.abs(dx) * tl.abs(dy) * den  # sin(2 theta)
                gam = 2.0 - lam
                ix = 1.0 / (cw * cw + eps)
                iy = 1.0 / (ch * ch + eps)
                rx = dx * dx * ix
                ry = dy * dy * iy
                ex = _math.exp(-gam * rx)
                ey = _math.exp(-gam * ry)
                imw = 1.0 / (_max(aw, bw) + eps)
                imh = 1.0 / (_max(ah, bh) + eps)
                ow = tl.abs(aw - bw) * imw
                oh = tl.abs(ah - bh) * imh
                ew = _math.exp(-ow)
                eh = _math.exp(-oh)
                sw = 1.0 - ew
                sh = 1.0 - eh
                q = ((2.0 - ex - ey) + (sw * sw * sw * sw + sh * sh * sh * sh)) * 0.5
                v, dp = _powd1(q, power, POWER_ONE)
                loss = loss + v
                gs = dp * 0.5
                glam = -gs * (rx * ex + ry * ey)
                grx = gs * gam * ex
                gry = gs * gam * ey
                gden = -glam * lam * den
                gdx = glam * 2.0 * tl.abs(dy) * den * _sign(dx) + (gden + grx * ix) * 2.0 * dx
                gdy = glam * 2.0 * tl.abs(dx) * den * _sign(dy) + (gden + gry * iy) * 2.0 * dy
                d_dxc = -gdx * 0.5
                d_dyc = -gdy * 0.5
                d_cw = -grx * rx * ix * 2.0 * cw
                d_ch = -gry * ry * iy * 2.0 * ch
                d_aw, d_bw = _siou_shape_grad(gs, aw, bw, ow, imw, ew, d_aw, d_bw)
                d_ah, d_bh = _siou_shape_grad(gs, ah, bh, oh, imh, eh, d_ah, d_bh)
            else:  # diou and the kinds built on it
                dxc = (a0 + a2) - (b0 + b2)
                dyc = (a1 + a3) - (b1 + b3)
                q, inv = _diou_term(dxc, dyc, cw, ch, eps)
                v, dp = _powd1(q, power, POWER_ONE)
                loss = loss + v
                d_dxc, d_dyc, d_cw, d_ch = _diou_grad(dp, q, inv, dxc, dyc, cw, ch, d_dxc, d_dyc, d_cw, d_ch)
                if KIND == 4:  # ciou
                    q, alpha, dl, hva, hvb = _ciou_term(aw, ah, bw, bh, iou, eps, CONV)
                    v, dp = _powd1(q, power, POWER_ONE)
                    loss = loss + v
                    d_aw, d_ah, d_bw, d_bh = _ciou_grad(dp, alpha, dl, aw, hva, bw, hvb, d_aw, d_ah, d_bw, d_bh)
                    if CONV == 2:  # mmdetection: 1 - clamp(CIoU, -1, 1)
                        loss, k = _clamp_scale(loss, 0.0, 2.0)
                        d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc = _scale_adjoints(
                            k, d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc)
                elif KIND == 5 or KIND == 6:  # eiou, focal_eiou
                    q, diff, inv = _side_term(aw, bw, cw, eps)
                    v, dp = _powd1(q, power, POWER_ONE)
                    loss = loss + v
                    d_aw, d_bw, d_cw = _side_grad(dp, q, diff, inv, cw, d_aw, d_bw, d_cw)
                    q, diff, inv = _side_term(ah, bh, ch, eps)
                    v, dp = _powd1(q, power, POWER_ONE)
                    loss = loss + v
                    d_ah, d_bh, d_ch = _side_grad(dp, q, diff, inv, ch, d_ah, d_bh, d_ch)
                    if KIND == 6:  # IoU^gamma * L_EIoU: every adjoint scales by IoU^gamma
                        f, df = _powd(iou, gamma)
                        d_iou = d_iou * f + df * loss
                        d_uni = d_uni * f
                        d_aw = d_aw * f
                        d_ah = d_ah * f
                        d_bw = d_bw * f
                        d_bh = d_bh * f
                        d_cw = d_cw * f
                        d_ch = d_ch * f
                        d_dxc = d_dxc * f
                        d_dyc = d_dyc * f
                        loss = f * loss
    g0, g1, g2, g3, _0, _1, _2, _3 = _pullback(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, iw, ih, uni, uden, iou, cw, ch, eps, d_iou, z,
                                               d_uni, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc, da0, da1, da2, da3, z, z, z, z, KIND > 1,
                                               FMT, UMODE)
    carrier = loss * 0.0  # NaN policy: a NaN loss reaches every gradient component
    return loss, _cols4(g0 + carrier, g1 + carrier, g2 + carrier, g3 + carrier, cols)


# ----------------------------------------------------------------------------- 3-D boxes
# (x1, y1, z1, x2, y2, z2) per lane, kinds iou / giou / diou, fmt xyxy, convention fastloss:
# csrc/kernels/box_iou.h PairND / paired_loss_nd with D = 3, one axis at a time.


@triton.jit
def _axis3(lo_a, hi_a, lo_b, hi_b):
    # one axis: extents of a, b, the intersection, the enclosing box; doubled centre difference
    return (_relu(hi_a - lo_a), _relu(hi_b - lo_b), _relu(_min(hi_a, hi_b) - _max(lo_a, lo_b)), _relu(_max(hi_a, hi_b) - _min(lo_a, lo_b)),
            (lo_a + hi_a) - (lo_b + hi_b))


@triton.jit
def _axis3_grad(lo_a, hi_a, lo_b, hi_b, ei, g_ea, g_ei, g_c, g_dc):
    # adjoints of this axis's extent of a, of the intersection's, of the enclosing one and of the
    # centre difference -> (d lo_a, d hi_a); extents clamp'(0) = 1, the intersection's relu'(0) = 0
    gea = g_ea * _step_nonneg(hi_a - lo_a)
    gei = g_ei * _step_pos(ei)
    gc = g_c * _step_nonneg(_max(hi_a, hi_b) - _min(lo_a, lo_b))
    glo = ((g_dc - gea) - gei * _share_max(lo_a, lo_b)) - gc * _share_min(lo_a, lo_b)
    ghi = ((g_dc + gea) + gei * _share_min(hi_a, hi_b)) + gc * _share_max(hi_a, hi_b)
    return glo, ghi


@triton.jit
def _cols6(g0, g1, g2, g3, g4, g5, cols):
    # [BLOCK] x 6 -> [BLOCK, 8] (columns 6, 7: padding, never stored)
    c = cols[None, :]
    return tl.where(c == 0, g0[:, None], tl.where(c == 1, g1[:, None], tl.where(c == 2, g2[:, None], tl.where(
        c == 3, g3[:, None], tl.where(c == 4, g4[:, None], g5[:, None])))))


@triton.jit
def _loss3(P, T, cols, eps, power, KIND: tl.constexpr, POWER_ONE: tl.constexpr):
    """Paired loss of 3-D boxes per lane and its gradient w.r.t. the prediction [BLOCK, 8]:
    1 - IoU^power (+ GIoU's (C - U) / (C + eps) or DIoU's rho^2 / (c^2 + eps), ^power) with
    volumes (csrc/kernels/box_iou.h paired_loss_nd)."""
    a0, a1, a2, a3, a4, a5 = _col(P, cols, 0), _col(P, cols, 1), _col(P, cols, 2), _col(P, cols, 3), _col(P, cols, 4), _col(P, cols, 5)
    b0, b1, b2, b3, b4, b5 = _col(T, cols, 0), _col(T, cols, 1), _col(T, cols, 2), _col(T, cols, 3), _col(T, cols, 4), _col(T, cols, 5)
    ea0, eb0, ei0, c0, dc0 = _axis3(a0, a3, b0, b3)
    ea1, eb1, ei1, c1, dc1 = _axis3(a1, a4, b1, b4)
    ea2, eb2, ei2, c2, dc2 = _axis3(a2, a5, b2, b5)
    inter = ei0 * ei1 * ei2
    uni = ea0 * ea1 * ea2 + eb0 * eb1 * eb2 - inter
    den = uni + eps
    iou = inter / den
    ip, dp = _powd1(iou, power, POWER_ONE)
    loss = 1.0 - ip
    d_iou = -dp
    z = iou * 0.0
    d_uni, g_c0, g_c1, g_c2, g_dc0, g_dc1, g_dc2 = z, z, z, z, z, z, z
    if KIND == 2:  # giou: (C - U) / (C + eps), d/dC = (U + eps) / (C + eps)^2
        cv = c0 * c1 * c2
        inv = 1.0 / (cv + eps)
        v, dp = _powd1((cv - uni) * inv, power, POWER_ONE)
        loss = loss + v
        gcv = dp * den * inv * inv
        g_c0 = gcv * (c1 * c2)
        g_c1 = gcv * (c0 * c2)
        g_c2 = gcv * (c0 * c1)
        d_uni = -dp * inv
    elif KIND == 3:  # diou: (sum dc^2 / 4) / (sum c^2 + eps), dc the doubled centre differences
        inv = 1.0 / (((eps + c0 * c0) + c1 * c1) + c2 * c2)
        q = ((dc0 * dc0 + dc1 * dc1) + dc2 * dc2) * 0.25 * inv
        v, dp = _powd1(q, power, POWER_ONE)
        loss = loss + v
        gr = dp * inv * 0.5
        gc2 = -dp * q * inv * 2.0
        g_dc0, g_dc1, g_dc2 = gr * dc0, gr * dc1, gr * dc2
        g_c0, g_c1, g_c2 = gc2 * c0, gc2 * c1, gc2 * c2
    # IoU = I / (U + eps), U = V_a + V_b - I
    d_uni = d_uni - d_iou * iou / den
    d_inter = d_iou / den - d_uni
    l0, h0 = _axis3_grad(a0, a3, b0, b3, ei0, d_uni * (ea1 * ea2), d_inter * (ei1 * ei2), g_c0, g_dc0)
    l1, h1 = _axis3_grad(a1, a4, b1, b4, ei1, d_uni * (ea0 * ea2), d_inter * (ei0 * ei2), g_c1, g_dc1)
    l2, h2 = _axis3_grad(a2, a5, b2, b5, ei2, d_uni * (ea0 * ea1), d_inter * (ei0 * ei1), g_c2, g_dc2)
    carrier = loss * 0.0  # NaN policy: a NaN loss reaches every gradient component
    return loss, _cols6(l0 + carrier, l1 + carrier, l2 + carrier, h0 + carrier, h1 + carrier, h2 + carrier, cols)


@triton.jit
def _loss_nc(P, T, cols, eps, power, gamma, KIND: tl.constexpr, FMT: tl.constexpr, POWER_ONE: tl.constexpr, CONV: tl.constexpr,
             UMODE: tl.constexpr, NC: tl.constexpr):
    # the paired loss of boxes with NC coordinates: 4 (2-D) or 6 (3-D)
    if NC == 6:
        return _loss3(P, T, cols, eps, power, KIND, POWER_ONE)
    else:
        return _loss(P, T, cols, eps, power, gamma, KIND, FMT, POWER_ONE, CONV, UMODE)


@triton.jit
def _load(p_ptr, t_ptr, w_ptr, n, COMPUTE: tl.constexpr, HAS_W: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr, NC: tl.constexpr,
          NCP: tl.constexpr):
    # boxes of NC coordinates as [BLOCK, NCP] tiles (NCP: NC padded to a power of 2)
    pid = tl.program_id(0)
    if INT64:
        rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, NCP)
    mask = rows < n
    offs = rows[:, None] * NC + cols[None, :]
    m2 = mask[:, None] & (cols[None, :] < NC)
    P = tl.load(p_ptr + offs, mask=m2, other=0.0).to(COMPUTE)
    T = tl.load(t_ptr + offs, mask=m2, other=0.0).to(COMPUTE)
    if HAS_W:
        w = tl.load(w_ptr + rows, mask=mask, other=0.0).to(COMPUTE)
    else:
        w = tl.full((BLOCK,), 1.0, COMPUTE)
    return rows, cols, mask, offs, m2, P, T, w


@triton.jit
def _loss_forward_kernel(p_ptr, t_ptr, w_ptr, out_ptr, partial_ptr, cache_ptr, n, eps: tl.float64, power: tl.float64, gamma: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr,
                         CONV: tl.constexpr, UMODE: tl.constexpr, POWER_ONE: tl.constexpr, HAS_W: tl.constexpr, REDUCE: tl.constexpr, WITH_GRAD: tl.constexpr, COMPUTE: tl.constexpr,
                         INT64: tl.constexpr, BLOCK: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr, TERMS: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    power = tl.full((), power, COMPUTE)
    gamma = tl.full((), gamma, COMPUTE)
    # TERMS: bounded_iou's (n, 4) terms into out (no reduction, no stored gradient)
    rows, cols, mask, offs, m2, P, T, w = _load(p_ptr, t_ptr, w_ptr, n, COMPUTE, HAS_W, INT64, BLOCK, NC, NCP)
    if TERMS:
        lt, _unused = _bounded_terms(P, T, P * 0.0, cols, eps, gamma, FMT)
        tl.store(out_ptr + offs, (lt * w[:, None]).to(out_ptr.dtype.element_ty), mask=m2)
    else:
        lv, ld = _loss_nc(P, T, cols, eps, power, gamma, KIND, FMT, POWER_ONE, CONV, UMODE, NC)
        if WITH_GRAD:
            tl.store(cache_ptr + offs, ld * w[:, None], mask=m2)
        lv = tl.where(mask, lv * w, 0.0)
        if REDUCE:
            tl.store(partial_ptr + tl.program_id(0), tl.sum(lv, axis=0))
        else:
            tl.store(out_ptr + rows, lv.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _loss_backward_kernel(p_ptr, t_ptr, w_ptr, g_ptr, out_ptr, n, eps: tl.float64, power: tl.float64, gamma: tl.float64, scale: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr,
                          CONV: tl.constexpr, UMODE: tl.constexpr, POWER_ONE: tl.constexpr, HAS_W: tl.constexpr, PER_BOX_GRAD: tl.constexpr, COMPUTE: tl.constexpr,
                          INT64: tl.constexpr, BLOCK: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr, TERMS: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    power = tl.full((), power, COMPUTE)
    gamma = tl.full((), gamma, COMPUTE)
    scale = tl.full((), scale, COMPUTE)
    # TERMS: bounded_iou's terms, an (n, 4) upstream gradient
    rows, cols, mask, offs, m2, P, T, w = _load(p_ptr, t_ptr, w_ptr, n, COMPUTE, HAS_W, INT64, BLOCK, NC, NCP)
    if TERMS:
        _unused, ld = _bounded_terms(P, T, tl.load(g_ptr + offs, mask=m2, other=0.0).to(COMPUTE), cols, eps, gamma, FMT)
        tl.store(out_ptr + offs, (ld * w[:, None]).to(out_ptr.dtype.element_ty), mask=m2)
    else:
        lv, ld = _loss_nc(P, T, cols, eps, power, gamma, KIND, FMT, POWER_ONE, CONV, UMODE, NC)
        if PER_BOX_GRAD:
            up = tl.load(g_ptr + rows, mask=mask, other=0.0).to(COMPUTE)
        else:
            up = tl.load(g_ptr).to(COMPUTE) * scale + tl.zeros((BLOCK,), COMPUTE)
        tl.store(out_ptr + offs, (ld * (w * up)[:, None]).to(out_ptr.dtype.element_ty), mask=m2)


TERMS = 3  # reduction code of bounded_iou's per-term output (fastloss/ops/box_iou.py)


def _meta(pred, weight, kind, fmt, conv, power, reduction):
    n, nc = pred.shape  # nc: 4 (2-D boxes) or 6 (3-D)
    return dict(KIND=kind, FMT=fmt, CONV=conv, UMODE=_union_mode(conv, kind, False), POWER_ONE=power == 1.0, HAS_W=weight is not None,
                COMPUTE=tl.float64 if pred.dtype == torch.float64 else tl.float32, INT64=nc * (n + BLOCK) >= 2**31, BLOCK=BLOCK, NC=nc,
                NCP=triton.next_power_of_2(nc), TERMS=reduction == TERMS)


def loss_forward(pred, target, weight, kind, fmt, conv, eps, power, gamma, reduction, with_grad):
    n = pred.shape[0]
    grid = (max(triton.cdiv(n, BLOCK), 1),)
    acc = reduced_dtype(pred.dtype)
    cache = torch.empty(pred.shape if with_grad else (0,), dtype=acc, device=pred.device)
    reduce = reduction not in (0, TERMS)
    if reduce:
        out = torch.empty(grid[0], dtype=acc, device=pred.device)
    else:
        out = torch.empty((n, 4) if reduction == TERMS else (n,), dtype=pred.dtype, device=pred.device)
    w = weight if weight is not None else pred
    if n:
        _loss_forward_kernel[grid](pred, target, w, out, out, cache, n, eps, power, gamma, REDUCE=reduce, WITH_GRAD=with_grad,
                                   **_meta(pred, weight, kind, fmt, conv, power, reduction))
    elif reduce:
        out.zero_()
    if not reduce:
        return out, cache
    total = out.sum()
    return (total / max(n, 1) if reduction == 2 else total), cache  # mean of nothing: 0


def loss_backward(grad, pred, target, weight, kind, fmt, conv, eps, power, gamma, reduction):
    n = pred.shape[0]
    out = torch.empty_like(pred)
    w = weight if weight is not None else pred
    if n:
        scale = 1.0 / max(n, 1) if reduction == 2 else 1.0
        _loss_backward_kernel[(triton.cdiv(n, BLOCK),)](pred, target, w, grad, out, n, eps, power, gamma, scale, PER_BOX_GRAD=reduction == 0,
                                                         **_meta(pred, weight, kind, fmt, conv, power, reduction))
    return out


# ----------------------------------------------------------------------------- matrices


@triton.jit
def _metric(A, B, cols, eps, KIND: tl.constexpr, FMT: tl.constexpr, GRAD: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr):
    """Pairwise / aligned metric per lane and, with GRAD, its gradients w.r.t. both boxes
    ([BLOCK, 4] each; zeros without GRAD) (csrc/kernels/box_iou.h pair_metric)."""
    a0, a1, a2, a3 = _box(A, cols, FMT)
    b0, b1, b2, b3 = _box(B, cols, FMT)
    aw, ah, bw, bh, iw, ih, inter, uni, um, uden, iou = _geometry(a0, a1, a2, a3, b0, b1, b2, b3, eps, CONV, UMODE)
    z = iou * 0.0
    d_iou = z + 1.0
    d_inter, d_uni, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc, cw, ch = z, z, z, z, z, z, z, z, z, z, z, z
    if KIND == 1:  # iof: intersection over a's area (mmcv): I / (area + eps), mmdetection I / max(area, eps)
        area = aw * ah
        if UMODE == 1:
            den = _max(area, area * 0.0 + eps)
        else:
            den = area + eps
        inv = 1.0 / den
        m = inter / den  # a division, as the peers' I / area
        garea = -m * inv
        if UMODE == 1:
            garea = garea * _share_max(area, area * 0.0 + eps)
        d_iou = z
        d_inter = inv
        d_aw = garea * ah
        d_ah = garea * aw
    else:
        m = iou
        if KIND != 0:
            cw, ch = _enclose(a0, a1, a2, a3, b0, b1, b2, b3)
            if KIND == 2:  # giou
                q, inv, c = _giou_term(um, cw, ch, eps, UMODE)
                m = m - q
                d_uni, d_cw, d_ch = _giou_grad(z - 1.0, uden, c, cw, ch, inv, eps, d_uni, d_cw, d_ch, UMODE)
            else:  # diou, ciou
                dxc = (a0 + a2) - (b0 + b2)
                dyc = (a1 + a3) - (b1 + b3)
                q, inv = _diou_term(dxc, dyc, cw, ch, eps)
                m = m - q
                d_dxc, d_dyc, d_cw, d_ch = _diou_grad(z - 1.0, q, inv, dxc, dyc, cw, ch, d_dxc, d_dyc, d_cw, d_ch)
                if KIND == 4:
                    q, alpha, dl, hva, hvb = _ciou_term(aw, ah, bw, bh, iou, eps, CONV)
                    m = m - q
                    d_aw, d_ah, d_bw, d_bh = _ciou_grad(z - 1.0, alpha, dl, aw, hva, bw, hvb, d_aw, d_ah, d_bw, d_bh)
                    if CONV == 2:  # mmdetection's clamp(CIoU, -1, 1)
                        m, k = _clamp_scale(m, -1.0, 1.0)
                        d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc = _scale_adjoints(
                            k, d_iou, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc)
    if GRAD:
        ga0, ga1, ga2, ga3, gb0, gb1, gb2, gb3 = _pullback(a0, a1, a2, a3, b0, b1, b2, b3, aw, ah, bw, bh, iw, ih, uni, uden, iou, cw, ch, eps,
                                                           d_iou, d_inter, d_uni, d_aw, d_ah, d_bw, d_bh, d_cw, d_ch, d_dxc, d_dyc, z, z, z, z, z,
                                                           z, z, z, KIND > 1, FMT, UMODE)
        c = m * 0.0  # NaN policy: a NaN metric reaches every gradient component
        return m, _cols4(ga0 + c, ga1 + c, ga2 + c, ga3 + c, cols), _cols4(gb0 + c, gb1 + c, gb2 + c, gb3 + c, cols)
    else:
        return m, A * 0.0, A * 0.0


@triton.jit
def _matrix_kernel(b1_ptr, b2_ptr, out_ptr, total, N, M, eps: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr, ALIGNED: tl.constexpr,
                   COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    cols = tl.arange(0, 4)
    mask = i < total
    if ALIGNED:
        r1 = i
        r2 = i
    else:
        bn = i // M
        r1 = bn
        r2 = (bn // N) * M + (i - bn * M)
    m2 = mask[:, None] & (cols[None, :] < 4)
    A = tl.load(b1_ptr + r1[:, None] * 4 + cols[None, :], mask=m2, other=0.0).to(COMPUTE)
    B = tl.load(b2_ptr + r2[:, None] * 4 + cols[None, :], mask=m2, other=0.0).to(COMPUTE)
    v, _, _ = _metric(A, B, cols, eps, KIND, FMT, False, CONV, UMODE)
    tl.store(out_ptr + i, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _aligned_backward_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, g2_ptr, total, eps: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr,
                             COMPUTE: tl.constexpr,
                             BLOCK: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    cols = tl.arange(0, 4)
    mask = i < total
    m2 = mask[:, None] & (cols[None, :] < 4)
    offs = i[:, None] * 4 + cols[None, :]
    A = tl.load(b1_ptr + offs, mask=m2, other=0.0).to(COMPUTE)
    B = tl.load(b2_ptr + offs, mask=m2, other=0.0).to(COMPUTE)
    up = tl.load(g_ptr + i, mask=mask, other=0.0).to(COMPUTE)
    _, d1, d2 = _metric(A, B, cols, eps, KIND, FMT, True, CONV, UMODE)
    tl.store(g1_ptr + offs, (d1 * up[:, None]).to(g1_ptr.dtype.element_ty), mask=m2)
    tl.store(g2_ptr + offs, (d2 * up[:, None]).to(g2_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rows_backward_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, N, M, eps: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr,
                             COMPUTE: tl.constexpr,
                          BLOCK: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    # one program per box of boxes1: sum over m in a fixed order
    r = tl.program_id(0).to(tl.int64)
    bb = r // N
    cols = tl.arange(0, 4)
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    A = tl.load(b1_ptr + r * 4 + cols).to(COMPUTE)[None, :] + tl.zeros((BLOCK, 4), COMPUTE)
    acc = tl.zeros((BLOCK, 4), COMPUTE)
    for start in range(0, M, BLOCK):
        m = start + lanes
        mask = m < M
        m2 = mask[:, None] & (cols[None, :] < 4)
        B = tl.load(b2_ptr + (bb * M + m)[:, None] * 4 + cols[None, :], mask=m2, other=0.0).to(COMPUTE)
        up = tl.load(g_ptr + r * M + m, mask=mask, other=0.0).to(COMPUTE)
        _, d, _ = _metric(A, B, cols, eps, KIND, FMT, True, CONV, UMODE)
        acc += tl.where(m2, d * up[:, None], 0.0)
    tl.store(g1_ptr + r * 4 + cols, tl.sum(acc, axis=0).to(g1_ptr.dtype.element_ty))


@triton.jit
def _cols_backward_kernel(g_ptr, b1_ptr, b2_ptr, g2_ptr, N, M, eps: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr,
                             COMPUTE: tl.constexpr,
                          BLOCK: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    # one program per BLOCK boxes of boxes2 (one batch): loop over n in order
    chunks = tl.cdiv(M, BLOCK)
    pid = tl.program_id(0).to(tl.int64)
    bb = pid // chunks
    m = (pid - bb * chunks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    cols = tl.arange(0, 4)
    mask = m < M
    m2 = mask[:, None] & (cols[None, :] < 4)
    offs = (bb * M + m)[:, None] * 4 + cols[None, :]
    B = tl.load(b2_ptr + offs, mask=m2, other=0.0).to(COMPUTE)
    acc = tl.zeros((BLOCK, 4), COMPUTE)
    for n in range(0, N):
        A = tl.load(b1_ptr + (bb * N + n) * 4 + cols).to(COMPUTE)[None, :] + tl.zeros((BLOCK, 4), COMPUTE)
        up = tl.load(g_ptr + (bb * N + n) * M + m, mask=mask, other=0.0).to(COMPUTE)
        _, _, d = _metric(A, B, cols, eps, KIND, FMT, True, CONV, UMODE)
        acc += d * up[:, None]
    tl.store(g2_ptr + offs, acc.to(g2_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _max_kernel(b1_ptr, b2_ptr, v_ptr, i_ptr, R, L, eps: tl.float64, KIND: tl.constexpr, FMT: tl.constexpr, CONV: tl.constexpr, UMODE: tl.constexpr,
                OVER_M: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK: tl.constexpr):
    eps = tl.full((), eps, COMPUTE)
    # one program per BLOCK results of one batch; loop over the reduced boxes in order
    chunks = tl.cdiv(R, BLOCK)
    pid = tl.program_id(0).to(tl.int64)
    bb = pid // chunks
    r = (pid - bb * chunks) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    cols = tl.arange(0, 4)
    mask = r < R
    m2 = mask[:, None] & (cols[None, :] < 4)
    own_ptr = b1_ptr if OVER_M else b2_ptr
    other_ptr = b2_ptr if OVER_M else b1_ptr
    X = tl.load(own_ptr + (bb * R + r)[:, None] * 4 + cols[None, :], mask=m2, other=0.0).to(COMPUTE)
    best = tl.full((BLOCK,), float("-inf"), COMPUTE)
    best_i = tl.zeros((BLOCK,), tl.int64)
    nan_seen = tl.zeros((BLOCK,), tl.int1)
    for l in range(0, L):
        Y = tl.load(other_ptr + (bb * L + l) * 4 + cols).to(COMPUTE)[None, :] + tl.zeros((BLOCK, 4), COMPUTE)
        if OVER_M:
            v, _, _ = _metric(X, Y, cols, eps, KIND, FMT, False, CONV, UMODE)
        else:
            v, _, _ = _metric(Y, X, cols, eps, KIND, FMT, False, CONV, UMODE)
        is_nan = v != v
        take = ((v > best) | is_nan) & (nan_seen == 0)
        best = tl.where(take, v, best)
        best_i = tl.where(take, l, best_i)
        nan_seen = nan_seen | is_nan
    tl.store(v_ptr + bb * R + r, best.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(i_ptr + bb * R + r, best_i, mask=mask)


def _compute(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


MATRIX_BLOCK = 128


def matrix_forward(b1, b2, kind, fmt, conv, eps, aligned):
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    out = torch.empty((B, N) if aligned else (B, N, M), dtype=b1.dtype, device=b1.device)
    total = out.numel()
    if total:
        _matrix_kernel[(triton.cdiv(total, MATRIX_BLOCK),)](b1, b2, out, total, N, max(M, 1), eps, KIND=kind, FMT=fmt, CONV=conv,
                                                           UMODE=_union_mode(conv, kind, True), ALIGNED=aligned,
                                                           COMPUTE=_compute(b1.dtype), BLOCK=MATRIX_BLOCK, enable_fp_fusion=False)
    return out


def matrix_backward(grad, b1, b2, kind, fmt, conv, eps, aligned):
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    g1 = torch.empty_like(b1)
    g2 = torch.empty_like(b2)
    meta = dict(KIND=kind, FMT=fmt, CONV=conv, UMODE=_union_mode(conv, kind, True), COMPUTE=_compute(b1.dtype), BLOCK=MATRIX_BLOCK)
    if aligned:
        if B * N:
            _aligned_backward_kernel[(triton.cdiv(B * N, MATRIX_BLOCK),)](grad, b1, b2, g1, g2, B * N, eps, **meta)
        return g1, g2
    if B * N:
        _rows_backward_kernel[(B * N,)](grad, b1, b2, g1, N, M, eps, **meta)
    if B * M:
        _cols_backward_kernel[(B * triton.cdiv(M, MATRIX_BLOCK),)](grad, b1, b2, g2, N, M, eps, **meta)
    return g1, g2


def max_forward(b1, b2, kind, fmt, conv, eps, dim):
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    over_m = dim == 1
    R, L = (N, M) if over_m else (M, N)
    vals = torch.empty((B, R), dtype=b1.dtype, device=b1.device)
    idx = torch.empty((B, R), dtype=torch.int64, device=b1.device)
    if B * R:
        _max_kernel[(B * triton.cdiv(R, MATRIX_BLOCK),)](b1, b2, vals, idx, R, L, eps, KIND=kind, FMT=fmt, CONV=conv,
                                                        UMODE=_union_mode(conv, kind, True), OVER_M=over_m,
                                                        COMPUTE=_compute(b1.dtype), BLOCK=MATRIX_BLOCK, enable_fp_fusion=False)
    return vals, idx
