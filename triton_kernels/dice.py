"""Dice / Tversky / Jaccard (+ fused cross entropy) in Triton: the two passes of
csrc/kernels/dice.h over (N, C, S) logits read in place (channel-first).

Each program owns one (image n, spatial block) tile of [BLOCK_C >= C, BLOCK_S] logits, so the
softmax over C is computed in registers from one read of the tile.  Above MAX_TILE_C classes
the class axis is walked in chunks of CHUNK's BLOCK_C instead (any C; the partials stay
3 C / BLOCK_S per pixel), and each pass re-reads the chunks -- pass 1 twice, pass 2 three times
for softmax.  Either way the softmax is the row-wise engine's online softmax
(rowwise._softmax_step: the one tile is its single chunk), its cross entropy the engine's
dense_cross_entropy and its CE gradient the engine's grad_elem.
  pass 1: per-(image, block, class) fp32 (fp64 for fp64) partial sums of I, P', G' (+ per
          (image, block) CE sum and count), written to a partials buffer and added by one
          torch.sum over the block axis: deterministic, no atomics;
  pass 2: dL/dlogits through the softmax/sigmoid Jacobian (softmax recomputed), in input's
          dtype.
SOFT: the soft-label sums h(p, g) = (|p| + |g| - |p - g|) / 2, |p|, |g| and their derivatives
(csrc/kernels/dice.h: soft_inter, dloss_dp).
Integer label maps (uint8/int32/int64) are compared with the class index in registers (no
one-hot).  Out-of-range labels are not checked here (no host sync): they match no class.
"""
import torch
import triton
import triton.language as tl

from fastloss import _backend
from fastloss.ops._common import reduced_dtype
from fastloss.triton_kernels import _math
from fastloss.triton_kernels import rowwise as _rowwise

TILE = 4096  # elements per program (BLOCK_C * BLOCK_S)
MAX_TILE_C = 512  # classes one tile holds whole; above, the kernels walk the class axis in chunks
CHUNK = (128, 32)  # (BLOCK_C, BLOCK_S) of the chunked kernels


@triton.jit
def _sgn(x):
    """sgn x in {-1, 0, 1}, 0 at 0 and at NaN (torch.sign: the derivative of |x| autograd uses)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _soft_inter(p, g):
    """h(p, g) = (|p| + |g| - |p - g|) / 2 as min(|p|, |g|) where p and g have the same strict
    sign, else 0: as written |p| + |g| rounds a small operand away and the difference cancels
    (fp32 p = 1e-8, g = 1 gives 0); the min is exact.  NaN in p or g (or p = -g = +-inf) gives NaN."""
    ap = tl.abs(p)
    ag = tl.abs(g)
    mn = tl.where(ag < ap, ag, ap)
    same = ((p > 0) & (g > 0)) | ((p < 0) & (g < 0))
    h = tl.where(same, mn, 0.0)
    s = p + g
    return tl.where(s != s, s, h)



@triton.jit
def _pixels(t_ptr, n, s, S, ignore_index, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr):
    """The label of each pixel s of image n (0 for float targets) and the pixel mask mp (in the
    image, not ignored: the CE term's pixels)."""
    smask = s < S
    if LABELS:
        lab = tl.load(t_ptr + n.to(tl.int64) * S + s, mask=smask, other=0).to(tl.int64)
        mp = smask
        if HAS_IGNORE:
            mp = mp & (lab != ignore_index)
    else:
        lab = tl.zeros_like(s).to(tl.int64)
        mp = smask
    return lab, mp


@triton.jit
def _logits(x_ptr, n, c, s, C, S, ACT: tl.constexpr, COMPUTE: tl.constexpr):
    """The [BLOCK_C, BLOCK_S] logits of classes c x pixels s of image n (-inf on padded classes for
    softmax: no term of it), their offsets, valid (in the tensor) and cmask."""
    cmask = c < C
    valid = cmask[:, None] & (s < S)[None, :]
    offs = n.to(tl.int64) * C * S + c[:, None].to(tl.int64) * S + s[None, :]
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(COMPUTE)
    if ACT == 2:
        x = tl.where(cmask[:, None], x, float("-inf"))
    return x, offs, valid, cmask


@triton.jit
def _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
          COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile of classes c x pixels s: _logits, target g, element mask m, offsets, valid, cmask."""
    x, offs, valid, cmask = _logits(x_ptr, n, c, s, C, S, ACT, COMPUTE)
    if LABELS:
        if ACT != 2 and BLOCK_C == 1:
            g = (lab[None, :] == 1).to(COMPUTE) + tl.zeros_like(x)
        else:
            # a padded class (c >= C) never matches: an out-of-range label in [C, BLOCK_C) matches no class
            g = ((lab[None, :] == c[:, None]) & cmask[:, None]).to(COMPUTE)
        m = (mp[None, :] & cmask[:, None]).to(COMPUTE)
    else:
        g = tl.load(t_ptr + offs, mask=valid, other=0.0).to(COMPUTE)
        mv = valid
        if HAS_IGNORE:
            mv = mv & (g != ignore_index)
        m = mv.to(COMPUTE)
        g = tl.where(mv, g, 0.0)
    return x, g, m, offs, valid, cmask


@triton.jit
def _activation(x, ACT: tl.constexpr):
    """sigmoid(x) (ACT 1) or x itself (ACT 0: probabilities)."""
    if ACT == 1:
        p = 1.0 / (1.0 + _math.exp(-x))
    else:
        p = x
    return p


@triton.jit
def _softmax_finish(m, rest):
    """The softmax's reference point ref (m, 0 while every logit is -inf), Z = 1 + rest and
    rest from the online state of _rowwise._softmax_step.  A pixel whose max is not finite
    (every logit -inf, or a +inf logit) gets rest = Z = NaN: a NaN softmax and CE for every
    class."""
    rest = tl.where((m == float("-inf")) | (m == float("inf")), float("nan"), rest)
    return _rowwise._finite_or_zero(m), 1.0 + rest, rest


@triton.jit
def _softmax_stats(x_ptr, n, s, C, S, COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """The softmax statistics of pixels s over the class chunks, by the row-wise engine's online
    softmax (rowwise._softmax_step): ref, Z, rest (_softmax_finish) and the first argmax amax."""
    m = tl.full([BLOCK_S], float("-inf"), COMPUTE)
    rest = tl.zeros([BLOCK_S], COMPUTE)
    amax = tl.zeros([BLOCK_S], tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x, offs, valid, cmask = _logits(x_ptr, n, c, s, C, S, 2, COMPUTE)
        m, rest, amax, _, _ = _rowwise._softmax_step(x, c, m, rest, amax, 0)
    ref, z, rest = _softmax_finish(m, rest)
    return ref, z, rest, amax


@triton.jit
def _class_sums(p, g, m, valid, SQUARED: tl.constexpr, SOFT: tl.constexpr):
    """Per-class sums over the tile's pixels of I, P', G' (csrc/kernels/dice.h); masked lanes add
    exactly 0 (p of a padded class is 0, g is 0; where, not * m, for NaN-free padding)."""
    if SOFT:
        inter = tl.sum(tl.where(valid, m * _soft_inter(p, g), 0.0), axis=1)
        psum = tl.sum(tl.where(valid, m * tl.abs(p), 0.0), axis=1)
        gsum = tl.sum(m * tl.abs(g), axis=1)
    else:
        inter = tl.sum(tl.where(valid, m * p * g, 0.0), axis=1)
        if SQUARED:
            psum = tl.sum(tl.where(valid, m * p * p, 0.0), axis=1)
            gsum = tl.sum(m * g * g, axis=1)
        else:
            psum = tl.sum(tl.where(valid, m * p, 0.0), axis=1)
            gsum = tl.sum(m * g, axis=1)
    return inter, psum, gsum


@triton.jit
def _store_sums(part_ptr, n, blk, NBLK, C, c, cmask, inter, psum, gsum):
    out = part_ptr + ((n.to(tl.int64) * NBLK + blk) * C + c) * 3
    tl.store(out + 0, inter, mask=cmask)
    tl.store(out + 1, psum, mask=cmask)
    tl.store(out + 2, gsum, mask=cmask)


@triton.jit
def _store_ce(cepart_ptr, n, blk, NBLK, ce, cnt):
    """The program's CE partial: [sum of the CE terms, their count]."""
    cout = cepart_ptr + (n.to(tl.int64) * NBLK + blk) * 2
    tl.store(cout, ce)
    tl.store(cout + 1, cnt)


@triton.jit
def _binary_ce(x, g):
    """BCE with logits per element: max(x, 0) - x g + log1p(exp(-|x|)), the linear part 0 (not
    inf * 0) where g makes it so."""
    lin = tl.where(x >= 0, tl.where(g == 1.0, 0.0, x * (1.0 - g)), tl.where(g == 0, 0.0, -x * g))
    return lin + _math.log1p(_math.exp(-tl.abs(x)))


@triton.jit
def _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED: tl.constexpr, SOFT: tl.constexpr, COMPUTE: tl.constexpr):
    """dL/dp of the tile's elements from the per-(image, class) coefficients (a, b) the host
    formed from the sums (csrc/kernels/dice.h dloss_dp)."""
    cb = coef_ptr + (n.to(tl.int64) * C + c) * 3
    a = tl.load(cb, mask=cmask, other=0.0).to(COMPUTE)
    b = tl.load(cb + 1, mask=cmask, other=0.0).to(COMPUTE)
    if SOFT:
        # dh/dp = (sgn p - sgn(p - g)) / 2, d|p|/dp = sgn p
        sp = _sgn(p)
        d = m * (a[:, None] * (sp - _sgn(p - g)) * 0.5 + b[:, None] * sp)
    elif SQUARED:
        d = m * (a[:, None] * g + b[:, None] * 2.0 * p)
    else:
        d = m * (a[:, None] * g + b[:, None])
    return d


@triton.jit
def _softmax_grad(p, d, dot, g, gs, m, is_amax, others, e, WITH_CE: tl.constexpr):
    """dL/dx through the softmax Jacobian, p (d - sum_c p_c d_c), plus the CE term
    e ((sum g) p - g): its 1 - p of the (first) argmax class is the sum of the other classes' p
    (no cancellation for a confident pixel; padded classes have p = 0)."""
    r = p * (d - dot[None, :])
    if WITH_CE:
        q = tl.where(is_amax, others[None, :], 1.0 - p)
        r = r + e * m * _rowwise._grad_elem(gs[None, :], 0.0, 1.0, g, p, q)  # cross_entropy_row()
    return r


@triton.jit
def _pointwise_grad(x, p, g, m, d, e, ACT: tl.constexpr, WITH_CE: tl.constexpr):
    """dL/dx of a sigmoid (ACT 1, + the BCE term e (p - g)) or of probabilities (ACT 0)."""
    if ACT == 1:
        # p (1 - p) without cancellation: sigmoid(x) sigmoid(-x)
        sn = 1.0 / (1.0 + _math.exp(x))
        r = p * sn * d
        if WITH_CE:
            r = r + e * m * ((1.0 - g) * p - g * sn)  # p - g, exact for hard targets
    else:
        r = d
    return r


@triton.jit
def _ce_coef(cecoef_ptr, n, COMPUTE: tl.constexpr, WITH_CE: tl.constexpr):
    if WITH_CE:
        e = tl.load(cecoef_ptr + n.to(tl.int64) * 2).to(COMPUTE)
    else:
        e = tl.zeros([], COMPUTE)
    return e


# ----------------------------------------------------------------------------- one tile holds every class


@triton.jit
def _tile(x_ptr, t_ptr, C, S, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr, COMPUTE: tl.constexpr,
          BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """This program's (image n, pixel block blk) tile with every class, and its p: the softmax over
    the tile's class axis -- with its ref, Z, rest and first argmax amax (_softmax_finish) -- or
    _activation."""
    n = tl.program_id(1)
    blk = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    lab, mp = _pixels(t_ptr, n, s, S, ignore_index, LABELS, HAS_IGNORE)
    x, g, m, offs, valid, cmask = _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT, LABELS, HAS_IGNORE, COMPUTE,
                                        BLOCK_C)
    if ACT == 2:  # the whole class axis as one chunk of the engine's online softmax
        mx, rest, amax, ex, _ = _rowwise._softmax_step(x, c, tl.full([BLOCK_S], float("-inf"), COMPUTE), tl.zeros([BLOCK_S], COMPUTE),
                                                       tl.zeros([BLOCK_S], tl.int32), 0)
        ref, z, rest = _softmax_finish(mx, rest)
        p = ex / z[None, :]
    else:
        p = _activation(x, ACT)
        ref = tl.zeros([BLOCK_S], COMPUTE)
        z = ref
        rest = ref
        amax = tl.zeros([BLOCK_S], tl.int32)
    return n, blk, c, x, p, g, m, mp, ref, z, rest, amax, offs, valid, cmask


@triton.jit
def _sums_kernel(x_ptr, t_ptr, part_ptr, cepart_ptr, C, S, NBLK, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr,
                 HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, WITH_CE: tl.constexpr, COMPUTE: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SOFT: tl.constexpr = False):
    n, blk, c, x, p, g, m, mp, ref, z, rest, amax, offs, valid, cmask = _tile(x_ptr, t_ptr, C, S, ignore_index, ACT, LABELS,
                                                                              HAS_IGNORE, COMPUTE, BLOCK_C, BLOCK_S)
    inter, psum, gsum = _class_sums(p, g, m, valid, SQUARED, SOFT)
    _store_sums(part_ptr, n, blk, NBLK, C, c, cmask, inter, psum, gsum)
    if WITH_CE:
        if ACT == 2:
            # CE = sum_c g_c (ref - x_c) + (sum_c g_c) log1p(rest), rest = the other classes'
            # share of the softmax sum: no cancellation for a confident pixel; 0 for classes
            # without target mass, even at x = -inf (a masked logit)
            gd = tl.sum(_rowwise._dense_term(g, ref[None, :], x), axis=0)
            ce_px = _rowwise._dense_cross_entropy(gd, tl.sum(g, axis=0), _math.log1p(rest))
            ce = tl.sum(tl.where(mp, ce_px, 0.0), axis=0)
            cnt = tl.sum(mp.to(COMPUTE), axis=0)
        else:
            ce = tl.sum(tl.sum(tl.where(m > 0, _binary_ce(x, g), 0.0), axis=1), axis=0)
            cnt = tl.sum(tl.sum(m, axis=1), axis=0)
        _store_ce(cepart_ptr, n, blk, NBLK, ce, cnt)


@triton.jit
def _grad_kernel(x_ptr, t_ptr, coef_ptr, cecoef_ptr, out_ptr, C, S, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr,
                 HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, WITH_CE: tl.constexpr, COMPUTE: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SOFT: tl.constexpr = False):
    n, blk, c, x, p, g, m, mp, ref, z, rest, amax, offs, valid, cmask = _tile(x_ptr, t_ptr, C, S, ignore_index, ACT, LABELS,
                                                                              HAS_IGNORE, COMPUTE, BLOCK_C, BLOCK_S)
    e = _ce_coef(cecoef_ptr, n, COMPUTE, WITH_CE)
    if ACT == 2:
        d = _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED, SOFT, COMPUTE)
        is_amax = c[:, None] == amax[None, :]
        others = rest / z
        r = _softmax_grad(p, d, tl.sum(p * d, axis=0), g, tl.sum(g, axis=0), m, is_amax, others, e, WITH_CE)
    else:
        d = _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED, SOFT, COMPUTE)
        r = _pointwise_grad(x, p, g, m, d, e, ACT, WITH_CE)
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------- the class axis in chunks


@triton.jit
def _sums_chunked_kernel(x_ptr, t_ptr, part_ptr, cepart_ptr, C, S, NBLK, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr,
                         HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, WITH_CE: tl.constexpr, COMPUTE: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SOFT: tl.constexpr = False):
    """_sums_kernel for C > MAX_TILE_C: softmax statistics in one sweep over the chunks, then a
    sweep that forms each chunk's p and stores its classes' sums."""
    n = tl.program_id(1)
    blk = tl.program_id(0)
    s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    lab, mp = _pixels(t_ptr, n, s, S, ignore_index, LABELS, HAS_IGNORE)
    zero = tl.zeros([BLOCK_S], COMPUTE)
    if ACT == 2:
        ref, z, rest, amax = _softmax_stats(x_ptr, n, s, C, S, COMPUTE, BLOCK_C, BLOCK_S)
    gd = zero  # softmax CE: sum_c g_c (ref - x_c), sum_c g_c
    gs = zero
    bce = zero  # sigmoid CE: the sums over the classes of BCE and of the element mask
    cnt = zero
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x, g, m, offs, valid, cmask = _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT, LABELS, HAS_IGNORE,
                                            COMPUTE, BLOCK_C)
        if ACT == 2:
            p = _math.exp(x - ref[None, :]) / z[None, :]
        else:
            p = _activation(x, ACT)
        inter, psum, gsum = _class_sums(p, g, m, valid, SQUARED, SOFT)
        _store_sums(part_ptr, n, blk, NBLK, C, c, cmask, inter, psum, gsum)
        if WITH_CE:
            if ACT == 2:
                gd = gd + tl.sum(_rowwise._dense_term(g, ref[None, :], x), axis=0)
                gs = gs + tl.sum(g, axis=0)
            else:
                bce = bce + tl.sum(tl.where(m > 0, _binary_ce(x, g), 0.0), axis=0)
                cnt = cnt + tl.sum(m, axis=0)
    if WITH_CE:
        if ACT == 2:
            ce = tl.sum(tl.where(mp, _rowwise._dense_cross_entropy(gd, gs, _math.log1p(rest)), 0.0), axis=0)
            cnt_all = tl.sum(mp.to(COMPUTE), axis=0)
        else:
            ce = tl.sum(bce, axis=0)
            cnt_all = tl.sum(cnt, axis=0)
        _store_ce(cepart_ptr, n, blk, NBLK, ce, cnt_all)


@triton.jit
def _grad_chunked_kernel(x_ptr, t_ptr, coef_ptr, cecoef_ptr, out_ptr, C, S, ignore_index, ACT: tl.constexpr, LABELS: tl.constexpr,
                         HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, WITH_CE: tl.constexpr, COMPUTE: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SOFT: tl.constexpr = False):
    """_grad_kernel for C > MAX_TILE_C.  Softmax: three sweeps over the chunks (statistics;
    sum_c p_c d_c and sum_c g_c; the gradient); sigmoid / probabilities: one."""
    n = tl.program_id(1)
    blk = tl.program_id(0)
    s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    lab, mp = _pixels(t_ptr, n, s, S, ignore_index, LABELS, HAS_IGNORE)
    e = _ce_coef(cecoef_ptr, n, COMPUTE, WITH_CE)
    if ACT == 2:
        ref, z, rest, amax = _softmax_stats(x_ptr, n, s, C, S, COMPUTE, BLOCK_C, BLOCK_S)
        dot = tl.zeros([BLOCK_S], COMPUTE)
        gs = tl.zeros([BLOCK_S], COMPUTE)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            x, g, m, offs, valid, cmask = _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT, LABELS, HAS_IGNORE,
                                                COMPUTE, BLOCK_C)
            p = _math.exp(x - ref[None, :]) / z[None, :]
            dot = dot + tl.sum(p * _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED, SOFT, COMPUTE), axis=0)
            gs = gs + tl.sum(g, axis=0)
        others = rest / z
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            x, g, m, offs, valid, cmask = _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT, LABELS, HAS_IGNORE,
                                                COMPUTE, BLOCK_C)
            p = _math.exp(x - ref[None, :]) / z[None, :]
            d = _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED, SOFT, COMPUTE)
            is_amax = c[:, None] == amax[None, :]
            r = _softmax_grad(p, d, dot, g, gs, m, is_amax, others, e, WITH_CE)
            tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=valid)
    else:
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            x, g, m, offs, valid, cmask = _load(x_ptr, t_ptr, n, c, s, C, S, lab, mp, ignore_index, ACT, LABELS, HAS_IGNORE,
                                                COMPUTE, BLOCK_C)
            p = _activation(x, ACT)
            d = _dloss_dp(p, g, m, c, cmask, coef_ptr, n, C, SQUARED, SOFT, COMPUTE)
            r = _pointwise_grad(x, p, g, m, d, e, ACT, WITH_CE)
            tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=valid)


def _meta(input, target, activation, squared, soft, ignore_index):
    N, C, S = input.shape
    if N > 65535:  # one grid row per image: CUDA's grid y-dimension limit (the CUDA kernels check it too)
        raise ValueError(f"fastloss dice (Triton): batch size N must be <= 65535, got {N}")
    block_c = triton.next_power_of_2(max(C, 1))
    chunked = block_c > MAX_TILE_C
    if chunked:
        block_c, block_s = CHUNK
    else:
        block_s = max(1, TILE // block_c)
    block_s = min(block_s, max(16, triton.next_power_of_2(max(S, 1))))
    meta = dict(ACT=activation, LABELS=not target.is_floating_point(), HAS_IGNORE=ignore_index is not None, SQUARED=squared, SOFT=soft,
                COMPUTE=tl.float64 if input.dtype == torch.float64 else tl.float32, BLOCK_C=block_c, BLOCK_S=block_s)
    return N, C, S, triton.cdiv(S, block_s), chunked, meta


def forward(input, target, activation, squared, soft, ignore_index, with_ce):
    N, C, S, nblk, chunked, meta = _meta(input, target, activation, squared, soft, ignore_index)
    acc = reduced_dtype(input.dtype)
    part = torch.empty((N, nblk, C, 3), dtype=acc, device=input.device)
    cepart = torch.empty((N, nblk, 2) if with_ce else (1,), dtype=acc, device=input.device)
    ign = 0 if ignore_index is None else int(ignore_index)
    if N * C * S:
        (_sums_chunked_kernel if chunked else _sums_kernel)[(nblk, N)](input, target, part, cepart, C, S, nblk, ign, WITH_CE=with_ce, **meta)
        sums = part.sum(1)
        ce = cepart.sum(1) if with_ce else input.new_empty((0,), dtype=acc)
    else:
        sums = torch.zeros((N, C, 3), dtype=acc, device=input.device)
        ce = torch.zeros((N, 2), dtype=acc, device=input.device) if with_ce else input.new_empty((0,), dtype=acc)
    return sums, ce


def backward(grad_sums, grad_ce, input, target, activation, squared, soft, ignore_index):
    N, C, S, nblk, chunked, meta = _meta(input, target, activation, squared, soft, ignore_index)
    out = torch.empty_like(input)
    with_ce = grad_ce.numel() > 0
    ign = 0 if ignore_index is None else int(ignore_index)
    if out.numel():
        kernel = _grad_chunked_kernel if chunked else _grad_kernel
        kernel[(nblk, N)](input, target, grad_sums, grad_ce if with_ce else grad_sums, out, C, S, ign, WITH_CE=with_ce, **meta)
    return out


_backend.register("dice", "triton", forward, backward)
