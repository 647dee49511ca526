"""benchmarks/selection_record.py: one JSON from a rule, the models trained for it and its runs;
it refuses what a reader could not trust (a dirty tree, no seeds, an undated rule)."""
import json

import pytest


@pytest.fixture
def parts(tmp_path):
    from same_fast.models import save_model
    from same_fast.nn import SAMENet

    rule = tmp_path / "rule.md"
    rule.write_text("# rule (written 2026-12-07 19:55 UTC, before the runs)\nOne candidate.\n")
    ckpt = tmp_path / "H.safetensors"
    save_model(ckpt, SAMENet(3, base=8, levels=3), step=1500,
               validation={"step": 1500, "val_ssim": 0.9046})
    (tmp_path / "H.recipe.json").write_text(json.dumps({"lr": 1e-4, "steps": 20000}))
    (tmp_path / "H.log.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "val_ssim": v}) for s, v in ((500, 0.90), (1500, 0.9046))))

    def run(name, dirty=False, seeds=True):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({
            "provenance": {"git": {"commit": "9b7d52b" + "0" * 33, "dirty": dirty},
                           "seeds": {"degradation": 0, "bootstrap": 0} if seeds else {}},
            "cameras": {name: {"fundus-local": {"rows": []}}}}))
        return path

    return tmp_path, rule, ckpt, run


def test_a_record_keeps_the_rule_the_training_and_the_runs_whole(bench_script, parts, capsys):
    tmp, rule, ckpt, run = parts
    mod = bench_script("selection_record")
    out = tmp / "results" / "2026-12-07-cpu-x.json"
    (tmp / "results").mkdir()
    extra = tmp / "extra.json"
    extra.write_text('{"note": "kept"}')
    args = ["--what", "a candidate on two cameras; not a candidate", "--rule", str(rule),
            "--training", f"H={ckpt}", "--run", f"c/DRIVE={run('DRIVE')}",
            "--run", f"c/IDRiD={run('IDRiD')}", "--extra", f"diagnostic={extra}",
            "-o", str(out), "--index", "what it holds"]
    assert mod.main(args) == 0
    rec = json.loads(out.read_text())
    assert rec["rule"] == rule.read_text() and rec["what"].startswith("a candidate")
    assert list(rec["runs"]) == ["c/DRIVE", "c/IDRiD"]
    assert rec["runs"]["c/IDRiD"]["cameras"] == {"IDRiD": {"fundus-local": {"rows": []}}}
    h = rec["training"]["H"]
    assert h["recipe"]["lr"] == 1e-4 and [r["step"] for r in h["log"]] == [500, 1500]
    assert h["validated_state"]["step"] == 1500
    assert h["validated_state"]["validation"]["val_ssim"] == 0.9046
    assert rec["diagnostic"] == {"note": "kept"}
    index = (tmp / "results" / "INDEX.md").read_text()
    assert index == "| `2026-12-07-cpu-x.json` | what it holds |\n"
    assert mod.main(args) == 0  # written again: the index keeps one row
    assert (tmp / "results" / "INDEX.md").read_text() == index
    assert "added" not in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("case, message", [
    ("dirty", "uncommitted changes"),
    ("no-seeds", "no seeds"),
    ("undated", "names no date"),
    ("no-recipe", "no H.recipe.json beside it"),
    ("bad-pair", "expects NAME=PATH"),
    ("twice", "given twice"),
    ("no-run", "at least one run"),
    ("extra-clash", "already uses"),
    ("out-is-folder", "exists as a folder"),
])
def test_what_a_reader_could_not_trust_is_refused(bench_script, parts, capsys, case, message):
    tmp, rule, ckpt, run = parts
    mod = bench_script("selection_record")
    runs = ["--run", f"a={run('A', dirty=case == 'dirty', seeds=case != 'no-seeds')}"]
    if case == "undated":
        rule.write_text("# a rule with no date\n")
    if case == "no-recipe":
        (tmp / "H.recipe.json").unlink()
    if case == "bad-pair":
        runs = ["--run", str(run("A"))]
    if case == "twice":
        runs += ["--run", f"a={run('B')}"]
    if case == "no-run":
        runs = []
    if case == "extra-clash":
        runs += ["--extra", f"runs={run('B')}"]
    out = tmp / "r.json"
    if case == "out-is-folder":
        out.mkdir()
    assert mod.main(["--what", "w", "--rule", str(rule), "--training", f"H={ckpt}", *runs,
                     "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("selection_record: ") and "\n" not in err
    assert not out.is_file()
