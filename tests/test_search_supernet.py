"""The supernet, its edges and the six methods' hooks (tiny shapes, no data)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from edgenas.cells import CELL_TYPES, edge_inputs
from edgenas.errors import EdgenasError
from edgenas.genotypes import Genotype
from edgenas.ops import ATTENTION_VARIANTS, DARTS_OPS, EL_DARTS_OPS, OPS, FactorizedReduce, ReLUConvBN
from edgenas.search import METHODS, make_method
from edgenas.search.batched import (
    BatchedPartialNode,
    FastMixedOp,
    build_batched_candidates,
    chain,
    group_convs,
)
from edgenas.search.edges import (
    AttentionChannels,
    EdgeNode,
    MixedOp,
    PartialChannels,
    channel_shuffle,
    weighted_sum,
)
from edgenas.search.fast_cpu import FastBatchNorm2d, FastDepthwiseConv2d, _colsum, accelerate, norm_mix
from edgenas.search.loop import BilevelStep, SearchConfig, default_deriver
from edgenas.search.methods.base import node_softmax
from edgenas.search.methods.el_darts import edge_entropy
from edgenas.search.supernet import Supernet, SupernetConfig
from edgenas.space import SearchSpace

CL = torch.channels_last


def tiny(name: str, fast_path: bool = True, **settings) -> tuple[Supernet, BilevelStep]:
    method = make_method(name, settings or ({"partial_k": 2} if "partial_k" in _fields(name) else {}))
    cfg = SupernetConfig(ops=method.resolve_space(None).ops, C=4, layers=3, steps=2,
                         cell_residual=method.cell_residual, fast_path=fast_path)
    method.check(cfg)
    torch.manual_seed(0)
    net = Supernet(method, cfg)
    return net, BilevelStep(net, SearchConfig(batch_size=4, channels=4, layers=3, nodes=2), channels_last=False)


def _fields(name: str) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(METHODS[name])}


def _batch(n: int = 4, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, hw, hw, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_registry_lists_the_six_methods_in_order():
    assert list(METHODS) == ["darts", "pc_darts", "adarts", "swd", "el_darts", "attn_darts"]


@pytest.mark.parametrize("name", list(METHODS))
def test_arch_step_moves_only_architecture_and_weight_step_only_weights(name):
    net, step = tiny(name)
    x, y = _batch()
    arch0 = [p.detach().clone() for p in step.arch]
    weights0 = [p.detach().clone() for p in step.weights]
    logits, terms = step.arch_step(x, y, epoch=0)
    assert logits.shape == (4, 10) and torch.isfinite(terms["ce"])
    moved = [not torch.equal(a, p) for a, p in zip(arch0, step.arch)]
    assert step.arch and all(moved), "every architecture parameter must receive a gradient and move"
    # BatchNorm running statistics are buffers, not parameters: the weights themselves stay put
    assert all(torch.equal(w, p) for w, p in zip(weights0, step.weights))
    arch1 = [p.detach().clone() for p in step.arch]
    step.weight_step(x, y)
    assert all(torch.equal(a, p) for a, p in zip(arch1, step.arch))
    assert sum(not torch.equal(w, p) for w, p in zip(weights0, step.weights)) > len(weights0) // 2


@pytest.mark.parametrize("name", list(METHODS))
def test_relaxed_weights_are_distributions_and_derive_a_valid_genotype(name):
    net, step = tiny(name)
    x, y = _batch()
    with net.recording():
        step.arch_step(x, y, epoch=0)
    ops = net.cfg.ops
    for _t, w in net.relaxed_op_weights().items():
        assert w.shape == (net.cfg.num_edges, len(ops))
        assert torch.allclose(w.sum(1), torch.ones(net.cfg.num_edges), atol=1e-5)
    edge_w = {t: None if w is None else w.detach() for t, w in net.edge_weights().items()}
    g = default_deriver(ops, net.cfg.steps)(net.derivation_weights(), edge_w)
    g.validate(ops)
    assert len(g.normal) == 2 * net.cfg.steps


def test_derivation_keeps_each_nodes_two_strongest_edges():
    """Reference: the classic DARTS rule written out by hand, on random weights with edge weights."""
    ops = DARTS_OPS
    steps = 3
    gen = torch.Generator().manual_seed(3)
    op_w = {t: torch.rand(9, len(ops), generator=gen).softmax(1) for t in CELL_TYPES}
    edge_w = {t: node_softmax(torch.randn(9, generator=gen), steps) for t in CELL_TYPES}
    got = default_deriver(ops, steps)(op_w, edge_w)
    for t in CELL_TYPES:
        want = []
        for node in range(steps):
            ids = [e for e, (n, _) in enumerate(edge_inputs(steps)) if n == node]
            strength = {e: max(float(op_w[t][e, j] * edge_w[t][e]) for j in range(1, len(ops))) for e in ids}
            best = sorted(ids, key=lambda e: -strength[e])[:2]
            for e in best:
                j = max(range(1, len(ops)), key=lambda j: float(op_w[t][e, j]))
                want.append((ops[j], edge_inputs(steps)[e][1]))
        assert getattr(got, t) == tuple(want)


def test_node_softmax_normalises_each_node():
    w = node_softmax(torch.randn(14), 4)
    sums = [float(part.sum()) for part in w.split([2, 3, 4, 5])]
    assert sums == pytest.approx([1.0] * 4)


def test_channel_shuffle_is_the_same_permutation_in_both_memory_formats():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    ref = channel_shuffle(x, 4)
    assert ref[0, :, 0, 0].tolist() == [0 * 9 + 0, 2 * 9, 4 * 9, 6 * 9, 1 * 9, 3 * 9, 5 * 9, 7 * 9]
    cl = channel_shuffle(x.contiguous(memory_format=CL), 4)
    assert torch.equal(cl, ref) and cl.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("block", [lambda: ReLUConvBN(6, 4, 1, 1, 0, affine=False),
                                   lambda: FactorizedReduce(6, 4, affine=False)])
def test_preprocessing_after_a_shared_relu_is_the_block(block):
    """The supernet applies each state's ReLU once for the two cells that read it."""
    torch.manual_seed(0)
    pre = block()
    x = torch.randn(2, 6, 8, 8)
    assert torch.equal(pre.after_relu(x.relu()), pre(x))


def _copy_edges_into(batched: BatchedPartialNode, per_edge: EdgeNode) -> None:
    """Give a batched partial-channel node the parameters (and statistics) of reference edges: grouped
    operators take the edges' tensors block by block, per-edge copies (``Blocks``) one each."""
    for group, mixer in zip(batched.groups, batched.mixers):
        for pos, cand in enumerate(mixer.candidates):
            edges = [per_edge.edges[e].mixer.candidates[pos].state_dict() for e in group]
            state = {}
            for key, value in cand.state_dict().items():
                if ".blocks." in f".{key}":  # one module per edge
                    head, _, tail = key.partition("blocks.")
                    i, _, rest = tail.partition(".")
                    state[key] = edges[int(i)][head + rest]
                elif value.dim() == 0:
                    state[key] = edges[0][key]
                else:  # grouped: the edges' parameters block by block
                    state[key] = torch.cat([sd[key] for sd in edges])
            cand.load_state_dict(state)


def _pc_nodes(strides, C=8, k=2, ops=EL_DARTS_OPS):
    """A PC-DARTS node as reference edges and as a batched node holding the same parameters."""
    torch.manual_seed(0)
    method = make_method("pc_darts", {"partial_k": k})
    per_edge = method.build_node(ops, C, strides)
    batched = method.build_node(ops, C, strides, fast=True)
    assert isinstance(per_edge, EdgeNode) and isinstance(batched, BatchedPartialNode)
    _copy_edges_into(batched, per_edge)
    return per_edge, batched


def _autograd_nodes(t: torch.Tensor) -> set[str]:
    """Names of the autograd functions ``t`` was computed with."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("strides", [[1, 1, 1], [2, 2, 1, 1], [2, 2, 1]])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_batched_partial_node_equals_reference_partial_edges(strides, fmt):
    """Forward and every gradient; in channels_last the batched node takes the fused BN-and-mix path."""
    per_edge, batched = _pc_nodes(strides, ops=DARTS_OPS)
    per_edge, batched = per_edge.to(memory_format=fmt), accelerate(batched.to(memory_format=fmt))
    gen = torch.Generator().manual_seed(2)
    states = [torch.randn(2, 8, 8, 8, generator=gen) if s == 2 else torch.randn(2, 8, 4, 4, generator=gen)
              for s in strides]
    states = [s.contiguous(memory_format=fmt) for s in states]
    op_w = torch.rand(len(strides), len(DARTS_OPS), generator=gen)
    coefs = torch.rand(len(strides), generator=gen)
    inputs = [s.clone().requires_grad_() for s in states]
    weights = [op_w.clone().requires_grad_(), coefs.clone().requires_grad_()]
    want = per_edge(inputs, *weights)
    g_out = torch.randn(want.shape, generator=gen)
    want_grads = torch.autograd.grad(want, inputs + weights, g_out)
    got = batched([batched.prepare(h, i) for i, h in enumerate(inputs)], *weights)
    assert torch.allclose(got, want, atol=1e-5)
    for a, b in zip(torch.autograd.grad(got, inputs + weights, g_out), want_grads):
        assert torch.allclose(a, b, atol=1e-4)
    assert ("_NormMixBackward" in _autograd_nodes(got)) == (fmt == CL)
    assert "_NormMixBackward" not in _autograd_nodes(want)


@pytest.mark.parametrize("name", [n for n, spec in OPS.items() if not spec.is_zero])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n", [1, 2])
def test_an_operators_chain_computes_the_operator(name, stride, n):
    torch.manual_seed(0)
    _, (cand,) = build_batched_candidates([name], 4, stride, n)
    x = torch.randn(2, 4 * n, 6, 6)
    y = x
    for layer in chain(cand, OPS[name]):
        y = layer(y)
    assert torch.equal(y, cand(x))
    assert len(chain(cand, OPS[name])) > 1 or not (OPS[name].chained or OPS[name].bn_in_search)


def _keeps_blocks_apart(name: str, stride: int, C: int = 4, groups: int = 3) -> bool:
    """Built for groups * C channels, its dense convolutions grouped: does changing one block's input
    change only that block's output?"""
    torch.manual_seed(0)
    op = group_convs(OPS[name].build(groups * C, stride, affine=False), groups)
    x = torch.randn(2, groups * C, 6, 6)
    with torch.no_grad():
        y = op(x)
        x[:, :C] += 1.0
        changed = (op(x) - y).abs().amax(dim=(0, 2, 3)) > 0
    return not bool(changed[C:].any())


@pytest.mark.parametrize("name", list(OPS))
def test_the_registrys_groupable_strides_are_true(name):
    """OpSpec.groupable, probed: the strides it names keep the blocks apart, the others do not."""
    for stride in (1, 2):
        assert _keeps_blocks_apart(name, stride) == (stride in OPS[name].groupable), (name, stride)


@pytest.mark.parametrize("c", [3, 12, 20])
@pytest.mark.parametrize("bhw", [(4, 5, 6), (1, 3, 3)])
def test_norm_mix_is_batchnorms_and_a_weighted_sum(c, bhw):
    torch.manual_seed(0)
    b, h, w = bhw
    bns = [nn.BatchNorm2d(c, affine=False) for _ in range(3)]
    ref = copy.deepcopy(bns)
    xs = [(torch.randn(b, c, h, w) * (o + 1) + o).contiguous(memory_format=CL).requires_grad_() for o in range(3)]
    a = torch.rand(3, c, requires_grad=True)
    g = torch.randn(b, c, h, w)
    out = norm_mix(xs, bns, a)
    want = weighted_sum([bn(x) for bn, x in zip(ref, xs)], [c.view(1, -1, 1, 1) for c in a])
    assert out.is_contiguous(memory_format=CL) and torch.allclose(out, want, atol=1e-5)
    for p, q in zip(torch.autograd.grad(out, [*xs, a], g), torch.autograd.grad(want, [*xs, a], g)):
        assert torch.allclose(p, q, atol=1e-5)
    for bn, r in zip(bns, ref):
        for p, q in zip(bn.buffers(), r.buffers()):
            assert torch.allclose(p.float(), q.float(), atol=1e-6)
    assert norm_mix([x.contiguous() for x in xs], bns, a) is None  # NCHW: the layers themselves


@pytest.mark.parametrize("c", [3, 8, 12, 20])
def test_column_sums_match_torch_sum_at_every_width(c):
    x = torch.randn(1000, c, dtype=torch.float64)
    assert torch.allclose(_colsum(x), x.sum(0))


def test_groupable_facts_of_the_darts_operators():
    assert {1, 2} <= set(OPS["sep_conv_3x3"].groupable) and 2 in OPS["max_pool_3x3"].groupable
    assert OPS["skip_connect"].groupable == (1,)  # at stride 2, FactorizedReduce interleaves the blocks
    assert OPS["sep_conv_3x3_attn"].groupable == ()  # channel attention mixes channels


def test_attention_selection_sends_the_top_channels_and_restores_positions():
    torch.manual_seed(0)
    sel = AttentionChannels(8, 1, k=4)
    x = torch.randn(3, 8, 5, 5)
    part, (xw, idx) = sel.split(x)
    a = sel.attention(x)
    assert torch.allclose(xw, x * a[:, :, None, None])
    assert set(idx.tolist()) == set(a.mean(0).topk(2).indices.tolist())
    assert torch.equal(part, xw[:, idx])
    out = sel.merge(part * 0 - 1, (xw, idx))
    rest = [c for c in range(8) if c not in idx.tolist()]
    assert torch.equal(out[:, idx], -torch.ones_like(part)) and torch.equal(out[:, rest], xw[:, rest])


def test_partial_bypass_is_pooled_on_stride_two_even_for_odd_sizes():
    sel = PartialChannels(8, 2, k=4)
    x = torch.randn(1, 8, 7, 7)
    part, rest = sel.split(x)
    assert part.shape[1] == 2 and sel.bypass(rest).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("k,d,s,hw", [(5, 1, 1, 8), (3, 2, 1, 7), (5, 2, 1, 8), (3, 1, 2, 7), (5, 2, 2, 8),
                                      (3, 2, 2, 7), (5, 2, 2, 9), (3, 2, 1, 1), (5, 3, 1, 5)])
@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
def test_fast_depthwise_backward_matches_the_native_one(k, d, s, hw, fmt):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, k, s, d * (k - 1) // 2, dilation=d, groups=6, bias=False)
    fast = accelerate(nn.Sequential(copy.deepcopy(conv)))
    assert isinstance(fast[0], FastDepthwiseConv2d)
    x = torch.randn(3, 6, hw, hw).contiguous(memory_format=fmt)
    grads = []
    for m in (conv, fast):
        m = m.to(memory_format=fmt)
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append((out.detach(), xi.grad, next(m.parameters()).grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c", [3, 12, 20])
@pytest.mark.parametrize("bhw", [(4, 5, 6), (1, 3, 3)])
@pytest.mark.parametrize("affine", [False, True])
def test_fast_batchnorm_matches_the_native_one(affine, c, bhw):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(c, affine=affine)
    if affine:
        nn.init.uniform_(ref.weight, 0.5, 1.5)
        nn.init.uniform_(ref.bias, -0.5, 0.5)
    fast = accelerate(nn.Sequential(copy.deepcopy(ref)))
    assert isinstance(fast[0], FastBatchNorm2d)
    x = (torch.randn(bhw[0], c, *bhw[1:]) * 3 + 1).contiguous(memory_format=CL)
    g = torch.randn(bhw[0], c, *bhw[1:])
    results = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.backward(g)
        grads = [xi.grad] + ([p.grad for p in m.parameters()])
        results.append([out.detach(), *grads, *[b.float() for b in m.buffers()]])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert results[1][0].is_contiguous(memory_format=CL)


def test_plain_3x3_depthwise_keeps_the_native_path():
    m = accelerate(nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False),
                                           nn.Conv2d(4, 4, 1, bias=False)))
    assert type(m[0]) is nn.Conv2d and type(m[1]) is nn.Conv2d


def test_el_darts_temperature_and_entropy_term():
    net, step = tiny("el_darts")
    method = net.method
    assert method.temperature(0) == 5.0
    assert method.temperature(10) == pytest.approx(5.0 * 0.95**10)
    assert method.temperature(100) == 0.5
    alpha = net.arch.alpha
    t = method.temperature(3)
    p = {c: (alpha[c].detach() / t).softmax(-1) for c in alpha}
    by_hand = sum(float(-(q * q.log()).sum()) for q in p.values())
    assert float(method.loss_terms(net, 3)["entropy"].detach()) == pytest.approx(1e-3 * by_hand, rel=1e-5)
    info = method.epoch_info(net, 3)
    assert info["temperature"] == t and info["entropy"] == pytest.approx(by_hand, rel=1e-5)
    # minimising the term alone sharpens the distributions
    with torch.no_grad():
        for c in alpha:
            alpha[c].normal_()
    opt = torch.optim.SGD(step.arch, lr=100.0)
    before = sum(float(edge_entropy(alpha[c].detach(), 1.0)) for c in alpha)
    for _ in range(3):
        opt.zero_grad()
        method.loss_terms(net, 0)["entropy"].backward()
        opt.step()
    assert sum(float(edge_entropy(alpha[c].detach(), 1.0)) for c in alpha) < before


def test_el_darts_switches_and_space():
    assert make_method("el_darts").resolve_space(None).ops == SearchSpace.el_darts().ops
    assert make_method("el_darts", {"ess": False}).resolve_space(None).ops == SearchSpace.default().ops
    net, _ = tiny("el_darts", partial_k=2, dcss=False, entropy=False)
    assert net.edge_weights() == {"normal": None, "reduce": None}
    assert net.method.loss_terms(net, 0) == {} and net.method.epoch_info(net, 0) == {}
    gammas = tiny("el_darts")[0].arch.edges["normal"]
    assert float(gammas.detach().min()) > 0.25 and float(gammas.detach().max()) < 0.75
    with pytest.raises(EdgenasError, match="--no-ess"):
        make_method("el_darts", {"ess": False}).resolve_space(SearchSpace.default())


def test_pc_darts_edge_weights_are_per_node_softmaxes():
    net, _ = tiny("pc_darts")
    w = net.edge_weights()["reduce"].detach()
    assert [float(s.sum()) for s in w.split([2, 3])] == pytest.approx([1.0, 1.0])


def test_swd_weights_come_from_attention_and_average_over_recorded_batches():
    net, step = tiny("swd")
    assert not net.arch.alpha and net.method.op_weights(net, "normal") is None
    mixer = net.cells[0].nodes[0].edges[0].mixer
    seen = []
    with net.recording():
        for seed in range(2):
            x, y = _batch()
            step.arch_step(x + seed, y, epoch=0)
            seen.append(mixer.last.detach().clone())
    assert torch.allclose(mixer.average(), (seen[0] + seen[1]) / 2)
    assert float(mixer.average()[0]) == 0.0  # 'none' is not run and weighs nothing
    net.reset_records()
    assert mixer.average() is None


def test_attn_darts_uses_attention_operators_and_cell_residuals():
    method = make_method("attn_darts")
    ops = method.resolve_space(None).ops
    assert set(ATTENTION_VARIANTS.values()) <= set(ops) and "sep_conv_3x3" not in ops
    pruned = SearchSpace(("skip_connect", "sep_conv_3x3"))
    assert method.resolve_space(pruned).ops == ("skip_connect", "sep_conv_3x3_attn")
    net, _ = tiny("attn_darts")
    assert all(c.shortcut is not None for c in net.cells)


def test_a_genotype_with_attention_operators_builds_an_evaluation_network():
    from edgenas.nets import build_network, default_config

    g = Genotype(normal=(("sep_conv_3x3_attn", 0), ("skip_connect", 1),
                         ("dil_conv_3x3_attn", 2), ("sep_conv_3x3_attn", 0)),
                 normal_concat=(2, 3), reduce=(("max_pool_3x3", 0), ("sep_conv_5x5_attn", 1),
                                               ("skip_connect", 2), ("dil_conv_5x5_attn", 1)), reduce_concat=(2, 3))
    g.validate()
    net = build_network(g, default_config("cifar10", C=4, layers=3, auxiliary=False)).eval()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_method_settings_are_checked():
    with pytest.raises(EdgenasError, match="unknown search method 'nope'.*darts, pc_darts"):
        make_method("nope")
    with pytest.raises(EdgenasError, match="--partial-k does not apply to method 'darts'"):
        make_method("darts", {"partial_k": 4})
    cfg = SupernetConfig(ops=DARTS_OPS, C=16)
    with pytest.raises(EdgenasError, match="--partial-k 3 does not divide --channels 16"):
        make_method("pc_darts", {"partial_k": 3}).check(cfg)
    with pytest.raises(EdgenasError, match="needs an even count"):
        make_method("pc_darts", {"partial_k": 16}).check(cfg)
    with pytest.raises(EdgenasError, match="at least 2 operators"):
        SupernetConfig(ops=("sep_conv_3x3",))


def test_supernet_stays_channels_last_on_the_cpu():
    net, _ = tiny("pc_darts")
    net = net.to(memory_format=CL)
    feats = []
    net.cells[-1].register_forward_hook(lambda m, i, o: feats.append(o))
    x, _ = _batch()
    net(x.contiguous(memory_format=CL))
    assert feats[0].is_contiguous(memory_format=CL)
    assert math.isfinite(float(feats[0].detach().sum()))


def test_a_seeded_supernet_starts_the_same_whatever_the_process_built_before():
    first = tiny("pc_darts")[0].state_dict()
    second = tiny("pc_darts")[0].state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_reference_mixed_op_is_the_weighted_sum_and_the_fast_one_equals_it(fmt):
    """DARTS' edge: the reference is Eq. 2 term by term; the fast one (shared ReLU, fused BN-and-sum,
    fast kernels) gives the same values and gradients."""
    torch.manual_seed(0)
    ref = MixedOp(DARTS_OPS, 4, 1).to(memory_format=fmt)
    fast = accelerate(FastMixedOp(DARTS_OPS, 4, 1)).to(memory_format=fmt)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=fmt)
    w = torch.softmax(torch.randn(len(DARTS_OPS)), 0)
    results = []
    for mixer in (ref, fast, None):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        if mixer is None:  # the equation, written out over the reference's operators
            out = sum(wi[i] * op(xi) for i, op in zip(ref.index, ref.candidates))
        else:
            out = mixer(xi, wi)
        results.append([out, *torch.autograd.grad(out.square().sum(), [xi, wi])])
    for want, got in ((results[2], results[0]), (results[0], results[1])):
        for a, b in zip(want, got):
            assert torch.allclose(a, b, atol=1e-5)


def _reference_and_fast(name: str) -> tuple[Supernet, Supernet]:
    """The same tiny supernet of ``name`` without and with the fast path, holding the same parameters."""
    ref, _ = tiny(name, fast_path=False)
    fast, _ = tiny(name, fast_path=True)
    state = ref.state_dict()
    fast.load_state_dict({k: v for k, v in state.items() if k in fast.state_dict()}, strict=False)
    for cell_r, cell_f in zip(ref.cells, fast.cells):
        for node_r, node_f in zip(cell_r.nodes, cell_f.nodes):
            if isinstance(node_f, BatchedPartialNode):
                _copy_edges_into(node_f, node_r)
    return ref, fast


@pytest.mark.parametrize("name", ["darts", "pc_darts", "el_darts"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_fast_path_equals_the_reference_supernet(name, fmt):
    """Logits, the gradients of the input, the architecture and every shared weight, and the BatchNorm
    statistics after the step: the fast path is the reference function, computed otherwise (the
    methods' three kinds of edge: all channels, partial channels, partial with edge coefficients;
    :func:`test_every_method_steps_on_the_reference_path` runs the others)."""
    ref, fast = _reference_and_fast(name)
    assert not any(isinstance(m, (FastBatchNorm2d, FastDepthwiseConv2d, BatchedPartialNode, FastMixedOp))
                   for m in ref.modules())
    assert any(isinstance(m, (BatchedPartialNode, FastMixedOp)) for m in fast.modules())
    x, y = _batch()
    results = []
    for net in (ref, fast):
        net = net.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt).clone().requires_grad_()
        logits = net(xi)
        named = {"input": xi, **dict(net.named_parameters())}
        loss = nn.functional.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        results.append((logits.detach(), dict(zip(named, grads)), net.state_dict()))
    (l_ref, g_ref, s_ref), (l_fast, g_fast, s_fast) = results
    assert torch.allclose(l_fast, l_ref, rtol=1e-4, atol=1e-5)
    shared = [k for k in g_ref if k in g_fast]
    arch = {n for n, p in ref.named_parameters() if any(p is q for q in ref.arch_parameters())}
    assert "input" in shared and arch <= set(shared) and "stem.0.weight" in shared
    for k in shared:
        a, b = g_ref[k], g_fast[k]
        assert (a is None) == (b is None), k
        if a is not None:
            assert torch.allclose(b, a, rtol=1e-4, atol=1e-5), k
    for k in s_ref.keys() & s_fast.keys():
        assert torch.allclose(s_fast[k].float(), s_ref[k].float(), rtol=1e-4, atol=1e-5), k




@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_steps_on_the_reference_path(name):
    net, step = tiny(name, fast_path=False)
    assert not any(isinstance(m, (FastBatchNorm2d, FastDepthwiseConv2d, BatchedPartialNode, FastMixedOp))
                   for m in net.modules())
    x, y = _batch()
    weights0 = [p.detach().clone() for p in step.weights]
    logits, terms = step.arch_step(x, y, epoch=0)
    step.weight_step(x, y)
    assert logits.shape == (4, 10) and torch.isfinite(terms["ce"])
    assert sum(not torch.equal(w, p) for w, p in zip(weights0, step.weights)) > len(weights0) // 2
