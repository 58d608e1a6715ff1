"""The daemon scores its own forecasts: prediction intervals, rolling errors, a drift alarm.

No I/O, numpy only: the Processor calls `Scorer.step_states` once per model step with the
streams stepped together, the step's time, the observed values and the forecasts; it returns the
interval radii to publish, which streams' scores are due and which drift alarms changed. Many
streams are scored with array operations on the rows of one table (`RowTables`: one gather and
one scatter per step), dense over [streams, horizon steps] with the cells that have nothing to
score masked; one stream (a batch-1 graph) in plain Python floats, where numpy's cost per call
would dominate — the same arithmetic, held equal by a test.

Per stream and horizon step h (and target k):

* Intervals: forecast ± (g[h, k] + q[h, k, c]) for each coverage c — conformal PID control
  (Angelopoulos, Candès & Tibshirani 2023) with its two cheapest parts. The scorecaster g is the
  recent mean |error| (exponentially weighted, half-life `scorecast`: 2 periods by default),
  which follows a change in the size of the errors within a few periods; q is
  quantile tracking (the P part) on what g leaves: when the actual of a forecast made h+1
  steps ago arrives, q ← q + η·(miss − (1 − c)), miss = 1 if |error| exceeded the radius that
  forecast was published with, η = lr × the trainer's validation RMSE at (h, k). g starts at
  the trainer's validation MAE and q at the split-conformal radius (the ceil((n+1)c)/n quantile
  of |validation error|, manifest field `conformal`) minus it. O(1) memory and work per update,
  and for any sequence the long-run miss rate is 1 − c within (B + η)/(ηT) whatever g does (B
  bounds the errors), so coverage holds under drift without keeping residuals; the scorecaster
  makes a shift in the errors cost a few misses instead of a season of them — which quantile
  tracking alone would then pay back with a season's worth of over-wide intervals.
* Scores: exponentially weighted (half-life in periods) MAE and RMSE of the model, persistence
  (the actual h+1 periods before the target) and seasonal naive (the actual one season before,
  as many seasons back as needed), interval coverage and width — all from the same stream.
* Drift alarm: once a stream has `min_scored` scored steps and is past the model's warm-up, a
  period is "bad" when its rolling RMSE (mean over horizon steps and targets) exceeds its best
  baseline's × `baseline_ratio` or the trainer's validation RMSE × `train_ratio`; `periods` bad
  periods in a row raise the alarm, as many good ones clear it.

Everything lives in one float64 vector per stream (`Layout`): the origin that issued in each
slot (origin mod H), the forecasts and their published radii where their targets will look for
them (target mod H, h), the radii, the rolling sums and their weights side by side, and the last
actuals for the baselines. The state store keeps it as the extra named `EXTRA`: journaled,
snapshotted, spilled and restored with the model state, so a restart continues exactly where an
uninterrupted run would be. Its shape depends on the horizon,
the targets, the coverages and the season: a model with another horizon starts scoring afresh.
Two steps of a stream in one period (no grid) score once; the later forecast replaces the
earlier one. The Prometheus totals (`Totals`) are per process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.manifest import Manifest
from edge.state import RowTables, StreamState

try:  # serialises numpy arrays directly, several times faster than the standard library
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - the edge extra installs orjson

    def _plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return _plain(value.tolist())
        if isinstance(value, list):
            return [_plain(v) for v in value]
        if isinstance(value, dict):
            return {k: _plain(v) for k, v in value.items()}
        return None if isinstance(value, float) and math.isnan(value) else value

    def _dumps(value: Any) -> bytes:
        return json.dumps(_plain(value), separators=(",", ":")).encode()

EXTRA = "score"
MAX_SEASON = 2016  # longer seasons (in periods) are not kept for seasonal naive
# meta fields
STEPS, SCORED, BAD, GOOD, ALARM, LAST_PUB, LAST_EVAL, LAST_TAU = range(8)
# per-stream rolling mean squares over all horizon steps and targets, with their weights
MS_MODEL, MS_PERS, MS_SEAS, MW_MODEL, MW_PERS, MW_SEAS, N_META = range(8, 15)
# columns of the rolling sums
M_ABS, M_SQ, P_ABS, P_SQ, S_ABS, S_SQ = range(6)
# weight columns
W_MODEL, W_PERS, W_SEAS = range(3)


@dataclass(frozen=True)
class ScoreSettings:
    """How the daemon scores itself (see EdgeConfig for the settings they come from)."""

    intervals: tuple[float, ...] = (0.8, 0.95)
    half_life: float = 48.0
    lr: float = 0.05
    scorecast: float = 2.0  # half-life in periods; 0: none
    every: float = 12.0
    baseline_ratio: float = 1.0
    train_ratio: float = 2.0
    periods: int = 12
    min_scored: int = 48


class Layout:
    """Where each part of a stream's scoring state lives in its float64 vector."""

    def __init__(self, horizon: int, targets: int, coverages: int, history: int) -> None:
        h, k, c, r = horizon, targets, coverages, history
        self.h, self.k, self.c, self.r = h, k, c, r
        self.m = 6 + 2 * c  # rolling sums: 6 error columns, then coverage and width per c
        parts = {
            "meta": (N_META,),
            "orig": (h,),  # the origin (period) that issued in slot origin mod H, NaN: none
            "fc": (h, h, k),  # forecasts waiting for their actuals, by (target mod H, h)
            "rad": (h, h, k, c),  # the radii they were published with, the same way
            "q": (h, k, c),  # the quantile trackers: the radius is g + q
            "g": (h, k),  # the scorecaster: the recent mean |error|
            "sums": (h, k, self.m),
            "wts": (h, 3),
            "hist": (r, k),  # the last r actuals, by period index mod r
            "hist_t": (r,),  # the period index each holds (NaN: none)
        }
        self.slices: dict[str, tuple[slice, tuple[int, ...]]] = {}
        at = 0
        for name, shape in parts.items():
            size = int(np.prod(shape))
            self.slices[name] = (slice(at, at + size), shape)
            at += size
        self.size = at

    def view(self, mat: np.ndarray, name: str) -> np.ndarray:
        """The named part of every row of `mat` ([n, size]) as a writable view [n, *shape]."""
        sl, shape = self.slices[name]
        return mat[:, sl].reshape(mat.shape[0], *shape)  # a view: splits the last axis only


@dataclass
class ScoreStep:
    """What one `step_many` produced for the streams it was given (by position)."""

    radii: np.ndarray | None  # [n, H, K, C] half-widths of the intervals just issued
    due: list[int]  # streams whose score is due for publication
    changed: list[tuple[int, bool]]  # (stream, alarm raised) for alarms raised or cleared
    scored: int  # forecasts scored


@dataclass
class Totals:
    """Scores summed over every stream since start (Prometheus counters): every increment the
    streams' rolling sums and weights took, undecayed, laid out like their block ([H, K, M]
    sums, then [H, 3] counts), so a step adds its increments with one call; the figures per
    horizon step are read from it."""

    acc: np.ndarray
    shape: tuple[int, int, int]  # H, K, C
    per_k: float  # targets are averaged (a classifier's squared errors summed: Brier)

    def _sums(self) -> np.ndarray:
        h, k = self.shape[:2]
        return self.acc[: -3 * h].reshape(h, k, -1).sum(axis=1) * self.per_k

    def _counts(self) -> np.ndarray:
        h = self.shape[0]
        return self.acc[-3 * h :].reshape(h, 3)

    @property
    def scored(self) -> np.ndarray:
        return self._counts()[:, W_MODEL]

    @property
    def abs_err(self) -> np.ndarray:
        return self._sums()[:, M_ABS]

    @property
    def sq_err(self) -> np.ndarray:
        return self._sums()[:, M_SQ]

    @property
    def base_n(self) -> np.ndarray:  # [2, H] persistence, seasonal
        return self._counts()[:, [W_PERS, W_SEAS]].T

    @property
    def base_abs(self) -> np.ndarray:
        return self._sums()[:, [P_ABS, S_ABS]].T

    @property
    def base_sq(self) -> np.ndarray:
        return self._sums()[:, [P_SQ, S_SQ]].T

    @property
    def covered(self) -> np.ndarray:  # [C, H]
        c = self.shape[2]
        return self._sums()[:, 6 : 6 + c].T

    @property
    def width(self) -> np.ndarray:  # [C, H]
        c = self.shape[2]
        return self._sums()[:, 6 + c :].T


class Scorer:
    """Scores the forecasts of every stream of one model; built from its manifest."""

    def __init__(self, manifest: Manifest, settings: ScoreSettings) -> None:
        m = manifest
        self.settings = settings
        # a classifier is scored by its Brier score when its class can be told on the device:
        # a numeric target among the features, split by the trainer's threshold (two classes)
        threshold = (m.source or {}).get("threshold")
        self.threshold = float(threshold) if m.task == "classify" and isinstance(
            threshold, (int, float)) and len(m.classes or ()) == 2 else None
        self.classify = m.task == "classify"
        self.enabled = m.task == "regress" or self.threshold is not None
        self.horizon = h = m.horizon
        self.targets = m.targets or m.features[:1]
        k = len(m.classes or ()) if self.classify else len(self.targets)
        self.coverages = tuple(float(c) for c in settings.intervals) \
            if m.task == "regress" else ()
        self.alpha = np.array([1.0 - c for c in self.coverages])
        # actuals: the targets among the features (others cannot be scored on the device)
        self.target_idx = [m.features.index(t) if t in m.features else -1 for t in self.targets]
        self.can_score = self.enabled and all(i >= 0 for i in self.target_idx)
        if self.classify:
            self.target_idx = self.target_idx[:1]
        seasons = [int(s) for s in (m.structure or {}).get("seasons", []) if int(s) > 1]
        self.season = seasons[0] if seasons and seasons[0] <= MAX_SEASON else None
        s = self.season
        history = max(h, s * math.ceil(h / s)) + 1 if s else h + 1
        self.layout = Layout(h, k, len(self.coverages), history)
        self.decay = 0.5 ** (1.0 / settings.half_life)
        # targets are averaged; a classifier's squared errors are summed over its classes (Brier)
        self._per_k = 1.0 if self.classify else 1.0 / k
        hl = settings.scorecast
        self._g_lam = 0.5 ** (1.0 / hl) if hl > 0 else None
        self._lookups(h, k, s, history)
        self._off = {name: sl.start for name, (sl, _) in self.layout.slices.items()}
        self.warmup = m.warmup
        self.seeded, q0, self.scale, self.train_rmse, g0 = _seed(m.conformal, h, k,
                                                                 self.coverages)
        self._eta = settings.lr * self.scale[..., None]  # [H, K, 1]: quantile tracking's step
        self._eta_alpha = self._eta * self.alpha
        # the drift alarm compares mean squares: (RMSE × ratio)²
        self._ratio2 = settings.baseline_ratio ** 2
        self._train2 = None if self.train_rmse is None else \
            (self.train_rmse * settings.train_ratio) ** 2
        self.template = np.zeros(self.layout.size)
        t = self.template[None, :]
        self.layout.view(t, "orig")[:] = np.nan
        self.layout.view(t, "hist_t")[:] = np.nan
        self.layout.view(t, "meta")[0, LAST_PUB] = np.nan
        self.layout.view(t, "meta")[0, LAST_EVAL] = np.nan
        self.layout.view(t, "meta")[0, LAST_TAU] = np.nan
        if self._g_lam is not None:  # the trainer's MAE, and the trackers the rest of the way
            self.layout.view(t, "g")[0] = g0
            q0 = q0 - g0[..., None]
        self.layout.view(t, "q")[0] = q0
        self.totals = Totals(np.zeros(self._block.stop - self._block.start),
                             (h, k, len(self.coverages)), self._per_k)
        self.alarms: set[str] = set()  # streams in alarm (resident or not), for the gauge
        self.table = RowTables([(self.layout.size,)], np.float64, _extra, _put_extra)
        # the intervals member by the brackets of one coverage's [H][2] (one target) or [H][K][2]
        self._intervals_doc = {d: b"{" + b",".join(
            b'"%s":%s%%b%s' % (_key(v).encode(), b"[" * d, b"]" * d)
            for v in self.coverages) + b"}" for d in (2, 3)}

    def _lookups(self, h: int, k: int, s: int | None, history: int) -> None:
        """What every step needs and never changes: slot lookups by tau mod H (or mod the
        history), the baselines' distances, and each part of the block's decay."""
        self._hs = np.arange(h)
        self._ahead = np.arange(1.0, h + 1.0)  # a forecast at step h targets origin + h + 1
        # the baselines: persistence (the actual h + 1 periods back), seasonal naive
        self._backs = [self._ahead] + ([s * np.ceil(self._ahead / s)] if s else [])
        # slots as lookups by tau mod H (or mod the history): [tau mod H or r, H]
        j = np.arange(h)[:, None]
        self._origin_slot = (j - self._hs - 1) % h  # where the origin of each h issued
        self._target_slot = (j + self._hs + 1) % h  # where each forecast of tau waits
        self._hist_pos = [((np.arange(history)[:, None] - b) % history).astype(np.intp)
                          for b in self._backs]
        # decay of each rolling sum column and weight when every cell scores (no season: the
        # seasonal columns stay), and the weights' increments
        lam_cols = np.full(self.layout.m, self.decay)
        self._lam_w, self._one_w = np.full(3, self.decay), np.ones(3)
        if not s:
            lam_cols[[S_ABS, S_SQ]] = 1.0
            self._lam_w[W_SEAS], self._one_w[W_SEAS] = 1.0, 0.0
        self._col_took = [0, 0, 1, 1, 2, 2] + [0] * (2 * len(self.coverages))
        sums, wts = self.layout.slices["sums"][0], self.layout.slices["wts"][0]
        assert sums.stop == wts.start
        self._block = slice(sums.start, wts.stop)
        self._lam_block = np.concatenate([np.tile(lam_cols, h * k),
                                          np.tile(self._lam_w, h)])
        self._one_block = np.tile(self._one_w, h)
        # the block's squared errors of the model, persistence and seasonal naive, summed over
        # horizon steps and targets (targets averaged): block @ pick -> [n, 3]
        pick = np.zeros((h, k, self.layout.m, 3))
        for which, col in enumerate((M_SQ, P_SQ, S_SQ)):
            pick[:, :, col, which] = self._per_k
        self._pick_sq = np.concatenate([pick.reshape(-1, 3), np.zeros((3 * h, 3))])
        self._backs_one = [[(float(b[hh]), col, wcol, row) for b, (col, wcol, row) in zip(
            self._backs, ((P_ABS, W_PERS, 0), (S_ABS, W_SEAS, 1)), strict=False)]
            for hh in range(h)]

    # -- the one step ----------------------------------------------------------------------

    def step_many(
        self,
        extras: Sequence[np.ndarray],
        tau: np.ndarray,
        values: np.ndarray,
        y: np.ndarray,
        issue: np.ndarray | None = None,
    ) -> ScoreStep:
        """Score, then issue: `extras` are the streams' scoring vectors (updated in place),
        `tau` their step times in periods (NaN without a frequency: steps are counted),
        `values` [n, F] the observed features at tau, `y` [n, H, K] the forecasts made at tau.
        The actual at tau scores the forecasts that targeted it, before the new forecasts get
        their intervals. `issue` [n] (default: all) is False for a stream that made no forecast
        at tau (a window graph filling its window): its actual still scores and is kept."""
        if len(extras) == 1:
            return self._step_one(extras[0], float(tau[0]), values[0], y[0],
                                  issue is None or bool(issue[0]))
        mat = np.stack(extras)
        out = self.step_rows(mat, tau, values, y, issue)
        for x, row in zip(extras, mat, strict=True):
            x[:] = row
        return out

    def step_states(self, states: Sequence[StreamState], tau: np.ndarray, values: np.ndarray,
                    y: np.ndarray, issue: np.ndarray | None = None) -> ScoreStep:
        """`step_many` on the streams' states (their extra `EXTRA`): gathered from and scattered
        back to the scorer's table with one numpy call each, which also holds them between
        steps (see `RowTables`)."""
        table = self.table
        if len(states) == 1:
            row = table.tables[0][table.row(states[0])]
            return self._step_one(row, float(tau[0]), values[0], y[0],
                                  issue is None or bool(issue[0]))
        idx = table.rows(states)
        mat = table.tables[0][idx]
        out = self.step_rows(mat, tau, values, y, issue)
        table.tables[0][idx] = mat
        return out

    def step_rows(self, mat: np.ndarray, tau: np.ndarray, values: np.ndarray, y: np.ndarray,
                  issue: np.ndarray | None = None) -> ScoreStep:
        """`step_many` on the streams' vectors as the rows of one matrix [n, size], in place."""
        lay, n, h = self.layout, len(mat), self.horizon
        meta = lay.view(mat, "meta")
        tau = np.where(np.isnan(tau), meta[:, STEPS], np.rint(tau))
        # a second step in the same period (no grid) re-issues in place and scores nothing
        fresh = ~(tau <= meta[:, LAST_TAU])
        meta[:, LAST_TAU] = np.where(fresh, tau, meta[:, LAST_TAU])
        every = np.arange(n)
        t_h = np.mod(tau, h).astype(np.intp)
        scored = 0
        if self.can_score:
            t_r = np.mod(tau, lay.r).astype(np.intp)
            actual = self._actual(values)
            known = fresh & ~np.isnan(actual).any(axis=1)
            scored = self._score(mat, every, tau, t_h, t_r, actual, known)
            # keep the actual for the baselines of later steps
            hist, hist_t = lay.view(mat, "hist"), lay.view(mat, "hist_t")
            hist[every[fresh], t_r[fresh]] = actual[fresh]
            hist_t[every, t_r] = np.where(fresh, np.where(known, tau, np.nan), hist_t[every, t_r])
        # issue: each forecast goes where its target will look for it
        meta[:, STEPS] += fresh
        t_slot = self._target_slot[t_h]  # [n, H]
        radii = None
        if self.coverages:
            radii = np.maximum(lay.view(mat, "q") + lay.view(mat, "g")[..., None], 0.0)
            lay.view(mat, "rad")[every[:, None], t_slot, self._hs] = radii
        lay.view(mat, "fc")[every[:, None], t_slot, self._hs] = y.reshape(n, h, -1)
        issued = (meta[:, STEPS] > self.warmup) & self.can_score  # warm-up: not scored
        if issue is not None:
            issued &= issue
        lay.view(mat, "orig")[every, t_h] = np.where(issued, tau, np.nan)
        due, changed = self._periodic(mat, tau)
        return ScoreStep(radii, due, changed, scored)

    def _step_one(self, x: np.ndarray, tau: float, values: np.ndarray, y: np.ndarray,
                  issue: bool = True) -> ScoreStep:
        """`step_many` for one stream, in plain Python floats: numpy's cost per call dominates
        at one stream (one observation at a time, as at low rates). The same arithmetic in the
        same order; `test_one_stream_path_equals_the_vectorised_one` holds them together."""
        o, h, k, c, r = self._off, self.horizon, self.layout.k, len(self.coverages), self.layout.r
        s = self.settings
        v = x.tolist()
        mt = o["meta"]
        tau = v[mt + STEPS] if math.isnan(tau) else float(round(tau))
        fresh = not tau <= v[mt + LAST_TAU]
        if fresh:
            v[mt + LAST_TAU] = tau
        scored = 0
        if self.can_score and fresh:
            actual = self._actual(values[None])[0].tolist()
            nan = any(math.isnan(a) for a in actual)
            if not nan:
                scored = self._score_one(v, tau, actual)
            pos = int(tau % r)
            v[o["hist"] + pos * k : o["hist"] + (pos + 1) * k] = actual
            v[o["hist_t"] + pos] = math.nan if nan else tau
        if fresh:
            v[mt + STEPS] += 1.0
        steps = v[mt + STEPS]
        radii = None
        yf = y.reshape(-1).tolist()
        hkc = k * c
        gs = v[o["g"] : o["g"] + h * k]
        rq = [max(qv + gs[i // c], 0.0) for i, qv in enumerate(v[o["q"] : o["q"] + h * hkc])] \
            if c else []
        o_fc, o_rad = o["fc"], o["rad"]
        for hh in range(h):
            cell = int((tau + hh + 1) % h) * h + hh  # (target slot, h)
            v[o_fc + cell * k : o_fc + (cell + 1) * k] = yf[hh * k : (hh + 1) * k]
            if c:
                v[o_rad + cell * hkc : o_rad + (cell + 1) * hkc] = rq[hh * hkc : (hh + 1) * hkc]
        if c:
            radii = np.array(rq).reshape(1, h, k, c)
        v[o["orig"] + int(tau % h)] = \
            tau if issue and steps > self.warmup and self.can_score else math.nan
        changed: list[tuple[int, bool]] = []
        if self.can_score and not tau <= v[mt + LAST_EVAL]:
            v[mt + LAST_EVAL] = tau
            ready = v[mt + SCORED] >= s.min_scored and steps >= self.warmup
            bad = ready and self._bad_one(v[mt : mt + N_META])
            v[mt + BAD] = v[mt + BAD] + 1 if bad else 0.0
            v[mt + GOOD] = 0.0 if bad else v[mt + GOOD] + 1
            if v[mt + ALARM] <= 0 and v[mt + BAD] >= s.periods:
                v[mt + ALARM] = 1.0
                changed = [(0, True)]
            elif v[mt + ALARM] > 0 and v[mt + GOOD] >= s.periods:
                v[mt + ALARM] = 0.0
                changed = [(0, False)]
        due = []
        if v[mt + SCORED] > 0 and not tau - v[mt + LAST_PUB] < s.every:
            v[mt + LAST_PUB] = tau
            due = [0]
        x[:] = v
        return ScoreStep(radii, due, changed, scored)

    def _score_one(self, v: list[float], tau: float, actual: list[float]) -> int:
        """`_score` for one stream on its vector as a list (see `_step_one`)."""
        o, h, k, c, r = self._off, self.horizon, self.layout.k, len(self.coverages), self.layout.r
        m, lam, per_k = self.layout.m, self.decay, self._per_k
        mt, sm, wt, lr = o["meta"], o["sums"], o["wts"], self.settings.lr
        o_orig, o_fc, o_rad, o_q, o_hist, o_ht, o_g = (
            o["orig"], o["fc"], o["rad"], o["q"], o["hist"], o["hist_t"], o["g"])
        alpha, scale_seed = self.alpha.tolist(), self.scale.tolist()
        t_slot = int(tau % h)
        events = 0
        # the process's counters (`Totals`): the block's increments, added once
        blk = self._block.start
        d = [0.0] * (self._block.stop - blk)
        se_means: list[float] = []
        base_means: tuple[list[float], list[float]] = ([], [])
        for hh in range(h):
            origin = tau - hh - 1
            if v[o_orig + int(origin % h)] != origin:
                continue
            events += 1
            cell = t_slot * h + hh
            f0 = o_fc + cell * k
            err = [v[f0 + kk] - actual[kk] for kk in range(k)]
            ae = [abs(e) for e in err]
            se = [e * e for e in err]
            for kk in range(k):
                b = sm + (hh * k + kk) * m
                v[b + M_ABS] = v[b + M_ABS] * lam + ae[kk]
                v[b + M_SQ] = v[b + M_SQ] * lam + se[kk]
                d[b - blk + M_ABS] += ae[kk]
                d[b - blk + M_SQ] += se[kk]
            w = wt + hh * 3
            v[w + W_MODEL] = v[w + W_MODEL] * lam + 1.0
            d[w - blk + W_MODEL] += 1.0
            se_means.append(sum(se) * per_k)
            for back, col, wcol, row in self._backs_one[hh]:
                when = tau - back
                pos = int(when % r)
                if v[o_ht + pos] != when:
                    continue
                be = [v[o_hist + pos * k + kk] - actual[kk] for kk in range(k)]
                bae, bse = [abs(e) for e in be], [e * e for e in be]
                for kk in range(k):
                    b = sm + (hh * k + kk) * m
                    v[b + col] = v[b + col] * lam + bae[kk]
                    v[b + col + 1] = v[b + col + 1] * lam + bse[kk]
                    d[b - blk + col] += bae[kk]
                    d[b - blk + col + 1] += bse[kk]
                v[w + wcol] = v[w + wcol] * lam + 1.0
                d[w - blk + wcol] += 1.0
                base_means[row].append(sum(bse) * per_k)
            if c:
                for jc in range(c):
                    for kk in range(k):
                        rad = v[o_rad + (cell * k + kk) * c + jc]
                        miss = 1.0 if ae[kk] > rad else 0.0
                        b = sm + (hh * k + kk) * m
                        v[b + 6 + jc] = v[b + 6 + jc] * lam + (1.0 - miss)
                        v[b + 6 + c + jc] = v[b + 6 + c + jc] * lam + 2.0 * rad
                        d[b - blk + 6 + jc] += 1.0 - miss
                        d[b - blk + 6 + c + jc] += 2.0 * rad
                        scale = scale_seed[hh][kk] if self.seeded \
                            else v[b + M_ABS] / v[w + W_MODEL]
                        qi = o_q + (hh * k + kk) * c + jc
                        v[qi] += lr * scale * (miss - alpha[jc])
                if self._g_lam is not None:
                    lam_g = self._g_lam
                    for kk in range(k):
                        gi = o_g + hh * k + kk
                        v[gi] = v[gi] * lam_g + (1.0 - lam_g) * ae[kk]
            if hh == 0:
                v[mt + SCORED] += 1.0
        if events:
            self.totals.acc += d
        for vals, col, wcol in ((se_means, MS_MODEL, MW_MODEL),
                                (base_means[0], MS_PERS, MW_PERS),
                                (base_means[1], MS_SEAS, MW_SEAS)):
            if vals:
                mean = sum(vals) / len(vals)
                v[mt + col] = v[mt + col] * lam + mean
                v[mt + wcol] = v[mt + wcol] * lam + 1.0
        return events

    def _score(self, mat: np.ndarray, every: np.ndarray, tau: np.ndarray, t_h: np.ndarray,
               t_r: np.ndarray, actual: np.ndarray, known: np.ndarray) -> int:
        """Score the forecasts that targeted `tau` (t_h, t_r: tau mod H and mod the history)
        in the streams where the actual is `known`: for each horizon step h the one made at
        tau − h − 1, if that origin issued one. Dense over [streams, H] cells, masked where
        there is nothing to score. The rolling sums and their weights lie side by side in each
        vector ("block"): they take one decay and one increment per step, in place when every
        cell scores (the steady state)."""
        lay, h, c = self.layout, self.horizon, len(self.coverages)
        n, k, m = len(mat), lay.k, lay.m
        origin = tau[:, None] - self._ahead  # [n, H]
        rows = every[:, None]
        valid = lay.view(mat, "orig")[rows, self._origin_slot[t_h]] == origin
        valid &= known[:, None]
        count = int(np.count_nonzero(valid))
        if not count:
            return 0
        a = actual[:, None, :]
        inc = np.empty((n, self._block.stop - self._block.start))  # what the block takes
        inc_s = inc[:, : h * k * m].reshape(n, h, k, m)
        err = lay.view(mat, "fc")[every, t_h] - a  # [n, H, K]
        ae = np.abs(err, out=inc_s[..., M_ABS])
        np.multiply(err, err, out=inc_s[..., M_SQ])
        nb = len(self._backs)
        took_b = np.empty((nb, n, h), dtype=bool)  # persistence, seasonal naive
        hist, hist_t = lay.view(mat, "hist"), lay.view(mat, "hist_t")
        for j, (back, pos_of) in enumerate(zip(self._backs, self._hist_pos, strict=True)):
            pos = pos_of[t_r]  # where the actual `back` periods before tau is kept
            np.logical_and(valid, hist_t[rows, pos] == tau[:, None] - back, out=took_b[j])
            be = hist[rows, pos] - a
            np.abs(be, out=inc_s[..., P_ABS + 2 * j])
            np.multiply(be, be, out=inc_s[..., P_SQ + 2 * j])
        if not self.season:
            inc_s[..., S_ABS : S_SQ + 1] = 0.0
        if c:  # coverage of the radius each forecast was published with, and its width
            rad = lay.view(mat, "rad")[every, t_h]  # [n, H, K, C]
            miss = ae[..., None] > rad
            np.logical_not(miss, out=inc_s[..., 6 : 6 + c], casting="unsafe")
            np.multiply(rad, 2.0, out=inc_s[..., 6 + c :])
        block = mat[:, self._block]
        full = count == n * h and bool(took_b.all())
        if full:  # every cell scores (without a season, its columns stay): in place
            inc[:, h * k * m :] = self._one_block
            block *= self._lam_block
            block += inc
        else:
            took = np.zeros((n, h, 3), dtype=bool)  # model, persistence, seasonal naive
            took[..., 0] = valid
            took[..., 1 : 1 + nb] = np.moveaxis(took_b, 0, -1)
            mask = np.empty(inc.shape, dtype=bool)
            mask[:, : h * k * m].reshape(n, h, k, m)[...] = took[..., self._col_took][:, :, None]
            mask[:, h * k * m :] = took.reshape(n, -1)
            inc[:, h * k * m :] = 1.0
            np.copyto(inc, 0.0, where=~mask)  # (NaN where nothing was scored)
            block[...] = np.where(mask, block * self.decay + inc, block)
        self.totals.acc += inc.sum(axis=0)  # the process's counters
        # each stream's rolling mean square over its horizon steps, for the drift alarm
        meta = lay.view(mat, "meta")
        sq = inc @ self._pick_sq  # [n, 3] (a product: faster than summing strided columns)
        ms, mw = meta[:, MS_MODEL : MS_SEAS + 1], meta[:, MW_MODEL : MW_SEAS + 1]
        if full:
            ms *= self._lam_w
            ms += sq / h
            mw *= self._lam_w
            mw += self._one_w
        else:
            n_h = took.sum(axis=1)  # [n, 3]
            has = n_h > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                ms[...] = np.where(has, ms * self.decay + sq / n_h, ms)
            mw[...] = np.where(has, mw * self.decay + 1.0, mw)
        meta[:, SCORED] += valid[:, 0]
        if c:  # quantile tracking
            q = lay.view(mat, "q")
            if self.seeded:  # η = lr × the trainer's RMSE at (h, k)
                step = miss * self._eta
                step -= self._eta_alpha
            else:  # no trainer seed: the stream's own rolling MAE at that step
                with np.errstate(invalid="ignore", divide="ignore"):  # cells without a score
                    scale = lay.view(mat, "sums")[..., M_ABS] \
                        / lay.view(mat, "wts")[..., W_MODEL, None]
                    step = (miss - self.alpha) * (self.settings.lr * scale[..., None])
            if full:
                q += step
            else:
                q += np.where(valid[:, :, None, None], step, 0.0)
            if self._g_lam is not None:  # the scorecaster follows the errors just scored
                g, lam = lay.view(mat, "g"), self._g_lam
                if full:
                    g *= lam
                    g += (1.0 - lam) * ae
                else:
                    g[...] = np.where(valid[:, :, None], g * lam + (1.0 - lam) * ae, g)
        return count

    def _actual(self, values: np.ndarray) -> np.ndarray:
        """The actuals [n, K] from observed features [n, F]: the targets, or for a classifier
        the one-hot class (above the threshold: the second class), NaN when missing."""
        x = values[:, self.target_idx].astype(np.float64)
        if self.threshold is None:
            return x
        above = (x[:, 0] > self.threshold).astype(np.float64)
        out = np.stack([1.0 - above, above], axis=1)
        out[np.isnan(x[:, 0])] = np.nan
        return out

    def _periodic(
        self, mat: np.ndarray, tau: np.ndarray
    ) -> tuple[list[int], list[tuple[int, bool]]]:
        """Once per period: the drift alarm's count; which streams' scores are due."""
        lay, s = self.layout, self.settings
        meta = lay.view(mat, "meta")
        changed: list[tuple[int, bool]] = []
        if self.can_score:
            new = ~(tau <= meta[:, LAST_EVAL])  # NaN (never) counts as new
            meta[:, LAST_EVAL] = np.where(new, tau, meta[:, LAST_EVAL])
            ready = new & (meta[:, SCORED] >= s.min_scored) & (meta[:, STEPS] >= self.warmup)
            bad = ready & self._bad(meta)
            meta[:, BAD] = np.where(new, np.where(bad, meta[:, BAD] + 1, 0.0), meta[:, BAD])
            meta[:, GOOD] = np.where(new, np.where(bad, 0.0, meta[:, GOOD] + 1), meta[:, GOOD])
            alarm = meta[:, ALARM] > 0
            up = new & ~alarm & (meta[:, BAD] >= s.periods)
            down = new & alarm & (meta[:, GOOD] >= s.periods)
            if up.any() or down.any():
                meta[up, ALARM] = 1.0
                meta[down, ALARM] = 0.0
                changed = [(int(j), True) for j in np.nonzero(up)[0]] + \
                    [(int(j), False) for j in np.nonzero(down)[0]]
        due_mask = (meta[:, SCORED] > 0) & ~(tau - meta[:, LAST_PUB] < s.every)
        meta[:, LAST_PUB] = np.where(due_mask, tau, meta[:, LAST_PUB])
        return np.nonzero(due_mask)[0].tolist(), changed

    def _bad(self, meta: np.ndarray) -> np.ndarray:
        """Per stream: rolling RMSE above the best baseline's or the trainer's (× ratio), as
        mean squares (NaN: not scored yet)."""
        w = meta[:, MW_MODEL : MW_SEAS + 1]
        ms = np.divide(meta[:, MS_MODEL : MS_SEAS + 1], w, out=np.full(w.shape, np.inf),
                       where=w > 0)  # inf: not scored
        bad = ms[:, 0] > ms[:, 1:].min(axis=1) * self._ratio2
        if self._train2 is not None:
            bad |= ms[:, 0] > self._train2
        bad &= w[:, 0] > 0
        return bad

    def _bad_one(self, meta: list[float]) -> bool:
        """`_bad` for one stream's meta as a list."""
        ms = [meta[a] / meta[w] if meta[w] > 0 else math.nan
              for a, w in ((MS_MODEL, MW_MODEL), (MS_PERS, MW_PERS), (MS_SEAS, MW_SEAS))]
        best = min((b for b in ms[1:] if not math.isnan(b)), default=math.inf)
        bad = best < math.inf and ms[0] > best * self._ratio2
        if self._train2 is not None:
            bad = bad or ms[0] > self._train2
        return bad

    # -- reading the figures -------------------------------------------------------------------

    def figures(self, extras: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The streams' rolling figures per horizon step (targets averaged), NaN where nothing
        was scored yet: arrays [n, H] (coverage and width [n, C, H])."""
        lay = self.layout
        mat = np.stack(extras)
        sums = lay.view(mat, "sums").sum(axis=2) * self._per_k  # [n, H, M]
        wts = lay.view(mat, "wts")  # [n, H, 3]
        with np.errstate(invalid="ignore", divide="ignore"):
            def ratio(col: int, wcol: int) -> np.ndarray:
                w = wts[:, :, wcol]
                return np.where(w > 0, sums[:, :, col] / np.where(w > 0, w, 1.0), np.nan)

            if self.classify:  # Brier scores; persistence: the class now, as a certainty
                out = {"brier": ratio(M_SQ, W_MODEL), "persistence_brier": ratio(P_SQ, W_PERS)}
                if self.season:
                    out["seasonal_brier"] = ratio(S_SQ, W_SEAS)
            else:
                out = {
                    "mae": ratio(M_ABS, W_MODEL), "rmse": np.sqrt(ratio(M_SQ, W_MODEL)),
                    "persistence_mae": ratio(P_ABS, W_PERS),
                    "persistence_rmse": np.sqrt(ratio(P_SQ, W_PERS)),
                }
            if self.season and not self.classify:
                out["seasonal_mae"] = ratio(S_ABS, W_SEAS)
                out["seasonal_rmse"] = np.sqrt(ratio(S_SQ, W_SEAS))
            c = len(self.coverages)
            if c:
                out["coverage"] = np.stack([ratio(6 + j, W_MODEL) for j in range(c)], axis=1)
                out["width"] = np.stack([ratio(6 + c + j, W_MODEL) for j in range(c)], axis=1)
        meta = lay.view(mat, "meta")
        out["scored"], out["alarm"] = meta[:, SCORED], meta[:, ALARM]
        return out

    def summary(self, extra: np.ndarray) -> dict[str, Any]:
        """One stream's rolling figures, JSON-ready (None where nothing was scored yet)."""
        return self.summaries([extra])[0]

    def summaries(self, extras: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """`summary` of several streams at once."""
        n = len(extras)
        return [json.loads(b) for b in self.payloads(["-"] * n, [None] * n, "", extras)]

    def payloads(self, streams: Sequence[str], ts: Sequence[Any], model_id: str,
                 extras: Sequence[np.ndarray]) -> list[bytes]:
        """The retained score documents of these streams (see the README for the fields).
        Their figures (float32: seven digits are plenty for a rolling score) are serialised in
        one call and cut per stream and field at the separators (see `_cut`)."""
        f = self.figures(extras)
        n = len(extras)
        keys = [k for k in f if k not in ("scored", "alarm", "coverage", "width")]
        cov = [_key(c) for c in self.coverages]
        rows = [f[k][:, None, :] for k in keys]
        if cov:
            rows += [f["coverage"], f["width"]]
        fields = _cut(np.concatenate(rows, axis=1).astype(np.float32))  # [n][J]
        # the document as a template: its fixed parts once, the rest by position
        fixed = (b',"model":' + _dumps(model_id) + b',"half_life":'
                 + _dumps(self.settings.half_life)
                 + (b',"season":%d' % self.season if self.season else b""))
        doc = b'{"stream":%b,"ts":%b' + fixed.replace(b"%", b"%%") + b',"scored":%d,"alarm":%b'
        doc += b"".join(b',"%s":[%%b]' % k.encode() for k in keys)
        for name in ("coverage", "width") if cov else ():
            doc += b',"%s":{' % name.encode() + b",".join(
                b'"%s":[%%b]' % c.encode() for c in cov) + b"}"
        doc += b"}"
        scored = f["scored"].astype(np.int64).tolist()
        alarm = [b"true" if a > 0 else b"false" for a in f["alarm"].tolist()]
        return [doc % (_dumps(streams[i]), _dumps(ts[i]), scored[i], alarm[i], *fields[i])
                for i in range(n)]

    def alarm_of(self, extra: np.ndarray) -> bool:
        return bool(extra[self.layout.slices["meta"][0]][ALARM])

    def intervals_many(self, y: np.ndarray, radii: np.ndarray) -> list[bytes]:
        """The `"intervals"` member of each prediction (`y` [n, H, K], `radii` [n, H, K, C]): per
        coverage, [lo, hi] per horizon step (one target) or per step and target ([H][K][2]), in
        float32 like the forecasts. One serialisation for all streams (see `_cut`)."""
        n, h, k, c = radii.shape
        lohi = np.empty((n, c, h, k, 2), np.float32)
        y = y.reshape(n, 1, h, k)
        r = np.moveaxis(radii, 3, 1)  # [n, C, H, K]
        np.subtract(y, r, out=lohi[..., 0])
        np.add(y, r, out=lohi[..., 1])
        if k == 1:
            lohi = lohi[:, :, :, 0]  # [n, C, H, 2]
        doc = self._intervals_doc[lohi.ndim - 2]
        return [doc % p for p in _cut(lohi)]


def _cut(arr: np.ndarray) -> list[tuple[bytes, ...]]:
    """`arr` [n, J, ...] serialised in one call and cut into its elements [n][J], each without
    its own brackets (arr.ndim - 2 of them): as one list of n·J elements, a regular nested array
    of numbers has `]...],[...[` of the elements' depth between its elements only."""
    n, j = arr.shape[:2]
    if not n * j:
        return [() for _ in range(n)]
    d = arr.ndim - 2
    raw = _dumps(np.ascontiguousarray(arr).reshape(n * j, *arr.shape[2:]))  # orjson: C order
    parts = raw[d + 1 : -d - 1].split(b"]" * d + b"," + b"[" * d)
    return list(zip(*[iter(parts)] * j, strict=True))  # groups of j


def _extra(st: StreamState) -> list[np.ndarray]:
    return [st.extra[EXTRA]]


def _put_extra(st: StreamState, r: int, tables: list[np.ndarray]) -> None:
    st.extra[EXTRA] = tables[0][r]


def _key(c: float) -> str:
    return f"{c:g}"


def _seed(conformal: dict[str, Any], h: int, k: int, coverages: tuple[float, ...]
          ) -> tuple[bool, np.ndarray, np.ndarray, float | None, np.ndarray]:
    """(seeded, q0 [H, K, C], scale [H, K], training RMSE, MAE [H, K]) from the manifest's
    `conformal` field; unseeded (zero radii that learn from the stream) when absent or of
    another shape."""
    zero = np.zeros((h, k, len(coverages)))
    unseeded = False, zero, np.ones((h, k)), None, np.zeros((h, k))
    try:
        levels = np.asarray(conformal["levels"], dtype=np.float64)
        qs = np.asarray(conformal["abs_quantiles"], dtype=np.float64)
        rmse = np.asarray(conformal["rmse"], dtype=np.float64)
        mae = np.asarray(conformal.get("mae", ()), dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return unseeded
    if qs.shape != (h, k, len(levels)) or rmse.shape != (h, k) or len(levels) < 2:
        return unseeded
    if mae.shape != (h, k):  # older runs: no MAE; for Gaussian errors it is ~0.8 × the RMSE
        mae = 0.8 * rmse
    rows = qs.reshape(-1, len(levels))
    q0 = zero.copy()
    for j, c in enumerate(coverages):
        q0[..., j] = np.array([np.interp(c, levels, row) for row in rows]).reshape(h, k)
    train = float(np.sqrt(np.mean(rmse**2)))
    return True, q0, np.maximum(rmse, 1e-12), train, mae
