"""The network checked against an independent, brute-force transcription of the authors' algorithm.

The oracle below follows the authors' evaluation code path (networks/cfbi/cfbip.py before_seghead_process,
networks/layers/matching.py, attention.py, ensembler.py, fpn.py, gct.py) step by step in plain PyTorch:
one-hot labels, distances + 5e4 padding for wrong labels, min, (sigmoid(d + b) - 0.5) * 2, explicit
foreground-to-background loops, the in-place atrous masking of the one-hot reference labels (which the
attention pooling then sees), the grouped dynamic convolution and the zero-padded background augmentation.
It shares no code with cfbi_model's glue; only the module parameters are read from the model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cfbi_model import CFBIPlus

pytestmark = pytest.mark.usefixtures("single_thread_module", "float64_default")


@pytest.fixture(scope="module")
def float64_default():
    """The network and its transcription decompose every sum differently: compared in float64, they agree to
    rounding (1e-12 here), where float32 needed 1e-4 and could flip a ReLU (docs/design.md, "Numerics")."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


PAD = 5e4


# ----------------------------------------------------------------------------------------- oracle: matching
def _score(dist: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(dist + bias) - 0.5) * 2


def _bias_vector(model: CFBIPlus, scale: int, num_labels: int) -> torch.Tensor:
    return torch.cat([model.bg_bias[scale].reshape(1), model.fg_bias[scale].reshape(1).repeat(num_labels - 1)])


def oracle_global(query, refs, ref_onehots, bias, atrous, min_pixels):
    """query [C, h, w]; refs: list of [C, h, w]; ref_onehots: list of [h, w, L] float (mutated in place on the
    label-masking path, as the authors' code does). Returns fg [L, h, w]."""
    c, h, w = query.shape
    num_labels = ref_onehots[0].shape[2]
    cand_emb, cand_lab = [], []
    if min_pixels > 0:  # label-masking path
        grid = torch.zeros(h, w, 1)
        grid[::atrous, ::atrous] = 1.0
        for emb, onehot in zip(refs, ref_onehots):
            if atrous > 1:
                big = onehot.sum(dim=(0, 1)) > min_pixels * atrous**2
                onehot[:, :, big] = onehot[:, :, big] * grid  # in place, like the authors
            cand_emb.append(emb.permute(1, 2, 0).reshape(-1, c))
            cand_lab.append(onehot.reshape(-1, num_labels))
    else:  # subsampling path: the labels are not touched
        for emb, onehot in zip(refs, ref_onehots):
            cand_emb.append(emb[:, ::atrous, ::atrous].permute(1, 2, 0).reshape(-1, c))
            cand_lab.append(onehot[::atrous, ::atrous].reshape(-1, num_labels))
    cand_emb, cand_lab = torch.cat(cand_emb), torch.cat(cand_lab)
    keep = cand_lab.sum(dim=1) > 0.9
    cand_emb, cand_lab = cand_emb[keep], cand_lab[keep]
    if cand_emb.shape[0] == 0:
        return torch.ones(num_labels, h, w)
    q = query.permute(1, 2, 0).reshape(-1, c)
    d = ((q[:, None, :] - cand_emb[None, :, :]) ** 2).sum(-1)  # [N, M]
    wrong = (cand_lab < 0.1).double().t()  # [L, M]
    best = (d[:, None, :] + wrong[None] * PAD).min(dim=2).values  # [N, L]
    return _score(best.t().reshape(num_labels, h, w), bias.reshape(-1, 1, 1))


def oracle_local(query, prev, prev_onehot, bias, windows, atrous):
    """query, prev [C, h, w]; prev_onehot [L, h, w]. Windows ascending; returns fg [L, K, h, w] in the
    authors' order (largest window first, then the others)."""
    c, h, w = query.shape
    num_labels = prev_onehot.shape[0]
    order = [windows[-1]] + list(windows[:-1])
    out = torch.full((num_labels, len(order), h, w), PAD)
    max_half = (windows[-1] - windows[-1] % atrous) // atrous
    for i in range(-max_half, max_half + 1):
        for j in range(-max_half, max_half + 1):
            dy, dx = i * atrous, j * atrous
            if abs(dy) >= h or abs(dx) >= w:
                continue  # the whole offset falls outside the frame: no candidate
            shifted = torch.zeros(c, h, w)
            shifted_lab = torch.zeros(num_labels, h, w)
            ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            shifted[:, yd, xd] = prev[:, ys, xs]
            shifted_lab[:, yd, xd] = prev_onehot[:, ys, xs]
            d = ((query - shifted) ** 2).sum(0)
            masked = torch.where(shifted_lab > 0.9, d.unsqueeze(0), torch.full_like(shifted_lab, PAD))
            for k, window in enumerate(order):
                if max(abs(i), abs(j)) <= window // atrous:
                    out[:, k] = torch.minimum(out[:, k], masked)
    return _score(out, bias.reshape(-1, 1, 1, 1))


def oracle_fg2bg(fg):
    num = fg.shape[0]
    if num == 1:
        return fg
    return torch.stack([torch.stack([fg[j] for j in range(num) if j != i]).min(dim=0).values for i in range(num)])


def oracle_attention(ref_embs, ref_onehots, prev_emb, prev_onehot, eps=1e-5):
    """ref_embs: list of [C, h, w]; ref_onehots: list of [L, h, w]."""
    pos = neg = pos_n = neg_n = 0.0
    for emb, lab in zip(ref_embs, ref_onehots):
        p = (emb[None] * lab[:, None]).sum(dim=(2, 3))
        pos = pos + p
        neg = neg + emb.sum(dim=(1, 2))[None] - p
        pos_n = pos_n + lab.sum(dim=(1, 2))[:, None]
        neg_n = neg_n + (1.0 - lab).sum(dim=(1, 2))[:, None]
    pp = (prev_emb[None] * prev_onehot[:, None]).sum(dim=(2, 3))
    pn = prev_emb.sum(dim=(1, 2))[None] - pp
    pp_n = prev_onehot.sum(dim=(1, 2))[:, None]
    pn_n = (1.0 - prev_onehot).sum(dim=(1, 2))[:, None]
    return torch.cat([pos / (pos_n + eps), neg / (neg_n + eps), pp / (pp_n + eps), pn / (pn_n + eps)], dim=1)


# ----------------------------------------------------------------------------------------- oracle: ensembler
def gct(x, m, eps=1e-5):
    emb = (x.pow(2).sum((2, 3), keepdim=True) + eps).pow(0.5) * m.alpha
    norm = m.gamma / (emb.pow(2).mean(dim=1, keepdim=True) + eps).pow(0.5)
    return x * (1.0 + torch.tanh(emb * norm + m.beta))


def ia(x, gate, head):
    return x * (1.0 + torch.tanh(F.linear(head, gate.IA.weight, gate.IA.bias)))[:, :, None, None]


def bottleneck(x, b):
    out = F.relu(b.bn1(b.conv1(gct(x, b.GCT1))))
    out = F.relu(b.bn2(b.conv2(out)))
    out = b.bn3(b.conv3(out))
    res = b.downsample[1](b.downsample[0](x)) if b.downsample is not None else x
    return F.relu(out + res)


def aspp(x, a):
    branches = [F.relu(br.bn(br.atrous_conv(gct(x, br.GCT)))) for br in (a.aspp1, a.aspp2, a.aspp3, a.aspp4)]
    pooled = F.relu(a.global_avg_pool[1](F.adaptive_avg_pool2d(x, 1)))
    branches.append(F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=True))
    return F.relu(a.bn1(a.conv1(gct(torch.cat(branches, 1), a.GCT))))


def oracle_ensembler(e, xs, head, low):
    x4, x8, x16 = xs
    x = bottleneck(ia(x4, e.S1_IA1, head), e.S1_layer1)
    x = bottleneck(ia(x, e.S1_IA2, head), e.S1_layer2)
    low = torch.cat([low.expand(x.shape[0], -1, -1, -1), x], 1)
    x = bottleneck(ia(x, e.S2_IA1, head), e.S2_layer1)
    x = bottleneck(ia(torch.cat([x, x8], 1), e.S2_IA2, head), e.S2_layer2)
    x = bottleneck(ia(x, e.S2_IA3, head), e.S2_layer3)
    x = bottleneck(ia(x, e.S3_IA1, head), e.S3_layer1)
    x = bottleneck(ia(torch.cat([x, x16], 1), e.S3_IA2, head), e.S3_layer2)
    x = bottleneck(ia(x, e.S3_IA3, head), e.S3_layer3)
    x = aspp(ia(x, e.ASPP_IA, head), e.ASPP)
    x = F.interpolate(x, size=low.shape[2:], mode="bicubic", align_corners=True)
    low = F.relu(e.bn_sc(e.conv_sc(gct(low, e.GCT_sc))))
    x = F.relu(e.bn1(e.conv1(ia(torch.cat([x, low], 1), e.IA10, head))))
    x = F.relu(e.bn2(e.conv2(ia(x, e.IA11, head))))
    n, c, h, w = x.shape

    def logit(linear):
        out = F.linear(head, linear.weight, linear.bias)
        return F.conv2d(x.reshape(1, n * c, h, w), out[:, :c].reshape(n, c, 1, 1), out[:, -1], groups=n)[0]

    fg, bg = logit(e.IA_final_fg), logit(e.IA_final_bg)
    if n > 1:
        aug = bg[1:].min(dim=0, keepdim=True).values
        fg = fg + torch.cat([aug, torch.zeros(n - 1, h, w)])
    return fg


def oracle_fpn(fpn, x4, x8, x16):
    t = fpn.toplayer(x16)
    m = fpn.latlayer1(x8) + F.interpolate(t, size=x8.shape[2:], mode="bilinear", align_corners=True)
    lo = fpn.latlayer2(x4) + F.interpolate(m, size=x4.shape[2:], mode="bilinear", align_corners=True)
    return F.relu(fpn.smooth2(lo)), F.relu(fpn.smooth1(m)), F.relu(t)


# ----------------------------------------------------------------------------------------- oracle: CFBI+
def oracle_segment(
    model, cur_embs, low, ref_embs, ref_labels, prev_embs, prev_labels, num_labels, atrous0, min_pixels, training=False
):
    """One sample. cur_embs/prev_embs: per scale [E, h, w]; ref_embs: per scale list of [E, h, w];
    ref_labels: per scale list of [h, w]; prev_labels: per scale [h, w]."""
    cfg = model.config
    ids = torch.arange(num_labels).reshape(-1, 1, 1)
    inputs, heads = [], []
    for s in range(3):
        dim = cfg.matching_dims[s]
        bias = _bias_vector(model, s, num_labels)
        prev_onehot = (prev_labels[s][None] == ids).double()  # [L, h, w]
        ref_onehots = [(lab[None] == ids).double().permute(1, 2, 0).contiguous() for lab in ref_labels[s]]  # [h,w,L]
        atrous = atrous0 if s == 0 else cfg.global_atrous[s]
        masking_path = training or min_pixels > 0
        query, keys = cur_embs[s][:dim], [e[:dim] for e in ref_embs[s]]
        if training:
            g_fg = _oracle_global_training(query, keys, ref_onehots, bias, atrous)
        else:
            g_fg = oracle_global(query, keys, ref_onehots, bias, atrous, min_pixels)
        l_fg = oracle_local(
            cur_embs[s][:dim], prev_embs[s][:dim], prev_onehot, bias, cfg.local_windows[s], cfg.local_atrous[s]
        )
        g_bg = oracle_fg2bg(g_fg)
        l_bg = oracle_fg2bg(l_fg)
        cur = cur_embs[s][None].expand(num_labels, -1, -1, -1)
        prev = prev_embs[s][None].expand(num_labels, -1, -1, -1)
        pm = prev_onehot[:, None]
        inputs.append(torch.cat([g_fg[:, None], l_fg, pm, l_bg, g_bg[:, None], cur, prev * pm, prev * (1 - pm)], 1))
        att_labels = [oh.permute(2, 0, 1) for oh in ref_onehots]  # mutated on the masking path
        assert masking_path or all(
            torch.equal(a, (lab[None] == ids).double()) for a, lab in zip(att_labels, ref_labels[s])
        )
        heads.append(oracle_attention(ref_embs[s], att_labels, prev_embs[s], prev_onehot))
    return oracle_ensembler(model.dynamic_seghead, inputs, heads[0], low)


def _oracle_global_training(query, refs, ref_onehots, bias, atrous):
    """The authors' training global matching: always the label-masking path with min pixels 0."""
    c, h, w = query.shape
    grid = torch.zeros(h, w, 1)
    grid[::atrous, ::atrous] = 1.0
    onehot = ref_onehots[0]
    if atrous > 1:
        big = onehot.sum(dim=(0, 1)) > 0
        onehot[:, :, big] = onehot[:, :, big] * grid
    return oracle_global(query, refs, ref_onehots, bias, 1, 0)


# ----------------------------------------------------------------------------------------- fixtures
def randomize(model: CFBIPlus, seed: int) -> CFBIPlus:
    """Non-trivial values everywhere (GCT gates, GroupNorm affine, biases, BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean",)):
                t.copy_(0.1 * r)
            elif name.endswith(("alpha",)):
                t.copy_(1 + 0.1 * r)
            elif name.endswith(("gamma", "beta")) or name in ("fg_bias", "bg_bias"):
                t.copy_(0.5 * r)
            elif ".IA." in name or "IA_final" in name:
                t.copy_(0.03 * r)
            elif t.dim() == 1:  # norm weights / biases
                t.copy_((1 + 0.1 * r) if name.endswith("weight") else 0.1 * r)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CFBIPlus:
    torch.manual_seed(0)
    return randomize(CFBIPlus("small").double(), 1)


def _frames(model, g, count, size=(65, 81)):
    images = torch.randn(count, 3, *size, generator=g)
    with torch.no_grad():
        return model.extract_features(images)


def _labels(g, size, num_labels, ignore=True):
    labels = torch.randint(0, num_labels, size, generator=g)
    # Blobs so that labels have structure, plus some ignored pixels.
    labels[..., 5:20, 10:30] = 1
    if num_labels > 2:
        labels[..., 30:50, 40:70] = 2
    if ignore:
        labels[..., :3, :3] = 255
    return labels


# ----------------------------------------------------------------------------------------- tests
def test_fpn_matches_oracle(model):
    g = torch.Generator().manual_seed(7)
    bb = model.config.backbone
    x4, x8, x16 = (
        torch.randn(1, bb.decoder_dim, 17, 21, generator=g),
        torch.randn(1, bb.mid_level_dim, 9, 11, generator=g),
        torch.randn(1, bb.aspp_dim, 5, 6, generator=g),
    )
    for a, b in zip(model.fpn(x4, x8, x16), oracle_fpn(model.fpn, x4, x8, x16)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "atrous0, min_pixels, num_refs, num_labels",
    [
        (2, 0, 1, 3),  # default inference: subsampling path, no attention quirk
        (2, 1, 2, 3),  # label-masking path (min pixels > 0): attention pooled over the masked labels
        (1, 0, 1, 2),  # no atrous
        (2, 0, 2, 1),  # background only
    ],
)
def test_segment_matches_official_algorithm(model, atrous0, min_pixels, num_refs, num_labels):
    g = torch.Generator().manual_seed(10 + atrous0 + min_pixels + num_refs)
    size = (65, 81)
    feats = _frames(model, g, num_refs + 2, size)
    full_labels = _labels(g, (num_refs + 1,) + size, num_labels)
    scaled = [model.scale_labels(full_labels, feats)[s] for s in range(3)]  # per scale [R + 1, h, w]
    emb = feats.embeddings
    cur = [e[num_refs + 1] for e in emb]
    prev = [e[num_refs] for e in emb]
    refs = [[e[t] for t in range(num_refs)] for e in emb]
    ref_lab = [[scaled[s][t] for t in range(num_refs)] for s in range(3)]
    prev_lab = [scaled[s][num_refs] for s in range(3)]
    snapshot = [x.clone() for x in scaled]

    with torch.no_grad():
        got = model.segment(
            type(feats)(tuple(e[num_refs + 1 :] for e in emb), feats.low_level[num_refs + 1 :]),
            [torch.stack(r)[None] for r in refs],
            [torch.stack(r)[None] for r in ref_lab],
            [p[None] for p in prev],
            [p[None] for p in prev_lab],
            num_labels,
            global_atrous=atrous0,
            min_matching_pixels=min_pixels,
        )[0]
        want = oracle_segment(
            model, cur, feats.low_level[num_refs + 1 :], refs, ref_lab, prev, prev_lab, num_labels, atrous0, min_pixels
        )
    assert got.shape == (num_labels, 17, 21)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(scaled, snapshot)), "caller's labels were mutated"


def test_training_mode_matches_official_training_path(model):
    """In training the authors' global matching always masks the one-hot labels (min pixels 0), so the 4x
    attention is pooled over the atrous-subsampled reference labels."""
    g = torch.Generator().manual_seed(21)
    size = (65, 81)
    feats = _frames(model, g, 3, size)
    full_labels = _labels(g, (2,) + size, 3, ignore=False)
    scaled = model.scale_labels(full_labels, feats)
    emb = feats.embeddings
    try:
        model.train()
        with torch.no_grad():
            got = model.segment(
                type(feats)(tuple(e[2:] for e in emb), feats.low_level[2:]),
                [e[0:1, None] for e in emb],
                [s[0:1, None] for s in scaled],
                [e[1:2] for e in emb],
                [s[1:2] for s in scaled],
                3,
            )[0]
            quirk_off = model.segment(
                type(feats)(tuple(e[2:] for e in emb), feats.low_level[2:]),
                [e[0:1, None] for e in emb],
                [s[0:1, None] for s in scaled],
                [e[1:2] for e in emb],
                [s[1:2] for s in scaled],
                3,
                atrous_attention=False,
            )[0]
    finally:
        model.eval()
    want = oracle_segment(
        model,
        [e[2] for e in emb],
        feats.low_level[2:],
        [[e[0]] for e in emb],
        [[s[0]] for s in scaled],
        [e[1] for e in emb],
        [s[1] for s in scaled],
        3,
        model.config.global_atrous[0],
        0,
        training=True,
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(got, quirk_off, rtol=1e-4, atol=1e-4), "the attention quirk had no effect"


def test_attention_quirk_flag(model):
    """With min_matching_pixels > 0 the quirk changes the result; the config flag turns it off."""
    g = torch.Generator().manual_seed(31)
    size = (65, 81)
    feats = _frames(model, g, 3, size)
    scaled = model.scale_labels(_labels(g, (2,) + size, 3), feats)
    emb = feats.embeddings
    args = (
        type(feats)(tuple(e[2:] for e in emb), feats.low_level[2:]),
        [e[0:1, None] for e in emb],
        [s[0:1, None] for s in scaled],
        [e[1:2] for e in emb],
        [s[1:2] for s in scaled],
        3,
    )
    with torch.no_grad():
        on = model.segment(*args, min_matching_pixels=1)[0]
        off = model.segment(*args, min_matching_pixels=1, atrous_attention=False)[0]
        no_quirk_model = CFBIPlus(model.config.__class__(**{**model.config.__dict__, "atrous_attention_quirk": False}))
        no_quirk_model.load_state_dict(model.state_dict())
        off_by_config = no_quirk_model.eval().segment(*args, min_matching_pixels=1)[0]
    assert not torch.allclose(on, off)
    torch.testing.assert_close(off, off_by_config)
