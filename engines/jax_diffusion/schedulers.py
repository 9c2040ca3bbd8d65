"""Euler discrete, DDIM and DPM-Solver++ 2M as data: per-step coefficient tables, so the scheduler,
the number of steps and the prediction type are inputs of the compiled program, not its shape.

Every supported update is linear in the sample ``x``, the model output ``m`` and the previous
step's data prediction ``x0_prev`` (DPM-Solver++'s multistep memory), with one clamp::

    x0     = clip(a * x + b * m, -clip, clip)       # data prediction (DDIM's clip_sample)
    e      = r * x + s * m                          # noise prediction (DDIM)
    x_next = A * x + B * x0 + C * x0_prev + E * e

``plan`` computes the coefficients on the host from the same float32 tables diffusers builds
(betas, ``alphas_cumprod``, sigmas, timesteps) and the same formulas, in float64; ``step`` applies
one row of them. The scheduler settings come from the checkpoint's ``scheduler_config.json`` the
way ``SchedulerClass.from_config(pipe.scheduler.config)`` reads them: the keys the file sets
override the chosen scheduler's defaults. ``c_in`` scales the UNet input (Euler's
``scale_model_input``); ``init_sigma`` scales the initial noise.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

SCHEDULERS = ("euler", "ddim", "dpmpp_2m")
"""Names a request may ask for (diffusers classes: EulerDiscreteScheduler, DDIMScheduler,
DPMSolverMultistepScheduler with algorithm_type="dpmsolver++", solver_order=2)."""

_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "euler": {
        **_COMMON,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    },
    "ddim": {
        **_COMMON,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "thresholding": False,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
    },
    "dpmpp_2m": {
        **_COMMON,
        "thresholding": False,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "timestep_spacing": "linspace",
    },
}
# settings whose other values change the algorithm in ways not implemented here
_ONLY = {
    "thresholding": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "interpolation_type": ("linear",),
    "timestep_type": ("discrete",),
    "variance_type": (None,),
    "lambda_min_clipped": (-math.inf,),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "solver_type": ("midpoint", "heun"),
}


class UnsupportedScheduler(ValueError):
    """The scheduler name or one of the checkpoint's scheduler settings is not implemented."""


class StepTable(NamedTuple):
    """Per-step coefficients (each ``[..., steps]`` float32); see the module docstring."""

    t: Any  # the UNet's timestep
    c_in: Any
    a: Any
    b: Any
    clip: Any
    r: Any
    s: Any
    A: Any
    B: Any
    C: Any
    E: Any


class Plan(NamedTuple):
    table: StepTable  # numpy, [steps]
    init_sigma: float


def settings(kind: str, checkpoint_config: dict[str, Any]) -> dict[str, Any]:
    """The chosen scheduler's settings: its defaults, overridden by the checkpoint's keys."""
    if kind not in _DEFAULTS:
        raise UnsupportedScheduler(
            f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}"
        )
    out = {k: checkpoint_config.get(k, v) for k, v in _DEFAULTS[kind].items()}
    if out.get("lambda_min_clipped") is not None and out.get("lambda_min_clipped") == float("-inf"):
        out["lambda_min_clipped"] = -math.inf
    for key, allowed in _ONLY.items():
        if key in out and out[key] not in allowed:
            raise UnsupportedScheduler(
                f"scheduler {kind}: {key}={out[key]!r} is not supported "
                f"(supported: {', '.join(map(repr, allowed))})"
            )
    return out


def alphas_cumprod(cfg: dict[str, Any], zero_snr_floor: bool = True) -> np.ndarray:
    """diffusers' float32 ``alphas_cumprod`` (torch's CPU cumprod accumulates in float64).
    ``zero_snr_floor``: Euler and DPM-Solver (not DDIM) set the last one to 2**-24 when the betas
    are rescaled to zero terminal SNR."""
    n = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is not None:
        betas = np.asarray(cfg["trained_betas"], np.float32)
    elif cfg["beta_schedule"] == "linear":
        betas = np.linspace(cfg["beta_start"], cfg["beta_end"], n).astype(np.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        roots = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n).astype(np.float32)
        betas = roots * roots
    else:  # squaredcos_cap_v2

        def bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.asarray(
            [min(1 - bar((i + 1) / n) / bar(i / n), 0.999) for i in range(n)], np.float32
        )
    if cfg["rescale_betas_zero_snr"]:
        betas = _rescale_zero_terminal_snr(betas)
    alphas = np.float32(1.0) - betas
    cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    if cfg["rescale_betas_zero_snr"] and zero_snr_floor:
        cumprod[-1] = 2.0**-24
    return cumprod


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas = np.float32(1.0) - betas
    root = np.sqrt(np.cumprod(alphas.astype(np.float64)).astype(np.float32))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    bar = root * root
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def _karras(sigma_min: float, sigma_max: float, steps: int, cfg: dict[str, Any]) -> np.ndarray:
    sigma_min = cfg.get("sigma_min") or sigma_min
    sigma_max = cfg.get("sigma_max") or sigma_max
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / 7.0), sigma_max ** (1 / 7.0)
    return (hi + ramp * (lo - hi)) ** 7.0


def _identity(steps: int) -> dict[str, np.ndarray]:
    z = np.zeros(steps)
    return {
        "t": z.copy(),
        "c_in": np.ones(steps),
        "a": z.copy(),
        "b": z.copy(),
        "clip": np.full(steps, np.inf),
        "r": z.copy(),
        "s": z.copy(),
        "A": np.ones(steps),
        "B": z.copy(),
        "C": z.copy(),
        "E": z.copy(),
    }


def _table(cols: dict[str, np.ndarray]) -> StepTable:
    return StepTable(**{k: np.asarray(v, np.float64).astype(np.float32) for k, v in cols.items()})


def _euler(cfg: dict[str, Any], steps: int) -> Plan:
    ac = alphas_cumprod(cfg)
    n = cfg["num_train_timesteps"]
    if cfg["timestep_spacing"] == "linspace":
        ts = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    elif cfg["timestep_spacing"] == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.float32)
        ts += cfg["steps_offset"]
    else:
        ts = np.arange(n, 0, -n / steps).round().copy().astype(np.float32) - 1
    train_sigmas = np.sqrt((np.float32(1) - ac) / ac)
    sigmas = np.interp(ts, np.arange(0, len(train_sigmas)), train_sigmas)
    if cfg["use_karras_sigmas"]:
        sigmas = _karras(sigmas[-1].item(), sigmas[0].item(), steps, cfg)
        ts = np.array([_sigma_to_t(s, np.log(train_sigmas)) for s in sigmas])
    last = 0.0 if cfg["final_sigmas_type"] == "zero" else float(np.sqrt((1 - ac[0]) / ac[0]))
    sig = np.concatenate([sigmas, [last]]).astype(np.float32).astype(np.float64)
    ts = ts.astype(np.float32)
    max_sigma = np.float32(sig.max())
    if cfg["timestep_spacing"] in ("linspace", "trailing"):
        init = float(max_sigma)
    else:
        init = float(np.sqrt(max_sigma * max_sigma + np.float32(1)))
    cols = _identity(steps)
    s, s_next = sig[:-1], sig[1:]
    cols["t"] = ts
    cols["c_in"] = 1.0 / np.sqrt(s**2 + 1)
    pred = cfg["prediction_type"]
    if pred == "epsilon":
        cols["a"], cols["b"] = np.ones(steps), -s
    elif pred == "v_prediction":
        cols["a"], cols["b"] = 1.0 / (s**2 + 1), -s / np.sqrt(s**2 + 1)
    else:
        cols["a"], cols["b"] = np.zeros(steps), np.ones(steps)
    dt = s_next - s
    cols["A"], cols["B"] = 1.0 + dt / s, -dt / s
    return Plan(_table(cols), init)


def _ddim(cfg: dict[str, Any], steps: int) -> Plan:
    ac = alphas_cumprod(cfg, zero_snr_floor=False).astype(np.float64)
    n = cfg["num_train_timesteps"]
    if steps > n:
        raise UnsupportedScheduler(f"ddim: {steps} steps is more than the {n} training timesteps")
    if cfg["timestep_spacing"] == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    elif cfg["timestep_spacing"] == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + cfg[
            "steps_offset"
        ]
    else:
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    final = 1.0 if cfg["set_alpha_to_one"] else ac[0]
    prev = ts - n // steps
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final)
    cols = _identity(steps)
    cols["t"] = ts.astype(np.float64)
    pred = cfg["prediction_type"]
    if pred == "epsilon":
        cols["a"], cols["b"] = 1 / np.sqrt(a_t), -np.sqrt(1 - a_t) / np.sqrt(a_t)
        cols["r"], cols["s"] = np.zeros(steps), np.ones(steps)
    elif pred == "v_prediction":
        cols["a"], cols["b"] = np.sqrt(a_t), -np.sqrt(1 - a_t)
        cols["r"], cols["s"] = np.sqrt(1 - a_t), np.sqrt(a_t)
    else:
        cols["a"], cols["b"] = np.zeros(steps), np.ones(steps)
        cols["r"], cols["s"] = 1 / np.sqrt(1 - a_t), -np.sqrt(a_t) / np.sqrt(1 - a_t)
    if cfg["clip_sample"]:
        cols["clip"] = np.full(steps, float(cfg["clip_sample_range"]))
    cols["A"] = np.zeros(steps)
    cols["B"], cols["E"] = np.sqrt(a_prev), np.sqrt(1 - a_prev)
    return Plan(_table(cols), 1.0)


def _dpmpp_2m(cfg: dict[str, Any], steps: int) -> Plan:
    ac = alphas_cumprod(cfg)
    n = cfg["num_train_timesteps"]
    train_sigmas = np.sqrt((np.float32(1) - ac) / ac)
    if cfg["timestep_spacing"] == "linspace":
        ts = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif cfg["timestep_spacing"] == "leading":
        ratio = n // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        ts += cfg["steps_offset"]
    else:
        ts = np.arange(n, 0, -n / steps).round().copy().astype(np.int64) - 1
    if cfg["use_karras_sigmas"]:
        desc = np.flip(train_sigmas).copy()
        sigmas = _karras(desc[-1].item(), desc[0].item(), steps, cfg)
        ts = np.array([_sigma_to_t(s, np.log(train_sigmas)) for s in sigmas])
        if cfg["beta_schedule"] != "squaredcos_cap_v2":
            ts = ts.round()
        ts = ts.astype(np.int64)
    else:
        sigmas = np.interp(ts, np.arange(0, len(train_sigmas)), train_sigmas)
    last = 0.0 if cfg["final_sigmas_type"] == "zero" else float(np.sqrt((1 - ac[0]) / ac[0]))
    sig = np.concatenate([sigmas, [last]]).astype(np.float32).astype(np.float64)

    def alpha_sigma(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = 1 / np.sqrt(s**2 + 1)
        return alpha, s * alpha

    cols = _identity(steps)
    cols["t"] = ts.astype(np.float64)
    alpha_s0, sigma_s0 = alpha_sigma(sig[:-1])
    pred = cfg["prediction_type"]
    if pred == "epsilon":
        cols["a"], cols["b"] = 1 / alpha_s0, -sigma_s0 / alpha_s0
    elif pred == "v_prediction":
        cols["a"], cols["b"] = alpha_s0, -sigma_s0
    else:
        cols["a"], cols["b"] = np.zeros(steps), np.ones(steps)
    A, B, C = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for i in range(steps):
        alpha_t, sigma_t = alpha_sigma(sig[i + 1])
        if sigma_t == 0:  # the final step to sigma 0: x_next = x0 exactly
            A[i], B[i] = 0.0, 1.0
            continue
        lam = lambda a, s: math.log(a) - math.log(s)  # noqa: E731
        h = lam(alpha_t, sigma_t) - lam(alpha_s0[i], sigma_s0[i])
        k = -alpha_t * math.expm1(-h)
        A[i], B[i] = sigma_t / sigma_s0[i], k
        final = i == steps - 1 and (
            cfg["euler_at_final"]
            or (cfg["lower_order_final"] and steps < 15)
            or cfg["final_sigmas_type"] == "zero"
        )
        if i == 0 or final:
            continue
        alpha_s1, sigma_s1 = alpha_sigma(sig[i - 1])
        r0 = (lam(alpha_s0[i], sigma_s0[i]) - lam(alpha_s1, sigma_s1)) / h
        if cfg["solver_type"] == "midpoint":
            B[i], C[i] = k * (1 + 0.5 / r0), -0.5 * k / r0
        else:  # heun
            j = alpha_t * (math.expm1(-h) / h + 1.0)
            B[i], C[i] = k + j / r0, -j / r0
    cols["A"], cols["B"], cols["C"] = A, B, C
    return Plan(_table(cols), 1.0)


_PLANNERS = {"euler": _euler, "ddim": _ddim, "dpmpp_2m": _dpmpp_2m}


def plan(kind: str, checkpoint_config: dict[str, Any], steps: int) -> Plan:
    """The coefficient table of ``steps`` steps of scheduler ``kind``."""
    cfg = settings(kind, checkpoint_config)
    if steps < 1:
        raise UnsupportedScheduler(f"steps must be at least 1, got {steps}")
    return _PLANNERS[kind](cfg, steps)


def idle(length: int) -> StepTable:
    """A table of ``length`` identity steps: an idle batch slot."""
    return _table(_identity(length))


def padded(p: Plan, length: int) -> StepTable:
    """``p``'s table extended to ``length`` steps with identity steps (x_next = x)."""
    steps = len(p.table.t)
    if steps > length:
        raise UnsupportedScheduler(f"{steps} steps is more than the program's {length}")
    pad = _table(_identity(length - steps))
    return StepTable(*(np.concatenate([a, b]) for a, b in zip(p.table, pad, strict=True)))


def step(
    c: StepTable, x: jax.Array, m: jax.Array, x0_prev: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One update for a batch: ``c``'s fields are ``[B]``, ``x``/``m``/``x0_prev`` are
    ``[B, ...]`` float32. Returns ``(x_next, x0)``."""
    import jax.numpy as jnp

    def col(v: jax.Array) -> jax.Array:
        return v.reshape(v.shape + (1,) * (x.ndim - 1))

    x0 = col(c.a) * x + col(c.b) * m
    x0 = jnp.clip(x0, -col(c.clip), col(c.clip))
    e = col(c.r) * x + col(c.s) * m
    x_next = col(c.A) * x + col(c.B) * x0 + col(c.C) * x0_prev + col(c.E) * e
    return x_next, x0
