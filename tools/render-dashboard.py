#!/usr/bin/env python3
"""Renders Catena's Grafana dashboard (tools/grafana/catena-dashboard.json) to one PNG, from
Prometheus query results saved by tools/metrics-capture.sh — without Grafana.

The queries are read from the dashboard itself, so the picture and the dashboard cannot drift:

  render-dashboard.py queries [--rate-interval 4s]
      prints one line per panel query, KEY<TAB>PROMQL, with the dashboard's variables filled in
      ($__rate_interval, $node = every node); KEY names the file its result is expected in.
  render-dashboard.py render --results DIR [--out docs/images/failover-under-load.png]
      reads DIR/KEY.json (the answers of Prometheus' /api/v1/query_range) and DIR/meta.json
      ({"t0": unix seconds of the x axis' 0, "start": ..., "end": ..., "title": ...,
        "subtitle": ..., "events": [{"t": unix seconds, "label": "..."}]}) and draws each row of
      the dashboard as a row of panels, the events as labelled vertical lines. Queries that
      returned nothing are listed on stderr and marked "no data" in their panel.

Needs matplotlib (pip install matplotlib); draws with the Agg backend, no display needed.
"""
import argparse
import json
import math
import os
import re
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DASHBOARD = os.path.join(ROOT, "tools", "grafana", "catena-dashboard.json")
DEFAULT_OUT = os.path.join(ROOT, "docs", "images", "failover-under-load.png")


def load_dashboard(path):
    with open(path) as f:
        return json.load(f)


def rows_of(dashboard):
    """[(row title, [panel, ...])] in the dashboard's order (panels sorted by grid position)."""
    rows = []
    current = ("", [])
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            if current[1]:
                rows.append(current)
            current = (panel["title"], [])
            current[1].extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
        else:
            current[1].append(panel)
    if current[1]:
        rows.append(current)
    return rows


def key_of(panel, target):
    return f"panel{panel['id']}-{target['refId']}"


def fill_variables(expr, rate_interval, node_regex):
    """The dashboard's variables as Grafana would fill them for "All" nodes."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__interval", "1s").replace("${__interval}", "1s")
    expr = expr.replace("${node}", node_regex).replace("$node", node_regex)
    left = re.findall(r"\$\{?\w+", expr)
    if left:
        sys.exit(f"render-dashboard: unknown dashboard variable(s) {left} in: {expr}")
    return expr


def cmd_queries(args):
    dashboard = load_dashboard(args.dashboard)
    for _, panels in rows_of(dashboard):
        for panel in panels:
            for target in panel.get("targets", []):
                expr = fill_variables(target["expr"], args.rate_interval, args.node_regex)
                print(f"{key_of(panel, target)}\t{' '.join(expr.split())}")


# ---------------------------------------------------------------------------------------------
# Rendering

UNITS = {
    # Grafana unit -> (factor, axis label); "bytes" picks MiB or GiB from the data.
    "s": (1e3, "ms"),
    "Bps": (1e-6, "MB/s"),
    "reqps": (1.0, "requests/s"),
    "ops": (1.0, "ops/s"),
    "short": (1.0, ""),
    "none": (1.0, ""),
}
EVENT_COLORS = ["#d62728", "#222222", "#9467bd", "#8c564b"]  # killed, restarted, back in, ...


def legend_of(fmt, metric):
    text = re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "")
    text = " ".join(text.split())
    if text:
        return text
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{metric.get('__name__', '')}{{{labels}}}"


def load_series(results, panel, target):
    """[(legend, metric labels, [t...], [v...])] of one query, or None when the file is missing."""
    path = os.path.join(results, key_of(panel, target) + ".json")
    try:
        with open(path) as f:
            answer = json.load(f)
    except (OSError, ValueError) as error:
        print(f"render-dashboard: {path}: {error}", file=sys.stderr)
        return None
    if answer.get("status") != "success":
        print(f"render-dashboard: {path}: Prometheus said {answer.get('errorType')}: {answer.get('error')}", file=sys.stderr)
        return None
    series = []
    for s in answer.get("data", {}).get("result", []):
        ts, vs = [], []
        for t, v in s.get("values", []):
            value = float(v)
            ts.append(float(t))
            vs.append(value if math.isfinite(value) else math.nan)
        if any(not math.isnan(v) for v in vs):
            series.append((legend_of(target.get("legendFormat"), s.get("metric", {})), s.get("metric", {}), ts, vs))
    return series


def with_gaps(ts, vs, step):
    """Breaks the line where samples are missing (a process that was down)."""
    out_t, out_v = [], []
    for i, (t, v) in enumerate(zip(ts, vs)):
        if i and t - ts[i - 1] > 1.5 * step:
            out_t.append(ts[i - 1] + step)
            out_v.append(math.nan)
        out_t.append(t)
        out_v.append(v)
    return out_t, out_v


def color_key(legend, metric):
    for label in ("node", "op"):
        if label in metric:
            return (label, metric[label])
    return ("", legend)


OP_ORDER = ["put", "get", "delete", "head", "list"]


def assign_colors(all_series, tab10):
    """One colour per node and per op across every panel (n1 is the same blue everywhere);
    nodes take tab10's first colours, so the event lines' red and purple stay theirs."""
    palette = [c for i, c in enumerate(tab10) if i not in (3, 4)]
    keys = {color_key(l, m) for series in all_series for l, m, _, _ in series}
    natural = lambda k: (OP_ORDER.index(k[1]) if k[1] in OP_ORDER else len(OP_ORDER),
                         [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k[1])])
    colors = {}
    for category in sorted({c for c, _ in keys}):
        for i, key in enumerate(sorted((k for k in keys if k[0] == category), key=natural)):
            colors[key] = palette[i % len(palette)]
    return colors


def dashed_patterns(panel):
    patterns = []
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        for prop in override.get("properties", []):
            if prop.get("id") == "custom.lineStyle" and prop.get("value", {}).get("fill") == "dash":
                if matcher.get("id") == "byRegexp":
                    patterns.append(re.compile(matcher["options"].strip("/")))
                elif matcher.get("id") == "byName":
                    patterns.append(re.compile("^" + re.escape(matcher["options"]) + "$"))
    return patterns


def metric_names(panel):
    names = []
    for target in panel.get("targets", []):
        for name in re.findall(r"\bcatena_[a-z0-9_]+", target["expr"]):
            name = re.sub(r"_(bucket|count|sum)$", "", name)
            if name not in names:
                names.append(name)
    return names


def draw_timeseries(ax, panel, data, colors, step):
    from matplotlib.ticker import ScalarFormatter

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "short")
    log = custom.get("scaleDistribution", {}).get("type") == "log"
    stepped = custom.get("lineInterpolation") in ("stepAfter", "stepBefore")
    dashed = dashed_patterns(panel)
    # A series that stays at zero (an op nobody ran) only crowds the legend, unless all do.
    moving = [d for d in data if any(v != 0 and not math.isnan(v) for v in d[3])]
    if moving:
        data = moving
    peak = max((v for _, _, _, vs in data for v in vs if not math.isnan(v)), default=0.0)
    if unit == "bytes":
        factor, label = (2.0 ** -30, "GiB") if peak >= 2 ** 30 else (2.0 ** -20, "MiB")
    elif unit == "s" and peak >= 2 and not log:
        factor, label = 1.0, "seconds"
    else:
        factor, label = UNITS.get(unit, (1.0, unit))
    for i, (legend, metric, ts, vs) in enumerate(data):
        ts, vs = with_gaps(ts, vs, step)
        width = max(2.6 - 0.6 * i, 1.2)  # the first lines wider: where replicas agree, every line stays visible
        ys = [v * factor for v in vs]
        if log:
            ys = [y if y > 0 else math.nan for y in ys]
        style = "--" if any(p.search(legend) for p in dashed) else "-"
        ax.plot(ts, ys, style, color=colors[color_key(legend, metric)], label=legend, linewidth=width,
                drawstyle="steps-post" if stepped else "default")
    if log and any(v * factor > 0 for _, _, _, vs in data for v in vs if not math.isnan(v)):
        ax.set_yscale("log")
    else:
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        ax.yaxis.set_major_formatter(formatter)
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
    if defaults.get("decimals") == 0:
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(label, fontsize=8)
    ax.legend(fontsize=7, loc="upper left", ncol=2 if len(data) > 3 else 1, framealpha=0.8, handlelength=2.2)


def draw_state_timeline(ax, panel, data, step):
    from matplotlib.patches import Patch

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    mapping = {}
    for m in defaults.get("mappings", []):
        for value, options in m.get("options", {}).items():
            mapping[float(value)] = (options.get("text", value), options.get("color", "gray"))
    named = {"green": "#56a64b", "red": "#e02f44", "gray": "#999999"}
    data = sorted(data, key=lambda s: s[0], reverse=True)
    for row, (legend, _, ts, vs) in enumerate(data):
        spans = {}
        for t, v in zip(ts, vs):
            if not math.isnan(v):
                spans.setdefault(v, []).append((t, step))
        for value, bars in spans.items():
            _, color = mapping.get(value, (str(value), "gray"))
            ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=named.get(color, color), linewidth=0)
    ax.set_yticks(range(len(data)), [s[0] for s in data], fontsize=8)
    ax.set_ylim(-1.5, len(data) - 0.4)  # a band below the bars for the legend
    handles = [Patch(color=named.get(c, c), label=t) for _, (t, c) in sorted(mapping.items())]
    handles.append(Patch(facecolor="white", edgecolor="#999999", label="not listed"))
    ax.legend(handles=handles, fontsize=7, loc="lower left", ncol=len(handles), framealpha=0.8)


def cmd_render(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = load_dashboard(args.dashboard)
    with open(os.path.join(args.results, "meta.json")) as f:
        meta = json.load(f)
    t0 = float(meta["t0"])
    step = float(meta.get("step", 1))
    rows = rows_of(dashboard)

    loaded, empty = {}, []
    for _, panels in rows:
        for panel in panels:
            for target in panel.get("targets", []):
                series = load_series(args.results, panel, target)
                series = [(l, m, [t - t0 for t in ts], vs) for l, m, ts, vs in (series or [])]
                loaded[key_of(panel, target)] = series
                if not series:
                    empty.append((panel["title"], target["refId"], " ".join(target["expr"].split())))
    colors = assign_colors(loaded.values(), plt.get_cmap("tab10").colors)

    from matplotlib.lines import Line2D

    ncols = max(len(p) for _, p in rows)
    header, row_height = 1.0, 3.3
    fig = plt.figure(figsize=(6.0 * ncols, row_height * len(rows) + header), layout="constrained")
    top, *subfigs = fig.subfigures(len(rows) + 1, 1, height_ratios=[header] + [row_height] * len(rows))
    top.text(0.5, 0.98, meta.get("title", dashboard.get("title", "Catena")), ha="center", va="top", fontsize=15,
             fontweight="bold")
    if meta.get("subtitle"):
        top.text(0.5, 0.66, textwrap.fill(meta["subtitle"], width=66 * ncols), ha="center", va="top", fontsize=9,
                 color="#444444", linespacing=1.4)
    xmin, xmax = float(meta["start"]) - t0, float(meta["end"]) - t0
    events = [(float(e["t"]) - t0, e["label"]) for e in meta.get("events", [])]
    if events:
        handles = [Line2D([], [], color=EVENT_COLORS[i % len(EVENT_COLORS)], linestyle=":", linewidth=2,
                          label=f"{label} at {x:.0f} s") for i, (x, label) in enumerate(events)]
        top.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    for r, ((row_title, panels), subfig) in enumerate(zip(rows, subfigs)):
        subfig.suptitle(row_title, x=0.005, ha="left", fontsize=11, fontweight="bold", color="#333333")
        axes = subfig.subplots(1, ncols, squeeze=False)[0]
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax, panel in zip(axes, panels):
            ax.set_title(panel["title"], fontsize=10)
            data = [s for t in panel.get("targets", []) for s in loaded[key_of(panel, t)]]
            for i, (x, _) in enumerate(events):
                color = EVENT_COLORS[i % len(EVENT_COLORS)]
                ax.axvline(x, color=color, linestyle=":", linewidth=1.6, zorder=0)
            if not data:
                ax.text(0.5, 0.5, "no data\n" + "\n".join(metric_names(panel)), transform=ax.transAxes,
                        ha="center", va="center", fontsize=8, color="#888888",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 2})
                ax.set_yticks([])
            elif panel["type"] == "state-timeline":
                draw_state_timeline(ax, panel, data, step)
            else:
                draw_timeseries(ax, panel, data, colors, step)
            ax.set_xlim(xmin, xmax)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("seconds since the load started", fontsize=8)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    try:  # a 256-colour palette: a third of the size, no visible difference for line plots
        from PIL import Image

        with Image.open(args.out) as image:
            small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(args.out, optimize=True)
    except ImportError:
        pass
    print(f"render-dashboard: wrote {args.out} ({os.path.getsize(args.out) // 1024} KiB)")
    if empty:
        print(f"render-dashboard: {len(empty)} of {len(loaded)} queries returned nothing:", file=sys.stderr)
        for title, ref, expr in empty:
            print(f"  {title} [{ref}]: {expr}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default=DEFAULT_DASHBOARD, help="the Grafana dashboard JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queries", help="print KEY<TAB>PROMQL for every panel query")
    q.add_argument("--rate-interval", default="4s", help="what $__rate_interval stands for (4 scrape intervals)")
    q.add_argument("--node-regex", default=".*", help="what $node stands for")
    q.set_defaults(run=cmd_queries)
    r = sub.add_parser("render", help="draw the saved results to a PNG")
    r.add_argument("--results", required=True, help="directory of KEY.json and meta.json")
    r.add_argument("--out", default=DEFAULT_OUT)
    r.add_argument("--dpi", type=int, default=100)
    r.set_defaults(run=cmd_render)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
