# %% [markdown]
# # Hangs: tokenizer deadlocks, out-of-memory that hangs, streams that never end
#
# ## What you will learn
#
# * why a process that **forks** after a thread pool has run can deadlock: the child copies the pool's
#   memory but none of its threads;
# * how to read a hang: which process waits, in which function, on which line (stacks as rows);
# * how an out-of-memory error becomes a hang when a worker catches it and a peer process waits for it in
#   a collective (an operation that every process of the job must join);
# * how a streamed generation whose worker thread fails leaves its caller waiting forever;
# * the fixes (`TOKENIZERS_PARALLELISM`, spawn, a budget check, a collective timeout) and the line each
#   changes; and a watchdog for code you run in the notebook itself.
#
# ## The report
#
# > lmdeploy serving InternVL2-76B tensor-parallel on 8 GPUs **hung** when memory ran out, instead of
# > raising; setting `TOKENIZERS_PARALLELISM=false` relieved it.
# > ([InternLM/lmdeploy issue 2712](https://github.com/InternLM/lmdeploy/issues/2712))
#
# Two different mechanisms stand behind hangs like that, and this notebook reproduces both on this
# machine, each next to its fixes:
#
# 1. **tokenizer-deadlock**: a process forks after the tokenizers library's Rust thread pool has run
#    ([huggingface/tokenizers issue 187](https://github.com/huggingface/tokenizers/issues/187) and
#    [issue 258](https://github.com/huggingface/tokenizers/issues/258)). `fork` copies the parent's memory
#    into the child, including the pool's locks and queues, but only the thread that called it: the
#    pool's worker threads do not exist in the child, and the first batch it encodes waits for them
#    forever.
# 2. **oom-hang**: a *tensor-parallel* job splits each layer of the model over several GPUs, one process
#    per part, and each of those processes is a *rank* (rank 0, rank 1, ...). One rank runs out of its
#    memory budget (here: its KV cache is full), *catches and logs* the error and stays alive, while its peer waits in a *collective*
#    (an operation every rank must join, here an `all_reduce` that sums a tensor across ranks) for a
#    message that never comes.
#
# A third hang comes from today's stack itself, not from the report: **streamer-hang**, the streaming
# pattern of most chat demos, where `generate` fails in a worker thread and the caller waits forever.
#
# Every hang here runs isolated with a timeout: the notebook gets `hung` back, with every process's stacks.

# %%
import threading

import pandas as pd
from IPython.display import Markdown, display

import labkit

pd.set_option("display.float_format", lambda x: f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}")  # 4 digits, no exponent
pd.set_option("display.max_colwidth", None)  # text (errors) whole, not cut at 50 characters
tok = labkit.get("tokenizer-deadlock")
oom = labkit.get("oom-hang")

# %% [markdown]
# ## 1. The tokenizer deadlock
#
# The trial loads the embedded tokenizer with `tokenizers` itself, encodes one batch with
# `TOKENIZERS_PARALLELISM=true` (the Rust pool starts), then forks two worker processes that encode with
# the tokenizer they inherited, as a DataLoader's workers would. These are the lines:

# %%
labkit.variant_code(tok, "broken")

# %% [markdown]
# **Predict**: will the workers finish their batches? What will the trial's processes be doing after a
# few seconds?

# %%
live = labkit.LivePlot("tokenizer-deadlock / broken")
hung = labkit.run(tok, "broken", timeout=5, on_tick=live).trials[0]
live.show(hung)
print(hung.outcome, "|", hung.error)

# %% [markdown]
# The plot shows the hang as it is known: the trial's processes use CPU while they load and encode, then
# none at all (every thread blocked, the red band), with their threads still alive; after a few seconds of
# stillness labkit calls the trial hung, takes every process's stack, and kills all its processes.

# %%
# NBVAL_CHECK_OUTPUT
print(hung.outcome)
frames = hung.stack_frames()
print("workers stuck in encode_batch:", frames.loc[frames["function"] == "_encode", "pid"].nunique())

# %% [markdown]
# The stacks were taken from each process just before it was killed; `stack_frames()` turns them into
# rows (process, thread, depth from the innermost frame, function, line). Below, the rows in the scenario's
# own module: the trial process's main thread is in `_serve`, on its `pool.map` line (the frames inside it
# are multiprocessing's, waiting for results); each forked worker sits in `_encode`, on the `encode_batch`
# line (depth 0: nothing runs above it), waiting for Rust threads that were never copied into it. A
# forked worker's stack starts with its parent's frames, down to the fork (multiprocessing's `_launch`):
# that is how the table tells the workers from the trial process.

# %%
forked = set(frames.loc[frames["function"] == "_launch", "pid"])
frames["process"] = ["a forked worker" if pid in forked else "the trial" for pid in frames["pid"]]
frames[frames["file"].str.endswith("tokenizer_deadlock.py")][["process", "pid", "main", "depth", "function", "line"]]

# %% [markdown]
# ### The fixes
#
# * `no-parallelism`: `TOKENIZERS_PARALLELISM=false`, the report's fix: no Rust pool, nothing to lose.
# * `spawn`: workers are fresh interpreters, each starts its own pool (slower to start).
# * `pool-after-fork`: fork before the parent encodes anything.
# * `library-guard`: leave the variable **unset**. tokenizers then notices the fork (a `pthread_atfork`
#   hook) and turns parallelism off in the child. Older releases printed "The current process just got
#   forked, after parallelism has already been used. Disabling parallelism to avoid deadlocks..."; in
#   tokenizers 0.23.3 that message is gone (the string is not in its binary) and the guard acts
#   silently, so its outcome is the evidence. Setting the variable to `true` removes the guard.
#
# Each differs from the broken variant in one line: the variable, or the start method, or when to fork.

# %%
for fix in tok.fixes:
    display(labkit.variant_diff(tok, fix))

# %% [markdown]
# **Predict** which of them finish, and which is slowest.

# %%
fixes = {v: labkit.run(tok, v, timeout=60, monitor=False).trials[0] for v in tok.fixes}
labkit.variants_table({"broken": hung, **fixes}, digits=2).astype(object).fillna("")  # blank: a hang counts no texts

# %%
# NBVAL_CHECK_OUTPUT
print({v: t.outcome for v, t in fixes.items()})

# %% [markdown]
# ## 2. Out of memory that hangs
#
# Two ranks decode tensor-parallel style: every step both compute the next-token logits and `all_reduce`
# them. `torch.distributed` joins them in a *process group* (the processes that take part in its
# collectives, here two on this machine, over loopback), through a backend that carries the messages:
# *gloo*, its CPU backend (NCCL is the GPU one).
#
# Each rank keeps a *KV cache*: each layer's keys and values of the tokens so far, so that a step computes
# them for its new token only. It sizes that cache from its memory budget up front (transformers'
# `StaticCache`, as engines size their cache pool), and rank 1 has a quarter of rank 0's memory. Each rank
# is a small serving engine: a worker thread runs the model and **catches and logs** errors, while the
# rank's main loop waits for each step's result.
#
# Running out of that budget does not raise torch's `OutOfMemoryError` here: a `StaticCache` that is full
# fails to write one token past its last slot, as an `IndexError` in `index_copy_`. That error stands in
# for the report's CUDA out-of-memory error; either way the worker catches it and only logs it.
#
# The size of a KV cache follows from the config alone, `labkit.kv_cache_bytes(config, batch, seq_len,
# dtype)`: keys and values x layers x KV heads x head size x tokens x batch x bytes per element. Here it
# is against the bytes a real cache holds as it grows:

# %%
import torch

from labkit import cache_held_bytes, kv_cache_bytes, tiny_model
from labkit.llm.upstream import returned_cache

model = tiny_model()
rows = []
for new in (1, 8, 16, 32, 64):
    out = model.generate(torch.randint(0, 1000, (4, 8)), max_new_tokens=new, do_sample=False, return_dict_in_generate=True)
    cache = returned_cache(out, model)  # out.cache since transformers 5.24, out.past_key_values before
    rows.append({"cached tokens": cache.get_seq_length(), "measured bytes": cache_held_bytes(cache),
                 "estimated bytes": kv_cache_bytes(model.config, 4, cache.get_seq_length(), torch.float32)})
growth = pd.DataFrame(rows)
growth.plot(x="cached tokens", y=["measured bytes", "estimated bytes"], style=["o", "-"], title="KV cache: measured vs estimated");
growth

# %%
# NBVAL_CHECK_OUTPUT
print("estimate equals measurement at every size:", bool((growth["measured bytes"] == growth["estimated bytes"]).all()))
from transformers import LlamaConfig
print("Llama-2-7B, fp16, one token:", kv_cache_bytes(LlamaConfig(num_hidden_layers=32, num_attention_heads=32, hidden_size=4096), 1, 1, "float16") // 1024, "KiB")

# %% [markdown]
# ### The budget, and what the request needs
#
# Each rank sizes its cache up front from its budget; rank 0 has four times rank 1's. Against them, what
# the request needs for its whole length, from the config alone:

# %%
from matplotlib.figure import Figure

knobs = oom.knob_values()
needs = kv_cache_bytes(model.config, knobs["batch"], 8 + knobs["tokens"], torch.float32)
budgets = {"rank 0 budget": 4 * knobs["budget_kib"] * 1024, "rank 1 budget": knobs["budget_kib"] * 1024,
           "the request needs": needs}
fig = Figure(figsize=(6, 2.2), layout="constrained")
ax = fig.subplots()
ax.barh(list(budgets), [b / 1024 for b in budgets.values()], color=["tab:green", "tab:orange", "tab:red"])
ax.set_xlabel("KV cache, KiB")
ax.set_title(f"batch {knobs['batch']}, 8 prompt + {knobs['tokens']} new tokens per sequence", fontsize=9)
fig

# %%
per_token = kv_cache_bytes(model.config, knobs["batch"], 1, torch.float32)
Markdown(f"Rank 1's {knobs['budget_kib']} KiB hold **{knobs['budget_kib'] * 1024 // per_token} tokens** per sequence; "
         f"the request needs **{8 + knobs['tokens']}**. Rank 0's budget holds it.")

# %% [markdown]
# ### Reproduce the hang
#
# The code: a rank's engine, whose worker thread catches and logs what the model raises; how a rank joins
# the group and sizes its cache; the broken rank and its decode loop; and the variant, which forks the two
# ranks and waits for their answers.

# %%
from labkit.scenarios import oom_hang

labkit.show_code(oom_hang.Engine)

# %%
display(labkit.show_code(oom_hang._join), labkit.show_code(oom_hang._broken_rank), labkit.show_code(oom_hang._decode))

# %%
labkit.variant_code(oom, "broken")

# %% [markdown]
# **Predict**: rank 1 fails on the step its cache is full. What does rank 0 do then, and what does the
# trial report?

# %%
live = labkit.LivePlot("oom-hang / broken")
oom_hung = labkit.run(oom, "broken", timeout=15, on_tick=live).trials[0]
live.show(oom_hung)
print(oom_hung.outcome, "|", oom_hung.error)
print("logged by rank 1 and swallowed:", [l for l in oom_hung.output.splitlines() if "failed" in l][:1])
print("how long a collective waits for a peer unless timeout= is given:", torch.distributed.constants.default_pg_timeout)

# %%
# NBVAL_CHECK_OUTPUT
print(oom_hung.outcome)
oom_frames = oom_hung.stack_frames()
print("a rank waits in all_reduce:", bool((oom_frames["function"] == "all_reduce").any()))

# %% [markdown]
# Rank 0's stack ends in `all_reduce`; rank 1's main loop waits in `Engine.step` for a result its worker
# will never send. Nothing crashed, so nothing told anybody: gloo only errors out when a peer *process*
# dies ("Connection closed by peer"), and the default timeout printed above is long. The ranks are forked
# in order, rank 0 first, so rank 0 has the lower pid; the trial process is the one whose stack has no
# `_rank` in it.

# %%
ranks = sorted(set(oom_frames.loc[oom_frames["function"] == "_rank", "pid"]))
names = {pid: f"rank {i}" for i, pid in enumerate(ranks)}
telling = ["all_reduce", "step", "_ranks"]  # where each process's main thread waits
waits = oom_frames[oom_frames["main"] & oom_frames["function"].isin(telling)].sort_values("depth").groupby("pid").first()
waits.index = [names.get(pid, "the trial") for pid in waits.index]
waits[["function", "line", "file"]]

# %% [markdown]
# ### The fixes
#
# * `budget-check`: before generating, every rank estimates what its budget can cache and they agree on
#   the smallest (an `all_reduce` with `MIN`): the request shrinks to fit, on every rank at once, or is
#   refused on every rank at once.
# * `collective-timeout`: a process-group timeout, and the engine hands the worker's error to its main
#   loop: the failing rank raises, and the trial ends `raised`, with the reason.
#
# Each variant differs from the broken one in the rank it forks; the ranks themselves:

# %%
display(labkit.show_code(oom_hang._budget_check_rank), labkit.show_code(oom_hang._collective_timeout_rank))

# %%
oom_fixes = {v: labkit.run(oom, v, timeout=30, monitor=False).trials[0] for v in oom.fixes}
labkit.variants_table(oom_fixes, digits=1, errors=True).astype(object).fillna("")  # blank: not measured

# %%
knobs, fits, stopped = oom.knob_values(), oom_fixes["budget-check"], oom_fixes["collective-timeout"]
Markdown(f"`budget-check` ends ok with **{fits.metrics['tokens_generated']:.0f}** of the {knobs['tokens']} new tokens "
         f"asked for: every rank shrank the request to what rank 1's cache holds, instead of one rank failing alone. "
         f"`collective-timeout` ended `raised` after **{stopped.seconds:.1f} s**, with rank 1's reason, and its "
         f"timeout is {knobs['collective_timeout_s']} s: the error handed on ended it, not the timeout. The timeout "
         f"is the backstop for a rank whose peer fails without a word.")

# %%
# NBVAL_CHECK_OUTPUT
print({v: t.outcome for v, t in oom_fixes.items()})

# %% [markdown]
# ## 3. A stream that never ends
#
# Chat demos and many servers stream text the same way: `model.generate(..., streamer=TextIteratorStreamer(tokenizer))`
# in a worker thread, and the caller iterating the streamer to send each piece on. When `generate` raises
# in the worker, nothing more reaches the streamer's queue. Here the failure is real and inside
# `generate`: sampling with `temperature=0` (what a UI's slider sends at zero) fails transformers' own
# check of the settings; in production it is more often an out-of-memory error halfway through an answer.
# ([transformers PR 22576](https://github.com/huggingface/transformers/pull/22576) added the streamer's
# `timeout` for this.) The caller's side:

# %%
streaming = labkit.get("streamer-hang")
labkit.variant_code(streaming, "broken")

# %% [markdown]
# **Predict**: `generate` raises in its thread. Does the caller see the error?

# %%
stream_hung = labkit.run(streaming, "broken", monitor=False).trials[0]
print(stream_hung.outcome, "|", stream_hung.error)
print("on stderr:", [l for l in stream_hung.output.splitlines() if l.startswith("ValueError")][:1])
stream_frames = stream_hung.stack_frames()
stream_frames[stream_frames["main"]].sort_values("depth")[["thread", "depth", "function", "line", "file"]].head(4)

# %%
# NBVAL_CHECK_OUTPUT
print(stream_hung.outcome, "| threads left:", stream_frames["thread"].nunique(),
      "| the caller waits in:", stream_frames.sort_values("depth")["function"].iloc[:3].tolist())

# %% [markdown]
# One thread is left, the caller, waiting in `Queue.get` inside the streamer's `__next__`; the generate
# thread is gone. Its `ValueError` was printed by Python's thread exception hook to stderr, where a server
# logs it and nobody connects it to the request that hangs.
#
# ### The fixes
#
# * `timeout`: the streamer's own `timeout=`: the caller stops waiting and raises, but with `queue.Empty`
#   (here turned into a `TimeoutError` that says so), not with the reason.
# * `propagate`: the worker catches the error, ends the stream (`streamer.end()` puts the stop signal), and
#   hands the error over; the caller re-raises the real one. This is the fix users want.

# %%
for fix in streaming.fixes:
    display(labkit.variant_diff(streaming, fix))

# %%
stream_fixes = {v: labkit.run(streaming, v, monitor=False).trials[0] for v in streaming.fixes}
labkit.variants_table(stream_fixes, metrics=[], digits=1, errors=True)

# %%
# NBVAL_CHECK_OUTPUT
print({v: (t.outcome, t.error.split(":")[0]) for v, t in stream_fixes.items()})

# %% [markdown]
# ## A watchdog for your own code
#
# Isolation is for trials. For code you run in the notebook itself, `labkit.watchdog(seconds=...)` (a
# `with` block or a decorator) turns a hang into `WatchdogTimeout` carrying every thread's stack, and the
# kernel lives on. It interrupts the main thread with a real SIGINT, so a blocked `lock.acquire()` wakes
# too; only native code that holds the GIL forever is beyond it (run that isolated).

# %%
lock = threading.Lock()
lock.acquire()
try:
    with labkit.watchdog(seconds=1):
        lock.acquire()  # nobody will release it
except labkit.WatchdogTimeout as exc:
    caught = exc
print(str(caught).splitlines()[0])

# %%
# NBVAL_CHECK_OUTPUT
print(type(caught).__name__, "| the stacks name the waiting line:", "lock.acquire()" in caught.stacks)

# %% [markdown]
# ## Play
#
# The tokenizer panel: each variant is a setting of `TOKENIZERS_PARALLELISM` (true, false, unset) and a
# start method (fork, spawn). The OOM panel: rank 1's budget and the request's length.

# %%
from labkit import panel

panel("tokenizer-deadlock", knobs=["workers", "batch"], timeout=6)

# %%
from labkit import panel

panel("oom-hang", knobs=["budget_kib", "tokens"], bounds={"budget_kib": (32, 512)}, timeout=15)

# %% [markdown]
# ### Exercise: at the panels
#
# 1. In the OOM panel, find the smallest budget at which `broken` runs clean for the default request.
#    Work it out first from the bar chart above, then check it.
# 2. In the tokenizer panel, run `library-guard` and `broken`. They fork the same way: what differs?
#
# <details><summary>Solution</summary>
#
# 1. The request needs 8 + 48 = 56 tokens per sequence, so rank 1 needs
#    `kv_cache_bytes(model.config, 4, 56, torch.float32) / 1024` KiB: the red bar. Any budget at or above
#    it runs clean; one KiB below, rank 1 fails on its last steps and the job hangs again.
# 2. Only the variable: unset, tokenizers' own fork hook turns the pool off in the child; `true` says
#    "I know what I am doing" and removes that guard.
#
# </details>
#
# ### Exercise: write the fix
#
# `my_stream` streams one request the way section 3's broken variant does: `generate` in a worker thread,
# the caller reading the streamer. The request has `temperature=0` with sampling on, so `generate` raises
# in the worker, and as the cell stands the caller waits forever. Change it so that the caller raises
# `generate`'s own error instead of waiting.
#
# The check after it runs that request with your `my_stream`, isolated, up to three times (stopping at the
# first that fails): it holds when each trial ends `raised`, with `generate`'s `ValueError`, and does not
# when a trial hangs (it is called hung after a few seconds of stillness) or raises something else.

# %%
from transformers import TextIteratorStreamer


def my_stream(model, tokenizer, request):
    """Stream one request: generate in a worker thread; return the text as the caller reads it."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)

    def generate():  # the worker thread
        model.generate(**request, streamer=streamer)  # raises ValueError here: change what follows it

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = "".join(streamer)  # the caller: reads each piece, until the stream ends
    worker.join()
    return text


# %%
from labkit.llm.models import load
from labkit.scenarios import streamer_hang


def streamed_with(stream):
    """The scenario's request, streamed by your function: sampling at temperature 0, so generate raises."""

    def one_request(**knobs):
        model, tokenizer = load()  # the embedded model and tokenizer
        request = {**tokenizer(streamer_hang.PROMPT, return_tensors="pt"), "max_new_tokens": knobs["tokens"],
                   "do_sample": True, "temperature": knobs["temperature"]}
        return {"chars": float(len(stream(model, tokenizer, request)))}

    return one_request


print(labkit.try_variant(streaming, streamed_with(my_stream), expect="raised ValueError"))

# %% [markdown]
# A worked solution is folded in the next cell (unfold it with the bar on its left, after you tried); its
# output is the same check, run on it.

# %% solution
# NBVAL_CHECK_OUTPUT
def handed_on(model, tokenizer, request):
    """A solution: the worker ends the stream when generate raises, and the caller re-raises its error."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    failed = []

    def generate():
        try:
            model.generate(**request, streamer=streamer)
        except Exception as exc:
            failed.append(exc)
            streamer.end()  # the stop signal: the caller's loop ends instead of waiting

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = "".join(streamer)
    worker.join()
    if failed:
        raise failed[0]
    return text


print(labkit.try_variant(streaming, streamed_with(handed_on), expect="raised ValueError"))

# %% [markdown]
# <details><summary>Why it holds</summary>
#
# The caller waits in the streamer's queue for a piece or for the stop signal; when `generate` raises,
# neither comes. The worker's `except` puts the stop signal itself (`streamer.end()`), so the caller's
# loop ends, and the error, kept in a list the caller can read, is raised where the request was made: the
# `propagate` fix. `TextIteratorStreamer(..., timeout=...)` alone does not hold here: the caller stops
# waiting, but with `queue.Empty`, not with `generate`'s reason.
#
# </details>
#
# ## In your own code
#
# * Fork after a tokenizers batch (DataLoader workers, `multiprocessing` with the default `fork` start
#   on Linux): set `TOKENIZERS_PARALLELISM=false` in the parent, or use the `spawn` start method, or
#   create the workers before the first batch. Leaving the variable unset is guarded by the library;
#   setting it to `true` is not.
# * `torch.distributed.init_process_group(..., timeout=timedelta(seconds=...))`: the default waits for
#   many minutes in a collective whose peer will never arrive.
# * A worker thread that catches an exception must hand it to whoever waits for its result (a future's
#   `set_exception`), not only log it.
# * Streaming from a worker thread: catch what `generate` raises there, call `streamer.end()`, and re-raise
#   it in the caller; give the streamer a `timeout` as a backstop.
# * Estimate the KV cache from the config before you accept a request (`labkit.kv_cache_bytes`), and agree
#   across ranks on what fits.
# * Wrap code that may hang in a timeout that dumps stacks: `labkit.watchdog` in a notebook,
#   `faulthandler.dump_traceback_later` in a script.
