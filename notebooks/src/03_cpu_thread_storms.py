# %% [markdown]
# # CPU thread storms
#
# ## What you will learn
#
# * what torch's *intra-op* thread pool is, and why several processes that each keep one make the CPU
#   busy with waiting rather than working;
# * how to see a storm: CPU seconds per token, beside the OS threads it runs;
# * why the OpenMP *wait policy* is what turns oversubscription into a storm;
# * three fixes and one setting, the line each changes, and how to tell a real difference from noise
#   with an A/B.
#
# ## The report
#
# > Batched generation with ExLlamaV2 pegged every CPU core at 100% although the model ran on the GPU;
# > worst with PyTorch 2.3.1 and large-vocabulary models such as Qwen2-72B (152k tokens).
# > `torch.set_num_threads(1)` made generation about 20% faster; a bounded sampling pool
# > (`max_sampling_threads`) was the other fix.
# > ([turboderp/exllamav2 issue 508](https://github.com/turboderp/exllamav2/issues/508); related:
# > [pytorch/pytorch issue 80777](https://github.com/pytorch/pytorch/issues/80777), small CPU ops at 3000% CPU with 32 threads.)
#
# **Terms.** PyTorch splits one large operation (a matrix product, a softmax over 152k logits) across an
# *intra-op pool*: a *team* of OpenMP threads, one per core by default, that wake together for each
# parallel region and wait for the next one. Between regions, libgomp (GCC's OpenMP) lets a waiting
# thread **spin** for a while before it sleeps, which is fast when one process owns the machine.
#
# **Here**: W workers each run a real generation loop on the embedded Qwen3 model with Qwen's
# 151,936-token vocabulary: a transformers forward with a KV cache (each layer's keys and values of the
# tokens so far, kept so that a step computes them for its new token only), then temperature sampling on
# the CPU over every logit. Left at its defaults, every worker brings a pool with one thread per core. Quick mode
# (one new token per sequence) keeps each trial to seconds.

# %%
import pandas as pd
from IPython.display import Markdown

import labkit
from labkit import LivePlot

pd.set_option("display.float_format", lambda x: f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}")  # 4 digits, no exponent
pd.set_option("display.max_colwidth", None)  # text (verdicts) whole, not cut at 50 characters
storm = labkit.get("thread-storm")
QUICK = dict(storm.quick)
report = labkit.doctor().facts
{k: report[k] for k in ("usable_cores", "torch_intra_op_threads", "torch_parallel_backend", "native_pools", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}

# %% [markdown]
# The broken variant, and the helpers that start its workers (processes, each with its own pool):

# %%
labkit.variant_code(storm, "broken")

# %% [markdown]
# ## Reproduce: the storm
#
# **Predict**: four workers, each with a pool of one thread per core, on this machine's cores. How many
# OS threads will the workers hold? Will the cores be busy, and with what?

# %%
live = LivePlot("thread-storm / broken")
broken = labkit.run(storm, "broken", knobs=QUICK, on_tick=live).trials[0]
live.show(broken)
labkit.variants_table({"broken": broken})

# %%
# NBVAL_CHECK_OUTPUT
print(broken.outcome, "| OS threads per worker:", int(broken.metrics["os_threads"]) // broken.knobs["workers"])

# %% [markdown]
# Read the plot: the heat strip shows how busy each core of the machine is, the red line how many cores
# the trial's processes use, the blue one their OS threads. The busy cores alone do not tell a storm from
# useful work; the numbers beside it do, once there is something to compare them with. (`threads_per_core`
# is not measured: it is the workers times the torch threads each was set to, over the cores.)

# %% [markdown]
# ## The fix: one torch thread per worker
#
# Same work, `torch.set_num_threads(1)` in each worker: the parallelism comes from the workers alone.

# %%
labkit.variant_diff(storm, "one-thread")

# %%
live = LivePlot("thread-storm / one-thread")
fixed = labkit.run(storm, "one-thread", knobs=QUICK, on_tick=live).trials[0]
live.show(fixed)
labkit.variants_table({"broken": broken, "one-thread": fixed})

# %% [markdown]
# In both live plots the cores are busy while the workers generate; "CPU %" alone does not tell the two
# apart. Side by side, a bar for each of the scenario's first three metrics, then both trials' CPU use on one time axis from each one's first line,
# each generation (the measured window) shaded:

# %%
labkit.variants_figure({"broken": broken, "one-thread": fixed})

# %%
Markdown(f"Here, one-thread generated in **{fixed.metrics['wall_s']:.2f} s** against **{broken.metrics['wall_s']:.2f} s** "
         f"for broken (the measured window: the workers' generation, not their start-up), and used "
         f"**{fixed.metrics['cpu_s_per_token'] / broken.metrics['cpu_s_per_token']:.2f}x** broken's CPU seconds per token "
         "(one run each: the A/B below says whether that holds beyond noise).")

# %% [markdown]
# ## Why: threads that spin while they wait
#
# Oversubscription alone (more compute threads than cores) would cost some context switches. What turns it
# into a storm is libgomp's *wait policy*: a thread that finishes its share of a parallel region spins for
# a while, waiting for the next one, before it sleeps; and when a team fits the cores, as the default pool
# does, it spins hard. Four processes each believe they own the machine, so the cores are busy with
# waiting. Two measurements make that visible:
#
# * with `OMP_WAIT_POLICY=PASSIVE` (read when libgomp loads, so it is set before the child process
#   starts) the *same broken variant* runs with waiting threads that sleep instead of spinning;
# * with `threads=4` per worker (16 threads on 2 cores) libgomp notices that a team cannot fit the cores
#   and throttles its spinning.
#
# **Predict** where each lands between broken and one-thread.

# %%
passive = labkit.run(storm, "broken", knobs=QUICK, env={"OMP_WAIT_POLICY": "PASSIVE"}, monitor=False).trials[0]
four = labkit.run(storm, "broken", knobs={**QUICK, "threads": 4}, monitor=False).trials[0]
labkit.variants_table({"broken (default)": broken, "broken, OMP_WAIT_POLICY=PASSIVE": passive, "broken, threads=4": four,
                       "one-thread": fixed}, metrics=["tokens_per_s", "cpu_s_per_token", "os_threads", "ctx_involuntary"])

# %% [markdown]
# One run each, on a machine that is also running this notebook: read the order of the rows, and let the
# A/B below decide the one difference that matters.
#
# ## A/B: broken against one-thread
#
# In pairs (a coin decides which goes first), isolated, five a side. The verdict comes from the exact
# 95% interval of the ratio; "within noise" when it holds 1.

# %%
ab = labkit.compare(storm, "broken", "one-thread", repeats=5, knobs=QUICK, metric="cpu_s_per_token")
ab.table().drop(index="threads_per_core")  # set, not measured: no verdict to give

# %%
# NBVAL_CHECK_OUTPUT
print(ab.answer)
print(ab.for_metric("tokens_per_s").answer)

# %%
labkit.comparison_figure(ab)

# %%
Markdown(f"Here one-thread's tokens per second were **{ab.for_metric('tokens_per_s').ratio:.1f}x** broken's "
         "(the A/B's ratio, five a side), where the report's one thread gained a fraction (the quote at the top). "
         "There the forward ran on a GPU and sampling on the CPU was a small part of each step, so the storm slowed "
         "a small part of the work. Here the forward runs on the CPU too, in the same pools, so the storm slows "
         "every part of each step.")

# %% [markdown]
# ## Every fix
#
# * `threadpool-limits`: threadpoolctl's `threadpool_limits(1)` around the hot loop. One trap found
#   while building this: torch links MKL statically, so threadpoolctl cannot see it (the pools it lists
#   above are libgomp and NumPy's OpenBLAS). If code calls `torch.set_num_threads(n)` first, MKL keeps
#   `n` threads whatever threadpoolctl says, and part of the gain is lost (the comment in the diff below
#   says how much it measured then; not run here). The variant leaves torch's pool at its default.
# * `bounded-pool`: the workers are threads in one process and sample through one shared pool of at most
#   one thread per core (ExLlamaV2's `max_sampling_threads`), torch at one thread.

# %%
labkit.variant_diff(storm, "threadpool-limits")

# %%
labkit.variant_code(storm, "bounded-pool", helpers=False)

# %%
fixes = {v: labkit.run(storm, v, knobs=QUICK, monitor=False).trials[0] for v in storm.fixes}
labkit.variants_table({"broken": broken, **fixes}, digits=3)

# %%
# NBVAL_CHECK_OUTPUT
print({v: t.outcome for v, t in fixes.items()})

# %% [markdown]
# ## Threads instead of processes
#
# ExLlamaV2 samples from threads of one process. **Predict**: with the workers as Python threads, is the
# storm worse or milder than with processes?

# %%
as_threads = labkit.run(storm, "broken", knobs={**QUICK, "workers_as": "threads"}, monitor=False).trials[0]
labkit.variants_table({"broken, workers as processes": broken, "broken, workers as threads": as_threads},
                      metrics=["tokens_per_s", "cpu_s_per_token", "os_threads", "ctx_involuntary"])

# %% [markdown]
# The GIL lets one thread of a process run Python at a time, and the Python between the small ops is
# much of each step, so the threads of one process rarely meet in parallel regions at the same time; the
# processes are the plain case.
#
# ## Sweep: intra-op threads x workers
#
# Each point is one trial of the broken variant with its `threads` knob (the size of each worker's torch
# pool, set in the worker before it generates) and its `workers` knob. Quick mode sweeps threads 1, 2 and
# workers 1, 4: the storm needs both, several workers that each bring a team of threads. Set `FULL = True`
# for threads 1, 2, 4, 8 and workers 1, 2, 4.

# %%
FULL = False
threads, workers = ([1, 2, 4, 8], [1, 2, 4]) if FULL else ([1, 2], [1, 4])
grid = labkit.sweep(storm, "broken", {"threads": threads, "workers": workers}, knobs=QUICK)
labkit.sweep_figure(grid, "tokens_per_s")

# %%
labkit.sweep_figure(grid, "cpu_s_per_token")

# %%
cost = grid.table("cpu_s_per_token")["median"].droplevel("variant")
worst, best = cost.idxmax(), cost.idxmin()
Markdown(f"The most CPU per token here: threads={worst[0]}, workers={worst[1]} (**{cost.max():.3g} s**); the least: "
         f"threads={best[0]}, workers={best[1]} (**{cost.min():.3g} s**). One trial per cell.")

# %% [markdown]
# ## Play
#
# Workers, torch threads per broken worker, vocabulary size, and the variant. Each Run adds a row.

# %%
from labkit import panel

panel("thread-storm", knobs=["workers", "threads", "vocab", "workers_as"])

# %% [markdown]
# ### Exercise: at the panel
#
# 1. With `broken`, set `vocab` small (a few thousand) and then back to the default. How does CPU per
#    token change, and why does a large vocabulary matter?
# 2. With `broken` at `workers=1`, is there a storm?
#
# <details><summary>Solution</summary>
#
# 1. Sampling over every logit is a parallel region per step; a small vocabulary makes it too small to
#    parallelise, so the pool stays mostly idle and the storm shrinks. The report's large-vocabulary
#    models (152k tokens) are the bad case.
# 2. No: one worker with one thread per core fits the machine, which is what the default pool is made
#    for. The storm needs several processes, each with a full team.
#
# </details>
#
# ### Exercise: write the fix
#
# Each worker process runs a set-up first, then generates inside the context the set-up returns (the
# broken variant's set-up is `_torch_threads`'s `setup`, printed with its code above). `my_setup` below
# leaves torch's pool as it is, as the broken variant does on a machine like this one. Change it so that
# four workers stop storming: torch's own setting, threadpoolctl's limits, or your own way.
#
# The check after it runs the scenario's own workers with your set-up in each, isolated, up to three
# times (stopping at the first that fails), and holds when each trial costs at most half of the CPU
# seconds per token of the broken variant in the A/B above (the median of its five trials). As the cell
# stands, it does not hold.

# %%
import contextlib


def my_setup():
    """Runs first in each worker process; returns the context its generation runs in."""
    return contextlib.nullcontext  # torch's pool left at its default, as the broken variant does here: change it


# %%
from labkit.scenarios.thread_storm import with_setup  # the scenario's own four workers, your set-up in each

print(labkit.try_variant(storm, with_setup(my_setup), knobs=QUICK, than=ab.a, metric="cpu_s_per_token", by=2))

# %% [markdown]
# A worked solution is folded in the next cell (unfold it with the bar on its left, after you tried); its
# output is the same check, run on it.

# %% solution
# NBVAL_CHECK_OUTPUT
def one_torch_thread():
    """A solution: one torch thread in each worker; the workers are the parallelism."""
    import torch

    torch.set_num_threads(1)
    return contextlib.nullcontext


print(labkit.try_variant(storm, with_setup(one_torch_thread), knobs=QUICK, than=ab.a, metric="cpu_s_per_token", by=2))

# %% [markdown]
# <details><summary>Why it holds</summary>
#
# With one torch thread each, four workers put four compute threads on the cores instead of a team of
# threads per worker, and no thread spins waiting for a parallel region. `torch.set_num_threads` in the
# set-up acts because it runs in the worker, before its first parallel region. Returning
# `lambda: threadpoolctl.threadpool_limits(1)` (with `torch.set_num_threads` left alone: see the MKL trap
# above) is the `threadpool-limits` fix. Setting `OMP_NUM_THREADS` in the set-up is too late: libgomp
# read it when torch loaded.
#
# </details>
#
# ## In your own code
#
# * Several worker processes (DataLoader workers, a process pool, one process per GPU): call
#   `torch.set_num_threads(1)` in each (or set `OMP_NUM_THREADS=1` before torch loads), so that workers
#   times threads stays within the cores.
# * `threadpoolctl` cannot see torch's statically linked MKL: use torch's own setting for torch.
# * `OMP_WAIT_POLICY=PASSIVE` stops waiting threads from spinning, where you cannot change the code.
# * Measure CPU seconds per token, not only "CPU %": a busy core may be waiting. Involuntary context
#   switches grow with the number of threads as well as with spinning: read them beside CPU per token.
