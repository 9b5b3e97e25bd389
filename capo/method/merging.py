"""Weight merging for the SOUP baseline: task vectors, linear and spherical interpolation.

SOUP (METHOD.md): fine-tune one model per reward, then merge the L fine-tuned models by
spherical linear interpolation of their task vectors with uniform weights 1/L. Merging
per-reward fine-tunes is "rewarded soups" (Rame et al., 2023, arXiv:2306.04488), which
interpolates linearly; slerp is Shoemake (1985), "Animating rotation with quaternion
curves", SIGGRAPH. Everything here is pure math on ``dict[str, Tensor]`` state dicts:
no paths, no configs, no I/O.

Notation (paper symbol -> name in code)
    theta_base      ``base``               base-model weights
    theta_i         ``models[i]``          weights fine-tuned for reward i, i = 1..L
    tau_i           ``taus[i]``            task vector theta_i - theta_base
    w_i             ``weights[i]``         merge weights, >= 0; ``merge`` normalises them
    Omega           ``omega``              angle between two (flattened) tensors
    A, B            ``lora_A``, ``lora_B`` peft LoRA factors, A: r x in, B: out x r
    s               ``scaling``            LoRA scaling (lora_alpha / r in peft)
    delta_W         ``delta``              dense LoRA update s * B @ A

Every merge acts tensor by tensor: each state-dict entry is flattened into one vector,
the vectors with the same key are combined, and the result is reshaped back. The
arithmetic runs in float64 and the result is cast back to the input dtype.

Only floating-point tensors are merged. Integer and bool buffers (BatchNorm's
``num_batches_tracked``, position ids, ...) have no meaningful task vector: they are left
out of task vectors, and ``merge`` keeps the base model's value.

For LoRA, the task vector of an adapter is its dense update delta_W = s * B @ A (the
base weights are shared, so theta_i - theta_base = delta_W_i). Merge the dense deltas,
never A and B separately: B @ A is bilinear, so (w1 B1 + w2 B2) @ (w1 A1 + w2 A2) is not
w1 B1 @ A1 + w2 B2 @ A2 (the cross terms w1 w2 (B1 @ A2 + B2 @ A1) remain; it agrees
only in special cases such as identical adapters). ``to_lora`` factors a merged delta
back into LoRA form by truncated SVD.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from functools import reduce

import torch
from torch import Tensor
from capo.method.selection import normalise_weights as normalise

StateDict = Mapping[str, Tensor]

PEFT_PREFIX = "base_model.model."
_LORA_A = ".lora_A.weight"
_LORA_B = ".lora_B.weight"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _work_dtype(t: Tensor) -> torch.dtype:
    """Dtype for the arithmetic: float64, except on MPS, which has none."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _mergeable(t: Tensor) -> bool:
    """Whether an entry is merged (floating point) or kept from the base (int/bool)."""
    return torch.is_floating_point(t)


def _result_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    return reduce(torch.promote_types, (t.dtype for t in tensors))


def _preview(names, n: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(repr(k) for k in names[:n]) + more


def _check_compatible(
    reference: StateDict, others: Sequence[StateDict], ref_name: str, other_name: str
) -> None:
    """Raise if any of ``others`` differs from ``reference`` in keys, shapes or kind."""
    for key, t in reference.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{ref_name}[{key!r}] is a {type(t).__name__}, not a Tensor")
    for i, other in enumerate(others):
        who = f"{other_name} {i}"
        missing = reference.keys() - other.keys()
        extra = other.keys() - reference.keys()
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {_preview(missing)}")
            if extra:
                parts.append(f"unexpected keys {_preview(extra)}")
            raise KeyError(f"{who} does not match {ref_name}: " + "; ".join(parts))
        for key, ref in reference.items():
            t = other[key]
            if not isinstance(t, Tensor):
                raise TypeError(f"{who}[{key!r}] is a {type(t).__name__}, not a Tensor")
            if t.shape != ref.shape:
                raise ValueError(
                    f"shape mismatch for key {key!r}: {ref_name} has {tuple(ref.shape)}, "
                    f"{who} has {tuple(t.shape)}"
                )
            if _mergeable(t) != _mergeable(ref):
                raise TypeError(
                    f"dtype kind mismatch for key {key!r}: {ref_name} has {ref.dtype}, "
                    f"{who} has {t.dtype} (floating tensors are merged, integer buffers kept)"
                )


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Merge weights as floats summing to 1; ``None`` gives uniform weights 1/n
    (``capo.method.selection.normalise_weights``, for models; fewer than one raises)."""
    return normalise(weights, n, what="models").tolist()


# ---------------------------------------------------------------------------------------
# Tensor-level combinations (flat float64 vectors in, flat float64 vector out)
# ---------------------------------------------------------------------------------------


def _lerp_flat(x: Tensor, y: Tensor, t: float) -> Tensor:
    return (1.0 - t) * x + t * y


def _slerp_flat(x: Tensor, y: Tensor, t: float, eps: float) -> Tensor:
    """Shoemake (1985): sin((1-t)Omega)/sin(Omega) x + sin(t Omega)/sin(Omega) y."""
    norm_x, norm_y = float(x.norm()), float(y.norm())
    if norm_x == 0.0 or norm_y == 0.0:
        return _lerp_flat(x, y, t)  # angle undefined
    cos = float(torch.dot(x, y)) / (norm_x * norm_y)
    cos = min(1.0, max(-1.0, cos))
    if abs(cos) > 1.0 - eps:
        # Parallel: slerp and lerp agree to O(Omega^2). Antiparallel: the great circle
        # is not unique, so no slerp exists; lerp is the documented choice.
        return _lerp_flat(x, y, t)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return (math.sin((1.0 - t) * omega) / sin_omega) * x + (math.sin(t * omega) / sin_omega) * y


def _linear_many_flat(xs: Sequence[Tensor], weights: Sequence[float], eps: float) -> Tensor:
    out = torch.zeros_like(xs[0])
    for x, w in zip(xs, weights):
        out += w * x
    return out


def _slerp_many_flat(xs: Sequence[Tensor], weights: Sequence[float], eps: float) -> Tensor:
    """Sequential slerp: m_1 = x_1, m_k = slerp(m_{k-1}, x_k, w_k / (w_1 + ... + w_k))."""
    pairs = [(x, w) for x, w in zip(xs, weights) if w > 0]  # zero weight: no contribution
    merged, cumulative = pairs[0][0], pairs[0][1]
    for x, w in pairs[1:]:
        cumulative += w
        merged = _slerp_flat(merged, x, w / cumulative, eps)
    return merged


_COMBINE: dict[str, Callable[[Sequence[Tensor], Sequence[float], float], Tensor]] = {
    "linear": _linear_many_flat,
    "slerp": _slerp_many_flat,
}
METHODS = tuple(_COMBINE)


def _get_combine(method: str):
    if method not in _COMBINE:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown merge method {method!r}: known methods are {list(METHODS)}{hint}"
        )
    return _COMBINE[method]


def _combine_tensors(
    tensors: Sequence[Tensor], weights: Sequence[float], method: str, eps: float, out_dtype
) -> Tensor:
    combine = _get_combine(method)
    wd = _work_dtype(tensors[0])
    flat = [t.reshape(-1).to(wd) for t in tensors]
    return combine(flat, weights, eps).reshape(tensors[0].shape).to(out_dtype)


# ---------------------------------------------------------------------------------------
# Public API: task vectors and merges
# ---------------------------------------------------------------------------------------


def task_vectors(base: StateDict, models: Sequence[StateDict]) -> list[dict[str, Tensor]]:
    """Task vectors tau_i = theta_i - theta_base (Ilharco et al. 2023; rewarded soups).

    Every model must have exactly the base's keys and shapes. Non-floating entries
    (integer/bool buffers) are left out: they are not merged, ``merge`` keeps the base's.
    """
    _check_compatible(base, models, "base", "model")
    return [{k: m[k] - b for k, b in base.items() if _mergeable(b)} for m in models]


def _check_task_vectors(taus: Sequence[StateDict]) -> None:
    _check_compatible(taus[0], taus[1:], "task vector 0", "task vector")
    for k, t in taus[0].items():
        if not _mergeable(t):
            raise TypeError(
                f"task vector entry {k!r} has dtype {t.dtype}; only floating tensors merge"
            )


def _combine_dicts(
    taus: Sequence[StateDict], weights: Sequence[float], method: str, eps: float
) -> dict[str, Tensor]:
    _check_task_vectors(taus)
    out = {}
    for key in taus[0]:
        tensors = [tau[key] for tau in taus]
        out[key] = _combine_tensors(tensors, weights, method, eps, _result_dtype(tensors))
    return out


def linear(taus: Sequence[StateDict], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted sum sum_i w_i tau_i, as given (no normalisation; ``merge`` normalises)."""
    if not taus:
        raise ValueError("need at least one task vector")
    w = [float(x) for x in weights]
    if len(w) != len(taus):
        raise ValueError(f"got {len(w)} weights for {len(taus)} task vectors")
    return _combine_dicts(taus, w, "linear", 0.0)


def slerp_tensor(a: Tensor, b: Tensor, t: float, *, eps: float = 1e-6) -> Tensor:
    """Shoemake's (1985) slerp of two tensors, flattened to vectors.

    slerp(a, b, t) = sin((1-t) Omega) / sin(Omega) a + sin(t Omega) / sin(Omega) b, with
    Omega = arccos(<a, b> / (|a| |b|)). The formula is applied to the raw (not normalised)
    vectors, so for |a| = |b| the result has the same norm for every t; for unequal norms
    neither norm nor direction is interpolated exactly. t = 0 gives a, t = 1 gives b.

    Falls back to linear interpolation (1-t) a + t b when either vector is zero (no
    angle), or when |cos Omega| > 1 - eps: parallel vectors (where the two agree up to
    O(Omega^2)) and antiparallel ones (where the great circle is not unique; lerp then
    shrinks towards zero, e.g. slerp(a, -a, 0.5) = 0). Computed in float64 and cast back
    to the promoted input dtype.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (_mergeable(a) and _mergeable(b)):
        raise TypeError(f"slerp needs floating tensors, got {a.dtype} and {b.dtype}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"slerp needs 0 <= t <= 1, got {t}")
    wd = _work_dtype(a)
    out = _slerp_flat(a.reshape(-1).to(wd), b.reshape(-1).to(wd), float(t), eps)
    return out.reshape(a.shape).to(_result_dtype([a, b]))


def slerp(tau_a: StateDict, tau_b: StateDict, t: float, *, eps: float = 1e-6) -> dict[str, Tensor]:
    """Shoemake's slerp applied key by key to two task vectors (see ``slerp_tensor``)."""
    _check_task_vectors([tau_a, tau_b])
    return {k: slerp_tensor(tau_a[k], tau_b[k], t, eps=eps) for k in tau_a}


def slerp_many(
    taus: Sequence[StateDict], weights: Sequence[float] | None = None, *, eps: float = 1e-6
) -> dict[str, Tensor]:
    """Weighted slerp of L >= 1 task vectors by the sequential scheme, key by key.

    Weights are normalised (w_i >= 0, sum 1; ``None`` = uniform 1/L), zero-weight task
    vectors are dropped, then

        m_1 = tau_1,    m_k = slerp(m_{k-1}, tau_k, w_k / (w_1 + ... + w_k)),

    and m_L is returned. The step size w_k / (w_1 + ... + w_k) is the one that makes the
    same recursion with lerp produce the weighted mean.

    Properties (each tested):
      * L = 2: exactly Shoemake's slerp(tau_1, tau_2, w_2).
      * Identical inputs: returns them (every step interpolates between equal vectors).
      * Equal-norm inputs: the result has that norm (each step preserves it).
      * Order dependent for L >= 3: permuting the models (with their weights) changes the
        result in general, also for equal pairwise angles. Three orthogonal unit vectors
        e1, e2, e3 with weights 1/3 give sqrt(3/8) e1 + sqrt(3/8) e2 + 1/2 e3
        (0.612, 0.612, 0.5), not the symmetric (1, 1, 1)/sqrt(3): the last model gets
        less weight. It is order independent when all task vectors of a tensor lie in one
        plane within a half-turn (slerp then adds angles). Pass models in a fixed,
        recorded order (e.g. the order of the reward list) so merges are reproducible.
    """
    return merge_task_vectors(taus, weights, "slerp", eps=eps)


def merge_task_vectors(
    taus: Sequence[StateDict],
    weights: Sequence[float] | None = None,
    method: str = "slerp",
    *,
    eps: float = 1e-6,
) -> dict[str, Tensor]:
    """Merged task vector of L task vectors; weights normalised to sum 1 (default 1/L).

    ``method="linear"``: sum_i w_i tau_i. ``method="slerp"``: ``slerp_many``.
    """
    _get_combine(method)
    if not taus:
        raise ValueError("need at least one task vector")
    w = normalise_weights(weights, len(taus))
    return _combine_dicts(taus, w, method, eps)


def merge(
    base: StateDict,
    models: Sequence[StateDict],
    weights: Sequence[float] | None = None,
    method: str = "slerp",
    *,
    eps: float = 1e-6,
) -> dict[str, Tensor]:
    """SOUP merge: theta_base + merged task vector of ``models`` (``merge_task_vectors``).

    Weights default to uniform 1/L and are normalised to sum 1. Integer/bool buffers take
    the base's value (copied). Each output tensor has the base tensor's dtype. Task
    vectors are formed one key at a time, so peak extra memory is a few copies of the
    largest tensor, not of the model.
    """
    _get_combine(method)
    w = normalise_weights(weights, len(models))
    _check_compatible(base, models, "base", "model")
    out: dict[str, Tensor] = {}
    for key, b in base.items():
        if not _mergeable(b):
            out[key] = b.clone()
            continue
        wd = _work_dtype(b)
        b_work = b.to(wd)
        taus = [m[key].to(wd) - b_work for m in models]
        out[key] = (b_work + _combine_tensors(taus, w, method, eps, wd)).to(b.dtype)
    return out


def apply_delta(base: StateDict, delta: StateDict) -> dict[str, Tensor]:
    """theta_base + delta for the keys of ``delta``; other entries are the base's own tensors.

    Every delta key must be a floating entry of ``base`` with the same shape (e.g. the
    output of ``lora_delta`` or ``merge_lora``). Sums in float64, cast to the base dtype.
    """
    out = dict(base)
    for key, d in delta.items():
        if key not in base:
            close = difflib.get_close_matches(key, list(base), n=1)
            hint = f"; closest base key {close[0]!r}" if close else ""
            raise KeyError(f"delta key {key!r} is not in the base state dict{hint}")
        b = base[key]
        if d.shape != b.shape:
            raise ValueError(
                f"shape mismatch for key {key!r}: base has {tuple(b.shape)}, "
                f"delta has {tuple(d.shape)}"
            )
        if not (_mergeable(b) and _mergeable(d)):
            raise TypeError(f"key {key!r}: cannot add a delta to {b.dtype} with {d.dtype}")
        wd = _work_dtype(b)
        out[key] = (b.to(wd) + d.to(wd)).to(b.dtype)
    return out


# ---------------------------------------------------------------------------------------
# LoRA (peft format)
# ---------------------------------------------------------------------------------------


def lora_scaling(rank: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """peft's LoRA scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    return lora_alpha / math.sqrt(rank) if use_rslora else lora_alpha / rank


def _strip(module: str, prefix: str) -> str:
    return module[len(prefix):] if prefix and module.startswith(prefix) else module


def lora_delta(
    adapter_state: StateDict,
    scaling: float | Mapping[str, float],
    *,
    prefix: str = PEFT_PREFIX,
) -> dict[str, Tensor]:
    """Dense updates delta_W = s * B @ A of a peft LoRA adapter, keyed by base weight name.

    ``adapter_state`` is ``peft.get_peft_model_state_dict(model)`` (or a saved
    ``adapter_model.safetensors``): keys ``<prefix><module>.lora_A.weight`` (r x in) and
    ``<prefix><module>.lora_B.weight`` (out x r). The output key is ``<module>.weight``
    (``prefix`` stripped when present). Conv LoRA (A: r x in x k x k, B: out x r x 1 x 1)
    gives delta[o, i, :, :] = s * sum_j B[o, j] A[j, i, :, :], i.e. B @ A.reshape(r, -1)
    reshaped to out x in x k x k, which is what peft merges for ``groups == 1``.

    ``scaling``: one float for all modules, or a mapping looked up by output key
    (``"<module>.weight"``) and then by module name (``"<module>"``); see ``lora_scaling``.

    Not supported (raise on their keys rather than dropping them): DoRA magnitudes, LoRA
    biases, ``modules_to_save``, embedding LoRA, adapter names left in keys. Deltas are in
    the module's own weight layout, so layers with peft's ``fan_in_fan_out=True`` (GPT-2
    ``Conv1D``) and grouped convolutions are not handled.
    """
    a_mod = {k[: -len(_LORA_A)]: k for k in adapter_state if k.endswith(_LORA_A)}
    b_mod = {k[: -len(_LORA_B)]: k for k in adapter_state if k.endswith(_LORA_B)}
    other = set(adapter_state) - set(a_mod.values()) - set(b_mod.values())
    if other:
        raise ValueError(
            f"unsupported adapter keys {_preview(other)}: only '<module>.lora_A.weight' and "
            "'<module>.lora_B.weight' are understood (no DoRA, LoRA bias, modules_to_save, "
            "embedding LoRA; use peft.get_peft_model_state_dict, which drops adapter names)"
        )
    unpaired = a_mod.keys() ^ b_mod.keys()
    if unpaired:
        raise ValueError(f"LoRA modules without both lora_A and lora_B: {_preview(unpaired)}")
    out: dict[str, Tensor] = {}
    for module in sorted(a_mod):
        A, B = adapter_state[a_mod[module]], adapter_state[b_mod[module]]
        rank = A.shape[0]
        if A.ndim < 2 or B.ndim != A.ndim or B.shape[1] != rank or any(s != 1 for s in B.shape[2:]):
            raise ValueError(
                f"LoRA factors of {module!r} do not fit: lora_A {tuple(A.shape)}, "
                f"lora_B {tuple(B.shape)} "
                "(expected A: r x in [x k ...], B: out x r [x 1 ...])"
            )
        name = _strip(module, prefix)
        key = name + ".weight"
        s = _scaling_for(scaling, key, name)
        wd = _work_dtype(A)
        d = s * (B.reshape(B.shape[0], rank).to(wd) @ A.reshape(rank, -1).to(wd))
        out[key] = d.reshape(B.shape[0], *A.shape[1:]).to(_result_dtype([A, B]))
    return out


def _scaling_for(scaling: float | Mapping[str, float], key: str, name: str) -> float:
    if isinstance(scaling, Mapping):
        for k in (key, name):
            if k in scaling:
                return float(scaling[k])
        raise KeyError(f"no LoRA scaling for {key!r} (looked up {key!r} and {name!r})")
    return float(scaling)


def merge_lora(
    adapters: Sequence[StateDict],
    scalings: float | Mapping[str, float] | Sequence[float | Mapping[str, float]],
    weights: Sequence[float] | None = None,
    method: str = "slerp",
    *,
    prefix: str = PEFT_PREFIX,
    eps: float = 1e-6,
) -> dict[str, Tensor]:
    """Merged dense delta of L LoRA adapters (add: ``apply_delta``; refactor: ``to_lora``).

    Each adapter's task vector is its dense delta (``lora_delta``); the deltas are merged
    like any task vectors (``merge_task_vectors``). Merging lora_A and lora_B separately
    would be wrong: B @ A is not linear in (A, B). ``scalings`` is one value for all
    adapters or one per adapter. All adapters must target the same modules.
    """
    if not adapters:
        raise ValueError("need at least one adapter")
    if isinstance(scalings, (int, float, Mapping)):
        scalings = [scalings] * len(adapters)
    if len(scalings) != len(adapters):
        raise ValueError(f"got {len(scalings)} scalings for {len(adapters)} adapters")
    deltas = [lora_delta(a, s, prefix=prefix) for a, s in zip(adapters, scalings)]
    return merge_task_vectors(deltas, weights, method, eps=eps)


def to_lora(
    delta: StateDict, rank: int, *, scaling: float = 1.0, prefix: str = PEFT_PREFIX
) -> tuple[dict[str, Tensor], float]:
    """Factor dense deltas into a peft LoRA adapter of rank ``rank`` by truncated SVD.

    For each ``<module>.weight`` of shape out x in [x k ...]: delta / s = U S V^T (on the
    delta reshaped to out x (in k ...)), B = U_r S_r^(1/2), A = S_r^(1/2) V_r^T, stored as
    ``<prefix><module>.lora_A.weight`` (rank x in [x k ...]) and ``.lora_B.weight``
    (out x rank [x 1 ...]). Returns (adapter_state, s), s = ``scaling``; load it with
    ``LoraConfig(r=rank, lora_alpha=s * rank)``. Exact (up to float error) when ``rank``
    >= the delta's rank, e.g. >= the sum of the ranks of the adapters merged into it; else
    the best rank-``rank`` approximation in Frobenius norm (Eckart-Young). Modules with
    min(out, in k ...) < rank are padded with zero components so every module has rank
    ``rank``. Factors are computed in float64 and cast to the delta's dtype.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if scaling == 0:
        raise ValueError("scaling must be non-zero")
    state: dict[str, Tensor] = {}
    for key, d in delta.items():
        if not key.endswith(".weight"):
            raise ValueError(f"delta key {key!r} does not name a module weight ('<module>.weight')")
        if d.ndim < 2 or not _mergeable(d):
            raise ValueError(
                f"delta {key!r} ({d.dtype}, shape {tuple(d.shape)}) is not a weight matrix"
            )
        wd = _work_dtype(d)
        out_features = d.shape[0]
        matrix = d.reshape(out_features, -1).to(wd) / scaling
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
        k = min(rank, S.numel())
        root = S[:k].sqrt()
        B = matrix.new_zeros(out_features, rank)
        A = matrix.new_zeros(rank, matrix.shape[1])
        B[:, :k] = U[:, :k] * root
        A[:k] = root[:, None] * Vh[:k]
        module = prefix + key[: -len(".weight")]
        state[module + _LORA_A] = A.reshape(rank, *d.shape[1:]).to(d.dtype)
        state[module + _LORA_B] = B.reshape(out_features, rank, *([1] * (d.ndim - 2))).to(d.dtype)
    return state, float(scaling)
