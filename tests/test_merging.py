"""Tests for capo.method.merging (SOUP baseline: task vectors, linear and slerp merges, LoRA).

Expected values are worked out by hand in each test's docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from capo.method import merging as M

SQRT_HALF = 1.0 / math.sqrt(2.0)


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-6)
    kw.setdefault("atol", 1e-6)
    torch.testing.assert_close(a, b, **kw)


def vec(*xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


def random_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "lin.weight": torch.randn(3, 4, generator=g),
        "lin.bias": torch.randn(3, generator=g),
        "conv.weight": torch.randn(2, 3, 3, 3, generator=g),
    }


# ---------------------------------------------------------------------------------------
# Task vectors and linear merges
# ---------------------------------------------------------------------------------------


def test_task_vectors_are_differences_and_skip_integer_buffers():
    """base x = (1, 1), model x = (2, 3) -> tau = (1, 2); the int buffer has no task vector."""
    base = {"x": vec(1, 1), "n": torch.tensor(5)}
    model = {"x": vec(2, 3), "n": torch.tensor(7)}
    (tau,) = M.task_vectors(base, [model])
    assert set(tau) == {"x"}
    close(tau["x"], vec(1, 2))


def test_linear_hand_values():
    """tau1 = (1, 2), tau2 = (3, -1), w = (0.25, 0.75):
    0.25 (1, 2) + 0.75 (3, -1) = (0.25 + 2.25, 0.5 - 0.75) = (2.5, -0.25)."""
    out = M.linear([{"x": vec(1, 2)}, {"x": vec(3, -1)}], [0.25, 0.75])
    close(out["x"], vec(2.5, -0.25))


def test_linear_does_not_normalise_weights():
    """linear is the plain sum: w = (1, 1) gives tau1 + tau2 = (4, 1)."""
    out = M.linear([{"x": vec(1, 2)}, {"x": vec(3, -1)}], [1.0, 1.0])
    close(out["x"], vec(4, 1))


def test_merge_linear_hand_values_and_weight_normalisation():
    """base (1, 1); models (2, 3), (4, 0) -> taus (1, 2), (3, -1).
    weights (1, 3) normalise to (0.25, 0.75): merged tau (2.5, -0.25), theta = (3.5, 0.75).
    weights (2, 6) normalise to the same."""
    base = {"x": vec(1, 1)}
    models = [{"x": vec(2, 3)}, {"x": vec(4, 0)}]
    close(M.merge(base, models, [1, 3], method="linear")["x"], vec(3.5, 0.75))
    close(M.merge(base, models, [2, 6], method="linear")["x"], vec(3.5, 0.75))
    close(M.merge(base, models, [0.25, 0.75], method="linear")["x"], vec(3.5, 0.75))


def test_merge_default_weights_are_uniform():
    """Default weights 1/L: linear merge of taus (1, 2), (3, -1) is (2, 0.5); theta = (3, 1.5)."""
    base = {"x": vec(1, 1)}
    models = [{"x": vec(2, 3)}, {"x": vec(4, 0)}]
    close(M.merge(base, models, method="linear")["x"], vec(3, 1.5))
    uniform = M.merge(base, models, method="linear")["x"]
    close(uniform, M.merge(base, models, [7, 7], method="linear")["x"])


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_zero_weight_model_is_ignored(method):
    """weights (1, 0): the merge is model 0 itself."""
    base, m0, m1 = random_state(0), random_state(1), random_state(2)
    out = M.merge(base, [m0, m1], [1, 0], method=method)
    for k in base:
        close(out[k], m0[k])


# ---------------------------------------------------------------------------------------
# Slerp
# ---------------------------------------------------------------------------------------


def test_slerp_orthogonal_unit_vectors_half():
    """a = (1, 0), b = (0, 1): Omega = pi/2, sin Omega = 1, at t = 1/2 both coefficients are
    sin(pi/4) = 1/sqrt2, so slerp = (1/sqrt2, 1/sqrt2), on the unit circle."""
    out = M.slerp_tensor(vec(1, 0), vec(0, 1), 0.5)
    close(out, vec(SQRT_HALF, SQRT_HALF))
    assert abs(out.norm().item() - 1.0) < 1e-6


def test_slerp_orthogonal_unit_vectors_third():
    """t = 1/3: coefficient of a is sin((2/3) pi/2) = sin(pi/3) = sqrt3/2, of b sin(pi/6) = 1/2,
    so slerp = (0.866, 0.5)."""
    close(M.slerp_tensor(vec(1, 0), vec(0, 1), 1 / 3), vec(math.sqrt(3) / 2, 0.5))


def test_slerp_on_dicts_flattens_each_tensor():
    """A 2 x 2 tensor is one vector: a = [[1, 0], [0, 0]], b = [[0, 0], [0, 1]] are orthogonal,
    so at t = 1/2 the result is [[1/sqrt2, 0], [0, 1/sqrt2]]."""
    a = {"w": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}
    b = {"w": torch.tensor([[0.0, 0.0], [0.0, 1.0]])}
    close(M.slerp(a, b, 0.5)["w"], torch.tensor([[SQRT_HALF, 0.0], [0.0, SQRT_HALF]]))


def test_slerp_endpoints():
    """t = 0 gives a exactly, t = 1 gives b exactly (sin 0 = 0, sin Omega / sin Omega = 1)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.equal(M.slerp_tensor(a, b, 0.0), a)
    assert torch.equal(M.slerp_tensor(a, b, 1.0), b)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_of_a_with_itself_is_a(t):
    """Omega = 0 -> the parallel fallback (1-t) a + t a = a."""
    a = torch.randn(7, generator=torch.Generator().manual_seed(1))
    close(M.slerp_tensor(a, a, t), a, rtol=0, atol=1e-7)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.7])
def test_slerp_preserves_norm_of_equal_norm_inputs_but_linear_does_not(t):
    """|a| = |b| = 3 -> |slerp(a, b, t)| = 3 for every t. Linear interpolation of the
    orthogonal unit vectors (1, 0), (0, 1) at 1/2 is (1/2, 1/2), norm 1/sqrt2."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, generator=g), torch.randn(10, generator=g)
    a, b = 3 * a / a.norm(), 3 * b / b.norm()
    assert abs(M.slerp_tensor(a, b, t).norm().item() - 3.0) < 1e-5
    assert abs(M.slerp_tensor(a, b, t).norm().item() - ((1 - t) * a + t * b).norm().item()) > 1e-2
    lin = M.linear([{"x": vec(1, 0)}, {"x": vec(0, 1)}], [0.5, 0.5])["x"]
    assert abs(lin.norm().item() - SQRT_HALF) < 1e-6


def test_slerp_fallbacks_antiparallel_and_zero():
    """Antiparallel: lerp, so slerp(a, -a, 1/2) = 0. Zero input: lerp, slerp(0, b, 1/4) = b / 4."""
    a = vec(1, 2, 3)
    close(M.slerp_tensor(a, -a, 0.5), torch.zeros(3))
    close(M.slerp_tensor(torch.zeros(3), a, 0.25), a / 4)


def test_slerp_keeps_low_precision_dtype():
    """bf16 in -> bf16 out, matching the float32 result to bf16 precision."""
    a, b = vec(1, 0, 2), vec(0, 1, -1)
    out = M.slerp_tensor(a.bfloat16(), b.bfloat16(), 0.3)
    assert out.dtype == torch.bfloat16
    close(out.float(), M.slerp_tensor(a, b, 0.3), rtol=1e-2, atol=1e-2)


def test_slerp_rejects_t_outside_unit_interval_and_bad_shapes():
    with pytest.raises(ValueError, match="t <= 1"):
        M.slerp_tensor(vec(1, 0), vec(0, 1), 1.5)
    with pytest.raises(ValueError, match="equal shapes"):
        M.slerp_tensor(vec(1, 0), vec(0, 1, 0), 0.5)


def test_merge_slerp_two_models_is_shoemake():
    """For L = 2 with weights (1, 3) the sequential scheme is one step,
    slerp(tau1, tau2, 3 / (1 + 3) = 0.75); merge adds the base back."""
    base, m0, m1 = random_state(0), random_state(1), random_state(2)
    taus = M.task_vectors(base, [m0, m1])
    expected = M.slerp(taus[0], taus[1], 0.75)
    out = M.merge(base, [m0, m1], [1, 3], method="slerp")
    for k in base:
        close(out[k], base[k] + expected[k], rtol=1e-5, atol=1e-5)


def test_merge_slerp_hand_values_orthogonal_task_vectors():
    """base (1, 1); taus (1, 0), (0, 1) -> slerp at 1/2 = (1/sqrt2, 1/sqrt2);
    theta = (1 + 0.7071, 1 + 0.7071). Linear would give (1.5, 1.5)."""
    base = {"x": vec(1, 1)}
    models = [{"x": vec(2, 1)}, {"x": vec(1, 2)}]
    close(M.merge(base, models)["x"], vec(1 + SQRT_HALF, 1 + SQRT_HALF))
    close(M.merge(base, models, method="linear")["x"], vec(1.5, 1.5))


def test_sequential_slerp_three_orthogonal_documented_values_and_order_dependence():
    """e1, e2, e3 with weights 1/3: m2 = slerp(e1, e2, 1/2) = (e1 + e2)/sqrt2; m2 is orthogonal
    to e3, so m3 = sin(pi/3) m2 + sin(pi/6) e3 = sqrt(3/8) (e1 + e2) + e3 / 2
    = (0.6124, 0.6124, 0.5), norm sqrt(3/8 + 3/8 + 1/4) = 1. Feeding e3 first moves the 0.5
    to e2's slot: the scheme is order dependent (documented)."""
    e = torch.eye(3)
    taus = [{"x": e[i]} for i in range(3)]
    c = math.sqrt(3 / 8)
    out = M.slerp_many(taus)["x"]
    close(out, vec(c, c, 0.5))
    assert abs(out.norm().item() - 1.0) < 1e-6
    out_perm = M.slerp_many([taus[2], taus[0], taus[1]])["x"]
    close(out_perm, vec(c, 0.5, c))


def test_sequential_slerp_coplanar_is_order_independent():
    """Unit vectors at angles 0, 30 and 90 degrees in one plane, weights 1/3: every step
    moves along the same circle, so the result is the unit vector at the mean angle 40
    degrees, whatever the order."""
    def unit(deg):
        r = math.radians(deg)
        return {"x": vec(math.cos(r), math.sin(r))}

    taus = [unit(0), unit(30), unit(90)]
    expected = unit(40)["x"]
    close(M.slerp_many(taus)["x"], expected)
    close(M.slerp_many([taus[2], taus[0], taus[1]])["x"], expected)


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize("n_models", [2, 3])
def test_merge_of_identical_models_returns_them(method, n_models):
    """All task vectors equal tau -> any weighted merge is tau -> theta_base + tau = the model."""
    base, model = random_state(0), random_state(1)
    out = M.merge(base, [model] * n_models, method=method)
    for k in base:
        close(out[k], model[k], rtol=0, atol=1e-6)


def test_merge_keeps_input_dtype():
    base = {k: v.half() for k, v in random_state(0).items()}
    models = [{k: v.half() for k, v in random_state(s).items()} for s in (1, 2)]
    out = M.merge(base, models)
    assert all(out[k].dtype == torch.float16 for k in base)


def test_integer_buffers_keep_base_value():
    """num_batches_tracked 5 (base), 7 and 9 (models) -> merged keeps 5, as int64."""
    base = {"bn.weight": vec(1, 1), "bn.num_batches_tracked": torch.tensor(5)}
    models = [
        {"bn.weight": vec(2, 1), "bn.num_batches_tracked": torch.tensor(7)},
        {"bn.weight": vec(1, 2), "bn.num_batches_tracked": torch.tensor(9)},
    ]
    for method in M.METHODS:
        out = M.merge(base, models, method=method)
        assert out["bn.num_batches_tracked"].dtype == torch.int64
        assert out["bn.num_batches_tracked"].item() == 5


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_error_mismatched_keys_names_the_key():
    base = {"a": vec(1), "b": vec(2)}
    with pytest.raises(KeyError, match="'b'"):
        M.merge(base, [{"a": vec(1), "c": vec(2)}])
    with pytest.raises(KeyError, match="'c'"):
        M.task_vectors(base, [{"a": vec(1), "b": vec(2), "c": vec(3)}])


def test_error_mismatched_shapes_names_the_key():
    base = {"layer.weight": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"'layer.weight'.*\(2, 3\).*\(3, 2\)"):
        M.merge(base, [{"layer.weight": torch.zeros(3, 2)}])
    with pytest.raises(ValueError, match="'layer.weight'"):
        M.linear([base, {"layer.weight": torch.zeros(3, 2)}], [0.5, 0.5])


def test_error_float_vs_integer_entry():
    with pytest.raises(TypeError, match="'n'"):
        M.task_vectors({"n": torch.tensor(1)}, [{"n": torch.tensor(1.0)}])


def test_error_unknown_method_lists_known_ones():
    base = {"x": vec(1)}
    with pytest.raises(ValueError, match=r"'slurp'.*\['linear', 'slerp'\].*did you mean 'slerp'"):
        M.merge(base, [base], method="slurp")


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1, -1], ">= 0"),
        ([0, 0], "all be zero"),
        ([1], "1 weights given for 2 models"),
        ([1, float("nan")], "finite"),
    ],
)
def test_error_bad_weights(weights, match):
    base = {"x": vec(1)}
    with pytest.raises(ValueError, match=match):
        M.merge(base, [base, base], weights)


def test_error_no_models():
    with pytest.raises(ValueError, match="at least one"):
        M.merge({"x": vec(1)}, [])


# ---------------------------------------------------------------------------------------
# apply_delta
# ---------------------------------------------------------------------------------------


def test_apply_delta_hand_values_and_errors():
    """(1, 2) + (0.5, -1) = (1.5, 1); keys without a delta are the base's own tensors.
    A key with a stray prefix is refused, naming the closest base key."""
    base = {"lin.weight": vec(1, 2), "lin.bias": vec(3)}
    out = M.apply_delta(base, {"lin.weight": vec(0.5, -1)})
    close(out["lin.weight"], vec(1.5, 1))
    assert out["lin.bias"] is base["lin.bias"]
    with pytest.raises(KeyError, match="'unet.lin.weight'.*closest base key 'lin.weight'"):
        M.apply_delta(base, {"unet.lin.weight": vec(0, 0)})
    with pytest.raises(ValueError, match="'lin.weight'"):
        M.apply_delta(base, {"lin.weight": vec(0, 0, 0)})


# ---------------------------------------------------------------------------------------
# LoRA (peft)
# ---------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pw = nn.Conv2d(4, 2, 1)

    def forward(self, x):  # pragma: no cover - only the weights are used
        return self.pw(self.conv(x))


TARGETS = ["lin", "conv", "pw"]


def make_peft(seed: int, r: int = 2, alpha: float = 4):
    """A tiny model wrapped by peft, with random (non-zero) lora_B. Returns
    (peft model, base state dict before wrapping)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    model = Tiny()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return pm, base


def adapter_state(pm):
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(pm).items()}


def test_lora_delta_matches_peft_merge_and_unload():
    """r = 2, lora_alpha = 4 -> scaling 2; base + lora_delta must equal the weights peft
    writes in merge_and_unload, for Linear, 3x3 Conv2d and 1x1 Conv2d."""
    pm, base = make_peft(0)
    state = adapter_state(pm)
    assert "base_model.model.conv.lora_A.weight" in state
    delta = M.lora_delta(state, M.lora_scaling(2, 4))
    assert set(delta) == {"lin.weight", "conv.weight", "pw.weight"}
    assert delta["conv.weight"].shape == (4, 3, 3, 3)
    merged = pm.merge_and_unload().state_dict()
    for k, d in delta.items():
        assert d.abs().max() > 1e-3  # the check below is not vacuous
        close(base[k] + d, merged[k], rtol=1e-5, atol=1e-5)
    close(M.apply_delta(base, delta)["conv.weight"], merged["conv.weight"], rtol=1e-5, atol=1e-5)


def test_lora_delta_scaling_mapping_and_hand_values():
    """A = [[1, 2]] (r = 1, in = 2), B = [[3], [4]] (out = 2): B @ A = [[3, 6], [4, 8]];
    scaling 0.5 (looked up by module name) -> [[1.5, 3], [2, 4]]."""
    state = {
        "base_model.model.m.lora_A.weight": torch.tensor([[1.0, 2.0]]),
        "base_model.model.m.lora_B.weight": torch.tensor([[3.0], [4.0]]),
    }
    expected = torch.tensor([[1.5, 3.0], [2.0, 4.0]])
    close(M.lora_delta(state, {"m": 0.5})["m.weight"], expected)
    close(M.lora_delta(state, {"m.weight": 0.5})["m.weight"], expected)
    with pytest.raises(KeyError, match="'m.weight'"):
        M.lora_delta(state, {"other": 1.0})


def test_lora_delta_rejects_unpaired_and_unknown_keys():
    A = torch.ones(1, 2)
    with pytest.raises(ValueError, match="without both"):
        M.lora_delta({"base_model.model.m.lora_A.weight": A}, 1.0)
    with pytest.raises(ValueError, match="unsupported adapter keys.*lora_magnitude_vector"):
        M.lora_delta(
            {
                "base_model.model.m.lora_A.weight": A,
                "base_model.model.m.lora_B.weight": torch.ones(2, 1),
                "base_model.model.m.lora_magnitude_vector": torch.ones(2),
            },
            1.0,
        )


def test_to_lora_round_trip_exact_at_true_rank_and_lossy_below():
    """delta = s * B @ A from r = 2 factors; to_lora at rank 2 and 4 reproduces it
    (rank 4 pads two zero components); rank 1 cannot (it drops a non-zero singular value)."""
    pm, _ = make_peft(1)
    delta = M.lora_delta(adapter_state(pm), 2.0)
    for rank in (2, 4):
        state, s = M.to_lora(delta, rank)
        assert state["base_model.model.conv.lora_A.weight"].shape == (rank, 3, 3, 3)
        assert state["base_model.model.conv.lora_B.weight"].shape == (4, rank, 1, 1)
        back = M.lora_delta(state, s)
        for k in delta:
            close(back[k], delta[k], rtol=1e-5, atol=1e-5)
    state, s = M.to_lora(delta, 1)
    err = (M.lora_delta(state, s)["lin.weight"] - delta["lin.weight"]).norm()
    assert err > 1e-3 * delta["lin.weight"].norm()


def test_to_lora_with_scaling_loads_into_peft():
    """to_lora(delta, r=4, scaling=2) loaded into LoraConfig(r=4, lora_alpha=8) (scaling 8/4 = 2)
    and merged by peft gives base + delta: key names and layouts are peft's."""
    peft = pytest.importorskip("peft")
    pm, base = make_peft(2)
    delta = M.lora_delta(adapter_state(pm), 2.0)
    state, s = M.to_lora(delta, 4, scaling=2.0)
    assert s == 2.0
    torch.manual_seed(0)
    fresh = Tiny()
    fresh.load_state_dict(base)
    target = peft.get_peft_model(fresh, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    result = peft.set_peft_model_state_dict(target, state)
    assert not result.unexpected_keys
    merged = target.merge_and_unload().state_dict()
    for k in delta:
        close(merged[k], base[k] + delta[k], rtol=1e-5, atol=1e-5)


def test_merge_lora_linear_is_average_of_dense_deltas_not_of_factors():
    """Linear (0.5, 0.5) merge of adapters = (delta1 + delta2) / 2. Averaging A and B
    separately gives (B1 + B2)(A1 + A2) s / 4, which differs by the cross terms."""
    (pm1, _), (pm2, _) = make_peft(3), make_peft(4)
    s1, s2 = adapter_state(pm1), adapter_state(pm2)
    d1, d2 = M.lora_delta(s1, 2.0), M.lora_delta(s2, 2.0)
    merged = M.merge_lora([s1, s2], 2.0, [0.5, 0.5], method="linear")
    for k in d1:
        close(merged[k], (d1[k] + d2[k]) / 2, rtol=1e-5, atol=1e-5)
    factor_avg = M.lora_delta({k: (s1[k] + s2[k]) / 2 for k in s1}, 2.0)
    assert (factor_avg["lin.weight"] - merged["lin.weight"]).abs().max() > 1e-2


def test_merge_lora_slerp_refactors_exactly_at_sum_of_ranks():
    """Two rank-2 adapters: the slerp merge is a per-tensor combination c1 d1 + c2 d2, rank <= 4,
    so to_lora(rank=4) is exact. Per-adapter scalings (2 and 1) enter the deltas."""
    (pm1, _), (pm2, _) = make_peft(5), make_peft(6)
    s1, s2 = adapter_state(pm1), adapter_state(pm2)
    merged = M.merge_lora([s1, s2], [2.0, 1.0])
    expected = M.slerp(M.lora_delta(s1, 2.0), M.lora_delta(s2, 1.0), 0.5)
    state, s = M.to_lora(merged, 4)
    back = M.lora_delta(state, s)
    for k in merged:
        close(merged[k], expected[k], rtol=1e-5, atol=1e-5)
        close(back[k], merged[k], rtol=1e-5, atol=1e-5)
