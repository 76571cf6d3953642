"""The code sandbox stops and reports what generated code must not do."""

from __future__ import annotations

from pathlib import Path

from zeda_rl.eval.sandbox import check_program, run_code


def test_passing_and_failing_programs():
    assert run_code("assert sum(range(4)) == 6").passed
    failed = run_code("assert 1 == 2, 'wrong'")
    assert failed.status == "failed" and "wrong" in failed.detail


def test_infinite_loop_is_killed():
    result = run_code("while True:\n    pass", timeout_s=1.5)
    assert result.status == "timeout" and result.seconds < 5


def test_write_outside_its_folder_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_code(f"open({str(target)!r}, 'w').write('x')")
    assert result.status == "violation" and str(target) in result.detail
    assert not target.exists()
    # Writing inside its own scratch folder is fine.
    assert run_code(
        "open('scratch.txt', 'w').write('x'); assert open('scratch.txt').read() == 'x'"
    ).passed


def test_socket_and_subprocess_are_blocked():
    result = run_code("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert result.status == "violation" and "socket" in result.detail
    assert run_code("import subprocess\nsubprocess.run(['true'])").status == "violation"


def test_memory_limit():
    assert run_code("x = bytearray(3 * 1024 ** 3)", memory_mb=512).status == "memory"


def test_deleting_outside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    assert run_code(f"import os\nos.remove({str(victim)!r})").status == "violation"
    assert Path(victim).read_text() == "keep"


def test_humaneval_style_check():
    solution = "def add(a, b):\n    return a + b\n"
    tests = "def check(f):\n    assert f(2, 3) == 5\n\ncheck(add)\n"
    assert check_program(solution, tests).passed
    assert not check_program("def add(a, b):\n    return a - b\n", tests).passed
