"""Progress output: a live bar on a terminal, plain lines in a log file (issue 14: tqdm wrote
carriage-return updates into log files, a 100 KB line in the demo's log)."""

import io
import sys

from adept_dist.common.progress import Progress, duration
from tests.conftest import run_cmd


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_lines_with_the_time_left_and_no_carriage_returns():
    log = io.StringIO()
    bar = Progress(10, "train", stream=log, every_s=0.0)
    for step in range(10):
        bar.update(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert len(lines) == 10 and lines[0].startswith("[adept-dist] train 1/10 (10%) after ")
    assert "left, loss 1.0000" in lines[0] and lines[-1].endswith("(100%) after 0 s, loss 0.1000")
    assert bar.first_s is not None and bar.first_s >= 0


def test_a_log_file_gets_at_most_a_line_a_minute_and_one_at_the_end():
    log = io.StringIO()
    bar = Progress(500, "eval validation", stream=log, nested=True)  # the default pace: 60 s
    for _ in range(500):
        bar.update()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]
    assert "eval validation 500/500 (100%)" in log.getvalue()


def test_a_terminal_gets_the_live_bar_and_other_ranks_nothing():
    tty = Terminal()
    bar = Progress(3, "train", stream=tty, initial=1)
    bar.update(loss="0.5")
    bar.update()
    bar.close()
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    quiet = io.StringIO()
    other = Progress(3, "train", enabled=False, stream=quiet)
    other.update()
    other.close()
    assert quiet.getvalue() == "" and other.first_s is None


def test_durations():
    assert [duration(s) for s in (45, 450, 2.3 * 3600)] == ["45 s", "7.5 min", "2.3 h"]


def test_the_demo_log_is_line_based_and_estimates_the_run(tmp_path):
    """The built-in run with its output in a file (as under SLURM or nohup): no carriage return,
    the first step's estimate for the whole run is there."""
    out = tmp_path / "run"
    proc = run_cmd([sys.executable, "launch/train.py", "--output_dir", str(out), "--max_steps", "3",
                    "--max_eval_samples", "8"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "\r" not in text, [line for line in text.split("\n") if "\r" in line][:3]
    assert "step 1 took " in text and "the 2 steps left need about " in text
    assert "[adept-dist] train 3/3 (100%) after " in proc.stdout
    assert "deprecated" not in text.lower(), [line for line in text.splitlines() if "deprecated" in line.lower()]
    assert "built successfully" not in text  # DeepSpeed's per-launch op banner is dropped
