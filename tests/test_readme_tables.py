"""The README's demo tables are exactly what examples/render_readme_tables.py renders from the committed metrics."""


import pytest

from demo_helpers import EXAMPLES, load_script

SCRIPT = EXAMPLES / "render_readme_tables.py"


@pytest.fixture(scope="module")
def renderer():
    return load_script(SCRIPT)


def test_readme_tables_are_rendered_from_the_committed_metrics(renderer):
    text = renderer.README.read_text(encoding="utf-8")
    tables = renderer.render_tables()
    assert set(tables) == {"fib25", "synthetic"}
    for name, body in tables.items():
        assert renderer.block(name, body) in text, f"README.md's {name} table is stale: run {SCRIPT.name}"
    assert renderer.render_readme(text, tables) == text


def test_committed_metrics_come_from_the_documented_commands(renderer):
    from affinity_demo import report

    for name in renderer.TABLES:
        metrics = report.load(renderer.RESULTS / name / "metrics.json")
        assert metrics["data"] == name
        assert f"--out-dir examples/results/{name}" in metrics["command"]
        assert metrics["settings"]["seeds"] == [0, 1, 2]
        assert list(metrics["models"]) == ["bce_only", "bce_malis_dice"]


def test_a_changed_number_is_caught(renderer):
    text = renderer.README.read_text(encoding="utf-8")
    tables = renderer.render_tables()
    tables["fib25"] = tables["fib25"].replace("|", "| x", 1)
    assert renderer.render_readme(text, tables) != text
