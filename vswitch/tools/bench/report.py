"""What a person sees: a progress display while the bench runs, a table, a JSON file, a PNG chart.

rich and matplotlib are imported inside the functions that use them, so importing the bench package
(which `vswitch up` does, to register the subcommand) costs nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from .measure import FAMILY_FIGURES, FIGURES, FLOOR_FIGURES, FRAME_BYTES6, UDP_PAYLOAD, Plan
from .topologies import FLOOR, IPV4_COUNTERPART, IPV6_CONTENDERS

KERNEL_COLOUR = "#4C72B0"
VSWITCH_COLOUR = "#DD8452"
RATIO_AXIS_TOP = 5.0  # the floor panel's axis stops here (x the floor)
IPV6_HATCH = "//"
OTHER_COLOUR = "#55A868"  # another userspace switch without a colour of its own
# Other userspace switches: (colour, legend label), so each one is told apart in the chart.
OTHERS: dict[str, tuple[str, str]] = {
    "vde-l2": ("#55A868", "vde_switch"),
    "ovs-l2": ("#8172B3", "Open vSwitch (userspace)"),
    FLOOR: ("#8C8C8C", "floor (vswitch's IO, no switching)"),
}


def colour(name: str) -> str:
    if name.startswith("vswitch"):
        return VSWITCH_COLOUR
    if name.startswith("kernel"):
        return KERNEL_COLOUR
    return OTHERS.get(name, (OTHER_COLOUR, ""))[0]


def congestion(doc: dict[str, Any]) -> str:
    """The TCP congestion control the loads used: --congestion, else the machine's default."""
    chosen = doc.get("plan", {}).get("congestion")
    return str(chosen or doc["machine"].get("tcp_congestion_control", "unknown"))


def fmt(key: str, value: float | None) -> str:
    """A figure as the table shows it: units implied by the row, precision by the kind of figure."""
    if value is None:
        return "n/a"
    unit = FIGURES[key][1] if key in FIGURES else ""
    if unit == "packets/s" or key == "offered50k_pps":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "%" and 0 < value < 0.01:
        return f"{value:.1g}"
    return f"{value:.2f}"


class Display:
    """A rich progress bar over every measurement step, with a line per finished contender-round."""

    def __init__(self, names: list[str], rounds: int, plan: Plan) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            console=Console(width=None if sys.stdout.isatty() else 160),
        )
        total = len(names) * rounds * len(plan.steps())
        self.task = self.progress.add_task("starting", total=total)
        estimate = len(names) * rounds * plan.seconds_per_round()
        self.progress.console.print(
            f"vswitch bench: {', '.join(names)}; {rounds} round(s), about {estimate / 60:.1f} min"
        )

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def advance(self, steps: int = 1) -> None:
        self.progress.advance(self.task, steps)

    def note(self, text: str) -> None:
        """A line above the progress bar (a contender skipped, and why)."""
        self.progress.console.print(text)

    def done(self, round_no: int, name: str, figures: dict[str, float | None]) -> None:
        self.progress.console.print(
            f"round {round_no} {name:<14} TCP {fmt('tcp_gbps', figures.get('tcp_gbps'))} Gbit/s  "
            f"x4 {fmt('tcp4_gbps', figures.get('tcp4_gbps'))}  "
            f"64B {fmt('udp64_pps', figures.get('udp64_pps'))} pps  "
            f"CPU {fmt('cpu_us_per_pkt', figures.get('cpu_us_per_pkt'))} µs/pkt  "
            f"loss@50k {fmt('loss50k_pct', figures.get('loss50k_pct'))}%  "
            f"ping {fmt('ping_avg_ms', figures.get('ping_avg_ms'))} ms "
            f"(back to back {fmt('ping_b2b_avg_ms', figures.get('ping_b2b_avg_ms'))})"
        )


Grid = tuple[str, list[str], list[list[str]]]  # a title, the column headers, the rows


def tables(doc: dict[str, Any]) -> list[Grid]:
    """The report's tables as text cells: every figure of every contender with the ratios to the
    kernel, then (when python-floor ran) each vswitch contender's ratios to the floor."""
    names = list(doc["results"])
    machine = doc["machine"]
    kernel_pairs, floor_pairs, family_pairs = split_ratios(doc)
    title = (
        f"vswitch bench ({doc['mode']}): medians of {doc['rounds']} round(s); "
        f"{machine['cpu_model']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"TCP {congestion(doc)}"
    )
    rows = []
    for key, (label, unit, _higher) in FIGURES.items():
        row = [label, unit]
        row.extend(fmt(key, doc["results"][n].get(key)) for n in names)
        row.extend(ratio_text(doc["ratios"][pair].get(key)) for pair in kernel_pairs)
        rows.append(row)
    grids: list[Grid] = [(title, ["figure", "unit", *names, *kernel_pairs], rows)]
    if floor_pairs:
        floor_rows = [
            [FIGURES[key][0], *(ratio_text(doc["ratios"][p].get(key)) for p in floor_pairs)]
            for key in FLOOR_FIGURES
        ]
        floor_title = f"vswitch against {FLOOR} (the same IO with no switching), ratios of the medians above"
        grids.append((floor_title, ["figure", *(p.split(" / ")[0] for p in floor_pairs)], floor_rows))
    if family_pairs:
        family_rows = [
            [FIGURES[key][0], *(ratio_text(doc["ratios"][p].get(key)) for p in family_pairs)]
            for key in FAMILY_FIGURES
        ]
        family_title = "IPv6 against IPv4: each router's IPv6 medians over its IPv4 ones"
        grids.append((family_title, ["figure", *family_pairs], family_rows))
    return grids


def notes(doc: dict[str, Any]) -> list[str]:
    """The lines under the tables: what the IPv6 columns' small frames are, and what was skipped."""
    lines = []
    six = [name for name in doc["results"] if name in IPV6_CONTENDERS]
    if six:
        lines.append(
            f'{", ".join(six)}: IPv6 (iperf3 -6, ping -6); their "64-byte" loads carry the same '
            f"{UDP_PAYLOAD}-byte UDP payload in {FRAME_BYTES6}-byte frames (the IPv6 header is 20 bytes "
            "longer)"
        )
    lines.extend(f"{name}: {note}" for name, note in doc["skipped"].items())
    return lines


def print_table(doc: dict[str, Any]) -> None:
    """On a terminal, rich tables; into a pipe or a file, markdown tables a person can read and paste
    (rich would wrap them at the width it guesses)."""
    grids = tables(doc)
    footer = notes(doc)
    if not sys.stdout.isatty():
        print("\n\n".join(markdown(*grid) for grid in grids))
        for note in footer:
            print(f"\n{note}")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for title, header, rows in grids:
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, column in enumerate(header):
            numeric = i >= 1 and column != "unit"
            table.add_column(
                column, justify="right" if numeric else "left", style="bold" if "/" in column else None
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in footer:
        console.print(f"[dim]{escape(note)}[/dim]", highlight=False)


def print_grids(headline: str, grids: list[Grid], errors: list[str]) -> None:
    """A run's headline and tables, rich on a terminal, markdown into a pipe or a file; then its errors
    (bench/emulation.py, the stress tools)."""
    notes = [f"error: {e}" for e in errors]
    if not sys.stdout.isatty():
        print(headline + "\n")
        print("\n\n".join(markdown(*grid) for grid in grids))
        for note in notes:
            print(f"\n{note}")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(headline, highlight=False)
    for title, header, rows in grids:
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, column in enumerate(header):
            table.add_column(column, justify="right" if i else "left")
        for cells in rows:
            table.add_row(*(escape(c) for c in cells))
        console.print(table)
    for note in notes:
        console.print(f"[red]{escape(note)}[/red]", highlight=False)


def markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table under its title: text columns left, figures right."""
    numeric = [i >= 1 and column != "unit" for i, column in enumerate(header)]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if right else "---" for right in numeric) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def split_ratios(doc: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The ratio pairs against the kernel, those against the floor, and those of an IPv6 router
    against the same router in IPv4, each in the order they were made."""
    floor = [pair for pair in doc["ratios"] if pair.endswith(f" / {FLOOR}")]
    across = {f"{six} / {four}" for six, four in IPV4_COUNTERPART.items()}
    family = [pair for pair in doc["ratios"] if pair in across]
    return [pair for pair in doc["ratios"] if pair not in floor and pair not in family], floor, family


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_chart(doc: dict[str, Any], path: Path) -> None:
    """One panel per figure: a bar per contender (the median) and a dot per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["results"])
    keys = list(FIGURES)
    floor_pairs = split_ratios(doc)[1]
    hatched = [n in IPV6_CONTENDERS for n in names]  # the IPv6 routers: hatched, in their side's colour
    cols = 4
    rows = (len(keys) + bool(floor_pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    colours = [colour(n) for n in names]
    for ax, key in zip(axes.flat, keys, strict=False):
        label, unit, higher = FIGURES[key]
        medians = [doc["results"][n].get(key) for n in names]
        heights = [m if m is not None else 0.0 for m in medians]
        bars = ax.bar(range(len(names)), heights, color=colours, width=0.65)
        for bar, six in zip(bars, hatched, strict=True):
            if six:
                bar.set_hatch(IPV6_HATCH)
        top = max(heights, default=0.0) or 1.0
        for i, name in enumerate(names):
            points = [s[key] for s in doc["samples"].get(name, []) if s.get(key) is not None]
            ax.scatter([i + 0.2] * len(points), points, color="black", s=8, zorder=3)
            top = max([top, *points])
        for bar, value in zip(bars, medians, strict=True):
            text = "n/a" if value is None else fmt(key, value)
            y = bar.get_height() if value is not None else 0.0
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, y),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(top * 1.2, 1.0 if unit == "%" else 0.0))
        ax.set_title(f"{label}\n({unit}, {'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if floor_pairs:
        floor_panel(axes.flat[len(keys)], doc, floor_pairs)
    for ax in list(axes.flat)[len(keys) + bool(floor_pairs) :]:
        ax.set_visible(False)
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    for ax, key in zip(axes.flat, keys, strict=False):
        if FIGURES[key][1] == "packets/s":
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    others = [n for n in names if not n.startswith(("vswitch", "kernel"))]
    handles = [
        Patch(color=KERNEL_COLOUR, label="kernel"),
        Patch(color=VSWITCH_COLOUR, label="vswitch"),
        *(Patch(color=colour(n), label=OTHERS.get(n, ("", n))[1]) for n in others),
    ]
    if any(hatched):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=IPV6_HATCH, label="IPv6"))
    # One row along the bottom: however many other switches there are, it covers no panel.
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=9, frameon=False)
    machine = doc["machine"]
    fig.suptitle(
        f"vswitch bench ({doc['mode']}, medians of {doc['rounds']} round(s); dots: single rounds)\n"
        f"{machine['cpu_model']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}, TCP {congestion(doc)}, "
        f"{machine['date']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))  # leave the bottom strip to the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)


def floor_panel(ax: Any, doc: dict[str, Any], pairs: list[str]) -> None:
    """Grouped bars: each vswitch contender's ratio to the floor, per figure; 1.0 is the floor."""
    short = {
        "tcp_gbps": "TCP",
        "udp64_pps": "64B pps",
        "cpu_us_per_pkt": "CPU sat.",
        "cpu_us_per_pkt_50k": "CPU 50k",
        "ping_avg_ms": "ping 5ms",
        "ping_b2b_avg_ms": "ping b2b",
    }
    width = 0.8 / len(pairs)
    shades = ["#DD8452", "#F0B27A", "#A0522D", "#E59866", "#C44E52", "#937860"]
    # A busy-polling switch spends 10x the floor's CPU at 50 kpps by design: cut the axis above
    # RATIO_AXIS_TOP and print such a bar's value at the top, so the other ratios stay readable.
    top = max(
        [1.5] + [v for p in pairs for v in doc["ratios"][p].values() if v is not None and v <= RATIO_AXIS_TOP]
    )
    for i, pair in enumerate(pairs):
        values = [doc["ratios"][pair].get(k) for k in FLOOR_FIGURES]
        xs = [j + (i - (len(pairs) - 1) / 2) * width for j in range(len(FLOOR_FIGURES))]
        heights = [min(v, top * 1.1) if v is not None else 0.0 for v in values]
        ax.bar(xs, heights, width=width, color=shades[i % len(shades)], label=pair.split(" / ")[0])
        for x, value, height in zip(xs, values, heights, strict=True):
            if value is not None:
                ax.annotate(f"{value:.2f}", (x, height), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=5, rotation=90)  # fmt: skip
    ax.set_ylim(0, top * 1.35)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(FLOOR_FIGURES)), [short[k] for k in FLOOR_FIGURES], rotation=20, fontsize=8)
    ax.set_title(f"vswitch / {FLOOR}\n(ratio of medians; 1.0 = the floor)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
