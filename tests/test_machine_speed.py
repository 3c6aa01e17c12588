"""benchmarks/machine_speed.py runs and reports every field; nothing here depends on its timings."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_machine_speed_prints_and_writes_every_field(tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "machine_speed.py"), "--steps", "1", "--batch", "8",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "batch", "steps", "step_wall_s", "step_cpu_s", "kind", "kind_description",
                           "kind_step_s", "demo_planned_steps", "demo_estimate_s", "load_average"}
    assert result["kind"] in ("faster", "slower") and result["step_wall_s"] > 0 and result["step_cpu_s"] > 0
    assert result["demo_estimate_s"] == round(result["demo_planned_steps"] * result["step_wall_s"])
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"cpu: {result['machine']['model']}, ") and "vector extensions:" in lines[0]
    assert [line.split(":")[0] for line in lines] == ["cpu", "demo pre-training step (batch 256)", "load", "kind",
                                                       "make demo"]
