"""The latency guard: the signed-in hot path measured side by side against ``loadtests/budget.yaml``.

One command (``make bench``)::

    python -m loadtests.guard [--quick] [--rounds 3] [--duration 10] [--budget loadtests/budget.yaml]

starts the echo upstream, nginx, the bare ASGI pass-through (on aiohttp's client, and on the gateway's
own HTTP/1.1 client) and two gateways (access log on and off),
each gateway with a user created by ``gateway user add`` and signed in through the HTML form; then, in
interleaved rounds (``loadtests.measure``), wrk throughput with the session ``Cookie`` and open-loop
latency at a fixed rate; then browsing at that rate with and without sign-ins running
(``loadtests.signins``), alternating which comes first. It prints every value next to its goal, writes
``loadtests/results/guard.json`` and ``guard.png`` (latency distribution direct vs gateway, throughput
bars).

Exit codes: 0 within budget; 1 an error (a target did not start, errored, answered non-2xx, a sign-in
failed); 2 usage; 3 the strict budget was missed (full runs), or with ``--quick`` a value is
``smoke_factor`` times worse than its goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtests import measure as m
from loadtests import signins

__all__ = ["check_budget", "main"]

ROOT = Path(__file__).resolve().parent.parent
BUDGET = ROOT / "loadtests" / "budget.yaml"
RESULTS = ROOT / "loadtests" / "results"
GUARD_TARGETS = ("direct", "bare", "gateway", "nginx", "gateway-nolog", "bare-http1", "gateway-memstate")


def load_budget(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("goals"), dict):
        raise m.MeasureError(f"{path}: needs a 'goals' mapping")
    for key, goal in data["goals"].items():
        if not isinstance(goal, dict) or ("min" in goal) == ("max" in goal):
            raise m.MeasureError(f"{path}: goals.{key} needs exactly one of min / max")
    return data


def check_budget(
    values: dict[str, float | None], budget: dict[str, Any], *, factor: float = 1.0
) -> dict[str, bool | None]:
    """Each goal: True (met), False (missed) or None (not measured). ``factor`` > 1 loosens every goal
    (the smoke run: a minimum divided by it, a maximum multiplied by it)."""
    out: dict[str, bool | None] = {}
    for key, goal in budget["goals"].items():
        value = values.get(key)
        if factor != 1 and goal.get("smoke") is False:
            out[key] = None  # too noisy for a short run: reported, checked only by full runs
        elif value is None or not math.isfinite(value):
            out[key] = None
        elif "min" in goal:
            out[key] = value >= float(goal["min"]) / factor
        else:
            out[key] = value <= float(goal["max"]) * factor
    return out


def _wait_ready(loader: m.Child, out: Path) -> None:
    """Wait until the sign-in loader has started (its first line), so its start-up is not measured.

    Before this, browsing began while the loader's interpreter was still importing (~0.3 s of one
    core's CPU on the 2-core machine), and that showed up in the "with sign-ins" p99.
    """
    deadline = time.monotonic() + 30
    while not out.read_text(errors="replace").startswith(signins.READY):
        if loader.proc.poll() is not None or time.monotonic() > deadline:
            raise m.MeasureError(f"sign-in load did not start: {out.read_text(errors='replace')[-300:]}")
        time.sleep(0.01)


#: The sign-in phase's arms, rotated per round: browsing alone, beside sign-ins through the gateway, and
#: beside the same rate of password hashes made outside any gateway (the floor: what the hashing CPU
#: alone costs the machine's other processes).
SIGNIN_ARMS = ("without", "with_signins", "with_hashes")


def _signin_loader(arm: str, port: int, signin_rate: float, duration: float, tmp: Path) -> m.Child | None:
    """Start the load that runs beside browsing in this arm (None: browsing alone)."""
    if arm == "without":
        return None
    if arm == "with_signins":
        argv = [sys.executable, "-m", "loadtests.signins", f"http://127.0.0.1:{port}"]
        argv += ["--user", m.SIGNIN_USER, "--password-env", "GW_BENCH_PASSWORD"]
    else:
        argv = [sys.executable, "-m", "loadtests.hashload"]
    argv += ["--rate", str(signin_rate), "--duration", str(duration)]
    loader = m.Children.spawn(
        _CHILDREN, arm, argv, tmp / f"{arm}.out", env={"GW_BENCH_PASSWORD": m.BENCH_PASSWORD}
    )
    _wait_ready(loader, tmp / f"{arm}.out")
    return loader


def _loader_result(loader: m.Child, arm: str, timeout: float, tmp: Path) -> dict[str, Any]:
    loader.proc.wait(timeout)
    _CHILDREN.items.remove(loader)
    out = (tmp / f"{arm}.out").read_text().strip().splitlines()
    result: dict[str, Any] = json.loads(out[-1]) if out else {}
    if loader.proc.returncode != 0 or not result or result.get("failed"):
        raise m.MeasureError(f"{arm} load failed: {out[-3:] if out else 'no output'}")
    return result


def _signin_phase(args: argparse.Namespace, budget: dict[str, Any]) -> m.AfterRounds:
    """Browsing p99 at the fixed rate on the gateway: alone, beside sign-ins, beside their hashes alone."""

    def phase(running: dict[str, m.Started], client: m.Client, tmp: Path) -> dict[str, Any]:
        gw = running.get("gateway")
        if gw is None or args.signin_rounds == 0:
            return {}
        rate, signin_rate = float(budget.get("rate", 300)), float(budget.get("signin_rate", 10))
        pairs: list[dict[str, Any]] = []
        for rnd in range(args.signin_rounds):
            pair: dict[str, Any] = {"round": rnd + 1}
            shift = rnd % len(SIGNIN_ARMS)
            for arm in SIGNIN_ARMS[shift:] + SIGNIN_ARMS[:shift]:
                loader = _signin_loader(arm, gw.port, signin_rate, args.rate_duration + 1, tmp)
                browse = client.paced(_CHILDREN, tmp, gw.port, args.rate_duration, rate)
                pair[arm] = browse
                side = "" if loader is None else f"  ({arm[5:]}: "
                if loader is not None:
                    key = "signins" if arm == "with_signins" else "hashes"
                    pair[key] = result = _loader_result(loader, arm, args.rate_duration + 60, tmp)
                    side += f"{result['rate']:.1f}/s, p99 {result['p99_ms']:.0f} ms)"
                if browse["non_2xx"] or browse["errors"]:
                    raise m.MeasureError(
                        f"browsing ({arm}): {browse['non_2xx']} non-2xx {browse.get('statuses', {})}, "
                        f"{browse['errors']} errors"
                    )
                print(
                    f"sign-in round {rnd + 1}/{args.signin_rounds} gateway @ {rate:g}/s {arm:<13} "
                    f"p50 {browse['p50_ms']:.2f} ms  p99 {browse['p99_ms']:.2f} ms{side}",
                    file=sys.stderr,
                )
            pairs.append(pair)

        def ratio(top: str, bottom: str) -> float | None:
            values = [p[top]["p99_ms"] / p[bottom]["p99_ms"] for p in pairs if p[bottom]["p99_ms"]]
            return statistics.median(values) if values else None

        return {
            "signins": {
                "rate": rate,
                "signin_rate": signin_rate,
                "rounds": pairs,
                "p99_without_ms": statistics.median(p["without"]["p99_ms"] for p in pairs),
                "p99_with_ms": statistics.median(p["with_signins"]["p99_ms"] for p in pairs),
                "p99_hashes_ms": statistics.median(p["with_hashes"]["p99_ms"] for p in pairs),
                "p99_ratio": ratio("with_signins", "without"),
                "p99_hashes_ratio": ratio("with_hashes", "without"),
                "p99_vs_hashes": ratio("with_signins", "with_hashes"),
                "signin_p50_ms": statistics.median(p["signins"]["p50_ms"] for p in pairs),
                "signin_p99_ms": statistics.median(p["signins"]["p99_ms"] for p in pairs),
            }
        }

    return phase


_CHILDREN = m.Children()


def values_of(report: dict[str, Any]) -> dict[str, float | None]:
    cmp = report["comparisons"]
    signins = report.get("extra", {}).get("signins", {})
    return {
        "added_p50_ms": cmp.get("added_p50_ms_fixed_rate"),
        "added_p99_ms": cmp.get("added_p99_ms_fixed_rate"),
        "gateway_vs_bare": cmp.get("gateway/bare"),
        "gateway_vs_bare_http1": cmp.get("gateway/bare-http1"),
        "gateway_vs_nginx": cmp.get("gateway/nginx"),
        "signin_p99_ratio": signins.get("p99_ratio"),
        "signin_p99_vs_hashes": signins.get("p99_vs_hashes"),
        "access_log_ratio": cmp.get("gateway/gateway-nolog"),
        "shared_state_ratio": cmp.get("gateway/gateway-memstate"),
        "cpu_vs_bare_http1": cmp.get("cpu bare-http1/gateway"),
        "cpu_access_log_ratio": cmp.get("cpu gateway-nolog/gateway"),
        "cpu_shared_state_ratio": cmp.get("cpu gateway-memstate/gateway"),
    }


def render(
    report: dict[str, Any], budget: dict[str, Any], checks: dict[str, bool | None], factor: float
) -> str:
    lines = [m.render(report), ""]
    signins = report.get("extra", {}).get("signins")
    if signins:
        lines.append(
            f"browsing @ {signins['rate']:g}/s p99: {signins['p99_without_ms']:.2f} ms without, "
            f"{signins['p99_with_ms']:.2f} ms with {signins['signin_rate']:g} sign-ins/s "
            f"(sign-in p50 {signins['signin_p50_ms']:.0f} ms, p99 {signins['signin_p99_ms']:.0f} ms), "
            f"{signins['p99_hashes_ms']:.2f} ms with their password hashes alone outside the gateway"
        )
    loose = f" (smoke: goals loosened {factor:g}x)" if factor != 1 else ""
    lines += ["", f"{'budget ' + str(report['budget_file']) + loose:<60}{'value':>10}   goal"]
    values = values_of(report)
    for key, goal in budget["goals"].items():
        value = values.get(key)
        bound = f">= {goal['min']:g}" if "min" in goal else f"<= {goal['max']:g}"
        unit = " ms" if key.endswith("_ms") else "x"
        shown = "n/a" if value is None else f"{value:.2f}{unit}"
        verdict = {True: "ok", False: "MISSED", None: "not measured"}[checks[key]]
        if checks[key] is None and value is not None and factor != 1 and goal.get("smoke") is False:
            verdict = "(not checked in --quick)"
        if key == "access_log_ratio" and value is None and report.get("access_log_unavailable"):
            verdict = "n/a (access log not available)"
        lines.append(f"  {goal.get('what', key)[:56]:<58}{shown:>10}   {bound:<7} {verdict}")
    lines.append(
        f"noise: load average {report['machine']['loadavg_start'][0]:.1f} -> "
        f"{report['machine']['loadavg_end'][0]:.1f}; per-round values are in the JSON"
    )
    return "\n".join(lines)


def plot(report: dict[str, Any], samples: dict[str, list[int]], path: Path) -> None:
    """Latency distribution (CDF) at the fixed rate per target, and median req/s bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name in ("direct", "nginx", "bare", "bare-http1", "gateway", "gateway-nolog", "gateway-memstate"):
        data = sorted(samples.get(name, []))
        if not data:
            continue
        ms = [v / 1e6 for v in data]
        frac = [(i + 1) / len(ms) for i in range(len(ms))]
        left.plot(
            ms,
            frac,
            label=f"{name} (p50 {ms[len(ms) // 2]:.2f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.2f} ms)",
        )
    left.set_xscale("log")
    left.set_xlabel("latency, ms (log scale)")
    left.set_ylabel("fraction of requests")
    left.set_title(f"latency at a fixed {report['settings']['rate']:g} req/s (open loop, all rounds)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    closed = report["closed_loop"]
    targets = ("direct", "nginx", "bare", "bare-http1", "gateway", "gateway-nolog", "gateway-memstate")
    names = [n for n in targets if n in closed]
    colours = {"direct": "#888", "nginx": "#4a7", "bare": "#47a", "bare-http1": "#79c", "gateway": "#c63"}
    bars = right.bar(names, [closed[n]["rps"] for n in names], color=[colours.get(n, "#e96") for n in names])
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("req/s (wrk, median of rounds)")
    cmp = report["comparisons"]
    title = "throughput, signed-in hot path (median of per-round ratios):\n"
    title += ", ".join(
        f"gateway/{ref} {cmp[f'gateway/{ref}']:.2f}x"
        for ref in ("bare", "bare-http1", "nginx")
        if cmp.get(f"gateway/{ref}")
    )
    right.set_title(title, fontsize=10)
    fig.suptitle(
        f"{report['machine']['date']} - {report['machine']['nproc']} cpu(s), load "
        f"{report['machine']['loadavg_start'][0]:.1f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.guard",
        description="Measure the signed-in hot path side by side and check it against loadtests/budget.yaml.",
        epilog="Exit codes: 0 within budget; 1 error; 2 usage; 3 budget missed (--quick: far outside it).",
    )
    parser.add_argument("--budget", type=Path, default=BUDGET)
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 2 minutes), loose budget")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="wrk seconds per target and round")
    parser.add_argument("--rate-duration", type=float, default=None, help="seconds per fixed-rate run")
    parser.add_argument(
        "--signin-rounds", type=int, default=None, help="with/without sign-in pairs (3; quick 1)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for guard.json and guard.png")
    args = parser.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.duration = args.duration or (2.0 if q else 10.0)
    args.rate_duration = args.rate_duration or (3.0 if q else 5.0)
    args.signin_rounds = args.signin_rounds if args.signin_rounds is not None else (1 if q else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        budget = load_budget(args.budget)
    except (OSError, yaml.YAMLError, m.MeasureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    factor = float(budget.get("smoke_factor", 3)) if args.quick else 1.0
    margs = m.parse_args(
        [
            "--targets",
            ",".join(GUARD_TARGETS),
            "--rounds",
            str(args.rounds),
            "--duration",
            str(args.duration),
            "--rate",
            str(budget.get("rate", 300)),
            "--rate-duration",
            str(args.rate_duration),
            "--warmup",
            "1" if args.quick else "2",
            "--connections",
            str(args.connections),
            "--client",
            "wrk",
        ]
    )
    tmp = Path(tempfile.mkdtemp(prefix="gw-guard-"))
    global _CHILDREN
    _CHILDREN = children = m.Children()
    try:
        with m._sigterm_as_interrupt():
            report = m.measure(margs, children, tmp, after_rounds=_signin_phase(args, budget))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    except m.MeasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    samples = report.pop("latency_samples_ns", {})
    report["budget_file"] = os.path.relpath(args.budget, ROOT)
    if not m.access_log_switch():
        report["access_log_unavailable"] = report["unavailable"].pop("gateway-nolog", "no switch")
        margs.target_list.remove("gateway-nolog")
    checks = check_budget(values_of(report), budget, factor=factor)
    report["budget"] = {"values": values_of(report), "checks": checks, "factor": factor}
    print(render(report, budget, checks, factor))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guard.json").write_text(
        json.dumps(m._finite(report), indent=2, allow_nan=False, default=str) + "\n"
    )
    plot(report, samples, args.out / "guard.png")
    print(f"\nwritten: {args.out / 'guard.json'}, {args.out / 'guard.png'}")

    failed = bool(report["unavailable"] or report["errors"])
    failed |= any(n not in report["closed_loop"] for n in GUARD_TARGETS if n in margs.target_list)
    if failed:
        print("FAILED: a target was unavailable or errored (see above)", file=sys.stderr)
        return 1
    if any(ok is False for ok in checks.values()):
        print("budget missed" + (" by far (smoke factor)" if args.quick else ""), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
