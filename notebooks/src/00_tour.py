# %% [markdown]
# # labkit: a tour
#
# LLM inference misbehaves under concurrency in a handful of ways that keep coming back: threads that
# race on shared model state, tensors that end up on two devices, CPU thread pools that fight each
# other, tokenizers that deadlock after a fork. labkit reproduces each failure on **real library code**
# (PyTorch, transformers, accelerate, tokenizers), puts the fix right next to it, and measures the
# difference while you watch the CPU and GPU.
#
# Three ideas carry everything:
#
# 1. **Every trial runs isolated**, in a child process of its own with a timeout. A trial that deadlocks
#    comes back as `hung`, with every thread's stack, and the notebook never freezes. Outcomes are `ok`,
#    `raised`, `wrong` (finished with a wrong answer), `hung` and `crashed`. The child is forked from a
#    *warm* process that has already imported torch and transformers, so a trial starts in a fraction of
#    a second; the first trial of a kernel (and of each set of environment variables) waits a few seconds
#    while that warm process imports them once.
# 2. **A monitor watches while it runs**: per-core CPU, the trial's threads and context switches, and
#    each GPU through NVML when there is one.
# 3. **A/B answers are honest**: variants run interleaved, medians with a 95% bootstrap interval of the
#    ratio, and "within noise" when that interval holds 1.
#
# This notebook runs in quick mode (short runs that still show the real failures) so it finishes in a
# minute or two on a 2-core laptop.

# %%
import labkit

# NBVAL_CHECK_OUTPUT
for s in labkit.all_scenarios():
    print(f"{s.name}: broken={s.broken_variant}, fixes={', '.join(s.fixes)}")

# %% [markdown]
# ## What this machine has
#
# `labkit.doctor()` reads the thread pools in a fresh interpreter (they are fixed when a library
# loads), the variables that change them, and the GPUs. The same report is `labkit doctor` on the
# command line.

# %%
labkit.doctor().to_frame()

# %% [markdown]
# ## One trial, watched
#
# The `thread-storm` scenario (notebook 03 tells its story) runs 4 worker processes that each generate
# with the embedded tiny Qwen3 model and sample over a 152k vocabulary. Its broken variant leaves
# torch's thread pool at its default in every worker. `LivePlot` redraws while the trial runs: the
# per-core heat strip on top, the trial's CPU use and OS threads below, and the GPU panel (empty here
# unless NVML finds a GPU).

# %%
storm = labkit.get("thread-storm")
live = labkit.LivePlot("thread-storm / broken")
broken = labkit.run("thread-storm", "broken", knobs=storm.quick, on_tick=live)
trial = broken.trials[0]
live.show(trial.samples)

# %%
# NBVAL_CHECK_OUTPUT
print(trial.outcome, "| compute threads per core:", trial.metrics["threads_per_core"] > 1)

# %% [markdown]
# Results are dataclasses; `.to_frame()` gives a tidy DataFrame (one row per trial and metric) that
# pandas and matplotlib can group without reshaping.

# %%
broken.to_frame()

# %% [markdown]
# ## An A/B comparison, on your own code
#
# `labkit.compare` runs two variants interleaved (A B A B ...), each trial isolated, and answers per
# metric: the median of each side, the ratio B/A with a 95% bootstrap interval, and "within noise"
# when that interval holds 1. `labkit.compare("thread-storm", "broken", "one-thread")` is notebook 03's
# centrepiece (on this project's 2-core machine one-thread used about 0.2x the CPU per token, 95%
# interval about [0.18, 0.26]), and `labkit tour` runs one for every scenario.
#
# The same engine takes two functions of your own that return `{metric: value}`. Functions defined in
# a notebook travel to the child process by value (cloudpickle), so nothing has to be importable. Three
# repeats keep this quick; the command line's default is five (with three, about one comparison of
# identical variants in ten claims a difference that is not there).

# %%
import time


def python_loop():
    t0 = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return {"items_per_s": 2_000_000 / (time.perf_counter() - t0)}


def builtin_sum():
    t0 = time.perf_counter()
    sum(range(2_000_000))
    return {"items_per_s": 2_000_000 / (time.perf_counter() - t0)}


mine = labkit.compare_functions(python_loop, builtin_sum, metric="items_per_s", repeats=3, monitor=False)
mine.table()

# %%
# NBVAL_CHECK_OUTPUT
print(mine.answer)

# %%
labkit.comparison_figure(mine)

# %% [markdown]
# ## Play
#
# Move the sliders (workers, and the torch threads each broken worker keeps), pick a variant, press
# **Run**. Each run adds a row to the table, so pressing Run with `broken` and then with `one-thread`
# is an A/B by hand. Try `threads=4` with `broken`: on 2 cores it is *less* bad than the default 2.
# Notebook 03 explains why (libgomp spins hardest when a team fits the cores).

# %%
from labkit import panel

panel("thread-storm", knobs=["workers", "threads"])
