"""Parameter groups over a shard layout: assignment by name, partial Grams, combination."""
import torch

from massive_mt.engine.model import build_model
from massive_mt.reconcile.groups import ShardGroups, assign_groups
from massive_mt.reconcile.methods import vaccinate_ids
from massive_mt.reconcile.shards import Segment


def names():
    m = build_model("test", 100, 16)   # 1 encoder + 1 decoder layer
    return [n for n, _ in m.named_parameters()]


def test_assignment_of_m2m100_parameters():
    ns = names()
    assert set(assign_groups(ns, "whole_model").values()) == {"model"}
    ed = assign_groups(ns, "enc_dec")
    assert ed["model.shared.weight"] == "embeddings"
    assert ed["model.encoder.layers.0.fc1.weight"] == "encoder"
    assert ed["model.decoder.layers.0.encoder_attn.q_proj.weight"] == "decoder"
    al = assign_groups(ns, "all_layer")
    assert list(dict.fromkeys(al.values())) == ["embeddings", "encoder.layers.0", "decoder.layers.0"]
    assert al["model.encoder.layer_norm.weight"] == "encoder.layers.0"      # final norm joins the last layer
    am = assign_groups(ns, "all_matrix")
    assert len(set(am.values())) == len(ns)


def test_partial_grams_and_combine_match_dense():
    torch.manual_seed(0)
    ns = ["a", "b", "c"]
    # a shard holding the tail of a, all of b, the head of c, with 2 padding values at the end
    segs = [Segment("a", 0, 2), Segment("b", 2, 3), Segment("c", 5, 2)]
    S = torch.randn(3, 9)
    S[:, 7:] = 0.0
    groups = ShardGroups(ns, "all_matrix", segs, segs)
    G = groups.local_grams(S)
    for g, (start, n) in enumerate([(0, 2), (2, 3), (5, 2)]):
        blk = S[:, start:start + n].double()
        assert torch.allclose(G[g], blk @ blk.T)
    w = torch.randn(3, 3, dtype=torch.float64)
    u = groups.combine(S, w)
    for g, (start, n) in enumerate([(0, 2), (2, 3), (5, 2)]):
        assert torch.allclose(u[start:start + n].double(), w[g] @ S[:, start:start + n].double(), atol=1e-6)
    assert torch.all(u[7:] == 0)
    whole = ShardGroups(ns, "whole_model", segs, segs)
    assert whole.update_runs == [[(0, 7)]]                   # adjacent segments merge into one run


def test_local_grams_within_fp32_rounding_of_the_exact_gram():
    """fp32 block GEMMs summed in fp64: runs of odd lengths (block tails), runs over several chunks
    and one-signed sums (correlated tasks, where fp32 accumulation over a whole run would be off by
    ~1e-5) stay within a few fp32 units of the exact Gram, relative to ||x_i|| ||x_j||."""
    torch.manual_seed(0)
    n, K = 300_001, 3
    segs = [Segment("a", 0, 5), Segment("b", 5, 170_000), Segment("c", 170_005, 129_996)]
    common = torch.randn(n)
    S = (0.8 * common + 0.2 * torch.randn(K, n)) * torch.exp(2 * torch.randn(n))
    groups = ShardGroups(["a", "b", "c"], "all_matrix", segs, segs)
    groups.CHUNK = 50_000 + 7                      # several chunks per run, none a multiple of BLOCK
    G = groups.local_grams(S)
    u = 2.0 ** -24
    for g, s in enumerate(segs):
        blk = S[:, s.start:s.start + s.numel].double()
        ref = blk @ blk.T                          # fp32 products are exact in fp64
        d = ref.diagonal().sqrt()
        err = ((G[g] - ref).abs() / (d[:, None] * d[None, :])).max()
        assert err <= 8 * u, (g, float(err))
    acc32 = (S[:, 5:170_005] @ S[:, 5:170_005].T).double()   # one fp32 GEMM over the run, for contrast
    ref = S[:, 5:170_005].double() @ S[:, 5:170_005].double().T
    assert ((acc32 - ref).abs() / ref.abs()).max() > 8 * u   # the bound above is not vacuous


def test_vaccinated_ids():
    tasks = ["en-a", "en-b", "en-c", "en-d"]
    sizes = {"en-a": 1000, "en-b": 500, "en-c": 100, "en-d": 50}
    assert vaccinate_ids(None, tasks, sizes, 0.5) is None
    assert vaccinate_ids(["low_resource"], tasks, sizes, 0.5) == frozenset({2, 3})
    assert vaccinate_ids(["en-b"], tasks, sizes, 0.5) == frozenset({1})
    import pytest
    from massive_mt.errors import ConfigError
    with pytest.raises(ConfigError, match="reconcile.vaccinate"):
        vaccinate_ids(["en-x"], tasks, sizes, 0.5)
