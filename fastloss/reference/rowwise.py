"""Pure-PyTorch reference of the row-wise (softmax) engine: the spec of csrc/kernels/rowwise.h
(its header comment holds the formulas), float64-capable, the fallback backend, and the
eager baseline's building blocks.

Calling convention (the same as the compiled ``rowwise_*_native`` ops, csrc/fastloss.cpp):
``input`` is a (B, C, S) view of the logits (class axis 1, any strides); ``target`` is a
(B, S) integer label map (labels), a (B, S) float tensor (bins), or a (B, C, S) float tensor
(probabilities / teacher logits); ``class_weight`` / ``class_alpha`` (C,), ``sample_weight``
(B * S,) in the accumulation dtype; ``params`` the eight slots of rowwise::Params.  The
forward returns (per-row losses (B, S) in input's dtype | the reduced (3,) [sum of the
losses, sum of the class weights of the counted rows, number of counted rows] in the
accumulation dtype, and dL/dx of the summed loss (B, C, S) if ``with_grad`` else an empty
tensor).
"""
import torch

CROSS_ENTROPY, NLL, SOFTMAX_FOCAL, POLY1_CROSS_ENTROPY, KL_DIV = range(5)
LABELS, PROBS, BINS, TEACHER = range(4)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pow_q(q, g):
    return torch.ones_like(q) if g == 0 else q.pow(g)


def _rows(input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index):
    """Per-row loss (B, S), its gradient (B, C, S) of the summed loss, per-row normaliser
    weight (B, S) and validity (B, S) -- the header's formulas on whole tensors."""
    keep, uniform, eps, gamma, alpha, in_scale, out_scale, bins_hi = params
    acc = _acc(input.dtype)
    B, C, S = input.shape
    x = input.to(acc) * in_scale if loss != NLL else input.to(acc)
    zero = x.new_zeros(())
    r = x.new_ones((B, S)) if sample_weight is None else sample_weight.reshape(B, S).to(acc)
    valid = torch.ones((B, S), dtype=torch.bool, device=x.device)
    wy = x.new_ones((B, S))
    k = torch.arange(C, device=x.device).view(1, C, 1)
    if kind == LABELS:
        lab = target.long()
        if ignore_index is not None:
            valid &= lab != ignore_index
        valid &= (lab >= 0) & (lab < C)
        y = torch.where(valid, lab, torch.zeros_like(lab))
        if class_weight is not None:
            wy = class_weight.to(acc)[y]
    r = torch.where(valid, r, zero)
    norm = torch.where(valid, wy, zero)
    if C == 0:
        return x.new_zeros((B, S)), x.new_zeros((B, C, S)), norm, valid
    if loss == NLL:
        xa = x.gather(1, y.unsqueeze(1)).squeeze(1)
        a = torch.where(k == y.unsqueeze(1), (r * wy * out_scale).unsqueeze(1), zero)
        row = torch.where(valid, -(r * wy) * xa * out_scale, zero)
        return row, torch.where(valid.unsqueeze(1), -a, zero), norm, valid

    m, amax = x.max(dim=1, keepdim=True)
    e = torch.exp(x - m)
    is_amax = k == amax
    rest = torch.where(is_amax, zero, e).sum(1, keepdim=True)
    # a +inf logit: NaN softmax and log Z (so NaN loss and gradient), as the header's finish_row
    # and torch's log_softmax
    m_inf = m == float("inf")
    inv_z = torch.where(m_inf, float("nan"), 1.0 / (1.0 + rest))
    log_z = torch.where(m_inf, float("nan"), torch.log1p(rest))
    p = e * inv_z
    q = torch.where(is_amax, rest * inv_z, 1.0 - p)
    U = E = None
    F = torch.ones_like(m)
    Cy = None  # labels with smoothing / Poly-1: the label class's coefficient (header: Row::Cy)
    r1 = r.unsqueeze(1)

    def dense_sums(d):
        dsum = torch.where(d == 0, zero, d * (m - x)).sum(1, keepdim=True)
        return dsum, d.sum(1, keepdim=True), (d * e).sum(1, keepdim=True)

    if kind == LABELS:
        y1 = y.unsqueeze(1)
        xa = x.gather(1, y1)
        lse_y = (m - xa) + log_z
        py = torch.exp(xa - m) * inv_z
        qy = torch.where(y1 == amax, rest * inv_z, 1.0 - py)
        wy1 = wy.unsqueeze(1)
        if loss == SOFTMAX_FOCAL:
            ay = (class_alpha.to(acc)[y] if class_alpha is not None else torch.full_like(wy, alpha)).unsqueeze(1)
            qg = _pow_q(qy, gamma)
            ratio = torch.where(qy > 0, -lse_y / torch.where(qy > 0, qy, 1.0), -1.0)
            g = ay * qg * (1.0 - gamma * py * ratio) + eps * (gamma + 1.0) * qg * py
            a1 = r1 * wy1
            L = a1 * (ay * qg * lse_y + eps * qg * qy)
            U, E, F = a1 * g, torch.zeros_like(m), g
            a = torch.where(k == y1, a1, zero)
        else:
            hard = keep * wy1 * r1
            uni = uniform * r1
            w = class_weight.to(acc).view(1, C, 1) if class_weight is not None else x.new_ones((1, C, 1))
            L, U, E = hard * lse_y, hard, torch.zeros_like(m)
            dsum, dmass, dexp = dense_sums(w.expand_as(x))
            wyu = w.expand(1, C, 1).reshape(C)[y].unsqueeze(1) if uniform != 0 else zero
            Cy = torch.zeros_like(m)
            if uniform != 0:
                L = L + uni * (dsum + dmass * log_z)
                U = U + uni * dmass
                Cy = uni * (dmass - wyu)
            if loss == POLY1_CROSS_ENTROPY:
                P = hard * py + uni * dexp * inv_z
                L = L + eps * (hard * qy + uni * (dmass - dexp * inv_z))
                U, E = U + eps * P, torch.full_like(m, eps)
                Cy = Cy + eps * ((uni * dexp * inv_z - hard * qy) - uni * wyu)  # P - a_y with p_y - 1 = -q_y
            a = torch.where(k == y1, hard, zero) + uni * w
    elif kind == PROBS:
        t = target.to(acc)
        w = class_weight.to(acc).view(1, C, 1) if class_weight is not None else 1.0
        d = t if loss == KL_DIV else w * (keep * t + uniform)
        dsum, dmass, dexp = dense_sums(d)
        L, U, E = r1 * (dsum + dmass * log_z), r1 * dmass, torch.zeros_like(m)
        if loss == KL_DIV:
            L = L + r1 * torch.where(t == 0, zero, t * torch.log(torch.where(t == 0, 1.0, t))).sum(1, keepdim=True)
        if loss == POLY1_CROSS_ENTROPY:
            L = L + eps * r1 * (dmass - dexp * inv_z)
            U, E = U + eps * r1 * dexp * inv_z, torch.full_like(m, eps)
        a = r1 * d
    elif kind == BINS:
        v = target.to(acc).reshape(B, 1, S)
        hi = min(bins_hi, C - 1.0)  # never past the last bin (bins_hi may be the op's C - 1/2 sentinel)
        v = torch.where(v < 0, zero, torch.where(v > hi, torch.full_like(v, hi), v))
        yl = torch.floor(v)
        wl, wr = (yl + 1.0) - v, v - yl
        yl_i = torch.where(torch.isfinite(yl), yl, 0.0).long().clamp(0, C - 1)
        xa = x.gather(1, yl_i)
        xb = x.gather(1, (yl_i + 1).clamp(max=C - 1))
        right = torch.where(wr == 0, zero, wr * ((m - xb) + log_z))
        L = r1 * (wl * ((m - xa) + log_z) + right)
        U, E = r1 * (wl + wr), torch.zeros_like(m)
        kf = k.to(acc)
        a = torch.where(kf == yl, r1 * wl, torch.where(kf == yl + 1.0, r1 * wr, zero))
    else:  # TEACHER
        z = target.to(acc) * in_scale
        mz, amaxz = z.max(dim=1, keepdim=True)
        ez_ = torch.exp(z - mz)
        restz = torch.where(k == amaxz, zero, ez_).sum(1, keepdim=True)
        ez = torch.where(ez_ == 0, zero, ez_ * (z - x)).sum(1, keepdim=True)  # a masked teacher class (z = -inf): 0, not 0 * -inf
        L = r1 * (ez / (1.0 + restz) + (m - mz) + (log_z - torch.log1p(restz)))
        U, E = r1.expand_as(m), torch.zeros_like(m)
        a = r1 * ez_ / (1.0 + restz)
    v1 = valid.unsqueeze(1)
    L = torch.where(v1, L * out_scale, zero)
    U, E, F = (torch.where(v1, t_, zero) for t_ in (U, E, F))
    g = (U - (E + F) * a) * p - F * a * q
    if Cy is not None:  # label_grad_elem()
        Cy = torch.where(v1, Cy, zero)
        g = torch.where(k == y.unsqueeze(1), Cy * p - F * a * q, g)
    g = torch.where(v1, g * (in_scale * out_scale), zero)
    return L.squeeze(1), g, norm, valid


def forward(input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index, reduction, with_grad):
    acc = _acc(input.dtype)
    row, grad, norm, valid = _rows(input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index)
    if reduction == 0:
        out = row.to(input.dtype)
    else:
        out = torch.stack([row.sum(), norm.sum(), valid.sum().to(acc)]).to(acc)
    # the gradient in input's layout (channels_last stays channels_last), as the kernels write it
    cache = torch.empty_like(input, dtype=acc).copy_(grad) if with_grad else input.new_empty((0,), dtype=acc)
    return out, cache


def backward(grad, input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index, reduction):
    _, g, _, _ = _rows(input, target, class_weight, class_alpha, sample_weight, loss, kind, params, ignore_index)
    up = grad.to(g.dtype)
    up = up.unsqueeze(1) if reduction == 0 else up
    return torch.empty_like(input).copy_(g * up)
