# %% [markdown]
# # Thread races and the throughput wall
#
# **The report** (`shared/seeds/000`, QwenLM/Qwen issue 1303): Qwen-1.8B served from ten Python threads,
# each looping `model.chat`, raised
#
# ```
# TypeError: cannot unpack non-iterable NoneType object
# ```
#
# and GPU memory and utilisation did not grow with more threads. The cause is Qwen-1's rotary position
# embedding: it keeps its cos/sin tables, the sequence length they were built for and an NTK scaling
# factor **on the shared module**, and rebuilds them lazily whenever a request needs a longer sequence
# or another factor. The report's fixes: a lock, processes, batching, a request queue.
#
# **Here**: Qwen-1's modeling code is remote code that cannot be loaded offline, so labkit rebuilds the
# racing part of it in a small module (`labkit/llm/qwen1_rotary.py`, same shared state, same
# order of writes) and installs it into the real transformers Qwen3 model. Each trial serves 8 requests
# of different prompt lengths from 8 threads at once and checks every answer against the same request
# run alone (greedy decoding). Quick mode generates 16 tokens per request.

# %%
import inspect

import pandas as pd

import labkit
from labkit import LivePlot
from labkit.llm import qwen1_rotary

race = labkit.get("thread-race")
QUICK = dict(race.quick)
print(inspect.getsource(qwen1_rotary.LazySharedRotary.update_rotary_pos_emb_cache))

# %% [markdown]
# ## Reproduce
#
# The broken variant: one model, one thread per request, all started together. The trial runs in a child
# process, so whatever the threads do, this notebook gets an answer.

# %%
live = LivePlot("thread-race / broken")
broken = labkit.run(race, "broken", knobs=QUICK, on_tick=live).trials[0]
live.show(broken.samples)
print(broken.outcome, "|", broken.error)
print(f"{broken.metrics['requests_failed']:.0f} of 8 requests failed")

# %%
# NBVAL_CHECK_OUTPUT
print("the broken variant failed:", broken.outcome in ("raised", "wrong"))

# %% [markdown]
# Over repeats the failure takes three forms, all from the same shared state: the report's `TypeError`
# (a thread found the length already raised while the tables were still `None`), an `IndexError` (it
# read the previous, shorter tables), or `wrong` answers with no error at all (its decode steps ran with
# the NTK factor that another request's prefill left on the module). `labkit run thread-race --variant
# broken --repeats 10` on the 2-core CI machine: 4 TypeError, 3 IndexError, 3 wrong; 10 of 10 failed.

# %% [markdown]
# ## Why: watch the interleaving
#
# `thread_race.interleaving` serves the same 8 requests from 8 threads on a model whose rotary module is
# Qwen-1's pattern unchanged but for a log: every rebuild and every read of the shared state, with the
# thread that made it. Each row says what the reader **needs** (the sequence length of its call), what the
# module's cached **length says**, and how many rows the **tables hold** at that moment. It runs isolated,
# like a trial: it races.

# %%
from labkit.scenarios import thread_race

traced = labkit.run_isolated(thread_race.interleaving, timeout=120)
log = pd.DataFrame(traced.value)
log.head(16)

# %% [markdown]
# A read whose tables hold nothing (`None`) or fewer rows than it needs landed inside another thread's
# rebuild, between the length being raised and the tables being assigned: the length already said "big
# enough", so the reader skipped its own rebuild. The fixes remove the shared writes (per-thread), make
# them one at a time (lock), or leave one thread alone with the model (batched, processes).

# %%
torn = log[(log["event"] == "reads tables") & ~(log["tables hold"] >= log["needs"])]
pd.concat([torn, log[log["event"].str.startswith("raised")]]).sort_index().head(10)

# %% [markdown]
# ## The fixes
#
# * `lock`: a lock around each request. Correct, and the requests run one at a time.
# * `per-thread`: tables for every NTK factor built once and never written again; each thread keeps the
#   factor of its own request in thread-local storage.
# * `batched`: client threads hand requests to one worker thread that drains the queue into padded
#   batches (dynamic micro-batching, a 5 ms window). Only that thread touches the model.
# * `processes`: a pool of worker processes, each with its own model and one torch thread.

# %%
fixes = {v: labkit.run(race, v, knobs=QUICK, monitor=False).trials[0] for v in race.fixes}
pd.DataFrame({v: {"outcome": t.outcome, **t.metrics} for v, t in fixes.items()}).T

# %%
# NBVAL_CHECK_OUTPUT
print({v: (t.outcome, int(t.metrics["requests_failed"])) for v, t in fixes.items()})

# %% [markdown]
# ## The throughput wall: lock against batched
#
# More threads do not bring more tokens per second: the GIL runs one thread's Python at a time, and on a
# GPU all threads feed one CUDA queue. One batched generate gives the hardware larger pieces of work.

#
# One measurement first, because it decides what the comparison means. The serving process runs with
# one torch thread (the `torch_threads` knob); here is why:

# %%
from labkit.scenarios.thread_race import TORCH_THREADS_WHY

print(TORCH_THREADS_WHY)

# %%
ab = labkit.compare(race, "lock", "batched", repeats=3, knobs=QUICK, metric="tokens_per_s")
ab.table()

# %%
# NBVAL_CHECK_OUTPUT
print(ab.answer)

# %%
labkit.comparison_figure(ab)

# %% [markdown]
# ## Tokens per second over 1, 4 and 8 concurrent requests
#
# The same sweep helper serves every notebook. With the lock, throughput stays flat as requests are
# added; batching grows with them. Where a GPU is present, the monitor also records its SM utilisation
# during each trial (`trial.samples`, source `gpu0`, metric `sm_percent`); this machine has none.

# %%
sweep = labkit.sweep(race, ["lock", "batched"], {"threads": [1, 4, 8]}, knobs=QUICK)
labkit.sweep_figure(sweep, "tokens_per_s")

# %%
sweep.table("tokens_per_s")

# %% [markdown]
# ## Play
#
# Pick a strategy (`broken` is plain threads on a shared model), the number of concurrent requests, the
# tokens per request, and press Run. Each run adds a row: try `broken` and `lock` at 2 threads, then at 8;
# try `batched` with `torch_threads` 1 and then 2.

# %%
from labkit import panel

panel("thread-race", knobs=["threads", "tokens", "torch_threads"])
