# %% [markdown]
# # CPU thread storms
#
# **The report** (`shared/seeds/002`, exllamav2 issue 508): batched generation with ExLlamaV2 pegged every
# CPU core at 100% although the model ran on the GPU. It was worst with PyTorch 2.3.1 and with
# large-vocabulary models such as Qwen2-72B (152k tokens). PyTorch's intra-op pool (OpenMP and BLAS)
# was parallelising small CPU work such as sampling, and its threads kept spinning between parallel
# regions. `torch.set_num_threads(1)` made generation about 20% faster; a bounded sampling pool
# (`max_sampling_threads`) was the other fix. Related: pytorch issue 80777 (small CPU ops at 3000%
# CPU with 32 threads).
#
# **Here**: W workers each run a real generation loop on the embedded Qwen3 model with Qwen's
# 151,936-token vocabulary: a transformers forward with a KV cache, then temperature sampling on the
# CPU over every logit. Left at its defaults, every worker brings an OpenMP pool with one thread per
# core. Quick mode (2 new tokens per sequence) keeps each trial to seconds.

# %%
import labkit
from labkit import LivePlot, monitor_figure

storm = labkit.get("thread-storm")
QUICK = dict(storm.quick)
report = labkit.doctor().facts
{k: report[k] for k in ("usable_cores", "torch_intra_op_threads", "torch_parallel_backend", "native_pools", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}

# %% [markdown]
# ## Reproduce: the storm
#
# Four worker processes, each with torch's default pool. Watch the heat strip: both cores are pinned
# for the whole run, and the run is long.

# %%
live = LivePlot("thread-storm / broken")
broken = labkit.run(storm, "broken", knobs=QUICK, on_tick=live).trials[0]
live.show(broken.samples)
broken.metrics

# %%
# NBVAL_CHECK_OUTPUT
print(broken.outcome, "| more compute threads than cores:", broken.metrics["threads_per_core"] > 1)

# %% [markdown]
# ## The fix: one torch thread per worker
#
# Same work, `torch.set_num_threads(1)` in each worker: the parallelism comes from the workers alone.
# The cores are just as busy, for a fraction of the time.

# %%
live = LivePlot("thread-storm / one-thread")
fixed = labkit.run(storm, "one-thread", knobs=QUICK, on_tick=live).trials[0]
live.show(fixed.samples)
fixed.metrics

# %% [markdown]
# ## Why: threads that spin while they wait
#
# Oversubscription alone (8 compute threads on 2 cores) would cost some context switches. What turns it
# into a storm is libgomp's *wait policy*: a thread that finishes its share of a parallel region spins
# for a while, waiting for the next one, before it sleeps; and when a team fits the cores, as the
# default pool does, it spins hard. Four processes each believe they own the machine, so the cores are
# busy with waiting. Two measurements make that visible:
#
# * with `OMP_WAIT_POLICY=PASSIVE` (read when libgomp loads, so it is set before the child process
#   starts) the *same broken variant* is as fast as the fix: waiting threads sleep instead of spinning;
# * with `threads=4` per worker (16 threads on 2 cores) the storm is *milder* than with the default 2:
#   libgomp notices that a team of 4 cannot fit 2 cores and throttles its spinning.

# %%
passive = labkit.run(storm, "broken", knobs=QUICK, env={"OMP_WAIT_POLICY": "PASSIVE"}, monitor=False).trials[0]
four = labkit.run(storm, "broken", knobs={**QUICK, "threads": 4}, monitor=False).trials[0]
import pandas as pd

pd.DataFrame(
    {"broken (default)": broken.metrics, "broken, OMP_WAIT_POLICY=PASSIVE": passive.metrics,
     "broken, threads=4": four.metrics, "one-thread": fixed.metrics}
).T[["tokens_per_s", "cpu_s_per_token", "os_threads", "ctx_involuntary", "threads_per_core"]]

# %% [markdown]
# ## A/B: broken against one-thread
#
# Interleaved, isolated, three repeats each. The verdicts come from the 95% interval of the ratio.

# %%
ab = labkit.compare(storm, "broken", "one-thread", repeats=3, knobs=QUICK, metric="cpu_s_per_token")
ab.table()

# %%
# NBVAL_CHECK_OUTPUT
print(ab.answer)
print(ab.for_metric("tokens_per_s").answer)

# %%
labkit.comparison_figure(ab)

# %% [markdown]
# ## Every fix
#
# * `threadpool-limits`: threadpoolctl's `threadpool_limits(1)` around the hot loop. One trap found
#   while building this: torch links MKL statically, so threadpoolctl cannot see it (the pools it
#   lists above are libgomp and NumPy's OpenBLAS). If code calls `torch.set_num_threads(n)` first,
#   MKL keeps `n` threads whatever threadpoolctl says; measured here, that lost most of the gain (61
#   instead of about 340 tokens/s). The variant leaves torch's pool at its default.
# * `bounded-pool`: the workers are threads in one process and sample through one shared pool of at
#   most one thread per core (ExLlamaV2's `max_sampling_threads`), torch at one thread.

# %%
fixes = {v: labkit.run(storm, v, knobs=QUICK, monitor=False).trials[0] for v in storm.fixes}
pd.DataFrame({v: {"outcome": t.outcome, **t.metrics} for v, t in {"broken": broken, **fixes}.items()}).T

# %%
# NBVAL_CHECK_OUTPUT
print({v: t.outcome for v, t in fixes.items()})

# %% [markdown]
# ## Threads instead of processes
#
# ExLlamaV2 samples from threads of one process. Here, with the workers as Python threads, the storm
# barely shows: the GIL serialises the Python between the small ops, so the threads rarely meet in
# parallel regions at the same time. The processes are the plain case.

# %%
as_threads = labkit.run(storm, "broken", knobs={**QUICK, "workers_as": "threads"}, monitor=False).trials[0]
{"outcome": as_threads.outcome, **as_threads.metrics}

# %% [markdown]
# ## Sweep: intra-op threads x workers
#
# Each point is a process with `OMP_NUM_THREADS` and `MKL_NUM_THREADS` set before torch loads in it
# (they only act then: each setting gets a warm process of its own) and the broken variant's `threads`
# knob at the same value. Quick mode sweeps threads 1, 2 (the default here) and workers 1, 4: the storm
# needs both, several workers that each bring a team of threads. Set `FULL = True` for threads 1, 2, 4, 8 and workers 1, 2, 4.

# %%
FULL = False
threads, workers = ([1, 2, 4, 8], [1, 2, 4]) if FULL else ([1, 2], [1, 4])
grid = labkit.sweep(
    storm, "broken", {"threads": threads, "workers": workers}, knobs=QUICK,
    env=lambda k: {"OMP_NUM_THREADS": str(k["threads"]), "MKL_NUM_THREADS": str(k["threads"])},
)
labkit.sweep_figure(grid, "tokens_per_s")

# %%
labkit.sweep_figure(grid, "cpu_s_per_token")

# %% [markdown]
# The diagonal where workers x threads exceeds the cores is where the CPU per token climbs; on this
# 2-core machine the worst cell is usually threads = 2 (a team that "fits") with 2 or 4 workers.

# %% [markdown]
# ## Play
#
# Workers, torch threads per broken worker, vocabulary size, and the variant. Each Run adds a row.

# %%
from labkit import panel

panel("thread-storm", knobs=["workers", "threads", "vocab", "workers_as"])
