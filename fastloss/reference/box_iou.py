"""IoU family in pure PyTorch: the specification, the test oracle, the eager baseline of the
benchmarks and the fallback backend.

Boxes are (..., 4) in ``fmt`` xyxy (x1, y1, x2, y2), xywh (x1, y1, w, h) or cxcywh
(cx, cy, w, h) -- torchvision's names -- and are converted to xyxy first.  For a prediction
``p`` and a target ``t`` (or boxes1 ``a`` / boxes2 ``b`` of the matrices):

    w = max(x2 - x1, 0), h = max(y2 - y1, 0)       inverted boxes have zero area (never a match)
    I = max(min(x2, x2') - max(x1, x1'), 0) * max(min(y2, y2') - max(y1, y1'), 0)
    U = w h + w' h' - I,   IoU = I / (U + eps)                                    (torchvision)
    cw, ch = width / height of the smallest box enclosing both,  C = cw ch
    rho2 = squared distance of the centres,  c2 = cw^2 + ch^2 + eps               (torchvision)

``p`` below is ``power``, the exponent of alpha-IoU (He et al., arXiv 2110.13675), applied to
the IoU and to every penalty term (p = 1: the plain losses).  x^p is taken of max(x, 0).

* ``iou``       1 - IoU^p
* ``log_iou``   -ln(max(IoU, eps)^p) = -p ln max(IoU, eps)        (UnitBox, arXiv 1608.01471;
                clamped like mmdetection so disjoint boxes stay finite)
* ``giou``      1 - IoU^p + ((C - U) / (C + eps))^p                (arXiv 1902.09630)
* ``diou``      1 - IoU^p + (rho2 / c2)^p                         (arXiv 1911.08287)
* ``ciou``      1 - IoU^p + (rho2 / c2)^p + (beta v)^p            (arXiv 1911.08287)
                v = 4/pi^2 (atan2(w_t, h_t) - atan2(w_p, h_p))^2, beta = v / (1 - IoU + v + eps),
                beta a constant in the backward (torchvision, ultralytics); atan2 instead of
                atan(w/h) so that point boxes (w = h = 0) are finite (torchvision: NaN there).
* ``eiou``      1 - IoU^p + (rho2/c2)^p + ((w_p - w_t)^2 / (cw^2 + eps))^p + ((h_p - h_t)^2 / (ch^2 + eps))^p
                                                                  (Zhang et al., arXiv 2101.08158)
* ``focal_eiou`` IoU^gamma * L_eiou (same paper; IoU^gamma is differentiated too, its
                derivative taken as 0 at IoU = 0)
* ``siou``      1 - IoU^p + ((Delta + Omega) / 2)^p                (Gevorgyan, arXiv 2205.12740)
                dx, dy = target centre - prediction centre;
                Lambda = 1 - 2 sin^2(arcsin(|dy|/sigma) - pi/4) = sin(2 theta)
                       = 2 |dx| |dy| / (dx^2 + dy^2 + eps)   (the same for the paper's beta branch)
                Delta  = sum_{x,y} (1 - exp(-(2 - Lambda) rho_t)),  rho_x = dx^2 / (cw^2 + eps), rho_y = dy^2 / (ch^2 + eps)
                Omega  = sum_{w,h} (1 - exp(-omega_t))^4,  omega_w = |w_p - w_t| / (max(w_p, w_t) + eps)
                (the paper's theta = 4)
* ``cdiou``     1 - IoU^p + (sum_k |corner_k(p) - corner_k(t)| / (4 sqrt(cw^2 + ch^2 + eps)))^p
                over the 4 corresponding corners           (Control Distance IoU, arXiv 2103.11696)
* ``extended_iou`` Extended-IoU (Peng and Yu, IEEE 9429909; mmdetection's ``EIoULoss``, a different
                loss from Efficient-IoU ``eiou``), with the corner extremes ex1 = min(x1, x1'),
                ix1 = max(x1, x1'), ix2 = min(x2, x2') (y alike), xmin / xmax = min / max(ix1, ix2):
                I_e = (ix2 - ex1)(iy2 - ey1) + (xmin - ex1)(ymin - ey1) - (ix1 - ex1)(ymax - ey1)
                      - (xmax - ex1)(iy1 - ey1)
                (the intersection where the boxes overlap, negative where they do not);
                x = 1 - I_e / (w h + w' h' - I_e + eps); loss 0.5 x^2 / sp for x < sp, else
                x - 0.5 sp, sp = ``smooth_point`` (the branch itself is not differentiated).
                ``power`` must be 1.  The same under conventions fastloss and mmdet.
* ``bounded_iou`` Bounded IoU (Tychsen-Smith and Petersson, arXiv 1711.00164; mmdetection's
                ``BoundedIoULoss``), per box the sum of 4 terms smoothed with beta = ``smooth_point``
                (0.5 l^2 / beta for l < beta, else l - 0.5 beta):
                l_x = 1 - max((w_t - 2 |dx|) / (w_t + 2 |dx| + eps), 0), dx = target - prediction
                centre x; l_w = 1 - min(w_t / (w_p + eps), w_p / (w_t + eps)); y, h alike.
                ``power`` must be 1.  The same under conventions fastloss and mmdet.

3-D boxes (paired losses only): (..., 6) = (x1, y1, z1, x2, y2, z2), the lower corner then the
upper one (MONAI's StandardMode), format xyxy, convention ``fastloss``, kinds ``iou``, ``giou``,
``diou`` (and ``power``): volumes take the areas' place (w h d, the intersection's and the
enclosing box's), and DIoU's rho2 and c2 sum over the 3 axes.  The same clamping and kink
conventions as in 2-D.

Matrices (:func:`box_iou`): ``iou`` IoU, ``iof`` I / (area(a) + eps) (mmcv), ``giou``
IoU - (C - U)/(C + eps), ``diou`` IoU - rho2/c2, ``ciou`` IoU - rho2/c2 - beta v.

Conventions (``convention``): where the peers place eps, so that their compat layers run one
kernel call.  Everything not listed is as above (S = w h + w' h' - I is the union above).

* ``fastloss`` (default): the formulas above (torchvision's losses).
* ``ultralytics`` (ultralytics 8.4 ``utils/metrics.py::bbox_iou`` with ``xywh=False``): every
  height carries eps, h = max(y2 - y1, 0) + eps, in the areas (so U = w h + w' h' - I and
  IoU = I / (U + eps) as ultralytics' ``union = w1 h1 + w2 h2 - inter + eps``) and in CIoU's v;
  GIoU (C - U) / (C + eps) (ultralytics' ``(c_area - union) / c_area`` with
  c_area = C + eps); c2, beta as above.  Kinds / metrics iou, giou, diou, ciou.  (Its centre
  form ``xywh=True`` has no eps in the heights: convention ``fastloss`` with fmt cxcywh, equal
  up to the rounding of the corners.)
* ``mmdet`` (mmdetection 3.3 ``structures/bbox/bbox_overlaps.py``, ``models/losses/iou_loss.py``):

  - iou, log_iou, giou (``bbox_overlaps``, ``iou_loss``, ``giou_loss``) and the metrics iou, iof,
    giou: U = max(S, eps), IoU = I / U; GIoU's penalty (max(C, eps) - U) / max(C, eps); iof
    I / max(area(a), eps) (max ties split the gradient);
  - diou: as fastloss (``diou_loss``: IoU = I / (S + eps), rho2 / (c2 + eps));
  - siou (``siou_loss``; ``power`` must be 1): IoU = I / (S + eps); sx, sy = target centre -
    prediction centre + eps; angle = cos(2 asin(sin_alpha) - pi/2) = 2 |sx| |sy| / (sx^2 + sy^2)
    (either branch of mmdetection's sin_alpha threshold gives this; 0 at sx = sy = 0, mmdetection
    NaN); gamma = angle - 2 with ``neg_gamma`` (the paper's sign), 2 - angle without;
    distance = 2 - exp(gamma (sx / cw')^2) - exp(gamma (sy / ch')^2), cw' = max(cw, eps) (derivative
    1 at the bound, torch.clamp's); shape = sum_{w,h} (1 - exp(-|w_p - w_t| / max(w_p, w_t)))^4
    with heights h + eps (0 for two zero widths, mmdetection NaN); loss
    1 - clamp(IoU - (distance + shape) / 2, -1, 1), zero gradient strictly outside;
  - ciou (``ciou_loss``): IoU = I / (S + eps), c2 + eps, v = 4/pi^2 (atan2(w_t, h_t + eps) -
    atan2(w_p, h_p + eps))^2 (eps in v's heights only, not in the areas),
    beta = [IoU > 0.5] v / (1 - IoU + v) (constant in the backward; 0 where 1 - IoU + v = 0,
    mmdetection NaN), and the loss 1 - clamp(CIoU, -1, 1), i.e. clamped to [0, 2] with zero
    gradient strictly outside (the ``ciou`` metric is clamp(CIoU, -1, 1)).

  - extended_iou, bounded_iou: as above (``eiou_loss``, ``bounded_iou_loss`` summed over the 4
    coordinates).

  Kinds iou, log_iou, giou, diou, ciou, siou, extended_iou, bounded_iou; metrics iou, iof, giou, diou, ciou.  mmdetection
  multiplies signed extents (an inverted box has a negative area); fastloss keeps inverted
  boxes at zero area.
* ``torchvision_matrix`` (torchvision 0.29 ``ops/boxes.py`` matrices, metrics only): IoU = I / S
  (``box_iou``), GIoU's penalty (C - S) / C (``generalized_box_iou``), both 0 where their
  denominator is 0 (torchvision: NaN); ``distance_box_iou`` / ``complete_box_iou``: that
  eps-free IoU with c2 + eps and beta = v / (1 - IoU + v + eps).  Metrics iou, giou, diou, ciou.

Combinations outside these lists raise ValueError in the public functions.

Derivative conventions at kinks (the kernels use the same).  They are the ones torch's
autograd gives through torchvision's loss formulas wherever those are finite, so a degenerate
prediction gets torchvision's descent direction:

* widths / heights and the enclosing box's extents are clamped at 0 (inverted boxes have zero
  area) with derivative 1 at the bound, as torchvision's unclamped x2 - x1 has: a collapsed
  prediction (zero width or height) still gets the gradient that grows it back (GIoU of [10, 10, 10, 20] against
  [0, 0, 20, 30]: loss 1, gradient [+1/60, 0, -1/60, 0], as torchvision);
* the intersection is ``relu(iw) * relu(ih)`` with relu'(0) = 0: no gradient through it unless
  the boxes overlap with positive area (torchvision's mask in its losses; its matrix functions
  clamp instead, which differs only for exactly touching boxes);
* min / max are ``torch.minimum`` / ``torch.maximum``: ties split the gradient in halves, a NaN
  in either argument propagates;
* |x|'(0) = 0, sqrt'(0) = 0, (x^p)'(0) = 0, atan2'(0, 0) = 0: the finite limits where
  torchvision's formulas give NaN (CIoU of a zero-height or point box).

A NaN in a box propagates to its loss and to every gradient component it touches.

Two groups of entry points:

* :func:`box_iou_loss`, :func:`box_iou`, :func:`box_iou_max` -- the public semantics as plain
  autograd PyTorch (what a user writes in eager mode; the benchmarks' eager baseline);
* :func:`loss_forward` / :func:`loss_backward` -- the kernels' calling convention
  (csrc/fastloss.cpp), the gradient through torch.autograd on a float copy.
"""
import concurrent.futures
import math

import torch

from fastloss.reference._reduce import reduce_loss

KINDS = ("iou", "log_iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "siou", "cdiou", "extended_iou", "bounded_iou")
METRICS = ("iou", "iof", "giou", "diou", "ciou")
FMTS = ("xyxy", "xywh", "cxcywh")
CONVENTIONS = ("fastloss", "ultralytics", "mmdet", "torchvision_matrix")
# the kinds (paired losses) and metrics each convention defines
CONVENTION_KINDS = {"fastloss": KINDS, "ultralytics": ("iou", "giou", "diou", "ciou"), "mmdet": ("iou", "log_iou", "giou", "diou", "ciou", "siou", "extended_iou", "bounded_iou"),
                    "torchvision_matrix": ()}
CONVENTION_METRICS = {"fastloss": METRICS, "ultralytics": ("iou", "giou", "diou", "ciou"), "mmdet": METRICS,
                      "torchvision_matrix": ("iou", "giou", "diou", "ciou")}

_FOUR_OVER_PI2 = 4.0 / math.pi ** 2


def to_xyxy(b, fmt):
    if fmt == "xyxy":
        return b.unbind(-1)
    x, y, w, h = b.unbind(-1)
    if fmt == "xywh":
        return x, y, x + w, y + h
    return x - w * 0.5, y - h * 0.5, x + w * 0.5, y + h * 0.5


_min = torch.minimum  # ties split the gradient in halves; NaN propagates from either argument
_max = torch.maximum


def _relu(x):
    """max(x, 0) with derivative 0 at 0 (the intersection's extents; torchvision's mask)."""
    return torch.relu(x)


def _clamp0(x):
    """max(x, 0) with derivative 1 at 0 (widths, heights, enclosing extents), written out:
    torch.clamp's derivative at the bound changed across torch releases; NaN propagates."""
    return torch.where(x < 0, torch.zeros_like(x), x)


def _safe_sqrt(x):
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _powp(x, p):
    """max(x, 0)^p with derivative 0 at 0 (finite for p < 1); NaN propagates (0^0 = 1)."""
    if p == 1:
        return x
    c = _relu(x)
    pos = c > 0
    below = torch.ones_like(c) if p == 0 else c * 0  # c * 0: 0, or NaN for NaN
    return torch.where(pos, torch.where(pos, c, torch.ones_like(c)) ** p, below)


def _safe_atan2(y, x):
    zero = (y == 0) & (x == 0)
    return torch.where(zero, torch.zeros_like(y), torch.atan2(y, torch.where(zero, torch.ones_like(x), x)))


def _ratio0(num, den):
    """num / den, 0 where den == 0 (the finite limit of the eps-free ratios; a NaN passes)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def _eps_max(x, eps):
    """max(x, eps) as mmdetection's torch.max(x, eps_tensor): ties split the gradient."""
    return _max(x, torch.full_like(x, eps))


# the union modes of the conventions (csrc/kernels/box_iou.h UnionMode): U + eps, max(U, eps), U
_PLUS_EPS, _MAX_EPS, _EXACT = 0, 1, 2


def _union_mode(convention, kind, metric):
    if convention == "torchvision_matrix":
        return _EXACT
    if convention == "mmdet" and kind in (("iou", "iof", "giou") if metric else ("iou", "log_iou", "giou")):
        return _MAX_EPS
    return _PLUS_EPS


def _geometry(a, b, eps, convention="fastloss", umode=_PLUS_EPS):
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    aw, ah = _clamp0(ax2 - ax1), _clamp0(ay2 - ay1)
    bw, bh = _clamp0(bx2 - bx1), _clamp0(by2 - by1)
    if convention == "ultralytics":  # h = y2 - y1 + eps
        ah, bh = ah + eps, bh + eps
    iw = _relu(_min(ax2, bx2) - _max(ax1, bx1))
    ih = _relu(_min(ay2, by2) - _max(ay1, by1))
    inter = iw * ih
    area_a = aw * ah
    union = area_a + bw * bh - inter
    if umode == _MAX_EPS:
        union = _eps_max(union, eps)
    iou = inter / (union + eps) if umode == _PLUS_EPS else _ratio0(inter, union)
    cw = _clamp0(_max(ax2, bx2) - _min(ax1, bx1))
    ch = _clamp0(_max(ay2, by2) - _min(ay1, by1))
    rho2 = ((ax1 + ax2) - (bx1 + bx2)) ** 2 * 0.25 + ((ay1 + ay2) - (by1 + by2)) ** 2 * 0.25
    return dict(aw=aw, ah=ah, bw=bw, bh=bh, inter=inter, area_a=area_a, union=union, iou=iou, cw=cw, ch=ch, rho2=rho2, umode=umode)


def _giou_penalty(g, eps):
    c = g["cw"] * g["ch"]
    if g["umode"] == _PLUS_EPS:
        return (c - g["union"]) / (c + eps)
    if g["umode"] == _MAX_EPS:
        c = _eps_max(c, eps)
    return _ratio0(c - g["union"], c)


def _aspect_v(g, convention="fastloss", eps=0.0):
    if convention == "mmdet":  # atan(w / (h + eps)), eps in v's heights only
        return _FOUR_OVER_PI2 * (_safe_atan2(g["bw"], g["bh"] + eps) - _safe_atan2(g["aw"], g["ah"] + eps)) ** 2
    return _FOUR_OVER_PI2 * (_safe_atan2(g["bw"], g["bh"]) - _safe_atan2(g["aw"], g["ah"])) ** 2


def _ciou_beta(g, v, convention, eps):
    """CIoU's trade-off weight (no gradient)."""
    with torch.no_grad():
        if convention == "mmdet":  # [IoU > 0.5] v / (1 - IoU + v); 0 where that is 0 / 0
            beta = _ratio0(v, 1 - g["iou"] + v)
            return torch.where(g["iou"] > 0.5, beta, torch.zeros_like(beta))
        return v / (1 - g["iou"] + v + eps)


def _clamp_grad0(x, lo, hi):
    """clamp(x, lo, hi) with torch.clamp's derivative (1 inside, bounds included; 0 outside);
    a NaN passes."""
    return torch.where(x > hi, torch.full_like(x, hi), torch.where(x < lo, torch.full_like(x, lo), x))


def _extended_iou(p, t, g, eps, smooth_point):
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = p, t
    ex1, ey1 = _min(px1, tx1), _min(py1, ty1)
    ix1, iy1, ix2, iy2 = _max(px1, tx1), _max(py1, ty1), _min(px2, tx2), _min(py2, ty2)
    xmin, ymin, xmax, ymax = _min(ix1, ix2), _min(iy1, iy2), _max(ix1, ix2), _max(iy1, iy2)
    inter = (ix2 - ex1) * (iy2 - ey1) + (xmin - ex1) * (ymin - ey1) - (ix1 - ex1) * (ymax - ey1) - (xmax - ex1) * (iy1 - ey1)
    x = 1 - inter / (g["aw"] * g["ah"] + g["bw"] * g["bh"] - inter + eps)
    low = (x < smooth_point).detach()
    return torch.where(low, 0.5 * x * x / smooth_point, x - 0.5 * smooth_point)


def bounded_iou_terms(pred, target, fmt="xyxy", eps=1e-3, beta=0.2):
    """Bounded IoU's 4 smoothed terms [l_x, l_y, l_w, l_h] per box, (..., 4) (mmdetection's
    per-coordinate ``bounded_iou_loss``); the kind "bounded_iou" is their sum."""
    p, t = to_xyxy(pred, fmt), to_xyxy(target, fmt)
    return torch.stack(_bounded_iou_terms(p, t, _geometry(p, t, eps), eps, beta), -1)


def _bounded_iou_terms(p, t, g, eps, beta):
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = p, t
    dx = ((tx1 + tx2) - (px1 + px2)) * 0.5
    dy = ((ty1 + ty2) - (py1 + py2)) * 0.5
    zero = torch.zeros_like(dx)
    terms = (1 - _max((g["bw"] - 2 * dx.abs()) / (g["bw"] + 2 * dx.abs() + eps), zero),
             1 - _max((g["bh"] - 2 * dy.abs()) / (g["bh"] + 2 * dy.abs() + eps), zero),
             1 - _min(g["bw"] / (g["aw"] + eps), g["aw"] / (g["bw"] + eps)),
             1 - _min(g["bh"] / (g["ah"] + eps), g["ah"] / (g["bh"] + eps)))
    return [torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta) for x in terms]


def _siou_mmdet(p, t, g, eps, neg_gamma):
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = p, t
    sx = ((tx1 + tx2) - (px1 + px2)) * 0.5 + eps
    sy = ((ty1 + ty2) - (py1 + py2)) * 0.5 + eps
    angle = _ratio0(2 * sx.abs() * sy.abs(), sx * sx + sy * sy)
    gam = angle - 2 if neg_gamma else 2 - angle
    cw = torch.where(g["cw"] < eps, torch.full_like(g["cw"], eps), g["cw"])  # torch.clamp(min=eps), derivative 1 at the bound
    ch = torch.where(g["ch"] < eps, torch.full_like(g["ch"], eps), g["ch"])
    dist = 2 - torch.exp(gam * (sx / cw) ** 2) - torch.exp(gam * (sy / ch) ** 2)
    ha, hb = g["ah"] + eps, g["bh"] + eps
    ow = _ratio0((g["aw"] - g["bw"]).abs(), _max(g["aw"], g["bw"]))
    oh = (ha - hb).abs() / _max(ha, hb)
    shape = (1 - torch.exp(-ow)) ** 4 + (1 - torch.exp(-oh)) ** 4
    return _clamp_grad0(1 - g["iou"] + 0.5 * (dist + shape), 0.0, 2.0)


KINDS_3D = ("iou", "giou", "diou")  # 3-D boxes: format xyxy, convention fastloss


def _paired_loss_3d(pred, target, kind, eps, power):
    """Per-box loss of 3-D boxes (..., 6) = (lower corner, upper corner), kinds KINDS_3D."""
    lo_p, hi_p, lo_t, hi_t = pred[..., :3], pred[..., 3:], target[..., :3], target[..., 3:]

    def volume(e):
        return e[..., 0] * e[..., 1] * e[..., 2]

    inter = volume(_relu(_min(hi_p, hi_t) - _max(lo_p, lo_t)))
    union = volume(_clamp0(hi_p - lo_p)) + volume(_clamp0(hi_t - lo_t)) - inter
    loss = 1 - _powp(inter / (union + eps), power)
    if kind == "iou":
        return loss
    c = _clamp0(_max(hi_p, hi_t) - _min(lo_p, lo_t))  # enclosing box
    if kind == "giou":
        cv = volume(c)
        return loss + _powp((cv - union) / (cv + eps), power)
    rho2 = (((lo_p + hi_p) - (lo_t + hi_t)) ** 2).sum(-1) * 0.25
    return loss + _powp(rho2 / ((c * c).sum(-1) + eps), power)


def paired_loss_elements(pred, target, kind="giou", fmt="xyxy", eps=1e-7, power=1.0, gamma=0.5, convention="fastloss"):
    """Per-box loss (shape pred.shape[:-1]) of the kinds and conventions documented above.
    ``gamma`` is the kind's extra parameter: focal_eiou's exponent, mmdet siou's neg_gamma
    (nonzero: True), extended_iou's smooth_point, bounded_iou's beta.  3-D boxes (..., 6):
    kinds KINDS_3D, fmt xyxy, convention fastloss (ValueError otherwise)."""
    if pred.shape[-1] == 6:
        if kind not in KINDS_3D or fmt != "xyxy" or convention != "fastloss":
            raise ValueError(f"3-D boxes (..., 6) support kinds {KINDS_3D} with fmt 'xyxy' and convention 'fastloss', "
                             f"got kind {kind!r}, fmt {fmt!r}, convention {convention!r}")
        return _paired_loss_3d(pred, target, kind, eps, power)
    p = to_xyxy(pred, fmt)
    t = to_xyxy(target, fmt)
    g = _geometry(p, t, eps, convention, _union_mode(convention, kind, False))
    if kind == "extended_iou":
        return _extended_iou(p, t, g, eps, gamma)
    if kind == "bounded_iou":
        lx, ly, lw, lh = _bounded_iou_terms(p, t, g, eps, gamma)
        return ((lx + ly) + lw) + lh
    if kind == "siou" and convention == "mmdet":
        return _siou_mmdet(p, t, g, eps, gamma != 0)
    iou = g["iou"]
    if kind == "log_iou":
        return -power * torch.log(torch.clamp(iou, min=eps))
    iou_p = _powp(iou, power)
    if kind == "iou":
        return 1 - iou_p
    cw, ch = g["cw"], g["ch"]
    if kind == "giou":
        return 1 - iou_p + _powp(_giou_penalty(g, eps), power)
    if kind == "cdiou":
        (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = p, t
        e = (_safe_sqrt((px1 - tx1) ** 2 + (py1 - ty1) ** 2) + _safe_sqrt((px2 - tx2) ** 2 + (py1 - ty1) ** 2)
             + _safe_sqrt((px2 - tx2) ** 2 + (py2 - ty2) ** 2) + _safe_sqrt((px1 - tx1) ** 2 + (py2 - ty2) ** 2))
        diag = _safe_sqrt(cw * cw + ch * ch + eps)
        return 1 - iou_p + _powp(e / (diag * 4), power)
    if kind == "siou":
        (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = p, t
        dx = ((tx1 + tx2) - (px1 + px2)) * 0.5
        dy = ((ty1 + ty2) - (py1 + py2)) * 0.5
        lam = 2 * dx.abs() * dy.abs() / (dx * dx + dy * dy + eps)
        gam = 2 - lam
        dist = 2 - torch.exp(-gam * (dx * dx / (cw * cw + eps))) - torch.exp(-gam * (dy * dy / (ch * ch + eps)))
        ow = (g["aw"] - g["bw"]).abs() / (_max(g["aw"], g["bw"]) + eps)
        oh = (g["ah"] - g["bh"]).abs() / (_max(g["ah"], g["bh"]) + eps)
        shape = (1 - torch.exp(-ow)) ** 4 + (1 - torch.exp(-oh)) ** 4
        return 1 - iou_p + _powp((dist + shape) * 0.5, power)
    c2 = cw * cw + ch * ch + eps
    diou = 1 - iou_p + _powp(g["rho2"] / c2, power)
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = _aspect_v(g, convention, eps)
        loss = diou + _powp(_ciou_beta(g, v, convention, eps) * v, power)
        return _clamp_grad0(loss, 0.0, 2.0) if convention == "mmdet" else loss
    eiou = diou + _powp((g["aw"] - g["bw"]) ** 2 / (cw * cw + eps), power) + _powp((g["ah"] - g["bh"]) ** 2 / (ch * ch + eps), power)
    if kind == "eiou":
        return eiou
    if kind == "focal_eiou":
        return _powp(iou, gamma) * eiou if gamma != 1 else iou * eiou
    raise ValueError(f"unknown kind {kind!r}")


def pair_metric(boxes1, boxes2, kind="iou", fmt="xyxy", eps=1e-7, convention="fastloss"):
    """Elementwise (broadcasting) metric of boxes1 and boxes2 (..., 4)."""
    a = to_xyxy(boxes1, fmt)
    b = to_xyxy(boxes2, fmt)
    g = _geometry(a, b, eps, convention, _union_mode(convention, kind, True))
    if kind == "iou":
        return g["iou"]
    if kind == "iof":
        area = _eps_max(g["area_a"], eps) if g["umode"] == _MAX_EPS else g["area_a"] + eps
        return g["inter"] / area
    cw, ch = g["cw"], g["ch"]
    if kind == "giou":
        return g["iou"] - _giou_penalty(g, eps)
    diou = g["iou"] - g["rho2"] / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    if kind == "ciou":
        v = _aspect_v(g, convention, eps)
        m = diou - _ciou_beta(g, v, convention, eps) * v
        return _clamp_grad0(m, -1.0, 1.0) if convention == "mmdet" else m
    raise ValueError(f"unknown kind {kind!r}")


# ------------------------------------------------------------------------- public semantics


def _box_weight(weight, pred):
    if weight is None:
        return None
    if weight.dim() > 0 and weight.shape == pred.shape and weight.shape != pred.shape[:-1]:
        return weight.mean(-1)  # per coordinate -> per box (mmdetection)
    return weight


def box_iou_loss(pred, target, kind="giou", reduction="mean", weight=None, avg_factor=None, fmt="xyxy", eps=1e-7, power=1.0, gamma=0.5, *,
                 convention="fastloss", neg_gamma=False, smooth_point=0.1):
    """Eager autograd reference of :func:`fastloss.box_iou_loss` (same arguments)."""
    if kind == "siou" and convention == "mmdet":
        gamma = 1.0 if neg_gamma else 0.0
    elif kind in ("extended_iou", "bounded_iou"):
        gamma = smooth_point
    loss = paired_loss_elements(pred, target, kind, fmt, eps, power, gamma, convention)
    w = _box_weight(weight, pred)
    if w is not None:
        loss = loss * w
    return reduce_loss(loss, reduction, avg_factor)


def box_iou(boxes1, boxes2, kind="iou", fmt="xyxy", aligned=False, eps=1e-7, *, convention="fastloss"):
    """Eager reference of :func:`fastloss.box_iou`: (..., N, 4) x (..., M, 4) -> (..., N, M)
    (``aligned``: (..., N, 4) x (..., N, 4) -> (..., N))."""
    if aligned:
        return pair_metric(boxes1, boxes2, kind, fmt, eps, convention)
    return pair_metric(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3), kind, fmt, eps, convention)


def box_iou_max(boxes1, boxes2, kind="iou", dim=-1, fmt="xyxy", eps=1e-7, *, convention="fastloss"):
    """Eager reference of :func:`fastloss.box_iou_max`: the matrix, then max over ``dim``
    (-1: over boxes2, one result per box of boxes1; -2: over boxes1, one per box of boxes2)."""
    m = box_iou(boxes1, boxes2, kind, fmt, False, eps, convention=convention)
    return m.max(dim=dim)


# ------------------------------------------------------------------------- kernel convention


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autograd_vjp(fn, inputs, cotangent):
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in inputs]
        out = fn(*xs)
        if not out.requires_grad:
            return None
        grads = torch.autograd.grad(out, xs, cotangent(out), allow_unused=True)
        return out.detach(), grads


def _value_and_vjp(fn, inputs, cotangent):
    """fn(*inputs) and its vector-Jacobian product with cotangent(output), by torch.autograd.

    Inside a custom-op kernel the autograd dispatch keys may be excluded (thread-local state
    of the dispatcher, e.g. under AOT dispatch or opcheck), so nothing would be recorded: the
    same computation then runs on a helper thread, whose dispatcher state is clean."""
    result = _autograd_vjp(fn, inputs, cotangent)
    if result is None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            result = pool.submit(_autograd_vjp, fn, inputs, cotangent).result()
    return result


def _loss_and_grad(pred, target, weight, kind, fmt, conv, eps, power, gamma, need_grad):
    acc = _compute_dtype(pred.dtype)
    p = pred.detach().to(acc)
    t = target.detach().to(acc)

    def fn(x):
        loss = paired_loss_elements(x, t, kind, fmt, eps, power, gamma, conv)
        return loss * weight.to(acc) if weight is not None else loss

    if not need_grad:
        return fn(p), None
    loss, (grad,) = _value_and_vjp(fn, (p,), torch.ones_like)
    return loss, grad + (loss * 0)[:, None]  # NaN policy: a NaN loss reaches all 4 components


TERMS = 3  # the kernels' reduction code of bounded_iou's per-term output (n, 4)


def _terms_and_grad(pred, target, weight, fmt, eps, beta, up):
    """Bounded IoU's (n, 4) terms times the box weight; with ``up`` (n, 4) also the vjp."""
    acc = _compute_dtype(pred.dtype)
    t = target.detach().to(acc)

    def fn(x):
        terms = bounded_iou_terms(x, t, fmt, eps, beta)
        return terms * weight.to(acc)[:, None] if weight is not None else terms

    if up is None:
        return fn(pred.detach().to(acc)), None
    terms, (grad,) = _value_and_vjp(fn, (pred.detach().to(acc),), lambda out: up.to(acc))
    return terms, grad + (terms.sum(1) * 0)[:, None]  # NaN policy: a NaN term reaches all 4 components


def loss_forward(pred, target, weight, kind, fmt, conv, eps, power, gamma, reduction, with_grad):
    """Kernel convention: pred/target (n, 4) or 3-D (n, 6); weight None or (n,); returns (loss, cache).
    Reduction TERMS (kind bounded_iou): the (n, 4) terms in pred's dtype, no cache."""
    acc = _compute_dtype(pred.dtype)
    if reduction == TERMS:
        return _terms_and_grad(pred, target, weight, FMTS[fmt], eps, gamma, None)[0].to(pred.dtype), pred.new_empty((0,), dtype=acc)
    loss, grad = _loss_and_grad(pred, target, weight, KINDS[kind], FMTS[fmt], CONVENTIONS[conv], eps, power, gamma, with_grad)
    cache = grad if with_grad else pred.new_empty((0,), dtype=acc)
    if reduction == 0:
        return loss.to(pred.dtype), cache
    total = loss.sum(dtype=acc)
    return (total / max(pred.shape[0], 1) if reduction == 2 else total), cache  # mean of nothing: 0


def loss_backward(grad, pred, target, weight, kind, fmt, conv, eps, power, gamma, reduction):
    acc = _compute_dtype(pred.dtype)
    if reduction == TERMS:
        return _terms_and_grad(pred, target, weight, FMTS[fmt], eps, gamma, grad)[1].to(pred.dtype)
    _, g = _loss_and_grad(pred, target, weight, KINDS[kind], FMTS[fmt], CONVENTIONS[conv], eps, power, gamma, True)
    if reduction == 0:
        g = g * grad.to(acc)[:, None]
    else:
        g = g * (grad / max(pred.shape[0], 1) if reduction == 2 else grad)
    return g.to(pred.dtype)


def _metric_of(b1, b2, kind, fmt, conv, eps, aligned):
    return box_iou(b1, b2, METRICS[kind], FMTS[fmt], aligned, eps, convention=CONVENTIONS[conv])


def matrix_forward(b1, b2, kind, fmt, conv, eps, aligned):
    """Kernel convention: b1 (B, N, 4), b2 (B, M, 4) -> (B, N, M) or (B, N) (aligned), input dtype."""
    acc = _compute_dtype(b1.dtype)
    return _metric_of(b1.to(acc), b2.to(acc), kind, fmt, conv, eps, aligned).to(b1.dtype)


def matrix_backward(grad, b1, b2, kind, fmt, conv, eps, aligned):
    acc = _compute_dtype(b1.dtype)
    up = grad.to(acc)
    m, (g1, g2) = _value_and_vjp(lambda x1, x2: _metric_of(x1, x2, kind, fmt, conv, eps, aligned), (b1.to(acc), b2.to(acc)),
                                 lambda out: up)
    g1 = torch.zeros_like(b1, dtype=acc) if g1 is None else g1
    g2 = torch.zeros_like(b2, dtype=acc) if g2 is None else g2
    # NaN policy: a NaN metric (or upstream value) reaches every gradient component of both boxes
    carrier = up * m * 0
    if aligned:
        g1, g2 = g1 + carrier[..., None], g2 + carrier[..., None]
    else:
        g1, g2 = g1 + carrier.sum(2)[..., None], g2 + carrier.sum(1)[..., None]
    return g1.to(b1.dtype), g2.to(b2.dtype)


def max_forward(b1, b2, kind, fmt, conv, eps, dim):
    """Kernel convention of the fused max: dim 1 -> max over boxes2 (B, N); 0 -> over boxes1 (B, M)."""
    m = matrix_forward(b1, b2, kind, fmt, conv, eps, False)
    d = 2 if dim == 1 else 1
    if m.shape[d] == 0:  # nothing to reduce (the op only lets this through when there are no results either)
        shape = m.shape[:d] + m.shape[d + 1:]
        return m.new_empty(shape), torch.empty(shape, dtype=torch.int64, device=m.device)
    return m.max(dim=d)
