"""Scaling laws as small objects: a name, parameters, a formula, and a grid of starts.

Each law predicts log y from named inputs (N parameters, D tokens, C FLOPs, L loss, or
S1/S2 learning-rate areas). Positive prefactors are fitted as logs (A = exp(a)), which
keeps them positive without bounds; `public(theta)` turns the internal vector into the
named parameters people quote (E, A, B, alpha, beta, ...).

Conventions: a sum of positive terms is computed in log space with logsumexp, the form
Hoffmann et al. and Besiroglu et al. fit, so that a loss near E is not a difference of
large numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from analysis import farseer

Features = tuple  # arrays derived once from the inputs (logs), passed to log_predict


def _lse(*terms):
  return jax.nn.logsumexp(jnp.stack(jnp.broadcast_arrays(*terms)), axis=0)


def _grid(**axes: np.ndarray) -> np.ndarray:
  return np.array(list(itertools.product(*axes.values())), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Law:
  name: str
  formula: str
  inputs: tuple[str, ...]  # required data columns, by role
  theta_names: tuple[str, ...]  # internal parameters, in order
  features: Callable[[Mapping[str, np.ndarray]], Features]
  log_predict: Callable[[jax.Array, Features], jax.Array]
  public: Callable[[np.ndarray], dict[str, float]]
  start_grid: Callable[[], np.ndarray]
  positive_inputs: tuple[str, ...] | None = None  # None: every input must be > 0
  # The inverse of `public`: named parameters (as people quote them) -> theta.
  from_public: Callable[[Mapping[str, float]], np.ndarray] | None = None
  # Starts that depend on the data (inputs by role, y), tried before `start_grid`: for
  # laws whose parameters' scale follows the data's (Farseer's a N^p).
  data_starts: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray] | None = None

  @property
  def num_params(self) -> int:
    return len(self.theta_names)

  @property
  def param_names(self) -> tuple[str, ...]:
    """The names `public` gives (E, A, B, alpha, ...), in its order."""
    return tuple(self.public(np.ones(self.num_params)))

  def predict(self, theta: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    feats = self.features({k: np.asarray(v, np.float64) for k, v in inputs.items()})
    with jax.enable_x64(True):
      return np.exp(np.asarray(self.log_predict(jnp.asarray(theta, jnp.float64),
                                                tuple(jnp.asarray(f) for f in feats))))


def _inverse(*spec: str) -> Callable[[Mapping[str, float]], np.ndarray]:
  """`from_public` of a law: one public name per internal parameter, in theta's order,
  written "log X" where theta holds log X."""
  def from_public(params):
    return np.array([np.log(float(params[name[4:]])) if name.startswith("log ")
                     else float(params[name]) for name in spec], np.float64)
  return from_public


def _log(inputs, *names):
  return tuple(np.log(np.asarray(inputs[n], np.float64)) for n in names)


# ---------------------------------------------------------------- L(N, D) laws

CHINCHILLA = Law(
    name="chinchilla",
    formula="L = E + A / N^alpha + B / D^beta",
    inputs=("N", "D"),
    theta_names=("a", "b", "e", "alpha", "beta"),
    features=lambda x: _log(x, "N", "D"),
    log_predict=lambda t, f: _lse(t[0] - t[3] * f[0], t[1] - t[4] * f[1], t[2]),
    public=lambda t: {"E": float(np.exp(t[2])), "A": float(np.exp(t[0])),
                      "B": float(np.exp(t[1])), "alpha": float(t[3]), "beta": float(t[4])},
    # Hoffmann et al.'s grid, as used by Besiroglu et al.: 6 x 6 x 5 x 5 x 5 = 4500 starts.
    start_grid=lambda: _grid(a=np.arange(0, 30, 5.0), b=np.arange(0, 30, 5.0),
                             e=np.arange(-1, 1.5, 0.5), alpha=np.arange(0, 2.5, 0.5),
                             beta=np.arange(0, 2.5, 0.5)),
    from_public=_inverse("log A", "log B", "log E", "alpha", "beta"),
)

# Gadre et al. 2024: L(C, M) = E + (a M^eta + b M^-eta) C^-eta with M = D / N, C = 6 N D.
# With C = 6 N D it equals a Chinchilla law whose two exponents are tied (alpha = beta
# = 2 eta); fitting it separately tells whether the tie costs accuracy out of sample.
OVERTRAIN = Law(
    name="overtrain",
    formula="L = E + (a M^eta + b M^-eta) C^-eta,  M = D/N, C = 6ND",
    inputs=("N", "D"),
    theta_names=("log_a", "log_b", "e", "eta"),
    features=lambda x: (np.log(np.asarray(x["D"], np.float64) / np.asarray(x["N"], np.float64)),
                        np.log(6.0 * np.asarray(x["N"], np.float64) * np.asarray(x["D"], np.float64))),
    log_predict=lambda t, f: _lse(t[0] + t[3] * f[0] - t[3] * f[1],
                                  t[1] - t[3] * f[0] - t[3] * f[1], t[2]),
    public=lambda t: {"E": float(np.exp(t[2])), "a": float(np.exp(t[0])),
                      "b": float(np.exp(t[1])), "eta": float(t[3])},
    start_grid=lambda: _grid(log_a=np.arange(0, 30, 5.0), log_b=np.arange(0, 30, 5.0),
                             e=np.arange(-1, 1.5, 0.5), eta=np.arange(0, 1.25, 0.25)),
    from_public=_inverse("log a", "log b", "log E", "eta"),
)

# Muennighoff et al. 2023, data-constrained scaling: repeated tokens and excess parameters
# are worth less. With U unique tokens (U <= D) and R_D = D / U - 1 repetitions,
#   D' = U + U R_D* (1 - exp(-R_D / R_D*)),
#   N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),  U_N = min(N, N_opt(U)),  R_N = N / U_N - 1,
# N_opt(U) = G (U G)^(beta/alpha), G = (alpha A / (beta B))^(1/(alpha+beta)): the
# compute-optimal N for D = U. With U = D the law is Chinchilla's for every N <= N_opt(D).
# Computed in logs: log D' = log U + log1p(R_D* (-expm1(-R_D / R_D*))), and the same for N'.

def _data_constrained_log_predict(t, f):
  log_n, log_d, log_u = f
  a, b, e, alpha, beta = t[0], t[1], t[2], jnp.exp(t[3]), jnp.exp(t[4])
  rd_star, rn_star = jnp.exp(t[5]), jnp.exp(t[6])
  log_g = (t[3] + a - t[4] - b) / (alpha + beta)
  log_un = jnp.minimum(log_n, log_g + beta / alpha * (log_u + log_g))
  r_n = jnp.expm1(log_n - log_un)
  r_d = jnp.maximum(jnp.expm1(log_d - log_u), 0.0)
  log_n_eff = log_un + jnp.log1p(-rn_star * jnp.expm1(-r_n / rn_star))
  log_d_eff = log_u + jnp.log1p(-rd_star * jnp.expm1(-r_d / rd_star))
  return _lse(a - alpha * log_n_eff, b - beta * log_d_eff, e)


def _data_constrained_features(x):
  # Without U every token is unique (U = D): the plots' compute-optimal frontier uses this.
  return _log({**x, "U": x.get("U", x["D"])}, "N", "D", "U")


DATA_CONSTRAINED = Law(
    name="data_constrained",
    formula="L = E + A / N'^alpha + B / D'^beta,  D' = U + U R_D* (1 - exp(-R_D / R_D*)), "
            "R_D = D/U - 1,  N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), "
            "U_N = min(N, N_opt(U)), R_N = N/U_N - 1",
    inputs=("N", "D", "U"),
    # Every parameter is positive (log G takes the exponents' logs), so all are fitted as logs.
    theta_names=("a", "b", "e", "log_alpha", "log_beta", "log_rd_star", "log_rn_star"),
    features=_data_constrained_features,
    log_predict=_data_constrained_log_predict,
    public=lambda t: {"E": float(np.exp(t[2])), "A": float(np.exp(t[0])),
                      "B": float(np.exp(t[1])), "alpha": float(np.exp(t[3])),
                      "beta": float(np.exp(t[4])), "rd_star": float(np.exp(t[5])), "rn_star": float(np.exp(t[6]))},
    # Chinchilla's prefactor grid with fewer floors, exponents and R* values: 6 x 6 x 3 x 2 x
    # 2 x 2 = 864 starts (9720 cost 10x the time and found the same optimum on synthetic data).
    start_grid=lambda: _grid(a=np.arange(0, 30, 5.0), b=np.arange(0, 30, 5.0),
                             e=np.array([-1.0, 0.0, 1.0]), log_alpha=np.log([0.2, 0.6]),
                             log_beta=np.log([0.2, 0.6]), log_rd_star=np.log([4.0, 30.0]),
                             log_rn_star=np.log([4.0])),
    from_public=_inverse("log A", "log B", "log E", "log alpha", "log beta", "log rd_star",
                         "log rn_star"),
)

# Farseer (2025); formula, starts and allocation in analysis/farseer.py.
FARSEER = Law(
    name="farseer", formula=farseer.FORMULA, inputs=("N", "D"),
    theta_names=farseer.THETA_NAMES, features=farseer.features,
    log_predict=farseer.log_predict, public=farseer.public,
    start_grid=lambda: np.empty((0, len(farseer.THETA_NAMES))),  # all from data_starts
    from_public=lambda p: np.array([p[k] for k in farseer.THETA_NAMES], np.float64),
    data_starts=farseer.starts,
)

LND_LAWS = {"chinchilla": CHINCHILLA, "overtrain": OVERTRAIN, "farseer": FARSEER}
# Laws of N, D and the unique tokens U: fitted like LND_LAWS, with U as a third input.
LNDU_LAWS = {"data_constrained": DATA_CONSTRAINED}


def with_floor(law: Law, floor: float) -> Law:
  """`law` with its irreducible loss E fixed at `floor` (internal e = log E): E is not
  fitted, and `public` still reports it. For runs too small to show a floor, E can come
  from a larger study or the data's entropy; the other parameters are then fitted given it.
  """
  if "e" not in law.theta_names:
    raise ValueError(f"{law.name} has no irreducible term E to fix")
  i = law.theta_names.index("e")
  e = float(np.log(floor))
  full_j = lambda t: jnp.concatenate([t[:i], jnp.full((1,), e, t.dtype), t[i:]])
  full_np = lambda t: np.concatenate([t[:i], [e], t[i:]])
  from_public = None if law.from_public is None else \
      (lambda p: np.delete(law.from_public({**p, "E": floor}), i))
  return dataclasses.replace(
      law, formula=f"{law.formula},  E = {floor:g} fixed",
      theta_names=law.theta_names[:i] + law.theta_names[i + 1:],
      log_predict=lambda t, f: law.log_predict(full_j(t), f),
      public=lambda t: law.public(full_np(np.asarray(t))),
      start_grid=lambda: np.unique(np.delete(law.start_grid(), i, axis=1), axis=0),
      from_public=from_public)


# ---------------------------------------------------------------- one-variable laws

def saturating_power_law(x: str = "C", y: str = "loss") -> Law:
  """y = E + A X^-alpha (FID laws use it with y = fid: FID = F_inf + A X^-gamma)."""
  return Law(
      name=f"saturating_{x}",
      formula=f"{y} = E + A {x}^-alpha",
      inputs=(x,),
      theta_names=("a", "e", "alpha"),
      features=lambda d: _log(d, x),
      log_predict=lambda t, f: _lse(t[0] - t[2] * f[0], t[1]),
      public=lambda t: {"E": float(np.exp(t[1])), "A": float(np.exp(t[0])),
                        "alpha": float(t[2])},
      start_grid=lambda: _grid(a=np.arange(0, 30, 2.5), e=np.arange(-2, 4.5, 0.5),
                               alpha=np.arange(0.05, 1.55, 0.25)),
      from_public=_inverse("log A", "log E", "alpha"),
  )


def pure_power_law(x: str = "N", y: str = "loss") -> Law:
  """y = A X^-alpha, no irreducible term: the form VAR's paper fits (use its exponent)."""
  return Law(
      name=f"power_{x}",
      formula=f"{y} = A {x}^-alpha",
      inputs=(x,),
      theta_names=("a", "alpha"),
      features=lambda d: _log(d, x),
      log_predict=lambda t, f: t[0] - t[1] * f[0],
      public=lambda t: {"A": float(np.exp(t[0])), "alpha": float(t[1])},
      start_grid=lambda: _grid(a=np.arange(-5, 30, 5.0), alpha=np.arange(-1, 1.5, 0.5)),
      from_public=_inverse("log A", "alpha"),
  )


# FID as a function of loss: FID = F_inf + exp(k + s L). Sample quality improves
# exponentially in loss near the data's entropy and saturates at F_inf (the metric's floor
# for a finite sample set).
LOSS_TO_FID = Law(
    name="loss_to_fid",
    formula="fid = F_inf + exp(k + s loss)",
    inputs=("loss",),
    theta_names=("f_inf", "k", "s"),
    features=lambda d: (np.asarray(d["loss"], np.float64),),
    log_predict=lambda t, f: _lse(t[0], t[1] + t[2] * f[0]),
    public=lambda t: {"F_inf": float(np.exp(t[0])), "k": float(t[1]), "s": float(t[2])},
    start_grid=lambda: _grid(f_inf=np.arange(-2, 4.5, 1.0), k=np.arange(-20, 5, 5.0),
                             s=np.arange(0.5, 10.5, 1.5)),
    from_public=_inverse("log F_inf", "k", "s"),
)


# ---------------------------------------------------------------- learning-rate annealing

def annealing_areas(lr_S: np.ndarray, warmup_steps: int = 0,
                    momentum: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
  """S1 (forward area: running sum of lr) and S2 (annealing area) per step, as float64[S].

  Tissue et al. 2024: m_i = momentum m_{i-1} + (lr_{i-1} - lr_i), S2 = sum_i m_i. Warmup
  steps count at the peak lr, as in the paper, so warmup adds to S1 and nothing to S2.
  """
  lr = np.asarray(lr_S, np.float64).copy()
  if warmup_steps:
    lr[:warmup_steps] = lr[warmup_steps]
  s1 = np.cumsum(lr)
  drops = np.diff(lr, prepend=lr[0]) * -1.0
  m = np.empty_like(lr)
  acc = 0.0
  for i, drop in enumerate(drops):  # a first-order recursion: a loop is clearest
    acc = momentum * acc + drop
    m[i] = acc
  return s1, np.cumsum(m)


def _annealing_log_predict(t, f):
  s1, s2 = f
  value = jnp.exp(t[0]) + jnp.exp(t[1] - t[2] * jnp.log(s1)) - t[3] * s2
  # Outside its domain (non-positive loss) the law gets a large but finite log value.
  return jnp.log(jnp.maximum(value, 1e-6))


ANNEALING = Law(
    name="lr_annealing",
    formula="L(s) = L0 + A S1^-alpha - C S2",
    inputs=("S1", "S2"),
    theta_names=("log_L0", "log_A", "alpha", "C"),
    features=lambda d: (np.asarray(d["S1"], np.float64), np.asarray(d["S2"], np.float64)),
    log_predict=_annealing_log_predict,
    public=lambda t: {"L0": float(np.exp(t[0])), "A": float(np.exp(t[1])),
                      "alpha": float(t[2]), "C": float(t[3])},
    start_grid=lambda: _grid(log_L0=np.arange(-1, 2.0, 0.5), log_A=np.arange(-2, 2.5, 1.0),
                             alpha=np.arange(0.1, 1.2, 0.2), C=np.array([0.0, 0.1, 0.5, 2.0])),
    positive_inputs=("S1",),  # S2 is 0 until the learning rate first decreases
    from_public=_inverse("log L0", "log A", "alpha", "C"),
)


def law_by_name(name: str, x: str = "C", y: str = "loss") -> Law:
  if name in LND_LAWS:
    return LND_LAWS[name]
  if name in LNDU_LAWS:
    return LNDU_LAWS[name]
  if name == "saturating":
    return saturating_power_law(x, y)
  if name == "power":
    return pure_power_law(x, y)
  if name == "loss_to_fid":
    return LOSS_TO_FID
  if name == "lr_annealing":
    return ANNEALING
  raise KeyError(name)
