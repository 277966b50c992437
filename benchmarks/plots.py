"""Plots of the benchmark results (matplotlib PNGs in benchmarks/results/).

python benchmarks/plots.py [--quick]    # from the JSON the benchmarks wrote
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402

STYLE = {
    "unfiltered": ("black", ":"),
    "permrag": ("tab:blue", "-"),
    "permrag-milvus": ("tab:cyan", "--"),
    "post-filter": ("tab:red", "--"),
    "id-in": ("tab:orange", "-."),
    "acl-array": ("tab:purple", "--"),
    "langchain-expr": ("tab:green", "-."),
    "silo": ("tab:gray", ":"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fraction_plot(table: list[dict], approaches: list[str], title: str, out: Path) -> Path:
    """Latency ratio and recall@10 against the visible fraction, one line per approach."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [100 * r["fraction"] for r in table]
    for a in approaches:
        color, ls = STYLE.get(a, (None, "-"))
        ax1.plot(xs, [r["cells"][a]["ratio"] for r in table], marker="o", color=color, linestyle=ls, label=a)
        ax2.plot(xs, [r["cells"][a]["recall"] for r in table], marker="o", color=color, linestyle=ls, label=a)
    ax1.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax1.set_yscale("log")
    ax1.set_ylabel("median latency ÷ unfiltered search (log)")
    ax2.set_ylabel("recall@10 vs exact filtered top-10")
    ax2.set_ylim(-0.02, 1.05)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("rows the caller may see (%)")
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def quality_plot(results: list[dict], out: Path) -> Path:
    """nDCG@10 per mode and language, unfiltered and with permissions."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        modes = list(res["modes"])
        xs = range(len(modes))
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [res["modes"][m]["ndcg"] for m in modes], w, label="all rows")
        ax.bar([x + w / 2 for x in xs], [res["modes"][m]["ndcg_permissioned"] for m in modes], w, label="with permissions (1–3 depts)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([m.replace("hybrid-weighted ", "weighted\n") for m in modes], fontsize=8)
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{res['language']}: {res['encoder']}, BM25 `{res['analyzer']}`", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_all(quick: bool = False) -> list[Path]:
    suffix = "_quick" if quick else ""
    made = []
    peers = RESULTS / f"peers{suffix}.json"
    if peers.exists():
        res = json.loads(peers.read_text())["result"]
        approaches = [a for a in STYLE if a in res["table"][0]["cells"]]
        made.append(fraction_plot(res["table"], approaches, f"BBC News, {res['rows']:,} rows, {res['backend']}", RESULTS / f"peers{suffix}.png"))
    runs = [(RESULTS / f"search{suffix}.json", "search")]
    if not quick:  # the 1M runs: one file per backend
        runs += [(p, p.stem) for p in sorted(RESULTS.glob("search_1m_*.json"))]
    for search, stem in runs:
        if not search.exists():
            continue
        for res in json.loads(search.read_text())["results"]:
            kind = "server" if "server" in res["backend"].lower() else "lite"
            approaches = [a for a in STYLE if a in res["table"][0]["cells"]]
            name = f"search_{kind}{suffix}.png" if stem == "search" else f"{stem}.png"
            made.append(fraction_plot(res["table"], approaches, f"{res['backend']}, {res['rows']:,} rows (random vectors)", RESULTS / name))
    quality = RESULTS / f"quality{suffix}.json"
    if quality.exists():
        made.append(quality_plot(json.loads(quality.read_text())["results"], RESULTS / f"quality{suffix}.png"))
    return made


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    made = make_all(args.quick)
    for p in made:
        print(f"wrote {p}")
    return made


if __name__ == "__main__":
    main()
