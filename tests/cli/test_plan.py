"""`glmserve plan`: the planner from the command line, with its arithmetic and clear flag errors."""

from __future__ import annotations

import pytest

from glmserve.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(["plan", *argv])
    return capsys.readouterr().out


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["plan", *argv])
    return str(exited.value.code) + capsys.readouterr().err


def test_plan_prints_the_smallest_layout(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--model", "glm-4.6", "--gpu", "H100", "--context", "131072")
    assert out.startswith("glm-4.6 (bf16), 131072 tokens x 8 sequences, MTP on: 32 x H100 per replica (4 node(s) of 8)")
    assert "per GPU: weights 25.50 + KV cache 12.48 + activations 1.21 + runtime 2.15 = 41.33 GB of 72.00 GB" in out


def test_precision_picks_the_sibling_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--model", "glm-4.6", "--precision", "fp8", "--gpu", "H200", "--context", "32768")
    assert out.startswith("glm-4.6-fp8 (fp8), 32768 tokens x 8 sequences, MTP on: 4 x H200 per replica")


def test_explain_shows_every_layout_tried(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--model", "glm-4.6-fp8", "--gpu", "H100", "--context", "32768", "--explain")
    assert "tensor 4 x data 1, expert 1 = 4 H100" in out
    assert "does NOT fit, short by" in out
    assert "=> 8 x H100 per replica (1 node(s))" in out


def test_a_fixed_layout_that_does_not_fit_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, "--model", "glm-4.6", "--gpu", "H100", "--context", "32768", "--tensor", "8")
    assert "does not fit tensor 8 x data 1, expert 1 = 8 H100 (105.03 GB needed per GPU, 72.00 GB usable)" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "glm-4.6", "--gpu", "H100", "--tensor", "3"], "tensor 3 and the 8 KV heads must divide"),
        (["--model", "glm-4.6", "--gpu", "H100", "--data", "2"], "--data and --expert need --tensor"),
        (["--model", "glm-4.6", "--gpu", "H100", "--context", "999999"], "exceeds glm-4.6's 202752 tokens"),
        (["--model", "glm-4.6-tiny", "--precision", "fp8", "--gpu", "H100"], "has no fp8 weights in the catalogue"),
        (["--model", "glm-4.6", "--gpu", "A100"], "argument --gpu: invalid choice: 'A100'"),
        (["--model", "glm-4.6", "--gpu", "H100", "--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
        (["--model", "glm-4.6", "--gpu", "H100", "--tensor", "8", "--data", "2", "--expert", "8"], "expert must be 1"),
    ],
    ids=["tensor", "data-alone", "context", "precision", "gpu", "concurrency", "expert"],
)
def test_bad_flags_say_what_to_fix(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert message in fails(capsys, *argv)
