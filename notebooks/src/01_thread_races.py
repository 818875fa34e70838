# %% [markdown]
# # Thread races and the throughput wall
#
# ## What you will learn
#
# * how a cache kept **on a shared module** and rebuilt lazily turns threads into a race, and the three
#   faces it shows: a `TypeError`, an `IndexError`, and answers that are silently wrong;
# * how to find the race in a log of who read and wrote the shared state, row by row;
# * four fixes (a lock, per-thread state, batching, processes), the line each one changes, and what each
#   costs in throughput;
# * why more threads do not bring more tokens per second, and what does.
#
# ## The report
#
# > Qwen-1.8B served from ten Python threads, each looping `model.chat`, raised
# > `TypeError: cannot unpack non-iterable NoneType object`, and GPU memory and utilisation did not grow
# > with more threads. ([QwenLM/Qwen issue 1303](https://github.com/QwenLM/Qwen/issues/1303))
#
# **Two terms first.** *Rotary position embeddings* (RoPE) tell the model where each token sits by
# rotating its query and key vectors through angles that grow with the position; implementations keep a
# table of the cosines and sines for positions up to some length and grow it when a longer sequence
# comes. *NTK scaling* stretches those angles for sequences longer than the model was trained on, by a
# factor chosen from the sequence's length ("dynamic" NTK: each request may get another factor).
#
# Qwen-1 keeps the tables, the length they were built for and the NTK factor **on the one rotary module
# every thread shares**, and rebuilds them whenever a request needs a longer sequence or another factor.
#
# **A stand-in, said plainly.** Qwen-1's modeling code is remote code that cannot be loaded offline, so
# labkit rebuilds the racing part of it in a small module (`labkit/llm/qwen1_rotary.py`: same shared
# state, same order of writes) and installs it into the real transformers Qwen3 model. The threads, the
# model and `generate` are real; the rotary module is Qwen-1's pattern, rewritten. The second half of
# this notebook runs the same race on **transformers' own code**, with nothing rewritten: its dynamic
# RoPE. First, Qwen-1's rebuild:

# %%
import pandas as pd
from IPython.display import Markdown

import labkit
from labkit import LivePlot
from labkit.llm import qwen1_rotary

race = labkit.get("thread-race")
QUICK = dict(race.quick)
labkit.show_code(qwen1_rotary.LazySharedRotary.update_rotary_pos_emb_cache)

# %% [markdown]
# The length is raised **before** the new tables are assigned. A thread that checks in between sees a
# length that says "big enough", skips its own rebuild, and reads tables that are not there yet (`None`:
# the report's `TypeError`) or too short (`IndexError`).
#
# Each trial of the scenario serves 8 requests of different prompt lengths (around the trained length, so
# their NTK factors differ) from 8 threads at once, and checks every answer against the same request run
# alone (greedy decoding, so the right answer is known). The broken variant, and the helper it calls:

# %%
labkit.variant_code(race, "broken")

# %% [markdown]
# ## Reproduce
#
# **Predict** before you run: of the 8 answers, how many will match the answer the same request gets
# alone? Will the trial raise, or finish?
#
# The trial runs in a child process, so whatever the threads do, this notebook gets an answer back.

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
# The plot does not show a race: CPU and threads look like any busy trial's. The evidence is in the
# answers, and in the log below. Over repeats the failure takes three forms, all from the same shared
# state: the `TypeError`, an `IndexError` (a read of the previous, shorter tables), or `wrong` answers
# with no error at all. (The exercise at the end counts them.)

# %% [markdown]
# ## Why: watch the interleaving
#
# `thread_race.interleaving` serves the same 8 requests from 8 threads on a model whose rotary module is
# Qwen-1's pattern unchanged but for a log of every rebuild and every read, with the thread that made it.
# Each row says:
#
# * **needs**: the sequence length of this call; **length says**: what the module's cached length claims
#   at that moment; **tables hold**: how many rows the tables really have (`None`: no tables yet);
# * **request's factor**: the NTK factor this request's own prompt length calls for; **factor used**: the
#   one it asked the module for (at a decode step, whatever the *last prefill of any thread* left on the
#   module); **tables' factor**: the one the shared tables were built with.
#
# It runs isolated, like a trial: it races.

# %%
from labkit.scenarios import thread_race

traced = labkit.run_isolated(thread_race.interleaving, timeout=120)
log = pd.DataFrame(traced.value)
log.head(12)

# %% [markdown]
# Two kinds of row prove the race. A **torn read**: tables that hold fewer rows than the read needs, or
# none, because it landed between another thread's "length raised" and "tables assigned" (the
# `TypeError` and `IndexError`). A **borrowed factor**: a read whose factor used, or whose tables'
# factor, is not the request's own: it computes this request's positions with another request's scaling,
# and the answer comes out wrong without any error.

# %%
torn, borrowed = thread_race.evidence(traced.value)
reads = log[log["event"] == "reads tables"]
raised = log[log["event"].str.startswith("raised")]
Markdown(f"In this run: **{len(torn)}** torn reads, **{len(borrowed)}** reads with a borrowed factor, "
         f"**{len(raised)}** requests raised, out of {len(reads)} reads.")

# %%
pd.concat([torn, borrowed.head(6), raised]).sort_index()

# %% [markdown]
# ## The fixes, and the line each one changes
#
# * `lock`: a lock around each request. Correct, and the requests run one at a time.
# * `per-thread`: tables for every NTK factor built once and never written again; each thread keeps the
#   factor of its own request in thread-local storage.
# * `batched`: client threads hand requests to one worker thread that drains the queue into padded
#   batches (dynamic micro-batching: it waits a few milliseconds for more requests after the first).
#   Only that thread touches the model.
# * `processes`: a pool of worker processes, each with its own model and one torch thread.
#
# The first two change a line or two against the broken variant:

# %%
labkit.variant_diff(race, "lock")

# %%
labkit.variant_diff(race, "per-thread")

# %% [markdown]
# `batched` and `processes` restructure the serving instead; their code, whole:

# %%
labkit.variant_code(race, "batched", helpers=False)

# %%
labkit.show_code(thread_race.BatchingServer)

# %%
labkit.variant_code(race, "processes", helpers=False)

# %% [markdown]
# **Predict**: which fixes will answer all 8 requests right? Which will be fastest?

# %%
fixes = {v: labkit.run(race, v, knobs=QUICK, monitor=False).trials[0] for v in race.fixes}
labkit.variants_table(fixes, digits=1)

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
print(thread_race.TORCH_THREADS_WHY)

# %% [markdown]
# **Predict**: how many times the lock's tokens per second will batching reach, with 8 requests?
#
# The comparison runs the two variants in pairs (a coin decides which goes first), each trial isolated,
# five a side, and reports the ratio with an exact 95% interval: a verdict only where that interval
# leaves out 1.

# %%
ab = labkit.compare(race, "lock", "batched", repeats=5, knobs=QUICK, metric="tokens_per_s")
ab.table()

# %%
# NBVAL_CHECK_OUTPUT
print(ab.answer)

# %%
labkit.comparison_figure(ab)

# %% [markdown]
# ## Tokens per second over 1, 4 and 8 concurrent requests
#
# The same sweep helper serves every notebook. With the lock, requests wait in line, so adding requests
# adds little throughput; a batch serves them together, and its throughput grows with the batch. Where a
# GPU is present, the monitor also records its SM utilisation during each trial (`trial.samples`,
# source `gpu0`, metric `sm_percent`).

# %%
sweep = labkit.sweep(race, ["lock", "batched"], {"threads": [1, 4, 8]}, knobs=QUICK)
labkit.sweep_figure(sweep, "tokens_per_s")

# %%
medians = sweep.table("tokens_per_s")["median"].unstack("threads").round(0)
Markdown("Measured here, tokens/s at 1, 4 and 8 requests: "
         + "; ".join(f"**{v}** {' → '.join(f'{x:.0f}' for x in row)} (x{row[8] / row[1]:.1f} from 1 to 8)"
                     for v, row in medians.iterrows())
         + ". One trial per point: differences of a few tens of percent are within noise.")

# %% [markdown]
# ## Today's transformers races on its own code: dynamic RoPE
#
# Everything above used Qwen-1's pattern, rebuilt. transformers itself has a race of the same family in
# its own rotary code. A model configured with dynamic NTK scaling (`rope_parameters={"rope_type":
# "dynamic", ...}`) runs this before every rotary forward (transformers' `dynamic_rope_update`):

# %%
from transformers.modeling_rope_utils import dynamic_rope_update

labkit.show_code(dynamic_rope_update, between=("def dynamic_frequency_update", "@wraps"))

# %% [markdown]
# It writes `inv_freq` **on the rotary module that every thread shares**, from *this call's* sequence
# length: growing past the trained length, resetting below it. Between one thread's update and its use of
# `inv_freq`, another thread's request can set other frequencies. No error is raised: the answer is
# computed with another request's scaling. The same pattern is in transformers since 4.31
# (`LlamaDynamicNTKScalingRotaryEmbedding`), moved under this decorator by
# [PR 37249](https://github.com/huggingface/transformers/pull/37249); confirmed here on the installed release.
#
# The scenario's `pattern="dynamic-rope"` serves the same 8 requests on the embedded model with that
# configuration (a trained length of 32, which the prompts cross) and nothing of labkit's in the model.
# **Predict**: which of the four fixes still work?

# %%
DYNAMIC = {"pattern": "dynamic-rope"}  # 32 new tokens a request: the race shows in nearly every trial
dynamic = {v: labkit.run(race, v, knobs=DYNAMIC, monitor=False).trials[0] for v in race.variants}
labkit.variants_table(dynamic, metrics=["requests_failed"], digits=1)

# %%
# NBVAL_CHECK_OUTPUT
print({v: dynamic[v].outcome for v in ("broken", "per-thread", "batched")})

# %% [markdown]
# * `broken` fails with wrong answers: the library's own race.
# * `per-thread` holds: for this pattern it runs every rotary call on a fresh copy of the module
#   (`labkit.llm.stateless.Stateless`), so no call sees what another wrote.
# * `batched` is **no fix here**: transformers scales every row of a batch by the batch's longest
#   position, so a short request batched with a long one is computed with the long one's scaling.
# * `lock` and `processes` stop the race, but not the other half of the problem: the module keeps what
#   the last request left, and only resets below the trained length. Served one at a time, a request's
#   answer still depends on the requests before it. Their outcome above depends on the order the
#   requests happened to take. `thread_race.history` shows it with no threads at all:

# %%
served = labkit.run_isolated(thread_race.history, timeout=120).value
Markdown(f"The same request, alone on a fresh model and after a longer one on a shared model: "
         f"**{'different' if served['alone'] != served['after a longer request'] else 'the same'}** answers "
         f"(they part at token {next((i for i, (a, b) in enumerate(zip(*served.values())) if a != b), None)}).")

# %% [markdown]
# ## Play
#
# Pick a strategy (`broken` is plain threads on a shared model), the number of concurrent requests, the
# tokens per request, and press Run. Each run adds a row to the table.

# %%
from labkit import panel

panel("thread-race", knobs=["threads", "tokens", "torch_threads", "pattern"])

# %% [markdown]
# ### Exercise
#
# 1. Run `broken` at 2 threads, then at 8. Does it fail at 2? Press Run a few times at each: how often does
#    each fail?
# 2. Run `batched` with `torch_threads` 1 and then 2. Which is faster, and why (see the note on torch
#    threads above)?
# 3. Switch `pattern` to `dynamic-rope` and run `lock` a few times. Why does it sometimes fail?
#
# <details><summary>Solution</summary>
#
# 1. With 2 threads the two requests rarely meet inside a rebuild, but they may still borrow each other's
#    NTK factor when their prompts need different factors, so it fails some of the time; with 8 it fails
#    nearly every time. A race's failure rate grows with the overlap, which is why a test with one or two
#    threads says little. From a terminal, `labkit run thread-race --variant broken --repeats 10` counts
#    the outcomes over ten trials.
# 2. On a small model `torch_threads=1` is usually faster: the generate runs from a worker thread, where a
#    pool of several threads spins and waits between thousands of tiny ops (notebook 03 shows that storm).
# 3. The lock serves the requests one at a time, in whatever order the threads reach it; dynamic RoPE
#    keeps the scaling of the longest request so far until a request shorter than the trained length
#    resets it, so a request served after a longer one gets another answer than alone.
#
# </details>
#
# ## In your own code
#
# * Treat any module attribute that a forward writes (caches, lengths, scaling factors) as shared state:
#   read the model's code for `self.x = ...` inside `forward`.
# * Serving from threads: put one lock around the model, or better, one worker thread that batches the
#   requests (what serving engines do).
# * Need parallel CPU work: processes, each with its own model and `torch.set_num_threads(1)`.
# * Test concurrency with as many threads as production and compare each answer with the same request
#   run alone: a race that returns wrong answers raises nothing.
# * Dynamic RoPE (`rope_type="dynamic"`) keeps per-request state on the model: serve it with no rotary
#   state shared between calls, and do not batch requests whose lengths cross the trained length.
