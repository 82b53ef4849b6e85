#!/usr/bin/env python3
"""Draws PERF.md's plots from the load generator's JSON lines (no dependencies: plain SVG).

    python3 benches/plot.py target/loadgen/results.jsonl perf/

Writes perf/scale-latency.svg (rr-latency p50/p99 against idle connections) and
perf/scale-throughput.svg (requests/s against receivers), medians over the rounds in the file,
switchyard beside NATS as installed and NATS with GOMAXPROCS=1.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

COLORS = {"switchyard": "#1b7837", "nats": "#c51b7d", "nats-gomaxprocs1": "#2166ac"}


def load(path):
    runs = defaultdict(lambda: defaultdict(list))  # (scenario, backend) -> metric -> [values]
    for line in Path(path).read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                runs[(record["scenario"], record["backend"])][key].append(value)
    return runs


def series(runs, prefix, metric):
    """{backend: [(x, median)]} for scenarios named prefix=<x>."""
    out = defaultdict(list)
    for (scenario, backend), metrics in runs.items():
        if scenario.startswith(prefix) and metric in metrics:
            x = int(scenario.split("=", 1)[1])
            out[backend].append((x, statistics.median(metrics[metric])))
    return {b: sorted(points) for b, points in out.items()}


def chart(title, xlabel, ylabel, lines, path, log_x=True):
    import math

    width, height, left, right, top, bottom = 760, 400, 70, 230, 40, 50
    xs = [x for points in lines.values() for x, _ in points]
    ys = [y for points in lines.values() for _, y in points]
    if not xs:
        return
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y1 = max(ys) * 1.1
    px = lambda v: left + (fx(v) - x0) / max(x1 - x0, 1e-9) * (width - left - right)
    py = lambda v: height - bottom - v / y1 * (height - top - bottom)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f"<text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>",
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(left + width - right) / 2 - 40}" y="{height - 12}">{xlabel}</text>',
        f'<text x="12" y="{top - 10}">{ylabel}</text>',
    ]
    for i in range(5):
        v = y1 * i / 4
        svg.append(f'<text x="{left - 60}" y="{py(v) + 4}">{v:,.0f}</text>')
        svg.append(f'<line x1="{left}" y1="{py(v)}" x2="{width - right}" y2="{py(v)}" stroke="#ddd"/>')
    for x in sorted(set(xs)):
        svg.append(f'<text x="{px(x) - 10}" y="{height - bottom + 16}">{x:,}</text>')
    for i, (name, points) in enumerate(sorted(lines.items())):
        color = COLORS.get(name.split(" ")[0], "#666")
        dash = ' stroke-dasharray="6,4"' if "p99" in name else ""
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(points))
        svg.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y in points:
            svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        ly = top + 18 * i
        svg.append(f'<line x1="{width - right + 10}" y1="{ly}" x2="{width - right + 30}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        svg.append(f'<text x="{width - right + 35}" y="{ly + 4}">{name}</text>')
    svg.append("</svg>")
    Path(path).write_text("\n".join(svg) + "\n")


def main():
    results, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load(results)
    latency = {}
    for metric in ("p50_us", "p99_us"):
        for backend, points in series(runs, "scale:idle=", metric).items():
            latency[f"{backend} {metric[:3]}"] = points
    chart("rr-latency vs idle connections (median of rounds)", "idle connections",
          "round trip, µs", latency, out_dir / "scale-latency.svg")
    throughput = series(runs, "scale:receivers=", "requests_per_s")
    chart("rr-throughput vs receivers (median of rounds)", "receivers", "requests/s",
          throughput, out_dir / "scale-throughput.svg")
    print(f"wrote {out_dir / 'scale-latency.svg'} and {out_dir / 'scale-throughput.svg'}")


if __name__ == "__main__":
    main()
