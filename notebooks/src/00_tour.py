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
# 3. **A/B answers are honest**: variants run in pairs (a coin decides which goes first), the ratio B/A
#    with an exact 95% interval, "within noise" when that interval holds 1, and "too few trials to tell"
#    when the trials cannot back 95%.
#
# This notebook runs in quick mode (short runs that still show the real failures), so it finishes within
# a minute or so on a 2-core laptop (`notebooks/README.md` lists what each notebook took to run here).
#
# ## What you will learn
#
# * what a labkit trial is, its five outcomes, and why each one runs in a process of its own;
# * how to read the live plot: the machine's cores, and the CPU and threads of the trial's own processes;
# * how to ask an A/B question of two variants, or of two functions of your own, and get an answer that
#   says "within noise" when the difference is not there;
# * how to check whether your own model is safe to serve from threads;
# * where each failure mode is taught:
#
# | notebook | failure mode | the fix in one line |
# | --- | --- | --- |
# | 01 | threads race on a shared model's cache | one worker thread that batches, or a lock |
# | 02 | tensors on two devices: dispatch hooks, per-thread devices; compile settings per thread | `skip_keys`; tensors made in the thread that uses them; settings made in the serving thread |
# | 03 | CPU thread storms: every worker brings a full thread pool | `torch.set_num_threads(1)` per worker |
# | 04 | tokenizer deadlock after fork; an out-of-memory error that leaves the job's other processes waiting; a stream that never ends | `TOKENIZERS_PARALLELISM=false` or spawn; a timeout on their wait; errors handed to the caller |

# %%
import pandas as pd

import labkit

pd.set_option("display.float_format", lambda x: f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}")  # 4 digits, no exponent
pd.set_option("display.max_colwidth", None)  # text (evidence, verdicts) whole, not cut at 50 characters

# NBVAL_CHECK_OUTPUT
for s in labkit.all_scenarios():
    print(f"{s.name}: broken={s.broken_variant}, fixes={', '.join(s.fixes)}")

# %% [markdown]
# ## What this machine has, and what it is exposed to
#
# `labkit.doctor()` reads the thread pools in a trial's process, started as every trial is (they are
# fixed when a library loads, so this kernel's own say nothing about a new trial), the variables that change them, and the GPUs, and judges each failure mode from them:
# `exposed`, `not exposed`, or `unknown` where it depends on your code, with the evidence and the fix.
# Say how many worker processes you run (`doctor(workers=4)`, `labkit doctor --workers 4`): the storm
# depends on it.

# %%
report = labkit.doctor(workers=4)
report.hazards_frame()

# %%
facts = report.to_frame()
facts[facts["what"] != "interpreter"]  # every fact but the interpreter's path, which is this machine's own

# %% [markdown]
# ## One trial, watched
#
# The `thread-storm` scenario (notebook 03 tells its story) runs 4 worker processes that each generate
# with the embedded tiny Qwen3 model and sample over a 152k vocabulary. Its broken variant leaves
# torch's thread pool at its default in every worker; its main fix changes one line:

# %%
labkit.variant_diff("thread-storm", "one-thread")

# %% [markdown]
# `LivePlot` redraws while the trial runs: a heat strip of how busy each core of the machine is (whatever
# runs on it), the CPU use and OS threads of the trial's own processes, and a GPU panel where NVML finds a
# GPU.
#
# **Predict**: in quick mode each of the 4 worker processes keeps a pool of 2 torch threads (torch's default
# is one per core). How many OS threads will the 4 workers hold between them: 4, or more?

# %%
storm = labkit.get("thread-storm")
live = labkit.LivePlot("thread-storm / broken")
broken = labkit.run("thread-storm", "broken", knobs=storm.quick, on_tick=live)
trial = broken.trials[0]
live.show(trial)  # the trial itself, not only its samples: its time line (start-up, its code, what it measured) on top

# %%
print(f"{trial.outcome}: the {trial.knobs['workers']} workers held {trial.metrics['os_threads']:.0f} OS threads, "
      f"and spent {trial.metrics['cpu_s_per_token']:.3f} CPU seconds per token")

# %%
# NBVAL_CHECK_OUTPUT
print(trial.outcome, "| OS threads per worker:", int(trial.metrics["os_threads"]) // trial.knobs["workers"])

# %% [markdown]
# Results are dataclasses; `.to_frame()` gives a tidy DataFrame (one row per trial and metric) that
# pandas and matplotlib can group without reshaping.

# %%
broken.to_frame()

# %% [markdown]
# ## An A/B comparison, on your own code
#
# `labkit.compare` runs two variants in pairs (a coin decides which goes first in each), each trial
# isolated, and answers per metric: what happened to each side, the median of each side, the ratio B/A
# with a 95% interval from an exact rank test, and "within noise" when that interval holds 1. `labkit.compare("thread-storm", "broken", "one-thread")` is notebook 03's
# centrepiece, and `labkit tour` runs one for every scenario.
#
# The same engine takes two functions of your own that return `{metric: value}`. Functions defined in
# a notebook travel to the child process by value (cloudpickle), so nothing has to be importable. Five
# trials a side: with three, no rank test can reach 95% (the best it can say is one chance in ten), and
# labkit answers "too few trials to tell" instead of printing an interval it cannot back.
#
# Each function times itself in its own thread's CPU seconds (`time.thread_time()`), not the wall clock:
# another program busy on the same cores (a second notebook, a test suite) delays a trial without
# adding CPU time to it, so the ratio holds on a loaded laptop. `call_s` beside it is the wall clock of
# each call, which labkit takes for you.
#
# **Predict** before you run: is a Python loop slower than the built-in `sum`, and by a factor that
# five trials a side can tell from noise?

# %%
import time


def python_loop():
    t0 = time.thread_time()
    total = 0
    for i in range(2_000_000):
        total += i
    return {"items_per_s": 2_000_000 / (time.thread_time() - t0)}


def builtin_sum():
    t0 = time.thread_time()
    sum(range(2_000_000))
    return {"items_per_s": 2_000_000 / (time.thread_time() - t0)}


mine = labkit.compare_functions(python_loop, builtin_sum, metric="items_per_s", repeats=5, monitor=False)
mine.table()

# %%
# NBVAL_CHECK_OUTPUT
print(mine.answer)

# %%
labkit.comparison_figure(mine)

# %% [markdown]
# ## Your own model
#
# Every scenario whose model matters takes a `model` knob: a saved model's folder, a hub id you have
# cached, or `tiny`. And one question has a tool of its own: **is my model safe to serve from
# threads?** `labkit.check_thread_safety(folder)` has several threads generate at once on one shared
# model and compares every answer with the same request run alone (greedy, so the right answer is
# known). It runs isolated like a trial.
#
# Here a Llama is built from transformers' own config class with random weights and saved to a folder
# (no network), then checked as it is, and with notebook 01's racy rotary module installed.
#
# **Predict**: does a stock transformers Llama race when four threads share it?

# %%
import tempfile

from transformers import LlamaConfig

folder = tempfile.TemporaryDirectory(prefix="labkit-nb00-")
llama = labkit.save_random(folder.name, LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=2))
stock = labkit.check_thread_safety(str(llama), threads=4, tokens=8)
racy = labkit.check_thread_safety(str(llama), threads=4, tokens=8, qwen1_rotary=True)
folder.cleanup()
racy.to_frame().astype(object).fillna("")  # blank: no difference, or no error

# %%
# NBVAL_CHECK_OUTPUT
print("stock Llama:", stock.verdict)

# %%
print("with Qwen-1's rotary:", racy.verdict)

# %% [markdown]
# A clean check says no race was *seen*; a failing one is proof. From a shell, the same check is
# `labkit check threads --model FOLDER`, and the A/B that matters once it is safe, a lock against one
# batching thread on your model, is `labkit compare thread-race lock batched --set model=FOLDER`.
#
# ## Play
#
# Move the sliders (workers, and the torch threads each broken worker keeps), pick a variant, press
# **Run**. Each run adds a row to the table, so pressing Run with `broken` and then with `one-thread`
# is an A/B by hand.

# %%
from labkit import panel

panel("thread-storm", knobs=["workers", "threads"])

# %% [markdown]
# ### Exercise
#
# Run `broken` with `threads=2` and then `threads=4`, at 4 workers. Which uses more CPU seconds per
# token? Predict first: more threads, more storm?
#
# <details><summary>Solution</summary>
#
# On a 2-core machine `threads=4` is usually the *milder* storm: libgomp notices that a team of 4
# cannot fit 2 cores and stops spinning hard between parallel regions, while a team of 2 "fits" and
# spins. One run each is noisy: press Run twice for each, or use `labkit.compare` with
# `knobs={"threads": 4}` on one side. Notebook 03 measures it.
#
# </details>
#
# ## In your own code
#
# The whole course in six lines; each notebook shows its own in detail.
#
# * One torch thread per worker process (`torch.set_num_threads(1)`), so that workers times threads fits
#   the cores.
# * `TOKENIZERS_PARALLELISM=false` before forking workers, or the `spawn` start method.
# * `timeout=` in `torch.distributed.init_process_group`, and workers that hand their errors on.
# * `skip_keys=model._skip_keys_device_placement` when you dispatch a model yourself.
# * Tensors made in the thread that uses them, with the device index named.
# * No module state written from `forward` when threads share the model: a lock, or one batching thread.
#   `labkit check threads --model FOLDER` checks your own.
