"""Write an evaluation: JSON, a markdown report, plots and a token-coloured HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path


def write_report(result: dict, out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    summary = result["summary"]
    if summary["zero_expert_ratio_per_layer"]:
        paths["layers_png"] = _plot_layers(summary, out_dir / "zero_ratio_per_layer.png")
        paths["tokens_png"] = _plot_tokens(
            result["requests"], out_dir / "real_experts_per_token.png"
        )
        paths["html"] = _token_html(result["requests"], out_dir / "tokens.html", title)
    paths["markdown"].write_text(_markdown(summary, title, paths))
    return paths


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _markdown(summary: dict, title: str, paths: dict[str, Path]) -> str:
    lines = [
        f"# {title}",
        "",
        f"{summary['requests']} requests, accuracy {summary['accuracy']:.1%}, "
        f"zero-expert ratio {summary['zero_expert_ratio']:.1%} "
        f"(routed-expert FLOPs saved {summary['expert_flops_saved']:.1%}, "
        f"model FLOPs saved at short context {summary['model_flops_saved_short_context']:.1%})",
        "",
    ]
    if summary.get("context_overflow"):
        lines += [
            f"{summary['context_overflow']} requests not generated: prompt + budget exceed the "
            "model's context (counted wrong).",
            "",
        ]
    if "reverse_kl" in summary:
        lines += [
            f"Teacher agreement: reverse KL {_fmt(summary['reverse_kl'], '.4f')} nats/token, "
            f"top-1 agreement {_fmt(summary['top1_agreement'], '.1%')}",
            "",
        ]
    header = "| benchmark | n | accuracy | zero-expert ratio |"
    sep = "|---|---:|---:|---:|"
    teacher = "reverse_kl" in summary
    if teacher:
        header += " reverse KL | top-1 agree |"
        sep += "---:|---:|"
    lines += [header, sep]
    for name, e in summary["per_benchmark"].items():
        zr = f"{e['zero_expert_ratio']:.1%}" if "zero_expert_ratio" in e else "-"
        row = f"| {name} | {e['n']} | {e['accuracy']:.1%} | {zr} |"
        if teacher:
            row += f" {_fmt(e['reverse_kl'], '.4f')} | {_fmt(e['top1_agreement'], '.1%')} |"
        lines.append(row)
    if summary["zero_expert_ratio_per_layer"]:
        lines += [
            "",
            "Zero-expert ratio per MoE layer: "
            + ", ".join(f"L{k} {v:.1%}" for k, v in summary["zero_expert_ratio_per_layer"].items()),
        ]
        lines += [
            "",
            f"![zero ratio per layer]({paths['layers_png'].name})",
            f"![real experts per token]({paths['tokens_png'].name})",
            "",
            f"Token view: [{paths['html'].name}]({paths['html'].name})",
        ]
    return "\n".join(lines) + "\n"


def _plot_layers(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = summary["zero_expert_ratio_per_layer"]
    fig, ax = plt.subplots(figsize=(max(4, len(layers) * 0.5), 3))
    positions = list(range(len(layers)))
    ax.bar(positions, [v * 100 for v in layers.values()], color="#4C72B0")
    ax.set_xticks(positions, [str(k) for k in layers])
    ax.axhline(summary["zero_expert_ratio"] * 100, color="#C44E52", linestyle="--", label="overall")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("zero-expert picks (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_tokens(requests: list[dict], path: Path, max_requests: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    # The longest response of each benchmark shows the most of how usage moves over a response.
    longest: dict[str, dict] = {}
    for r in requests:
        if r["real_experts_per_token"] and len(r["real_experts_per_token"]) > len(
            longest.get(r["benchmark"], {}).get("real_experts_per_token", [])
        ):
            longest[r["benchmark"]] = r
    shown = sorted(longest.values(), key=lambda r: -len(r["real_experts_per_token"]))[:max_requests]
    for r in shown:
        ax.plot(r["real_experts_per_token"], marker=".", label=f"{r['benchmark']} {r['id']}")
    ax.set_xlabel("response token")
    ax.set_ylabel("real experts / layer")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _token_html(requests: list[dict], path: Path, title: str, max_requests: int = 50) -> Path:
    top = max((max(r["real_experts_per_token"] or [0]) for r in requests), default=1) or 1
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "span.t{white-space:pre-wrap;font-family:monospace;border-radius:2px}"
        "div.r{margin:1em 0;padding:.5em;border:1px solid #ddd}</style>",
        f"<h1>{html.escape(title)}</h1><p>Each response token is coloured by the real experts it "
        f"used per MoE layer: white = none (all zero experts), dark blue = {top:g}.</p>",
    ]
    for r in [r for r in requests if r["real_experts_per_token"]][:max_requests]:
        parts.append(
            f"<div class=r><b>{html.escape(r['benchmark'])} {html.escape(r['id'])}</b> "
            f"zero ratio {r['zero_ratio']:.1%}, {'correct' if r['correct'] else 'wrong'}<br>"
        )
        for token, value in zip(r["response_tokens"], r["real_experts_per_token"], strict=False):
            shade = value / top
            colour = f"rgba(31,78,181,{0.1 + 0.8 * shade:.2f})"
            text = html.escape(token.replace("Ġ", " ").replace("Ċ", "\n"))
            parts.append(
                f"<span class=t style='background:{colour}' title='{value:.2f}'>{text}</span>"
            )
        parts.append("</div>")
    path.write_text("".join(parts))
    return path
