"""ours-cpu under each build of the fused C++ kernels (DUALVAE_CPU_ISA=avx2 vs avx512 by default), interleaved.

At the key sizes (dual_bce fp32 B=1024, d=128, n=8192; reparameterize_kl fp32 65536 x 256), each round starts one
process per build (the library reads DUALVAE_CPU_ISA once per process), in an order that alternates between
rounds, and times forward + backward with the benchmark scripts' own cases and timer (bench/harness.py).
Reports the median over rounds of each process's median, and min-max. With --into PREFIX it adds the result to
PREFIX.json ("isa_comparison") and PREFIX.md (a section), and fills in the CPU fields (sysinfo.cpu_report(),
kernels.cpu_isa()) that a report lacks.

    python bench/kernels_cpu_isa.py --rounds 6 --threads 1 --into bench/results/kernels-cpu-avx512
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SPECS = [{"op": "dual_bce", "B": 1024, "d": 128, "n": 8192, "dtype": "fp32", "impl": "ours-cpu"},
         {"op": "reparameterize_kl", "B": 65536, "d": 256, "dtype": "fp32", "impl": "ours-cpu"}]


def _child(isa: str, repeats: int, threads: int | None) -> None:
    import torch

    from dualvae import kernels as K

    sys.path.insert(0, HERE)
    import harness

    if threads:
        torch.set_num_threads(threads)
    assert K.cpu_isa() == isa, f"DUALVAE_CPU_ISA={isa} but cpu_isa() is {K.cpu_isa()}"
    rows = []
    for row_spec in SPECS:
        case = harness.op_module(row_spec["op"]).make_case(row_spec, "cpu")
        res = harness.measure(case, "cpu", warmup=1, repeats=repeats, budget_s=60.0)
        rows.append({**row_spec, "median_ms": res["median_ms"], "min_ms": res["min_ms"], "repeats": res["repeats"]})
        del case
    print(json.dumps({"isa": isa, "threads": torch.get_num_threads(), "rows": rows}))


def _key(spec: dict) -> str:
    if spec["op"] == "dual_bce":
        return f"dual_bce B={spec['B']} d={spec['d']} n={spec['n']} {spec['dtype']}"
    return f"reparameterize_kl {spec['B']}x{spec['d']} {spec['dtype']}"


def compare(isas: list[str], rounds: int, repeats: int, threads: int | None) -> dict:
    runs = []
    load_start = list(os.getloadavg())
    t0 = _dt.datetime.now(_dt.timezone.utc)
    for r in range(rounds):
        order = isas if r % 2 == 0 else isas[::-1]
        for isa in order:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", isa, "--repeats", str(repeats)]
            if threads:
                cmd += ["--threads", str(threads)]
            env = dict(os.environ, DUALVAE_CPU_ISA=isa)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(f"DUALVAE_CPU_ISA={isa}: {out.stderr[-2000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run.update(round=r, loadavg_after=list(os.getloadavg()))
            runs.append(run)
            print(f"round {r} {isa:7s} " + "  ".join(f"{_key(x)}: {x['median_ms']:.2f} ms" for x in run["rows"]),
                  flush=True)
    summary = []
    for spec in SPECS:
        entry = {**{k: spec[k] for k in spec if k != "impl"}, "impl": spec["impl"]}
        for isa in isas:
            meds = [row["median_ms"] for run in runs if run["isa"] == isa for row in run["rows"]
                    if _key(row) == _key(spec)]
            best = min(row["min_ms"] for run in runs if run["isa"] == isa for row in run["rows"]
                       if _key(row) == _key(spec))
            entry[isa] = {"median_ms": statistics.median(meds), "min_ms": min(meds), "max_ms": max(meds),
                          "best_step_ms": best, "per_round_ms": meds}
        if len(isas) == 2:
            a, b = isas
            entry[f"{a}_over_{b}"] = entry[a]["median_ms"] / entry[b]["median_ms"]
            # the fastest single step: the one least disturbed by other jobs on a loaded machine
            entry[f"{a}_over_{b}_best_step"] = entry[a]["best_step_ms"] / entry[b]["best_step_ms"]
        summary.append(entry)
    return {"method": (f"{rounds} rounds; each round one fresh process per build (DUALVAE_CPU_ISA), order "
                       f"alternating between rounds; per process 1 warmup + up to {repeats} timed forward+backward "
                       "steps (the scripts' make_case, harness.measure), median; reported: median over rounds of the "
                       "per-process medians, min-max over rounds"),
            "isas": isas, "rounds": rounds, "repeats": repeats, "threads": runs[0]["threads"],
            "date": t0.isoformat(timespec="seconds"), "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
            "summary": summary, "runs": runs}


def markdown(comp: dict) -> str:
    a, b = comp["isas"][0], comp["isas"][-1]
    lines = ["", f"## ours-cpu: {' vs '.join(comp['isas'])} builds of the C++ kernels (interleaved)", "",
             f"{comp['method']}. {comp['threads']} thread(s); load average {comp['loadavg_start'][0]:.2f} at the "
             f"start, {comp['loadavg_end'][0]:.2f} at the end (other jobs shared the machine).", "",
             "| op (fp32, forward + backward) | " + " | ".join(f"{i} ms (min-max; best step)" for i in comp["isas"])
             + (f" | {a} / {b} (median; best step) |" if len(comp["isas"]) == 2 else " |"),
             "|---|" + "---:|" * (len(comp["isas"]) + (len(comp["isas"]) == 2))]
    for e in comp["summary"]:
        cells = [f"{e[i]['median_ms']:.1f} ({e[i]['min_ms']:.1f}-{e[i]['max_ms']:.1f}; {e[i]['best_step_ms']:.1f})"
                 for i in comp["isas"]]
        if len(comp["isas"]) == 2:
            cells.append(f"{e[f'{a}_over_{b}']:.2f}x; {e[f'{a}_over_{b}_best_step']:.2f}x")
        lines.append(f"| {_key(e)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_into(prefix: str, comp: dict) -> None:
    """Adds comp to PREFIX.json / PREFIX.md, and the CPU fields the report lacks."""
    from dualvae import kernels as K
    from dualvae.sysinfo import cpu_report

    with open(prefix + ".json") as fh:
        report = json.load(fh)
    added = []
    for k, v in {**cpu_report(), "cpu_kernels_isa": K.cpu_isa()}.items():
        if k not in report:
            report[k] = v
            added.append(k)
    if added:
        report["cpu_fields_added_after"] = (f"{', '.join(added)}: filled in by bench/kernels_cpu_isa.py on the "
                                            "machine that made the measurement, right after it")
    report["isa_comparison"] = comp
    from dualvae.data.atomic import write_text_atomic
    write_text_atomic(prefix + ".json", json.dumps(report, indent=1))
    with open(prefix + ".md", "a") as fh:
        fh.write(f"\nCPU: {report['cpu_model']}, ISA level {report['cpu_isa_level']} ({' '.join(report['cpu_isa'])}); "
                 f"C++ kernel build of the grid above: {report['cpu_kernels_isa']}.\n")
        fh.write(markdown(comp))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isas", default="avx2,avx512", help="comma list of builds (default: avx2,avx512)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--into", default=None, help="add the result to PREFIX.json and PREFIX.md")
    ap.add_argument("--save", default=None, help="also write the comparison alone to this JSON file")
    ap.add_argument("--load", default=None, help="merge a comparison saved with --save instead of measuring")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.repeats, args.threads)
        return 0
    if args.load:
        with open(args.load) as fh:
            comp = json.load(fh)
    else:
        comp = compare(args.isas.split(","), args.rounds, args.repeats, args.threads)
    print(markdown(comp))
    if args.save:
        from dualvae.data.atomic import write_json_atomic

        write_json_atomic(args.save, comp, indent=1)
    if args.into:
        merge_into(args.into, comp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
