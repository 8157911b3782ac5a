"""The ChatGOT suite's table: rows from the row files, the missing rows marked not run, the
hand-written text around the generated part kept, and the two plots."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.chatgot.table import BEGIN, END, write_table


def row(name: str, device: str, params: int, test_bpc: float) -> dict[str, object]:
    tokenizer, size = name.split("_")
    return {
        "row": name, "tokenizer": tokenizer, "size": size, "device": device,
        "device_name": "NVIDIA H200" if device == "gpu" else "x86_64, 2 cores", "torch": "2.13.0",
        "date": "2026-11-30", "params": params, "steps": 2000, "best_step": 1750,
        "tokens_seen": 1_536_000, "best_val_loss": 1.3616, "val_bpc": 1.964,
        "test_bpc": test_bpc, "test_loss": 1.43, "status": "finished", "train_s": 100.0,
        "wall_s": 150.0,
        "recipe": {"peak_lr": 5e-4, "dropout": 0.1, "weight_decay": 0.1, "batch_size": 12,
                   "context": 64, "precision": "fp32"},
        "command": f"python -m craft.main --gin_file=experiments/chatgot/{name}.gin",
        "sweep": None, "val_curve": [[250, 2.0], [500, 1.8]],
        "samples": ["TYRION_LANNISTER: a sample", "TYRION_LANNISTER: another"], "smoke": False,
    }  # fmt: skip


def test_the_table_lists_each_row_and_keeps_the_text_around_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for name, device, params, bpc in [("char_10m", "gpu", 10_701_312, 2.075),
                                      ("char_1m", "cpu", 811_264, 2.101)]:  # fmt: skip
        (results / f"{name}-{device}.json").write_text(json.dumps(row(name, device, params, bpc)))
    (tmp_path / "RESULTS.md").write_text(f"# Intro\n\n{BEGIN}\nold table\n{END}\n\n## Notes\n")

    written = write_table(results)

    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Intro\n") and text.endswith("## Notes\n")
    assert "old table" not in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    # CPU rows first, small to large; then the rows no device ran.
    assert table[1].startswith("| char_1m | x86_64, 2 cores | 0.81M | 1.54M | 1750 / 2000 |")
    assert "| 1.7 min |" in table[1]  # the training loop's time
    assert (
        "**2.101**" in table[1]
        and "5e-04" not in table[1]
        and "0.0005, 0.1, 0.1, 12 x 64" in table[1]
    )
    assert table[2].startswith("| char_10m | NVIDIA H200 | 10.70M |") and "**2.075**" in table[2]
    assert "| subword_100m | not run |" in text and "| char_1m | not run |" not in text
    assert "TYRION_LANNISTER: another" in text
    assert [p.name for p in written] == ["RESULTS.md", "bpc_vs_params.png", "val_curves.png"]
    for png in written[1:]:
        assert png.read_bytes().startswith(b"\x89PNG")
