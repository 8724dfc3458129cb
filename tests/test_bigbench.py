"""BIG-bench JSON tasks (--task bigbench:NAME) on small task.json files in BIG-bench's own layout:
where they are found, how examples become rows, ties, subtasks, splits, and bad input. The real
tasks from the PyPI sdist run in test_real.py."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from adept_dist.data.bigbench import load, pool_splits, read_local, rows_from_hub, rows_from_specs, source_text
from adept_dist.data.examples import DataError
from adept_dist.data.splits import attempt_permutation, make_splits, prepare_main
from adept_dist.data.tasks import get_task

MC = {
    "name": "toy",
    "task_prefix": "Is it true?",
    "example_input_prefix": "\nStatement: ",
    "example_output_prefix": "\nAnswer: ",
    "append_choices_to_input": False,
    "examples": [
        {"input": f"claim {i}", "target_scores": {"yes": int(i % 3 == 0), "no": int(i % 3 != 0)}} for i in range(40)
    ]
    + [{"input": "tied", "target_scores": {"yes": 1, "no": 1}}],
}


def write_task(root: Path, rel: str, spec: dict) -> Path:
    path = root / rel / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def test_examples_become_rows_the_way_bigbench_prompts(tmp_path):
    write_task(tmp_path, "bigbench/benchmark_tasks/toy", MC)  # a checkout's layout
    task, raw, info = load(get_task("bigbench:toy"), str(tmp_path))
    assert info["dropped_tied"] == 1 and len(raw["all"]) == 40  # the tied example is dropped and counted
    row = raw["all"][0]
    assert row == {"input": "Is it true?\nStatement: claim 0\nAnswer:", "targets": ["yes"]}
    assert task.labels == ("yes", "no") and task.metrics == ("accuracy",) and not task.multi_answer
    # BIG-bench's defaults where a task sets no prefixes, the choices appended (its default)
    text = source_text({}, "2+2?", ["3", "4"])
    assert text == "Q: 2+2?\n  choice: 3\n  choice: 4\nA:"


def test_free_text_tasks_score_exact_match_against_every_target():
    spec = {"examples": [{"input": "capital of France", "target": ["Paris", "paris"]}, {"input": "1+1", "target": "2"}]}
    rows, info = rows_from_specs("bigbench:qa", [(".", spec)])
    assert rows[0]["targets"] == ["Paris", "paris"] and rows[1]["targets"] == ["2"] and rows[0]["options"] is None


def test_found_in_a_task_folder_a_benchmark_tasks_folder_and_the_sdist_tarball(tmp_path):
    write_task(tmp_path / "checkout", "bigbench/benchmark_tasks/toy", MC)
    expected = rows_from_specs("bigbench:toy", read_local(str(tmp_path / "checkout"), "toy", None))
    task_folder = tmp_path / "checkout" / "bigbench" / "benchmark_tasks" / "toy"
    assert rows_from_specs("bigbench:toy", read_local(str(task_folder), "toy", None)) == expected
    assert rows_from_specs("bigbench:toy", read_local(str(task_folder.parent), "toy", None)) == expected
    tarball = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:  # the sdist's layout
        data = json.dumps(MC).encode()
        member = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/toy/task.json")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    assert rows_from_specs("bigbench:toy", read_local(str(tarball), "toy", None)) == expected
    with pytest.raises(DataError, match=r"holds no benchmark_tasks/other/task.json: check the task's name"):
        read_local(str(tarball), "other", None)
    with pytest.raises(DataError, match=r"no other/task.json under --data_dir"):
        read_local(str(tmp_path / "checkout"), "other", None)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(tarball.read_bytes()[:60])
    with pytest.raises(DataError, match="is not a readable tar archive"):
        read_local(str(broken), "toy", None)


def test_a_parent_task_is_the_union_of_its_subtasks(tmp_path):
    root = tmp_path / "benchmark_tasks"
    write_task(root, "deduce", {"name": "deduce", "examples": []})  # a parent holds no examples of its own
    a = {"example_input_prefix": "A: ", "examples": [{"input": "x", "target_scores": {"p": 1, "q": 0}}]}
    b = {"example_input_prefix": "B: ", "examples": [{"input": "y", "target_scores": {"r": 0, "s": 1}}]}
    write_task(root, "deduce/three", a)
    write_task(root, "deduce/five", b)
    rows, _ = rows_from_specs("bigbench:deduce", read_local(str(tmp_path), "deduce", None))
    # each subtask's own prefix (sorted by subtask name); options differ, so no task-wide label words
    assert [r["input"] for r in rows] == ["B: y\n  choice: r\n  choice: s\nA:", "A: x\n  choice: p\n  choice: q\nA:"]
    only, _ = rows_from_specs("bigbench:deduce/three", read_local(str(tmp_path), "deduce", "three"))
    assert [r["targets"] for r in only] == [["p"]]
    with pytest.raises(DataError, match="no such subtask in .*; it has five, three"):
        read_local(str(tmp_path), "deduce", "seven")


def test_malformed_task_files_name_the_problem(tmp_path):
    write_task(tmp_path, "bad", {"examples": [{"input": "x"}]})
    with pytest.raises(DataError, match=r"example 0 has neither target_scores nor target"):
        rows_from_specs("bigbench:bad", read_local(str(tmp_path), "bad", None))
    write_task(tmp_path, "prog", {"name": "prog"})
    with pytest.raises(DataError, match="has no examples"):
        read_local(str(tmp_path), "prog", None)
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "task.json").write_text("{oops")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_local(str(tmp_path), "json", None)
    with pytest.raises(ValueError, match="a BIG-bench task is named bigbench:NAME"):
        get_task("bigbench:../etc")


def test_hub_rows_with_ties_and_free_text():
    ds = [
        {
            "inputs": " Q: a? ",
            "targets": ["yes"],
            "multiple_choice_targets": ["yes", "no"],
            "multiple_choice_scores": [1, 0],
        },
        {
            "inputs": "Q: b?",
            "targets": ["no"],
            "multiple_choice_targets": ["yes", "no"],
            "multiple_choice_scores": [1, 1],
        },
        {"inputs": "Q: c?", "targets": ["x", "y"], "multiple_choice_targets": [], "multiple_choice_scores": []},
    ]
    rows, info = rows_from_hub(ds)
    assert info["dropped_tied"] == 1
    assert rows == [{"input": "Q: a?", "targets": ["yes"], "options": ["yes", "no"]},
                    {"input": "Q: c?", "targets": ["x", "y"], "options": None}]  # fmt: skip


def test_pool_splits_hold_out_a_fifth_halved_and_follow_the_split_seed():
    parts = pool_splits(1000, 42, attempt_permutation)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [800, 100, 100]
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(1000))  # disjoint, complete
    assert pool_splits(1000, 42, attempt_permutation) == parts
    assert pool_splits(1000, 43, attempt_permutation)["test"] != parts["test"]
    assert [len(v) for v in pool_splits(3, 0, attempt_permutation).values()] == [1, 1, 1]
    with pytest.raises(DataError, match="at least 3 usable examples"):
        pool_splits(2, 0, attempt_permutation)


def test_through_the_task_pipeline_with_k_shot(tmp_path, tokenizer):
    write_task(tmp_path, "toy", MC)
    task = get_task("bigbench:toy")
    refined, raw, _ = load(task, str(tmp_path))
    splits = make_splits(refined, raw, 42, None)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 32, "validation": 4, "test": 4}
    opts = {"data_dir": str(tmp_path), "max_length": 64, "separator": " Label : ", "split_seed": 42,
            "validation_size": None, "k_shot": 2, "seed": 1}  # fmt: skip
    data = prepare_main(task, tokenizer, opts, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert data.name == "bigbench:toy" and data.labels == ("yes", "no")
    assert len(data.train) == 4 and data.info["dropped_tied"] == 1  # 2 per class
    assert [r["target"] for r in data.evals["test"].refs] == [raw["all"][i]["targets"][0] for i in splits["test"][1]]
    cached = list((tmp_path / "cache").glob("bigbench-toy-*.safetensors"))
    assert len(cached) == 1  # the content keys the cache: a second build reads it
    again = prepare_main(task, tokenizer, opts, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert [e.input_ids for e in again.train] == [e.input_ids for e in data.train]
    assert list((tmp_path / "cache").glob("*.safetensors")) == cached


def test_options_are_compared_as_generated_text_and_in_any_order(tmp_path):
    spec = {"append_choices_to_input": False, "examples": [
        {"input": "a", "target_scores": {"yes\n": 1, "no\n": 0}},  # stripped: what generation can produce
        {"input": "b", "target_scores": {"no": 1, "yes": 0}},  # the same options in another order
        {"input": "c", "target_scores": {"yes": 1, " yes ": 0, "no": 0}},  # two options read alike: a tie
    ]}  # fmt: skip
    rows, info = rows_from_specs("bigbench:t", [(".", spec)])
    assert [r["targets"] for r in rows] == [["yes"], ["no"]] and info["dropped_tied"] == 1
    write_task(tmp_path, "t", spec)
    spec2 = {**spec, "examples": spec["examples"] * 2}
    write_task(tmp_path, "t", spec2)
    task, _, _ = load(get_task("bigbench:t"), str(tmp_path))
    assert task.labels == ("yes", "no")  # one label set although the order varies


def test_another_tasks_folder_and_a_hub_subtask_are_refused(tmp_path):
    folder = write_task(tmp_path, "navigate", MC).parent
    with pytest.raises(DataError, match=r"no strategyqa/task.json under --data_dir .* must be named strategyqa"):
        read_local(str(folder), "strategyqa", None)
    with pytest.raises(DataError, match="one subtask is read from a BIG-bench checkout or the sdist tarball"):
        load(get_task("bigbench:logical_deduction/three_objects"), None)
