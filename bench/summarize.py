#!/usr/bin/env python3
"""Medians of the bench's runs and their ratios to the OpenSSH floor, as a Markdown table.
Usage: summarize.py results.jsonl"""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
walls = defaultdict(list)
for r in rows:
    walls[(r["hosts"], r["phase"], r["tool"])].append(r["wall_s"])
tools = [t for t in ("clusterctl", "clusterctl-seq", "ansible", "openssh") if any(k[2] == t for k in walls)]
both = "clusterctl" in tools and "ansible" in tools
print("| hosts | phase | " + " | ".join(f"{t} (s)" for t in tools) + " | runs | "
      + " | ".join(f"{t}/openssh" for t in tools if t != "openssh")
      + (" | ansible/clusterctl" if both else "") + " |")
print("|---" * (3 + len(tools) + len([t for t in tools if t != "openssh"]) + both) + "|")
for hosts in sorted({k[0] for k in walls}):
    for phase in ("change", "noop"):
        med = {t: statistics.median(walls[(hosts, phase, t)]) for t in tools if walls.get((hosts, phase, t))}
        if not med:
            continue
        n = min(len(walls[(hosts, phase, t)]) for t in med)
        cells = [f"{med[t]:.2f}" if t in med else "-" for t in tools]
        ratios = [f"{med[t] / med['openssh']:.1f}x" if t in med and "openssh" in med else "-"
                  for t in tools if t != "openssh"]
        if both:
            ratios.append(f"{med['ansible'] / med['clusterctl']:.1f}x"
                          if "ansible" in med and "clusterctl" in med else "-")
        print(f"| {hosts} | {phase} | " + " | ".join(cells) + f" | {n} | " + " | ".join(ratios) + " |")
