"""Time one training step of ``multiworker_train.py`` on one process, one worker and two
workers (same model, same global batch), and print a Markdown table.

Design: each configuration is launched ``--repeats`` times as fresh processes; a run's
figure is the median wall time of its steps after ``--warmup`` steps (the first ones
trace and compile), read from the per-step records the workers log; the table gives
the median over runs and the min-max range. Runs alternate between configurations so a
change in the machine's load hits them alike.

Run: ``python examples/time_workers.py --repeats 3`` (a few minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import multiworker_train as mw  # noqa: E402


def run_once(workers: int, argv: list[str], warmup: int) -> float:
    """Median step time (s) of worker 0 in one fresh run; ``workers=0`` is ``--single``."""
    with tempfile.TemporaryDirectory() as out:
        if workers:
            codes = mw.launch(workers, [*argv, "--out-dir", out], out, timeout=900)
        else:
            import subprocess
            env = mw.worker_env(0, [0])
            del env["TF_CONFIG"]
            codes = [subprocess.run([sys.executable, mw.__file__, *argv, "--single", "--out-dir", out],
                                    env=env, timeout=900, capture_output=True).returncode]
        assert codes == [0] * len(codes), codes
        steps = [r["seconds"] for r in mw.read_log(os.path.join(out, "worker0.log")) if r["event"] == "step"]
    return statistics.median(steps[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--model", default="lstm")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--units", type=int, default=64)
    a = p.parse_args()
    argv = ["--model", a.model, "--steps", str(a.steps), "--batch", str(a.batch), "--length", str(a.length),
            "--features", str(a.features), "--units", str(a.units)]
    configs = {"one process (no strategy)": 0, "1 worker (MultiWorkerMirroredStrategy)": 1,
               "2 workers (MultiWorkerMirroredStrategy)": 2}
    times: dict = {name: [] for name in configs}
    load = [os.getloadavg()[0]]
    for _ in range(a.repeats):
        for name, n in configs.items():
            times[name].append(run_once(n, argv, a.warmup))
            print(f"{name}: {times[name][-1] * 1e3:.1f} ms", file=sys.stderr)
    load.append(os.getloadavg()[0])
    print(f"{a.model}, global batch {a.batch}, length {a.length}, features {a.features}, units {a.units}; "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"load average {load[0]:.1f} before / {load[1]:.1f} after; {a.repeats} runs each, "
          f"median of steps {a.warmup + 1}-{a.steps} per run\n")
    print("| configuration | step time (median of runs) | range |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} ms | {min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
