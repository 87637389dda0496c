"""The noise/signal table of docs/backbones.md, generated from the schedulers themselves.

    PYTHONPATH=src python benchmarks/noise_signal_table.py

Prints a markdown table: noise/signal b/a of ``x_t = a x_0 + b eps`` (read from each MONAI
scheduler's ``add_noise``) against t for the DDPM schedule (mini, MAISI DDPM) and MAISI's
rectified flow, and each schedule's default timestep (the noise/signal of DDPM t = 20).
No timing: nothing here depends on the machine.
"""

from __future__ import annotations

from napari_meddift.backbones.noise import (
    PAPER_TIMESTEP,
    make_rflow_scheduler,
    make_scheduler,
    noise_signal_table,
    operating_timestep,
)

TS = (0, 10, 20, 50, 100, 155, 200, 300, 500, 700, 900, 999)


def main() -> None:
    ddpm, rflow = make_scheduler(), make_rflow_scheduler()
    d, r = noise_signal_table(ddpm), noise_signal_table(rflow)
    td, tr = operating_timestep(ddpm), operating_timestep(rflow)
    print("| t | DDPM (mini, MAISI DDPM) | rectified flow (MAISI rflow) |")
    print("|---:|---:|---:|")
    for t in sorted(set(TS) | {td, tr}):
        marks = [" (default)" if t == td else "", " (default)" if t == tr else ""]
        print(f"| {t} | {float(d[t]):.3f}{marks[0]} | {float(r[t]):.3f}{marks[1]} |")
    print()
    print(f"paper's operating point: DDPM t = {PAPER_TIMESTEP}, noise/signal {float(d[PAPER_TIMESTEP]):.4f}; "
          f"rectified flow t* = {tr}, noise/signal {float(r[tr]):.4f} "
          f"({100 * (float(r[tr]) / float(d[PAPER_TIMESTEP]) - 1):+.2f}%)")


if __name__ == "__main__":
    main()
