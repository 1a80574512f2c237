#!/usr/bin/env python3
"""Prints what one gymforge run against the real-model server did: its exit status and wall
time, each stage's funnel with its drop reasons and what happened, every trajectory's exit
status, the LLM usage gymforge accounted (report.json), and the requests the server saw (its
log lines written during the run): how many, how many refused, the largest prompt and max_tokens.

usage: summary.py LABEL OUT_DIR EXIT_STATUS WALL_SECS SERVER_LOG_SLICE MAX_MODEL_LEN MAX_TOKENS_CAP
"""

import json
import re
import sys
from pathlib import Path

SERVED = re.compile(r"200 prompt_tokens=(\d+) completion_tokens=(\d+) max_tokens=(\S+) finish=(\w+) seconds=([\d.]+)")
REFUSED = re.compile(r"POST /v1/chat/completions (\d{3}) refused")


def funnel(report: dict) -> list[str]:
    lines = []
    for s in report.get("stages", []):
        if not s.get("entered"):
            continue
        line = f"  {s['stage']:<8} entered {s['entered']}, passed {s['passed']}, dropped {s['dropped']}"
        if s.get("in_progress"):
            line += f", still in progress {s['in_progress']}"
        lines.append(line)
        for reason, n in sorted(s.get("drop_reasons", {}).items()):
            detail = s.get("drop_details", {}).get(reason, "")
            lines.append(f"    {reason} x{n}: {detail}" if detail else f"    {reason} x{n}")
    return lines


def trajectories(out: Path) -> list[str]:
    lines = []
    for traj in sorted((out / "trajectories").glob("*/*.traj")):
        data = json.loads(traj.read_text())
        info = data.get("info", {})
        steps = len(data.get("trajectory", []))
        lines.append(f"  {traj.parent.name}/{traj.name}: exit_status {info.get('exit_status')}, {steps} step(s), score {info.get('score')}")
    return lines or ["  (none written)"]


def usage(report: dict) -> list[str]:
    llm = report.get("llm", {})
    lines = []
    for row in llm.get("by_stage_endpoint_model", []):
        lines.append(f"  {row['stage']:<8} {row['endpoint']:<8} {row['calls']} call(s), {row['input_tokens']} in / {row['output_tokens']} out tokens")
    total = llm.get("total")
    if total:
        lines.append(f"  total    {total['calls']} call(s), {total['input_tokens']} in / {total['output_tokens']} out tokens")
    for name, g in sorted(llm.get("gateway", {}).get("endpoints", {}).items()):
        if isinstance(g, dict) and "requests_sent" in g:
            counters = ", ".join(f"{k} {g[k]}" for k in ("requests_sent", "answered", "succeeded", "permanent_failures", "transient_failures", "retries") if k in g)
            lines.append(f"  gateway  {name}: {counters}")
    return lines or ["  (no LLM call accounted)"]


def services(report: dict) -> list[str]:
    """How the report labels each stage's LLM: real or simulated."""
    stages = report.get("services", {}).get("llm", {}).get("stages", {})
    return [f"  {stage:<8} {s.get('endpoint')} ({s.get('model')}){' [SIMULATED]' if s.get('simulated') else ''}"
            for stage, s in sorted(stages.items())] or ["  (no per-stage labels)"]


def server(log_slice: Path, max_model_len: int, cap: int) -> list[str]:
    served, refused = [], {}
    for line in log_slice.read_text(errors="replace").splitlines():
        if m := SERVED.search(line):
            served.append((int(m[1]), int(m[2]), m[3], m[4], float(m[5])))
        elif m := REFUSED.search(line):
            refused[m[1]] = refused.get(m[1], 0) + 1
    lines = [f"  {len(served)} answered, refused: {', '.join(f'{n} x HTTP {s}' for s, n in sorted(refused.items())) or 'none'}"]
    if served:
        prompt = max(s[0] for s in served)
        asked = max(int(s[2]) for s in served if s[2].isdigit()) if any(s[2].isdigit() for s in served) else None
        window = max(s[0] + int(s[2]) for s in served if s[2].isdigit()) if asked is not None else None
        lengths = sum(1 for s in served if s[3] == "length")
        lines.append(f"  largest prompt {prompt} tokens, largest max_tokens {asked} (cap {cap}), largest prompt+max_tokens {window} (max_model_len {max_model_len})")
        lines.append(f"  {sum(s[1] for s in served)} tokens generated in {sum(s[4] for s in served):.0f} s of generation; {lengths} answer(s) cut off at max_tokens")
    return lines


def main() -> None:
    label, out, status, wall, log_slice, max_model_len, cap = sys.argv[1:8]
    out = Path(out)
    print(f"== {label}")
    print(f"exit status {status}, wall time {float(wall):.0f} s, output {out}")
    report_path = out / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        print("stage funnel (report.json):")
        print("\n".join(funnel(report)))
        print("trajectories:")
        print("\n".join(trajectories(out)))
        print("LLM per stage as report.json labels it:")
        print("\n".join(services(report)))
        print("LLM usage accounted by gymforge (report.json):")
        print("\n".join(usage(report)))
    else:
        print(f"no report.json in {out}")
    print("requests the server saw:")
    print("\n".join(server(Path(log_slice), int(max_model_len), int(cap))))


if __name__ == "__main__":
    main()
