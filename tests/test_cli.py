"""Tests of the `dccl-hf` command: compress → evaluate → export → import, resume, push, errors and exit codes."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_text import WORDS, bert_config, word_sentences, word_tokenizer

import dccl_hf
import dccl_hf.learning
from dccl_hf.cli import main
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.readers import load_vocab, read_embeddings

ROWS, DIM = 200, 8
FAST = ["-M", "4", "-K", "8", "--max-iterations", "2", "--device", "cpu"]


@pytest.fixture
def glove(tmp_path: Path) -> Path:
    """A small GloVe-style text file: ROWS words with DIM values each."""
    matrix = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    path = tmp_path / "vectors.txt"
    path.write_text(
        "".join(
            f"word{row} " + " ".join(f"{value:.6f}" for value in matrix[row]) + "\n" for row in range(ROWS)
        ),
        encoding="utf-8",
    )
    return path


def distance(output: str) -> float:
    match = re.search(r"mean euclidean distance\s+([0-9.]+)", output)
    assert match, output
    return float(match.group(1))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_round_trip(tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "artifact"
    code, stdout, _ = run(["compress", str(glove), *FAST, "-o", str(out)], capsys)
    assert code == 0
    assert f"{ROWS} rows x {DIM} dims, M=4, K=8" in stdout
    compressed_distance = distance(stdout)
    assert 0 < compressed_distance < 2.5
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "vocab.txt"]
    assert load_vocab(out) == [f"word{row}" for row in range(ROWS)]

    code, stdout, _ = run(["evaluate", str(out), "--original", str(glove)], capsys)
    assert code == 0
    assert distance(stdout) == pytest.approx(compressed_distance, abs=1e-6)
    ratio = next(line for line in stdout.splitlines() if "compression ratio" in line)
    code, stdout, _ = run(["evaluate", str(out), "--original", str(glove), "--limit", "50"], capsys)
    assert code == 0
    assert "50 × 8" in stdout
    assert ratio in stdout.splitlines()  # the artifact's ratio, not that of 50 rows with the whole codebook

    prefix = tmp_path / "reference" / "glove"
    code, stdout, _ = run(["export", str(out), "--prefix", str(prefix)], capsys)
    assert code == 0
    assert "with words" in stdout
    assert (tmp_path / "reference" / "glove.codes").read_text().startswith("word0\t")
    assert (tmp_path / "reference" / "glove.codebook.npy").is_file()

    imported = tmp_path / "imported"
    code, stdout, _ = run(["import", str(prefix), "-o", str(imported)], capsys)
    assert code == 0
    assert "with vocab.txt" in stdout
    original = CompressedEmbedding.from_pretrained(out)
    again = CompressedEmbedding.from_pretrained(imported)
    assert torch.equal(original.codes, again.codes)
    assert torch.equal(original.codebook, again.codebook)
    assert load_vocab(imported) == load_vocab(out)


def test_export_without_words(tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "artifact"
    assert main(["compress", str(glove), *FAST, "-o", str(out), "--limit", "40"]) == 0
    assert len(load_vocab(out) or []) == 40
    code, stdout, _ = run(["export", str(out), "--prefix", str(tmp_path / "p"), "--no-words"], capsys)
    assert code == 0
    assert "without words" in stdout
    assert (tmp_path / "p.codes").read_text().split("\n")[0].count(" ") == 3


def test_interrupted_run_needs_resume_and_continues(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_compress = dccl_hf.learning.compress

    def interrupted(*args: Any, **kwargs: Any) -> CompressedEmbedding:
        real_compress(*args, **{**kwargs, "max_iterations": 1})  # writes a checkpoint after round 1
        raise KeyboardInterrupt

    out = tmp_path / "artifact"
    command = ["compress", str(glove), *FAST, "-o", str(out)]
    monkeypatch.setattr(dccl_hf.learning, "compress", interrupted)
    code, _, stderr = run(command, capsys)
    assert code == 130
    assert "rerun the same command with --resume" in stderr
    assert (out / ".checkpoint" / "checkpoint.pt").is_file()
    monkeypatch.setattr(dccl_hf.learning, "compress", real_compress)

    code, _, stderr = run(command, capsys)
    assert code == 2
    assert "holds an unfinished run; pass --resume" in stderr

    code, _, stderr = run([*command[:-4], "-M", "2", "-o", str(out), "--resume"], capsys)
    assert code == 2
    assert "num_codebooks: 4 -> 2" in stderr

    code, stdout, _ = run([*command, "--resume"], capsys)
    assert code == 0
    assert "Resuming the run" in stdout
    assert not (out / ".checkpoint").exists()
    resumed = distance(stdout)
    fresh = tmp_path / "fresh"
    code, stdout, _ = run(["compress", str(glove), *FAST, "-o", str(fresh)], capsys)
    assert code == 0
    assert distance(stdout) == pytest.approx(resumed, rel=1e-5)


def test_existing_artifact_needs_overwrite(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    assert main(["compress", str(glove), *FAST, "-o", str(out), "--limit", "30"]) == 0
    code, _, stderr = run(["compress", str(glove), *FAST, "-o", str(out)], capsys)
    assert code == 2
    assert "already holds an artifact; pass --overwrite" in stderr
    assert main(["compress", str(glove), *FAST, "-o", str(out), "--overwrite"]) == 0
    assert CompressedEmbedding.from_pretrained(out).num_embeddings == ROWS


def test_failed_start_leaves_no_checkpoint(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "artifact"
    code, _, stderr = run(["compress", str(glove), "-K", "3", "-o", str(out)], capsys)
    assert code == 2
    assert stderr.startswith("dccl-hf compress: error: codebook_size must be a power of two")
    assert stderr.count("\n") == 1
    assert not out.exists()

    def failing(*args: Any, **kwargs: Any) -> CompressedEmbedding:
        raise ValueError("bad")

    monkeypatch.setattr(dccl_hf.learning, "compress", failing)
    code, _, stderr = run(["compress", str(glove), "-o", str(out)], capsys)
    assert code == 1
    assert stderr.endswith("dccl-hf compress: error: bad\n")
    assert not (out / ".checkpoint").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "missing.txt", "-o", "out"], "missing.txt does not exist"),
        (["evaluate", "nowhere", "--original", "x.npy"], "nowhere is not an artifact directory"),
        (["export", "nowhere", "-o", "p"], "nowhere is not an artifact directory"),
        (["import", "nothing", "-o", "out"], "nothing.codebook.npy: codebook file not found"),
        (["push", "nowhere", "user/repo"], "nowhere is not an artifact directory"),
    ],
)
def test_runtime_errors_exit_1_with_one_line(
    tmp_path: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(args, capsys)
    assert code == 1
    assert message in stderr
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr


def test_evaluate_against_the_wrong_original(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    assert main(["compress", str(glove), *FAST, "-o", str(out)]) == 0
    other = tmp_path / "other.npy"
    np.save(other, np.ones((ROWS, DIM + 1), np.float32))
    code, _, stderr = run(["evaluate", str(out), "--original", str(other)], capsys)
    assert code == 1
    assert f"gives {ROWS} rows x {DIM + 1} dims but the artifact needs {ROWS} x {DIM}" in stderr
    renamed = tmp_path / "renamed.txt"
    renamed.write_text(glove.read_text().replace("word3 ", "other3 "))
    code, _, stderr = run(["evaluate", str(out), "--original", str(renamed)], capsys)
    assert code == 1
    assert "row 3: the artifact's vocab.txt has 'word3'" in stderr


def test_push_uploads_the_directory(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: dict[str, Any] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, **kwargs: Any) -> huggingface_hub.RepoUrl:
            calls["create"] = (repo_id, kwargs)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kwargs: Any) -> Any:
            calls["upload"] = kwargs
            return type("Commit", (), {"commit_url": "https://huggingface.co/u/r/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "artifact"
    assert main(["compress", str(glove), *FAST, "-o", str(out)]) == 0
    code, stdout, _ = run(["push", str(out), "u/r", "--private", "--token", "secret"], capsys)
    assert code == 0
    assert "commit/1" in stdout
    assert calls["token"] == "secret"
    assert calls["create"] == ("u/r", {"private": True, "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(out)
    assert calls["upload"]["repo_id"] == "u/r"
    assert ".checkpoint/*" in calls["upload"]["ignore_patterns"]


@pytest.mark.parametrize("command", ["compress", "evaluate", "export", "import", "push"])
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: dccl-hf {command}" in text
    assert f"examples:\n  dccl-hf {command}" in text


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "compress" in capsys.readouterr().err


def test_entry_points_in_a_subprocess(tmp_path: Path, glove: Path) -> None:
    out = tmp_path / "artifact"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dccl_hf", "compress", str(glove), *FAST, "-o", str(out)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "mean euclidean distance" in result.stdout
    script = Path(sys.executable).parent / "dccl-hf"
    if not script.exists():
        pytest.skip("the dccl-hf console script is not installed next to this Python")
    result = subprocess.run(
        [str(script), "evaluate", str(out), "--original", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("dccl-hf evaluate: error: ")
    assert "missing.txt does not exist" in result.stderr


def test_calibration_file_calibrates_like_the_python_api(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--calibration gives compress the word counts as `calibration=` (the squared objective), not weights."""
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("word0 word1 word1\n", encoding="utf-8")
    calls: list[dict[str, Any]] = []
    compress = dccl_hf.learning.compress

    def recording_compress(*args: Any, **kwargs: Any) -> CompressedEmbedding:
        calls.append(kwargs)
        return compress(*args, **kwargs)

    monkeypatch.setattr(dccl_hf.learning, "compress", recording_compress)
    args = ["compress", str(glove), *FAST, "-o", str(tmp_path / "out"), "--calibration", str(calibration)]
    assert run(args, capsys)[0] == 0
    (kwargs,) = calls
    assert "weights" not in kwargs
    assert kwargs["calibration"][:3].tolist() == [1.0, 2.0, 0.0]


def test_calibration_file_weights_the_words_it_mentions(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("word0 word1 word2 word3 word4 word5 word6 word7\n" * 50)
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    assert run(["compress", str(glove), *FAST, "-o", str(plain)], capsys)[0] == 0
    assert (
        run(["compress", str(glove), *FAST, "-o", str(weighted), "--calibration", str(calibration)], capsys)[
            0
        ]
        == 0
    )
    original = torch.from_numpy(read_embeddings(str(glove)).matrix[:8])

    def error(directory: Path) -> float:
        return (
            (CompressedEmbedding.from_pretrained(directory)(torch.arange(8)) - original)
            .norm(dim=1)
            .mean()
            .item()
        )

    assert error(weighted) < 0.5 * error(plain)
    code, _, stderr = run(
        ["compress", str(glove), *FAST, "-o", str(tmp_path / "x"), "--calibration", "missing.txt"], capsys
    )
    assert code == 1
    assert "missing.txt" in stderr


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    """A tiny BERT model directory with a word-level tokenizer over WORDS."""
    from transformers import BertModel

    directory = tmp_path / "bert"
    directory.mkdir()
    tokenizer = word_tokenizer(directory, WORDS)
    torch.manual_seed(0)
    BertModel(bert_config(len(tokenizer))).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


MODEL_FAST = ["-M", "2", "-K", "4", "--max-iterations", "2", "--device", "cpu"]


@pytest.mark.parametrize(
    ("flags", "sensitivity", "distilled"),
    [([], True, True), (["--no-distill"], True, False), (["--no-sensitivity"], False, True)],
)
def test_calibration_with_a_model_uses_its_sensitivity_and_distills(
    tmp_path: Path,
    bert: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    sensitivity: bool,
    distilled: bool,
) -> None:
    import dccl_hf.integration.model as integration

    calls: dict[str, list[str]] = {}

    def spy(name: str, function: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] = args[2] if name == "sensitivity" else args[3]  # the calibration texts
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        integration, "embedding_sensitivity", spy("sensitivity", integration.embedding_sensitivity)
    )
    monkeypatch.setattr(integration, "distill_codebook", spy("distill", integration.distill_codebook))
    texts = word_sentences(WORDS, 40, seed=0)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(texts) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    args = ["compress", str(bert), *MODEL_FAST, "-o", str(output), "--calibration", str(calibration)]
    code, stdout, stderr = run([*args, *flags, "--distill-budget", "2"], capsys)
    assert code == 0, stderr
    assert "calibrated with the model" in stdout
    assert ("sensitivity" in calls) == sensitivity
    assert ("distill" in calls) == distilled
    assert all(value == texts for value in calls.values())
    module = CompressedEmbedding.from_pretrained(output)
    assert (module.num_embeddings, module.num_codebooks, module.codebook_size) == (len(WORDS) + 5, 2, 4)
    assert module.padding_idx == 0  # the model's padding token
    assert load_vocab(output)[5:] == WORDS
    assert not (output / ".checkpoint").exists()


def test_calibration_with_a_model_refuses_limit(
    tmp_path: Path, bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration = tmp_path / "calibration.txt"
    # Words past the kept rows too: their counts are dropped, not an error.
    calibration.write_text(" ".join(WORDS) + "\n", encoding="utf-8")
    args = ["compress", str(bert), *MODEL_FAST, "--calibration", str(calibration), "--limit", "12"]
    code, _, stderr = run([*args, "-o", str(tmp_path / "a")], capsys)
    assert code == 2
    assert "--no-sensitivity --no-distill" in stderr
    assert not (tmp_path / "a").exists()  # nothing left behind
    code, _, stderr = run([*args, "-o", str(tmp_path / "b"), "--no-sensitivity", "--no-distill"], capsys)
    assert code == 0, stderr
    assert CompressedEmbedding.from_pretrained(tmp_path / "b").num_embeddings == 12


def test_invalid_input_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    complete = gzip.compress(b"".join(b"w%d 0.1 0.2 0.3\n" % row for row in range(2000)))
    (tmp_path / "cut.txt.gz").write_bytes(complete[: len(complete) // 2])
    (tmp_path / "plain.txt.gz").write_bytes(b"w 0.1 0.2\n")
    for name, message in [
        ("empty.npy", "is not a readable .npy array"),
        ("cut.txt.gz", "is not a readable gzip file"),
        ("plain.txt.gz", "is not a readable gzip file"),
    ]:
        code, _, stderr = run(["compress", str(tmp_path / name), *FAST, "-o", str(tmp_path / "out")], capsys)
        assert code == 1
        assert f"{name} {message}" in stderr
        assert not (tmp_path / "out").exists()


def test_arguments_are_checked_before_the_input_is_read(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "afile").write_text("")
    for extra, message in [
        (["--device", "cuda"], "CUDA is not available"),
        (["--time-budget", "0"], "time_budget must be a positive number"),
        (["--max-iterations", "-1"], "max_iterations must be a non-negative integer"),
        (["-o", str(tmp_path / "afile" / "sub")], "afile exists and is not a directory"),
    ]:
        args = ["compress", str(tmp_path / "missing.txt"), *FAST, "-o", str(tmp_path / "out"), *extra]
        code, _, stderr = run(args, capsys)
        assert code == 2
        assert message in stderr
        assert "missing.txt" not in stderr  # refused before the (missing) input is opened
        assert not (tmp_path / "out").exists()
    code, _, stderr = run(
        ["compress", str(glove), *FAST, "-o", str(tmp_path / "out"), "--padding-idx", "999"], capsys
    )
    assert code == 2
    assert "--padding-idx 999 is not a row" in stderr
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_directory_prefix_and_existing_files(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    assert run(["compress", str(glove), *FAST, "-o", str(out)], capsys)[0] == 0
    for prefix in (f"{tmp_path}/", str(tmp_path)):
        code, _, stderr = run(["export", str(out), "-o", prefix], capsys)
        assert code == 2
        assert "must name the files, not a directory" in stderr
    prefix = str(tmp_path / "ref")
    assert run(["export", str(out), "-o", prefix], capsys)[0] == 0
    code, _, stderr = run(["export", str(out), "-o", prefix], capsys)
    assert code == 2
    assert "pass --overwrite" in stderr
    assert run(["export", str(out), "-o", prefix, "--overwrite"], capsys)[0] == 0


def test_push_without_a_network_is_a_clear_error(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    out = tmp_path / "artifact"
    assert run(["compress", str(glove), *FAST, "-o", str(out)], capsys)[0] == 0
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, _, stderr = run(["push", str(out), "someone/table", "--token", "hf_fake"], capsys)
    assert code == 1
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in stderr


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dccl-hf {dccl_hf.__version__}"


def test_an_unknown_option_prints_the_usage_of_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "artifact", "-o", "p", "--bogus"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: dccl-hf export ")
    assert "dccl-hf export: error: unrecognized arguments: --bogus" in stderr


def test_quiet_prints_results_only(tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(["compress", str(glove), *FAST, "-o", str(tmp_path / "a"), "--quiet"], capsys)
    assert code == 0
    assert stderr == ""  # no progress bars, no logs
    assert "Compressing" not in stdout
    assert distance(stdout) > 0


def test_export_takes_o_and_prefix_is_a_deprecated_alias(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "artifact"
    assert run(["compress", str(glove), *FAST, "-o", str(out)], capsys)[0] == 0
    assert run(["export", str(out), "-o", str(tmp_path / "new")], capsys)[0] == 0
    assert (tmp_path / "new.codes").is_file()
    with caplog.at_level(logging.WARNING, logger="dccl_hf"):
        assert run(["export", str(out), "--prefix", str(tmp_path / "old")], capsys)[0] == 0
    assert "--prefix is deprecated" in caplog.text
    assert (tmp_path / "old.codes").read_bytes() == (tmp_path / "new.codes").read_bytes()


def test_debug_prints_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(["evaluate", str(tmp_path), "--original", "x.npy", "--debug"], capsys)
    assert code == 1
    assert "Traceback" in stderr
    assert stderr.endswith(
        f"dccl-hf evaluate: error: {tmp_path} is not an artifact directory (no config.json); "
        "see `dccl-hf compress`.\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"[1, 2]", "is damaged (not a JSON object of settings)"), (b"\xff\xfe garbage", "is damaged")],
)
def test_a_damaged_run_json_is_an_error_naming_it(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    out = tmp_path / "artifact"
    (out / ".checkpoint").mkdir(parents=True)
    (out / ".checkpoint" / "run.json").write_bytes(content)
    code, _, stderr = run(["compress", str(glove), *FAST, "-o", str(out), "--resume"], capsys)
    assert code == 1
    assert f"{out / '.checkpoint' / 'run.json'} {message}" in stderr
    assert stderr.count("\n") == 1


def test_a_calibration_file_that_is_not_utf8_is_named(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration = tmp_path / "latin1.txt"
    calibration.write_bytes("word1 word2\ncaf\xe9\n".encode("latin-1"))
    code, _, stderr = run(
        ["compress", str(glove), *FAST, "-o", str(tmp_path / "a"), "--calibration", str(calibration)], capsys
    )
    assert code == 1
    assert f"--calibration {calibration}, line 2: not valid UTF-8" in stderr


def test_an_artifact_config_nested_too_deeply_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "art" / "model.safetensors").write_bytes(b"")
    code, _, stderr = run(["export", str(tmp_path / "art"), "-o", str(tmp_path / "p")], capsys)
    assert code == 1
    assert f"{tmp_path / 'art' / 'config.json'}: not valid JSON" in stderr
    assert stderr.count("\n") == 1


def test_an_unavailable_device_is_a_usage_error(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run(["compress", str(glove), "-o", str(tmp_path / "a"), "--device", "mps"], capsys)
    assert code == 2
    assert "device 'mps' is not available" in stderr
    assert stderr.count("\n") == 1


def test_two_runs_into_one_output_directory_do_not_both_proceed(
    tmp_path: Path, glove: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dccl_hf.learning.checkpoint import RunLock

    out = tmp_path / "artifact"
    with RunLock(tmp_path / ".artifact.dccl-hf.lock"):  # what a running `dccl-hf compress -o artifact` holds
        for command in (["compress", str(glove), *FAST], ["import", str(tmp_path / "ref")]):
            code, _, stderr = run([*command, "-o", str(out)], capsys)
            assert code == 1
            assert f"-o {out} is in use by another run (process {os.getpid()}" in stderr
    assert not out.exists()
    assert run(["compress", str(glove), *FAST, "-o", str(out)], capsys)[0] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifact", "vectors.txt"]


def test_a_model_with_custom_code_needs_trust_remote_code(
    bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    code, _, stderr = run(["compress", str(bert), *MODEL_FAST, "-o", str(tmp_path / "a")], capsys)
    assert code == 1
    assert "names custom code (auto_map)" in stderr
    assert "--trust-remote-code" in stderr


def test_the_model_and_tokenizer_for_calibration_never_run_remote_code(
    tmp_path: Path, bert: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    calls: list[tuple[str, dict[str, object]]] = []
    real_tokenizer = transformers.AutoTokenizer.from_pretrained.__func__

    def tokenizer(cls: type, *args: object, **kwargs: object) -> object:
        calls.append(("tokenizer", kwargs))
        return real_tokenizer(cls, *args, **kwargs)

    def model(cls: type, *args: object, **kwargs: object) -> object:
        calls.append(("model", kwargs))
        raise OSError("stop here")  # what the call was asked is all this test needs

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(tokenizer))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", classmethod(model))
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(" ".join(WORDS) + "\n", encoding="utf-8")
    code, _, stderr = run(
        ["compress", str(bert), *MODEL_FAST, "-o", str(tmp_path / "a"), "--calibration", str(calibration)],
        capsys,
    )
    assert code == 1
    assert "stop here" in stderr
    assert ("model", {"use_safetensors": True, "trust_remote_code": False}) in calls
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in calls), calls


def test_an_unreadable_model_checkpoint_is_named(
    tmp_path: Path, bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (bert / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, _, stderr = run(["compress", str(bert), *MODEL_FAST, "-o", str(tmp_path / "a")], capsys)
    assert code == 1
    assert f"{bert / 'model.safetensors'} is not a readable safetensors file" in stderr
    assert stderr.count("\n") == 1
