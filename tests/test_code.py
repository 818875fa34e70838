"""A variant's code and a fix's diff: what the notebooks print instead of hiding a mechanism in a call."""

import html
import re

import pytest

import labkit


def test_a_variant_shows_the_helper_it_calls():
    code = labkit.variant_code("tokenizer-deadlock", "broken")
    assert code.text.startswith("@deadlock.variant(\"broken\"")
    assert "def _serve(" in code.text and "encode_batch" not in code.text.split("def _serve(")[0]


def test_a_fix_diff_holds_its_change_and_not_the_helpers_both_sides_share():
    diff = labkit.variant_diff("thread-race", "lock").text
    changed = [line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert "+    one_at_a_time = threading.Lock()" in changed
    assert not any("def _threads" in line for line in changed)  # shared by both: cancels out
    assert diff.startswith("--- broken\n+++ lock")


def test_a_diff_shows_an_environment_that_differs():
    diff = labkit.variant_diff("tokenizer-deadlock", "no-parallelism").text
    assert '+@deadlock.variant("no-parallelism", env={"TOKENIZERS_PARALLELISM": "false"}, needs_fork=True)' in diff


def test_code_renders_as_a_block_in_a_notebook():
    assert labkit.variant_diff("oom-hang", "budget-check")._repr_markdown_().count("```") == 2
    assert "class LazySharedRotary" in labkit.show_code(__import__("labkit.llm.qwen1_rotary", fromlist=["x"]).LazySharedRotary).text


def test_code_keeps_each_line_whole_in_jupyterlab():
    """JupyterLab's output area breaks a ``<pre>`` anywhere (word-break: break-all): "Calla/ble",
    "trust_remote_cod/e". The HTML it prefers keeps each line whole, and a long one scrolls."""
    for code in (labkit.variant_code("thread-storm", "broken"), labkit.variant_diff("thread-storm", "one-thread")):
        pre = re.search(r"<pre style='([^']*)'>(.*)</pre>", code._repr_html_(), re.S)
        assert "white-space:pre;" in pre[1] and "word-break:normal" in pre[1] and "overflow-x:auto" in pre[1]
        assert html.unescape(re.sub(r"<[^>]+>", "", pre[2])).rstrip() == code.text.rstrip()  # every character, once
        assert "<span style=" in pre[2]  # highlighted, with inline colours an untrusted notebook keeps


def test_unknown_variant_is_bad_input():
    with pytest.raises(labkit.BadInput, match="allowed: broken"):
        labkit.variant_diff("thread-race", "nope")


def test_one_part_of_a_long_library_function():
    from transformers.modeling_rope_utils import dynamic_rope_update

    part = labkit.show_code(dynamic_rope_update, between=("def dynamic_frequency_update", "@wraps")).text
    assert part.startswith("def dynamic_frequency_update") and "register_buffer" in part and "@wraps" not in part
    with pytest.raises(labkit.BadInput, match="is not in the source"):
        labkit.show_code(dynamic_rope_update, between=("no such line", "@wraps"))
