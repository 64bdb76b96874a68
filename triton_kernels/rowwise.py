"""The row-wise (softmax) engine in Triton: one forward kernel (per-row losses, or three partial
sums per program; optionally the stored gradient) and one backward kernel (recomputing from the
inputs), specialised per loss and target by the constexprs ``LOSS`` / ``TARGET``.

The math is csrc/kernels/rowwise.h term for term (formulas, papers and parameter slots there;
the float64 spec is fastloss/reference/rowwise.py): a row is the C logits x_c (times s_in) of
one (image b, position s) of a (B, C, S) view; its target vector is a_c (class labels with
smoothing and class weights, probabilities, the two bins of a continuous value, or the
softmax of teacher logits), and with p = softmax(x), q = 1 - p,
    loss = finish_row(row statistics) * s_out
    dL/dx_k = [(U - (E + F) a_k) p_k - F a_k q_k] s_in s_out upstream
where (U, E, F) are per-row scalars of the loss (cross entropy: U = sum a, E = 0, F = 1).
Row statistics (:func:`_row_stats`): max m and its first index amax, rest = the sum of
exp(x_c - m) over c != amax (Z = 1 + rest: q at the argmax is rest / Z, log Z = log1p(rest),
no cancellation for a confident row), x at the label / bins, the dense-target sums dsum / dmass
/ dexp / ent, and the teacher's mz / restz / ez.

Online softmax: the class axis is read in chunks of BLOCK_C (any C up to the op's 2^24) and each chunk is
merged into the running state as the header says -- the old sums are rescaled by
exp(m_old - m_new), the old max's own term (1) joins rest when a chunk holds a strictly larger
max (the earlier chunk keeps amax on a tie), dsum shifts by dmass (m_new - m_old) (every term
>= 0: no cancellation).  ``_finish_row`` is the twin of the header's finish_row(); the second
loop over the chunks (``_grad_pass``) recomputes p_k, q_k and a_k and stores g_k.

Tiles and launch: a program owns BLOCK_S rows of one image b (a 1-D grid over B * cdiv(S,
BLOCK_S): B may exceed the 65535 of a grid's axis 1) and walks the classes in [BLOCK_S, BLOCK_C]
tiles loaded through the strides -- no permute, no contiguous copy.  The tile shape follows
the layout (:func:`_tile_shape`): rows adjacent (contiguous NCHW, class stride S) -> many rows,
few classes (TALL: 128 x 16, each class a 512 B contiguous segment); classes adjacent
(channels_last, (N, C)) -> few rows, wide chunks (WIDE: 4 x 512).  A (B, C, 1) input is walked
as (1, C, B) (csrc/kernels/rowwise.h's fold): its rows then share a tile.  Offsets are int64.

Determinism: reduction 1 writes one [loss, class weight, count] partial per program (its fixed
tree sum over BLOCK_S rows, in fp32 / fp64), added by one torch.sum; no atomics, so the same
inputs give the same bits.  No host sync: the backward reads the upstream gradient of the loss
sum through its pointer.

Bytes per element of the logits (fp32, class labels, no smoothing): forward 4 (read x), plus
4 + 4 with the stored gradient (read x again, write g in fp32); backward 4 + 4 (read x, write
g); per row 8 (label) + 4 (loss) or a partial per BLOCK_S rows.  Probabilities / teacher
logits add 4 per element to each pass.  NLL reads only x at the label in the forward.
Transcendentals come from fastloss.triton_kernels._math (libdevice on the GPU).  The scalar
parameters arrive in float64 (formed in double on the host, derived ones included) and are
rounded once to the compute dtype.
"""
import torch
import triton
import triton.language as tl

from fastloss.ops._common import reduced_dtype
from fastloss.triton_kernels import _math
from fastloss.triton_kernels.pointwise import _pow_q

# Codes shared with csrc/kernels/rowwise.h (Loss, Target) and fastloss/ops/rowwise.py.
CROSS_ENTROPY, NLL, SOFTMAX_FOCAL, POLY1_CROSS_ENTROPY, KL_DIV = range(5)
LABELS, PROBS, BINS, TEACHER = range(4)

TILE = 2048  # logits per [BLOCK_S, BLOCK_C] tile
TALL = (128, 16)  # (BLOCK_S, BLOCK_C) at most: rows adjacent in memory
WIDE = (4, 512)  # classes adjacent in memory

# ----------------------------------------------------------------------------- row setup and loads


@triton.jit
def _row_data(t_ptr, w_ptr, al_ptr, sw_ptr, row, rmask, C, ignore_index, alpha, hi, TARGET: tl.constexpr, HAS_W: tl.constexpr,
              HAS_ALPHA: tl.constexpr, HAS_SW: tl.constexpr, HAS_IGNORE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per row: valid (False: ignored / past S), the label y (int32, -1 where invalid), the left
    bin yl (bins, as COMPUTE), the class weight wy and focal alpha ay at the label, the sample
    weight r (0 where invalid), the bins' weights wl, wr."""
    zero = tl.zeros([BLOCK_S], COMPUTE)
    valid = rmask
    y = tl.full([BLOCK_S], -1, tl.int32)
    yl = zero
    wy = zero + 1.0
    ay = zero + alpha
    wl = zero
    wr = zero
    if TARGET == 0:
        lab = tl.load(t_ptr + row, mask=rmask, other=0).to(tl.int64)  # int64: a uint8 map vs a negative ignore_index
        valid = rmask & (lab >= 0) & (lab < C)  # an out-of-range label (unchecked CUDA rule) leaves its row out
        if HAS_IGNORE:
            valid = valid & (lab != ignore_index)
        y = tl.where(valid, lab, -1).to(tl.int32)
        if HAS_W:
            wy = tl.load(w_ptr + y, mask=valid, other=1.0).to(COMPUTE)
        if HAS_ALPHA:
            ay = tl.load(al_ptr + y, mask=valid, other=1.0).to(COMPUTE)
    elif TARGET == 2:
        # bins_of(): v clamped to [0, hi] (NaN stays NaN), yl = floor(v), wl = yl + 1 - v, wr = v - yl
        v = tl.load(t_ptr + row, mask=rmask, other=0.0).to(COMPUTE)
        v = tl.where(v < 0.0, 0.0, tl.where(v > hi, hi, v))
        yl = tl.floor(v)
        wl = (yl + 1.0) - v
        wr = v - yl
    r = zero + 1.0
    if HAS_SW:
        r = tl.load(sw_ptr + row, mask=rmask, other=0.0).to(COMPUTE)
    r = tl.where(valid, r, 0.0)
    return valid, y, yl, wy, ay, r, wl, wr


@triton.jit
def _dense_term(d, m, x):
    """dense_term(): d (m - x), 0 where d = 0 (also at a masked -inf logit)."""
    return tl.where(d == 0.0, 0.0, d * (m - x))


@triton.jit
def _dense_cross_entropy(dsum, dmass, log_z):
    """dense_cross_entropy(): sum_c d_c (lse - x_c) = dsum + dmass log Z -- the one softmax cross
    entropy of the project (the Dice family's CE term, triton_kernels/dice.py, uses it too)."""
    return dsum + dmass * log_z


@triton.jit
def _grad_elem(U, E, F, a, p, q):
    """grad_elem(): (U - (E + F) a) p - F a q; cross entropy: U = sum a, E = 0, F = 1."""
    return (U - (E + F) * a) * p - F * a * q


@triton.jit
def _load_tile(ptr, rows, c, stride_c, rmask, cmask, scale, COMPUTE: tl.constexpr):
    """A [BLOCK_S, BLOCK_C] tile of logits times ``scale``; -inf on the padded classes (no
    term of the softmax), 0 on the rows past S (finite, never stored)."""
    offs = rows[:, None] + c[None, :].to(tl.int64) * stride_c
    v = tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(COMPUTE) * scale
    return tl.where(cmask[None, :], v, float("-inf"))


@triton.jit
def _dense(t, w, cmask, keep, uniform, LOSS: tl.constexpr):
    """d_c of probabilities t: t (KL) or w_c ((1 - s) t_c + s / C); 0 on padded classes."""
    if LOSS == 4:
        d = t
    else:
        d = w[None, :] * (keep * t + uniform)
    return tl.where(cmask[None, :], d, 0.0)


@triton.jit
def _class_weight(w_ptr, c, cmask, HAS_W: tl.constexpr, COMPUTE: tl.constexpr):
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    else:
        w = tl.where(cmask, 1.0, 0.0).to(COMPUTE)
    return w


@triton.jit
def _finite_or_zero(m):
    # the exponentials' reference point: the running max, 0 while every logit so far is -inf
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _softmax_step(x, c, m, rest, amax, AXIS: tl.constexpr = 1):
    """One chunk of the online softmax -- the one softmax of the Triton kernels: this engine's
    rows (x and teacher logits) and the Dice family's pixels (triton_kernels/dice.py) both
    run on it.  x: a tile of logits (-inf on padded classes) whose class axis is AXIS (1 for
    this engine's [rows, classes] tiles, 0 for the Dice kernels' [classes, pixels] tiles), c
    its class indices; m, rest, amax: the running max, the sum of exp(x_c - m) over the classes
    other than the first argmax amax (Z = 1 + rest), from m = -inf, rest = 0 before the first
    chunk.  Returns the updated m, rest, amax, the chunk's exponentials e = exp(x - ref) and the
    rescale factor of the old sums exp(m - m_new) (1 when unchanged, also for -inf == -inf; 0 for
    the first chunk), with ref = m_new, or 0 while every logit so far is -inf (_finite_or_zero).
    The chunk's first index of its max (x == max: a NaN the hardware max skipped stays in the
    sums) takes amax only if strictly larger than m: the earlier chunk keeps it on a tie."""
    cm = tl.max(x, axis=AXIS)
    idx = tl.min(tl.where(x == tl.expand_dims(cm, AXIS), tl.expand_dims(c, 1 - AXIS), 2147483647), axis=AXIS)
    take = cm > m
    m_new = tl.where(take, cm, m)
    scale = tl.where(m == m_new, 1.0, _math.exp(m - m_new))
    e = _math.exp(x - tl.expand_dims(_finite_or_zero(m_new), AXIS))
    own = tl.expand_dims(take, AXIS) & (tl.expand_dims(c, 1 - AXIS) == tl.expand_dims(idx, AXIS))  # the new argmax's own term: not in rest
    rest = (rest + tl.where(take, 1.0, 0.0)) * scale + tl.sum(tl.where(own, 0.0, e), axis=AXIS)
    amax = tl.where(take, idx, amax)
    return m_new, rest, amax, e, scale


# ----------------------------------------------------------------------------- pass 1: row statistics


@triton.jit
def _row_stats(x_ptr, t_ptr, w_ptr, xrow, trow, rmask, y, yl, C, sxc, stc, keep, uniform, in_scale, LOSS: tl.constexpr,
               TARGET: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_S: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """The header's Stats of BLOCK_S rows, one online sweep over the classes."""
    zero = tl.zeros([BLOCK_S], COMPUTE)
    m = zero + float("-inf")
    rest = zero
    amax = tl.zeros([BLOCK_S], tl.int32)
    xa = zero
    xb = zero
    dsum = zero
    dmass = zero
    dexp = zero
    ent = zero
    mz = zero + float("-inf")
    restz = zero
    amaxz = amax  # the teacher's argmax: kept by _softmax_step, not used
    ez = zero
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        x = _load_tile(x_ptr, xrow, c, sxc, rmask, cmask, in_scale, COMPUTE)
        ref_old = _finite_or_zero(m)
        m, rest, amax, e, scale = _softmax_step(x, c, m, rest, amax)
        ref = _finite_or_zero(m)
        if TARGET == 0:
            xa = xa + tl.sum(tl.where(c[None, :] == y[:, None], x, 0.0), axis=1)
        if TARGET == 2:
            cf = c.to(COMPUTE)[None, :]
            xa = xa + tl.sum(tl.where(cf == yl[:, None], x, 0.0), axis=1)
            xb = xb + tl.sum(tl.where(cf == yl[:, None] + 1.0, x, 0.0), axis=1)
        if (TARGET == 0 and SMOOTH) or TARGET == 1:
            if TARGET == 0:  # smoothed labels: d_c = w_c
                d = _class_weight(w_ptr, c, cmask, HAS_W, COMPUTE)[None, :] + zero[:, None]
            else:
                t = tl.load(t_ptr + trow[:, None] + c[None, :].to(tl.int64) * stc, mask=rmask[:, None] & cmask[None, :],
                            other=0.0).to(COMPUTE)
                d = _dense(t, _class_weight(w_ptr, c, cmask, HAS_W, COMPUTE), cmask, keep, uniform, LOSS)
                if LOSS == 4:  # sum t log t (torch's xlogy: 0 at t = 0)
                    ent = ent + tl.sum(tl.where(t == 0.0, 0.0, t * _math.log(tl.where(t == 0.0, 1.0, t))), axis=1)
            # dense_term: d (m - x), 0 where d = 0 (also at a masked -inf logit); the old sum
            # moves to the new reference point by dmass (ref - ref_old) >= 0
            dsum = dsum + dmass * (ref - ref_old) + tl.sum(_dense_term(d, ref[:, None], x), axis=1)
            dmass = dmass + tl.sum(d, axis=1)
            dexp = dexp * scale + tl.sum(d * e, axis=1)
        if TARGET == 3:
            z = _load_tile(t_ptr, trow, c, stc, rmask, cmask, in_scale, COMPUTE)
            mz, restz, amaxz, ezc, scalez = _softmax_step(z, c, mz, restz, amaxz)
            # sum exp(z - mz) (z - x); padded classes out (-inf - -inf)
            # an underflowed rescale drops the old ez (+inf from a masked student class: not inf * 0)
            ez = tl.where(scalez == 0.0, 0.0, ez * scalez) + tl.sum(tl.where(cmask[None, :], _dense_term(ezc, z, x), 0.0), axis=1)
    return m, rest, amax, xa, xb, dsum, dmass, dexp, ent, mz, restz, ez


# ----------------------------------------------------------------------------- the losses


@triton.jit
def _finish_row(m, rest, amax, xa, xb, dsum, dmass, dexp, ent, mz, restz, valid, r, y, wy, ay, wl, wr, ez, keep, uniform, eps, gamma,
                eps_g1, out_scale, LOSS: tl.constexpr, TARGET: tl.constexpr, SMOOTH: tl.constexpr):
    """csrc/kernels/rowwise.h finish_row(): the row's loss (times s_out, 0 where not valid)
    and U, E, F of its gradient, 1 / Z, and Cy (the label class's coefficient for smoothed / Poly-1
    labels).  eps_g1 = eps (gamma + 1) (formed in double)."""
    # a +inf logit: NaN softmax and log Z (so NaN loss and gradient), as the header and torch
    m_inf = m == float("inf")
    inv_z = tl.where(m_inf, float("nan"), 1.0 / (1.0 + rest))
    log_z = tl.where(m_inf, float("nan"), _math.log1p(rest))
    zero = m * 0.0
    L = zero
    U = zero
    E = zero
    F = zero + 1.0
    Cy = zero
    if LOSS == 1:  # NLL over log-probabilities: L = -a_y x_y, g_k = -a_k
        L = -(r * wy * xa)
    elif TARGET == 0:
        lse_y = (m - xa) + log_z  # -log p_y without cancellation for a confident row
        py = _math.exp(xa - m) * inv_z
        qy = tl.where(y == amax, rest * inv_z, 1.0 - py)
        if LOSS == 2:  # softmax focal (+ Poly-1 eps)
            qg = _pow_q(qy, gamma)
            ratio = tl.where(qy > 0.0, -lse_y / tl.where(qy > 0.0, qy, 1.0), -1.0)  # log(p) / q -> -1 as q -> 0
            g = ay * qg * (1.0 - gamma * py * ratio) + eps_g1 * qg * py
            a = r * wy
            L = a * (ay * qg * lse_y + eps * qg * qy)
            U = a * g
            F = g
        else:  # cross entropy, Poly-1
            hard = keep * wy * r
            uni = uniform * r
            L = hard * lse_y
            U = hard
            wyu = zero
            if SMOOTH:
                wyu = wy  # the smoothing's w_y (a_y = hard + uni w_y)
                L = L + uni * _dense_cross_entropy(dsum, dmass, log_z)
                U = U + uni * dmass
                Cy = uni * (dmass - wyu)  # U - a_y: hard - hard cancels exactly
            if LOSS == 3:
                P = hard * py + uni * dexp * inv_z
                a_minus_p = hard * qy + uni * (dmass - dexp * inv_z)  # sum_c a_c (1 - p_c)
                L = L + eps * a_minus_p
                U = U + eps * P
                E = zero + eps
                Cy = Cy + eps * ((uni * dexp * inv_z - hard * qy) - uni * wyu)  # P - a_y with p_y - 1 = -q_y
    elif TARGET == 1:
        L = r * _dense_cross_entropy(dsum, dmass, log_z)
        U = r * dmass
        if LOSS == 4:
            L = L + r * ent
        if LOSS == 3:
            L = L + eps * r * (dmass - dexp * inv_z)
            U = U + eps * r * dexp * inv_z
            E = zero + eps
    elif TARGET == 2:
        right = tl.where(wr == 0.0, 0.0, wr * ((m - xb) + log_z))  # wr = 0: bin yl + 1 may not exist
        L = r * (wl * ((m - xa) + log_z) + right)
        U = r * (wl + wr)
    else:  # teacher logits: sum_c t_c (z_c - x_c) + (m + log Z) - (mz + log Zz)
        L = r * (ez / (1.0 + restz) + (m - mz) + (log_z - _math.log1p(restz)))
        L = tl.where(mz == float("-inf"), float("nan"), L)  # an all-masked teacher row: no distribution
        U = r
    loss = tl.where(valid, L * out_scale, 0.0)
    return loss, tl.where(valid, U, 0.0), tl.where(valid, E, 0.0), tl.where(valid, F, 0.0), inv_z, tl.where(valid, Cy, 0.0)


# ----------------------------------------------------------------------------- pass 2: the gradient


@triton.jit
def _grad_pass(x_ptr, t_ptr, w_ptr, g_ptr, xrow, trow, grow, rmask, valid, y, yl, wy, r, wl, wr, m, rest, amax, mz, restz, U, E, F, inv_z,
               Cy, scale, C, sxc, stc, sgc, keep, uniform, in_scale, LOSS: tl.constexpr, TARGET: tl.constexpr, HAS_W: tl.constexpr,
               SMOOTH: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr):
    """g_k = [(U - (E + F) a_k) p_k - F a_k q_k] * scale (NLL: -a_k * scale) into g_ptr, with p_k,
    q_k (rest / Z at the argmax) and a_k recomputed chunk by chunk; 0 on rows not valid."""
    hard = (keep * wy * r)[:, None]  # keep = 1 for the focal loss and NLL
    uni = (uniform * r)[:, None]
    q_amax = (rest * inv_z)[:, None]
    t_scale = (r / (1.0 + restz))[:, None]  # the teacher's a_k = r exp(z_k - mz) / Zz
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = rmask[:, None] & cmask[None, :]
        if TARGET == 0:  # label_coef(): hard at k = y, plus uni w_k (smoothing)
            a = tl.where(c[None, :] == y[:, None], hard, 0.0)
            if SMOOTH and LOSS != 1 and LOSS != 2:
                a = a + uni * _class_weight(w_ptr, c, cmask, HAS_W, COMPUTE)[None, :]
        elif TARGET == 1:
            t = tl.load(t_ptr + trow[:, None] + c[None, :].to(tl.int64) * stc, mask=mask, other=0.0).to(COMPUTE)
            a = r[:, None] * _dense(t, _class_weight(w_ptr, c, cmask, HAS_W, COMPUTE), cmask, keep, uniform, LOSS)
        elif TARGET == 2:  # bins_coef(): r wl at k = yl, r wr at k = yl + 1
            cf = c.to(COMPUTE)[None, :]
            a = tl.where(cf == yl[:, None], (r * wl)[:, None], tl.where(cf == yl[:, None] + 1.0, (r * wr)[:, None], 0.0))
        else:
            z = _load_tile(t_ptr, trow, c, stc, rmask, cmask, in_scale, COMPUTE)
            a = t_scale * _math.exp(z - mz[:, None])
        if LOSS == 1:
            g = -a
        else:
            x = _load_tile(x_ptr, xrow, c, sxc, rmask, cmask, in_scale, COMPUTE)
            p = _math.exp(x - m[:, None]) * inv_z[:, None]
            q = tl.where(c[None, :] == amax[:, None], q_amax, 1.0 - p)  # 1 - p <= 1/2 off the argmax: no cancellation
            g = _grad_elem(U[:, None], E[:, None], F[:, None], a, p, q)
            if TARGET == 0 and (SMOOTH or LOSS == 3) and LOSS != 2:  # label_grad_elem(): Cy at the label class
                g = tl.where(c[None, :] == y[:, None], Cy[:, None] * p - F[:, None] * a * q, g)
        g = tl.where(valid[:, None], g * scale[:, None], 0.0)  # an ignored row: exactly 0, also over NaN logits
        tl.store(g_ptr + grow[:, None] + c[None, :].to(tl.int64) * sgc, g.to(g_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- the kernels


@triton.jit
def _rows(pid, NBLK, S, sxb, sxs, stb, sts, sgb, sgs, BLOCK_S: tl.constexpr):
    """Program pid's image b and rows s: row index b S + s, its mask, and the int64 row offsets
    of the logits, the per-class target and the gradient."""
    b = pid // NBLK
    s = (pid - b * NBLK) * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = s < S
    b64 = b.to(tl.int64)
    s64 = s.to(tl.int64)
    return b64 * S + s64, rmask, b64 * sxb + s64 * sxs, b64 * stb + s64 * sts, b64 * sgb + s64 * sgs


@triton.jit
def _row_loss(x_ptr, t_ptr, w_ptr, xrow, trow, rmask, valid, y, yl, wy, ay, r, wl, wr, C, sxc, stc, keep, uniform, in_scale, p_eps, p_gamma,
              p_eps_g1, p_out, LOSS: tl.constexpr, TARGET: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr, COMPUTE: tl.constexpr,
              BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pass 1 and finish_row: (loss, U, E, F, 1 / Z, Cy) and the statistics the gradient pass needs."""
    if LOSS == 1:  # no softmax: x at the label is all NLL reads
        zero = tl.zeros([BLOCK_S], COMPUTE)
        xa = tl.load(x_ptr + xrow + y.to(tl.int64) * sxc, mask=valid, other=0.0).to(COMPUTE)
        m, rest, amax, xb, dsum, dmass, dexp, ent, mz, restz, ez = zero, zero, y, zero, zero, zero, zero, zero, zero, zero, zero
    else:
        m, rest, amax, xa, xb, dsum, dmass, dexp, ent, mz, restz, ez = _row_stats(x_ptr, t_ptr, w_ptr, xrow, trow, rmask, y, yl, C, sxc, stc,
                                                                                 keep, uniform, in_scale, LOSS, TARGET, HAS_W, SMOOTH,
                                                                                 COMPUTE, BLOCK_S, BLOCK_C)
    loss, U, E, F, inv_z, Cy = _finish_row(m, rest, amax, xa, xb, dsum, dmass, dexp, ent, mz, restz, valid, r, y, wy, ay, wl, wr, ez, keep,
                                       uniform, tl.full((), p_eps, COMPUTE), tl.full((), p_gamma, COMPUTE),
                                       tl.full((), p_eps_g1, COMPUTE), tl.full((), p_out, COMPUTE), LOSS, TARGET, SMOOTH)
    return loss, U, E, F, inv_z, Cy, m, rest, amax, mz, restz


@triton.jit
def _forward_kernel(x_ptr, t_ptr, w_ptr, al_ptr, sw_ptr, out_ptr, g_ptr, C, S, NBLK, sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, ignore_index,
                    p_keep: tl.float64, p_uniform: tl.float64, p_eps: tl.float64, p_gamma: tl.float64, p_alpha: tl.float64,
                    p_in: tl.float64, p_out: tl.float64, p_hi: tl.float64, p_grad: tl.float64, p_eps_g1: tl.float64, LOSS: tl.constexpr,
                    TARGET: tl.constexpr, HAS_W: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_SW: tl.constexpr, HAS_IGNORE: tl.constexpr,
                    SMOOTH: tl.constexpr, REDUCE: tl.constexpr, WITH_GRAD: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_S: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    """Per-row losses into out_ptr (input dtype) or, REDUCE, this program's three partial sums;
    WITH_GRAD: dL/dx of the summed loss into g_ptr (fp32 / fp64)."""
    pid = tl.program_id(0)
    keep = tl.full((), p_keep, COMPUTE)
    uniform = tl.full((), p_uniform, COMPUTE)
    in_scale = tl.full((), p_in, COMPUTE)
    row, rmask, xrow, trow, grow = _rows(pid, NBLK, S, sxb, sxs, stb, sts, sgb, sgs, BLOCK_S)
    valid, y, yl, wy, ay, r, wl, wr = _row_data(t_ptr, w_ptr, al_ptr, sw_ptr, row, rmask, C, ignore_index, tl.full((), p_alpha, COMPUTE),
                                                tl.full((), p_hi, COMPUTE), TARGET, HAS_W, HAS_ALPHA, HAS_SW, HAS_IGNORE, COMPUTE, BLOCK_S)
    loss, U, E, F, inv_z, Cy, m, rest, amax, mz, restz = _row_loss(x_ptr, t_ptr, w_ptr, xrow, trow, rmask, valid, y, yl, wy, ay, r, wl, wr, C, sxc,
                                                               stc, keep, uniform, in_scale, p_eps, p_gamma, p_eps_g1, p_out, LOSS, TARGET,
                                                               HAS_W, SMOOTH, COMPUTE, BLOCK_S, BLOCK_C)
    if REDUCE:  # [loss, class weight at the label of the counted rows, counted rows]: fixed-order tree sums
        tl.store(out_ptr + pid * 3, tl.sum(loss, axis=0))
        tl.store(out_ptr + pid * 3 + 1, tl.sum(tl.where(valid, wy, 0.0), axis=0))
        tl.store(out_ptr + pid * 3 + 2, tl.sum(valid.to(COMPUTE), axis=0))
    else:
        tl.store(out_ptr + row, loss.to(out_ptr.dtype.element_ty), mask=rmask)
    if WITH_GRAD:
        scale = tl.zeros([BLOCK_S], COMPUTE) + tl.full((), p_grad, COMPUTE)
        _grad_pass(x_ptr, t_ptr, w_ptr, g_ptr, xrow, trow, grow, rmask, valid, y, yl, wy, r, wl, wr, m, rest, amax, mz, restz, U, E, F, inv_z,
                   Cy, scale, C, sxc, stc, sgc, keep, uniform, in_scale, LOSS, TARGET, HAS_W, SMOOTH, COMPUTE, BLOCK_C)


@triton.jit
def _backward_kernel(x_ptr, t_ptr, w_ptr, al_ptr, sw_ptr, up_ptr, g_ptr, C, S, NBLK, sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs,
                     ignore_index, p_keep: tl.float64, p_uniform: tl.float64, p_eps: tl.float64, p_gamma: tl.float64, p_alpha: tl.float64,
                     p_in: tl.float64, p_out: tl.float64, p_hi: tl.float64, p_grad: tl.float64, p_eps_g1: tl.float64,
                     LOSS: tl.constexpr, TARGET: tl.constexpr, HAS_W: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_SW: tl.constexpr,
                     HAS_IGNORE: tl.constexpr, SMOOTH: tl.constexpr, PER_ROW_UP: tl.constexpr, COMPUTE: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """dL/dx times the upstream gradient (one per row, or that of the loss sum read through its
    pointer: no host sync) into g_ptr in input's dtype, the statistics recomputed."""
    pid = tl.program_id(0)
    keep = tl.full((), p_keep, COMPUTE)
    uniform = tl.full((), p_uniform, COMPUTE)
    in_scale = tl.full((), p_in, COMPUTE)
    row, rmask, xrow, trow, grow = _rows(pid, NBLK, S, sxb, sxs, stb, sts, sgb, sgs, BLOCK_S)
    valid, y, yl, wy, ay, r, wl, wr = _row_data(t_ptr, w_ptr, al_ptr, sw_ptr, row, rmask, C, ignore_index, tl.full((), p_alpha, COMPUTE),
                                                tl.full((), p_hi, COMPUTE), TARGET, HAS_W, HAS_ALPHA, HAS_SW, HAS_IGNORE, COMPUTE, BLOCK_S)
    _, U, E, F, inv_z, Cy, m, rest, amax, mz, restz = _row_loss(x_ptr, t_ptr, w_ptr, xrow, trow, rmask, valid, y, yl, wy, ay, r, wl, wr, C, sxc, stc,
                                                            keep, uniform, in_scale, p_eps, p_gamma, p_eps_g1, p_out, LOSS, TARGET, HAS_W,
                                                            SMOOTH, COMPUTE, BLOCK_S, BLOCK_C)
    if PER_ROW_UP:
        up = tl.load(up_ptr + row, mask=rmask, other=0.0).to(COMPUTE)
    else:
        up = tl.zeros([BLOCK_S], COMPUTE) + tl.load(up_ptr).to(COMPUTE)
    _grad_pass(x_ptr, t_ptr, w_ptr, g_ptr, xrow, trow, grow, rmask, valid, y, yl, wy, r, wl, wr, m, rest, amax, mz, restz, U, E, F, inv_z,
               Cy, up * tl.full((), p_grad, COMPUTE), C, sxc, stc, sgc, keep, uniform, in_scale, LOSS, TARGET, HAS_W, SMOOTH, COMPUTE, BLOCK_C)


# ----------------------------------------------------------------------------- launchers


def _walk(t, fold):
    """(b, c, s) strides of a (B, C, S) tensor as the kernels walk it: a (B, C, 1) tensor as
    (1, C, B) (its rows share a tile)."""
    sb, sc, ss = t.stride()
    return (0, sc, sb) if fold else (sb, sc, ss)


def _tile_shape(C, S, sc, ss):
    """(BLOCK_S, BLOCK_C): chunks of up to WIDE's 512 classes where the classes are adjacent in
    memory (class stride 1), of up to TALL's 16 where the rows are; as many rows as fill a
    TILE, never taller than S needs."""
    max_c = WIDE[1] if C > 1 and abs(sc) < abs(ss) else TALL[1]
    block_c = min(triton.next_power_of_2(C), max_c)
    return min(TILE // block_c, triton.next_power_of_2(S)), block_c


def _launch_args(input, target, class_weight, class_alpha, sample_weight, grad_out, loss, kind, params, ignore_index):
    """(grid, pointers, integer arguments, float64 parameters, constexprs) of a launch."""
    B, C, S = input.shape
    fold = S == 1
    if fold:
        B, S = 1, B
    xs = _walk(input, fold)
    ts = _walk(target, fold) if kind in (PROBS, TEACHER) else (0, 0, 0)
    gs = _walk(grad_out, fold) if grad_out.dim() == 3 else (0, 0, 0)
    block_s, block_c = _tile_shape(C, S, xs[1], xs[2])
    nblk = triton.cdiv(S, block_s)
    keep, uniform, eps, gamma, alpha, in_scale, out_scale, bins_hi = (float(v) for v in params)
    # derived parameters in double (DESIGN: no cancellation, one rounding): the bins' clamp
    # never past the last bin, the gradient's scale, the Poly-1 focal factor
    floats = (keep, uniform, eps, gamma, alpha, in_scale, out_scale, min(bins_hi, float(C - 1)), in_scale * out_scale, eps * (gamma + 1.0))
    # unused pointers are never read (their constexpr flag is off): pass the input
    ptrs = (target if kind in (PROBS, TEACHER) else target.contiguous(),) + tuple(
        input if v is None else v.contiguous() for v in (class_weight, class_alpha, sample_weight))
    ints = (C, S, nblk) + xs + ts + gs + (0 if ignore_index is None else int(ignore_index),)
    meta = dict(LOSS=loss, TARGET=kind, HAS_W=class_weight is not None, HAS_ALPHA=class_alpha is not None, HAS_SW=sample_weight is not None,
                HAS_IGNORE=kind == LABELS and ignore_index is not None, SMOOTH=kind == LABELS and loss in (CROSS_ENTROPY, POLY1_CROSS_ENTROPY)
                and uniform != 0.0, COMPUTE=tl.float64 if input.dtype == torch.float64 else tl.float32, BLOCK_S=block_s, BLOCK_C=block_c)
    return (B * nblk,), ptrs, ints, floats, meta


def forward(input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index, reduction, with_grad):
    """(out, cache) as fastloss/reference/rowwise.py forward: per-row losses (B, S) in input's
    dtype (reduction 0) or [loss sum, class weight sum, count] (reduction 1) in fp32 / fp64;
    cache = dL/dx of the summed loss (input's shape and, when dense, strides) if with_grad."""
    acc = reduced_dtype(input.dtype)
    B, C, S = input.shape
    cache = torch.empty_like(input, dtype=acc) if with_grad else input.new_empty((0,), dtype=acc)
    reduce = reduction != 0
    if B * S == 0 or C == 0:  # nothing to walk (C = 0 is rejected by the op; its reference value is 0)
        return (torch.zeros(3 if reduce else (B, S), dtype=acc if reduce else input.dtype, device=input.device), cache)
    grid, ptrs, ints, floats, meta = _launch_args(input, target, class_weight, class_alpha, sample_weight, cache, loss, kind, params,
                                                  ignore_index)
    out = torch.empty((grid[0], 3), dtype=acc, device=input.device) if reduce else torch.empty((B, S), dtype=input.dtype, device=input.device)
    _forward_kernel[grid](input, *ptrs, out, cache, *ints, *floats, REDUCE=reduce, WITH_GRAD=with_grad, **meta)
    return (out.sum(0) if reduce else out), cache


def backward(grad, input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index, reduction):
    """dL/dx times ``grad`` (per row (B, S) in input's dtype for reduction 0; the 0-d upstream
    gradient of the loss sum for reduction 1) in input's dtype and shape."""
    out = torch.empty_like(input)
    if out.numel():
        grid, ptrs, ints, floats, meta = _launch_args(input, target, class_weight, class_alpha, sample_weight, out, loss, kind, params,
                                                      ignore_index)
        _backward_kernel[grid](input, *ptrs, grad.contiguous(), out, *ints, *floats, PER_ROW_UP=reduction == 0, **meta)
    return out
