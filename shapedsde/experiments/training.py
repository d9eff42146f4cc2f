"""Trainability by training: small causal Transformers trained with Adam on a synthetic
in-context task, at points (gamma, tau0) of the shaped parametrisation and two unshaped
baselines (docs/trainability.md, "Tested by training").

The task (`MarkovTask`): each sequence of m tokens over a vocabulary of V is drawn from
its own first-order Markov chain (first token uniform, each row of the transition matrix
iid Dirichlet(alpha); alpha = 0: each row one-hot on a uniform successor), so predicting
the next token needs in-context learning of the bigram counts. Its references, per
predicted position (0..m-2) and averaged:

- `uniform`: log V (a model that learnt nothing about the tokens);
- `unigram`: the in-context token frequencies (no bigram structure used);
- `bayes`: the loss of the Bayes-optimal in-context predictor, the Dirichlet posterior
  predictive (count(x_a -> y) + alpha) / (count(x_a -> .) + V alpha): the floor any
  model can reach on this task;
- `entropy`: the mean entropy of the true next-token distribution (a predictor that
  knew each sequence's chain; below `bayes`, not reachable in context).

The model (`TrainableTransformer`): token and position embeddings (their mean, scaled
to unit variance per entry), d blocks, a linear readout; every weight has N(0, 1)
entries and the forward carries the 1/sqrt(n) factors (the package's convention). Kinds:

- "shaped": X' = lam X + gamma A X W^V / sqrt(n), A = `blocks.shaped_mixing(Z,
  causal=True)` with Z = X W^Q (X W^K)^T / (n tau0 sqrt(n n_k)) (n_k = n), then
  X' = lam X + gamma sqrt(c/n) phi(X W^pre / sqrt(n)) W^post with the shaped leaky ReLU
  of `blocks.MlpBlock.activated`; lam = sqrt(1 - gamma^2);
- "standard": X' = X + Softmax_causal(X W^Q (X W^K)^T / (n sqrt(n_k))) X W^V / sqrt(n),
  then X' = X + sqrt(2/n) ReLU(X W^pre / sqrt(n)) W^post; no normalisation;
- "preln": "standard" with a LayerNorm before each branch and before the readout.

A run (`train_run`) reports its final and best held-out loss, also as
excess = (loss - bayes) / (uniform - bayes) (0: Bayes-optimal, 1: no better than
uniform), and whether it diverged (a non-finite loss or gradient: the run stops there,
its losses are NaN and it is counted, never dropped). `run_training` runs a grid of
points x learning rates x seeds and writes `training.json`, `training.csv` (one row a run,
schema `RUN_FIELDS`), `training_summary.csv` (one row a point and learning rate, schema
`SUMMARY_FIELDS`) and `training.png`; `load_results(dir)` reads them back.

Seeds: seed s gives the data stream `child_seed(s, "data")`, the held-out set
`child_seed(s, "eval")` and the weights `child_seed(s, "init")`, the same for every point
and learning rate (common random numbers: at a given seed all points see the same data and
start from the same raw weights).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _io
from .. import _validation as val
from ..blocks import MlpBlock, shaped_mixing
from ..progress import progress_bar
from ..seeds import child_seed

KINDS = ("shaped", "standard", "preln")

#: One row of `training.csv` / `load_results(dir)["runs"]`: one training run.
RUN_FIELDS = ("label", "kind", "gamma", "tau0", "lr", "seed", "steps", "diverged",
              "diverged_step", "initial_loss", "final_loss", "best_loss", "final_train_loss",
              "initial_grad_norm", "bayes_floor", "entropy_floor", "uniform_loss",
              "unigram_loss", "final_excess", "best_excess", "seconds")
#: One row of `training_summary.csv` / `load_results(dir)["summary"]`: one (point, lr),
#: statistics over seeds; mean, sd and median over the seeds that did not diverge (NaN if
#: none); `worse_than_uniform` counts those that ended above log V (final excess > 1).
SUMMARY_FIELDS = ("label", "kind", "gamma", "tau0", "lr", "seeds", "diverged",
                  "worse_than_uniform", "final_excess_mean", "final_excess_sd",
                  "final_excess_median", "best_excess_mean",
                  "final_loss_mean", "final_loss_sd", "initial_loss_mean",
                  "initial_grad_norm_mean", "bayes_floor", "uniform_loss", "seconds_mean")


# ----------------------------------------------------------------------------
# The task


@dataclass(frozen=True)
class MarkovTask:
    """Sequences of `length` tokens over `vocab`, each from its own Markov chain with rows
    iid Dirichlet(`concentration`) (0: one-hot rows, a random successor function)."""

    vocab: int = 4
    length: int = 8
    concentration: float = 0.1

    def __post_init__(self) -> None:
        if self.vocab < 2 or self.length < 2:
            raise ValueError(f"need vocab >= 2 and length >= 2; got {self.vocab}, {self.length}")
        if not (self.concentration >= 0 and math.isfinite(self.concentration)):
            raise ValueError(f"concentration must be >= 0; got {self.concentration}")

    def sample(self, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (batch, length) int64, transition matrices (batch, V, V) float64) drawn
        from the seed alone."""
        rng = np.random.default_rng(val.check_seed(seed))
        V = self.vocab
        if self.concentration == 0:
            P = np.eye(V)[rng.integers(0, V, size=(batch, V))]
        else:
            P = rng.dirichlet(np.full(V, self.concentration), size=(batch, V))
        x = np.empty((batch, self.length), dtype=np.int64)
        x[:, 0] = rng.integers(0, V, size=batch)
        u = rng.random((batch, self.length))
        rows = np.arange(batch)
        for a in range(1, self.length):
            cdf = P[rows, x[:, a - 1]].cumsum(-1)
            x[:, a] = np.minimum((u[:, a, None] > cdf).sum(-1), V - 1)
        return torch.from_numpy(x), torch.from_numpy(P)

    def floors(self, tokens: torch.Tensor, P: torch.Tensor) -> dict[str, float]:
        """Mean per-prediction references on these sequences, in nats: `uniform` (log V),
        `unigram` (the in-context token frequencies, (count + 1/2) / (a + 1 + V/2)),
        `bayes` (the posterior predictive's cross-entropy) and `entropy` (of the true
        next-token distribution)."""
        x, P = tokens.numpy(), P.numpy()
        B, m = x.shape
        V, alpha = self.vocab, self.concentration
        counts = np.zeros((B, V, V))
        rows = np.arange(B)
        bayes = entropy = unigram = 0.0
        for a in range(m - 1):
            if a > 0:
                counts[rows, x[:, a - 1], x[:, a]] += 1
            c = counts[rows, x[:, a]]  # (B, V): transitions seen from the current token
            total = c.sum(-1)
            if alpha > 0:
                pred = (c + alpha) / (total + V * alpha)[:, None]
            else:  # alpha -> 0: the observed frequencies, uniform for an unseen state
                pred = np.where(total[:, None] > 0, c / np.maximum(total, 1)[:, None], 1 / V)
            bayes -= np.log(pred[rows, x[:, a + 1]]).mean()
            p = P[rows, x[:, a]]
            entropy -= np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1).mean()
            seen = np.stack([(x[:, : a + 1] == v).sum(-1) for v in range(V)], -1)
            unigram -= np.log(((seen + 0.5) / (a + 1 + 0.5 * V))[rows, x[:, a + 1]]).mean()
        k = m - 1
        return {"uniform": math.log(V), "unigram": unigram / k, "bayes": bayes / k,
                "entropy": entropy / k}


# ----------------------------------------------------------------------------
# The model


class TrainableTransformer(nn.Module):
    """A causal Transformer of `depth` blocks at width `width` (see the module doc)."""

    def __init__(self, kind: str, *, vocab: int, length: int, width: int, depth: int,
                 gamma: float = 0.5, tau0: float = 1.0, c_plus: float = 0.0,
                 c_minus: float = -1.0, seed: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1]; got {gamma}")
        self.kind, self.depth, self.width = kind, int(depth), int(width)
        self.gamma, self.tau0 = float(gamma), val.check_tau0(tau0)
        self.lam = math.sqrt(1.0 - self.gamma**2)
        # MlpBlock.activated(G) = sqrt(c) phi(G) does not depend on gamma.
        self.mlp = MlpBlock(1.0, c_plus=c_plus, c_minus=c_minus)
        self.mlp.check_width(width)
        g = torch.Generator().manual_seed(child_seed(val.check_seed(seed), "init"))
        n = width

        def gauss(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g))

        self.embed, self.pos = gauss(vocab, n), gauss(length, n)
        self.W = nn.ParameterList([gauss(5, n, n) for _ in range(depth)])  # Q, K, V, pre, post
        self.readout = gauss(n, vocab)
        if kind == "preln":
            self.norms = nn.ModuleList([nn.LayerNorm(n) for _ in range(2 * depth + 1)])
        mask = torch.ones(length, length, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """X_0 (B, m, n): (E[x] + P[position]) / sqrt(2)."""
        m = tokens.shape[-1]
        return (self.embed[tokens] + self.pos[:m]) / math.sqrt(2.0)

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """Readout X W^out / sqrt(n) (after a final LayerNorm for "preln")."""
        if self.kind == "preln":
            X = self.norms[-1](X)
        return X @ self.readout / math.sqrt(self.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, m, V) for tokens (B, m)."""
        X = self.hidden(tokens)
        for i, W in enumerate(self.W):
            X = self.block(X, W, i)
        return self.logits(X)

    def block(self, X: torch.Tensor, W: torch.Tensor, i: int) -> torch.Tensor:
        """One block: attention sub-layer, then MLP sub-layer."""
        n = self.width
        rn = math.sqrt(n)
        if self.kind == "shaped":
            Q, K = X @ W[0] / rn, X @ W[1] / rn
            Z = Q @ K.transpose(-1, -2) / (self.tau0 * math.sqrt(n * n))
            X = self.lam * X + self.gamma * (shaped_mixing(Z, causal=True) @ (X @ W[2])) / rn
            U = self.mlp.activated(X @ W[3] / rn)
            return self.lam * X + self.gamma * (U @ W[4]) / rn
        H = self.norms[2 * i](X) if self.kind == "preln" else X
        Q, K = H @ W[0] / rn, H @ W[1] / rn
        m = X.shape[-2]
        Z = (Q @ K.transpose(-1, -2) / math.sqrt(n)).masked_fill(~self.mask[:m, :m],
                                                                  float("-inf"))
        X = X + torch.softmax(Z, dim=-1) @ (H @ W[2]) / rn
        H = self.norms[2 * i + 1](X) if self.kind == "preln" else X
        return X + math.sqrt(2.0 / n) * torch.relu(H @ W[3] / rn) @ W[4]


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of positions 0..m-2 predicting tokens 1..m-1."""
    V = logits.shape[-1]
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V).double(),
                                       tokens[:, 1:].reshape(-1))


# ----------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class Point:
    """A model to train: a shaped point (gamma, tau0) or a baseline ("standard", "preln";
    gamma and tau0 NaN). `label` names it in tables and figures."""

    kind: str
    gamma: float = math.nan
    tau0: float = math.nan

    @property
    def label(self) -> str:
        if self.kind == "shaped":
            return f"shaped g={self.gamma:g} t0={self.tau0:g}"
        return {"standard": "standard (no norm)", "preln": "pre-LN"}[self.kind]

    def model(self, task: MarkovTask, width: int, depth: int, seed: int,
              **mlp: float) -> TrainableTransformer:
        shaping = {"gamma": self.gamma, "tau0": self.tau0} if self.kind == "shaped" else {}
        return TrainableTransformer(self.kind, vocab=task.vocab, length=task.length,
                                    width=width, depth=depth, seed=seed, **shaping, **mlp)


#: The default points: healthy, strong attention, exploding, weak attention near
#: gamma = 1, too-small gamma (docs/trainability.md says why), and the two baselines.
DEFAULT_POINTS = (Point("shaped", 0.3, 1.0), Point("shaped", 0.5, 1.0),
                  Point("shaped", 0.1, 1.0), Point("shaped", 0.5, 0.2),
                  Point("shaped", 0.9, 0.2), Point("shaped", 0.95, 4.0),
                  Point("standard"), Point("preln"))


@dataclass(frozen=True)
class TrainSettings:
    """Everything of a run but the point, learning rate and seed."""

    width: int = 64
    depth: int = 32
    steps: int = 150
    batch: int = 32
    eval_batch: int = 256
    evals: int = 10
    vocab: int = 4
    length: int = 8
    concentration: float = 0.1
    c_plus: float = 0.0
    c_minus: float = -1.0

    @property
    def task(self) -> MarkovTask:
        return MarkovTask(self.vocab, self.length, self.concentration)


def train_run(point: Point, lr: float, seed: int, settings: TrainSettings
              ) -> dict[str, Any]:
    """Train one model with Adam (torch defaults but lr; no clipping) for
    `settings.steps` steps on fresh batches; one row of `RUN_FIELDS`.

    The held-out loss is measured at step 0, every steps / evals steps and at the end;
    `final_loss` is the last, `best_loss` the least. A non-finite training loss or
    gradient stops the run: `diverged` True at `diverged_step`, and the losses not
    reached are NaN; a non-finite held-out loss at the end counts as diverged too."""
    t0 = time.perf_counter()
    s, task = settings, settings.task
    model = point.model(task, s.width, s.depth, seed, c_plus=s.c_plus, c_minus=s.c_minus)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xe, Pe = task.sample(s.eval_batch, child_seed(seed, "eval"))
    floors = task.floors(xe, Pe)
    data_seeds = np.random.SeedSequence(child_seed(seed, "data")).generate_state(
        max(s.steps, 1), np.uint64) >> np.uint64(1)
    every = max(1, s.steps // max(1, s.evals))
    evals, train, diverged_step, grad0 = [], [], None, math.nan
    for step in range(s.steps + 1):
        if step % every == 0 or step == s.steps:
            evals.append(_evaluate(model, xe))
        if step == s.steps:
            break
        x, _ = task.sample(s.batch, int(data_seeds[step]))
        loss = next_token_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])))
        if step == 0:
            grad0 = gnorm
        if not (math.isfinite(loss.item()) and math.isfinite(gnorm)):
            diverged_step = step
            break
        opt.step()
        train.append(loss.item())
    if diverged_step is None and not math.isfinite(evals[-1]):
        diverged_step = s.steps  # finite steps to a non-finite held-out loss
    diverged = diverged_step is not None
    final = math.nan if diverged else evals[-1]
    best = math.nan if diverged else float(np.nanmin(evals))
    gap = floors["uniform"] - floors["bayes"]
    return {"label": point.label, "kind": point.kind, "gamma": point.gamma,
            "tau0": point.tau0, "lr": lr, "seed": seed, "steps": s.steps,
            "diverged": diverged, "diverged_step": diverged_step,
            "initial_loss": evals[0], "final_loss": final, "best_loss": best,
            "final_train_loss": (float(np.mean(train[-max(1, s.steps // 10):]))
                                 if train and not diverged else math.nan),
            "initial_grad_norm": grad0, "bayes_floor": floors["bayes"],
            "entropy_floor": floors["entropy"], "uniform_loss": floors["uniform"],
            "unigram_loss": floors["unigram"],
            "final_excess": (final - floors["bayes"]) / gap,
            "best_excess": (best - floors["bayes"]) / gap,
            "seconds": time.perf_counter() - t0}


def _evaluate(model: nn.Module, tokens: torch.Tensor) -> float:
    """Held-out loss (NaN or inf are kept as they are)."""
    with torch.no_grad():
        return float(next_token_loss(model(tokens), tokens))


def initial_signal(point: Point, settings: TrainSettings, seed: int, batch: int = 256
                   ) -> dict[str, float]:
    """The forward signal at initialisation (no training), on `batch` held-out sequences:
    V_l = X_l X_l^T / n per sequence; `trace_ratio` = mean tr V_d / tr V_0, `rho_mean`
    the mean off-diagonal correlation of V_d (`rho0_mean` of V_0) and `p_degenerate`
    the fraction of sequences whose correlation matrix has lambda_min < 0.05, the
    stability map's statistics (docs/stability.md); non-finite V_d counted in
    `frac_nonfinite`."""
    s, task = settings, settings.task
    model = point.model(task, s.width, s.depth, seed, c_plus=s.c_plus, c_minus=s.c_minus)
    x, _ = task.sample(batch, child_seed(seed, "eval"))
    with torch.no_grad():
        X = X0 = model.hidden(x).double()
        model.double()
        for i, W in enumerate(model.W):
            X = model.block(X, W, i)
    n = s.width

    def stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        V = X @ X.transpose(-1, -2) / n
        d = V.diagonal(dim1=-2, dim2=-1)
        C = V / (d[..., :, None] * d[..., None, :]).sqrt()
        off = ~torch.eye(V.shape[-1], dtype=torch.bool)
        return d.sum(-1), C[:, off].mean(-1), C

    tr0, rho0, _ = stats(X0)
    tr, rho, C = stats(X)
    finite = torch.isfinite(C).all(-1).all(-1)
    lmin = torch.linalg.eigvalsh(C[finite]).min(-1).values if finite.any() else C.new_zeros(0)
    return {"trace_ratio": float((tr[finite] / tr0[finite]).mean()),
            "rho0_mean": float(rho0.mean()), "rho_mean": float(rho[finite].mean()),
            "p_degenerate": float((lmin < 0.05).double().mean()),
            "frac_nonfinite": float(1 - finite.double().mean())}


# ----------------------------------------------------------------------------
# The grid, its files and figure


def run_training(out: str | Path, points: Sequence[Point] = DEFAULT_POINTS,
                 lrs: Sequence[float] = (3e-3, 1e-2, 3e-2), seeds: Sequence[int] = (0, 1, 2),
                 settings: TrainSettings | None = None, *, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every point x lr x seed; write `training.{json,csv,png}` and
    `training_summary.csv` into `out`; return what `load_results(out)` reads back."""
    s = settings or TrainSettings()
    seeds = [val.check_seed(x, "seed") for x in seeds]
    lrs = [val._finite_scalar("learning rate", x) for x in lrs]
    if any(not lr > 0 for lr in lrs):
        raise ValueError(f"learning rates must be > 0; got {lrs}")
    labels = [p.label for p in points]  # the summary groups the runs by label
    for name, xs in (("points", labels), ("learning rates", lrs), ("seeds", seeds)):
        if not xs:
            raise ValueError(f"no {name} given: there would be nothing to train")
        if len(set(xs)) != len(xs):  # a summary would count the repeated runs as seeds
            dup = next(x for x in xs if xs.count(x) > 1)
            raise ValueError(f"{name} must be distinct; {dup} is repeated (its runs would be "
                             "summarised as independent seeds)")
    folder = _io.make_folder(out)
    torch.set_num_threads(1)
    runs: list[dict[str, Any]] = []
    total = len(points) * len(lrs) * len(seeds)
    t0 = time.perf_counter()
    with progress_bar(total=total, desc="train", unit="run", enabled=progress) as bar:
        for point in points:
            for lr in lrs:
                for seed in seeds:
                    bar.set_postfix_str(f"{point.label} lr={lr:g} seed={seed}")
                    row = train_run(point, float(lr), seed, s)
                    runs.append(row)
                    bar.update(1)
                    if log is not None:
                        log(_run_line(row))
    meta = {"settings": asdict(s), "points": [asdict(p) for p in points], "lrs": list(lrs),
            "seeds": seeds, "optimizer": "torch.optim.Adam (defaults but lr), no clipping",
            "torch": torch.__version__, "threads": 1,
            "total_seconds": time.perf_counter() - t0}
    write_results(folder, meta, runs)
    return load_results(folder)


def write_results(folder: str | Path, meta: dict[str, Any], runs: Sequence[dict[str, Any]]
                  ) -> None:
    """Write the runs, their `summarize` and figure into `folder` (one atomic set)."""
    folder = Path(folder)
    summary = summarize(runs)
    meta = dict(meta, schema={"runs": RUN_FIELDS, "summary": SUMMARY_FIELDS})
    files = {folder / "training.json": _io.dumps({"meta": meta, "runs": runs,
                                                  "summary": summary}).encode(),
             folder / "training.csv": _csv(runs, RUN_FIELDS).encode(),
             folder / "training_summary.csv": _csv(summary, SUMMARY_FIELDS).encode()}
    files.update(plot_training(summary, runs, folder / "training"))
    _io.write_files(files)


def resummarize(folder: str | Path) -> dict[str, Any]:
    """Recompute the summary and figure of `folder` from its runs (after a change of
    `summarize` or the figure: the runs are not repeated)."""
    data = load_results(folder)
    write_results(folder, data["meta"], data["runs"])
    return load_results(folder)


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row of `SUMMARY_FIELDS` per (point, lr), in the order of `runs`."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["lr"]), []).append(r)
    rows = []
    for (label, lr), rs in groups.items():
        ok = [r for r in rs if not r["diverged"]]

        def stat(key: str, f: Callable[..., float], rows: list = ok) -> float:
            v = np.array([r[key] for r in rows], dtype=float)
            return float(f(v)) if len(v) else math.nan

        rows.append({"label": label, "kind": rs[0]["kind"], "gamma": rs[0]["gamma"],
                     "tau0": rs[0]["tau0"], "lr": lr, "seeds": len(rs),
                     "diverged": len(rs) - len(ok),
                     "worse_than_uniform": sum(r["final_excess"] > 1 for r in ok),
                     "final_excess_mean": stat("final_excess", np.mean),
                     "final_excess_sd": stat("final_excess", _sd),
                     "final_excess_median": stat("final_excess", np.median),
                     "best_excess_mean": stat("best_excess", np.mean),
                     "final_loss_mean": stat("final_loss", np.mean),
                     "final_loss_sd": stat("final_loss", _sd),
                     "initial_loss_mean": stat("initial_loss", np.mean, rs),
                     "initial_grad_norm_mean": stat("initial_grad_norm", np.mean, rs),
                     "bayes_floor": stat("bayes_floor", np.mean, rs),
                     "uniform_loss": stat("uniform_loss", np.mean, rs),
                     "seconds_mean": stat("seconds", np.mean, rs)})
    return rows


def _sd(v: np.ndarray) -> float:
    """Sample standard deviation (ddof 1); 0 for one value."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def load_results(folder: str | Path) -> dict[str, Any]:
    """{"meta", "runs", "summary"} from `folder/training.json`: rows are dicts with the
    fields `RUN_FIELDS` / `SUMMARY_FIELDS` (JSON null read back as NaN; baselines have
    gamma = tau0 = NaN). Join a map on (gamma, tau0) of the "shaped" rows."""
    data = json.loads((Path(folder) / "training.json").read_text())
    for key in ("runs", "summary"):
        data[key] = [{k: (math.nan if v is None and k not in ("diverged_step",) else v)
                      for k, v in row.items()} for row in data[key]]
    return data


def best_lr_table(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point, the summary row of the learning rate with the least mean final excess
    (NaN rows last: a point whose every lr diverged keeps its first row)."""
    best: dict[str, dict[str, Any]] = {}
    for r in summary:
        cur = best.get(r["label"])
        key = r["final_excess_mean"]
        if cur is None or (math.isfinite(key) and not key >= cur["final_excess_mean"]):
            best[r["label"]] = r
    return list(best.values())


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (the one in docs/trainability.md)."""
    lines = ["| point | lr | final loss (mean ± sd) | excess over floor (mean ± sd) | "
             "median excess | best excess | diverged | > uniform | initial loss | "
             "initial grad norm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {_num(r['final_loss_mean'])} ± "
            f"{_num(r['final_loss_sd'])} | {_num(r['final_excess_mean'])} ± "
            f"{_num(r['final_excess_sd'])} | {_num(r['final_excess_median'])} | "
            f"{_num(r['best_excess_mean'])} | {r['diverged']}/{r['seeds']} | "
            f"{r['worse_than_uniform']}/{r['seeds']} | {r['initial_loss_mean']:.3g} | "
            f"{r['initial_grad_norm_mean']:.3g} |")
    return "\n".join(lines)


def _num(x: float) -> str:
    """3 decimals, or 3 significant digits for |x| >= 1000."""
    return f"{x:.3f}" if not abs(x) >= 1000 else f"{x:.3g}"


def plot_training(summary: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
                  base: Path) -> dict[Path, bytes]:
    """`<base>.png`: final excess over the Bayes floor against the learning rate, one line
    per point (median over the seeds that did not diverge), each seed a dot; a seed above
    the plot's top a triangle there, a diverged seed an x above it. Dotted: the Bayes
    floor (0) and the in-context unigram predictor; dashed: the uniform guess (1)."""
    import io

    from ._common import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.8, 4.6))
    labels = list(dict.fromkeys(r["label"] for r in summary))
    cmap = plt.get_cmap("tab10")
    top, cross = 1.6, 1.75
    for i, label in enumerate(labels):
        color = cmap(i % 10)
        rows = [r for r in summary if r["label"] == label]
        ys = [cross if r["diverged"] == r["seeds"] else min(r["final_excess_median"], top)
              for r in rows]
        ax.plot([r["lr"] for r in rows], ys, "-", color=color, label=label, lw=1.5)
        shift = 1 + 0.025 * (i - (len(labels) - 1) / 2)
        for r in runs:
            if r["label"] != label:
                continue
            x, y = r["lr"] * shift, r["final_excess"]
            if r["diverged"] or not math.isfinite(y):
                ax.plot(x, cross, "x", color=color, ms=7, mew=1.5)
            elif y > top:
                ax.plot(x, top, "^", color=color, ms=5, alpha=0.8)
            else:
                ax.plot(x, y, "o", color=color, ms=3.5, alpha=0.75)
    lr_all = sorted({r["lr"] for r in summary})
    uni = [(r["unigram_loss"] - r["bayes_floor"]) / (r["uniform_loss"] - r["bayes_floor"])
           for r in runs if "unigram_loss" in r]
    for y, style, text in ((1.0, "--", "uniform guess"), (0.0, ":", "Bayes floor"),
                           (float(np.mean(uni)) if uni else math.nan, ":",
                            "in-context unigram")):
        if math.isfinite(y):
            ax.axhline(y, color="0.4", ls=style, lw=1)
            ax.text(lr_all[0] * 0.8, y + 0.02, text, fontsize=8, color="0.3")
    ax.axhspan(top + 0.03, cross + 0.1, color="0.93", zorder=0)
    ax.text(lr_all[0] * 0.72, top + 0.07, f"> {top:g}: blew up\nx: diverged (NaN/inf)",
            fontsize=7, color="0.3", va="center")
    ax.set_xscale("log")
    ax.set_xticks(lr_all, [f"{v:g}" for v in lr_all])
    ax.minorticks_off()
    ax.set_xlim(lr_all[0] * 0.7, lr_all[-1] * 2.2)
    ax.set_ylim(-0.05, cross + 0.1)
    ax.set_xlabel("Adam learning rate")
    ax.set_ylabel("final excess (loss - Bayes) / (log V - Bayes)")
    ax.set_title("Held-out loss after training: median over seeds (line), each seed (marker)",
                 fontsize=10)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {base.with_suffix(".png"): buf.getvalue()}


def _csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def _run_line(r: dict[str, Any]) -> str:
    state = f"DIVERGED at step {r['diverged_step']}" if r["diverged"] else (
        f"final {r['final_loss']:.4f} (excess {r['final_excess']:.3f})")
    return (f"{r['label']:<24} lr={r['lr']:<7g} seed={r['seed']}  initial "
            f"{r['initial_loss']:.4g}  {state}  [{r['seconds']:.1f} s]")
