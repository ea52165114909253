"""The paper's claims judged from our numbers: a verdict per claim and protocol, and the claims table."""
from __future__ import annotations

from dualvae.experiments.budgets import COLUMN_TITLES, FAILED_RATIO, LABELS, PROTOCOLS

RULES = ("A comparison holds when the means are in the claimed order; clearly, when the gap is also larger than "
         "twice the larger of the two seed stds. It is untestable when either model failed in any seed (the "
         "failure checks: reconstruction ratio > {ratio}, or transfers further from the real images than pixel "
         "noise in f's features). It is not settled when either model had not plateaued in every seed.")


def _unsettled(cells: dict) -> list[str]:
    """"CVAE still rising in 2 of 3 seeds" for each model (name -> cell) that did not plateau in every seed."""
    out = []
    for name, cell in cells.items():
        status = cell.get("plateau", [])
        for word in sorted({p for p in status if p != "plateaued"}):
            out.append(f"{name} {word} in {sum(p == word for p in status)} of {len(status)} seeds")
    return out


def _failures(cells: dict) -> list[str]:
    return [f"{name} failed in {sum(c.get('failed', []))} of {len(c.get('failed', []))} seeds"
            for name, c in cells.items() if any(c.get("failed", []))]


def claims(table: dict, fig6: dict | None) -> list[dict]:
    """The paper's claims, each with a verdict per protocol from our numbers (see RULES): True/False, or
    "untestable" when a model in it failed. StarGAN's failure at s = 0.9 is "untestable" when StarGAN already
    fails at s = 0 or its s = 0.9 runs were not made."""
    out = []
    for proto in PROTOCOLS:
        t = table[proto]
        for col in table.get("columns", [c for c in t["dualvae"]]):
            for m in ("cvae", "fader", "stargan"):
                a, b = t["dualvae"][col], t[m][col]
                sa, sb = a.get("std_seeds", a.get("std", 0.0)), b.get("std_seeds", b.get("std", 0.0))
                gap, noise = a["mean"] - b["mean"], 2 * max(sa, sb)
                cells = {"DualVAE": a, LABELS[m]: b}
                failures = _failures(cells)
                out.append({"protocol": proto, "claim": f"DualVAE > {LABELS[m]} at {COLUMN_TITLES.get(col, col)}",
                            "holds": "untestable" if failures else gap > 0,
                            "clearly": not failures and gap > noise,
                            "reversed_clearly": not failures and gap < -noise, "dualvae": [a["mean"], sa],
                            "other": [b["mean"], sb], "gap": gap, "failures": failures,
                            "not_settled": _unsettled(cells),
                            "failed_seeds": {"dualvae": sum(a.get("failed", [])), m: sum(b.get("failed", []))}})
        if not fig6:
            continue
        f = {k: {s: v[proto]["cis"] for s, v in fig6[k].items()} for k in fig6}
        d0, d9 = f["dualvae"]["0"], f["dualvae"]["0.9"]
        dual = {f"DualVAE s={s}": fig6["dualvae"][s] for s in ("0", "0.9")}
        failures = _failures(dual)
        stable = d0[0] - d9[0] <= 2 * max(d0[1], d9[1], 0.005)
        out.append({"protocol": proto, "claim": "DualVAE CIS stable up to s = 0.9",
                    "holds": "untestable" if failures else stable, "failures": failures,
                    "not_settled": _unsettled(dual),
                    "rule": "CIS(s=0.9) >= CIS(s=0) - 2 * max(std over seeds, 0.005)", "s0": d0, "s0.9": d9,
                    "s0.5": f["dualvae"]["0.5"], "s0.99": f["dualvae"]["0.99"]})
        sg = fig6.get("stargan", {})
        g0, g9 = f.get("stargan", {}).get("0"), f.get("stargan", {}).get("0.9")
        failed0 = any(sg.get("0", {}).get("failed", []))
        failed9 = any(sg.get("0.9", {}).get("failed", []))
        if g0 is None or failed0:
            verdict, why = "untestable", ("StarGAN was not run at s = 0" if g0 is None else
                                          "StarGAN already fails at s = 0")
        elif g9 is None:
            verdict, why = "untestable", "StarGAN was not run at s = 0.9"
        else:
            verdict, why = (g0[0] - g9[0] > 2 * max(g0[1], g9[1], 0.005)) or failed9, ""
        out.append({"protocol": proto, "claim": "StarGAN fails at s = 0.9 (CIS drops, or the model fails)",
                    "holds": verdict, "why": why, "rule": "untestable when a seed fails at s = 0; else "
                    "CIS(s=0.9) < CIS(s=0) - 2 * max(std, 0.005), or a seed fails at s = 0.9 (the failure checks: "
                    f"reconstruction ratio > {FAILED_RATIO}, or transfers beyond the noise bar)", "s0": g0,
                    "s0.9": g9, "failed_s0": sg.get("0", {}).get("failed"),
                    "failed_s0.9": sg.get("0.9", {}).get("failed")})
    return out


def claims_markdown(verdicts: list[dict]) -> str:
    """The claims as a table: one row per claim, one column per protocol (verdict and the numbers behind it)."""
    def ms(v):
        return "not run" if v is None else f"{v[0]:+.3f} ± {v[1]:.3f}"

    def fmt(c):
        v = c["holds"]
        word = f"**{v}**" if isinstance(v, str) else ("**holds**" if v else "**does not hold**")
        if "gap" in c:
            word += (", clearly" if c["clearly"] else ", the other clearly ahead" if c.get("reversed_clearly")
                     else "") + f": {ms(c['dualvae'])} vs {ms(c['other'])}"
        else:
            word += f": s=0 {ms(c['s0'])}, s=0.9 {ms(c['s0.9'])}"
        notes = c.get("failures", []) + ([c["why"]] if c.get("why") else [])
        if c.get("not_settled"):
            notes.append("not settled: " + ", ".join(c["not_settled"]))
        return word + (f" ({'; '.join(notes)})" if notes else "")

    rows, order = {}, []
    for c in verdicts:
        if c["claim"] not in rows:
            rows[c["claim"]] = {}
            order.append(c["claim"])
        rows[c["claim"]][c["protocol"]] = fmt(c)
    lines = ["| claim | " + " | ".join(PROTOCOLS) + " |", "|---" * (1 + len(PROTOCOLS)) + "|"]
    lines += [f"| {k} | " + " | ".join(rows[k].get(p, "") for p in PROTOCOLS) + " |" for k in order]
    return "\n".join(lines) + "\n\n" + RULES.format(ratio=FAILED_RATIO) + "\n"
