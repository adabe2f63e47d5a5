"""Results as Python objects: Attribution (numpy, pandas, HTML heatmap), Audit, Plan, Template."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import _plot

if TYPE_CHECKING:
    import pandas as pd


def _need_pandas() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("tables need pandas: pip install 'llm-attr[pandas]'") from err


def _array(value: Any) -> Optional[np.ndarray]:
    return None if value is None else np.asarray(value, dtype=float)


class Attribution:
    """One attribution (`AttributeResponse`).

    `seq_attr` (per feature, whole target) and `token_attr` (rows: output tokens, then the
    contrast's; columns: features) are numpy arrays; `input_tokens` are the features' values as
    Captum labels them, `features` the server's feature objects, `raw` the whole JSON answer.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = dict(raw)
        self.features: list[dict[str, Any]] = list(raw["features"])
        self.feature_names: list[str] = [str(f["name"]) for f in self.features]
        self.input_tokens: list[str] = [str(f["value"]) for f in self.features]
        self.output_tokens: list[str] = list(raw["output_tokens"])
        self.contrast_output_tokens: list[str] = list(raw.get("contrast_output_tokens") or [])
        n = len(self.features)
        self.seq_attr: np.ndarray = np.asarray(raw["seq_attr"], dtype=float)
        self.token_attr: np.ndarray = np.asarray(raw["token_attr"], dtype=float).reshape(-1, n)
        self.seq_attr_stderr = _array(raw.get("seq_attr_stderr"))
        self.token_attr_stderr = _array(raw.get("token_attr_stderr"))
        self.target_log_probs: np.ndarray = np.asarray(raw["target_log_probs"], dtype=float)
        self.target_log_prob: float = float(raw["target_log_prob"])
        self.contrast_log_probs = _array(raw.get("contrast_log_probs"))
        self.convergence_delta = _array(raw.get("convergence_delta"))
        self.stats: dict[str, Any] = dict(raw.get("stats") or {})
        self.method: str = str(raw.get("method", ""))
        self.model: str = str(raw.get("model", ""))
        self.prompt: str = str(raw.get("prompt", ""))
        self.target: str = str(raw.get("target", ""))
        self.contrast_target: Optional[str] = raw.get("contrast_target")

    @property
    def row_labels(self) -> list[str]:
        """Labels of token_attr's rows: output tokens, then the contrast's marked with -."""
        return self.output_tokens + [f"- {t}" for t in self.contrast_output_tokens]

    @property
    def seq_attr_dict(self) -> dict[str, float]:
        """Captum's seq_attr_dict: input token -> its attribution."""
        return {k: float(v) for k, v in zip(self.input_tokens, self.seq_attr)}

    def to_pandas(self) -> pd.DataFrame:
        """token_attr as a DataFrame: index the output tokens, columns the features."""
        _need_pandas()
        import pandas as pd

        frame: pd.DataFrame = pd.DataFrame(
            self.token_attr,
            index=pd.Index(self.row_labels, name="output_token"),
            columns=pd.Index(self.input_tokens, name="feature"),
        )
        return frame

    def seq_to_pandas(self) -> pd.Series:
        """seq_attr as a Series indexed by feature."""
        _need_pandas()
        import pandas as pd

        series: pd.Series = pd.Series(
            self.seq_attr, index=pd.Index(self.input_tokens, name="feature"), name="seq_attr")
        return series

    def plot_token_attr(self, show: bool = False) -> Any:
        """Captum's token heatmap; (fig, ax), or None after showing it with show=True."""
        fig, ax = _plot.token_heatmap(self.token_attr, self.input_tokens, self.row_labels)
        return _plot.finish(fig, ax, show)

    def plot_seq_attr(self, show: bool = False) -> Any:
        """Captum's sequence bar chart; (fig, ax), or None after showing it with show=True."""
        fig, ax = _plot.seq_bars(self.seq_attr, self.input_tokens)
        return _plot.finish(fig, ax, show)

    def _repr_html_(self) -> str:
        rows = [("(whole target)", list(self.seq_attr))]
        rows += [(label, list(r)) for label, r in zip(self.row_labels, self.token_attr)]
        caption = f"{self.method} on {self.model}: log p(target) = {self.target_log_prob:.4f}"
        return _plot.html_table(rows, self.input_tokens, caption)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v:+.4f}" for k, v in self.seq_attr_dict.items())
        return f"Attribution({self.method}, target={self.target!r}, seq_attr: {attrs})"


class Audit:
    """An audit's result (`AuditResult`): `cells` and `summary` as DataFrames, `plot()`."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = dict(raw)
        self.targets: list[str] = list(raw["targets"])
        self.swept: list[str] = list(raw["swept"])
        self.stats: dict[str, Any] = dict(raw.get("stats") or {})
        self.attributions: list[Optional[Attribution]] = [
            Attribution(c["attribution"]) if c.get("attribution") else None
            for c in raw["cells"]
        ]

    @property
    def cells(self) -> pd.DataFrame:
        """One row per cell and target: the swept values, target, log_prob, stderr, contrast."""
        rows = []
        for cell in self.raw["cells"]:
            stderr = cell.get("log_prob_stderr") or {}
            for target in self.targets:
                row = dict(cell["values"])
                row.update(target=target, log_prob=cell["log_prob"][target],
                           log_prob_stderr=stderr.get(target), contrast=cell.get("contrast"))
                rows.append(row)
        _need_pandas()
        import pandas as pd

        frame: pd.DataFrame = pd.DataFrame(rows)
        return frame

    @property
    def summary(self) -> pd.DataFrame:
        """One row per swept placeholder and value: contrast, rank, gap, n, mean log p."""
        rows = []
        for placeholder, entries in self.raw["summary"].items():
            for entry in entries:
                row: dict[str, Any] = {"placeholder": placeholder, "value": entry["value"],
                                       "contrast": entry.get("contrast"),
                                       "rank": entry["rank"], "gap": entry["gap"],
                                       "n": entry["n"]}
                for target, lp in entry["mean_log_prob"].items():
                    row[f"mean_log_prob[{target}]"] = lp
                rows.append(row)
        _need_pandas()
        import pandas as pd

        frame: pd.DataFrame = pd.DataFrame(rows)
        return frame

    def plot(self, show: bool = False) -> Any:
        """One bar chart per swept placeholder: the contrast (or mean log p) per value."""
        plt = _plot.pyplot()
        summary = self.raw["summary"]
        fig, axes = plt.subplots(1, max(len(summary), 1), squeeze=False,
                                 figsize=(4.8 * max(len(summary), 1), 4.0))
        for ax, (placeholder, entries) in zip(axes[0], summary.items()):
            contrast = len(self.targets) > 1
            ys = [e["contrast"] if contrast else e["mean_log_prob"][self.targets[0]]
                  for e in entries]
            ax.bar([e["value"] for e in entries], ys, color=_plot.COLORS[-2])
            ax.set_title(placeholder)
            ax.set_ylabel(f"log p({self.targets[0]!r}) - log p({self.targets[1]!r})"
                          if contrast else f"log p({self.targets[0]!r})")
            plt.setp(ax.get_xticklabels(), rotation=-30, ha="left")
        return _plot.finish(fig, axes, show)

    def __repr__(self) -> str:
        return f"Audit(swept={self.swept}, targets={self.targets}, cells={len(self.attributions)})"


@dataclass
class Plan:
    """A cost preview (`POST /v1/plan`): what the request would score, and how long."""

    features: int
    coalitions: int
    evaluations: int
    distinct_sequences: int
    tokens: int
    tokens_after_reuse: Optional[int]
    target_generated: bool
    tokens_per_second: Optional[float]
    estimated_seconds: Optional[float]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Plan:
        names = [f for f in cls.__dataclass_fields__ if f != "raw"]
        fields: dict[str, Any] = {k: raw.get(k) for k in names}
        return cls(**fields, raw=dict(raw))


@dataclass
class Template:
    """One of the server's templates (`GET /v1/templates`): the seed notebook's t1..t4."""

    id: str
    title: str
    values: dict[str, str]
    baselines: dict[str, list[str]]
    target: str
    template: Optional[str] = None
    messages: Optional[list[dict[str, str]]] = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Template:
        names = list(cls.__dataclass_fields__)
        fields: dict[str, Any] = {k: raw.get(k) for k in names}
        return cls(**fields)

    def request(self, **fields: Any) -> dict[str, Any]:
        """The attribute request this template stands for, with `fields` added."""
        body: dict[str, Any] = {"values": self.values, "baselines": self.baselines,
                                "target": self.target}
        body.update({"template": self.template} if self.template else
                    {"messages": self.messages})
        body.update(fields)
        return body
